//! The Redis Sentinel and Cluster set-ups of `tests/common/redis_ha.rs` (groundwork for issue
//! #18): each comes up, fails over (planned and by SIGKILL) and takes its old master back as a
//! replica, within bounded deadlines.
//!
//! The `experiment_*` tests below are `#[ignore]`d prototypes that record what the `redis`
//! crate's `sentinel` and `cluster-async` features do across a failover, a slot migration and
//! sharded pub/sub. Run them with
//! `cargo test --test redis_ha_setup -- --ignored --nocapture --test-threads 1`; their findings
//! are in the design note for #18.

mod common;

use std::time::Instant;

use common::redis_ha::{self, Cluster, Sentinels, FAILOVER_DEADLINE};

/// Sentinel: the set-up comes up with the sentinels agreeing on the master; a planned
/// `SENTINEL FAILOVER` moves the master (keeping what was written) and turns the old master into
/// a replica; a SIGKILL of the new master is noticed and a replica promoted; the killed node,
/// restarted empty, rejoins as a replica of the new master.
#[test]
#[cfg_attr(
    signpost_missing = "redis",
    ignore = "needs redis-server: apt-get install redis-server (README.md, Prerequisites)"
)]
fn sentinels_come_up_fail_over_and_take_the_old_master_back() {
    if !common::external::can_run("sentinels", redis_ha::available()) {
        return;
    }
    let mut sentinels = Sentinels::start();
    assert_eq!(sentinels.urls().len(), 3);
    assert_eq!(sentinels.master_name(), Sentinels::MASTER);
    let first = sentinels.master_port();
    assert_eq!(sentinels.data_cli(first, &["set", "kept", "1"]), "OK");
    assert_eq!(sentinels.data_cli(first, &["wait", "1", "5000"]), "1");

    let second = sentinels.failover();
    assert_ne!(second, first, "a planned failover moves the master");
    assert_eq!(sentinels.data_cli(second, &["get", "kept"]), "1");
    assert!(sentinels.data_cli(first, &["role"]).starts_with("slave"));

    let started = Instant::now();
    let killed = sentinels.kill_master();
    assert_eq!(killed, second);
    let third = sentinels.wait_for_new_master(killed, FAILOVER_DEADLINE);
    assert_eq!(third, first, "the only replica left is promoted");
    println!("sentinel: SIGKILL to a promoted master in {:?}", started.elapsed());

    sentinels.restart(killed);
    assert_eq!(sentinels.master_port(), third, "the restarted node stays a replica");
    assert!(sentinels.data_cli(killed, &["role"]).starts_with("slave"));
}

/// Sentinel with `requirepass`: the sentinels authenticate to the data nodes and fail over all
/// the same.
#[test]
#[cfg_attr(
    signpost_missing = "redis",
    ignore = "needs redis-server: apt-get install redis-server (README.md, Prerequisites)"
)]
fn sentinels_with_a_password_fail_over() {
    if !common::external::can_run("sentinels_password", redis_ha::available()) {
        return;
    }
    let sentinels = Sentinels::start_with_password("s3cret");
    let first = sentinels.master_port();
    assert!(redis_ha::cli(first, &["set", "k", "v"]).starts_with("NOAUTH"));
    assert_eq!(sentinels.data_cli(first, &["set", "k", "v"]), "OK");
    let second = sentinels.failover();
    assert_ne!(second, first);
}

/// Cluster: six nodes come up as three masters with a replica each and every slot served; the
/// master of a room's slot, SIGKILLed, is replaced by its replica; restarted, it rejoins as a
/// replica; a slot moves with its keys to another master.
#[test]
#[cfg_attr(
    signpost_missing = "redis",
    ignore = "needs redis-server: apt-get install redis-server (README.md, Prerequisites)"
)]
fn cluster_comes_up_fails_over_migrates_and_takes_the_old_master_back() {
    if !common::external::can_run("cluster", redis_ha::available()) {
        return;
    }
    let mut cluster = Cluster::start();
    assert_eq!(cluster.urls().len(), 6);
    let nodes = cluster.nodes_seen_by(cluster.running()[0]);
    let masters: Vec<_> = nodes.iter().filter(|node| node.master).collect();
    assert_eq!(masters.len(), 3);
    assert!(masters
        .iter()
        .all(|master| nodes.iter().any(|n| n.master_id.as_ref() == Some(&master.id))));
    let served: u32 = masters
        .iter()
        .flat_map(|master| master.slots.iter())
        .map(|(start, end)| u32::from(end - start) + 1)
        .sum();
    assert_eq!(served, 16384);

    let key = "{busy}:seq";
    let slot = cluster.slot_of(key);
    let owner = cluster.master_of(key);
    assert_eq!(redis_ha::cli(owner, &["set", key, "7"]), "OK");
    assert_eq!(redis_ha::cli(owner, &["wait", "1", "5000"]), "1");

    // A slot moves with its key; the old owner then redirects.
    let other = masters
        .iter()
        .find(|master| master.port != owner)
        .expect("another master")
        .port;
    cluster.migrate_slot(slot, other);
    assert_eq!(cluster.master_of(key), other);
    assert_eq!(redis_ha::cli(other, &["get", key]), "7");
    assert!(redis_ha::cli(owner, &["get", key]).starts_with("MOVED"));
    assert_eq!(redis_ha::cli(other, &["wait", "1", "5000"]), "1");

    let started = Instant::now();
    let killed = cluster.kill_master_of(key);
    assert_eq!(killed, other);
    let promoted = cluster.wait_for_promotion(killed, slot, FAILOVER_DEADLINE);
    println!("cluster: SIGKILL to a promoted replica in {:?}", started.elapsed());
    assert_eq!(redis_ha::cli(promoted, &["get", key]), "7");

    cluster.restart(killed);
    assert_eq!(cluster.master_of(key), promoted, "the restarted node stays a replica");
    assert!(redis_ha::cli(killed, &["role"]).starts_with("slave"));

    // redis-cli --cluster reshard moves slots too.
    let before = cluster.owner_of(0).port;
    let target = cluster
        .nodes_seen_by(promoted)
        .into_iter()
        .find(|node| node.master && node.port != before)
        .expect("another master")
        .port;
    let served_by = |port: u16| -> u32 {
        cluster
            .nodes_seen_by(port)
            .iter()
            .filter(|node| node.port == port)
            .flat_map(|node| node.slots.iter())
            .map(|(start, end)| u32::from(end - start) + 1)
            .sum()
    };
    let had = served_by(target);
    cluster.reshard(before, target, 10);
    assert_eq!(served_by(target), had + 10);
}
