//! The headers signpost adds to every answer, whichever layer wrote it: Rocket's (through the
//! fairing in `api`) or the front's relay routes (in `front::response`). [`response_headers`]
//! decides them from what was asked and the config, in one place, so the two layers cannot
//! drift apart; each layer only writes them into its own response type.
//!
//! - `Vary: Origin` on every answer: what an answer holds may depend on the request's Origin
//!   (the CORS headers below), so a shared cache must never hand one origin's answer to
//!   another; every answer says so, with or without an Origin, on every path (docs/API.md,
//!   "CORS").
//! - What Rocket's `Shield` wrote by default: `nosniff` on every answer; `SAMEORIGIN` framing
//!   and the Permissions-Policy opt-out on the documents a browser renders (every path outside
//!   `/api/`: the page, its files), where they mean something. An `/api/` answer is JSON or an
//!   event stream, which no browser frames or runs, so the relay's hot path does not pay for
//!   them (`Shield` itself is turned off, so that it does not write them a second time).
//! - `Cache-Control: no-store` on `/api/` answers that say nothing else (the SSE stream says
//!   `no-cache`): a long-poll answer is a GET that a caching proxy would otherwise be free to
//!   replay to the next poll, and a join answer carries a secret token.
//! - CORS on `/api/` answers for an origin in `cors_allowed_origins`, errors included, so that a
//!   page can read why a request failed; never on a refused preflight, which must not look
//!   allowed to the browser. Tokens travel in `Authorization` or the query, never in cookies,
//!   so no answer carries `Access-Control-Allow-Credentials`.

use crate::config::Config;

/// The response headers a cross-origin page may read.
pub const EXPOSED_HEADERS: &str = "Idempotent-Replayed, Location, Retry-After, WWW-Authenticate";

/// How a header joins those the response already has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// Added beside any of the same name.
    Append,
    /// Set only if the response has none of that name: a route may have said otherwise.
    IfAbsent,
    /// Set in place of any of the same name.
    Replace,
}

/// A header's value: fixed text, or text taken from the request (the allowed Origin, echoed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    Fixed(&'static str),
    FromRequest(&'a str),
}

impl<'a> Value<'a> {
    pub fn as_str(self) -> &'a str {
        match self {
            Value::Fixed(text) => text,
            Value::FromRequest(text) => text,
        }
    }
}

/// One header to write. `name` is lower case, as HTTP/2 and hyper's static names require.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    pub name: &'static str,
    pub value: Value<'a>,
    pub write: Write,
}

/// What an answer's headers depend on: the request, and the status it is answered with.
#[derive(Debug, Clone, Copy)]
pub struct Answered<'a> {
    /// The request's method, upper case.
    pub method: &'a str,
    /// The request's path, as sent (percent-encoded).
    pub path: &'a str,
    /// The request's `Origin`, if it has one that is text.
    pub origin: Option<&'a str>,
    /// The answer's status code.
    pub status: u16,
}

const fn fixed(name: &'static str, value: &'static str, write: Write) -> Header<'static> {
    Header {
        name,
        value: Value::Fixed(value),
        write,
    }
}

/// On every answer. `nosniff` is one of Rocket's `Shield` defaults; a route's own value wins,
/// as with `Shield`.
const EVERY_ANSWER: [Header<'static>; 2] = [
    fixed("vary", "Origin", Write::Append),
    fixed("x-content-type-options", "nosniff", Write::IfAbsent),
];

/// On answers outside `/api/`, the documents a browser renders: the rest of `Shield`'s defaults.
const DOCUMENT: [Header<'static>; 2] = [
    fixed("x-frame-options", "SAMEORIGIN", Write::IfAbsent),
    // Opts out of FLoC-style interest cohorts; harmless where browsers no longer know it.
    fixed("permissions-policy", "interest-cohort=()", Write::IfAbsent),
];

/// On `/api/` answers that set no caching of their own.
const NO_STORE: Header<'static> = fixed("cache-control", "no-store", Write::IfAbsent);

/// The headers signpost adds to the answer to `answered`, in the order to write them.
pub fn response_headers<'a>(
    config: &Config,
    answered: &Answered<'a>,
) -> impl Iterator<Item = Header<'a>> {
    let api = answered.path.starts_with("/api/");
    let refused_preflight = answered.method == "OPTIONS" && answered.status >= 400;
    let cors = match answered.origin {
        Some(origin) if api && !refused_preflight => allow_origin(config, origin),
        _ => None,
    };
    let cors = cors.into_iter().flat_map(|allowed| {
        [
            Header {
                name: "access-control-allow-origin",
                value: allowed,
                write: Write::Replace,
            },
            fixed(
                "access-control-expose-headers",
                EXPOSED_HEADERS,
                Write::Replace,
            ),
        ]
    });
    let document = if api { [].iter() } else { DOCUMENT.iter() };
    EVERY_ANSWER
        .into_iter()
        .chain(document.copied())
        .chain(api.then_some(NO_STORE))
        .chain(cors)
}

/// The `Access-Control-Allow-Origin` value for `origin`, or `None` if it may not call the API.
pub fn allow_origin<'a>(config: &Config, origin: &'a str) -> Option<Value<'a>> {
    let allowed = &config.cors_allowed_origins;
    if allowed.iter().any(|allowed| allowed == "*") {
        Some(Value::Fixed("*"))
    } else if allowed
        .iter()
        .any(|allowed| allowed.eq_ignore_ascii_case(origin))
    {
        Some(Value::FromRequest(origin))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(origins: &[&str]) -> Config {
        Config {
            cors_allowed_origins: origins.iter().map(|origin| origin.to_string()).collect(),
            ..Config::default()
        }
    }

    fn headers(config: &Config, method: &str, path: &str, origin: Option<&str>) -> Vec<String> {
        let answered = Answered {
            method,
            path,
            origin,
            status: if method == "OPTIONS" { 403 } else { 200 },
        };
        response_headers(config, &answered)
            .map(|header| format!("{}: {}", header.name, header.value.as_str()))
            .collect()
    }

    /// Every answer varies on Origin and is `nosniff`; documents also carry the framing and
    /// Permissions-Policy protections; `/api/` answers are not stored; CORS goes to allowed origins on `/api/` only, and never on a refused
    /// preflight.
    #[test]
    fn headers_follow_the_path_the_origin_and_the_config() {
        let app = config(&["https://app.example"]);
        let every = ["vary: Origin", "x-content-type-options: nosniff"];
        let document = [
            "x-frame-options: SAMEORIGIN",
            "permissions-policy: interest-cohort=()",
        ];
        let page = headers(&app, "GET", "/", Some("https://app.example"));
        assert_eq!(page[..2], every);
        assert_eq!(page[2..], document);
        let api = headers(&app, "GET", "/api/rooms/x", None);
        assert_eq!(api[..2], every);
        assert_eq!(api[2..], ["cache-control: no-store"]);
        let allowed = headers(
            &app,
            "POST",
            "/api/rooms/x/messages",
            Some("https://APP.example"),
        );
        assert_eq!(
            allowed[3..],
            [
                "access-control-allow-origin: https://APP.example",
                format!("access-control-expose-headers: {EXPOSED_HEADERS}").as_str()
            ]
        );
        let stranger = headers(&app, "GET", "/api/rooms/x", Some("https://evil.example"));
        assert_eq!(stranger.len(), 3);
        let refused = headers(&app, "OPTIONS", "/api/rooms/x", Some("https://app.example"));
        assert_eq!(refused.len(), 3);
        let any = headers(
            &config(&["*"]),
            "GET",
            "/api/rooms/x",
            Some("https://a.example"),
        );
        assert_eq!(any[3], "access-control-allow-origin: *");
    }

    /// Every name and fixed value is one hyper takes without a check at run time
    /// (`HeaderName::from_static`, `HeaderValue::from_static` panic on anything else).
    #[test]
    fn names_and_values_are_valid_static_headers() {
        let config = config(&["*"]);
        let answered = |path| Answered {
            method: "GET",
            path,
            origin: Some("https://a.example"),
            status: 200,
        };
        let api: Vec<Header> = response_headers(&config, &answered("/api/")).collect();
        let document: Vec<Header> = response_headers(&config, &answered("/")).collect();
        assert_eq!(
            (api.len(), document.len()),
            (5, 4),
            "every header is looked at"
        );
        for header in api.into_iter().chain(document) {
            let name = hyper::header::HeaderName::from_bytes(header.name.as_bytes());
            assert_eq!(
                name.map(|name| name.as_str() == header.name).ok(),
                Some(true),
                "{}",
                header.name
            );
            if let Value::Fixed(value) = header.value {
                assert!(
                    hyper::header::HeaderValue::from_str(value).is_ok(),
                    "{value}"
                );
            }
        }
    }
}
