//! The HTTP API's Rocket routes: a thin translation of requests into [`Hub`](crate::hub::Hub)
//! calls. `docs/API.md` is the contract of the whole API.
//!
//! The three relay routes (send, the SSE stream, the long-poll) are not here: `front` serves
//! them on hyper directly, with the rules these modules share with it (`auth`, `body`,
//! `params`). Every answer's headers are decided below both layers, in
//! [`response_headers`](crate::response_headers); the `ResponseHeaders` fairing here writes them.
//!
//! - `rooms`: join, leave, look at a room or a peer.
//! - `ice`: the ICE servers (STUN, TURN credentials) a peer may use.
//! - `cors`: the CORS preflight, for the origins in the config.
//! - `openapi`: `GET /api/openapi.yaml`, the machine-readable description of the API.
//! - `ops`: `/healthz`, `/readyz` and `/metrics`, outside `/api`.
//! - `static_files`: the page and `/signpost.js` from `static_dir`, also under `/static/`,
//!   cacheable and readable from any origin.
//! - `client`: the client address the join limits are charged to.
//! - `auth`, `body`, `params`: request guards that turn headers, bodies and path segments into
//!   domain values or precise errors.

pub mod auth;
pub mod body;
mod client;
mod cors;
mod ice;
mod openapi;
mod ops;
pub mod params;
mod rooms;
mod static_files;

use std::borrow::Cow;

use rocket::fairing::{AdHoc, Fairing, Info, Kind};
use rocket::http::Status;
use rocket::shield::Shield;
use rocket::{Request, Response};

use crate::config::Config;
use crate::error::{Error, ErrorCode};
use crate::logging;
use crate::metrics::Metrics;
use crate::response_headers::{response_headers, Answered, Value, Write};

/// Mounts the API routes, the JSON error catchers, the request log and the headers of every
/// answer.
pub fn stage() -> AdHoc {
    AdHoc::on_ignite("signpost API", |rocket| async {
        rocket
            .mount(
                "/api",
                routes![
                    rooms::join,
                    rooms::room,
                    rooms::peer,
                    rooms::leave,
                    rooms::leave_beacon,
                    ice::ice_servers,
                    openapi::openapi,
                    cors::preflight,
                ],
            )
            .mount("/", routes![ops::healthz, ops::readyz, ops::metrics])
            .mount(
                "/",
                routes![static_files::file, static_files::file_under_static],
            )
            .register("/", catchers![default_catcher])
            .attach(RequestLog)
            .attach(ResponseHeaders)
            // Replaces the `Shield` Rocket attaches by default: `response_headers` writes what
            // it wrote, on both layers' answers.
            .attach(Shield::new())
    })
}

/// Every error Rocket produces itself (no route, a body over Rocket's own limits, a panic) is
/// answered in the same JSON shape as the API's errors.
#[catch(default)]
fn default_catcher(status: Status, _: &Request<'_>) -> Error {
    match status.code {
        404 => Error::RouteNotFound,
        _ => Error::Http(status),
    }
}

/// Logs each failed request Rocket answers ([`logging::failed_request`]), the path naming the
/// room and the peer, and counts it by its error code in `signpost_rejections_total`, as the front
/// does for the requests it refuses itself.
struct RequestLog;

#[rocket::async_trait]
impl Fairing for RequestLog {
    fn info(&self) -> Info {
        Info {
            name: "signpost request log",
            kind: Kind::Response,
        }
    }

    async fn on_response<'r>(&self, request: &'r Request<'_>, response: &mut Response<'r>) {
        let code = request.local_cache(ErrorCode::default).0;
        if let Some(code) = code {
            if let Some(metrics) = request.rocket().state::<Metrics>() {
                metrics.rejected(code);
            }
        }
        let code = code.unwrap_or("-");
        logging::failed_request(
            request.method().as_str(),
            request.uri().path().as_str(),
            response.status().code,
            code,
        );
    }
}

/// Writes the headers [`response_headers`] decides into every answer Rocket gives, as the front
/// writes them into the relay routes' (`front::response::decorate`).
struct ResponseHeaders;

#[rocket::async_trait]
impl Fairing for ResponseHeaders {
    fn info(&self) -> Info {
        Info {
            name: "signpost response headers",
            kind: Kind::Response,
        }
    }

    async fn on_response<'r>(&self, request: &'r Request<'_>, response: &mut Response<'r>) {
        let Some(config) = request.rocket().state::<Config>() else {
            // `build` manages it: without it, the application does not start.
            return;
        };
        let answered = Answered {
            method: request.method().as_str(),
            path: request.uri().path().as_str(),
            origin: request.headers().get_one("Origin"),
            status: response.status().code,
        };
        for header in response_headers(config, &answered) {
            let value: Cow<'static, str> = match header.value {
                Value::Fixed(text) => Cow::Borrowed(text),
                Value::FromRequest(text) => Cow::Owned(text.to_owned()),
            };
            match header.write {
                Write::Append => response.adjoin_raw_header(header.name, value),
                Write::IfAbsent if response.headers().contains(header.name) => {}
                Write::IfAbsent | Write::Replace => {
                    response.set_raw_header(header.name, value);
                }
            }
        }
    }
}
