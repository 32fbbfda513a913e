//! signpost: a WebRTC signaling server over plain HTTP.
//!
//! Peers join a named room, POST offers, answers and ICE candidates, and receive what others sent
//! them on a Server-Sent Events stream or by long-polling. Every message a peer is sent gets the
//! next id of its mailbox, with no gaps, so a client that reconnects resumes exactly where it was
//! or is told explicitly that it cannot.
//!
//! # Layout
//! - [`config`]: the `signpost` table of `Rocket.toml`, with every default and why.
//! - [`error`]: the one error type; every failure becomes a status and a JSON body there.
//! - Domain, with no HTTP in it:
//!   - [`identity`]: room names, peer ids and peer tokens.
//!   - [`message`]: what clients send, and envelopes encoded once for every recipient.
//!   - [`mailbox`]: a peer's gapless, resumable message sequence and its delivery state.
//!   - [`wake_counter`]: the counter a mailbox's readers wait on to change, to be woken.
//!   - [`held_bytes`]: the bytes held in mailboxes, per sender's address and in total.
//!   - [`membership`]: who is in a room and why they left (`LeaveReason`).
//!   - [`hub`]: every operation on rooms and peers, and the rules that need no storage.
//!   - [`store`]: where rooms, peers and mailboxes live: the `Store` and `Reader` traits, and
//!     their two implementations, in memory (`store/memory.rs`) or in Redis so that several
//!     instances act as one server (`store/redis/`: one Redis, Sentinel or a Redis Cluster,
//!     behind its `connection`).
//!   - [`rate_limit`]: the token bucket (per-peer sends, per-client joins).
//!   - [`idempotency`]: a send's `Idempotency-Key`, its batch's fingerprint, and the keyed sends
//!     a peer made within the window (the memory store's record of them).
//!   - [`join_token`]: join tokens signed by the application: checking and minting them.
//!   - [`resume`]: resume credentials, with which a forgotten peer rejoins as itself.
//!   - [`client_address`]: who a request comes from (`trusted_proxies`, `X-Forwarded-For`).
//!   - [`client_limits`]: the join rate, live peers and rooms one client address may have.
//!   - [`admission`]: whether a join is let in, and as whom: the one order of its checks (rate,
//!     body, join token, resume credential, then the store's), with no HTTP in it.
//!   - [`ice`]: the ICE servers a peer is given, with ephemeral TURN credentials.
//! - Around the domain:
//!   - [`relay_routes`]: the three relay routes' methods and paths, defined once for both HTTP
//!     layers: the front matches requests with them, the join answer writes its URLs with them.
//!   - [`response_headers`]: the headers every answer carries (caching, browser protections,
//!     CORS), decided once for both HTTP layers.
//!   - `front`: the listening socket; serves the relay routes (send, SSE, long-poll) on hyper
//!     and hands every other request to the Rocket application in-process; bounds what each
//!     connection may hold in time, and how many one client address may open.
//!   - `api`: the Rocket routes, one module per group, translating requests into hub calls.
//!   - [`presence`]: the sweeper that times out silent peers.
//!   - [`logging`]: the request and membership log, which never prints a token.
//!   - [`metrics`]: counters and gauges for `GET /metrics`.
//!   - [`stun`]: the optional built-in STUN server (UDP).
//!   - [`token_command`]: `signpost token`, which mints a join token for operators and tests.
//! - For clients: `client` (the `client` feature, on by default), a typed client of the API on
//!   reqwest, for tests and Rust peers.
//!
//! [`Server::bind`] assembles the server from a figment and [`Server::run`] serves it; the binary
//! and the tests both use them.

#[macro_use]
extern crate rocket;

pub mod admission;
mod api;
#[cfg(feature = "client")]
pub mod client;
pub mod client_address;
pub mod client_limits;
pub mod config;
pub mod error;
mod front;
pub mod held_bytes;
pub mod hub;
pub mod ice;
pub mod idempotency;
pub mod identity;
pub mod join_token;
pub mod logging;
pub mod mailbox;
pub mod membership;
pub mod message;
pub mod metrics;
pub mod presence;
pub mod rate_limit;
pub mod relay_routes;
pub mod response_headers;
pub mod resume;
mod split;
pub mod store;
pub mod stun;
pub mod token_command;
pub mod wake_counter;

use rocket::fairing::AdHoc;
use rocket::figment::Figment;
use rocket::{Build, Rocket};

use crate::client_address::TrustedProxies;
use crate::config::Config;
use crate::hub::Hub;
use crate::ice::IceConfig;
use crate::join_token::JoinTokens;
use crate::metrics::Metrics;
use crate::resume::ResumeKeys;

pub use crate::front::{shutdown_signals, Endpoint, Server, StartError};

impl Server {
    /// Builds the application from `figment` (Rocket's settings, and signpost's under its
    /// `signpost` key) and binds its address.
    pub async fn bind(figment: Figment) -> Result<Server, StartError> {
        let http = rocket::Config::try_from(&figment)
            .map_err(|error| StartError::Rocket(error.to_string()))?;
        Server::start(build(figment), http).await
    }
}

/// The Rocket application as configured by `figment`, with signpost's settings read from its
/// `signpost` key: the shared state, every route but the three relay routes, the fairings and
/// the background services. [`Server`] serves it behind the front; tests of start-up errors
/// ignite it alone.
pub fn build(figment: Figment) -> Rocket<Build> {
    rocket::custom(figment)
        .attach(AdHoc::try_on_ignite("signpost config", |rocket| async {
            let config = rocket
                .figment()
                .focus("signpost")
                .extract::<Config>()
                .map_err(|error| error.to_string())
                .and_then(|config| config.validate().map(|()| config))
                .and_then(|config| {
                    let tokens = JoinTokens::new(&config)?;
                    let resume = ResumeKeys::new(&config)?;
                    let proxies = TrustedProxies::parse(&config.trusted_proxies)?;
                    let hub = Hub::with_metrics(&config, Metrics::new())?;
                    Ok((config, tokens, resume, proxies, hub))
                });
            match config {
                Ok((config, tokens, resume, proxies, hub)) => {
                    let metrics = hub.metrics().clone();
                    Ok(rocket
                        .manage(hub)
                        .manage(IceConfig::new(&config))
                        .manage(tokens)
                        .manage(resume)
                        .manage(proxies)
                        .manage(metrics)
                        .manage(config))
                }
                Err(error) => {
                    // Rocket's own word for this is only "launch fairing(s) failed".
                    tracing::error!(target: "signpost", "invalid configuration: {error}");
                    Err(rocket)
                }
            }
        }))
        .attach(api::stage())
        .attach(presence::stage())
        .attach(stun::stage())
}
