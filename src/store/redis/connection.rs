//! The connection to Redis, which the rest of the store calls through: opening the client
//! (plain, unix socket, or TLS via `tls.rs`), the commands' [`ConnectionManager`] and its
//! timeouts, and how a failure becomes an answer: Redis unreachable or too slow is
//! `503 store_unavailable` (with `Retry-After`, `error.rs`), a reply no script gives is
//! [`unexpected`].
//!
//! Sentinel and Cluster (issue #18) are other ways of opening this one type.

use std::path::Path;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::FromRedisValue;

use crate::error::{ApiResult, Error};
use crate::logging;
use crate::metrics::Metrics;

/// How long a round trip may take before the request is answered `503 store_unavailable`: a
/// healthy Redis answers in well under a millisecond, so this only bounds a hang.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The store's way to Redis: every command, pipeline and script goes through it, and every
/// round trip is counted in the metrics.
pub(super) struct Connection {
    /// Reconnects by itself; a command sent while Redis is unreachable fails instead of waiting.
    commands: ConnectionManager,
    /// What both of the store's connections (commands, wake-ups) are made from.
    client: redis::Client,
    metrics: Metrics,
}

impl Connection {
    /// The connection to `url`, over TLS for `rediss://` with `tls_ca_file`'s CAs if given;
    /// connects lazily, so this succeeds while Redis is down.
    pub(super) fn open(
        url: &str,
        tls_ca_file: Option<&Path>,
        metrics: Metrics,
    ) -> Result<Self, String> {
        let client = client(url, tls_ca_file)?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let commands = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|error| format!("cannot set up the Redis connection: {error}"))?;
        Ok(Self {
            commands,
            client,
            metrics,
        })
    }

    /// The client the wake-ups' pub/sub connection is made from, with the same TLS settings.
    pub(super) fn client(&self) -> &redis::Client {
        &self.client
    }

    /// Runs a script; any failure is `store_unavailable`.
    pub(super) async fn run<T: FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> ApiResult<T> {
        let mut connection = self.commands.clone();
        let result = invocation.invoke_async(&mut connection).await;
        self.account(result)
    }

    /// Sends a command; any failure is `store_unavailable`.
    pub(super) async fn query<T: FromRedisValue>(&self, command: &redis::Cmd) -> ApiResult<T> {
        let mut connection = self.commands.clone();
        let result = command.query_async(&mut connection).await;
        self.account(result)
    }

    /// Sends a pipeline, in one round trip; any failure is `store_unavailable`.
    pub(super) async fn query_pipe<T: FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> ApiResult<T> {
        let mut connection = self.commands.clone();
        let result = pipe.query_async(&mut connection).await;
        self.account(result)
    }

    /// Counts the round trip, and makes any failure `503 store_unavailable`.
    fn account<T>(&self, result: redis::RedisResult<T>) -> ApiResult<T> {
        self.metrics.store_round_trip(result.is_err());
        result.map_err(|error| {
            logging::warn(format_args!("redis: {}", error));
            Error::StoreUnavailable
        })
    }
}

/// The client that both of the store's connections (commands, wake-ups) are made from: over
/// TLS for a `rediss://` `url` (`tls.rs`, with the `redis-tls` feature), so neither connection
/// can go plain.
fn client(url: &str, tls_ca_file: Option<&Path>) -> Result<redis::Client, String> {
    #[cfg(feature = "redis-tls")]
    if url.starts_with("rediss://") {
        return super::tls::client(url, tls_ca_file);
    }
    // A CA file without rediss:// is refused by `Config::validate`, the one place of that rule.
    #[cfg(not(feature = "redis-tls"))]
    let _ = tls_ca_file;
    redis::Client::open(url).map_err(|error| format!("signpost.redis_url is not usable: {error}"))
}

/// A reply the scripts were not written to give (a bug, or keys written by something else):
/// logged, and answered as an internal error, never a panic.
pub(super) fn unexpected(what: &str) -> Error {
    logging::warn(format_args!("redis: unexpected script reply {what:?}"));
    Error::Internal("the shared store gave an unexpected reply")
}
