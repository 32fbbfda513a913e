//! A typed client of signpost's HTTP API, on reqwest: for HTTP API tests written with reqwest
//! and for peers written in Rust. `docs/API.md` is the contract it speaks.
//!
//! [`Client::join`] joins a room and returns a [`Peer`], which sends ([`Peer::send`]), receives
//! on a stream that resumes by itself ([`Peer::events`]) or by long-polling ([`Peer::poll`]),
//! and leaves ([`Peer::leave`]). Every refusal is a [`ClientError::Api`] carrying the API's
//! `error` code.
//!
//! Behind the `client` feature (on by default): its dependencies are the load generator's
//! already, so it costs the server's build nothing but this module.
//!
//! # A two-peer exchange
//!
//! ```
//! use futures_util::StreamExt;
//! use serde_json::json;
//! use signpost::client::{Client, Event, JoinOptions, Message};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), signpost::client::ClientError> {
//! # let figment = rocket::Config::figment()
//! #     .merge(("address", "127.0.0.1")).merge(("port", 0)).merge(("log_level", "off"))
//! #     .merge(("shutdown.ctrlc", false)).merge(("signpost.log_level", "off"));
//! # let server = signpost::Server::bind(figment).await.unwrap();
//! # let base = format!("http://{}", server.local_addr().unwrap());
//! # tokio::spawn(server.run(std::future::pending()));
//! let client = Client::new(&base); // e.g. "http://127.0.0.1:8000"
//! let alice = client.join("demo", JoinOptions::named("Alice")).await?;
//! let mut alice_events = alice.events().await?;
//! let bob = client.join("demo", JoinOptions::named("Bob")).await?;
//! assert_eq!(bob.peers()[0].peer_id, alice.id());
//!
//! // Alice hears Bob join, then Bob's offer.
//! let offer = json!({"type": "offer", "sdp": "v=0…"});
//! bob.send(Message::new("offer").to(alice.id()).data(offer.clone())).await?;
//! let mut received = Vec::new();
//! while received.len() < 2 {
//!     if let Event::Message(envelope) = alice_events.next().await.unwrap()? {
//!         received.push(envelope);
//!     }
//! }
//! assert_eq!(received[0].kind, "join");
//! assert_eq!(received[1].kind, "offer");
//! assert_eq!(received[1].from.as_deref(), Some(bob.id()));
//! assert_eq!(received[1].data, offer);
//!
//! // Bob reads Alice's answer by long-polling.
//! alice.send(Message::new("answer").to(bob.id()).data(json!({"type": "answer"}))).await?;
//! let poll = bob.poll(0, std::time::Duration::from_secs(5)).await?;
//! assert_eq!(poll.messages[0].kind, "answer");
//! bob.leave().await?;
//! # Ok(())
//! # }
//! ```

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll as TaskPoll};
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures_util::stream::{BoxStream, Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A signpost server, by its base URL.
///
/// ```
/// let client = signpost::client::Client::new("http://127.0.0.1:8000");
/// ```
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    /// The base URL without a trailing `/`.
    base: Arc<str>,
}

/// What a join asks for: a display name, a `meta` object, a join token.
///
/// ```
/// use signpost::client::JoinOptions;
/// let options = JoinOptions::named("Alice").meta(serde_json::json!({"avatar": "a.png"}));
/// ```
#[derive(Clone, Debug, Default)]
pub struct JoinOptions {
    /// The display name (at most 64 characters).
    pub name: Option<String>,
    /// A JSON object shown to the other peers (at most 1024 bytes).
    pub meta: Option<Value>,
    /// A join token from the application, sent as `Authorization: Bearer` (docs/API.md).
    pub join_token: Option<String>,
}

impl JoinOptions {
    /// A join with this display name.
    ///
    /// ```
    /// assert_eq!(signpost::client::JoinOptions::named("Bob").name.as_deref(), Some("Bob"));
    /// ```
    pub fn named(name: impl Into<String>) -> JoinOptions {
        JoinOptions {
            name: Some(name.into()),
            ..JoinOptions::default()
        }
    }

    /// The same, with `meta`.
    ///
    /// ```
    /// let options = signpost::client::JoinOptions::default().meta(serde_json::json!({"x": 1}));
    /// assert!(options.meta.is_some());
    /// ```
    pub fn meta(mut self, meta: Value) -> JoinOptions {
        self.meta = Some(meta);
        self
    }

    /// The same, with a join token.
    ///
    /// ```
    /// let options = signpost::client::JoinOptions::default().join_token("eyJhbGciOi…");
    /// assert!(options.join_token.is_some());
    /// ```
    pub fn join_token(mut self, token: impl Into<String>) -> JoinOptions {
        self.join_token = Some(token.into());
        self
    }
}

/// A peer of a room, as the join answer and `GET /api/rooms/{room}` list them.
///
/// ```
/// let info: signpost::client::PeerInfo =
///     serde_json::from_str(r#"{"peer_id": "0b6c3f1e-8a8e-4d5c-9f3e-2a1b0c9d8e7f", "name": null}"#).unwrap();
/// assert_eq!(info.name, None);
/// ```
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct PeerInfo {
    pub peer_id: String,
    pub name: Option<String>,
    #[serde(default)]
    pub meta: Option<Value>,
}

/// The join's answer (docs/API.md, Join), less what [`Peer`]'s methods use themselves.
#[derive(Clone, Debug, Deserialize)]
struct Joined {
    room: String,
    peer_id: String,
    token: String,
    peers: Vec<PeerInfo>,
    ice_servers: Vec<Value>,
    send_url: String,
    events_url: String,
    poll_url: String,
    leave_url: String,
}

/// A message to send: a type, an optional recipient, any JSON.
///
/// ```
/// use signpost::client::Message;
/// let to_one = Message::new("offer").to("0b6c3f1e-8a8e-4d5c-9f3e-2a1b0c9d8e7f");
/// let to_all = Message::new("chat").data(serde_json::json!({"text": "hi"}));
/// ```
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Message {
    #[serde(rename = "type")]
    pub kind: String,
    /// The recipient; `None` sends to every other peer of the room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    #[serde(default)]
    pub data: Value,
}

impl Message {
    /// A message of type `kind` (1 to 32 of `a-z 0-9 _ -`, starting with a letter) to every
    /// other peer, with `null` data.
    ///
    /// ```
    /// assert_eq!(signpost::client::Message::new("chat").kind, "chat");
    /// ```
    pub fn new(kind: impl Into<String>) -> Message {
        Message {
            kind: kind.into(),
            to: None,
            data: Value::Null,
        }
    }

    /// The same, to one peer.
    ///
    /// ```
    /// let message = signpost::client::Message::new("offer").to("0b6c3f1e-8a8e-4d5c-9f3e-2a1b0c9d8e7f");
    /// assert!(message.to.is_some());
    /// ```
    pub fn to(mut self, peer_id: impl Into<String>) -> Message {
        self.to = Some(peer_id.into());
        self
    }

    /// The same, carrying `data`.
    ///
    /// ```
    /// let message = signpost::client::Message::new("chat").data(serde_json::json!("hi"));
    /// assert_eq!(message.data, "hi");
    /// ```
    pub fn data(mut self, data: Value) -> Message {
        self.data = data;
        self
    }
}

/// What a recipient receives for each message: its mailbox id, the sender (absent for the
/// server's `join` and `leave`), the type and the data.
///
/// ```
/// let envelope: signpost::client::Envelope =
///     serde_json::from_str(r#"{"id": 1, "type": "join", "data": {"peer_id": "…", "name": null}}"#).unwrap();
/// assert_eq!((envelope.id, envelope.from), (1, None));
/// ```
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Envelope {
    pub id: u64,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub data: Value,
}

/// One event of [`Peer::events`].
///
/// ```
/// use signpost::client::Event;
/// let ready = Event::Ready { last_id: 0 };
/// assert!(matches!(ready, Event::Ready { .. }));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The stream is live; `last_id` is the newest id in the mailbox. Sent again after each
    /// reconnection.
    Ready { last_id: u64 },
    /// The messages after the resume point are gone (`expired`), it is beyond the newest id
    /// (`ahead`), or the shared store lost messages (`lost`, after a Redis failover): renegotiate
    /// (docs/PROTOCOL.md 4).
    Reset { reason: String, last_id: u64 },
    /// A mailbox message.
    Message(Envelope),
}

/// A long-poll's answer.
///
/// ```
/// let poll: signpost::client::PollAnswer =
///     serde_json::from_str(r#"{"messages": [], "last_id": 3, "reset": false}"#).unwrap();
/// assert_eq!(poll.last_id, 3);
/// ```
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct PollAnswer {
    pub messages: Vec<Envelope>,
    /// What to pass as `after` next.
    pub last_id: u64,
    pub reset: bool,
    #[serde(default)]
    pub reset_reason: Option<String>,
}

/// Why a call failed.
///
/// ```
/// use signpost::client::ClientError;
/// let error = ClientError::Api { status: 404, code: "room_not_found".into(), message: String::new(), retry_after: None };
/// assert_eq!(error.code(), Some("room_not_found"));
/// ```
#[derive(Debug)]
pub enum ClientError {
    /// The server refused: its status, `error` code, message and `retry_after` (on 429 and
    /// 503), as docs/API.md lists them.
    Api {
        status: u16,
        code: String,
        message: String,
        retry_after: Option<u64>,
    },
    /// The request did not get an answer (connection refused, reset, timed out).
    Http(reqwest::Error),
    /// The server answered something that is not what docs/API.md says.
    Protocol(String),
}

impl ClientError {
    /// The API's `error` code, for a refusal.
    ///
    /// ```
    /// let error = signpost::client::ClientError::Protocol("?".into());
    /// assert_eq!(error.code(), None);
    /// ```
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Api {
                status,
                code,
                message,
                ..
            } => write!(f, "{status} {code}: {message}"),
            ClientError::Http(error) => write!(f, "no answer: {error}"),
            ClientError::Protocol(what) => write!(f, "unexpected answer: {what}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<reqwest::Error> for ClientError {
    fn from(error: reqwest::Error) -> ClientError {
        ClientError::Http(error)
    }
}

/// `room` as one path segment: anything but the characters of valid names percent-encoded, so
/// that a name the server refuses reaches it as the name it is (and gets `invalid_room_name`).
fn segment(room: &str) -> String {
    use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
    const SEGMENT: &percent_encoding::AsciiSet =
        &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.');
    utf8_percent_encode(room, SEGMENT).to_string()
}

/// The answer's JSON when it succeeded, or the API's error.
async fn answer<T: for<'de> Deserialize<'de>>(
    response: reqwest::Response,
) -> Result<T, ClientError> {
    let status = response.status().as_u16();
    let bytes = response.bytes().await?;
    if status >= 400 {
        return Err(api_error(status, &bytes));
    }
    serde_json::from_slice(&bytes).map_err(|error| ClientError::Protocol(error.to_string()))
}

fn api_error(status: u16, body: &[u8]) -> ClientError {
    #[derive(Deserialize)]
    struct Body {
        error: String,
        message: String,
        retry_after: Option<u64>,
    }
    match serde_json::from_slice::<Body>(body) {
        Ok(body) => ClientError::Api {
            status,
            code: body.error,
            message: body.message,
            retry_after: body.retry_after,
        },
        Err(_) => ClientError::Protocol(format!("{status} without a JSON error body")),
    }
}

impl Client {
    /// A client of the server at `base` (`http://host:port`).
    ///
    /// ```
    /// let client = signpost::client::Client::new("http://127.0.0.1:8000/");
    /// ```
    pub fn new(base: &str) -> Client {
        Client::with_http(base, reqwest::Client::new())
    }

    /// The same, on a reqwest client of your own (timeouts, proxies).
    ///
    /// ```
    /// let http = reqwest::Client::builder().build().unwrap();
    /// let client = signpost::client::Client::with_http("http://127.0.0.1:8000", http);
    /// ```
    pub fn with_http(base: &str, http: reqwest::Client) -> Client {
        Client {
            http,
            base: base.trim_end_matches('/').into(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Joins `room` (`POST /api/rooms/{room}/peers`).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), signpost::client::ClientError> {
    /// use signpost::client::{Client, JoinOptions};
    /// let peer = Client::new("http://127.0.0.1:8000").join("demo", JoinOptions::default()).await?;
    /// println!("joined as {}", peer.id());
    /// # Ok(()) }
    /// ```
    pub async fn join(&self, room: &str, options: JoinOptions) -> Result<Peer, ClientError> {
        let mut body = serde_json::Map::new();
        if let Some(name) = options.name {
            body.insert("name".into(), name.into());
        }
        if let Some(meta) = options.meta {
            body.insert("meta".into(), meta);
        }
        let mut request = self
            .http
            .post(self.url(&format!("/api/rooms/{}/peers", segment(room))))
            .header("Content-Type", "application/json")
            .body(Value::Object(body).to_string());
        if let Some(token) = options.join_token {
            request = request.bearer_auth(token);
        }
        let joined: Joined = answer(request.send().await?).await?;
        Ok(Peer {
            client: self.clone(),
            joined: Arc::new(joined),
        })
    }

    /// The peers of `room`, in join order (`GET /api/rooms/{room}`), asked with no credential:
    /// a server whose rooms are invite-only answers `credential_required` (use
    /// [`Peer::room_peers`] there).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), signpost::client::ClientError> {
    /// let peers = signpost::client::Client::new("http://127.0.0.1:8000").room("demo").await?;
    /// # Ok(()) }
    /// ```
    pub async fn room(&self, room: &str) -> Result<Vec<PeerInfo>, ClientError> {
        #[derive(Deserialize)]
        struct Room {
            peers: Vec<PeerInfo>,
        }
        let response = self
            .http
            .get(self.url(&format!("/api/rooms/{}", segment(room))))
            .send()
            .await?;
        Ok(answer::<Room>(response).await?.peers)
    }
}

/// A peer that joined: its id, its token and what it can do. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Peer {
    client: Client,
    joined: Arc<Joined>,
}

impl Peer {
    /// The peer a join answer describes, when the join was made by other means: by your
    /// application's backend on a user's behalf, or by a raw HTTP request (as this project's
    /// tests do, to check the answer itself).
    ///
    /// ```
    /// use signpost::client::{Client, Peer};
    /// let answer = serde_json::json!({
    ///     "room": "demo", "peer_id": "0b6c3f1e-8a8e-4d5c-9f3e-2a1b0c9d8e7f", "token": "…",
    ///     "peers": [], "ice_servers": [],
    ///     "send_url": "/api/rooms/demo/messages",
    ///     "events_url": "/api/rooms/demo/peers/0b6c3f1e-8a8e-4d5c-9f3e-2a1b0c9d8e7f/events",
    ///     "poll_url": "/api/rooms/demo/peers/0b6c3f1e-8a8e-4d5c-9f3e-2a1b0c9d8e7f/messages",
    ///     "leave_url": "/api/rooms/demo/peers/0b6c3f1e-8a8e-4d5c-9f3e-2a1b0c9d8e7f",
    /// });
    /// let peer = Peer::from_join_answer(&Client::new("http://127.0.0.1:8000"), answer).unwrap();
    /// assert_eq!(peer.room(), "demo");
    /// ```
    pub fn from_join_answer(client: &Client, answer: Value) -> Result<Peer, ClientError> {
        let joined: Joined = serde_json::from_value(answer)
            .map_err(|error| ClientError::Protocol(format!("not a join answer: {error}")))?;
        Ok(Peer {
            client: client.clone(),
            joined: Arc::new(joined),
        })
    }

    /// The peer's id (public).
    ///
    /// ```no_run
    /// # async fn run(peer: signpost::client::Peer) { println!("{}", peer.id()); }
    /// ```
    pub fn id(&self) -> &str {
        &self.joined.peer_id
    }

    /// The room's name.
    ///
    /// ```no_run
    /// # async fn run(peer: signpost::client::Peer) { println!("{}", peer.room()); }
    /// ```
    pub fn room(&self) -> &str {
        &self.joined.room
    }

    /// The peer's secret token, for requests this client does not make.
    ///
    /// ```no_run
    /// # async fn run(peer: signpost::client::Peer) { let bearer = format!("Bearer {}", peer.token()); }
    /// ```
    pub fn token(&self) -> &str {
        &self.joined.token
    }

    /// The peers that were in the room when this one joined, in join order.
    ///
    /// ```no_run
    /// # async fn run(peer: signpost::client::Peer) { for other in peer.peers() { println!("{}", other.peer_id); } }
    /// ```
    pub fn peers(&self) -> &[PeerInfo] {
        &self.joined.peers
    }

    /// The ICE servers of the join answer (`RTCIceServer` objects).
    ///
    /// ```no_run
    /// # async fn run(peer: signpost::client::Peer) { let servers = peer.ice_servers().len(); }
    /// ```
    pub fn ice_servers(&self) -> &[Value] {
        &self.joined.ice_servers
    }

    fn url(&self, path: &str) -> String {
        self.client.url(path)
    }

    /// The peers of this peer's room, in join order, asked with this peer's token: unlike
    /// [`Client::room`], this also works on a server whose rooms are invite-only
    /// (`join_auth = "required"`, where a look at a room needs a credential for it).
    ///
    /// ```no_run
    /// # async fn run(peer: signpost::client::Peer) -> Result<(), signpost::client::ClientError> {
    /// for other in peer.room_peers().await? { println!("{}", other.peer_id); }
    /// # Ok(()) }
    /// ```
    pub async fn room_peers(&self) -> Result<Vec<PeerInfo>, ClientError> {
        #[derive(Deserialize)]
        struct Room {
            peers: Vec<PeerInfo>,
        }
        let response = self
            .client
            .http
            .get(self.url(&format!("/api/rooms/{}", segment(self.room()))))
            .bearer_auth(&self.joined.token)
            .send()
            .await?;
        Ok(answer::<Room>(response).await?.peers)
    }

    /// Sends one message; returns how many the server accepted (1).
    ///
    /// ```no_run
    /// # async fn run(peer: signpost::client::Peer) -> Result<(), signpost::client::ClientError> {
    /// use signpost::client::Message;
    /// peer.send(Message::new("chat").data(serde_json::json!({"text": "hi"}))).await?;
    /// # Ok(()) }
    /// ```
    pub async fn send(&self, message: Message) -> Result<usize, ClientError> {
        self.send_json(serde_json::to_string(&message), None).await
    }

    /// Sends 1 to 64 messages in one request, accepted whole or not at all.
    ///
    /// ```no_run
    /// # async fn run(peer: signpost::client::Peer, to: &str) -> Result<(), signpost::client::ClientError> {
    /// use signpost::client::Message;
    /// let candidates = vec![Message::new("candidate").to(to), Message::new("candidate").to(to)];
    /// assert_eq!(peer.send_batch(&candidates).await?, 2);
    /// # Ok(()) }
    /// ```
    pub async fn send_batch(&self, messages: &[Message]) -> Result<usize, ClientError> {
        self.send_json(serde_json::to_string(messages), None).await
    }

    /// [`send_batch`](Self::send_batch) under an `Idempotency-Key` (1-64 characters of
    /// `A-Z a-z 0-9 . _ : -`, new for each batch): calling it again with the same key and
    /// messages, after an error that leaves unknown whether the batch was accepted (a 503, a
    /// lost connection), within the server's idempotency window, answers as the first call and
    /// delivers nothing twice.
    ///
    /// ```no_run
    /// # async fn run(peer: signpost::client::Peer, to: &str) -> Result<(), signpost::client::ClientError> {
    /// use signpost::client::Message;
    /// let offer = [Message::new("offer").to(to)];
    /// let key = uuid::Uuid::new_v4().to_string();
    /// let sent = match peer.send_batch_with_key(&offer, &key).await {
    ///     Ok(sent) => sent,
    ///     Err(_) => peer.send_batch_with_key(&offer, &key).await?,
    /// };
    /// # Ok(()) }
    /// ```
    pub async fn send_batch_with_key(
        &self,
        messages: &[Message],
        key: &str,
    ) -> Result<usize, ClientError> {
        self.send_json(serde_json::to_string(messages), Some(key))
            .await
    }

    async fn send_json(
        &self,
        body: serde_json::Result<String>,
        key: Option<&str>,
    ) -> Result<usize, ClientError> {
        #[derive(Deserialize)]
        struct Accepted {
            accepted: usize,
        }
        let body = body.map_err(|error| ClientError::Protocol(error.to_string()))?;
        let mut request = self
            .client
            .http
            .post(self.url(&self.joined.send_url))
            .bearer_auth(&self.joined.token)
            .header("Content-Type", "application/json");
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.body(body).send().await?;
        Ok(answer::<Accepted>(response).await?.accepted)
    }

    /// Waits up to `wait` for messages with an id above `after`, and acknowledges those up to
    /// `after` (the long-poll).
    ///
    /// ```no_run
    /// # async fn run(peer: signpost::client::Peer) -> Result<(), signpost::client::ClientError> {
    /// let mut after = 0;
    /// loop {
    ///     let answer = peer.poll(after, std::time::Duration::from_secs(25)).await?;
    ///     for envelope in &answer.messages { println!("{envelope:?}"); }
    ///     after = answer.last_id;
    /// }
    /// # }
    /// ```
    pub async fn poll(&self, after: u64, wait: Duration) -> Result<PollAnswer, ClientError> {
        let url = format!(
            "{}?after={after}&wait={}",
            self.url(&self.joined.poll_url),
            wait.as_secs_f64()
        );
        let response = self
            .client
            .http
            .get(url)
            .bearer_auth(&self.joined.token)
            .send()
            .await?;
        answer(response).await
    }

    /// Opens the peer's SSE stream (the peer counts as present from then on) and returns its
    /// events, for as long as the peer is in the room. When the stream ends (a proxy's timeout,
    /// a restart) it reconnects with `Last-Event-ID` and goes on where it was: no message lost
    /// or repeated. It ends after yielding the error that refused a reconnection
    /// (`peer_not_found` once the peer left or was removed). One stream per peer: opening
    /// another ends this one's connection, and the two would take turns.
    ///
    /// A refusal of the first connection is returned here.
    ///
    /// ```no_run
    /// # async fn run(peer: signpost::client::Peer) -> Result<(), signpost::client::ClientError> {
    /// use futures_util::StreamExt;
    /// let mut events = peer.events().await?;
    /// while let Some(event) = events.next().await {
    ///     println!("{:?}", event?);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn events(&self) -> Result<Events, ClientError> {
        let mut state = Connection {
            peer: self.clone(),
            last_id: None,
            stream: None,
            ended: false,
        };
        state.connect().await?;
        Ok(Events {
            inner: futures_util::stream::unfold(state, Connection::next).boxed(),
        })
    }

    /// Leaves the room (`DELETE` on the peer).
    ///
    /// ```no_run
    /// # async fn run(peer: signpost::client::Peer) -> Result<(), signpost::client::ClientError> {
    /// peer.leave().await?;
    /// # Ok(()) }
    /// ```
    pub async fn leave(&self) -> Result<(), ClientError> {
        let response = self
            .client
            .http
            .delete(self.url(&self.joined.leave_url))
            .bearer_auth(&self.joined.token)
            .send()
            .await?;
        let status = response.status().as_u16();
        if status >= 400 {
            return Err(api_error(status, &response.bytes().await?));
        }
        Ok(())
    }
}

/// The stream of [`Peer::events`].
pub struct Events {
    inner: BoxStream<'static, Result<Event, ClientError>>,
}

impl Stream for Events {
    type Item = Result<Event, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> TaskPoll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}

/// The state between two events: where to resume, and the open stream if there is one.
struct Connection {
    peer: Peer,
    /// The id of the last message yielded: sent as `Last-Event-ID` on reconnection.
    last_id: Option<u64>,
    stream: Option<BoxStream<'static, Result<eventsource_stream::Event, String>>>,
    /// Set after a refused reconnection has been yielded.
    ended: bool,
}

impl Connection {
    async fn next(mut self) -> Option<(Result<Event, ClientError>, Connection)> {
        loop {
            if self.ended {
                return None;
            }
            let Some(stream) = self.stream.as_mut() else {
                if let Err(error) = self.connect().await {
                    self.ended = true;
                    return Some((Err(error), self));
                }
                continue;
            };
            let Some(Ok(event)) = stream.next().await else {
                // The stream ended or broke: reconnect, resuming after the last id.
                self.stream = None;
                continue;
            };
            let parsed = match parse_event(&event) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => continue,
                Err(error) => return Some((Err(error), self)),
            };
            if let Event::Message(envelope) = &parsed {
                self.last_id = Some(envelope.id);
            }
            return Some((Ok(parsed), self));
        }
    }

    async fn connect(&mut self) -> Result<(), ClientError> {
        let joined = &self.peer.joined;
        let mut request = self
            .peer
            .client
            .http
            .get(self.peer.url(&joined.events_url))
            .bearer_auth(&joined.token);
        if let Some(id) = self.last_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        if status >= 400 {
            return Err(api_error(status, &response.bytes().await?));
        }
        let events = response
            .bytes_stream()
            .eventsource()
            .map(|event| event.map_err(|error| error.to_string()));
        self.stream = Some(events.boxed());
        Ok(())
    }
}

/// An SSE event as an [`Event`]; `None` for events of no meaning here.
fn parse_event(event: &eventsource_stream::Event) -> Result<Option<Event>, ClientError> {
    #[derive(Deserialize)]
    struct Ready {
        last_id: u64,
    }
    #[derive(Deserialize)]
    struct Reset {
        reason: String,
        last_id: u64,
    }
    let protocol = |error: serde_json::Error| ClientError::Protocol(error.to_string());
    Ok(Some(match event.event.as_str() {
        "ready" => {
            let ready: Ready = serde_json::from_str(&event.data).map_err(protocol)?;
            Event::Ready {
                last_id: ready.last_id,
            }
        }
        "reset" => {
            let reset: Reset = serde_json::from_str(&event.data).map_err(protocol)?;
            Event::Reset {
                reason: reset.reason,
                last_id: reset.last_id,
            }
        }
        _ if event.data.is_empty() => return Ok(None),
        _ => Event::Message(serde_json::from_str(&event.data).map_err(protocol)?),
    }))
}
