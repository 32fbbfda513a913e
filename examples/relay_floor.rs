//! The floor under any relay built on hyper's HTTP/1.1: the least a server can do per message
//! and still relay signpost's long-poll protocol, so that what signpost costs above it is known
//! to be signpost's own (docs/BENCHMARKS.md, "Against PeerJS: the floor of HTTP long-poll").
//!
//! It answers exactly the requests `signpost-bench relay` makes, on either transport, in
//! signpost's wire format, and does nothing a relay could leave out: `POST
//! /api/rooms/{room}/peers` (201), `DELETE /api/rooms/{room}/peers/{peer}` (204), `POST /api/rooms/{room}/messages` (the body parsed for `to`,
//! the envelope rendered once for the recipient, 202), `GET
//! /api/rooms/{room}/peers/{peer}/messages?after=&wait=` (acknowledges up to `after`, answers
//! what is queued or waits for it up to `wait` seconds) and `GET
//! /api/rooms/{room}/peers/{peer}/events?token=` (a `ready` event, then each message as an event
//! as it comes, the events ready together written as one chunk). Its peer ids and tokens are as
//! long as signpost's (a hyphenated UUID, 64 hex digits), so that the same bytes cross the
//! sockets, and a token is looked up as a relay must (the sender's `from`; a poll only with its
//! peer's token). No rooms, limits, validation, metrics, logging, replay or presence; ids are
//! per recipient and gapless. It is a measuring instrument, not a server to run.
//!
//! ```sh
//! cargo build --release --example relay_floor
//! target/release/examples/relay_floor            # 127.0.0.1:8000, or ROCKET_PORT=…
//! ```
//!
//! It takes its port from `ROCKET_PORT` as signpost does and answers `GET /healthz`, so that the
//! bench scripts run it where they run a signpost build (`BEFORE=…` in `benches/peerjs.sh`,
//! `benches/instructions.sh`).
//!
//! The connection is set up as signpost's front sets it up (`src/front/mod.rs`): hyper 1's
//! HTTP/1.1 with tokio's timer and a head-read timeout, `TCP_NODELAY`, one task per connection,
//! mimalloc, the runtime's default workers (one per core). `HEAD_TIMEOUT=0` leaves the timeout
//! off.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::body::{Body, Frame, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{header, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, Notify};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One peer's queue: envelopes not yet acknowledged, by id, or its event stream.
#[derive(Default)]
struct Peer {
    queue: Mutex<Queue>,
    wake: Notify,
}

#[derive(Default)]
struct Queue {
    last_id: u64,
    entries: VecDeque<(u64, Bytes)>,
    /// The open event stream, which takes each message as it is sent.
    stream: Option<mpsc::UnboundedSender<Bytes>>,
}

/// A response's body: whole, or an event stream.
enum Answer {
    Whole(Option<Bytes>),
    Events(mpsc::UnboundedReceiver<Bytes>),
}

impl Body for Answer {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Answer::Whole(bytes) => Poll::Ready(bytes.take().map(|bytes| Ok(Frame::data(bytes)))),
            Answer::Events(events) => match events.poll_recv(cx) {
                Poll::Ready(Some(first)) => {
                    let Ok(second) = events.try_recv() else {
                        return Poll::Ready(Some(Ok(Frame::data(first))));
                    };
                    let mut chunk = BytesMut::from(&first[..]);
                    chunk.extend_from_slice(&second);
                    while let Ok(next) = events.try_recv() {
                        chunk.extend_from_slice(&next);
                    }
                    Poll::Ready(Some(Ok(Frame::data(chunk.freeze()))))
                }
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Answer::Whole(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Answer::Whole(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Answer::Events(_) => SizeHint::default(),
        }
    }
}

#[derive(Default)]
struct Relay {
    next_peer: AtomicU64,
    peers: Mutex<HashMap<Box<str>, Arc<Peer>>>,
    /// Token → peer id.
    tokens: Mutex<HashMap<Box<str>, Box<str>>>,
}

/// A message as sent: only what routing and the envelope need is looked at.
#[derive(Deserialize)]
struct Sent<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(borrow)]
    to: &'a str,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

fn main() {
    let port: u16 = std::env::var("ROCKET_PORT")
        .ok()
        .and_then(|port| port.parse().ok())
        .unwrap_or(8000);
    let head_timeout: u64 = std::env::var("HEAD_TIMEOUT")
        .ok()
        .and_then(|seconds| seconds.parse().ok())
        .unwrap_or(5);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(serve(port, head_timeout));
}

async fn serve(port: u16, head_timeout: u64) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("the port is free");
    let relay = Arc::new(Relay::default());
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new());
    if head_timeout > 0 {
        builder.header_read_timeout(Duration::from_secs(head_timeout));
    }
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let relay = relay.clone();
        let connection = builder.serve_connection(
            TokioIo::new(stream),
            service_fn(move |request| {
                let relay = relay.clone();
                async move { Ok::<_, Infallible>(relay.handle(request).await) }
            }),
        );
        tokio::spawn(connection);
    }
}

impl Relay {
    async fn handle(&self, request: Request<Incoming>) -> Response<Answer> {
        let path = request.uri().path();
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (request.method(), parts.as_slice()) {
            (&Method::GET, ["healthz"]) => answer(StatusCode::OK, Bytes::from_static(b"{}")),
            (&Method::POST, ["api", "rooms", _, "peers"]) => self.join(),
            (&Method::POST, ["api", "rooms", _, "messages"]) => {
                let Some(from) = self.tokens.lock().get(bearer(&request)).cloned() else {
                    return answer(StatusCode::UNAUTHORIZED, Bytes::new());
                };
                let body = request.into_body().collect().await;
                match body {
                    Ok(body) => self.send(&from, &body.to_bytes()),
                    Err(_) => answer(StatusCode::BAD_REQUEST, Bytes::new()),
                }
            }
            (&Method::DELETE, ["api", "rooms", _, "peers", peer]) => {
                let mut tokens = self.tokens.lock();
                if tokens.get(bearer(&request)).is_none_or(|id| **id != **peer) {
                    return answer(StatusCode::UNAUTHORIZED, Bytes::new());
                }
                tokens.remove(bearer(&request));
                self.peers.lock().remove(*peer);
                answer(StatusCode::NO_CONTENT, Bytes::new())
            }
            (&Method::GET, ["api", "rooms", _, "peers", peer, "events"]) => {
                let token = form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes())
                    .find(|(key, _)| key == "token")
                    .map(|(_, value)| value.into_owned())
                    .unwrap_or_default();
                if self
                    .tokens
                    .lock()
                    .get(token.as_str())
                    .is_none_or(|id| **id != **peer)
                {
                    return answer(StatusCode::UNAUTHORIZED, Bytes::new());
                }
                self.events(peer)
            }
            (&Method::GET, ["api", "rooms", _, "peers", peer, "messages"]) => {
                if self
                    .tokens
                    .lock()
                    .get(bearer(&request))
                    .is_none_or(|id| **id != **peer)
                {
                    return answer(StatusCode::UNAUTHORIZED, Bytes::new());
                }
                let peer = (*peer).to_owned();
                let (mut after, mut wait) = (0, 0.0);
                for (key, value) in
                    form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes())
                {
                    match &*key {
                        "after" => after = value.parse().unwrap_or(0),
                        "wait" => wait = value.parse().unwrap_or(0.0),
                        _ => {}
                    }
                }
                self.poll(&peer, after, Duration::from_secs_f64(wait)).await
            }
            _ => answer(StatusCode::NOT_FOUND, Bytes::new()),
        }
    }

    fn join(&self) -> Response<Answer> {
        let n = self.next_peer.fetch_add(1, Ordering::Relaxed);
        let id = format!("{n:08x}-0000-4000-8000-{n:012x}");
        let token = format!("{n:064x}");
        let body = format!("{{\"peer_id\":\"{id}\",\"token\":\"{token}\"}}");
        self.peers.lock().insert(id.as_str().into(), Arc::default());
        self.tokens.lock().insert(token.into(), id.into());
        answer(StatusCode::CREATED, body.into())
    }

    fn send(&self, from: &str, body: &[u8]) -> Response<Answer> {
        let Ok(sent) = serde_json::from_slice::<Sent<'_>>(body) else {
            return answer(StatusCode::BAD_REQUEST, Bytes::new());
        };
        let Some(peer) = self.peers.lock().get(sent.to).cloned() else {
            return answer(StatusCode::NOT_FOUND, Bytes::new());
        };
        {
            let mut queue = peer.queue.lock();
            queue.last_id += 1;
            let id = queue.last_id;
            let data = sent.data.map_or("null", RawValue::get);
            let mut envelope = Vec::with_capacity(96 + from.len() + sent.kind.len() + data.len());
            if queue.stream.is_some() {
                envelope.extend_from_slice(b"id:");
                envelope.extend_from_slice(itoa::Buffer::new().format(id).as_bytes());
                envelope.extend_from_slice(b"\nevent:");
                envelope.extend_from_slice(sent.kind.as_bytes());
                envelope.extend_from_slice(b"\ndata:");
            }
            envelope.extend_from_slice(b"{\"id\":");
            envelope.extend_from_slice(itoa::Buffer::new().format(id).as_bytes());
            for (key, value) in [("from", from), ("type", sent.kind)] {
                envelope.extend_from_slice(b",\"");
                envelope.extend_from_slice(key.as_bytes());
                envelope.extend_from_slice(b"\":\"");
                envelope.extend_from_slice(value.as_bytes());
                envelope.push(b'"');
            }
            envelope.extend_from_slice(b",\"data\":");
            envelope.extend_from_slice(data.as_bytes());
            envelope.push(b'}');
            match &queue.stream {
                Some(stream) => {
                    envelope.extend_from_slice(b"\n\n");
                    let _ = stream.send(envelope.into());
                    return answer(StatusCode::ACCEPTED, Bytes::from_static(ACCEPTED));
                }
                None => queue.entries.push_back((id, envelope.into())),
            }
        }
        peer.wake.notify_waiters();
        answer(StatusCode::ACCEPTED, Bytes::from_static(ACCEPTED))
    }

    fn events(&self, peer: &str) -> Response<Answer> {
        let Some(peer) = self.peers.lock().get(peer).cloned() else {
            return answer(StatusCode::NOT_FOUND, Bytes::new());
        };
        let (stream, events) = mpsc::unbounded_channel();
        let _ = stream.send(Bytes::from_static(b"event:ready\ndata:{}\n\n"));
        peer.queue.lock().stream = Some(stream);
        let mut response = Response::new(Answer::Events(events));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/event-stream"),
        );
        response
    }

    async fn poll(&self, peer: &str, after: u64, wait: Duration) -> Response<Answer> {
        let Some(peer) = self.peers.lock().get(peer).cloned() else {
            return answer(StatusCode::NOT_FOUND, Bytes::new());
        };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before looking, so that a send after the look wakes it.
            let woken = peer.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            {
                let mut queue = peer.queue.lock();
                while queue.entries.front().is_some_and(|(id, _)| *id <= after) {
                    queue.entries.pop_front();
                }
                if !queue.entries.is_empty() || tokio::time::Instant::now() >= deadline {
                    return answer(StatusCode::OK, render(&queue.entries, after));
                }
            }
            if tokio::time::timeout_at(deadline, woken).await.is_err() {
                let queue = peer.queue.lock();
                return answer(StatusCode::OK, render(&queue.entries, after));
            }
        }
    }
}

/// `{"messages":[…],"last_id":n,"reset":false}`.
fn render(entries: &VecDeque<(u64, Bytes)>, after: u64) -> Bytes {
    let size: usize = entries.iter().map(|(_, envelope)| envelope.len() + 1).sum();
    let mut out = Vec::with_capacity(size + 48);
    out.extend_from_slice(b"{\"messages\":[");
    for (index, (_, envelope)) in entries.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        out.extend_from_slice(envelope);
    }
    let last_id = entries.back().map_or(after, |(id, _)| *id);
    out.extend_from_slice(b"],\"last_id\":");
    out.extend_from_slice(itoa::Buffer::new().format(last_id).as_bytes());
    out.extend_from_slice(b",\"reset\":false}");
    out.into()
}

fn bearer(request: &Request<Incoming>) -> &str {
    request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or("")
}

const ACCEPTED: &[u8] = b"{\"accepted\":1}";

fn answer(status: StatusCode, body: Bytes) -> Response<Answer> {
    let mut response = Response::new(Answer::Whole(Some(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}
