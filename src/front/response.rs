//! The relay routes' responses: JSON, errors in the API's one JSON shape, SSE streams, and the
//! headers every `/api/` response carries whichever layer answered it.

use std::convert::Infallible;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use http_body_util::{Either, Full, StreamBody};
use hyper::body::Frame;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, ORIGIN, VARY};
use hyper::http::request::Parts;
use hyper::{Response, StatusCode};

use crate::api::cors::allowed_origin_headers;
use crate::config::Config;
use crate::error::Error;
use crate::logging;

/// A stream of body chunks: the SSE stream's events.
pub type Chunks = BoxStream<'static, Result<Frame<Bytes>, Infallible>>;

/// A whole body, or a stream of chunks.
pub type ResponseBody = Either<Full<Bytes>, StreamBody<Chunks>>;

/// The status `code`; Rocket and signpost only use codes hyper knows.
pub fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// A JSON response whose body is `body`, whole.
pub fn json(code: u16, body: impl Into<Bytes>) -> Response<ResponseBody> {
    let mut response = Response::new(Either::Left(Full::new(body.into())));
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
    let mut response = Response::new(Either::Right(StreamBody::new(chunks)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// What Rocket's fairings add to an `/api/` response (`api::NoStore`, `api::cors`, Shield's
/// `nosniff`), added to a relay response.
/// Every answer, whatever its path, also gets `Vary: Origin`, as Rocket's answers do.
pub fn decorate(response: &mut Response<ResponseBody>, config: &Config, request: &Parts) {
    let headers = response.headers_mut();
    // What an answer holds may depend on the request's Origin (CORS headers on `/api/`), so a
    // shared cache must never hand one origin's answer to another: every answer says so, with
    // or without an Origin, and on every path (docs/API.md, "CORS").
    headers.append(VARY, HeaderValue::from_static("Origin"));
    if !request.uri.path().starts_with("/api/") {
        return;
    }
    if !headers.contains_key(CACHE_CONTROL) {
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    headers.insert(
        "X-Content-Type-Options",
        HeaderValue::from_static("nosniff"),
    );
    let origin = request
        .headers
        .get(ORIGIN)
        .and_then(|origin| origin.to_str().ok());
    if let Some(origin) = origin {
        for (name, value) in allowed_origin_headers(config, origin) {
            if let Ok(value) = HeaderValue::from_str(value) {
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
