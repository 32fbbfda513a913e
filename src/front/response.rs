//! The relay routes' responses: JSON, errors in the API's one JSON shape, SSE streams, and the
//! headers every answer carries whichever layer answered it.

use std::convert::Infallible;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use http_body_util::{Either, Full, StreamBody};
use hyper::body::Frame;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, ORIGIN};
use hyper::http::request::Parts;
use hyper::{Response, StatusCode};

use crate::config::Config;
use crate::error::Error;
use crate::logging;
use crate::response_headers::{response_headers, Answered, Value, Write};

/// A stream of body chunks: the SSE stream's events.
pub type Chunks = BoxStream<'static, Result<Frame<Bytes>, Infallible>>;

/// A whole body, or a stream of chunks.
pub type ResponseBody = Either<Full<Bytes>, StreamBody<Chunks>>;

/// The status `code`; Rocket and signpost only use codes hyper knows.
pub fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// Room for every header a relay answer may carry: its own (at most four, an SSE stream's or
/// an error's), and [`response_headers`]'s (at most five). The map is then allocated once, at
/// the size its first growth past six would give it, rather than allocated and then grown.
const HEADER_CAPACITY: usize = 12;

/// A response with `body` and room for its headers.
fn with_body(body: ResponseBody) -> Response<ResponseBody> {
    let mut response = Response::new(body);
    *response.headers_mut() = HeaderMap::with_capacity(HEADER_CAPACITY);
    response
}

/// A JSON response whose body is `body`, whole.
pub fn json(code: u16, body: impl Into<Bytes>) -> Response<ResponseBody> {
    let mut response = with_body(Either::Left(Full::new(body.into())));
    *response.status_mut() = status(code);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// `error` as the API answers it everywhere: its status, its headers, its JSON body.
pub fn error(error: &Error) -> Response<ResponseBody> {
    let mut response = json(error.status().code, error.body());
    for (name, value) in error.headers() {
        if let Ok(value) = HeaderValue::try_from(value) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

/// A streamed response of `content_type`.
pub fn stream(content_type: &'static str, chunks: Chunks) -> Response<ResponseBody> {
    let mut response = with_body(Either::Right(StreamBody::new(chunks)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Writes the headers every answer carries ([`response_headers`]) into a relay route's answer or
/// a refusal, as `api`'s fairing writes them into Rocket's.
pub fn decorate(response: &mut Response<ResponseBody>, config: &Config, request: &Parts) {
    let answered = Answered {
        method: request.method.as_str(),
        path: request.uri.path(),
        origin: request
            .headers
            .get(ORIGIN)
            .and_then(|origin| origin.to_str().ok()),
        status: response.status().as_u16(),
    };
    let headers = response.headers_mut();
    for header in response_headers(config, &answered) {
        // Lower-case constants: no check and no copy (`response_headers`'s tests hold them to it).
        let name = HeaderName::from_static(header.name);
        let value = match header.value {
            Value::Fixed(text) => HeaderValue::from_static(text),
            Value::FromRequest(text) => match HeaderValue::from_str(text) {
                Ok(value) => value,
                Err(_) => continue,
            },
        };
        match header.write {
            Write::Append => {
                headers.append(name, value);
            }
            Write::IfAbsent if headers.contains_key(&name) => {}
            Write::IfAbsent | Write::Replace => {
                headers.insert(name, value);
            }
        }
    }
}

/// Logs a refused request as `api::RequestLog` logs Rocket's.
pub fn log_failure(request: &Parts, error: &Error) {
    logging::failed_request(
        request.method.as_str(),
        request.uri.path(),
        error.status().code,
        error.code(),
    );
}
