//! signpost's configuration: the `[<profile>.signpost]` table of `Rocket.toml`, or
//! `ROCKET_SIGNPOST={key=value}` in the environment. Every field has a default, so an empty table
//! (or none) is a working server.

use std::fmt;
use std::net::SocketAddr;
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
    /// ICE servers handed to every peer when it joins, as `RTCIceServer` objects. Default none.
    pub ice_servers: Vec<IceServer>,
    /// Directory of the browser client served at `/`. Default `static`, relative to the working
    /// directory (the repository root under `cargo run`).
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
    pub turn_secret: Option<TurnSecret>,
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
    /// live in this process's memory, and nothing else needs to run.
    pub redis_url: Option<String>,
    /// Prefix of every Redis key and channel. Default `"signpost"`; give each deployment that
    /// shares one Redis its own.
    pub redis_prefix: String,
}

/// `turn_secret`: deserialised from a plain string; `Debug` never shows it, so a logged config
/// cannot leak it.
#[derive(Clone, Deserialize, Serialize)]
#[serde(transparent)]
pub struct TurnSecret(String);

impl TurnSecret {
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for TurnSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TurnSecret(<redacted>)")
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
            peer_timeout_secs: 30.0,
            heartbeat_secs: 15.0,
            poll_max_wait_secs: 25.0,
            send_rate_per_sec: 50.0,
            send_burst: 400.0,
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
            redis_prefix: "signpost".into(),
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
        if let Some(url) = &self.redis_url {
            let schemes = ["redis://", "redis+unix://", "unix://"];
            if url.starts_with("rediss://") {
                return Err("signpost.redis_url: rediss:// (TLS) is not built in; reach Redis over a private network, a unix socket or a TLS tunnel".into());
            }
            if !schemes.iter().any(|scheme| url.starts_with(scheme)) {
                return Err(format!(
                    "signpost.redis_url must start with redis:// or redis+unix://, not {:?}",
                    url.split(':').next().unwrap_or_default()
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

    pub fn turn_credential_ttl(&self) -> Duration {
        Duration::from_secs(self.turn_credential_ttl_secs)
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
        ];
        for config in broken {
            assert!(config.validate().is_err(), "{config:?}");
        }
    }
}
