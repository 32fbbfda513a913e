//! Where a request's peer token comes from: `Authorization: Bearer <token>`, or `?token=` for
//! the clients that cannot set headers (EventSource, navigator.sendBeacon). Checking the token is
//! the hub's job; this guard only finds it.

use std::convert::Infallible;

use rocket::request::{FromRequest, Outcome, Request};

/// The token the request presents, if any.
pub struct Token(Option<String>);

impl Token {
    pub fn as_deref(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

#[rocket::async_trait]
impl<'r> FromRequest<'r> for Token {
    type Error = Infallible;

    async fn from_request(request: &'r Request<'_>) -> Outcome<Self, Infallible> {
        let from_header = request
            .headers()
            .get_one("Authorization")
            .and_then(|value| {
                let (scheme, token) = value.trim().split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then(|| token.trim().to_owned())
            });
        let token =
            from_header.or_else(|| request.query_value::<String>("token").and_then(Result::ok));
        Outcome::Success(Token(token.filter(|token| !token.is_empty())))
    }
}

/// The SSE `Last-Event-ID` request header, as sent by a reconnecting EventSource.
pub struct LastEventIdHeader(pub Option<String>);

#[rocket::async_trait]
impl<'r> FromRequest<'r> for LastEventIdHeader {
    type Error = Infallible;

    async fn from_request(request: &'r Request<'_>) -> Outcome<Self, Infallible> {
        let value = request
            .headers()
            .get_one("Last-Event-ID")
            .map(|v| v.trim().to_owned());
        Outcome::Success(LastEventIdHeader(value))
    }
}
