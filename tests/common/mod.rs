//! Test support: a real signpost server on 127.0.0.1 with a random port, and a client-side peer
//! that speaks the HTTP API with reqwest (SSE parsed by `eventsource-stream`).
//!
//! The behaviour suite runs on both stores: a test written inside [`store_tests!`] becomes two,
//! `<name>::memory` and `<name>::redis`, and every [`Server`] such a test starts uses that store
//! (the Redis one on a real `redis-server` the tests start, with a key prefix of its own).
#![allow(dead_code)] // each test binary uses a different part of this module

pub mod deaf_subscribers;
pub mod eventually;
pub mod external;
pub mod flow;
pub mod instance;
pub mod process;
pub mod read_until;
pub mod redis;
pub mod redis_ha;
pub mod requirements;
pub mod stores;

use std::time::{Duration, Instant};

use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use rocket::figment::Figment;
use serde_json::{json, Value};

/// How long a test waits for an event it expects before failing. Generous: it bounds a hang,
/// it does not pace the test.
pub const EVENT_DEADLINE: Duration = Duration::from_secs(10);

/// The store the servers of the running test use.
#[derive(Debug, Clone)]
pub enum TestStore {
    Memory,
    /// A Redis at this URL.
    Redis(String),
}

tokio::task_local! {
    /// Set by [`store_tests!`] for the test's own task.
    pub static STORE: TestStore;
}

/// Runs `test` with its servers on `store`; a Redis test is ignored (build.rs) when redis-server
/// is missing outside CI.
pub async fn on_store(store: &str, name: &str, test: impl std::future::Future<Output = ()>) {
    let store = match store {
        "redis" => match redis::shared(name) {
            Some(url) => TestStore::Redis(url),
            None => return,
        },
        _ => TestStore::Memory,
    };
    STORE.scope(store, test).await
}

/// Declares each test twice, once per store: `store_tests! { /// what it proves
/// async fn name() { … } … }`.
#[macro_export]
macro_rules! store_tests {
    ($($(#[$meta:meta])* async fn $name:ident() $body:block)*) => {$(
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                $crate::common::on_store("memory", concat!(stringify!($name), "::memory"), async $body).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[cfg_attr(
                signpost_missing = "redis",
                ignore = "needs redis-server: apt-get install redis-server (README.md, Prerequisites)"
            )]
            async fn redis() {
                $crate::common::on_store("redis", concat!(stringify!($name), "::redis"), async $body).await
            }
        }
    )*};
}

/// The settings of a test server: `Rocket.toml`'s defaults, on 127.0.0.1 with a port the system
/// picks, quiet, no Ctrl-C handler, a short shutdown, and `settings` (a JSON object) over the
/// `signpost` table.
pub fn test_figment(settings: Value) -> Figment {
    let mut figment: Figment = rocket::Config::figment()
        .merge(("address", "127.0.0.1"))
        .merge(("port", 0))
        .merge(("log_level", "off"))
        .merge(("shutdown.ctrlc", false))
        .merge(("shutdown.grace", 1))
        .merge(("shutdown.mercy", 1))
        .merge(("signpost.log_level", "off"));
    let settings = settings.as_object().expect("settings are a JSON object");
    for (key, value) in settings {
        figment = figment.merge((format!("signpost.{key}"), value.clone()));
    }
    if let Ok(TestStore::Redis(url)) = STORE.try_with(Clone::clone) {
        if !settings.contains_key("redis_url") {
            let prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
            figment = figment
                .merge(("signpost.redis_url", url))
                .merge(("signpost.redis_prefix", prefix));
        }
    }
    figment
}

/// A server running in this test's runtime; stopped when `stop` is called or the runtime ends.
pub struct Server {
    pub base: String,
    pub client: reqwest::Client,
    shutdown: rocket::Shutdown,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// A server with the defaults of `Rocket.toml`.
    pub async fn start() -> Server {
        Server::with(json!({})).await
    }

    /// A server whose `signpost` settings are overridden by `settings` (a JSON object).
    pub async fn with(settings: Value) -> Server {
        Server::from_figment(test_figment(settings)).await
    }

    pub async fn from_figment(figment: Figment) -> Server {
        let server = signpost::Server::bind(figment)
            .await
            .expect("server starts");
        let port = server.local_addr().expect("bound address").port();
        let shutdown = server.shutdown();
        let task = tokio::spawn(server.run(std::future::pending()));
        Server {
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
            shutdown,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The value of one sample of this server's `/metrics` (0 when absent).
    pub async fn metric(&self, sample: &str) -> f64 {
        let text = self
            .client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics request")
            .text()
            .await
            .expect("metrics body");
        text.lines()
            .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
            .map(|value| value.trim().parse().expect("a sample value"))
            .unwrap_or(0.0)
    }

    /// Joins `room` as `name` and returns the peer, asserting the join succeeded.
    pub async fn join(&self, room: &str, name: &str) -> Peer {
        let response = self
            .client
            .post(self.url(&format!("/api/rooms/{room}/peers")))
            .json(&json!({ "name": name }))
            .send()
            .await
            .expect("join request");
        assert_eq!(response.status(), 201, "join {room} as {name}");
        let body: Value = response.json().await.expect("join body");
        Peer {
            id: body["peer_id"].as_str().expect("peer_id").to_owned(),
            token: body["token"].as_str().expect("token").to_owned(),
            room: room.to_owned(),
            base: self.base.clone(),
            client: self.client.clone(),
            joined: body,
        }
    }

    /// `GET path` as JSON.
    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let response = self.client.get(self.url(path)).send().await.expect("GET");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Shuts the server down and waits until it has stopped.
    pub async fn stop(self) {
        self.shutdown.notify();
        let _ = self.task.await;
    }

    /// Starts a shutdown without waiting for it.
    pub fn begin_shutdown(&self) {
        self.shutdown.clone().notify();
    }
}

/// A joined peer, as seen by its own client.
#[derive(Clone)]
pub struct Peer {
    pub id: String,
    pub token: String,
    pub room: String,
    pub base: String,
    pub client: reqwest::Client,
    /// The join response.
    pub joined: Value,
}

impl Peer {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn peer_path(&self) -> String {
        format!("/api/rooms/{}/peers/{}", self.room, self.id)
    }

    /// POSTs `body` (a message or an array) to the room as this peer.
    pub async fn send(&self, body: Value) -> reqwest::Response {
        self.client
            .post(self.url(&format!("/api/rooms/{}/messages", self.room)))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .expect("send request")
    }

    /// This peer as the typed client (`signpost::client`) sees it, from its join answer and
    /// on this peer's server: what the tests use wherever they do not check the wire itself.
    pub fn typed(&self) -> signpost::client::Peer {
        let client = signpost::client::Client::with_http(&self.base, self.client.clone());
        signpost::client::Peer::from_join_answer(&client, self.joined.clone())
            .expect("a join answer the typed client reads")
    }

    /// Sends `body` (a message or an array of them) through the typed client, and asserts that
    /// all of it was accepted.
    pub async fn send_ok(&self, body: Value) {
        let messages: Vec<signpost::client::Message> = if body.is_array() {
            serde_json::from_value(body).expect("messages")
        } else {
            vec![serde_json::from_value(body).expect("a message")]
        };
        let sent = self.typed().send_batch(&messages).await;
        assert_eq!(
            sent.as_ref().ok(),
            Some(&messages.len()),
            "send refused: {sent:?}"
        );
    }

    /// Opens this peer's SSE stream, resuming after `last_event_id` if given, and waits for
    /// `ready`.
    pub async fn events(&self, last_event_id: Option<u64>) -> Events {
        let response = self.events_response(last_event_id).await;
        assert_eq!(response.status(), 200, "events stream opens");
        let mut events = Events::from_response(response);
        let ready = events.next().await;
        assert_eq!(ready.event, "ready", "first event is ready");
        events
    }

    /// The response to this peer's SSE request, unread: for tests of the bytes on the wire.
    pub async fn events_response(&self, last_event_id: Option<u64>) -> reqwest::Response {
        let mut request = self
            .client
            .get(self.url(&format!("{}/events", self.peer_path())))
            .bearer_auth(&self.token);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        request.send().await.expect("events request")
    }

    /// One long-poll; returns the status and the body.
    pub async fn poll(&self, after: u64, wait: f64) -> (u16, Value) {
        let response = self
            .client
            .get(self.url(&format!(
                "{}/messages?after={after}&wait={wait}",
                self.peer_path()
            )))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("poll request");
        let status = response.status().as_u16();
        (status, response.json().await.expect("poll body is JSON"))
    }

    pub async fn leave(&self) -> u16 {
        self.client
            .delete(self.url(&self.peer_path()))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("leave request")
            .status()
            .as_u16()
    }
}

/// A parsed SSE stream.
pub struct Events {
    stream: BoxStream<'static, Result<Event, EventStreamError<reqwest::Error>>>,
}

impl Events {
    /// Parses any SSE response, from its first event on.
    pub fn from_response(response: reqwest::Response) -> Events {
        Events {
            stream: response.bytes_stream().eventsource().boxed(),
        }
    }

    /// The next event, failing the test if none comes within [`EVENT_DEADLINE`].
    pub async fn next(&mut self) -> Event {
        self.try_next()
            .await
            .expect("stream ended before the expected event")
    }

    /// The next event, or `None` if the stream ended.
    pub async fn try_next(&mut self) -> Option<Event> {
        match tokio::time::timeout(EVENT_DEADLINE, self.stream.next()).await {
            Ok(Some(Ok(event))) => Some(event),
            Ok(Some(Err(error))) => panic!("stream error: {error}"),
            Ok(None) => None,
            Err(_) => panic!("no event within {EVENT_DEADLINE:?}"),
        }
    }

    /// The next event's envelope, checking that the SSE `id:` and `event:` match it.
    pub async fn next_message(&mut self) -> Value {
        let event = self.next().await;
        let envelope: Value = serde_json::from_str(&event.data).expect("data is JSON");
        assert_eq!(
            event.id,
            envelope["id"].to_string(),
            "SSE id matches envelope id"
        );
        assert_eq!(
            event.event,
            envelope["type"].as_str().unwrap(),
            "SSE event is the type"
        );
        envelope
    }

    /// Whether the stream ends (rather than delivering another event) within the deadline.
    pub async fn ends(&mut self) -> bool {
        self.try_next().await.is_none()
    }
}

/// A raw request's status, body (`null` if not JSON) and `Retry-After`, and how long it took.
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub retry_after: Option<String>,
    pub took: Duration,
}

/// Sends `request`, failing the test if it hangs past [`EVENT_DEADLINE`].
pub async fn answer(request: reqwest::RequestBuilder) -> Answer {
    let started = Instant::now();
    let response = tokio::time::timeout(EVENT_DEADLINE, request.send())
        .await
        .expect("the request hung")
        .expect("the request completed");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("Retry-After")
        .map(|value| value.to_str().expect("an ASCII Retry-After").to_owned());
    let body = response.json().await.unwrap_or(Value::Null);
    Answer {
        status,
        body,
        retry_after,
        took: started.elapsed(),
    }
}
