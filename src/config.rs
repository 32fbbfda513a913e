//! signpost's configuration: the `[<profile>.signpost]` table of `Rocket.toml`, or
//! `ROCKET_SIGNPOST={key=value}` in the environment. Every field has a default, so an empty table
//! (or none) is a working server.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Limits and timings. Unknown keys are refused so that a typo cannot silently keep a default.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Rooms that may exist at once. Default 10,000: a room costs a few hundred bytes, and the
    /// limit exists to stop a script from creating rooms without end, not to ration normal use.
    pub max_rooms: usize,
    /// Peers per room. Default 16: a browser full mesh is impractical beyond ~8 peers, so 16
    /// leaves room for observers and bots without letting one room grow without bound.
    pub max_peers_per_room: usize,
    /// Largest message, measured as its encoded envelope. Default 64 KiB: an SDP offer with many
    /// tracks and candidates reaches ~10 KiB, so this is generous without letting the server
    /// become a file relay.
    pub max_message_bytes: usize,
    /// Largest request body. Default 1 MiB: a full batch of large messages, with headroom.
    pub max_body_bytes: usize,
    /// Undelivered messages a mailbox holds before its peer is evicted. Default 1024: a peer
    /// joining a full room receives an offer and dozens of candidates from each other peer before
    /// it starts listening.
    pub mailbox_capacity: usize,
    /// Delivered messages kept per mailbox for resumes. Default 256: enough to cover what a
    /// proxy may have swallowed between the server's write and a cut connection.
    pub replay_window: usize,
    /// Undelivered bytes (encoded envelopes) a mailbox holds before its peer is evicted, like
    /// `mailbox_capacity` in bytes. Default 1 MiB: a 16-peer mesh's set-up (an offer or answer
    /// of ~10 KiB and a few dozen candidates from each of 15 peers) is ~150 KiB per mailbox;
    /// without it, 1024 messages of 64 KiB would pin 64 MiB per peer. At least
    /// `max_message_bytes`.
    pub mailbox_max_bytes: usize,
    /// Delivered bytes kept per mailbox for resumes: the replay window is the newest
    /// `replay_window` messages *and* at most this many bytes. Default 256 KiB: more than a
    /// set-up's worth of signaling, which is what a cut connection may have swallowed.
    pub replay_window_bytes: usize,
    /// Bytes held in mailboxes (undelivered and in replay windows) charged to the sender's client
    /// address (its `limit_key`) until they leave the mailbox; a send past it is refused whole
    /// (429 `too_many_bytes_held`). Default 64 MiB: an office of 300 people behind one NAT in
    /// meetings of 16 holds tens of MiB at most, while one address can no longer pin gigabytes.
    /// At least `max_message_bytes`.
    pub client_max_held_bytes: usize,
    /// Bytes held in all mailboxes of the server (memory store: this process; Redis: the whole
    /// deployment); a send past it is refused whole (503 `server_full`). Default 384 MiB: a
    /// small instance's memory, six addresses at their own limit, far above what real meetings
    /// hold (kilobytes per peer once set up). At least `max_message_bytes`.
    pub max_held_bytes: usize,
    /// Bytes of messages one long-poll answer (and one store read of a stream) carries at most;
    /// the rest comes with the next poll, no id skipped. Default 256 KiB: a whole set-up in
    /// one answer, while 50 polls left unread hold 12.5 MiB, not a backlog each. At least
    /// `max_message_bytes`, so that any one message fits.
    pub poll_max_bytes: usize,
    /// A peer with no open stream and no poll in flight for this long is removed. Default 30 s:
    /// longer than a reconnect with backoff, short enough that a closed tab soon leaves.
    pub peer_timeout_secs: f64,
    /// Seconds between SSE heartbeat comments. Default 15 s: below the 30-60 s idle timeouts of
    /// common proxies and load balancers.
    pub heartbeat_secs: f64,
    /// The longest a long-poll may wait, and its default wait. Default 25 s: below the 30 s
    /// read timeouts that many proxies apply.
    pub poll_max_wait_secs: f64,
    /// Messages per second a peer may send, sustained. Default 50.
    pub send_rate_per_sec: f64,
    /// Messages a peer may send in a burst. Default 400: joining a full room sends an offer and
    /// a few dozen candidates to each of up to 15 peers at once.
    pub send_burst: f64,
    /// How long a send with an `Idempotency-Key` is remembered, so that a retry with the key is
    /// answered as the first was instead of delivered again. Default 300 s: longer than any
    /// retry back-off a client should use after a 503 (seconds), shorter than a peer's session.
    /// At least 1 s, at most 1 day.
    pub idempotency_window_secs: u64,
    /// Keys one peer's sends are remembered under at once; past it the oldest is forgotten.
    /// Default 128: a client retries within seconds, and a peer sending at the whole
    /// `send_rate_per_sec` with a key per message keeps its last 2.5 s of keys (with a key per
    /// batch, as signpost.js does, far more). 128 is also the most entries Redis keeps in its
    /// compact encoding (`hash-`/`zset-max-listpack-entries`): a peer's keys of 64 bytes take
    /// 25 KiB there at the cap, and 72 KiB at 256. At least 1.
    pub idempotency_keys_per_peer: usize,
    /// ICE servers handed to every peer when it joins, as `RTCIceServer` objects. Default none.
    pub ice_servers: Vec<IceServer>,
    /// Directory of the browser client served at `/` and under `/static/` (`/signpost.js` is the
    /// module other pages import). Default `static`, relative to the working directory (the
    /// repository root under `cargo run`).
    pub static_dir: String,
    /// How much the server binary logs: `"info"` each failed request and each join, leave and
    /// eviction; `"warn"` only problems; `"debug"` also what libraries (Rocket) say at their
    /// `info` level; `"off"` nothing. Default `info`. `RUST_LOG`, when set, replaces this with
    /// its own directives (`crate::logging` says what can never be logged, whatever the level).
    pub log_level: LogLevel,
    /// The log's form on stderr: `"text"`, one line per record for people, or `"json"`, one JSON
    /// object per line for a log collector. Default `text`: a terminal or `journalctl` is where
    /// a single instance's log is read; several instances are aggregated by tools that want JSON.
    pub log_format: LogFormat,
    /// The name every log record carries, so that the aggregated logs of several instances can
    /// be told apart. Default `<hostname>-<pid>`: unique among instances running at once, and
    /// in a container the hostname is the container's (or the Kubernetes pod's) name, which is
    /// what an operator looks up; set it to something stabler, such as a replica name, if one
    /// exists.
    pub instance: Option<String>,
    /// TURN URLs to hand out with ephemeral credentials, e.g.
    /// `["turn:turn.example.org:3478?transport=udp", "turns:turn.example.org:5349?transport=tcp"]`.
    /// Default none. Needs `turn_secret`: a TURN server without credentials is an open relay, so
    /// static TURN credentials, if you must, go in `ice_servers`.
    pub turn_urls: Vec<String>,
    /// The secret shared with coturn (`static-auth-secret`), from which each peer's credentials
    /// are derived; it is never sent to anyone. Default none (no TURN credentials).
    pub turn_secret: Option<Secret>,
    /// How long TURN credentials stay valid. Default 86,400 s (24 h), coturn's own suggestion: a
    /// call lasts well within it, and a client refreshes with `GET …/ice-servers` before that.
    pub turn_credential_ttl_secs: u64,
    /// Address for the built-in STUN server (UDP), e.g. `"0.0.0.0:3478"`. Default none: off, as
    /// it needs a UDP port that a proxy in front of the HTTP port does not forward.
    pub stun_bind: Option<SocketAddr>,
    /// The URL advertised for the built-in STUN server, e.g. `"stun:stun.example.org:3478"`.
    /// Default: `stun:<host the client used to reach signpost>:<port of stun_bind>`, right when
    /// the HTTP and STUN ports share a public address.
    pub stun_url: Option<String>,
    /// Origins (`scheme://host[:port]`) whose pages may call the API, or `["*"]` for any.
    /// Default none: the bundled client is served from the same origin and needs no CORS, and
    /// letting other sites embed signaling is the operator's decision.
    pub cors_allowed_origins: Vec<String>,
    /// The shared store, e.g. `"redis://127.0.0.1:6379"` or `"redis+unix:///run/redis.sock"`:
    /// with it, several instances pointed at one Redis behave as one server. Default none: rooms
    /// live in this process's memory, and nothing else needs to run. `rediss://` (TLS) needs a
    /// build with the `redis-tls` feature; the server's certificate is then checked against the
    /// system's roots, or `redis_tls_ca_file`'s.
    pub redis_url: Option<String>,
    /// A PEM file of the CA certificates that a `rediss://` Redis's certificate must chain to,
    /// instead of the system's roots: for a Redis whose certificate a private CA signed. Default
    /// none (the system's roots, which managed Redis services' public CAs are among). Read once,
    /// at start.
    pub redis_tls_ca_file: Option<PathBuf>,
    /// Instead of `redis_url`: the Redis Sentinels that monitor the store's master, e.g.
    /// `["redis://:secret@10.0.0.5:26379", "redis://:secret@10.0.0.6:26379", …]`; signpost asks
    /// them where the master is and follows it across failovers (README, "Several instances").
    /// The URLs' userinfo is the *data nodes'* password (the sentinels' own is
    /// `redis_sentinel_password`),
    /// and `rediss://` (all or none) means TLS to the sentinels and to the data nodes, checked
    /// against `redis_tls_ca_file` if given. Default none; at least one, and list several:
    /// while one is down, the next is asked.
    pub redis_sentinels: Option<Vec<String>>,
    /// The name the sentinels monitor the master under (`sentinel monitor <name> …`). Default
    /// none; required with `redis_sentinels`, and only with them.
    pub redis_sentinel_master: Option<String>,
    /// The sentinels' own password, for sentinels that ask one (`requirepass` in each
    /// sentinel's configuration; the data nodes' password is the URLs' userinfo). Default none;
    /// only with `redis_sentinels`.
    pub redis_sentinel_password: Option<Secret>,
    /// Instead of `redis_url` or `redis_sentinels`: seed nodes of a Redis Cluster, e.g.
    /// `["redis://:secret@10.0.0.5:7000", "redis://:secret@10.0.0.6:7000", …]`; signpost asks
    /// them for the slot map and follows it (MOVED/ASK, failovers, slot migrations). Every
    /// room's keys and wake-up channel live on the room's slot; the deployment-wide counts live
    /// on one slot of their own (README, "Redis Cluster"). The URLs' userinfo is the nodes'
    /// password, and `rediss://` (all or none) means TLS, checked against `redis_tls_ca_file`
    /// if given. Default none; at least one, and list several: while one is down, the next is
    /// asked.
    pub redis_cluster_nodes: Option<Vec<String>>,
    /// How many replicas must acknowledge a send's writes before it is answered 202 (Redis's
    /// `WAIT`); if fewer do within `redis_wait_timeout_ms`, the answer is `503
    /// store_unavailable` (the message may still arrive: retry with the same `Idempotency-Key`).
    /// Default 0 (off): Redis replicates asynchronously, and a failover can lose the last
    /// acknowledged writes; 1 makes an accepted message survive the loss of the master, at the
    /// cost measured in docs/BENCHMARKS.md. Only with a Redis store.
    pub redis_wait_replicas: u32,
    /// How long a send waits for `redis_wait_replicas` acknowledgements. Default 200 ms: a
    /// replica on the same network acknowledges in about a millisecond, so only a replica that is
    /// gone or far behind waits it out, and a refused send still gets its 503 well within a
    /// second. 1 to 1,000.
    pub redis_wait_timeout_ms: u64,
    /// Prefix of every Redis key and channel. Default `"signpost"`; give each deployment that
    /// shares one Redis its own.
    pub redis_prefix: String,
    /// Who may join: `open` (anyone who knows the room's name), `optional` (a join token is
    /// checked when one is sent), `required` (every join needs one). Default `open`, the
    /// behaviour before tokens existed; the other two need `join_keys`.
    pub join_auth: JoinAuth,
    /// The HS256 secrets that sign join tokens, by key id (the token header's `kid`), each at
    /// least 32 bytes (RFC 7518 asks for a key as long as the hash). Default none. Several keys
    /// allow rotation (README). Rather set them from the environment, like `turn_secret`.
    pub join_keys: BTreeMap<String, Secret>,
    /// The `aud` a join token must carry. Default `"signpost"`; give each deployment its own so
    /// that a token minted for one does not open another that shares a key.
    pub join_token_audience: String,
    /// Clock skew allowed on `exp` and `nbf`, in seconds. Default 60, as LiveKit and
    /// jsonwebtoken do: servers' clocks drift by seconds, not minutes.
    pub join_token_leeway_secs: u64,
    /// Joins per second one client address may make, sustained. Default 20: hundreds of people
    /// behind one corporate NAT joining their calls over the day stay far below it, while a
    /// script that joins in a loop is held to a pace the room table survives.
    pub join_rate_per_sec: f64,
    /// Joins one client address may make at once. Default 100: a whole office joining the same
    /// all-hands meeting within a second or two.
    pub join_burst: f64,
    /// Peers one client address may hold at once (429 beyond). Default 1,000: a large office
    /// behind one NAT, each in a call; and a tenth of `max_rooms`, so that one address can never
    /// fill the room table by itself.
    pub max_peers_per_client: usize,
    /// Rooms in which one client address may hold a peer at once (429 beyond). Default 100: an
    /// office behind one NAT is in far fewer meetings at a time, and it takes at least 100
    /// addresses to fill the default `max_rooms` of 10,000.
    pub max_rooms_per_client: usize,
    /// How many leading bits of an IPv6 address make one client for every per-address limit.
    /// Default 64: a subscriber is given at least a /64 and can use any address in it. Between
    /// 32 and 128: a shorter prefix would put whole providers under one limit.
    pub client_ipv6_prefix: u8,
    /// Proxies (CIDRs, e.g. `["127.0.0.1/32", "10.0.0.0/8"]`) whose `X-Forwarded-For` is
    /// believed: behind them, the client is the rightmost address of that header that is not
    /// itself a trusted proxy. Default none: the client is the TCP peer and the header is
    /// ignored, since anyone can write it.
    pub trusted_proxies: Vec<String>,
    /// The secret (at least 32 bytes) that signs resume credentials: with it, every join
    /// response carries one, and a peer that the server forgot (a restart of a memory-store
    /// server, a timeout) rejoins under the same peer id by presenting it, on any instance that
    /// shares the secret. Default none: no credentials, and a rejoin gets a new peer id, which
    /// the pages re-pair by their participant keys (docs/PROTOCOL.md, section 7). Rather set it
    /// from the environment, like `turn_secret`.
    pub resume_secret: Option<Secret>,
    /// The bearer token `GET /metrics` asks for (`Authorization: Bearer <token>`), at least 16
    /// bytes so that it cannot be guessed. Default none: `/metrics` is open, as Prometheus
    /// expects on a private network; set it when the port is public and the numbers (rooms,
    /// peers, refusals) are not. Rather set it from the environment, like `turn_secret`.
    pub metrics_token: Option<Secret>,
    /// Seconds a request body may take to arrive whole, from the moment the server starts
    /// reading it; past that the request is answered `408 body_timeout` and its connection
    /// closed. Default 10: a full 1 MiB batch (`max_body_bytes`) over a slow 1 Mbit/s link takes
    /// about 8 s, while a client trickling a body a byte at a time holds its connection no longer.
    pub body_read_timeout_secs: f64,
    /// Seconds a write to a connection may wait for the client to read before the connection is
    /// closed, whatever was being written (an SSE stream, a poll answer, anything). Default 20:
    /// a client that is merely slow reads something within seconds (the kernel's buffers hold
    /// hundreds of KiB), while one that stopped reading would otherwise hold its stream, its
    /// buffers and its descriptor forever.
    pub write_timeout_secs: f64,
    /// Open connections one client address (an IPv6 client: its /64) may have to this instance;
    /// the next one is answered `429 too_many_connections` and closed. Connections from
    /// `trusted_proxies` are not counted, since a proxy carries many clients. Default 1024: an
    /// office of ~300 browsers behind one NAT uses ~3 each, while one address can no longer hold
    /// every descriptor of the process.
    pub max_connections_per_client: usize,
}

/// `join_auth`: who may join a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JoinAuth {
    /// Anyone; a join's `Authorization` header is not looked at.
    #[default]
    Open,
    /// Anyone; but a join token that is sent must be valid, and its claims apply.
    Optional,
    /// Only with a valid join token.
    Required,
}

/// A secret of the configuration: a value of `join_keys`, `turn_secret`, `resume_secret`,
/// `metrics_token`. Deserialised from a plain string; `Debug` never shows it, so a logged config
/// cannot leak it, and only [`expose`](Self::expose) hands out its bytes, to the one that signs
/// or compares with it.
#[derive(Clone, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// One `RTCIceServer` as a browser takes it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// `log_level`: ordered from quietest to most verbose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Off,
    Warn,
    Info,
    Debug,
}

/// `log_format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_rooms: 10_000,
            max_peers_per_room: 16,
            max_message_bytes: 64 * 1024,
            max_body_bytes: 1024 * 1024,
            mailbox_capacity: 1024,
            replay_window: 256,
            mailbox_max_bytes: 1024 * 1024,
            replay_window_bytes: 256 * 1024,
            client_max_held_bytes: 64 * 1024 * 1024,
            max_held_bytes: 384 * 1024 * 1024,
            poll_max_bytes: 256 * 1024,
            peer_timeout_secs: 30.0,
            heartbeat_secs: 15.0,
            poll_max_wait_secs: 25.0,
            send_rate_per_sec: 50.0,
            send_burst: 400.0,
            idempotency_window_secs: 300,
            idempotency_keys_per_peer: 128,
            ice_servers: Vec::new(),
            static_dir: "static".into(),
            log_level: LogLevel::Info,
            log_format: LogFormat::Text,
            instance: None,
            turn_urls: Vec::new(),
            turn_secret: None,
            turn_credential_ttl_secs: 24 * 60 * 60,
            stun_bind: None,
            stun_url: None,
            cors_allowed_origins: Vec::new(),
            redis_url: None,
            redis_tls_ca_file: None,
            redis_sentinels: None,
            redis_sentinel_master: None,
            redis_sentinel_password: None,
            redis_cluster_nodes: None,
            redis_wait_replicas: 0,
            redis_wait_timeout_ms: 200,
            redis_prefix: "signpost".into(),
            join_auth: JoinAuth::Open,
            join_keys: BTreeMap::new(),
            resume_secret: None,
            metrics_token: None,
            join_token_audience: "signpost".into(),
            join_token_leeway_secs: 60,
            join_rate_per_sec: 20.0,
            join_burst: 100.0,
            max_peers_per_client: 1000,
            max_rooms_per_client: 100,
            client_ipv6_prefix: 64,
            trusted_proxies: Vec::new(),
            body_read_timeout_secs: 10.0,
            write_timeout_secs: 20.0,
            max_connections_per_client: 1024,
        }
    }
}

impl Config {
    /// Refuses values that would make the server misbehave rather than merely be strict.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("peer_timeout_secs", self.peer_timeout_secs),
            ("heartbeat_secs", self.heartbeat_secs),
            ("send_rate_per_sec", self.send_rate_per_sec),
        ];
        for (name, value) in positive {
            if !(value.is_finite() && value > 0.0) {
                return Err(format!(
                    "signpost.{name} must be a positive number, not {value}"
                ));
            }
        }
        if !(self.poll_max_wait_secs.is_finite() && self.poll_max_wait_secs >= 0.0) {
            return Err("signpost.poll_max_wait_secs must be zero or more".into());
        }
        let durations = [
            ("peer_timeout_secs", self.peer_timeout_secs),
            ("heartbeat_secs", self.heartbeat_secs),
            ("poll_max_wait_secs", self.poll_max_wait_secs),
        ];
        for (name, value) in durations {
            if Duration::try_from_secs_f64(value).is_err() {
                return Err(format!("signpost.{name} is too large: {value}"));
            }
        }
        if !(self.send_burst.is_finite() && self.send_burst >= 1.0) {
            return Err("signpost.send_burst must be at least 1".into());
        }
        self.validate_idempotency()?;
        let at_least_one = [
            ("max_rooms", self.max_rooms),
            ("max_peers_per_room", self.max_peers_per_room),
            ("max_message_bytes", self.max_message_bytes),
            ("max_body_bytes", self.max_body_bytes),
            ("mailbox_capacity", self.mailbox_capacity),
        ];
        for (name, value) in at_least_one {
            if value == 0 {
                return Err(format!("signpost.{name} must be at least 1"));
            }
        }
        self.validate_bytes()?;
        match (&self.turn_secret, self.turn_urls.is_empty()) {
            (Some(secret), false) if secret.expose().is_empty() => {
                return Err("signpost.turn_secret may not be empty".into())
            }
            (Some(_), true) => {
                return Err("signpost.turn_secret is set but signpost.turn_urls is empty".into())
            }
            (None, false) => {
                return Err(
                    "signpost.turn_urls needs signpost.turn_secret (coturn's static-auth-secret)"
                        .into(),
                )
            }
            _ => {}
        }
        if let Some(instance) = &self.instance {
            if instance.trim().is_empty() || instance.chars().any(char::is_control) {
                return Err(format!(
                    "signpost.instance must be a name without control characters, not {instance:?}"
                ));
            }
        }
        if self.turn_credential_ttl_secs == 0 {
            return Err("signpost.turn_credential_ttl_secs must be at least 1".into());
        }
        for origin in &self.cors_allowed_origins {
            let well_formed = origin == "*"
                || ((origin.starts_with("http://") || origin.starts_with("https://"))
                    && !origin.ends_with('/'));
            if !well_formed {
                return Err(format!(
                    "signpost.cors_allowed_origins: {origin:?} is not \"*\" nor an origin such as \"https://example.org\""
                ));
            }
        }
        self.validate_durations()?;
        if let Some(token) = &self.metrics_token {
            if token.expose().len() < 16 {
                return Err(format!(
                    "signpost.metrics_token is {} bytes; it needs at least 16",
                    token.expose().len()
                ));
            }
        }
        self.validate_store()?;
        self.validate_joins()?;
        self.validate_connections()
    }

    /// The idempotent sends' part of [`Config::validate`]: a window of 0 would remember
    /// nothing, and one past a day would hold a peer's keys longer than any retry needs.
    fn validate_idempotency(&self) -> Result<(), String> {
        const DAY: u64 = 24 * 60 * 60;
        if !(1..=DAY).contains(&self.idempotency_window_secs) {
            return Err(format!(
                "signpost.idempotency_window_secs must be 1 to {DAY} (1 day), not {}",
                self.idempotency_window_secs
            ));
        }
        if self.idempotency_keys_per_peer == 0 {
            return Err("signpost.idempotency_keys_per_peer must be at least 1".into());
        }
        Ok(())
    }

    /// The connection limits' part of [`Config::validate`].
    fn validate_connections(&self) -> Result<(), String> {
        let timeouts = [
            ("body_read_timeout_secs", self.body_read_timeout_secs),
            ("write_timeout_secs", self.write_timeout_secs),
        ];
        for (name, value) in timeouts {
            if !(value.is_finite() && value > 0.0) || Duration::try_from_secs_f64(value).is_err() {
                return Err(format!(
                    "signpost.{name} must be a positive number of seconds, not {value}"
                ));
            }
        }
        if self.max_connections_per_client == 0 {
            return Err("signpost.max_connections_per_client must be at least 1".into());
        }
        Ok(())
    }

    /// The byte bounds' part of [`Config::validate`]: each must fit one message of
    /// `max_message_bytes`, or a message could be refused (or its recipient evicted) whatever
    /// the state of the server.
    fn validate_bytes(&self) -> Result<(), String> {
        let fits_a_message = [
            ("mailbox_max_bytes", self.mailbox_max_bytes),
            ("client_max_held_bytes", self.client_max_held_bytes),
            ("max_held_bytes", self.max_held_bytes),
            ("poll_max_bytes", self.poll_max_bytes),
        ];
        for (name, value) in fits_a_message {
            if value < self.max_message_bytes {
                return Err(format!(
                    "signpost.{name} ({value}) must be at least signpost.max_message_bytes ({})",
                    self.max_message_bytes
                ));
            }
        }
        Ok(())
    }

    /// Upper bounds on every setting in seconds, part of [`Config::validate`]: far above what
    /// any deployment wants, and far below where arithmetic on them breaks (a leeway added to
    /// the clock that overflows refuses every token, or panics in a debug build; a timeout
    /// added to an `Instant` can panic the same way).
    fn validate_durations(&self) -> Result<(), String> {
        const HOUR: u64 = 60 * 60;
        const DAY: u64 = 24 * HOUR;
        let bounds: [(&str, f64, u64, &str); 7] = [
            // Servers' clocks drift by seconds; an hour of skew is a broken clock, and more
            // leeway would make `exp` meaningless.
            (
                "join_token_leeway_secs",
                self.join_token_leeway_secs as f64,
                HOUR,
                "1 hour",
            ),
            // coturn suggests a day; a month outlasts any call, and a leaked credential should
            // not relay for longer.
            (
                "turn_credential_ttl_secs",
                self.turn_credential_ttl_secs as f64,
                30 * DAY,
                "30 days",
            ),
            // A peer silent for a day is gone; a longer timeout only pins its room's slot.
            ("peer_timeout_secs", self.peer_timeout_secs, DAY, "1 day"),
            // Proxies cut idle connections within minutes: a heartbeat or a poll wait longer
            // than an hour would never be seen by a client behind one.
            ("heartbeat_secs", self.heartbeat_secs, HOUR, "1 hour"),
            (
                "poll_max_wait_secs",
                self.poll_max_wait_secs,
                HOUR,
                "1 hour",
            ),
            // A 1 MiB body (`max_body_bytes`) arrives within minutes over any working link, and
            // a client that reads nothing for an hour is gone: longer would only let a stalled
            // connection hold its buffers and its descriptor.
            (
                "body_read_timeout_secs",
                self.body_read_timeout_secs,
                HOUR,
                "1 hour",
            ),
            (
                "write_timeout_secs",
                self.write_timeout_secs,
                HOUR,
                "1 hour",
            ),
        ];
        for (name, value, bound, shown) in bounds {
            if value > bound as f64 {
                return Err(format!(
                    "signpost.{name} is at most {bound} ({shown}), not {value}"
                ));
            }
        }
        Ok(())
    }

    /// The shared store's part of [`Config::validate`].
    fn validate_store(&self) -> Result<(), String> {
        self.validate_sentinels()?;
        self.validate_cluster()?;
        let tls = self
            .redis_url
            .as_deref()
            .is_some_and(|url| url.starts_with("rediss://"))
            || self
                .redis_sentinels
                .iter()
                .chain(&self.redis_cluster_nodes)
                .flatten()
                .any(|url| url.starts_with("rediss://"));
        if let Some(url) = &self.redis_url {
            let schemes = ["redis://", "rediss://", "redis+unix://", "unix://"];
            if !schemes.iter().any(|scheme| url.starts_with(scheme)) {
                return Err(format!(
                    "signpost.redis_url must start with redis://, rediss:// or redis+unix://, not {:?}",
                    url.split(':').next().unwrap_or_default()
                ));
            }
            if tls && !cfg!(feature = "redis-tls") {
                return Err("signpost.redis_url: rediss:// (TLS) needs signpost built with `--features redis-tls` (cargo build --release --features redis-tls); or reach Redis over a private network, a unix socket or a TLS tunnel".into());
            }
            // The redis crate's one URL fragment turns certificate checks off, which this build
            // cannot do (`tls-rustls-insecure` is never enabled): every connection would fail.
            if tls && url.contains('#') {
                return Err("signpost.redis_url: a rediss:// URL takes no #fragment; #insecure (no certificate check) is not supported: give the CA that signed Redis's certificate in signpost.redis_tls_ca_file".into());
            }
        }
        if let Some(path) = &self.redis_tls_ca_file {
            if !tls {
                return Err(format!(
                    "signpost.redis_tls_ca_file ({}) is only for a rediss:// signpost.redis_url, signpost.redis_sentinels or signpost.redis_cluster_nodes",
                    path.display()
                ));
            }
        }
        let prefix_ok = !self.redis_prefix.is_empty()
            && self.redis_prefix.len() <= 64
            && self
                .redis_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'));
        if !prefix_ok {
            return Err(
                "signpost.redis_prefix must be 1 to 64 of A-Z, a-z, 0-9, '.', '_', '-', ':'".into(),
            );
        }
        Ok(())
    }

    /// Sentinel's part of [`Config::validate`]: `redis_sentinels` with `redis_sentinel_master`,
    /// both or neither, never with `redis_url`; a non-empty list of `redis://` or (all of them)
    /// `rediss://` URLs.
    fn validate_sentinels(&self) -> Result<(), String> {
        if self.redis_wait_replicas > 0 {
            if self.redis_url.is_none()
                && self.redis_sentinels.is_none()
                && self.redis_cluster_nodes.is_none()
            {
                return Err("signpost.redis_wait_replicas needs a Redis store (signpost.redis_url or signpost.redis_sentinels)".into());
            }
            if !(1..=1000).contains(&self.redis_wait_timeout_ms) {
                return Err(format!(
                    "signpost.redis_wait_timeout_ms is 1 to 1000 (a refused send must still be answered fast), not {}",
                    self.redis_wait_timeout_ms
                ));
            }
        }
        if self.redis_sentinel_password.is_some() && self.redis_sentinels.is_none() {
            return Err("signpost.redis_sentinel_password needs signpost.redis_sentinels: it is the sentinels' own password".into());
        }
        let (sentinels, master) = match (&self.redis_sentinels, &self.redis_sentinel_master) {
            (None, None) => return Ok(()),
            (Some(_), None) => return Err("signpost.redis_sentinels needs signpost.redis_sentinel_master: the name the sentinels monitor the master under".into()),
            (None, Some(_)) => return Err("signpost.redis_sentinel_master needs signpost.redis_sentinels: the sentinels' URLs".into()),
            (Some(sentinels), Some(master)) => (sentinels, master),
        };
        if self.redis_url.is_some() {
            return Err("signpost.redis_url and signpost.redis_sentinels both name the store: set one of them".into());
        }
        if sentinels.is_empty() {
            return Err("signpost.redis_sentinels is empty: list the sentinels' URLs, e.g. [\"redis://10.0.0.5:26379\"]".into());
        }
        if master.is_empty() || master.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("signpost.redis_sentinel_master must be a name without spaces, as in `sentinel monitor <name> …`".into());
        }
        for url in sentinels {
            if !url.starts_with("redis://") && !url.starts_with("rediss://") {
                return Err(format!(
                    "signpost.redis_sentinels: {url:?} must start with redis:// or rediss://"
                ));
            }
        }
        let tls = sentinels
            .iter()
            .filter(|url| url.starts_with("rediss://"))
            .count();
        if tls != 0 && tls != sentinels.len() {
            return Err(
                "signpost.redis_sentinels: either every URL is rediss:// (TLS) or none".into(),
            );
        }
        if tls != 0 && !cfg!(feature = "redis-tls") {
            return Err("signpost.redis_sentinels: rediss:// (TLS) needs signpost built with `--features redis-tls` (cargo build --release --features redis-tls)".into());
        }
        if tls != 0 && sentinels.iter().any(|url| url.contains('#')) {
            return Err("signpost.redis_sentinels: a rediss:// URL takes no #fragment; #insecure (no certificate check) is not supported: give the CA in signpost.redis_tls_ca_file".into());
        }
        Ok(())
    }

    /// Redis Cluster's part of [`Config::validate`]: `redis_cluster_nodes` never with
    /// `redis_url` or `redis_sentinels`; a non-empty list of `redis://` or (all of them)
    /// `rediss://` URLs; no `redis_wait_replicas` (`WAIT` is per node).
    fn validate_cluster(&self) -> Result<(), String> {
        let Some(nodes) = &self.redis_cluster_nodes else {
            return Ok(());
        };
        if self.redis_url.is_some() || self.redis_sentinels.is_some() {
            return Err("signpost.redis_cluster_nodes and signpost.redis_url or signpost.redis_sentinels both name the store: set one of them".into());
        }
        if nodes.is_empty() {
            return Err("signpost.redis_cluster_nodes is empty: list some of the cluster's nodes, e.g. [\"redis://10.0.0.5:7000\"]".into());
        }
        if self.redis_wait_replicas > 0 {
            return Err("signpost.redis_wait_replicas is not supported with signpost.redis_cluster_nodes (WAIT is per node, and a send touches two slots)".into());
        }
        for url in nodes {
            if !url.starts_with("redis://") && !url.starts_with("rediss://") {
                return Err(format!(
                    "signpost.redis_cluster_nodes: {url:?} must start with redis:// or rediss://"
                ));
            }
        }
        let tls = nodes
            .iter()
            .filter(|url| url.starts_with("rediss://"))
            .count();
        if tls != 0 && tls != nodes.len() {
            return Err(
                "signpost.redis_cluster_nodes: either every URL is rediss:// (TLS) or none".into(),
            );
        }
        if tls != 0 && !cfg!(feature = "redis-tls") {
            return Err("signpost.redis_cluster_nodes: rediss:// (TLS) needs signpost built with `--features redis-tls` (cargo build --release --features redis-tls)".into());
        }
        if tls != 0 && nodes.iter().any(|url| url.contains('#')) {
            return Err("signpost.redis_cluster_nodes: a rediss:// URL takes no #fragment; #insecure (no certificate check) is not supported: give the CA in signpost.redis_tls_ca_file".into());
        }
        Ok(())
    }

    /// The join tokens' and per-client limits' part of [`Config::validate`].
    fn validate_joins(&self) -> Result<(), String> {
        if self.join_auth != JoinAuth::Open && self.join_keys.is_empty() {
            let mode = if self.join_auth == JoinAuth::Required {
                "required"
            } else {
                "optional"
            };
            return Err(format!(
                "signpost.join_auth = \"{mode}\" needs signpost.join_keys ({{ kid = \"secret\" }}) to check tokens with"
            ));
        }
        for (kid, secret) in &self.join_keys {
            if secret.expose().len() < 32 {
                // The length only: the secret itself is never printed.
                return Err(format!(
                    "signpost.join_keys.{kid} is {} bytes; an HS256 key needs at least 32",
                    secret.expose().len()
                ));
            }
        }
        if self.join_token_audience.is_empty() {
            return Err("signpost.join_token_audience may not be empty".into());
        }
        if let Some(secret) = &self.resume_secret {
            if secret.expose().len() < 32 {
                return Err(format!(
                    "signpost.resume_secret is {} bytes; an HS256 key needs at least 32",
                    secret.expose().len()
                ));
            }
        }
        if !(self.join_rate_per_sec.is_finite() && self.join_rate_per_sec > 0.0) {
            return Err("signpost.join_rate_per_sec must be a positive number".into());
        }
        if !(self.join_burst.is_finite() && self.join_burst >= 1.0) {
            return Err("signpost.join_burst must be at least 1".into());
        }
        if self.max_peers_per_client == 0 {
            return Err("signpost.max_peers_per_client must be at least 1".into());
        }
        if self.max_rooms_per_client == 0 {
            return Err("signpost.max_rooms_per_client must be at least 1".into());
        }
        if !(32..=128).contains(&self.client_ipv6_prefix) {
            return Err(format!(
                "signpost.client_ipv6_prefix must be between 32 and 128, not {}",
                self.client_ipv6_prefix
            ));
        }
        crate::client_address::TrustedProxies::parse(&self.trusted_proxies).map(drop)
    }

    pub fn turn_credential_ttl(&self) -> Duration {
        Duration::from_secs(self.turn_credential_ttl_secs)
    }

    pub fn idempotency_window(&self) -> Duration {
        Duration::from_secs(self.idempotency_window_secs)
    }

    pub fn peer_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.peer_timeout_secs)
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs_f64(self.heartbeat_secs)
    }

    pub fn poll_max_wait(&self) -> Duration {
        Duration::from_secs_f64(self.poll_max_wait_secs)
    }

    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.body_read_timeout_secs)
    }

    pub fn write_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.write_timeout_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every secret of the configuration is one [`Secret`], and a logged config shows none of
    /// them.
    #[test]
    fn a_debug_config_shows_no_secret() {
        let config = Config {
            turn_secret: Some(Secret::new("turn-secret-value")),
            join_keys: BTreeMap::from([("k".to_owned(), Secret::new("join-key-value"))]),
            resume_secret: Some(Secret::new("resume-secret-value")),
            metrics_token: Some(Secret::new("metrics-token-value")),
            ..Config::default()
        };
        let logged = format!("{config:?}");
        for secret in ["turn-secret", "join-key", "resume-secret", "metrics-token"] {
            assert!(!logged.contains(secret), "{secret} in {logged}");
        }
        assert_eq!(logged.matches("Secret(<redacted>)").count(), 4, "{logged}");
    }

    #[test]
    fn defaults_are_valid_and_nonsense_is_refused() {
        assert_eq!(Config::default().validate(), Ok(()));
        let broken = [
            Config {
                peer_timeout_secs: 0.0,
                ..Config::default()
            },
            Config {
                heartbeat_secs: f64::NAN,
                ..Config::default()
            },
            Config {
                poll_max_wait_secs: 1e308,
                ..Config::default()
            },
            Config {
                send_burst: 0.5,
                ..Config::default()
            },
            Config {
                mailbox_capacity: 0,
                ..Config::default()
            },
            Config {
                instance: Some(" ".into()),
                ..Config::default()
            },
            Config {
                body_read_timeout_secs: 0.0,
                ..Config::default()
            },
            Config {
                write_timeout_secs: f64::INFINITY,
                ..Config::default()
            },
            Config {
                max_connections_per_client: 0,
                ..Config::default()
            },
            Config {
                poll_max_bytes: 1000,
                ..Config::default()
            },
            Config {
                mailbox_max_bytes: 64 * 1024 - 1,
                ..Config::default()
            },
            Config {
                idempotency_window_secs: 0,
                ..Config::default()
            },
            Config {
                idempotency_window_secs: 24 * 60 * 60 + 1,
                ..Config::default()
            },
            Config {
                idempotency_keys_per_peer: 0,
                ..Config::default()
            },
        ];
        for config in broken {
            assert!(config.validate().is_err(), "{config:?}");
        }
    }

    fn redis(url: &str, ca_file: Option<&str>) -> Result<(), String> {
        Config {
            redis_url: Some(url.into()),
            redis_tls_ca_file: ca_file.map(PathBuf::from),
            ..Config::default()
        }
        .validate()
    }

    /// A build without the `redis-tls` feature refuses `rediss://` at start and says how to get
    /// it, rather than failing every connection later.
    #[test]
    #[cfg(not(feature = "redis-tls"))]
    fn without_the_feature_rediss_is_refused_naming_the_feature() {
        let refusal = redis("rediss://redis.example.org:6380", None).unwrap_err();
        assert!(refusal.contains("--features redis-tls"), "{refusal}");
        let refusal = redis("rediss://redis.example.org:6380", Some("/etc/ca.pem")).unwrap_err();
        assert!(refusal.contains("--features redis-tls"), "{refusal}");
    }

    /// With the feature, `rediss://` is accepted, with or without a CA file (read later, by the
    /// store); `#insecure` is not.
    #[test]
    #[cfg(feature = "redis-tls")]
    fn with_the_feature_rediss_is_accepted_but_not_insecure() {
        assert_eq!(redis("rediss://redis.example.org:6380/2", None), Ok(()));
        assert_eq!(
            redis("rediss://127.0.0.1:6380", Some("/etc/redis-ca.pem")),
            Ok(())
        );
        let refusal = redis("rediss://127.0.0.1:6380/#insecure", None).unwrap_err();
        assert!(refusal.contains("#insecure"), "{refusal}");
    }

    /// `redis_tls_ca_file` only goes with a `rediss://` URL: with a plain one (or none) it would
    /// silently protect nothing.
    #[test]
    fn a_ca_file_without_rediss_is_refused() {
        let refusal = redis("redis://127.0.0.1:6379", Some("/etc/ca.pem")).unwrap_err();
        assert!(
            refusal.contains("redis_tls_ca_file") && refusal.contains("/etc/ca.pem"),
            "{refusal}"
        );
        let alone = Config {
            redis_tls_ca_file: Some("/etc/ca.pem".into()),
            ..Config::default()
        };
        assert!(alone.validate().is_err());
        assert!(redis("http://127.0.0.1:6379", None).is_err());
    }
}
