//! Where a request's peer token comes from: `Authorization: Bearer <token>`, or `?token=` for
//! the clients that cannot set headers (EventSource, navigator.sendBeacon). Checking the token is
//! the hub's job; this only finds it. The relay routes (`front`) find it with the same rule.

use std::borrow::Cow;
use std::convert::Infallible;

use rocket::request::{FromRequest, Outcome, Request};

/// The token the request presents, if any: borrowed from the request where it can be (the
/// header; the relay routes' query), so that finding it copies nothing.
pub struct Token<'a>(Option<Cow<'a, str>>);

impl<'a> Token<'a> {
    /// The token of a request with this `Authorization` header and this `token` query value.
    /// The header wins; an empty token counts as none.
    pub fn find(
        authorization: Option<&'a str>,
        query: impl FnOnce() -> Option<Cow<'a, str>>,
    ) -> Token<'a> {
        let token = match authorization.and_then(bearer) {
            Some(token) => Some(Cow::Borrowed(token)),
            None => query(),
        };
        Token(token.filter(|token| !token.is_empty()))
    }

    /// The token of a request to a Rocket route.
    pub fn of(request: &'a Request<'_>) -> Token<'a> {
        Token::find(request.headers().get_one("Authorization"), || {
            let token = request.query_value::<String>("token")?.ok()?;
            Some(Cow::Owned(token))
        })
    }

    pub fn as_deref(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

/// A join token: from `Authorization: Bearer` only. Unlike a peer token it has no `?token=`
/// form, since every client that joins can set a header, and a URL ends up in logs.
pub struct BearerHeader(Option<String>);

impl BearerHeader {
    pub fn of(request: &Request<'_>) -> BearerHeader {
        let token = request.headers().get_one("Authorization").and_then(bearer);
        BearerHeader(token.filter(|token| !token.is_empty()).map(str::to_owned))
    }

    pub fn as_deref(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

/// The token of an `Authorization: Bearer <token>` header value.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = crate::split::split_once(value.trim(), b' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[rocket::async_trait]
impl<'r> FromRequest<'r> for Token<'r> {
    type Error = Infallible;

    async fn from_request(request: &'r Request<'_>) -> Outcome<Self, Infallible> {
        Outcome::Success(Token::of(request))
    }
}
