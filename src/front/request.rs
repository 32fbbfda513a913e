//! How a relay request becomes domain values: path segments, query values, the token and the
//! JSON body (bounded in bytes and in time), each refused with the same [`Error`] Rocket's guards give for the same input.

use std::borrow::Cow;

use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::HeaderName;
use hyper::http::request::Parts;
use rocket::http::Status;
use serde::de::DeserializeOwned;

use crate::api::auth::Token;
use crate::api::body::parse_json;
use crate::api::params;
use crate::config::Config;
use crate::error::Error;
use crate::idempotency::IdempotencyKey;
use crate::identity::{PeerId, RoomName};

/// A path segment, percent-decoded as Rocket decodes the segments it hands to `FromParam`.
fn decode(segment: &str) -> Cow<'_, str> {
    percent_encoding::percent_decode_str(segment).decode_utf8_lossy()
}

pub fn room(segment: &str) -> Result<RoomName, Error> {
    params::room_name(&decode(segment))
}

pub fn peer(segment: &str) -> Result<PeerId, Error> {
    params::peer_id(&decode(segment))
}

/// The first value of the query parameter `name`, form-decoded (`+` is a space).
pub fn query_value(request: &Parts, name: &str) -> Option<String> {
    let query = request.uri.query()?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

/// The value of the query parameter `name`, form-decoded; a parameter given twice is refused,
/// since which of its values was meant cannot be known.
pub fn query_param(request: &Parts, name: &'static str) -> Result<Option<String>, Error> {
    let Some(query) = request.uri.query() else {
        return Ok(None);
    };
    let mut values = form_urlencoded::parse(query.as_bytes()).filter(|(key, _)| key == name);
    let first = values.next().map(|(_, value)| value.into_owned());
    if values.next().is_some() {
        return Err(Error::InvalidQuery {
            parameter: name,
            reason: "is given more than once".to_owned(),
        });
    }
    Ok(first)
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

/// The send's `Idempotency-Key`, if it carries one: `invalid_idempotency_key` for one that is
/// not 1-64 characters of `A-Z a-z 0-9 . _ : -`, or that is given twice.
pub fn idempotency_key(request: &Parts) -> Result<Option<IdempotencyKey>, Error> {
    // A constant name: looked up without parsing and lower-casing the name on every send.
    const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
    let mut values = request.headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Error::InvalidIdempotencyKey);
    }
    value
        .to_str()
        .ok()
        .and_then(IdempotencyKey::parse)
        .map(Some)
        .ok_or(Error::InvalidIdempotencyKey)
}

/// Reads a body of at most `max_body_bytes`, which must arrive whole within
/// `body_read_timeout_secs` of the read's start. A `Content-Length` over the limit is refused
/// before anything is read.
pub async fn body(request: &Parts, body: Incoming, config: &Config) -> Result<Bytes, Error> {
    let limit = config.max_body_bytes;
    let announced = header(request, "Content-Length").and_then(|length| length.parse().ok());
    if announced.is_some_and(|length: usize| length > limit) {
        return Err(Error::BodyTooLarge { limit });
    }
    // One deadline for the whole body, not one per read: a client trickling a byte at a time
    // would pass any timeout between two reads, and hold its connection for as long as it liked.
    let timeout = config.body_read_timeout();
    // A body that arrives in one frame is handed on as it is, without a copy.
    match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) if error.is::<LengthLimitError>() => Err(Error::BodyTooLarge { limit }),
        // The client went away or sent broken chunked framing.
        Ok(Err(_)) => Err(Error::Http(Status::BadRequest)),
        Err(_) => Err(Error::BodyTimeout { limit: timeout }),
    }
}

/// Reads and parses a JSON body, bounded as [`body`] bounds it.
pub async fn json_body<T: DeserializeOwned>(
    request: &Parts,
    incoming: Incoming,
    config: &Config,
) -> Result<T, Error> {
    let bytes = body(request, incoming, config).await?;
    parse_json(
        &bytes,
        header(request, "Content-Type"),
        config.max_body_bytes,
    )
}
