//! The connection to Redis, which the rest of the store calls through: opening the client
//! (plain, unix socket, or TLS via `tls.rs`), the commands' connection and its timeouts, and how
//! a failure becomes an answer: Redis unreachable or too slow is `503 store_unavailable` (with
//! `Retry-After`, `error.rs`), a reply no script gives is [`unexpected`].
//!
//! Two modes behind one type:
//! - **direct** (`redis_url`): one [`ConnectionManager`] to one address, which reconnects by
//!   itself;
//! - **Sentinel** (`redis_sentinels` + `redis_sentinel_master`): a [`Follower`] that asks the
//!   sentinels where the master is (trying each in turn), connects, and checks `ROLE`. Nothing in
//!   the redis crate follows a failover (design note §1: a `ConnectionManager` keeps answering
//!   `READONLY` for good), so the follower does it: a timeout, an I/O error, a dropped connection
//!   or `READONLY` / `NOREPLICAS` / `MASTERDOWN` / `LOADING` marks its connection stale; the
//!   request that saw it is answered `503` at once (a script is never retried: it may have
//!   committed), and the next call resolves again, one resolution at a time, within a bound
//!   ([`RESOLVE_BUDGET`]) so that no request hangs. Background tasks ([`Connection::start`])
//!   listen to every sentinel and check `ROLE` every [`ROLE_EVERY`]. `+try-failover` fences
//!   the master (requests get 503 until the switch: what it takes once its replica is promoted
//!   is lost), `+switch-master` or a `ROLE` that says replica marks the connection stale at
//!   once. Without them, a planned `SENTINEL FAILOVER` leaves the old master taking (then
//!   losing) writes for ~10 s; with `+switch-master` alone, for the ~1 s between the promotion
//!   and the announcement (measured: 51 messages at 50/s, ids then reused).
//!
//! - **Redis Cluster** (`redis_cluster_nodes`): the redis crate's `cluster_async` connection,
//!   which follows the slot map by itself (MOVED/ASK during a slot migration are retried
//!   invisibly; a failed-over shard's slots are found on its promoted replica). What the store
//!   adds is a short response timeout ([`CLUSTER_RESPONSE_TIMEOUT`]), the whole of a request's
//!   time with its retries, so that a shard whose master died answers 503 fast until its
//!   replica is promoted: a script whose answer timed out is never sent again (it may have
//!   committed). Wake-ups have a connection of their own (RESP3, for sharded pub/sub's pushes:
//!   [`Connection::sharded_pubsub`]).
//!
//! Every time the connection is marked stale, [`Connection::switched`] ticks, so that the
//! wake-up connection (`wakeups.rs`) moves to the new master too.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{
    AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, FromRedisValue, IntoConnectionInfo,
    RedisConnectionInfo, RedisResult, Value,
};
use tokio::select;
use tokio::sync::watch;
use tokio::time::{sleep, timeout, Instant};

use crate::config::Secret;
use crate::error::{ApiResult, Error};
use crate::logging;
use crate::metrics::Metrics;

/// How long a round trip may take before the request is answered `503 store_unavailable`: a
/// healthy Redis answers in well under a millisecond, so this only bounds a hang.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// In Sentinel mode, a round trip slower than this counts as a master gone: shorter than the
/// direct mode's, since a timeout here is how a master that vanished without a reset is
/// noticed, and a request must get its 503 in well under a second.
const SENTINEL_RESPONSE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long one request may spend waiting for, or running, a resolution of the master before
/// it is answered 503: together with one round trip ([`SENTINEL_RESPONSE_TIMEOUT`]), under a
/// second. A resolution (ask a sentinel, connect, `ROLE`) takes a few milliseconds on a LAN.
const RESOLVE_BUDGET: Duration = Duration::from_millis(300);
/// Connecting to one sentinel, or to the master it names, and each of their answers.
const NODE_TIMEOUT: Duration = Duration::from_millis(250);
/// After a failed resolution, requests answer 503 at once for this long instead of asking the
/// sentinels again: a failover takes seconds, and every request asking would only add load.
const RETRY_DELAY: Duration = Duration::from_millis(100);
/// In a Redis Cluster, the longest a request may take, its redirections and retries included:
/// as Sentinel's, a dead master must give a fast 503, and the cluster's own failover
/// (`cluster-node-timeout` + an election) is what the client waits for, not one request.
const CLUSTER_RESPONSE_TIMEOUT: Duration = Duration::from_millis(500);
/// In a Redis Cluster, the longest a request waits for the first connection (the slot map asked
/// of the seed nodes) before its 503.
const CLUSTER_CONNECT_BUDGET: Duration = Duration::from_millis(600);
/// In a Redis Cluster, how often a request is sent again after a MOVED, an ASK, a TRYAGAIN or a
/// dropped connection, within [`CLUSTER_RESPONSE_TIMEOUT`]: a slot migration redirects twice at
/// most (ASK, then MOVED once it is done).
const CLUSTER_RETRIES: u32 = 3;
/// How often the master's `ROLE` is checked: catches a `+switch-master` that was missed (the
/// sentinel subscription was down), within a couple of seconds.
const ROLE_EVERY: Duration = Duration::from_secs(2);
/// How often the sentinel subscription is checked with a PING, and how long it may take.
const SENTINEL_PING_EVERY: Duration = Duration::from_secs(5);
/// The sentinels' announcements the follower acts on.
const SENTINEL_EVENTS: [&str; 4] = [
    "+try-failover",
    "+switch-master",
    "-failover-abort-not-elected",
    "-failover-abort-no-good-slave",
];
/// How long a master whose failover started stays fenced without a `+switch-master` or an
/// abort: past it, whatever the sentinels name is used again (a failover that timed out).
const FENCE: Duration = Duration::from_secs(15);
/// Raises the master's config epoch (`Keys::epoch`, KEYS[1]) to ARGV[1], never lowers it: the
/// floor of a seal's generation (`lua/room.lua`, "Seal"), which must differ between the
/// masters of two failovers. Written with replication, like any key: a replica that holds an
/// older master's epoch gets its own when an instance connects to it once promoted, before any
/// script runs there.
const RAISE_EPOCH: &str =
    "if tonumber(ARGV[1]) > (tonumber(redis.call('GET', KEYS[1])) or 0) then \
    redis.call('SET', KEYS[1], ARGV[1]) end";

/// The replies that say this node is not (or no longer, or not yet) a usable master.
const NOT_A_MASTER: [&str; 4] = ["READONLY", "NOREPLICAS", "MASTERDOWN", "LOADING"];

/// Where the store's Redis is, as the configuration names it.
#[derive(Debug, Clone)]
pub enum Target {
    /// One Redis (`redis_url`).
    Url(String),
    /// The master that sentinels monitor under a name (`redis_sentinels`,
    /// `redis_sentinel_master`). The data nodes' password and TLS come from the sentinels'
    /// URLs: their userinfo, and their `rediss://` scheme.
    Sentinel {
        sentinels: Vec<String>,
        master: String,
        /// The sentinels' own password (`redis_sentinel_password`), if they ask one.
        password: Option<Secret>,
    },
    /// Seed nodes of a Redis Cluster (`redis_cluster_nodes`): password and TLS from their URLs.
    Cluster { nodes: Vec<String> },
}

/// `redis_wait_replicas` and `redis_wait_timeout_ms`: a send is answered 202 only once this
/// many replicas have acknowledged its writes, waiting at most `timeout`.
#[derive(Debug, Clone, Copy)]
pub struct WaitReplicas {
    pub replicas: u32,
    pub timeout: Duration,
}

/// The store's way to Redis: every command, pipeline and script goes through it, and every
/// round trip is counted in the metrics.
pub(super) struct Connection {
    mode: Mode,
    /// Ticks each time the commands' connection is found stale (Sentinel mode only): the
    /// wake-up connection reconnects to the master on it.
    switched: watch::Sender<u64>,
    wait: Option<WaitReplicas>,
    metrics: Metrics,
}

enum Mode {
    /// Reconnects by itself; a command sent while Redis is unreachable fails instead of waiting.
    /// `client` is what the wake-ups' connection is made from.
    Direct {
        commands: ConnectionManager,
        /// Boxed: with TLS settings, a client is several times the size of the other variant.
        client: Box<redis::Client>,
        /// `WAIT`'s own connection, with `redis_wait_replicas` (see [`Connection::wait`]).
        waits: Option<ConnectionManager>,
    },
    Sentinel(Arc<Follower>),
    Cluster(Box<Cluster>),
}

/// A Redis Cluster: the client, and the commands' connection once made (connecting needs a
/// node to answer, so it is made at the first call, as the other modes connect lazily).
struct Cluster {
    client: redis::cluster::ClusterClient,
    /// The seed nodes with the settings the wake-ups' RESP3 connection is built from.
    nodes: Vec<ConnectionInfo>,
    tls_ca_file: Option<PathBuf>,
    commands: tokio::sync::OnceCell<redis::cluster_async::ClusterConnection>,
}

impl Cluster {
    fn new(urls: &[String], tls_ca_file: Option<&Path>) -> Result<Self, String> {
        let nodes = urls
            .iter()
            .map(|url| {
                url.as_str().into_connection_info().map_err(|error| {
                    format!("signpost.redis_cluster_nodes: {url:?} is not usable: {error}")
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let client = cluster_builder(&nodes, tls_ca_file)?
            .build()
            .map_err(|error| format!("signpost.redis_cluster_nodes is not usable: {error}"))?;
        Ok(Self {
            client,
            nodes,
            tls_ca_file: tls_ca_file.map(Path::to_path_buf),
            commands: tokio::sync::OnceCell::new(),
        })
    }

    /// The commands' connection, made at the first call (one attempt at a time; a failed one
    /// answers 503 and the next call tries again). A caller waits at most
    /// [`CLUSTER_CONNECT_BUDGET`] in all, whether it makes the attempt or waits for another's.
    async fn commands(&self) -> ApiResult<redis::cluster_async::ClusterConnection> {
        if let Some(commands) = self.commands.get() {
            return Ok(commands.clone());
        }
        let made = self.commands.get_or_try_init(|| async {
            self.client.get_async_connection().await.map_err(|error| {
                logging::warn(format_args!("redis: no cluster connection: {error}"));
                Error::StoreUnavailable
            })
        });
        match timeout(CLUSTER_CONNECT_BUDGET, made).await {
            Ok(made) => made.cloned(),
            Err(_) => Err(Error::StoreUnavailable),
        }
    }
}

/// A cluster client's builder for `nodes`: their password (from the first URL's userinfo),
/// TLS for `rediss://` (with `tls_ca_file`'s CAs if given), and the timeouts above.
fn cluster_builder(
    nodes: &[ConnectionInfo],
    tls_ca_file: Option<&Path>,
) -> Result<redis::cluster::ClusterClientBuilder, String> {
    let mut builder = redis::cluster::ClusterClientBuilder::new(nodes.to_vec())
        .connection_timeout(NODE_TIMEOUT)
        .response_timeout(CLUSTER_RESPONSE_TIMEOUT)
        .retries(CLUSTER_RETRIES)
        .min_retry_wait(10)
        .max_retry_wait(100);
    #[cfg(feature = "redis-tls")]
    if let Some(path) = tls_ca_file {
        builder = builder.certs(super::tls::certificates(path)?);
    }
    #[cfg(not(feature = "redis-tls"))]
    let _ = tls_ca_file;
    if let Some(first) = nodes.first() {
        let settings = first.redis_settings();
        if let Some(password) = settings.password() {
            builder = builder.password(password);
        }
        if let Some(username) = settings.username() {
            builder = builder.username(username);
        }
    }
    Ok(builder)
}

/// The commands' connection, whichever the mode: what a script or command runs on.
#[derive(Clone)]
enum Commands {
    Manager(ConnectionManager),
    Multiplexed(MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Commands {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        match self {
            Commands::Manager(connection) => connection.req_packed_command(cmd),
            Commands::Multiplexed(connection) => connection.req_packed_command(cmd),
            Commands::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        match self {
            Commands::Manager(connection) => {
                connection.req_packed_commands(pipeline, offset, count)
            }
            Commands::Multiplexed(connection) => {
                connection.req_packed_commands(pipeline, offset, count)
            }
            Commands::Cluster(connection) => {
                connection.req_packed_commands(pipeline, offset, count)
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Commands::Manager(connection) => connection.get_db(),
            Commands::Multiplexed(connection) => connection.get_db(),
            Commands::Cluster(connection) => connection.get_db(),
        }
    }
}

impl Connection {
    /// The connection to `target`, over TLS for `rediss://` with `tls_ca_file`'s CAs if given;
    /// connects lazily, so this succeeds while Redis is down.
    pub(super) fn open(
        target: &Target,
        tls_ca_file: Option<&Path>,
        wait: Option<WaitReplicas>,
        epoch_key: &str,
        metrics: Metrics,
    ) -> Result<Self, String> {
        let mode = match target {
            Target::Url(url) => {
                let info = url
                    .as_str()
                    .into_connection_info()
                    .map_err(|error| format!("signpost.redis_url is not usable: {error}"))?;
                let client = client(info, tls_ca_file, "redis_url")?;
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                let commands =
                    ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
                        .map_err(|error| format!("cannot set up the Redis connection: {error}"))?;
                let waits = match wait {
                    Some(wait) => Some(
                        ConnectionManager::new_lazy_with_config(
                            client.clone(),
                            config.set_response_timeout(Some(wait.timeout + RESPONSE_TIMEOUT)),
                        )
                        .map_err(|error| format!("cannot set up the Redis connection: {error}"))?,
                    ),
                    None => None,
                };
                Mode::Direct {
                    commands,
                    client: Box::new(client),
                    waits,
                }
            }
            Target::Sentinel {
                sentinels,
                master,
                password,
            } => Mode::Sentinel(Arc::new(Follower::new(
                sentinels,
                master,
                password.as_ref(),
                tls_ca_file,
                wait,
                epoch_key,
            )?)),
            Target::Cluster { nodes } => Mode::Cluster(Box::new(Cluster::new(nodes, tls_ca_file)?)),
        };
        Ok(Self {
            mode,
            switched: watch::channel(0).0,
            wait,
            metrics,
        })
    }

    /// Starts the Sentinel mode's watcher (`+switch-master`, `ROLE`); it ends with `shutdown`.
    /// Nothing to start in direct mode.
    pub(super) fn start(&self, shutdown: rocket::Shutdown) {
        if let Mode::Sentinel(follower) = &self.mode {
            spawn_watchers(follower, &self.switched, &shutdown);
        }
    }

    /// Ticks whenever the commands' connection was found stale: the wake-up connection then
    /// reconnects, to the master as it is now.
    pub(super) fn switched(&self) -> watch::Receiver<u64> {
        self.switched.subscribe()
    }

    /// A new pub/sub connection to Redis (the master, in Sentinel mode, resolved as the
    /// commands' connection is), with the same TLS settings.
    pub(super) async fn pubsub(&self) -> RedisResult<redis::aio::PubSub> {
        match &self.mode {
            Mode::Direct { client, .. } => client.get_async_pubsub().await,
            Mode::Sentinel(follower) => {
                let master = follower
                    .master()
                    .await
                    .map_err(|_| io_error("no master is known"))?;
                master.client.get_async_pubsub().await
            }
            Mode::Cluster(_) => Err(io_error("a Redis Cluster's wake-ups are sharded")),
        }
    }

    /// Whether this is a Redis Cluster, whose wake-ups are sharded ([`Self::sharded_pubsub`]).
    pub(super) fn is_cluster(&self) -> bool {
        matches!(self.mode, Mode::Cluster(_))
    }

    /// In a Redis Cluster: a new connection for sharded pub/sub (RESP3), whose pushes
    /// (`SMESSAGE`, and the `SUNSUBSCRIBE` a slot's move sends) go to `pushes`. `SSUBSCRIBE` on it
    /// is routed to the channel's slot.
    pub(super) async fn sharded_pubsub(
        &self,
        pushes: tokio::sync::mpsc::UnboundedSender<redis::PushInfo>,
    ) -> RedisResult<redis::cluster_async::ClusterConnection> {
        let Mode::Cluster(cluster) = &self.mode else {
            return Err(io_error("sharded pub/sub is for a Redis Cluster"));
        };
        let client = cluster_builder(&cluster.nodes, cluster.tls_ca_file.as_deref())
            .map_err(|_| io_error("the cluster's settings"))?
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(pushes)
            .build()?;
        client.get_async_connection().await
    }

    /// Runs a script; any failure is `store_unavailable`.
    pub(super) async fn run<T: FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> ApiResult<T> {
        let (mut connection, epoch) = self.commands().await?;
        let result = invocation.invoke_async(&mut connection).await;
        self.account(epoch, result)
    }

    /// Calls a function (`FCALL`); a Redis without its library (new, or restarted empty) is
    /// sent `load` (`FUNCTION LOAD`) and the call again: a call of a missing function ran
    /// nothing. Any failure is `store_unavailable`.
    pub(super) async fn call<T: FromRedisValue>(
        &self,
        call: &redis::Cmd,
        load: &redis::Cmd,
    ) -> ApiResult<T> {
        let (mut connection, epoch) = self.commands().await?;
        let mut result = call.query_async(&mut connection).await;
        if result.as_ref().is_err_and(function_missing) {
            result = match load.exec_async(&mut connection).await {
                // Another instance may have loaded it since.
                Err(error) if !library_exists(&error) => Err(error),
                _ => call.query_async(&mut connection).await,
            };
        }
        self.account(epoch, result)
    }

    /// Sends a command; any failure is `store_unavailable`.
    pub(super) async fn query<T: FromRedisValue>(&self, command: &redis::Cmd) -> ApiResult<T> {
        let (mut connection, epoch) = self.commands().await?;
        let result = command.query_async(&mut connection).await;
        self.account(epoch, result)
    }

    /// Sends a pipeline, in one round trip; any failure is `store_unavailable`.
    pub(super) async fn query_pipe<T: FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> ApiResult<T> {
        let (mut connection, epoch) = self.commands().await?;
        let result = pipe.query_async(&mut connection).await;
        self.account(epoch, result)
    }

    /// With `redis_wait_replicas`, after a write (a send): `WAIT replicas timeout`, answered
    /// `store_unavailable` unless that many replicas acknowledged everything written so far.
    /// `WAIT` blocks its connection and cannot run in a script, so it has a connection of its
    /// own; and since it waits for what *its own client* wrote last, a `SET` of `mark` on that
    /// connection first brings its offset up to the master's, past the send's writes. (If the
    /// master switched between the send and this, the wait is on the new master: what was lost
    /// with the old one is the seal's to tell, design note §4.)
    pub(super) async fn wait(&self, mark: &str) -> ApiResult<()> {
        let Some(wait) = self.wait else {
            return Ok(());
        };
        let (mut connection, epoch) = match &self.mode {
            Mode::Direct {
                waits: Some(waits), ..
            } => (Commands::Manager(waits.clone()), 0),
            Mode::Direct { waits: None, .. } | Mode::Cluster(_) => return Ok(()),
            Mode::Sentinel(follower) => match follower.master().await {
                Ok(Master {
                    waits: Some(waits),
                    epoch,
                    ..
                }) => (Commands::Multiplexed(waits), epoch),
                Ok(_) => return Ok(()),
                Err(error) => {
                    self.metrics.store_round_trip(true);
                    return Err(error);
                }
            },
        };
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(mark)
            .arg(1)
            .arg("PX")
            .arg(60_000)
            .ignore()
            .cmd("WAIT")
            .arg(wait.replicas)
            .arg(wait.timeout.as_millis() as u64);
        let result = pipe.query_async(&mut connection).await;
        let (acknowledged,): (u32,) = self.account(epoch, result)?;
        if acknowledged < wait.replicas {
            logging::warn(format_args!(
                "redis: {acknowledged} of {} replicas acknowledged a send within {:?}; answered 503",
                wait.replicas, wait.timeout
            ));
            return Err(Error::StoreUnavailable);
        }
        Ok(())
    }

    /// The commands' connection, and (Sentinel mode) which resolution it came from; answered
    /// `store_unavailable` at once when no master can be reached within [`RESOLVE_BUDGET`].
    async fn commands(&self) -> ApiResult<(Commands, u64)> {
        match &self.mode {
            Mode::Direct { commands, .. } => Ok((Commands::Manager(commands.clone()), 0)),
            Mode::Sentinel(follower) => match follower.master().await {
                Ok(master) => Ok((Commands::Multiplexed(master.commands), master.epoch)),
                Err(error) => {
                    self.metrics.store_round_trip(true);
                    Err(error)
                }
            },
            Mode::Cluster(cluster) => match cluster.commands().await {
                Ok(commands) => Ok((Commands::Cluster(commands), 0)),
                Err(error) => {
                    self.metrics.store_round_trip(true);
                    Err(error)
                }
            },
        }
    }

    /// Counts the round trip, and makes any failure `503 store_unavailable`; in Sentinel mode,
    /// a failure that says the master is gone marks the connection of resolution `epoch` stale.
    fn account<T>(&self, epoch: u64, result: RedisResult<T>) -> ApiResult<T> {
        self.metrics.store_round_trip(result.is_err());
        result.map_err(|error| {
            logging::warn(format_args!("redis: {}", error));
            if let Mode::Sentinel(follower) = &self.mode {
                if master_gone(&error) {
                    follower.mark_stale(Some(epoch), &self.switched, &error.to_string());
                }
            }
            Error::StoreUnavailable
        })
    }
}

/// Whether `error` says that the connection no longer leads to a usable master: a timeout, an
/// I/O error, a dropped connection, or one of [`NOT_A_MASTER`].
fn master_gone(error: &redis::RedisError) -> bool {
    error.is_timeout()
        || error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error
            .code()
            .is_some_and(|code| NOT_A_MASTER.contains(&code))
}

/// Whether `error` is Redis's answer to an `FCALL` of a function it does not have.
fn function_missing(error: &redis::RedisError) -> bool {
    error
        .detail()
        .is_some_and(|detail| detail.starts_with("Function not found"))
}

/// Whether `error` is Redis's answer to a `FUNCTION LOAD` of a library it already has.
fn library_exists(error: &redis::RedisError) -> bool {
    error
        .detail()
        .is_some_and(|detail| detail.contains("already exists"))
}

fn io_error(what: &'static str) -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::NotConnected, what))
}

/// A master found through the sentinels: its client (for the wake-ups) and the commands'
/// connection to it.
#[derive(Clone)]
struct Master {
    /// Which resolution this is: an error seen on an older one marks nothing stale.
    epoch: u64,
    /// Where it is, as the sentinels named it.
    address: (String, u16),
    client: redis::Client,
    commands: MultiplexedConnection,
    /// `WAIT`'s own connection, with `redis_wait_replicas`.
    waits: Option<MultiplexedConnection>,
}

/// Follows the master that the sentinels name: see the module's doc.
struct Follower {
    /// One client per sentinel, without the data nodes' password.
    sentinels: Vec<redis::Client>,
    /// The sentinels' URLs, for the logs.
    urls: Vec<String>,
    /// `redis_sentinel_master`.
    name: String,
    /// The data nodes' connection settings (password, TLS), with the first sentinel's address:
    /// the master's replaces it at each resolution.
    data: ConnectionInfo,
    tls_ca_file: Option<PathBuf>,
    /// The master in use; `None` when stale. A `parking_lot::Mutex`: held to clone or replace
    /// it, never across `.await`.
    current: Mutex<Option<Master>>,
    /// Held while a resolution runs, so that one runs at a time; holds when the last one failed.
    resolving: tokio::sync::Mutex<Option<Instant>>,
    epochs: AtomicU64,
    /// The sentinel a resolution asks first: the one after the last that did not answer.
    first_asked: AtomicUsize,
    /// A master whose failover a sentinel announced (`+try-failover`), and until when it is
    /// refused: from its replica's promotion on, what it takes is lost.
    fence: Mutex<Option<((String, u16), Instant)>>,
    wait: Option<WaitReplicas>,
    /// Where each master is told its config epoch (`Keys::epoch`).
    epoch_key: String,
}

impl Follower {
    fn new(
        urls: &[String],
        name: &str,
        password: Option<&Secret>,
        tls_ca_file: Option<&Path>,
        wait: Option<WaitReplicas>,
        epoch_key: &str,
    ) -> Result<Self, String> {
        // The sentinels' own password, if any: not the data nodes' (the URLs' userinfo).
        let mut sentinel_settings = RedisConnectionInfo::default();
        if let Some(password) = password {
            let password = std::str::from_utf8(password.expose())
                .map_err(|_| "signpost.redis_sentinel_password is not text")?;
            sentinel_settings = sentinel_settings.set_password(password);
        }
        let mut sentinels = Vec::new();
        let mut data = None;
        for url in urls {
            let info = url.as_str().into_connection_info().map_err(|error| {
                format!("signpost.redis_sentinels: {url:?} is not usable: {error}")
            })?;
            // The userinfo is the data nodes' (README): the sentinels are asked without it, with
            // their own password if they have one.
            let bare = info.clone().set_redis_settings(sentinel_settings.clone());
            sentinels.push(client(bare, tls_ca_file, "redis_sentinels")?);
            data.get_or_insert(info);
        }
        let data = data.ok_or("signpost.redis_sentinels is empty")?;
        // Refuses a CA file that cannot be used now, at start, rather than at each resolution.
        client(data.clone(), tls_ca_file, "redis_sentinels")?;
        Ok(Self {
            sentinels,
            urls: urls.to_vec(),
            name: name.to_owned(),
            data,
            tls_ca_file: tls_ca_file.map(Path::to_path_buf),
            current: Mutex::new(None),
            resolving: tokio::sync::Mutex::new(None),
            epochs: AtomicU64::new(0),
            first_asked: AtomicUsize::new(0),
            fence: Mutex::new(None),
            wait,
            epoch_key: epoch_key.to_owned(),
        })
    }

    /// The master in use, resolving it if stale: one resolution at a time, and the whole wait
    /// bounded by [`RESOLVE_BUDGET`], after which the answer is 503.
    async fn master(&self) -> ApiResult<Master> {
        if let Some(master) = self.current.lock().clone() {
            return Ok(master);
        }
        let resolved = timeout(RESOLVE_BUDGET, async {
            let mut last_failure = self.resolving.lock().await;
            // Another caller may have resolved it while this one waited.
            if let Some(master) = self.current.lock().clone() {
                return Ok(master);
            }
            if last_failure.is_some_and(|at| at.elapsed() < RETRY_DELAY) {
                return Err(Error::StoreUnavailable);
            }
            match self.resolve().await {
                Ok(master) => {
                    *last_failure = None;
                    *self.current.lock() = Some(master.clone());
                    Ok(master)
                }
                Err(error) => {
                    *last_failure = Some(Instant::now());
                    logging::warn(format_args!(
                        "redis: no master {:?} through the sentinels: {error}",
                        self.name
                    ));
                    Err(Error::StoreUnavailable)
                }
            }
        })
        .await;
        resolved.unwrap_or(Err(Error::StoreUnavailable))
    }

    /// Asks each sentinel in turn for the master's address, connects to it, and checks that it
    /// says it is a master.
    async fn resolve(&self) -> Result<Master, String> {
        let mut why = String::new();
        let count = self.sentinels.len();
        let first = self.first_asked.load(Ordering::Relaxed);
        for index in (first..first + count).map(|index| index % count) {
            let (sentinel, url) = (&self.sentinels[index], &self.urls[index]);
            let (address, config_epoch) = match self.ask(sentinel).await {
                Ok(answer) => answer,
                Err(error) => {
                    why = format!("sentinel {url}: {error}");
                    // The next resolution starts with the next one: a sentinel that does not
                    // answer must not eat every resolution's budget.
                    self.first_asked
                        .store((index + 1) % count, Ordering::Relaxed);
                    continue;
                }
            };
            match self.connect(&address, config_epoch).await {
                Ok(master) => {
                    logging::info(format_args!(
                        "redis: master {:?} is {}:{} (from sentinel {url})",
                        self.name, address.0, address.1
                    ));
                    return Ok(master);
                }
                Err(error) => why = format!("master {}:{}: {error}", address.0, address.1),
            }
        }
        Err(why)
    }

    /// The master's address and its config epoch, as one sentinel knows them.
    ///
    /// `SENTINEL GET-MASTER-ADDR-BY-NAME` names a promoted replica from the moment the sentinel
    /// sees it promoted, when it also sets the master's `config-epoch` to the failover's epoch
    /// (`SENTINEL MASTER` lists it; its own address field names the old master until
    /// `+switch-master`). Both are asked in one pipeline, which the sentinel answers in one go,
    /// so that the epoch is the one of the master named.
    async fn ask(&self, sentinel: &redis::Client) -> RedisResult<((String, u16), u64)> {
        let mut connection = sentinel
            .get_multiplexed_async_connection_with_config(&node_config())
            .await?;
        let (address, master): (Option<(String, u16)>, HashMap<String, String>) = redis::pipe()
            .cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(&self.name)
            .cmd("SENTINEL")
            .arg("MASTER")
            .arg(&self.name)
            .query_async(&mut connection)
            .await?;
        let address =
            address.ok_or_else(|| io_error("the sentinel does not know this master name"))?;
        let config_epoch = master
            .get("config-epoch")
            .and_then(|epoch| epoch.parse().ok())
            .ok_or_else(|| io_error("the sentinel does not tell the master's config-epoch"))?;
        Ok((address, config_epoch))
    }

    /// A connection to the node at `address`, if `ROLE` says it is a master; before any script
    /// runs through it, the master is told `config_epoch` (see [`RAISE_EPOCH`]).
    async fn connect(&self, address: &(String, u16), config_epoch: u64) -> Result<Master, String> {
        if self.fenced(address) {
            return Err("a failover from it is under way".into());
        }
        let (host, port) = address;
        let addr = match self.data.addr() {
            ConnectionAddr::TcpTls { .. } => ConnectionAddr::TcpTls {
                host: host.clone(),
                port: *port,
                insecure: false,
                tls_params: None,
            },
            _ => ConnectionAddr::Tcp(host.clone(), *port),
        };
        let info = self.data.clone().set_addr(addr);
        let client = client(info, self.tls_ca_file.as_deref(), "redis_sentinels")?;
        let mut commands = client
            .get_multiplexed_async_connection_with_config(&node_config())
            .await
            .map_err(|error| error.to_string())?;
        let role: Vec<Value> = redis::cmd("ROLE")
            .query_async(&mut commands)
            .await
            .map_err(|error| error.to_string())?;
        if !is_master(&role) {
            return Err("it is not a master (yet)".into());
        }
        redis::cmd("EVAL")
            .arg(RAISE_EPOCH)
            .arg(1)
            .arg(&self.epoch_key)
            .arg(config_epoch)
            .exec_async(&mut commands)
            .await
            .map_err(|error| error.to_string())?;
        commands.set_response_timeout(SENTINEL_RESPONSE_TIMEOUT);
        let waits = match self.wait {
            Some(wait) => {
                let config = node_config()
                    .set_response_timeout(Some(wait.timeout + SENTINEL_RESPONSE_TIMEOUT));
                Some(
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await
                        .map_err(|error| error.to_string())?,
                )
            }
            None => None,
        };
        Ok(Master {
            waits,
            epoch: self.epochs.fetch_add(1, Ordering::Relaxed) + 1,
            address: address.clone(),
            client,
            commands,
        })
    }

    /// Whether `address` is a master whose failover is under way.
    fn fenced(&self, address: &(String, u16)) -> bool {
        matches!(&*self.fence.lock(), Some((fenced, until)) if fenced == address && Instant::now() < *until)
    }

    /// Acts on a sentinel's announcement on `channel` (see [`listen_to_sentinel`]).
    async fn announced(&self, channel: &str, payload: &str, switched: &watch::Sender<u64>) {
        let words: Vec<&str> = payload.split(' ').collect();
        match (channel, words.as_slice()) {
            // "master <name> <ip> <port>"
            ("+try-failover", ["master", name, host, port, ..]) if *name == self.name => {
                let Ok(port) = port.parse() else { return };
                *self.fence.lock() = Some((((*host).to_owned(), port), Instant::now() + FENCE));
                self.mark_stale(None, switched, &format!("+try-failover {payload}"));
            }
            // "<name> <old ip> <old port> <new ip> <new port>"
            ("+switch-master", [name, _, _, host, port]) if *name == self.name => {
                *self.fence.lock() = None;
                // Every sentinel announces it: only the first moves the connection.
                let current = self
                    .current
                    .lock()
                    .as_ref()
                    .map(|master| master.address.clone());
                let new = ((*host).to_owned(), port.parse().unwrap_or_default());
                if current.as_ref() != Some(&new) {
                    self.mark_stale(None, switched, &format!("+switch-master {payload}"));
                }
                self.check_role(switched).await;
            }
            (abort, ["master", name, ..])
                if abort.starts_with("-failover-abort") && *name == self.name =>
            {
                *self.fence.lock() = None;
                logging::info(format_args!("redis: {abort} {payload}"));
            }
            _ => {}
        }
    }

    /// Drops the master in use if it is still the one of resolution `epoch` (any, when `None`),
    /// so that the next call resolves again, and ticks `switched`.
    fn mark_stale(&self, epoch: Option<u64>, switched: &watch::Sender<u64>, why: &str) {
        let mut current = self.current.lock();
        let matches = match (&*current, epoch) {
            (Some(master), Some(epoch)) => master.epoch == epoch,
            (Some(_), None) => true,
            (None, _) => epoch.is_none(),
        };
        if !matches {
            return;
        }
        *current = None;
        drop(current);
        logging::warn(format_args!(
            "redis: master {:?} is stale ({why}); asking the sentinels again",
            self.name
        ));
        switched.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Checks `ROLE` on the master in use (resolving one if there is none): a node that is no
    /// longer a master, or does not answer, is stale.
    async fn check_role(&self, switched: &watch::Sender<u64>) {
        let Ok(master) = self.master().await else {
            return;
        };
        let mut commands = master.commands.clone();
        let role: RedisResult<Vec<Value>> = redis::cmd("ROLE").query_async(&mut commands).await;
        match role {
            Ok(role) if is_master(&role) => {}
            Ok(_) => self.mark_stale(Some(master.epoch), switched, "ROLE says it is a replica"),
            Err(error) if master_gone(&error) => {
                self.mark_stale(Some(master.epoch), switched, &error.to_string())
            }
            Err(_) => {}
        }
    }
}

/// `ROLE`'s reply names a master.
fn is_master(role: &[Value]) -> bool {
    matches!(role.first(), Some(Value::BulkString(role)) if role == b"master")
        || matches!(role.first(), Some(Value::SimpleString(role)) if role == "master")
}

/// The settings of the follower's short connections (sentinels, and the master's commands
/// while it is checked).
fn node_config() -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(NODE_TIMEOUT))
        .set_response_timeout(Some(NODE_TIMEOUT))
}

/// The Sentinel mode's watchers: one subscription per sentinel (each reconnecting by itself,
/// since only the sentinel that leads a failover announces its start), and a `ROLE` check of
/// the master every [`ROLE_EVERY`].
fn spawn_watchers(
    follower: &Arc<Follower>,
    switched: &watch::Sender<u64>,
    shutdown: &rocket::Shutdown,
) {
    for index in 0..follower.sentinels.len() {
        tokio::spawn(listen_to_sentinel(
            Arc::clone(follower),
            index,
            switched.clone(),
            shutdown.clone(),
        ));
    }
    let (follower, switched, mut shutdown) =
        (Arc::clone(follower), switched.clone(), shutdown.clone());
    tokio::spawn(async move {
        let mut role = tokio::time::interval(ROLE_EVERY);
        loop {
            select! {
                _ = role.tick() => follower.check_role(&switched).await,
                _ = &mut shutdown => return,
            }
        }
    });
}

/// Listens to the sentinel `index`'s announcements of the master `follower` follows:
/// `+try-failover` fences the master (no request goes to it until the switch: writes it took
/// after its replica's promotion would be lost), `+switch-master` marks it stale (the sentinels
/// now name the new one), a `-failover-abort-*` lifts the fence.
async fn listen_to_sentinel(
    follower: Arc<Follower>,
    index: usize,
    switched: watch::Sender<u64>,
    mut shutdown: rocket::Shutdown,
) {
    let sentinel = &follower.sentinels[index];
    loop {
        let subscribed = async {
            let mut pubsub = sentinel.get_async_pubsub().await?;
            pubsub.subscribe(&SENTINEL_EVENTS).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let pubsub = select! {
            pubsub = timeout(SENTINEL_PING_EVERY, subscribed) => pubsub,
            _ = &mut shutdown => return,
        };
        let Ok(Ok(pubsub)) = pubsub else {
            select! {
                _ = sleep(Duration::from_millis(500)) => continue,
                _ = &mut shutdown => return,
            }
        };
        let (mut sink, mut messages) = pubsub.split();
        let mut ping = tokio::time::interval(SENTINEL_PING_EVERY);
        ping.tick().await;
        loop {
            select! {
                message = messages.next() => match message {
                    Some(message) => {
                        let payload: String = message.get_payload().unwrap_or_default();
                        follower.announced(message.get_channel_name(), &payload, &switched).await;
                    }
                    None => break,
                },
                _ = ping.tick() => {
                    let pong: Result<RedisResult<Value>, _> = timeout(SENTINEL_PING_EVERY, sink.ping()).await;
                    if !matches!(pong, Ok(Ok(_))) { break; }
                }
                _ = &mut shutdown => return,
            }
        }
        logging::warn(format_args!(
            "redis: subscription to sentinel {} lost; reconnecting",
            follower.urls[index]
        ));
    }
}

/// A client for `info`: over TLS for a `rediss://` address (`tls.rs`, with the `redis-tls`
/// feature), so that no connection made from it can go plain. `key` names the setting in
/// errors.
fn client(
    info: ConnectionInfo,
    tls_ca_file: Option<&Path>,
    key: &str,
) -> Result<redis::Client, String> {
    #[cfg(feature = "redis-tls")]
    if matches!(info.addr(), ConnectionAddr::TcpTls { .. }) {
        return super::tls::client(info, tls_ca_file, key);
    }
    // A CA file without rediss:// is refused by `Config::validate`, the one place of that rule.
    #[cfg(not(feature = "redis-tls"))]
    let _ = tls_ca_file;
    redis::Client::open(info).map_err(|error| format!("signpost.{key} is not usable: {error}"))
}

/// A reply the scripts were not written to give (a bug, or keys written by something else):
/// logged, and answered as an internal error, never a panic.
pub(super) fn unexpected(what: &str) -> Error {
    logging::warn(format_args!("redis: unexpected script reply {what:?}"));
    Error::Internal("the shared store gave an unexpected reply")
}

#[cfg(test)]
mod tests {
    use super::master_gone;

    /// The error a server reply becomes, as a command would get it.
    fn reply_error(reply: &str) -> redis::RedisError {
        redis::parse_redis_value(format!("-{reply}\r\n").as_bytes())
            .and_then(redis::Value::extract_error)
            .expect_err("an error reply")
    }

    /// A reply that says the node is not (or no longer, or not yet) a usable master marks the
    /// Sentinel connection stale, so that the next call asks the sentinels again (without it, a
    /// connection left on a demoted master answers `READONLY` for good); an error of the
    /// script's own does not.
    #[test]
    fn replies_that_say_the_master_went_mark_the_connection_stale() {
        for reply in [
            "READONLY You can't write against a read only replica.",
            "NOREPLICAS Not enough good replicas to write.",
            "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
            "LOADING Redis is loading the dataset in memory",
        ] {
            assert!(master_gone(&reply_error(reply)), "{reply}");
        }
        assert!(!master_gone(&reply_error(
            "ERR user_script:1: Script attempted to access nonexistent global variable"
        )));
    }
}
