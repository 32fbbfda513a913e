//! The relay routes' responses: JSON, errors in the API's one JSON shape, SSE streams, and the
//! headers every answer carries whichever layer answered it.

use std::convert::Infallible;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use http_body_util::{Either, Full, StreamBody};
use hyper::body::Frame;
use hyper::header::{
    HeaderMap, HeaderName, HeaderValue, ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS,
    CACHE_CONTROL, CONTENT_TYPE, ORIGIN, VARY, X_CONTENT_TYPE_OPTIONS,
};
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

/// Room for every header an error may carry: its own (at most four), and [`response_headers`]'s
/// (at most five). Its map is then allocated once, at the size its first growth past six would
/// give it, rather than allocated and then grown. Other answers are left at hyper's first
/// allocation, which holds six: a JSON answer carries at most six, and a stream six unless it
/// is cross-origin. That matters for streams: hyper keeps a connection's last header map for
/// its next answer, so an idle stream holds its map for as long as it is open (twelve places
/// cost about 1.3 KB, six about 0.6).
const HEADER_CAPACITY: usize = 12;

/// A response with `body` and room for `headers`.
fn with_body(body: ResponseBody, headers: usize) -> Response<ResponseBody> {
    let mut response = Response::new(body);
    if headers > 6 {
        *response.headers_mut() = HeaderMap::with_capacity(headers);
    }
    response
}

/// What a relay route answers, before the headers every answer carries are written into it
/// ([`finish`]).
pub enum Answer {
    /// A whole JSON body with this status, and no header of its own: the relay's usual answer.
    Json(u16, Bytes),
    /// Any other answer, already a response.
    Response(Response<ResponseBody>),
}

impl Answer {
    /// A JSON answer whose body is `body`.
    pub fn json(code: u16, body: impl Into<Bytes>) -> Self {
        Self::Json(code, body.into())
    }
}

/// A JSON response whose body is `body`, whole.
pub fn json(code: u16, body: impl Into<Bytes>) -> Response<ResponseBody> {
    json_with_room(code, body.into(), 6)
}

/// A JSON response with room for `headers` headers.
fn json_with_room(code: u16, body: Bytes, headers: usize) -> Response<ResponseBody> {
    let mut response = with_body(Either::Left(Full::new(body)), headers);
    *response.status_mut() = status(code);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// `error` as the API answers it everywhere: its status, its headers, its JSON body.
pub fn error(error: &Error) -> Response<ResponseBody> {
    let mut response = json_with_room(error.status().code, error.body().into(), HEADER_CAPACITY);
    for (name, value) in error.headers() {
        if let Ok(value) = HeaderValue::try_from(value) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

/// A streamed response of `content_type`.
pub fn stream(content_type: &'static str, chunks: Chunks) -> Response<ResponseBody> {
    let mut response = with_body(Either::Right(StreamBody::new(chunks)), 6);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// [`response_headers`]' answer for the relay's common case, in hyper's types: an `/api/`
/// request without an `Origin` (a page on signpost's own origin, curl, a native peer). Those
/// headers depend on nothing else (neither the method, the status nor the config: a unit test
/// holds it), so they are worked out once, when the front starts.
pub struct Decorations {
    api_without_origin: Vec<(HeaderName, HeaderValue, Write)>,
    /// A JSON answer's whole header map in that case: its `Content-Type` and the above,
    /// written once. Each such answer takes a copy, which costs less than writing (hashing and
    /// placing) its four headers one by one.
    json_api_without_origin: HeaderMap,
}

impl Decorations {
    pub fn new(config: &Config) -> Self {
        let answered = Answered {
            method: "GET",
            path: "/api/",
            origin: None,
            status: 200,
        };
        let api_without_origin: Vec<_> = response_headers(config, &answered)
            .filter_map(|header| {
                Some((
                    header_name(header.name),
                    to_value(header.value)?,
                    header.write,
                ))
            })
            .collect();
        let mut json = json(200, Bytes::new());
        for (name, value, how) in &api_without_origin {
            write(json.headers_mut(), name.clone(), value.clone(), *how);
        }
        Self {
            api_without_origin,
            json_api_without_origin: json.headers().clone(),
        }
    }
}

/// `answer` as a response, with the headers every answer carries ([`decorate`]).
pub fn finish(
    answer: Answer,
    decorations: &Decorations,
    config: &Config,
    request: &Parts,
) -> Response<ResponseBody> {
    let mut response = match answer {
        Answer::Json(code, body) if without_origin_under_api(request) => {
            let mut response = with_body(Either::Left(Full::new(body)), 0);
            *response.status_mut() = status(code);
            *response.headers_mut() = decorations.json_api_without_origin.clone();
            return response;
        }
        Answer::Json(code, body) => json(code, body),
        Answer::Response(response) => response,
    };
    decorate(&mut response, decorations, config, request);
    response
}

/// Whether `request` is the relay's common case: under `/api/`, without an `Origin`.
fn without_origin_under_api(request: &Parts) -> bool {
    !request.headers.contains_key(ORIGIN) && request.uri.path().starts_with("/api/")
}

/// Writes the headers every answer carries ([`response_headers`]) into a relay route's answer or
/// a refusal, as `api`'s fairing writes them into Rocket's.
pub fn decorate(
    response: &mut Response<ResponseBody>,
    decorations: &Decorations,
    config: &Config,
    request: &Parts,
) {
    if without_origin_under_api(request) {
        let headers = response.headers_mut();
        for (name, value, how) in &decorations.api_without_origin {
            write(headers, name.clone(), value.clone(), *how);
        }
        return;
    }
    let path = request.uri.path();
    let origin = request.headers.get(ORIGIN);
    let status = response.status().as_u16();
    let headers = response.headers_mut();
    let answered = Answered {
        method: request.method.as_str(),
        path,
        origin: origin.and_then(|origin| origin.to_str().ok()),
        status,
    };
    for header in response_headers(config, &answered) {
        if let Some(value) = to_value(header.value) {
            write(headers, header_name(header.name), value, header.write);
        }
    }
}

/// A header's value in hyper's type, or `None` for an echoed value that is not one.
fn to_value(value: Value<'_>) -> Option<HeaderValue> {
    match value {
        Value::Fixed(text) => Some(header_value(text)),
        Value::FromRequest(text) => HeaderValue::from_str(text).ok(),
    }
}

/// Writes one header as `how` says.
fn write(headers: &mut HeaderMap, name: HeaderName, value: HeaderValue, how: Write) {
    match how {
        Write::Append => {
            headers.append(name, value);
        }
        // One lookup, where `contains_key` and then `insert` took two.
        Write::IfAbsent => {
            headers.entry(name).or_insert(value);
        }
        Write::Replace => {
            headers.insert(name, value);
        }
    }
}

/// `name` (one of [`response_headers`]'s lower-case constants) as hyper's own constant where it
/// has one, which costs neither a parse nor a copy.
fn header_name(name: &'static str) -> HeaderName {
    match name {
        "vary" => VARY,
        "x-content-type-options" => X_CONTENT_TYPE_OPTIONS,
        "cache-control" => CACHE_CONTROL,
        "access-control-allow-origin" => ACCESS_CONTROL_ALLOW_ORIGIN,
        "access-control-expose-headers" => ACCESS_CONTROL_EXPOSE_HEADERS,
        // Checked, and not copied (`response_headers`'s tests hold every name to it).
        name => HeaderName::from_static(name),
    }
}

/// `text` (one of [`response_headers`]'s fixed values) as a header value, made at compile time
/// for those every relay answer carries.
fn header_value(text: &'static str) -> HeaderValue {
    const ORIGIN_VALUE: HeaderValue = HeaderValue::from_static("Origin");
    const NOSNIFF: HeaderValue = HeaderValue::from_static("nosniff");
    const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");
    match text {
        "Origin" => ORIGIN_VALUE,
        "nosniff" => NOSNIFF,
        "no-store" => NO_STORE,
        text => HeaderValue::from_static(text),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The default config, and the same with `origin` allowed cross-origin.
    fn default_and_cors(origin: &str) -> [Config; 2] {
        let cors = Config {
            cors_allowed_origins: vec![origin.into()],
            ..Config::default()
        };
        [Config::default(), cors]
    }

    /// What `Decorations` works out once is what `response_headers` answers for every `/api/`
    /// request without an Origin, whatever its method, status and the config.
    #[test]
    fn api_answers_without_an_origin_depend_on_nothing_else() {
        let configs = default_and_cors("*");
        let expected: Vec<(String, String)> = Decorations::new(&configs[0])
            .api_without_origin
            .iter()
            .map(|(name, value, _)| (name.to_string(), value.to_str().unwrap().to_string()))
            .collect();
        assert!(expected.len() >= 3, "{expected:?}");
        for config in &configs {
            for (method, status) in [("GET", 200), ("POST", 202), ("OPTIONS", 403), ("GET", 404)] {
                let answered = Answered {
                    method,
                    path: "/api/rooms/a/messages",
                    origin: None,
                    status,
                };
                let headers: Vec<(String, String)> = response_headers(config, &answered)
                    .map(|header| (header.name.to_string(), header.value.as_str().to_string()))
                    .collect();
                assert_eq!(headers, expected, "{method} {status}");
            }
        }
    }

    /// A JSON answer gets the very headers, in the same order, that writing them one by one
    /// into its response gives, whether it takes [`finish`]'s copy or not.
    #[test]
    fn a_json_answer_carries_what_decorating_it_gives() {
        let configs = default_and_cors("https://a.example");
        let headers = |response: &Response<ResponseBody>| -> Vec<(String, String)> {
            response
                .headers()
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_string()))
                .collect()
        };
        for config in &configs {
            let decorations = Decorations::new(config);
            for (path, origin) in [
                ("/api/rooms/a/messages", None),
                ("/api/rooms/a/messages", Some("https://a.example")),
                ("/api/rooms/a/messages", Some("https://b.example")),
                ("/healthz", None),
            ] {
                let mut request = hyper::Request::builder().method("POST").uri(path);
                if let Some(origin) = origin {
                    request = request.header(ORIGIN, origin);
                }
                let (request, ()) = request.body(()).unwrap().into_parts();
                let answer = Answer::json(202, &b"{}"[..]);
                let finished = finish(answer, &decorations, config, &request);
                let mut decorated = json(202, &b"{}"[..]);
                decorate(&mut decorated, &decorations, config, &request);
                assert_eq!(finished.status(), 202, "{path} {origin:?}");
                assert_eq!(headers(&finished), headers(&decorated), "{path} {origin:?}");
                assert!(headers(&finished).len() >= 4, "{:?}", headers(&finished));
            }
        }
    }

    /// Every header `response_headers` may add gets the name it spells, whether hyper has a
    /// constant for it or not.
    #[test]
    fn header_names_are_the_names_spelled() {
        let config = Config {
            cors_allowed_origins: vec!["*".into()],
            ..Config::default()
        };
        for path in ["/api/rooms", "/"] {
            let answered = Answered {
                method: "GET",
                path,
                origin: Some("https://a.example"),
                status: 200,
            };
            for header in response_headers(&config, &answered) {
                assert_eq!(header_name(header.name).as_str(), header.name);
                if let Value::Fixed(text) = header.value {
                    assert_eq!(header_value(text), text);
                }
            }
        }
    }
}
