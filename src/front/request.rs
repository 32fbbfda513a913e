//! How a relay request becomes domain values: path segments, query values, the token and the
//! body (bounded in bytes and in time, then parsed where it is used, by `api::body::parse_json`,
//! so that what is parsed may borrow from it), each refused with the same [`Error`] Rocket's
//! guards give for the same input.

use std::borrow::Cow;

use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderName, AUTHORIZATION, CONTENT_LENGTH};
use hyper::http::request::Parts;
use rocket::http::Status;

use crate::api::auth::Token;
use crate::api::params;
use crate::config::Config;
use crate::error::Error;
use crate::idempotency::IdempotencyKey;
use crate::identity::{PeerId, RoomName};
use crate::split::{split, split_once};

/// A path segment, percent-decoded as Rocket decodes the segments it hands to `FromParam`.
fn decode(segment: &str) -> Cow<'_, str> {
    // Nearly every segment has nothing to decode: one scan for `%` instead of the decoder's
    // byte-by-byte pass.
    if !segment.contains('%') {
        return Cow::Borrowed(segment);
    }
    percent_encoding::percent_decode_str(segment).decode_utf8_lossy()
}

pub fn room(segment: &str) -> Result<RoomName, Error> {
    params::room_name(&decode(segment))
}

pub fn peer(segment: &str) -> Result<PeerId, Error> {
    params::peer_id(&decode(segment))
}

/// The query parameters a route reads, found in one pass over the query: each name's first
/// value, form-decoded (`+` is a space), borrowed from the URI when it has nothing to decode,
/// and whether the name was given more than once.
pub struct Query<'a, const N: usize> {
    names: [&'static str; N],
    first: [Option<Cow<'a, str>>; N],
    repeated: [bool; N],
}

impl<'a, const N: usize> Query<'a, N> {
    pub fn parse(request: &'a Parts, names: [&'static str; N]) -> Self {
        let mut query = Query {
            names,
            first: [const { None }; N],
            repeated: [false; N],
        };
        let Some(text) = request.uri.query() else {
            return query;
        };
        // Nearly every query has nothing to decode: then its pairs are borrowed as they are,
        // which is what the form decoder would give, without its byte-by-byte pass over each
        // name and value (1,400 instructions a poll, in the relay's profile).
        if memchr::memchr2(b'%', b'+', text.as_bytes()).is_none() {
            for pair in split(text, b'&').filter(|pair| !pair.is_empty()) {
                let (key, value) = split_once(pair, b'=').unwrap_or((pair, ""));
                query.add(key, Cow::Borrowed(value));
            }
        } else {
            for (key, value) in form_urlencoded::parse(text.as_bytes()) {
                query.add(&key, value);
            }
        }
        query
    }

    fn add(&mut self, key: &str, value: Cow<'a, str>) {
        if let Some(index) = self.names.iter().position(|name| key == *name) {
            if self.first[index].is_some() {
                self.repeated[index] = true;
            } else {
                self.first[index] = Some(value);
            }
        }
    }

    /// The value of `name`, one of the names parsed; a parameter given twice is refused, since
    /// which of its values was meant cannot be known.
    pub fn value(&self, name: &'static str) -> Result<Option<&str>, Error> {
        let index = self.index(name);
        if self.repeated[index] {
            return Err(Error::InvalidQuery {
                parameter: name,
                reason: "is given more than once".to_owned(),
            });
        }
        Ok(self.first[index].as_deref())
    }

    /// The first value of `name`, one of the names parsed, however often it was given.
    pub fn first(&self, name: &'static str) -> Option<&str> {
        self.first[self.index(name)].as_deref()
    }

    fn index(&self, name: &str) -> usize {
        self.names
            .iter()
            .position(|parsed| *parsed == name)
            .expect("a query name the route did not parse")
    }
}

/// A header's value, by a constant name: a name given as text would be parsed and lower-cased
/// on every request.
pub fn header(request: &Parts, name: HeaderName) -> Option<&str> {
    request.headers.get(name)?.to_str().ok()
}

/// The token from `Authorization: Bearer` or `?token=` (the query's first `token`), by the rule
/// Rocket's guard uses.
pub fn token<'a>(request: &'a Parts, query_token: Option<&'a str>) -> Token<'a> {
    Token::find(header(request, AUTHORIZATION), || {
        query_token.map(Cow::Borrowed)
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
    let announced = header(request, CONTENT_LENGTH).and_then(|length| length.parse().ok());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str) -> Parts {
        hyper::Request::get(uri).body(()).unwrap().into_parts().0
    }

    /// A query is read as the form decoder reads it, whether or not it has anything to decode:
    /// `+` is a space, `%XX` a byte, a name without `=` has an empty value, empty pairs are
    /// skipped, and a name given twice is refused.
    #[test]
    fn queries_read_as_forms_do() {
        for (uri, token, wait) in [
            (
                "/x?token=ab&&wait=1.5&other=x&wait2",
                Some("ab"),
                Some("1.5"),
            ),
            ("/x?wait&token=t", Some("t"), Some("")),
            ("/x?wait&token=a%2Bb+c%20d", Some("a+b c d"), Some("")),
            ("/x?tok%65n=t&wait=%31", Some("t"), Some("1")),
            ("/x", None, None),
        ] {
            let request = parts(uri);
            let query = Query::parse(&request, ["token", "wait", "after"]);
            assert_eq!(query.first("token"), token, "{uri}");
            assert_eq!(query.value("wait").unwrap(), wait, "{uri}");
            assert_eq!(query.value("after").unwrap(), None, "{uri}");
        }
        for (uri, first) in [
            ("/x?after=1&after=2", "1"),
            ("/x?after=1&aft%65r=2", "1"),
            ("/x?after=1+&after", "1 "),
        ] {
            let request = parts(uri);
            let query = Query::parse(&request, ["after"]);
            assert!(query.value("after").is_err(), "{uri}");
            assert_eq!(query.first("after"), Some(first), "{uri}");
        }
    }
}
