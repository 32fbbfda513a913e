//! CORS for `/api`: pages from the origins in `cors_allowed_origins` may call the API. Here, the
//! preflight; the CORS headers of every other answer are written with the rest of the API's
//! headers ([`response_headers`](crate::response_headers)), by both layers.
//!
//! Our own rather than `rocket_cors`: signpost needs one policy (a list of origins, or any),
//! refused preflights must answer in the API's JSON error shape, and the crate would bring
//! `regex` into a build that otherwise does without it.
//!
//! Tokens travel in `Authorization` or the query, never in cookies, so responses never carry
//! `Access-Control-Allow-Credentials`: an allowed origin gets no more than a script that already
//! holds a token could do.

use rocket::http::{Header, Method};
use rocket::request::{FromRequest, Outcome, Request};
use rocket::State;

use crate::config::Config;
use crate::error::Error;
use crate::response_headers::allow_origin;

/// What a browser may send cross-origin. (What it may read back is `EXPOSED_HEADERS`, in
/// [`response_headers`](crate::response_headers), with the other headers of every answer.)
const ALLOWED_METHODS: &str = "GET, POST, DELETE";
const ALLOWED_HEADERS: &str = "Authorization, Content-Type, Idempotency-Key, Last-Event-ID";
/// How long a browser may cache a preflight: 10 minutes, so that a changed origin list takes
/// effect soon (Chromium caps this at 2 hours anyway).
const MAX_AGE_SECS: &str = "600";

/// A preflight's question: may `origin` send `method`?
pub struct PreflightRequest {
    origin: Option<String>,
    method: Option<String>,
}

#[rocket::async_trait]
impl<'r> FromRequest<'r> for PreflightRequest {
    type Error = std::convert::Infallible;

    async fn from_request(request: &'r Request<'_>) -> Outcome<Self, Self::Error> {
        let header = |name| request.headers().get_one(name).map(str::to_owned);
        Outcome::Success(PreflightRequest {
            origin: header("Origin"),
            method: header("Access-Control-Request-Method"),
        })
    }
}

/// `204` with what a cross-origin caller may do.
#[derive(Responder)]
#[response(status = 204)]
pub struct Preflight {
    body: (),
    methods: Header<'static>,
    headers: Header<'static>,
    max_age: Header<'static>,
}

/// Answers every `OPTIONS` under `/api`: a CORS preflight from an allowed origin for a method
/// the API uses gets 204 with the permissions; any other preflight a 403 `cors_refused`. An
/// `OPTIONS` without `Origin` is not a preflight; it gets the same 204.
#[options("/<_..>")]
pub fn preflight(config: &State<Config>, request: PreflightRequest) -> Result<Preflight, Error> {
    if let Some(origin) = &request.origin {
        if allow_origin(config, origin).is_none() {
            return Err(Error::CorsRefused(format!(
                "origin {origin} is not in cors_allowed_origins"
            )));
        }
        let method = request.method.as_deref().unwrap_or_default();
        let known = matches!(
            method.parse::<Method>(),
            Ok(Method::Get | Method::Post | Method::Delete)
        );
        if !known {
            return Err(Error::CorsRefused(format!(
                "Access-Control-Request-Method {method:?} is not one of {ALLOWED_METHODS}"
            )));
        }
    }
    Ok(Preflight {
        body: (),
        methods: Header::new("Access-Control-Allow-Methods", ALLOWED_METHODS),
        headers: Header::new("Access-Control-Allow-Headers", ALLOWED_HEADERS),
        max_age: Header::new("Access-Control-Max-Age", MAX_AGE_SECS),
    })
}
