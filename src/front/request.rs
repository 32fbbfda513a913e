//! How a relay request becomes domain values: path segments, query values, the token and the
//! JSON body, each refused with the same [`Error`] Rocket's guards give for the same input.

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::http::request::Parts;
use rocket::http::Status;
use serde::de::DeserializeOwned;

use crate::api::auth::Token;
use crate::api::body::parse_json;
use crate::error::Error;
use crate::identity::{PeerId, RoomName};

/// A path segment, percent-decoded as Rocket decodes the segments it hands to `FromParam`.
fn decode(segment: &str) -> Cow<'_, str> {
    percent_encoding::percent_decode_str(segment).decode_utf8_lossy()
}

pub fn room(segment: &str) -> Result<RoomName, Error> {
    RoomName::parse(&decode(segment)).map_err(|invalid| Error::InvalidRoomName(invalid.0))
}

pub fn peer(segment: &str) -> Result<PeerId, Error> {
    PeerId::parse(&decode(segment)).ok_or(Error::InvalidPeerId)
}

/// The first value of the query parameter `name`, form-decoded (`+` is a space).
pub fn query_value(request: &Parts, name: &str) -> Option<String> {
    let query = request.uri.query()?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

pub fn header<'a>(request: &'a Parts, name: &str) -> Option<&'a str> {
    request.headers.get(name)?.to_str().ok()
}

/// The token from `Authorization: Bearer` or `?token=`, by the rule Rocket's guard uses.
pub fn token(request: &Parts) -> Token {
    Token::find(header(request, "Authorization"), || {
        query_value(request, "token")
    })
}

/// Reads a body of at most `limit` bytes. A `Content-Length` over the limit is refused before
/// anything is read.
pub async fn body(request: &Parts, body: Incoming, limit: usize) -> Result<Bytes, Error> {
    let announced = header(request, "Content-Length").and_then(|length| length.parse().ok());
    if announced.is_some_and(|length: usize| length > limit) {
        return Err(Error::BodyTooLarge { limit });
    }
    // Most bodies arrive as one frame, which is kept as it is, without a copy.
    let mut body = Limited::new(body, limit);
    let mut whole = Bytes::new();
    let mut joined: Option<BytesMut> = None;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(error) if error.is::<LengthLimitError>() => {
                return Err(Error::BodyTooLarge { limit })
            }
            // The client went away or sent broken chunked framing.
            Err(_) => return Err(Error::Http(Status::BadRequest)),
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        match &mut joined {
            Some(joined) => joined.extend_from_slice(&data),
            None if whole.is_empty() => whole = data,
            None => {
                let mut buffer =
                    BytesMut::with_capacity(announced.unwrap_or(0).max(whole.len() + data.len()));
                buffer.extend_from_slice(&whole);
                buffer.extend_from_slice(&data);
                joined = Some(buffer);
            }
        }
    }
    Ok(joined.map_or(whole, BytesMut::freeze))
}

/// Reads and parses a JSON body of at most `limit` bytes.
pub async fn json_body<T: DeserializeOwned>(
    request: &Parts,
    incoming: Incoming,
    limit: usize,
) -> Result<T, Error> {
    let bytes = body(request, incoming, limit).await?;
    parse_json(&bytes, header(request, "Content-Type"), limit)
}
