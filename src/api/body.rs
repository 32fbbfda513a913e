//! The JSON request body guard. Unlike `rocket::serde::json::Json`, it reports *why* a body was
//! refused (wrong content type, too large, broken JSON, wrong shape) as an [`Error`], and takes
//! its size limit from signpost's config.

use rocket::data::{self, Data, FromData, ToByteUnit};
use rocket::http::{ContentType, Status};
use rocket::request::Request;
use rocket::tokio::io::AsyncReadExt;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::config::Config;
use crate::error::Error;

/// A body parsed as `T`. An empty body is parsed as JSON `null`, so `JsonBody<Option<T>>`
/// makes the body optional, and any other `T` answers an empty body with `empty_body`.
pub struct JsonBody<T>(pub T);

#[rocket::async_trait]
impl<'r, T: DeserializeOwned> FromData<'r> for JsonBody<T> {
    type Error = Error;

    async fn from_data(request: &'r Request<'_>, data: Data<'r>) -> data::Outcome<'r, Self> {
        match parse(request, data).await {
            Ok(value) => data::Outcome::Success(JsonBody(value)),
            Err(error) => data::Outcome::Error((error.status(), error)),
        }
    }
}

async fn parse<T: DeserializeOwned>(request: &Request<'_>, data: Data<'_>) -> Result<T, Error> {
    let limit = request
        .rocket()
        .state::<Config>()
        .map_or(Config::default().max_body_bytes, |config| {
            config.max_body_bytes
        });
    // Read at most one byte past the limit, straight into a buffer sized by Content-Length:
    // `DataStream::into_bytes` would copy through a zeroed 8 KiB buffer of its own on every
    // request, which the relay benchmark's profile showed. One byte more than the limit tells a
    // body that is too large from one that is exactly at it, as `is_complete` did.
    let announced = request
        .headers()
        .get_one("Content-Length")
        .and_then(|length| length.parse::<usize>().ok())
        .unwrap_or(0);
    let mut bytes = Vec::with_capacity(announced.min(limit) + 1);
    data.open((limit as u64 + 1).bytes())
        .read_to_end(&mut bytes)
        .await
        .map_err(|_| Error::Http(Status::BadRequest))?;
    parse_json(&bytes, request.headers().get_one("Content-Type"), limit)
}

/// Parses a request body that was read up to one byte past `limit`, with the request's
/// `Content-Type`. The one rule for every JSON body, whichever layer read it (`front` reads the
/// relay routes' bodies): too large, then empty, then not JSON by its content type, then the JSON.
pub fn parse_json<'a, T: Deserialize<'a>>(
    bytes: &'a [u8],
    content_type: Option<&str>,
    limit: usize,
) -> Result<T, Error> {
    if bytes.len() > limit {
        return Err(Error::BodyTooLarge { limit });
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return serde_json::from_str("null").map_err(|_| Error::EmptyBody);
    }
    // An unparsable Content-Type is ignored, as Rocket's `Request::content_type` ignores it.
    // The common case skips the media-type parser, which the relay profile showed.
    let plain_json =
        content_type.is_some_and(|value| value.eq_ignore_ascii_case("application/json"));
    let parsed = content_type
        .filter(|_| !plain_json)
        .and_then(ContentType::parse_flexible);
    if let Some(content_type) = parsed {
        if !content_type.is_json() {
            return Err(Error::UnsupportedMediaType(content_type.to_string()));
        }
    }
    serde_json::from_slice(bytes).map_err(|error| Error::from_json(&error))
}
