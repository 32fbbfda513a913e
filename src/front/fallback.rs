//! Every request that is not a relay route goes to the Rocket application, dispatched in-process
//! by Rocket's local client: no second socket, and Rocket's routing, guards, fairings and
//! catchers answer exactly as they would on a socket of their own. These routes are light (join,
//! leave, a room's peers, ICE servers, static files), so buffering their bodies costs nothing
//! that matters.

use std::net::SocketAddr;

use futures_util::future::BoxFuture;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, CONTENT_LENGTH, TRANSFER_ENCODING};
use hyper::http::request::Parts;
use hyper::Response;
use rocket::http::{Header, Method, Status};

use crate::error::Error;
use crate::front::request;
use crate::front::response::{self, ResponseBody};
use crate::front::Front;

/// Rocket's answer to the request, as a boxed future: Rocket's dispatch future is over 8 KiB,
/// and every request's future would otherwise be allocated at the size of its largest state.
/// Boxed here, in a plain function, so that the caller's future keeps only the box: a future
/// built in the caller's own body would keep a field of its own there (a moved-from local keeps
/// its room until its scope ends).
pub fn dispatch(
    front: &Front,
    parts: Parts,
    body: Incoming,
    remote: SocketAddr,
) -> BoxFuture<'_, Response<ResponseBody>> {
    Box::pin(answer(front, parts, body, remote))
}

async fn answer(
    front: &Front,
    parts: Parts,
    body: Incoming,
    remote: SocketAddr,
) -> Response<ResponseBody> {
    let Ok(method) = parts.method.as_str().parse::<Method>() else {
        let error = Error::Http(Status::MethodNotAllowed);
        return front.refuse(&parts, &error);
    };
    // Every body is bounded, whichever route it is for: Rocket's own limits would only apply
    // after the front had read it.
    let body = match request::body(&parts, body, &front.config).await {
        Ok(body) => body,
        Err(error) => return front.refuse(&parts, &error),
    };
    let uri = parts
        .uri
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |path| path.as_str().to_owned());
    let mut local = front.rocket.req(method, uri).remote(remote);
    for (name, value) in &parts.headers {
        // Rocket's headers are text; a header that is not is one no route of signpost reads.
        if let Ok(value) = value.to_str() {
            local.add_header(Header::new(name.as_str().to_owned(), value.to_owned()));
        }
    }
    if !body.is_empty() {
        local.set_body(body);
    }
    let answer = local.dispatch().await;
    let mut response = Response::new(Either::Left(Full::default()));
    *response.status_mut() = response::status(answer.status().code);
    for header in answer.headers().iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(header.name().as_str().as_bytes()),
            HeaderValue::from_str(header.value()),
        ) else {
            continue;
        };
        // hyper frames the body itself.
        if name != CONTENT_LENGTH && name != TRANSFER_ENCODING {
            response.headers_mut().append(name, value);
        }
    }
    let bytes = answer.into_bytes().await.unwrap_or_default();
    *response.body_mut() = Either::Left(Full::new(bytes.into()));
    response
}
