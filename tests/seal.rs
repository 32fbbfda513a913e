//! No silent loss, whatever Redis does (issue 18): a Redis that lost its last writes, as a
//! replica promoted by a failover does when replication lagged, never reuses an id a reader
//! saw and never hides a gap. Every mailbox records the server history that assigned its ids
//! and is sealed (a new generation: ids from 2^32 + 1 on) by the first script that finds
//! itself on another (`src/store/redis/lua/room.lua`, "Seal"); its readers get a reset with
//! reason `lost`.
//!
//! The failover is simulated on one `redis-server` of the test's own, with nothing but
//! ordinary commands: the instance's keys are copied aside (what a lagging replica holds),
//! more is sent and delivered, then the copy replaces the keys (the writes since are lost) and
//! `REPLICAOF <closed port>` + `REPLICAOF NO ONE` gives the server a new `master_replid`, as a
//! promotion does. The connections stay up: the hardest case, where nothing but the data says
//! that the history changed. A Redis restarted empty is tests/cluster.rs (9 and 9b): the room
//! is gone, readers and senders are told (`room_not_found`, `peer_not_found`), and peer ids,
//! being random, are never reused.

#[macro_use]
mod common;

use std::net::TcpListener;
use std::sync::Mutex;

use common::redis::Redis;
use common::{external, Events, Peer, Server};
use serde_json::{json, Value};

/// The first id of the first generation after a seal: 2^32 + 1.
const SEALED_FIRST_ID: u64 = (1 << 32) + 1;

/// A new redis-server, started by one test at a time: a free port is chosen before the server
/// binds it, so two tests starting servers at once could pick the same one, and then both talk
/// to the server that won.
fn start_redis() -> Redis {
    static STARTING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = STARTING.lock().unwrap_or_else(|e| e.into_inner());
    Redis::start()
}

/// One Redis of the test's own and one instance on it.
struct Lab {
    redis: Redis,
    server: Server,
    prefix: String,
}

impl Lab {
    /// The test fails when redis-server is missing (`external::can_run`).
    async fn start(test: &str, settings: Value) -> Option<Lab> {
        if !external::can_run(test, Redis::available()) {
            return None;
        }
        let redis = start_redis();
        let prefix = format!("seal-{}", uuid::Uuid::new_v4().simple());
        let mut settings = settings;
        settings["redis_url"] = json!(redis.url());
        settings["redis_prefix"] = json!(prefix);
        let server = Server::with(settings).await;
        Some(Lab {
            redis,
            server,
            prefix,
        })
    }

    /// Copies every key of the instance aside: what a replica that stops replicating now
    /// holds.
    fn replica_stops_here(&self) {
        let copied = self.redis.cli(&[
            "EVAL",
            "local n = 0
             for _, key in ipairs(redis.call('KEYS', ARGV[1] .. '*')) do
               redis.call('COPY', key, 'replica:' .. key, 'REPLACE')
               n = n + 1
             end
             return n",
            "0",
            &self.prefix,
        ]);
        assert_ne!(copied, "0", "the instance has keys to copy");
    }

    /// The replica is promoted: the server gets a new replication id, as a promoted replica
    /// does, and forgets the id its scripts kept (`forget_kept_rid`), then the copy replaces
    /// the keys (every write since it stopped is lost). With an `epoch`, the promotion is
    /// Sentinel's: the instances tell the new master its config epoch before any script runs
    /// there, here in the same step as the copy.
    fn promote_the_replica(&self, epoch: Option<u64>) {
        self.change_replid();
        self.forget_kept_rid();
        let restored = self.redis.cli(&[
            "EVAL",
            "for _, key in ipairs(redis.call('KEYS', ARGV[1] .. '*')) do
               redis.call('DEL', key)
             end
             local n = 0
             for _, copy in ipairs(redis.call('KEYS', 'replica:' .. ARGV[1] .. '*')) do
               redis.call('COPY', copy, string.sub(copy, 9), 'REPLACE')
               redis.call('DEL', copy)
               n = n + 1
             end
             if ARGV[3] ~= '' then redis.call('SET', ARGV[2], ARGV[3]) end
             return n",
            "0",
            &self.prefix,
            &self.epoch_key(),
            &epoch.map(|epoch| epoch.to_string()).unwrap_or_default(),
        ]);
        assert_ne!(restored, "0", "the replica's keys are back");
    }

    /// The server becomes another history that lost nothing (a restart with every write kept,
    /// or, with an `epoch`, a failover to a replica that had them all): a new replication id,
    /// the rooms' kept ids forgotten, the epoch (if any) told first.
    fn new_history(&self, epoch: Option<u64>) {
        if let Some(epoch) = epoch {
            assert_eq!(
                self.redis
                    .cli(&["SET", &self.epoch_key(), &epoch.to_string()]),
                "OK"
            );
        }
        self.change_replid();
        self.forget_kept_rid();
    }

    /// The room library keeps the server's replication id in its Lua state for a second
    /// (room.lua, `server_rid`). A promoted replica or a restarted server is another process,
    /// whose library never ran a call: here the same process plays it, so its library is
    /// flushed, and the next call loads it afresh, as it would after a `FUNCTION FLUSH`.
    fn forget_kept_rid(&self) {
        assert_eq!(self.redis.cli(&["FUNCTION", "FLUSH"]), "OK");
    }

    /// `REPLICAOF <closed port>` then `REPLICAOF NO ONE`: a new `master_replid`, as a promotion
    /// gives; the keys stay (the master it names never answers).
    fn change_replid(&self) {
        let replid = self.replid();
        let nobody = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        assert_eq!(
            self.redis
                .cli(&["REPLICAOF", "127.0.0.1", &nobody.to_string()]),
            "OK"
        );
        assert_eq!(self.redis.cli(&["REPLICAOF", "NO", "ONE"]), "OK");
        assert_ne!(
            self.replid(),
            replid,
            "a promotion changes the replication id"
        );
    }

    /// Where a Sentinel-mode instance tells the master its config epoch (`Keys::epoch`).
    fn epoch_key(&self) -> String {
        format!("{0}:{{{0}:global}}:epoch", self.prefix)
    }

    fn replid(&self) -> String {
        let info = self.redis.cli(&["INFO", "replication"]);
        info.lines()
            .find_map(|line| line.strip_prefix("master_replid:"))
            .expect("INFO replication names master_replid")
            .trim()
            .to_owned()
    }

    async fn lost_resets(&self) -> f64 {
        self.server
            .metric(r#"signpost_mailbox_resets_total{reason="lost"}"#)
            .await
    }
}

/// `data` sent by `from` to `to`, answered 202.
async fn offer(from: &Peer, to: &Peer, data: &str) {
    from.send_ok(json!({"type": "offer", "to": to.id, "data": data}))
        .await;
}

/// The next message on `events`: `(id, data)`.
/// The next event, which must be a `reset` (nothing else comes before it): its data.
async fn next_reset(events: &mut Events) -> Value {
    let reset = events.next().await;
    assert_eq!(
        reset.event, "reset",
        "the stream says what happened before anything else: {reset:?}"
    );
    serde_json::from_str(&reset.data).expect("reset data is JSON")
}

async fn next_offer(events: &mut Events) -> (u64, String) {
    let message = events.next_message().await;
    (
        message["id"].as_u64().expect("an id"),
        message["data"].as_str().unwrap_or_default().to_owned(),
    )
}

/// A live stream that received messages a failover then lost is told `lost` with the next
/// message, whose id is past every id handed out before (2^32 + 1): never an id it saw, with
/// other content, and never a silent gap.
#[cfg_attr(
    signpost_missing = "redis",
    ignore = "needs redis-server: apt-get install redis-server (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lossy_failover_resets_a_live_stream_and_reuses_no_id() {
    let Some(lab) = Lab::start("seal_live_stream", json!({})).await else {
        return;
    };
    let alice = lab.server.join("failover", "alice").await;
    let mut alice_events = alice.events(None).await;
    let bob = lab.server.join("failover", "bob").await;
    assert_eq!(alice_events.next_message().await["id"], 1, "bob's join");
    offer(&bob, &alice, "kept").await;
    assert_eq!(next_offer(&mut alice_events).await, (2, "kept".into()));

    lab.replica_stops_here();
    for (id, data) in [(3, "lost 1"), (4, "lost 2"), (5, "lost 3")] {
        offer(&bob, &alice, data).await;
        assert_eq!(next_offer(&mut alice_events).await, (id, data.into()));
    }
    lab.promote_the_replica(None);

    offer(&bob, &alice, "after").await;
    let reset = next_reset(&mut alice_events).await;
    assert_eq!(reset, json!({"reason": "lost", "last_id": SEALED_FIRST_ID}));
    assert_eq!(
        next_offer(&mut alice_events).await,
        (SEALED_FIRST_ID, "after".into())
    );
    offer(&bob, &alice, "next").await;
    assert_eq!(
        next_offer(&mut alice_events).await,
        (SEALED_FIRST_ID + 1, "next".into()),
        "gapless again within the new generation"
    );
    assert_eq!(lab.lost_resets().await, 1.0);
}

/// A reader that never saw the lost messages (its cursor is still valid on the promoted
/// replica) is told `lost` as soon as it reads again, even when nothing was sent since: the
/// two messages answered 202 are gone, and it must not wait for them in silence.
#[cfg_attr(
    signpost_missing = "redis",
    ignore = "needs redis-server: apt-get install redis-server (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_behind_the_lost_messages_is_told_at_once() {
    let Some(lab) = Lab::start("seal_poll", json!({})).await else {
        return;
    };
    let alice = lab.server.join("failover", "alice").await;
    let bob = lab.server.join("failover", "bob").await;
    let (status, body) = alice.poll(0, 0.0).await;
    assert_eq!((status, &body["last_id"]), (200, &json!(1)), "{body}");

    lab.replica_stops_here();
    offer(&bob, &alice, "lost 1").await;
    offer(&bob, &alice, "lost 2").await;
    lab.promote_the_replica(None);

    let (status, body) = alice.poll(1, 0.0).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"messages": [], "last_id": SEALED_FIRST_ID - 1, "reset": true, "reset_reason": "lost"})
    );
    offer(&bob, &alice, "after").await;
    let (status, body) = alice.poll(SEALED_FIRST_ID - 1, 0.0).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reset"], false, "{body}");
    assert_eq!(body["messages"][0]["id"], SEALED_FIRST_ID, "{body}");
    assert_eq!(body["messages"][0]["data"], "after", "{body}");
}

/// A live stream whose last ids were lost and to which nothing is sent is told `lost` at its
/// next read (here the heartbeat's), not `ahead`: its cursor is past the mailbox because the
/// server forgot, not because the client made an id up.
#[cfg_attr(
    signpost_missing = "redis",
    ignore = "needs redis-server: apt-get install redis-server (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ahead_of_a_mailbox_that_lost_its_tail_is_told_lost() {
    let Some(lab) = Lab::start("seal_ahead", json!({"heartbeat_secs": 0.5})).await else {
        return;
    };
    let alice = lab.server.join("failover", "alice").await;
    let mut alice_events = alice.events(None).await;
    let bob = lab.server.join("failover", "bob").await;
    assert_eq!(alice_events.next_message().await["id"], 1, "bob's join");

    lab.replica_stops_here();
    offer(&bob, &alice, "lost").await;
    assert_eq!(next_offer(&mut alice_events).await, (2, "lost".into()));
    lab.promote_the_replica(None);

    // Heartbeats are comments, which the SSE parser does not report as events.
    let reset = next_reset(&mut alice_events).await;
    assert_eq!(
        reset,
        json!({"reason": "lost", "last_id": SEALED_FIRST_ID - 1})
    );
    offer(&bob, &alice, "after").await;
    assert_eq!(
        next_offer(&mut alice_events).await,
        (SEALED_FIRST_ID, "after".into())
    );
}

/// A resume from an id the lost history handed out (the client reconnects to a new stream
/// with `Last-Event-ID`) is told `lost`, and what is sent next has an id it never saw.
#[cfg_attr(
    signpost_missing = "redis",
    ignore = "needs redis-server: apt-get install redis-server (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_from_a_lost_id_is_told_lost() {
    let Some(lab) = Lab::start("seal_resume", json!({})).await else {
        return;
    };
    let alice = lab.server.join("failover", "alice").await;
    let bob = lab.server.join("failover", "bob").await;
    lab.replica_stops_here();
    offer(&bob, &alice, "lost").await;
    let mut alice_events = alice.events(None).await;
    assert_eq!(alice_events.next_message().await["id"], 1, "bob's join");
    assert_eq!(next_offer(&mut alice_events).await, (2, "lost".into()));
    drop(alice_events);
    lab.promote_the_replica(None);

    let mut alice_events = alice.events(Some(2)).await;
    let reset = next_reset(&mut alice_events).await;
    assert_eq!(reset["reason"], "lost", "{reset}");
    offer(&bob, &alice, "after").await;
    assert_eq!(
        next_offer(&mut alice_events).await,
        (SEALED_FIRST_ID, "after".into())
    );
}

/// With a real replica: everything the scripts write reaches it, but not the replication id
/// they keep for a second in the master's Lua state (room.lua, `server_rid`), so that the
/// replica, promoted after the master went on without it, seals the mailbox instead of
/// trusting its old master's id. The
/// reader, resuming on an instance of the promoted replica, is told `lost` and never sees an
/// id twice.
#[cfg_attr(
    signpost_missing = "redis",
    ignore = "needs redis-server: apt-get install redis-server (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_replica_that_lagged_seals_the_mailbox() {
    let Some(lab) = Lab::start("seal_real_replica", json!({})).await else {
        return;
    };
    let replica = start_redis();
    let port = lab.redis.port.to_string();
    // The replica loads what its master sends straight from the socket: by default it would
    // write it to dump.rdb in its working directory, this crate's.
    assert_eq!(
        replica.cli(&["CONFIG", "SET", "repl-diskless-load", "on-empty-db"]),
        "OK"
    );
    assert_eq!(replica.cli(&["REPLICAOF", "127.0.0.1", &port]), "OK");
    common::eventually::eventually("the replica is in sync", || {
        let up = replica
            .cli(&["INFO", "replication"])
            .contains("master_link_status:up");
        async move { up }
    })
    .await;

    let alice = lab.server.join("failover", "alice").await;
    let bob = lab.server.join("failover", "bob").await;
    let mut alice_events = alice.events(None).await;
    assert_eq!(alice_events.next_message().await["id"], 1, "bob's join");
    offer(&bob, &alice, "kept").await;
    assert_eq!(next_offer(&mut alice_events).await, (2, "kept".into()));
    // Everything so far has reached the replica. (`WAIT` would not say so: it waits for the
    // writes of its own connection, and redis-cli's has made none.)
    let offset = |redis: &Redis| -> u64 {
        let info = redis.cli(&["INFO", "replication"]);
        info.lines()
            .find_map(|line| line.strip_prefix("master_repl_offset:"))
            .and_then(|offset| offset.trim().parse().ok())
            .expect("INFO replication names master_repl_offset")
    };
    let written = offset(&lab.redis);
    common::eventually::eventually("the replica has every write so far", || {
        let caught_up = offset(&replica) >= written;
        async move { caught_up }
    })
    .await;
    assert_eq!(replica.cli(&["REPLICAOF", "NO", "ONE"]), "OK");

    offer(&bob, &alice, "lost").await;
    assert_eq!(next_offer(&mut alice_events).await, (3, "lost".into()));
    drop(alice_events);

    let promoted = Server::with(json!({
        "redis_url": replica.url(),
        "redis_prefix": lab.prefix,
    }))
    .await;
    let (alice, bob) = (via(&alice, &promoted), via(&bob, &promoted));
    let mut alice_events = alice.events(Some(3)).await;
    let reset = next_reset(&mut alice_events).await;
    assert_eq!(reset["reason"], "lost", "{reset}");
    offer(&bob, &alice, "after").await;
    assert_eq!(
        next_offer(&mut alice_events).await,
        (SEALED_FIRST_ID, "after".into())
    );
}

/// Two failovers within one replication lag, as Sentinel makes them: A -> B at config epoch
/// 1, B seals the mailbox and delivers from its new generation, then B dies before its writes
/// reach C, promoted at epoch 2 from A's state. C must not seal to B's generation: its ids
/// would be ids the reader saw (here, the reader's cursor would equal C's first id, and C's
/// message would never reach it). Three restarts of A first take the mailbox's generation past
/// both epochs themselves, where a floor of the bare epoch (`max(gen + 1, epoch)`) would still
/// give B and C the same generation: each epoch owns the generations from epoch × 64 on.
#[cfg_attr(
    signpost_missing = "redis",
    ignore = "needs redis-server: apt-get install redis-server (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_failovers_within_one_lag_never_seal_to_the_same_generation() {
    let Some(lab) = Lab::start("seal_two_failovers", json!({})).await else {
        return;
    };
    let alice = lab.server.join("failover", "alice").await;
    let mut alice_events = alice.events(None).await;
    let bob = lab.server.join("failover", "bob").await;
    assert_eq!(alice_events.next_message().await["id"], 1, "bob's join");
    let first_of = |generation: u64| (generation << 32) + 1;

    for generation in 1..=3 {
        lab.new_history(None);
        let data = format!("after restart {generation}");
        offer(&bob, &alice, &data).await;
        assert_eq!(next_reset(&mut alice_events).await["reason"], "lost");
        assert_eq!(
            next_offer(&mut alice_events).await,
            (first_of(generation), data)
        );
    }

    lab.replica_stops_here();
    lab.new_history(Some(1));
    offer(&bob, &alice, "on B").await;
    assert_eq!(next_reset(&mut alice_events).await["reason"], "lost");
    assert_eq!(
        next_offer(&mut alice_events).await,
        (first_of(64), "on B".into()),
        "B, promoted at epoch 1, seals to epoch 1's first generation"
    );

    lab.promote_the_replica(Some(2));
    offer(&bob, &alice, "on C").await;
    let reset = next_reset(&mut alice_events).await;
    assert_eq!(reset["reason"], "lost", "{reset}");
    assert_eq!(
        next_offer(&mut alice_events).await,
        (first_of(128), "on C".into()),
        "C, promoted at epoch 2 from the state before B's seal, takes epoch 2's generation"
    );
    assert_eq!(lab.lost_resets().await, 5.0);
}

/// `peer` as a client of `server`.
fn via(peer: &Peer, server: &Server) -> Peer {
    Peer {
        base: server.base.clone(),
        client: server.client.clone(),
        ..peer.clone()
    }
}
