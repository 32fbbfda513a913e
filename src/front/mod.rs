//! The HTTP front: signpost's one listening socket, and the layer that decides who answers.
//!
//! The three relay routes carry nearly all of a signaling server's traffic: sending
//! (`POST …/messages`), the SSE stream (`GET …/events`) and the long-poll (`GET …/messages`).
//! Served by Rocket they cost about 80 µs of CPU per relayed message and about 47 KB per idle
//! stream, most of it Rocket's per-request and per-connection machinery rather than signpost's
//! (docs/BENCHMARKS.md has the profile); on hyper directly, about 43 µs and 21 KB. So the front
//! serves those three on hyper, and hands every other request (join, leave, rooms, ICE,
//! `/healthz`, `/metrics`, static files, CORS preflight) to the Rocket application that
//! `signpost::build` assembles and hands down, dispatched in-process through Rocket's local
//! client: those keep Rocket's routing, guards, fairings and catchers.
//!
//! Both layers share one `Hub`, one `Config`, one `Metrics` and one Rocket `Shutdown`, and the
//! relay routes reuse the API's own rules (`api::auth`, `api::body`, `api::params`, the one
//! `Error`) and the tables below both layers (`relay_routes`, `response_headers`), so a client
//! sees one API whichever layer answered.
//!
//! - `request`: how a relay request's path, query, token and body become domain values.
//! - `response`: JSON and error responses, and the headers every relay response carries.
//! - `send`, `events`, `poll`: the three relay routes.
//! - `methods`: which methods each known path answers, for `405` with `Allow`.
//! - `fallback`: hands every other request to Rocket.
//! - `signals`: the process signals that stop the server.
//! - `connection`: the connections one client address may hold, and the write timeout.
//! - `descriptors`: the descriptor limit, raised at start.
//!
//! Time bounds every connection: its request heads (hyper's `header_read_timeout`, from Rocket's
//! `keep_alive`), its bodies (`body_read_timeout_secs`, in `request::body`) and its writes
//! (`write_timeout_secs`, in `connection::TimedIo`).

mod connection;
mod descriptors;
mod events;
mod fallback;
mod methods;
mod poll;
mod request;
mod response;
mod send;
mod signals;

pub use self::methods::Endpoint;
pub use self::signals::shutdown_signals;

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use hyper::body::Incoming;
use hyper::http::request::Parts;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use rocket::local::asynchronous::Client;
use rocket::{Build, Rocket, Shutdown};
use tokio::net::TcpListener;
use tokio::select;

use crate::client_address::TrustedProxies;
use crate::config::Config;
use crate::error::Error;
use crate::hub::Hub;
use crate::logging;
use crate::metrics::Metrics;
use crate::relay_routes::{RelayPath, RelayRoute};

use self::connection::{Connections, TimedIo};
use self::response::{Answer, ResponseBody};

/// A bound signpost server: the listening socket and the application behind it.
///
/// [`Server::bind`] checks the config, binds the socket and starts the background tasks (the
/// presence sweeper, the STUN server); [`Server::run`] serves until told to stop.
pub struct Server {
    listener: TcpListener,
    front: Arc<Front>,
    /// Rocket's `keep_alive`, `shutdown.grace` and `shutdown.mercy` apply to the front.
    http: rocket::Config,
}

/// Why a server could not start.
#[derive(Debug)]
pub enum StartError {
    /// Rocket's own settings (address, port, shutdown, ...) do not parse.
    Rocket(String),
    /// The `signpost` settings are invalid, or a background service could not start; the
    /// reason has been logged.
    Application(String),
    /// The address could not be bound.
    Bind(SocketAddr, std::io::Error),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Rocket(error) => write!(f, "invalid Rocket configuration: {error}"),
            StartError::Application(error) => write!(f, "{error}"),
            StartError::Bind(address, error) => write!(f, "cannot bind to {address}: {error}"),
        }
    }
}

impl std::error::Error for StartError {}

/// What every request handler needs: the application's shared state.
struct Front {
    /// The same hub Rocket's routes use (a handle on one shared state).
    hub: Hub,
    /// The `signpost` settings, as Rocket's routes see them.
    config: Config,
    /// The same counters Rocket's routes count into.
    metrics: Metrics,
    /// Rocket's shutdown signal, the one every stream, poll and background task selects on.
    shutdown: Shutdown,
    /// The Rocket application, for every request the front does not serve itself.
    rocket: Client,
    /// Every route of both layers, for the `405`s of known paths.
    methods: methods::Methods,
    /// Open connections per client address, for `max_connections_per_client`.
    connections: Connections,
    /// The headers every relay answer carries, worked out once for the common case.
    decorations: response::Decorations,
}

impl Server {
    /// Serves `application` (what `signpost::build` assembles) behind the front, with Rocket's
    /// settings `http`: ignites it, takes the state both layers share from it, and binds the
    /// address. [`Server::bind`] is the public way in; the application is handed down rather
    /// than built here, so that the front never calls back up into what assembles it.
    pub(crate) async fn start(
        application: Rocket<Build>,
        http: rocket::Config,
    ) -> Result<Server, StartError> {
        // The fairing that failed has already said why (Rocket's own word is "launch fairing(s)
        // failed").
        let rocket = Client::untracked(application)
            .await
            .map_err(|error| StartError::Application(format!("{error}; the reason is above")))?;
        let orbit = rocket.rocket();
        let (Some(hub), Some(config), Some(metrics), Some(proxies)) = (
            orbit.state::<Hub>().cloned(),
            orbit.state::<Config>().cloned(),
            orbit.state::<Metrics>().cloned(),
            orbit.state::<TrustedProxies>().cloned(),
        ) else {
            // `build` manages all four; only a change to it could get here.
            let missing = "the Rocket application manages no hub, config, metrics or proxies";
            return Err(StartError::Application(missing.to_owned()));
        };
        let shutdown = orbit.shutdown();
        let methods = methods::Methods::of(orbit);
        let address = SocketAddr::new(http.address, http.port);
        let listener = TcpListener::bind(address)
            .await
            .map_err(|error| StartError::Bind(address, error))?;
        let connections = Connections::new(
            config.max_connections_per_client,
            proxies,
            config.client_ipv6_prefix,
        );
        let front = Arc::new(Front {
            hub,
            decorations: response::Decorations::new(&config),
            config,
            metrics,
            shutdown,
            rocket,
            methods,
            connections,
        });
        Ok(Server {
            listener,
            front,
            http,
        })
    }

    /// The address the server listens on (with the port the system chose, if the config's was 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Every route the server answers, Rocket's and the relay routes, sorted by path then method;
    /// catch-alls (static files, the CORS preflight) left out. `docs/openapi.yaml` describes
    /// exactly these.
    pub fn endpoints(&self) -> &[Endpoint] {
        self.front.methods.endpoints()
    }

    /// The shutdown signal: `notify()` on it stops the server as `stop` in [`Server::run`] does.
    pub fn shutdown(&self) -> Shutdown {
        self.front.shutdown.clone()
    }

    /// Serves until `stop` completes or the shutdown signal is notified. Then it stops
    /// accepting, ends every stream and poll (they select on the signal), lets requests in
    /// flight finish, and returns once every connection has closed or `shutdown.grace` plus
    /// `shutdown.mercy` seconds have passed.
    pub async fn run(self, stop: impl Future<Output = ()>) {
        let Server {
            listener,
            front,
            http,
        } = self;
        descriptors::raise_limit();
        if let Ok(address) = listener.local_addr() {
            logging::info(format_args!("listening on http://{address}"));
        }
        let mut connection = http1::Builder::new();
        connection.timer(TokioTimer::new());
        if http.keep_alive == 0 {
            connection.keep_alive(false);
        } else {
            // hyper's keep-alive has no idle timeout of its own; this bounds how long an idle
            // connection may take to send its next request head, as Rocket's `keep_alive` did.
            // The clock starts when hyper begins reading a head, the first one included, and
            // runs for the whole head, so a head trickled a byte at a time is cut off too.
            // (With `keep_alive = 0`, hyper's own 30 s bounds the one head.)
            connection.header_read_timeout(Duration::from_secs(http.keep_alive.into()));
        }
        // A connection over its address's cap is answered once and closed.
        let mut refusal = connection.clone();
        refusal.keep_alive(false);
        let write_timeout = front.config.write_timeout();
        let graceful = GracefulShutdown::new();
        let mut shutdown = front.shutdown.clone();
        tokio::pin!(stop);
        loop {
            select! {
                accepted = listener.accept() => {
                    let (stream, remote) = match accepted {
                        Ok(accepted) => accepted,
                        Err(error) => {
                            // Out of file descriptors, most likely: the error repeats until a
                            // connection closes, so pause rather than spin on it.
                            logging::warn(format_args!("cannot accept a connection: {error}"));
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    // Signaling messages are small and latency matters more than packing.
                    let _ = stream.set_nodelay(true);
                    let open = front.metrics.connection_opened();
                    let io = TokioIo::new(TimedIo::new(stream, write_timeout));
                    let Ok(slot) = front.connections.admit(remote.ip()) else {
                        let front = front.clone();
                        let service = service_fn(move |request: Request<Incoming>| {
                            let front = front.clone();
                            async move { Ok::<_, Infallible>(front.refuse_connection(request)) }
                        });
                        let served = graceful.watch(refusal.serve_connection(io, service));
                        tokio::spawn(async move {
                            let _open = open;
                            let _ = served.await;
                        });
                        continue;
                    };
                    let front = front.clone();
                    // Each request's future is boxed, and the box freed with its answer: hyper
                    // keeps room for a connection's request future as long as the connection
                    // lives, and that would hold the largest state of `handle` (the request's
                    // parts, a route's state) in every idle stream. The box is `handle`'s own
                    // future, not one that wraps it: an async block would keep the request it
                    // captured, and `handle` its arguments, each in a field of its own.
                    let service = service_fn(move |request: Request<Incoming>| {
                        let (parts, body) = request.into_parts();
                        Box::pin(front.clone().handle(parts, body, remote).map(answered))
                    });
                    let served = graceful.watch(connection.serve_connection(io, service));
                    tokio::spawn(async move {
                        // Held for as long as the connection is open, released however it ends.
                        let _held = (slot, open);
                        let _ = served.await;
                    });
                }
                () = &mut stop => {
                    front.shutdown.clone().notify();
                    break;
                }
                _ = &mut shutdown => break,
            }
        }
        drop(listener);
        logging::info(format_args!(
            "shutting down: ending {} SSE streams and {} polls",
            front.metrics.sse_streams(),
            front.metrics.polls_in_flight()
        ));
        let patience = Duration::from_secs((http.shutdown.grace + http.shutdown.mercy).into());
        if tokio::time::timeout(patience, graceful.shutdown())
            .await
            .is_err()
        {
            logging::warn(format_args!(
                "{} s after shutdown began, connections were still open; leaving them",
                patience.as_secs()
            ));
        }
    }
}

/// hyper's form of an answer: a service that never fails.
fn answered(response: Response<ResponseBody>) -> Result<Response<ResponseBody>, Infallible> {
    Ok(response)
}

impl Front {
    /// The answer to one request. A plain function that returns an `async move` block, rather
    /// than an `async fn`: an `async fn`'s future holds its arguments twice (as arguments, and
    /// as the locals they are moved into), and this one is allocated for every request.
    #[allow(clippy::manual_async_fn)] // the manual form is the point: see above
    fn handle(
        self: Arc<Self>,
        parts: Parts,
        body: Incoming,
        remote: SocketAddr,
    ) -> impl Future<Output = Response<ResponseBody>> + Send {
        async move {
            let Some(relay) = RelayRoute::matching(parts.method.as_str(), parts.uri.path()) else {
                // Checked before Rocket sees the request: Rocket alone would answer 404, and it
                // does not know the relay routes' paths.
                if let Some(allow) = self.methods.refusal(&parts.method, parts.uri.path()) {
                    return self.refuse(&parts, &Error::MethodNotAllowed { allow });
                }
                return fallback::dispatch(&self, parts, body, remote).await;
            };
            let RelayPath { route, room, peer } = relay;
            // Each arm finishes its own answer: with one result shared by the arms, the routes'
            // futures each kept a field of their own instead of sharing one.
            match route {
                RelayRoute::Send => {
                    let answer = send::send(&self, room, &parts, body).await;
                    self.finish(answer, &parts)
                }
                RelayRoute::Events => {
                    let answer = events::events(&self, room, peer, &parts).await;
                    self.finish(answer, &parts)
                }
                RelayRoute::Poll => {
                    let answer = poll::poll(&self, room, peer, &parts).await;
                    self.finish(answer, &parts)
                }
            }
        }
    }

    /// A relay route's answer, or its refusal, with the headers every answer carries.
    fn finish(&self, answer: Result<Answer, Error>, request: &Parts) -> Response<ResponseBody> {
        match answer {
            Ok(answer) => response::finish(answer, &self.decorations, &self.config, request),
            Err(error) => self.refuse(request, &error),
        }
    }

    /// The one answer of a connection over `max_connections_per_client`.
    fn refuse_connection(&self, request: Request<Incoming>) -> Response<ResponseBody> {
        let limit = self.connections.limit();
        let (parts, _) = request.into_parts();
        self.refuse(&parts, &Error::TooManyConnections { limit })
    }

    /// The answer to a request the front refuses, counted and logged as Rocket's are.
    fn refuse(&self, request: &Parts, error: &Error) -> Response<ResponseBody> {
        self.metrics.rejected(error.code());
        response::log_failure(request, error);
        let mut response = response::error(error);
        response::decorate(&mut response, &self.decorations, &self.config, request);
        response
    }
}
