//! The backends the store contract suite (tests/store_contract.rs) runs on, and the one macro
//! that stamps each contract test once per backend.
//!
//! Adding a backend (issue 18: Sentinel and Cluster) is done here alone: a variant of [`Backend`],
//! its arm in [`Backend::deployment`] and [`Backend::shared`], and its line in the
//! `@every` (and, for a shared store, `@shared`) arm of [`store_contract!`].

use std::sync::{Arc, Mutex, OnceLock};

use signpost::config::Config;
use signpost::metrics::Metrics;
use signpost::store::{self, Store};

use super::redis_ha::{Cluster, Sentinels};

/// A kind of store the contract holds for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// One process's rooms in memory.
    Memory,
    /// Rooms in the tests' shared `redis-server` (`tests/common/redis.rs`), under a key prefix
    /// of the test's own.
    Redis,
    /// Rooms on the master that the binary's shared Sentinel set-up watches (a master, a
    /// replica, three sentinels: `tests/common/redis_ha.rs`), found through the sentinels, under
    /// a key prefix of the test's own.
    Sentinel,
    /// Rooms on the binary's shared Redis Cluster (3 masters, 3 replicas:
    /// `tests/common/redis_ha.rs`), through its nodes, under a key prefix of the test's own.
    Cluster,
}

impl Backend {
    /// Whether stores opened on one deployment of this backend are one server to their clients
    /// (so the "several instances" rules apply).
    pub fn shared(self) -> bool {
        match self {
            Backend::Memory => false,
            Backend::Redis | Backend::Sentinel | Backend::Cluster => true,
        }
    }

    /// A fresh deployment for `test`, or `None` when the backend's program is missing outside
    /// CI (the test then passes without running; under `CI=true` it fails instead).
    pub fn deployment(self, test: &str) -> Option<Deployment> {
        let (mut redis_url, mut sentinels, mut cluster) = (None, None, None);
        match self {
            Backend::Memory => {}
            Backend::Redis => redis_url = Some(super::redis::shared(test)?),
            Backend::Sentinel => sentinels = Some(shared_sentinels(test)?),
            Backend::Cluster => cluster = Some(shared_cluster(test)?),
        }
        Some(Deployment {
            backend: self,
            redis_url,
            sentinels,
            cluster,
            prefix: format!("contract-{}", uuid::Uuid::new_v4().simple()),
        })
    }
}

/// Where a test's stores live: the stores [`open`](Deployment::open)ed on one deployment of a
/// shared backend see the same rooms, as instances of one server do.
pub struct Deployment {
    pub backend: Backend,
    redis_url: Option<String>,
    /// The sentinels' URLs and the master's name, for [`Backend::Sentinel`].
    sentinels: Option<(Vec<String>, String)>,
    /// The cluster's nodes, for [`Backend::Cluster`].
    cluster: Option<Vec<String>>,
    prefix: String,
}

impl Deployment {
    /// A store (an instance) on this deployment, configured by `Config::default()` (the
    /// defaults of `Rocket.toml`) with `settings` applied, started as a server starts it.
    pub async fn open(&self, settings: impl FnOnce(&mut Config)) -> Instance {
        let mut config = Config::default();
        settings(&mut config);
        config.redis_url = self.redis_url.clone();
        if let Some((urls, master)) = &self.sentinels {
            config.redis_sentinels = Some(urls.clone());
            config.redis_sentinel_master = Some(master.clone());
        }
        config.redis_cluster_nodes = self.cluster.clone();
        config.redis_prefix = self.prefix.clone();
        let store = store::open(&config, &Metrics::default()).expect("the store opens");
        let shutdown = shutdown_handle().await;
        store.start(shutdown.clone());
        Instance { store, shutdown }
    }
}

/// One Sentinel set-up shared by the tests of a binary that run on [`Backend::Sentinel`] (the
/// test fails when redis-server is missing under CI: `external::can_run`): its sentinels' URLs
/// and master name. Never failed over: the failover tests (tests/sentinel.rs) start their own.
fn shared_sentinels(test: &str) -> Option<(Vec<String>, String)> {
    static SHARED: OnceLock<Mutex<Option<Sentinels>>> = OnceLock::new();
    if !super::external::can_run(test, super::redis_ha::available()) {
        return None;
    }
    let shared = SHARED.get_or_init(|| Mutex::new(Some(Sentinels::start())));
    let set_up = shared.lock().unwrap_or_else(|e| e.into_inner());
    set_up
        .as_ref()
        .map(|set_up| (set_up.urls(), set_up.master_name().to_owned()))
}

/// One Redis Cluster shared by the tests of a binary that run on [`Backend::Cluster`] (the
/// test fails when redis-server is missing under CI): its nodes' URLs. Never failed over: the
/// fault tests (tests/redis_cluster.rs) start their own.
fn shared_cluster(test: &str) -> Option<Vec<String>> {
    static SHARED: OnceLock<Mutex<Option<Cluster>>> = OnceLock::new();
    if !super::external::can_run(test, super::redis_ha::available()) {
        return None;
    }
    let shared = SHARED.get_or_init(|| Mutex::new(Some(Cluster::start())));
    let set_up = shared.lock().unwrap_or_else(|e| e.into_inner());
    set_up.as_ref().map(Cluster::urls)
}

/// One store, as one server instance holds it; its background tasks end when it is dropped.
pub struct Instance {
    pub store: Arc<dyn Store>,
    shutdown: rocket::Shutdown,
}

impl std::ops::Deref for Instance {
    type Target = dyn Store;

    fn deref(&self) -> &Self::Target {
        &*self.store
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.shutdown.clone().notify();
    }
}

/// A `Shutdown` of a Rocket that is ignited but never launched: what a store's background tasks
/// select on, tripped by [`Instance`]'s drop.
async fn shutdown_handle() -> rocket::Shutdown {
    let config = rocket::Config {
        log_level: rocket::config::LogLevel::Off,
        ..rocket::Config::debug_default()
    };
    rocket::custom(config)
        .ignite()
        .await
        .expect("an empty Rocket ignites")
        .shutdown()
}

/// Declares contract tests, each once per backend: `store_contract! { /// the rule
/// every async fn name(deployment) { … } }` runs on every backend;
/// `shared async fn …` only on backends whose instances share rooms ([`Backend::shared`]).
/// `<name>::memory`, `<name>::redis`, … are the tests; the body gets the [`Deployment`].
#[macro_export]
macro_rules! store_contract {
    ($($(#[$meta:meta])* $which:ident async fn $name:ident($deployment:ident) $body:block)*) => {$(
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            $crate::store_contract!(@$which $name $deployment $body);
        }
    )*};
    (@every $name:ident $deployment:ident $body:block) => {
        $crate::store_contract!(@memory $name $deployment $body);
        $crate::store_contract!(@redis $name $deployment $body);
        $crate::store_contract!(@sentinel $name $deployment $body);
        $crate::store_contract!(@cluster $name $deployment $body);
    };
    (@shared $name:ident $deployment:ident $body:block) => {
        $crate::store_contract!(@redis $name $deployment $body);
        $crate::store_contract!(@sentinel $name $deployment $body);
        $crate::store_contract!(@cluster $name $deployment $body);
    };
    (@memory $name:ident $deployment:ident $body:block) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn memory() {
            let backend = $crate::common::stores::Backend::Memory;
            let test = concat!(stringify!($name), "::memory");
            if let Some($deployment) = backend.deployment(test) $body
        }
    };
    (@redis $name:ident $deployment:ident $body:block) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[cfg_attr(
            signpost_missing = "redis",
            ignore = "needs redis-server: apt-get install redis-server (README.md, Prerequisites)"
        )]
        async fn redis() {
            let backend = $crate::common::stores::Backend::Redis;
            let test = concat!(stringify!($name), "::redis");
            if let Some($deployment) = backend.deployment(test) $body
        }
    };
    (@sentinel $name:ident $deployment:ident $body:block) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[cfg_attr(
            signpost_missing = "redis",
            ignore = "needs redis-server and redis-cli: apt-get install redis-server (README.md, Prerequisites)"
        )]
        async fn sentinel() {
            let backend = $crate::common::stores::Backend::Sentinel;
            let test = concat!(stringify!($name), "::sentinel");
            if let Some($deployment) = backend.deployment(test) $body
        }
    };
    (@cluster $name:ident $deployment:ident $body:block) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[cfg_attr(
            signpost_missing = "redis",
            ignore = "needs redis-server and redis-cli: apt-get install redis-server (README.md, Prerequisites)"
        )]
        async fn cluster() {
            let backend = $crate::common::stores::Backend::Cluster;
            let test = concat!(stringify!($name), "::cluster");
            if let Some($deployment) = backend.deployment(test) $body
        }
    };
}
