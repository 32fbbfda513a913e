//! CORS for `/api`: pages from the origins in `cors_allowed_origins` may call the API.
//!
//! A small fairing rather than `rocket_cors`: signpost needs one policy (a list of origins, or
//! any), refused preflights must answer in the API's JSON error shape, and the crate would bring
//! `regex` into a build that otherwise does without it.
//!
//! Tokens travel in `Authorization` or the query, never in cookies, so responses never carry
//! `Access-Control-Allow-Credentials`: an allowed origin gets no more than a script that already
//! holds a token could do.

use rocket::fairing::{Fairing, Info, Kind};
use rocket::http::{Header, Method};
use rocket::request::{FromRequest, Outcome, Request};
use rocket::{Response, State};

use crate::config::Config;
use crate::error::Error;

/// What a browser may send cross-origin, and read back.
const ALLOWED_METHODS: &str = "GET, POST, DELETE";
const ALLOWED_HEADERS: &str = "Authorization, Content-Type, Last-Event-ID";
const EXPOSED_HEADERS: &str = "Location, Retry-After, WWW-Authenticate";
/// How long a browser may cache a preflight: 10 minutes, so that a changed origin list takes
/// effect soon (Chromium caps this at 2 hours anyway).
const MAX_AGE_SECS: &str = "600";

/// The `Access-Control-Allow-Origin` value for `origin`, or `None` if it may not call the API.
fn allow_origin<'a>(config: &Config, origin: &'a str) -> Option<&'a str> {
    let allowed = &config.cors_allowed_origins;
    if allowed.iter().any(|allowed| allowed == "*") {
        Some("*")
    } else if allowed
        .iter()
        .any(|allowed| allowed.eq_ignore_ascii_case(origin))
    {
        Some(origin)
    } else {
        None
    }
}

/// Adds the CORS headers to every `/api` response for an allowed `Origin`, errors included, so
/// that a page can read why a request failed.
/// The headers that let a page from `origin` read an `/api/` response, if its origin is allowed;
/// every such response also gets `Vary: Origin`. The relay routes (`front`) add the same.
pub fn allowed_origin_headers<'a>(
    config: &Config,
    origin: &'a str,
) -> impl Iterator<Item = (&'static str, &'a str)> {
    allow_origin(config, origin)
        .into_iter()
        .flat_map(|allowed| {
            [
                ("Access-Control-Allow-Origin", allowed),
                ("Access-Control-Expose-Headers", EXPOSED_HEADERS),
            ]
        })
}

/// Adds the CORS headers to the responses Rocket serves, and `Vary: Origin` to all of them.
pub struct CorsHeaders;

#[rocket::async_trait]
impl Fairing for CorsHeaders {
    fn info(&self) -> Info {
        Info {
            name: "signpost CORS",
            kind: Kind::Response,
        }
    }

    async fn on_response<'r>(&self, request: &'r Request<'_>, response: &mut Response<'r>) {
        // The answer may depend on Origin (the headers below), so a shared cache must key on
        // it: every answer says so, with or without an Origin, on every path (static files,
        // errors and 404s included).
        response.adjoin_raw_header("Vary", "Origin");
        let Some(origin) = request.headers().get_one("Origin") else {
            return;
        };
        if !request.uri().path().starts_with("/api/") {
            return;
        }
        let Some(config) = request.rocket().state::<Config>() else {
            return;
        };
        // A refused preflight must not look allowed to the browser.
        let refused_preflight =
            request.method() == Method::Options && response.status().code >= 400;
        if !refused_preflight {
            for (name, value) in allowed_origin_headers(config, origin) {
                response.set_raw_header(name, value.to_owned());
            }
        }
    }
}

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
