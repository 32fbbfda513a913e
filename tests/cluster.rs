//! Several signpost instances on one Redis behave, to every client, as one server; and faults of
//! Redis (stopped, restarted empty, its pub/sub connections killed or deaf) or of an instance (SIGKILL)
//! lose no message, repeat none, hang no request and need no restart (issue 9).
//!
//! Each test starts a `redis-server` of its own (so that its faults disturb no other test) and
//! two or three instances on it sharing one key prefix: in-process servers, except the one that
//! is SIGKILLed, which is the real binary in a child process. Without redis-server, the tests
//! are ignored outside CI (`tests/common/external.rs`).
//!
//! The SSE heartbeat stays at its default (15 s), longer than [`common::EVENT_DEADLINE`]: a
//! stream also reads its mailbox again at each heartbeat, which would otherwise hide a lost
//! wake-up.

#[macro_use]
mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::deaf_subscribers::DeafSubscribers;
use common::eventually::eventually;
use common::instance::Instance;
use common::redis::Redis;
use common::{answer, external, Answer, Peer, Server, EVENT_DEADLINE};
use eventsource_stream::{Event, Eventsource};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use serde_json::{json, Value};

/// What "promptly" means for a wake-up that crosses instances through Redis: far below the
/// heartbeat and a long-poll's `wait`, far above a loaded machine's scheduling delays.
const PROMPT: Duration = Duration::from_secs(2);

/// What "at once" means for a request that fails because Redis is down: under the store's own
/// 2 s response timeout, so an answer within it did not wait for that timeout.
const AT_ONCE: Duration = Duration::from_millis(1000);

/// A Redis of the test's own and instances on it sharing one prefix.
struct Cluster {
    /// `None` while stopped. A `Mutex` so that tests can stop and restart it while they hold
    /// their instances; never held across `.await`.
    redis: std::sync::Mutex<Option<Redis>>,
    /// Redis's port, kept across restarts: the instances were configured with it.
    port: u16,
    instances: Vec<Server>,
    prefix: String,
}

impl Cluster {
    /// `count` in-process instances with `settings` over the defaults (the test fails when
    /// redis-server is missing: `external::can_run`).
    async fn start(test: &str, count: usize, settings: Value) -> Option<Cluster> {
        if !external::can_run(test, Redis::available()) {
            return None;
        }
        let redis = Redis::start();
        let prefix = format!("cluster-{}", uuid::Uuid::new_v4().simple());
        let mut instances = Vec::new();
        for _ in 0..count {
            instances.push(Server::with(shared(&redis, &prefix, &settings)).await);
        }
        Some(Cluster {
            port: redis.port,
            redis: std::sync::Mutex::new(Some(redis)),
            instances,
            prefix,
        })
    }

    /// `redis-cli` on the cluster's Redis.
    fn cli(&self, args: &[&str]) -> String {
        let redis = self.redis.lock().unwrap();
        redis.as_ref().expect("Redis is running").cli(args)
    }

    /// Kills Redis (SIGKILL): everything it held is lost.
    fn kill_redis(&self) {
        let redis = self.redis.lock().unwrap().take();
        redis.expect("Redis is running").kill();
    }

    /// Starts an empty Redis on the port the instances were configured with.
    fn restart_redis(&self) {
        *self.redis.lock().unwrap() = Some(Redis::start_on(self.port));
    }

    /// Waits until `count` instances hold their wake-up (pub/sub) connection. Redis counts a
    /// connection as pub/sub (for `CLIENT LIST` and `CLIENT KILL TYPE pubsub`) only while it
    /// has a subscription: each instance needs a reader for this.
    async fn until_wakeup_connections(&self, count: usize) {
        eventually("every instance holds a wake-up connection", || {
            let found = self
                .cli(&["CLIENT", "LIST", "TYPE", "pubsub"])
                .lines()
                .count();
            async move { found == count }
        })
        .await;
    }

    /// Instance `index`.
    fn at(&self, index: usize) -> &Server {
        &self.instances[index]
    }

    /// `sample` summed over every instance.
    async fn metric_sum(&self, sample: &str) -> f64 {
        let mut sum = 0.0;
        for server in &self.instances {
            sum += metric(server, sample).await;
        }
        sum
    }

    /// The channel that wakes `peer`'s readers (`src/store/redis/keys.rs`, `Keys::wake`).
    fn wake_channel(&self, peer: &Peer) -> String {
        format!("{}:{{{}}}:w:{}", self.prefix, peer.room, peer.id)
    }

    /// Waits until `subscribers` instances subscribe to `peer`'s wake-ups: its stream or poll
    /// has subscribed (and reads next), so what is sent from now on must wake it.
    async fn until_subscribed(&self, peer: &Peer, subscribers: usize) {
        let channel = self.wake_channel(peer);
        let expected = format!("{channel}\n{subscribers}");
        eventually("the reader subscribed to its wake-ups", || {
            let subscribed = self.cli(&["PUBSUB", "NUMSUB", &channel]) == expected;
            async move { subscribed }
        })
        .await;
    }
}

/// `settings` plus the shared Redis and prefix.
fn shared(redis: &Redis, prefix: &str, settings: &Value) -> Value {
    let mut settings = settings.clone();
    settings["redis_url"] = json!(redis.url());
    settings["redis_prefix"] = json!(prefix);
    settings
}

/// Waits until `server` has completed `more` presence sweeps after now: every peer that was
/// due by now has been looked at since.
async fn until_more_sweeps(server: &Server, more: u32) {
    const SWEEPS: &str = "signpost_presence_sweeps_total";
    let target = metric(server, SWEEPS).await + f64::from(more);
    eventually("more presence sweeps", || async {
        metric(server, SWEEPS).await >= target
    })
    .await;
}

/// The value of one sample of `server`'s `/metrics` (0 when absent).
async fn metric(server: &Server, sample: &str) -> f64 {
    server.metric(sample).await
}

/// `peer` as a client of `server`: the same peer, reached through another instance.
fn via(peer: &Peer, server: &Server) -> Peer {
    Peer {
        base: server.base.clone(),
        client: server.client.clone(),
        ..peer.clone()
    }
}

/// A message `from` sent to its recipient, as the recipient sees it: `(id, from, data)`.
fn seen(message: &Value) -> (u64, &str, &Value) {
    (
        message["id"].as_u64().expect("an id"),
        message["from"].as_str().unwrap_or(""),
        &message["data"],
    )
}

/// 1. A stream on instance A receives what is posted on instance B: ids gapless from 1 and
///    `from` set by the server to the sender, whichever instance either used.
#[cfg_attr(
    signpost_missing = "redis",
    ignore = "needs redis-server: apt-get install redis-server (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_on_one_instance_receives_what_is_posted_on_another() {
    let Some(cluster) = Cluster::start("cross_instance_sse", 3, json!({})).await else {
        return;
    };
    let alice = cluster.at(0).join("across", "alice").await;
    let mut alice_events = alice.events(None).await;
    let bob = cluster.at(1).join("across", "bob").await;
    let carol = cluster.at(2).join("across", "carol").await;

    let join = alice_events.next_message().await;
    assert_eq!(
        (join["id"].as_u64(), join["type"].as_str()),
        (Some(1), Some("join"))
    );
    assert_eq!(join["data"]["peer_id"], bob.id);
    let join = alice_events.next_message().await;
    assert_eq!(join["id"], 2);
    assert_eq!(join["data"]["peer_id"], carol.id);

    for n in 0..5 {
        let (sender, instance) = if n % 2 == 0 { (&bob, 1) } else { (&carol, 2) };
        sender
            .send_ok(json!({"type": "offer", "to": alice.id, "data": n}))
            .await;
        let sent = Instant::now();
        let message = alice_events.next_message().await;
        assert!(
            sent.elapsed() < PROMPT,
            "delivered after {:?}",
            sent.elapsed()
        );
        assert_eq!(
            seen(&message),
            (n + 3, sender.id.as_str(), &json!(n)),
            "message {n}, sent through instance {instance}"
        );
    }
}

/// 2. A long-poll waiting on instance A answers promptly when a message for it is posted on
///    instance B: the wake-up crosses instances, well before the poll's `wait`.
#[cfg_attr(
    signpost_missing = "redis",
    ignore = "needs redis-server: apt-get install redis-server (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_on_one_instance_wakes_for_a_send_on_another() {
    let Some(cluster) = Cluster::start("cross_instance_poll", 2, json!({})).await else {
        return;
    };
    let alice = cluster.at(0).join("poll-across", "alice").await;
    let bob = cluster.at(1).join("poll-across", "bob").await;

    let poll = tokio::spawn({
        let alice = alice.clone();
        async move {
            let result = alice.poll(1, 20.0).await; // id 1 is Bob's join
            (result, Instant::now())
        }
    });
    cluster.until_subscribed(&alice, 1).await;

    bob.send_ok(json!({"type": "offer", "to": alice.id, "data": "hi"}))
        .await;
    let sent = Instant::now();
    let ((status, body), answered) = poll.await.unwrap();
    assert_eq!(status, 200);
    let took = answered.saturating_duration_since(sent);
    assert!(took < PROMPT, "the poll answered {took:?} after the send");
    let messages = body["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1, "{body}");
    assert_eq!(seen(&messages[0]), (2, bob.id.as_str(), &json!("hi")));
    assert_eq!(body["last_id"], 2);
}

/// Joins `room` through `server` without asserting the outcome: the status and error code.
async fn try_join(server: &Server, room: &str, name: &str) -> (u16, String) {
    let response = server
        .client
        .post(server.url(&format!("/api/rooms/{room}/peers")))
        .json(&json!({ "name": name }))
        .send()
        .await
        .expect("join request");
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (status, body["error"].as_str().unwrap_or("").to_owned())
}

/// Counts the outcomes of 20 joins, run at once, alternately through the two instances;
/// `room(i)` names the room of join `i`.
async fn concurrent_joins(
    cluster: &Cluster,
    room: impl Fn(usize) -> String,
) -> HashMap<(u16, String), usize> {
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let server = cluster.at(i % 2);
            let (url, client) = (
                server.url(&format!("/api/rooms/{}/peers", room(i))),
                server.client.clone(),
            );
            tokio::spawn(async move {
                let response = client
                    .post(url)
                    .json(&json!({ "name": format!("peer-{i}") }))
                    .send()
                    .await
                    .expect("join request");
                let status = response.status().as_u16();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                (status, body["error"].as_str().unwrap_or("").to_owned())
            })
        })
        .collect();
    let mut outcomes = HashMap::new();
    for task in tasks {
        *outcomes.entry(task.await.unwrap()).or_insert(0) += 1;
    }
    outcomes
}

/// 3. `max_peers_per_room` and `max_rooms` hold exactly across instances: of 20 joins at once,
///    split over two instances, exactly the limit succeed and every other is a `409`.
#[cfg_attr(
    signpost_missing = "redis",
    ignore = "needs redis-server: apt-get install redis-server (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_joins_on_two_instances_honour_the_limits_exactly() {
    let Some(cluster) = Cluster::start(
        "cluster_limits",
        2,
        json!({"max_peers_per_room": 5, "max_rooms": 3}),
    )
    .await
    else {
        return;
    };

    let outcomes = concurrent_joins(&cluster, |_| "crowded".to_owned()).await;
    assert_eq!(
        outcomes,
        HashMap::from([
            ((201, String::new()), 5),
            ((409, "room_full".to_owned()), 15)
        ])
    );
    let (status, room) = cluster.at(1).get_json("/api/rooms/crowded").await;
    assert_eq!(status, 200);
    assert_eq!(room["peers"].as_array().map(Vec::len), Some(5), "{room}");

    // "crowded" is one of the 3 rooms: 2 more may be created, by whichever instance.
    let outcomes = concurrent_joins(&cluster, |i| format!("room-{i}")).await;
    assert_eq!(
        outcomes,
        HashMap::from([
            ((201, String::new()), 2),
            ((409, "too_many_rooms".to_owned()), 18)
        ])
    );
    assert_eq!(
        try_join(cluster.at(0), "crowded", "late").await,
        (409, "room_full".to_owned()),
        "an existing room is not refused for max_rooms"
    );
    assert_eq!(metric(cluster.at(0), "signpost_rooms").await, 3.0);
}

/// 3b. The join rate is one bucket per address across instances: joins from one address,
///     alternately through two instances, are held to one `join_burst`, not one per instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_join_rate_is_one_bucket_across_instances() {
    let Some(cluster) = Cluster::start(
        "cluster_join_rate",
        2,
        json!({"join_burst": 4.0, "join_rate_per_sec": 0.01}),
    )
    .await
    else {
        return;
    };
    for n in 0..4 {
        assert_eq!(try_join(cluster.at(n % 2), "rate", "p").await.0, 201);
    }
    for instance in 0..2 {
        assert_eq!(
            try_join(cluster.at(instance), "rate", "p").await,
            (429, "too_many_joins".to_owned()),
            "instance {instance}"
        );
    }
}

/// 3c. `max_peers_per_client` and `max_rooms_per_client` count an address's peers and rooms on
///     every instance together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_address_limits_count_every_instance() {
    let Some(cluster) = Cluster::start(
        "cluster_address_limits",
        2,
        json!({"max_peers_per_client": 3, "max_rooms_per_client": 2}),
    )
    .await
    else {
        return;
    };
    let (a, b) = (cluster.at(0), cluster.at(1));
    assert_eq!(try_join(a, "one", "p").await.0, 201);
    assert_eq!(try_join(b, "two", "p").await.0, 201);
    assert_eq!(
        try_join(a, "three", "p").await,
        (429, "too_many_rooms_for_client".to_owned())
    );
    assert_eq!(try_join(a, "two", "p").await.0, 201, "a room it is in");
    assert_eq!(
        try_join(b, "one", "p").await,
        (429, "too_many_peers_for_client".to_owned())
    );
}

/// 4. With three instances sweeping, a silent peer is removed once: the room hears exactly one
///    `leave` with reason `timeout`, and the instances count one such departure between them.
#[cfg_attr(
    signpost_missing = "redis",
    ignore = "needs redis-server: apt-get install redis-server (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_sweeping_instances_time_a_silent_peer_out_once() {
    let Some(cluster) = Cluster::start("cluster_sweep", 3, json!({"peer_timeout_secs": 1.0})).await
    else {
        return;
    };
    let alice = cluster.at(0).join("sweep", "alice").await;
    let mut alice_events = alice.events(None).await;
    let bob = cluster.at(1).join("sweep", "bob").await; // and never listens
    let carol = cluster.at(2).join("sweep", "carol").await;
    let mut carol_events = carol.events(None).await;

    assert_eq!(alice_events.next_message().await["data"]["peer_id"], bob.id);
    assert_eq!(
        alice_events.next_message().await["data"]["peer_id"],
        carol.id
    );
    let leave = alice_events.next_message().await;
    assert_eq!(leave["type"], "leave");
    assert_eq!(
        leave["data"],
        json!({"peer_id": bob.id, "reason": "timeout"})
    );

    // Every instance sweeps every quarter second: wait until each has completed three more
    // sweeps (so at least two that started after Bob was gone), then check that nothing came
    // before a marker sent after them.
    eventually("the departure was counted", || async {
        cluster
            .metric_sum("signpost_peers_left_total{reason=\"timeout\"}")
            .await
            >= 1.0
    })
    .await;
    for index in 0..cluster.instances.len() {
        until_more_sweeps(cluster.at(index), 3).await;
    }
    carol
        .send_ok(json!({"type": "marker", "to": alice.id}))
        .await;
    let next = alice_events.next_message().await;
    assert_eq!(
        (next["type"].as_str(), next["id"].as_u64()),
        (Some("marker"), Some(leave["id"].as_u64().unwrap() + 1)),
        "no second leave: {next}"
    );
    let carol_leave = carol_events.next_message().await;
    assert_eq!(
        carol_leave["data"],
        json!({"peer_id": bob.id, "reason": "timeout"})
    );
    assert_eq!(
        cluster
            .metric_sum("signpost_peers_left_total{reason=\"timeout\"}")
            .await,
        1.0
    );
    let (status, room) = cluster.at(2).get_json("/api/rooms/sweep").await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = room["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["peer_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [alice.id.as_str(), carol.id.as_str()]);
}

/// The real binary, on the cluster's Redis and prefix, with `settings` added to its table.
fn start_instance(cluster: &Cluster, settings: &str) -> Instance {
    Instance::start(&format!(
        "redis_url=\"redis://127.0.0.1:{}\",redis_prefix=\"{}\",log_level=\"info\",{settings}",
        cluster.port, cluster.prefix
    ))
}

/// An SSE stream that may be cut (its instance killed): an error is its end.
struct CutStream {
    stream: BoxStream<'static, Result<Event, eventsource_stream::EventStreamError<reqwest::Error>>>,
}

impl CutStream {
    async fn open(peer: &Peer) -> CutStream {
        let response = peer.events_response(None).await;
        assert_eq!(response.status(), 200);
        let mut stream = CutStream {
            stream: response.bytes_stream().eventsource().boxed(),
        };
        assert_eq!(stream.next().await.map(|e| e.event), Some("ready".into()));
        stream
    }

    /// The next event, or `None` once the stream ended or was cut.
    async fn next(&mut self) -> Option<Event> {
        match tokio::time::timeout(EVENT_DEADLINE, self.stream.next()).await {
            Ok(Some(Ok(event))) => Some(event),
            Ok(Some(Err(_)) | None) => None,
            Err(_) => panic!("no event within {EVENT_DEADLINE:?}"),
        }
    }
}

/// 5. An instance SIGKILLed: its stream's client reconnects to another instance with
///    `Last-Event-ID` and resumes with nothing lost (messages sent while it was disconnected
///    included) and nothing repeated; and the peers whose streams it held, which never come
///    back, are timed out by the survivor.
#[cfg_attr(
    signpost_missing = "redis",
    ignore = "needs redis-server: apt-get install redis-server (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instances_clients_resume_elsewhere_and_its_silent_peers_time_out() {
    let Some(cluster) =
        Cluster::start("cluster_sigkill", 1, json!({"peer_timeout_secs": 2.0})).await
    else {
        return;
    };
    let survivor = cluster.at(0);
    let mut doomed = start_instance(&cluster, "peer_timeout_secs=2.0");
    let doomed_client = reqwest::Client::new();
    let on_doomed = |peer: &Peer| Peer {
        base: doomed.base.clone(),
        client: doomed_client.clone(),
        ..peer.clone()
    };

    let alice = on_doomed(&survivor.join("crash", "alice").await);
    let bob = survivor.join("crash", "bob").await;
    let carol = on_doomed(&survivor.join("crash", "carol").await);
    let mut alice_stream = CutStream::open(&alice).await;
    // Held open: Carol listens on the instance that will die, and only there.
    let _carol_stream = CutStream::open(&carol).await;
    let mut bob_events = bob.events(None).await;
    assert_eq!(bob_events.next_message().await["data"]["peer_id"], carol.id);

    let mut last_seen = 0;
    let mut delivered = Vec::new();
    for n in 0..2 {
        bob.send_ok(json!({"type": "offer", "to": alice.id, "data": n}))
            .await;
    }
    while delivered.len() < 4 {
        let event = alice_stream
            .next()
            .await
            .expect("delivered before the crash");
        last_seen = event.id.parse().unwrap();
        delivered.push((last_seen, event.event, event.data));
    }
    assert_eq!(last_seen, 4, "Bob's and Carol's joins, then two offers");

    doomed.kill();
    assert!(alice_stream.next().await.is_none(), "the stream is cut");
    for n in 2..5 {
        bob.send_ok(json!({"type": "offer", "to": alice.id, "data": n}))
            .await;
    }

    let alice = via(&alice, survivor);
    let mut resumed = alice.events(Some(last_seen)).await;
    for n in 2..5u64 {
        let message = resumed.next_message().await;
        assert_eq!(
            seen(&message),
            (n + 3, bob.id.as_str(), &json!(n)),
            "resumed after id {last_seen}: nothing lost, nothing repeated"
        );
    }

    // Carol's stream died with its instance, and no instance listens for her any more.
    for events in [&mut resumed, &mut bob_events] {
        let leave = events.next_message().await;
        assert_eq!(leave["type"], "leave");
        assert_eq!(
            leave["data"],
            json!({"peer_id": carol.id, "reason": "timeout"})
        );
    }
    // The sweeper counts the departure when its script answers, which can be after the woken
    // streams have written the leave: wait for the count, then for two more sweeps, and check
    // that it is still one.
    let timeouts = "signpost_peers_left_total{reason=\"timeout\"}";
    eventually("the departure was counted", || async {
        metric(survivor, timeouts).await >= 1.0
    })
    .await;
    until_more_sweeps(survivor, 2).await;
    assert_eq!(metric(survivor, timeouts).await, 1.0);
}

/// 6. One live stream per peer across the cluster: a new stream on instance B ends the old one
///    on instance A at once, and the new one gets what follows.
#[cfg_attr(
    signpost_missing = "redis",
    ignore = "needs redis-server: apt-get install redis-server (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_stream_on_one_instance_ends_the_old_one_on_another() {
    let Some(cluster) = Cluster::start("cluster_one_stream", 2, json!({})).await else {
        return;
    };
    let alice = cluster.at(0).join("single", "alice").await;
    let bob = cluster.at(1).join("single", "bob").await;
    let mut old = alice.events(None).await;
    assert_eq!(old.next_message().await["data"]["peer_id"], bob.id);

    let mut new = via(&alice, cluster.at(1)).events(Some(1)).await;
    let opened = Instant::now();
    assert!(old.ends().await, "the old stream ends");
    assert!(
        opened.elapsed() < PROMPT,
        "ended after {:?}",
        opened.elapsed()
    );

    bob.send_ok(json!({"type": "offer", "to": alice.id, "data": 1}))
        .await;
    assert_eq!(
        seen(&new.next_message().await),
        (2, bob.id.as_str(), &json!(1))
    );
}

/// 7. The per-peer send rate is one bucket across the cluster: with `send_burst = 10`, sending
///    alternately through two instances, the 11th message is refused with `429`.
#[cfg_attr(
    signpost_missing = "redis",
    ignore = "needs redis-server: apt-get install redis-server (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_send_rate_is_one_bucket_across_instances() {
    let Some(cluster) = Cluster::start(
        "cluster_rate",
        2,
        json!({"send_burst": 10.0, "send_rate_per_sec": 0.01}),
    )
    .await
    else {
        return;
    };
    let alice = cluster.at(0).join("rate", "alice").await;
    let bob = cluster.at(1).join("rate", "bob").await;
    let through = [alice.clone(), via(&alice, cluster.at(1))];

    for n in 0..10 {
        through[n % 2]
            .send_ok(json!({"type": "candidate", "to": bob.id, "data": n}))
            .await;
    }
    for instance in &through {
        let refused = answer(
            instance
                .client
                .post(instance.url("/api/rooms/rate/messages"))
                .bearer_auth(&instance.token)
                .json(&json!({"type": "candidate", "to": bob.id})),
        )
        .await;
        assert_eq!(refused.status, 429);
        assert_eq!(refused.body["error"], "rate_limited");
        assert!(refused.retry_after.is_some(), "Retry-After is set");
    }
    let (_, inbox) = bob.poll(0, 0.0).await;
    assert_eq!(inbox["messages"].as_array().unwrap().len(), 10);
}

/// Asserts that `answer` is the immediate `503 store_unavailable` of an unreachable store.
fn assert_unavailable(what: &str, answer: &Answer) {
    assert_eq!(answer.status, 503, "{what}: {}", answer.body);
    assert_eq!(answer.body["error"], "store_unavailable", "{what}");
    assert!(answer.body["message"].is_string(), "{what}");
    assert_eq!(
        answer.retry_after.as_deref(),
        Some("1"),
        "{what}: Retry-After"
    );
    assert!(answer.took < AT_ONCE, "{what} took {:?}", answer.took);
}

/// 8. Redis stopped: every request that needs it answers at once with `503 store_unavailable`
///    and `Retry-After`, open streams and polls end, `/readyz` says 503 while `/healthz` stays
///    200; Redis back on the same port, service resumes by itself, wake-ups included.
#[cfg_attr(
    signpost_missing = "redis",
    ignore = "needs redis-server: apt-get install redis-server (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_fails_fast_and_service_resumes_when_it_returns() {
    let Some(cluster) = Cluster::start("cluster_redis_down", 2, json!({})).await else {
        return;
    };
    let (a, b) = (cluster.at(0), cluster.at(1));
    let alice = a.join("outage", "alice").await;
    let bob = b.join("outage", "bob").await;
    let mut alice_events = alice.events(None).await;
    assert_eq!(alice_events.next_message().await["data"]["peer_id"], bob.id);
    let poll = tokio::spawn({
        let bob = bob.clone();
        async move { bob.poll(0, 20.0).await }
    });
    cluster.until_subscribed(&bob, 1).await;

    cluster.kill_redis();
    let killed = Instant::now();

    assert!(alice_events.ends().await, "the open stream ends");
    let (status, body) = poll.await.unwrap();
    assert_eq!((status, &body["error"]), (503, &json!("store_unavailable")));
    assert!(
        killed.elapsed() < PROMPT,
        "stream and poll ended after {:?}",
        killed.elapsed()
    );

    let requests = [
        (
            "join",
            a.client
                .post(a.url("/api/rooms/outage/peers"))
                .json(&json!({})),
        ),
        (
            "send",
            b.client
                .post(b.url("/api/rooms/outage/messages"))
                .bearer_auth(&bob.token)
                .json(&json!({"type": "offer", "to": alice.id})),
        ),
        ("room", a.client.get(a.url("/api/rooms/outage"))),
        (
            "peer",
            b.client
                .get(b.url(&format!("/api/rooms/outage/peers/{}", alice.id))),
        ),
        (
            "leave",
            a.client
                .delete(a.url(&alice.peer_path()))
                .bearer_auth(&alice.token),
        ),
        (
            "events",
            b.client
                .get(b.url(&format!("{}/events", alice.peer_path())))
                .bearer_auth(&alice.token),
        ),
        (
            "poll",
            a.client
                .get(a.url(&format!("{}/messages?after=0&wait=20", bob.peer_path())))
                .bearer_auth(&bob.token),
        ),
        ("readyz", a.client.get(a.url("/readyz"))),
    ];
    for (what, request) in requests {
        assert_unavailable(what, &answer(request).await);
    }
    for server in [a, b] {
        let health = answer(server.client.get(server.url("/healthz"))).await;
        assert_eq!(health.status, 200);
        assert_eq!(health.body["store_status"], "unavailable");
        assert!(health.took < AT_ONCE, "healthz took {:?}", health.took);
    }

    cluster.restart_redis();
    for server in [a, b] {
        eventually("the instance is ready again", || async {
            server.get_json("/readyz").await.0 == 200
        })
        .await;
        let (_, health) = server.get_json("/healthz").await;
        assert_eq!(health["store_status"], "ok");
    }
    // Redis came back empty: the room starts again, and wake-ups cross instances again.
    let carol = a.join("after-outage", "carol").await;
    let dave = b.join("after-outage", "dave").await;
    let mut carol_events = carol.events(Some(1)).await;
    dave.send_ok(json!({"type": "offer", "to": carol.id, "data": "back"}))
        .await;
    let sent = Instant::now();
    assert_eq!(
        seen(&carol_events.next_message().await),
        (2, dave.id.as_str(), &json!("back"))
    );
    assert!(sent.elapsed() < PROMPT, "woken after {:?}", sent.elapsed());
}

/// 9. Redis restarted empty: existing clients are told their room or their peer is gone, and
///    never get a silent gap or an id again.
#[cfg_attr(
    signpost_missing = "redis",
    ignore = "needs redis-server: apt-get install redis-server (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_tells_clients_they_are_gone() {
    let Some(cluster) = Cluster::start("cluster_redis_empty", 2, json!({})).await else {
        return;
    };
    let (a, b) = (cluster.at(0), cluster.at(1));
    let alice = a.join("amnesia", "alice").await;
    let bob = b.join("amnesia", "bob").await;
    let mut alice_events = alice.events(None).await;
    bob.send_ok(json!({"type": "offer", "to": alice.id, "data": 1}))
        .await;
    assert_eq!(alice_events.next_message().await["id"], 1);
    assert_eq!(
        seen(&alice_events.next_message().await),
        (2, bob.id.as_str(), &json!(1))
    );

    cluster.kill_redis();
    cluster.restart_redis();

    // Whatever the stream says before it ends, it is never a message: ids 1 and 2 are taken.
    while let Some(event) = alice_events.try_next().await {
        assert!(
            event.id.is_empty() && event.event == "reset",
            "after the restart the stream only ends (or resets): {event:?}"
        );
    }
    for server in [a, b] {
        eventually("the instance is ready again", || async {
            server.get_json("/readyz").await.0 == 200
        })
        .await;
    }

    let resume = answer(
        b.client
            .get(b.url(&format!("{}/events", alice.peer_path())))
            .bearer_auth(&alice.token)
            .header("Last-Event-ID", "2"),
    )
    .await;
    assert_eq!(
        (resume.status, &resume.body["error"]),
        (404, &json!("room_not_found"))
    );
    let send = answer(
        a.client
            .post(a.url("/api/rooms/amnesia/messages"))
            .bearer_auth(&bob.token)
            .json(&json!({"type": "offer", "to": alice.id})),
    )
    .await;
    assert_eq!(
        (send.status, &send.body["error"]),
        (404, &json!("room_not_found"))
    );
    let (status, body) = via(&alice, b).poll(2, 0.0).await;
    assert_eq!((status, &body["error"]), (404, &json!("room_not_found")));

    // Someone creates the room again: the old peers are still gone from it.
    let carol = a.join("amnesia", "carol").await;
    assert!(carol.joined["peers"].as_array().unwrap().is_empty());
    let resume = answer(
        a.client
            .get(a.url(&format!("{}/events", alice.peer_path())))
            .bearer_auth(&alice.token)
            .header("Last-Event-ID", "2"),
    )
    .await;
    assert_eq!(
        (resume.status, &resume.body["error"]),
        (404, &json!("peer_not_found"))
    );
    let (status, body) = via(&bob, a).poll(0, 0.0).await;
    assert_eq!((status, &body["error"]), (404, &json!("peer_not_found")));
}

/// 9b. Redis emptied while it stays up (what a failover to an empty replica looks like:
///     `FLUSHALL`, `SCRIPT FLUSH`, `FUNCTION FLUSH`, every connection dropped): a stream and a poll that were
///     reading find their mailbox gone and end, told their peer is gone, rather than wait in an
///     empty mailbox or start again from id 1.
#[cfg_attr(
    signpost_missing = "redis",
    ignore = "needs redis-server: apt-get install redis-server (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_emptied_under_open_readers_ends_them() {
    let Some(cluster) = Cluster::start("cluster_redis_flushed", 2, json!({})).await else {
        return;
    };
    let (a, b) = (cluster.at(0), cluster.at(1));
    let alice = a.join("flushed", "alice").await;
    let bob = b.join("flushed", "bob").await;
    let mut alice_events = alice.events(None).await;
    assert_eq!(alice_events.next_message().await["id"], 1);
    let poll = tokio::spawn({
        let bob = bob.clone();
        async move { bob.poll(0, 20.0).await }
    });
    cluster.until_subscribed(&bob, 1).await;

    cluster.cli(&["FLUSHALL"]);
    cluster.cli(&["SCRIPT", "FLUSH"]);
    cluster.cli(&["FUNCTION", "FLUSH"]);
    cluster.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    cluster.cli(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"]);

    while let Some(event) = alice_events.try_next().await {
        assert!(
            event.id.is_empty() && event.event == "reset",
            "after the flush the stream only ends (or resets): {event:?}"
        );
    }
    // The waiting poll is woken by the lost subscription and reads again: it learns that its
    // peer is gone. Or, if its instance has not reconnected to Redis yet, it learns that the
    // store is unavailable for the moment; asking again, as a client does, is a new request,
    // which finds no room at all (as the resume below does).
    let (status, body) = poll.await.unwrap();
    eventually("the instance is ready again", || async {
        b.get_json("/readyz").await.0 == 200
    })
    .await;
    if status == 503 {
        assert_eq!(body["error"], "store_unavailable", "{body}");
        let (status, body) = bob.poll(0, 0.0).await;
        assert_eq!(
            (status, &body["error"]),
            (404, &json!("room_not_found")),
            "{body}"
        );
    } else {
        assert_eq!(
            (status, &body["error"]),
            (404, &json!("peer_not_found")),
            "{body}"
        );
    }
    let resume = answer(
        b.client
            .get(b.url(&format!("{}/events", alice.peer_path())))
            .bearer_auth(&alice.token)
            .header("Last-Event-ID", "1"),
    )
    .await;
    assert_eq!(
        (resume.status, &resume.body["error"]),
        (404, &json!("room_not_found"))
    );
}

/// 10. The instances' pub/sub connections killed (`CLIENT KILL TYPE pubsub`): no message is
///     lost, and a stream open across the kill is woken promptly for messages sent after it,
///     well within the heartbeat.
#[cfg_attr(
    signpost_missing = "redis",
    ignore = "needs redis-server: apt-get install redis-server (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_subscriptions_lose_nothing_and_wakeups_resume() {
    let Some(cluster) = Cluster::start("cluster_pubsub_kill", 2, json!({})).await else {
        return;
    };
    let alice = cluster.at(0).join("pubsub", "alice").await;
    let bob = cluster.at(1).join("pubsub", "bob").await;
    let mut alice_events = alice.events(Some(1)).await;
    let _bob_events = bob.events(None).await; // so that B's wake-up connection is killed too
    bob.send_ok(json!({"type": "offer", "to": alice.id, "data": 0}))
        .await;
    assert_eq!(
        seen(&alice_events.next_message().await),
        (2, bob.id.as_str(), &json!(0))
    );

    cluster.until_wakeup_connections(2).await;
    let killed = cluster.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert_eq!(killed, "2", "one wake-up connection per instance");
    // Sent while the instances reconnect: its wake-up may be lost, the message must not be.
    bob.send_ok(json!({"type": "offer", "to": alice.id, "data": 1}))
        .await;
    assert_eq!(
        seen(&alice_events.next_message().await),
        (3, bob.id.as_str(), &json!(1))
    );

    eventually("instance A subscribed again", || async {
        metric(cluster.at(0), "signpost_store_reconnects_total").await >= 1.0
    })
    .await;
    for n in 2..5 {
        bob.send_ok(json!({"type": "offer", "to": alice.id, "data": n}))
            .await;
        let sent = Instant::now();
        assert_eq!(
            seen(&alice_events.next_message().await),
            (n + 2, bob.id.as_str(), &json!(n))
        );
        assert!(sent.elapsed() < PROMPT, "woken after {:?}", sent.elapsed());
    }
}

/// 10b. The subscriber connection deaf (it stays up and answers its PINGs, but no publish
///      reaches it, as an old master's subscribers after a failover): a live stream and a
///      waiting poll read their mailbox again at each heartbeat, and get a message whose
///      wake-up was lost then, not never (the stream) or at the end of its `wait` with nothing
///      (the poll).
#[cfg_attr(
    signpost_missing = "redis",
    ignore = "needs redis-server: apt-get install redis-server (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_of_a_deaf_subscription_read_again_at_the_heartbeat() {
    if !external::can_run("cluster_deaf_subscription", Redis::available()) {
        return;
    }
    let redis = Redis::start();
    let relay = DeafSubscribers::start(redis.port).await;
    let prefix = format!("cluster-{}", uuid::Uuid::new_v4().simple());
    let settings = json!({"heartbeat_secs": 0.5});
    // The readers' instance reaches Redis through the relay. The sender is on another
    // instance: an instance wakes its own readers without Redis.
    let mut through_relay = shared(&redis, &prefix, &settings);
    through_relay["redis_url"] = json!(relay.url());
    let a = Server::with(through_relay).await;
    let b = Server::with(shared(&redis, &prefix, &settings)).await;
    let alice = a.join("silent", "alice").await;
    let carol = a.join("silent", "carol").await;
    let bob = b.join("silent", "bob").await;
    // Past carol's and bob's joins.
    let mut alice_events = alice.events(Some(2)).await;
    // Past bob's join, with no poll before it: a late wake-up of an earlier poll's open would
    // wake it too. It may wait `poll_max_wait_secs` (25 s), far longer than the heartbeat.
    let waiting = tokio::spawn({
        let carol = carol.clone();
        async move { carol.poll(1, 600.0).await }
    });
    eventually("carol's poll waits", || async {
        metric(&a, "signpost_polls_in_flight").await == 1.0
    })
    .await;

    relay.deafen();
    bob.send_ok(json!({"type": "offer", "data": "unannounced"}))
        .await;
    assert_eq!(
        seen(&alice_events.next_message().await),
        (3, bob.id.as_str(), &json!("unannounced"))
    );
    let (status, body) = waiting.await.expect("carol's poll");
    assert_eq!(status, 200, "{body}");
    let messages = body["messages"].as_array().expect("messages");
    assert_eq!(
        messages.iter().map(seen).collect::<Vec<_>>(),
        [(2, bob.id.as_str(), &json!("unannounced"))],
        "{body}"
    );
}

/// 11. Many senders on three instances at once, to one recipient: every message arrives once,
///     ids 1..N without a gap, and each sender's messages in the order it sent them.
#[cfg_attr(
    signpost_missing = "redis",
    ignore = "needs redis-server: apt-get install redis-server (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_on_three_instances_keep_order_and_ids() {
    const SENDERS: usize = 8;
    const PER_SENDER: u64 = 50;
    let Some(cluster) = Cluster::start(
        "cluster_concurrent_senders",
        3,
        json!({"send_rate_per_sec": 1e6, "send_burst": 1e6}),
    )
    .await
    else {
        return;
    };
    let receiver = cluster.at(0).join("many", "receiver").await;
    let mut events = receiver.events(None).await;
    let mut senders = Vec::new();
    for i in 0..SENDERS {
        senders.push(cluster.at(i % 3).join("many", &format!("sender-{i}")).await);
    }

    let tasks: Vec<_> = senders
        .iter()
        .enumerate()
        .map(|(i, sender)| {
            // Each sender moves from instance to instance as it sends.
            let through: Vec<Peer> = (0..3)
                .map(|k| via(sender, cluster.at((i + k) % 3)))
                .collect();
            let to = receiver.id.clone();
            tokio::spawn(async move {
                for seq in 0..PER_SENDER {
                    through[seq as usize % 3]
                        .send_ok(json!({"type": "seq", "to": to, "data": seq}))
                        .await;
                }
            })
        })
        .collect();

    let mut next_seq: HashMap<String, u64> = HashMap::new();
    let total = SENDERS as u64 * PER_SENDER + SENDERS as u64;
    for expected_id in 1..=total {
        let message = events.next_message().await;
        assert_eq!(message["id"], expected_id, "no gap and no duplicate");
        if message["type"] == "join" {
            continue;
        }
        let from = message["from"].as_str().unwrap().to_owned();
        let next = next_seq.entry(from).or_insert(0);
        assert_eq!(
            message["data"], *next,
            "a sender's messages arrive in the order it sent them"
        );
        *next += 1;
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(next_seq.len(), SENDERS);
    assert!(next_seq.values().all(|&n| n == PER_SENDER));
}

/// 12. `/metrics` of an instance on Redis counts its round trips to the store, and each
///     re-establishment of its wake-up connection after a pub/sub kill, once.
#[cfg_attr(
    signpost_missing = "redis",
    ignore = "needs redis-server: apt-get install redis-server (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_store_round_trips_and_reconnects() {
    let Some(cluster) = Cluster::start("cluster_metrics", 2, json!({})).await else {
        return;
    };
    let alice = cluster.at(0).join("counted", "alice").await;
    let _stream = alice.events(None).await;
    let bob = cluster.at(1).join("counted", "bob").await;
    let _bob_stream = bob.events(None).await;
    bob.send_ok(json!({"type": "offer", "to": alice.id})).await;
    for server in &cluster.instances {
        assert!(metric(server, "signpost_store_round_trips_total").await > 0.0);
        assert_eq!(metric(server, "signpost_store_reconnects_total").await, 0.0);
    }
    cluster.until_wakeup_connections(2).await;
    assert_eq!(cluster.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]), "2");
    eventually("both instances reconnected", || async {
        cluster.metric_sum("signpost_store_reconnects_total").await >= 2.0
    })
    .await;
    for server in &cluster.instances {
        assert_eq!(metric(server, "signpost_store_reconnects_total").await, 1.0);
    }
}

/// The wake-up connections as `CLIENT LIST TYPE pubsub` shows them: (client id, last command).
fn wakeup_connections(cluster: &Cluster) -> Vec<(String, String)> {
    let field = |line: &str, name: &str| {
        line.split(' ')
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
            .unwrap_or_default()
            .to_owned()
    };
    cluster
        .cli(&["CLIENT", "LIST", "TYPE", "pubsub"])
        .lines()
        .map(|line| (field(line, "id"), field(line, "cmd")))
        .collect()
}

/// 13. A healthy wake-up connection stays up: the periodic PING that checks it (every 5 s) is
///     answered, while readers are subscribed, with Redis's subscribed-mode reply, which must
///     not count as a failure (it did: every instance with a reader dropped and re-established
///     its connection every 5 s).
#[cfg_attr(
    signpost_missing = "redis",
    ignore = "needs redis-server: apt-get install redis-server (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_wakeup_connection_survives_its_ping() {
    let Some(cluster) = Cluster::start("cluster_ping", 2, json!({})).await else {
        return;
    };
    let alice = cluster.at(0).join("pinged", "alice").await;
    let bob = cluster.at(1).join("pinged", "bob").await;
    let mut alice_events = alice.events(Some(1)).await;
    let _bob_events = bob.events(None).await;
    cluster.until_wakeup_connections(2).await;
    let mut before: Vec<String> = wakeup_connections(&cluster)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    before.sort();

    eventually("both connections were checked with a PING", || {
        let pinged = wakeup_connections(&cluster)
            .iter()
            .filter(|(id, cmd)| before.contains(id) && cmd == "ping")
            .count();
        async move { pinged == 2 }
    })
    .await;
    // A round trip across the instances gives a connection that took the reply for a failure
    // ample time to drop.
    bob.send_ok(json!({"type": "offer", "to": alice.id, "data": 1}))
        .await;
    assert_eq!(
        seen(&alice_events.next_message().await),
        (2, bob.id.as_str(), &json!(1))
    );

    let mut after: Vec<String> = wakeup_connections(&cluster)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    after.sort();
    assert_eq!(after, before, "the same connections, still up");
    assert_eq!(
        cluster.metric_sum("signpost_store_reconnects_total").await,
        0.0
    );
}

/// A room reserved by an instance that never got to join it (it crashed, or lost Redis, between
/// the reservation and the join) does not count against `max_rooms` for good: the sweep finds
/// no room behind the reservation once the presence timeout has passed, and releases it.
#[cfg_attr(
    signpost_missing = "redis",
    ignore = "needs redis-server: apt-get install redis-server (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_whose_join_never_came_is_forgotten() {
    let settings = json!({"max_rooms": 1, "peer_timeout_secs": 1.0});
    let Some(cluster) = Cluster::start(
        "a_reservation_whose_join_never_came_is_forgotten",
        1,
        settings,
    )
    .await
    else {
        return;
    };
    // What an instance does first when it joins a new room, and then nothing more.
    let prefix = &cluster.prefix;
    let global = |name: &str| format!("{prefix}:{{{prefix}:global}}:{name}");
    let script = concat!(
        include_str!("../src/store/redis/lua/join_rate.lua"),
        include_str!("../src/store/redis/lua/reserve.lua")
    );
    let reserved = cluster.cli(&[
        "EVAL",
        script,
        "6",
        &global("rooms"),
        &global("due"),
        &global("clients"),
        &global("client-rooms"),
        &global("peer-count"),
        &global("join:"),
        "ghost",
        "1",
        "3600000",
        "1000",
        "",
        "1",
        "1",
        "20",
        "100",
    ]);
    assert!(reserved.starts_with("ok"), "{reserved}");
    let server = cluster.at(0);
    assert_eq!(
        try_join(server, "real", "alice").await,
        (409, "too_many_rooms".to_owned()),
        "the reservation counts while it may still become a room"
    );
    eventually("the orphaned reservation is released", || async {
        try_join(server, "real", "alice").await.0 == 201
    })
    .await;
}

/// `redis+unix://` works as `redis://` does: an instance on Redis's unix socket and one on its
/// TCP port, sharing a prefix, relay to each other.
#[cfg_attr(
    signpost_missing = "redis",
    ignore = "needs redis-server: apt-get install redis-server (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_on_the_unix_socket_shares_rooms_with_one_on_tcp() {
    if !external::can_run(
        "an_instance_on_the_unix_socket_shares_rooms_with_one_on_tcp",
        Redis::available(),
    ) {
        return;
    }
    let redis = Redis::start();
    let settings = |url: String| json!({"redis_url": url, "redis_prefix": "unix"});
    let over_tcp = Server::with(settings(redis.url())).await;
    let over_unix = Server::with(settings(redis.unix_url())).await;
    let alice = over_unix.join("sockets", "alice").await;
    let bob = over_tcp.join("sockets", "bob").await;
    let mut alice_events = alice.events(None).await;
    bob.send_ok(json!({"type": "offer", "to": alice.id, "data": 1}))
        .await;
    assert_eq!(alice_events.next_message().await["type"], "join");
    let offer = alice_events.next_message().await;
    assert_eq!(
        (offer["type"].as_str(), offer["from"].as_str()),
        (Some("offer"), Some(bob.id.as_str()))
    );
}

/// A message of `data_len` bytes of data from `from` to `to`, and its answer.
async fn send_sized(from: &Peer, to: &Peer, data_len: usize) -> Answer {
    answer(
        from.client
            .post(from.url(&format!("/api/rooms/{}/messages", from.room)))
            .bearer_auth(&from.token)
            .json(&json!({"type": "offer", "to": to.id, "data": "x".repeat(data_len)})),
    )
    .await
}

/// Sends messages of `data_len` bytes from `from` to `to` (who does not read) until one is
/// refused; returns how many were accepted and the refusal.
async fn send_until_refused(from: &Peer, to: &Peer, data_len: usize) -> (usize, Answer) {
    for accepted in 0..64 {
        let answer = send_sized(from, to, data_len).await;
        if answer.status != 202 {
            return (accepted, answer);
        }
    }
    panic!("64 messages were accepted: the held bytes are not bounded");
}

/// 16. `max_held_bytes` is one total for the whole deployment: bytes held in a room served by
///     instance A count when instance B is asked to hold more in a room of its own, which it
///     refuses whole with `503 server_full` and `Retry-After`; the recipient leaving (on A)
///     releases them, and B accepts again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_held_bytes_is_one_total_across_instances() {
    let settings = json!({"max_message_bytes": 1024, "max_held_bytes": 4096});
    let Some(cluster) = Cluster::start("cluster_server_full", 2, settings).await else {
        return;
    };
    let alice = cluster.at(0).join("held-one", "alice").await;
    let bob = cluster.at(0).join("held-one", "bob").await;
    let carol = cluster.at(1).join("held-two", "carol").await;
    let dave = cluster.at(1).join("held-two", "dave").await;

    let (accepted, refused) = send_until_refused(&alice, &bob, 700).await;
    assert!(
        accepted >= 3,
        "{accepted} accepted before the total was reached"
    );
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.body["error"], "server_full");
    assert_eq!(refused.retry_after.as_deref(), Some("1"));

    // The same size through the other instance, in another room: over the same total.
    let elsewhere = send_sized(&carol, &dave, 700).await;
    assert_eq!(elsewhere.status, 503, "{}", elsewhere.body);
    assert_eq!(elsewhere.body["error"], "server_full");
    assert_eq!(elsewhere.retry_after.as_deref(), Some("1"));

    assert_eq!(bob.leave().await, 204);
    let after_leave = send_sized(&carol, &dave, 700).await;
    assert_eq!(after_leave.status, 202, "{}", after_leave.body);
}

/// 17. `client_max_held_bytes` counts an address's bytes across the deployment: what peers of
///     one address made instance A hold counts when a peer of the same address sends through
///     instance B, in another room (`429 too_many_bytes_held`, `Retry-After`); the recipient
///     leaving releases them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bytes_held_for_an_address_are_counted_across_instances() {
    let settings = json!({"max_message_bytes": 1024, "client_max_held_bytes": 4096});
    let Some(cluster) = Cluster::start("cluster_client_held", 2, settings).await else {
        return;
    };
    let alice = cluster.at(0).join("address-one", "alice").await;
    let bob = cluster.at(0).join("address-one", "bob").await;
    let carol = cluster.at(1).join("address-two", "carol").await;
    let dave = cluster.at(1).join("address-two", "dave").await;

    let (accepted, refused) = send_until_refused(&alice, &bob, 700).await;
    assert!(
        accepted >= 3,
        "{accepted} accepted before the limit was reached"
    );
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert_eq!(refused.body["error"], "too_many_bytes_held");
    assert_eq!(refused.retry_after.as_deref(), Some("1"));

    let elsewhere = send_sized(&carol, &dave, 700).await;
    assert_eq!(elsewhere.status, 429, "{}", elsewhere.body);
    assert_eq!(elsewhere.body["error"], "too_many_bytes_held");

    assert_eq!(bob.leave().await, 204);
    let after_leave = send_sized(&carol, &dave, 700).await;
    assert_eq!(after_leave.status, 202, "{}", after_leave.body);
}

/// What the held-bytes hash counts and what the mailboxes of `prefix` hold, read in one step
/// (a script, so nothing moves in between): `(counted, held)`, each as sorted
/// `field=bytes` pairs, `*` being the total. Also checks that each mailbox's sizes list matches
/// its messages entry for entry.
fn held_accounts(cluster: &Cluster) -> (String, String) {
    const ACCOUNT: &str = r#"
local prefix = ARGV[1]
local held = {}
for _, key in ipairs(redis.call('KEYS', prefix .. ':{*}:m:*')) do
  local sizes_key = string.gsub(key, ':m:', ':s:')
  local values = redis.call('LRANGE', key, 0, -1)
  local sizes = redis.call('LRANGE', sizes_key, 0, -1)
  if #values ~= #sizes then return {'', 'sizes of ' .. key .. ' do not match its messages'} end
  for index, value in ipairs(values) do
    local size = #value - string.find(value, ' ', 1, true)
    local recorded, client = string.match(sizes[index], '^(%d+) (.*)$')
    if tonumber(recorded) ~= size then return {'', 'a wrong size in ' .. sizes_key} end
    held['*'] = (held['*'] or 0) + size
    if client ~= '' then held[client] = (held[client] or 0) + size end
  end
end
local function render(map)
  local pairs_ = {}
  for field, bytes in pairs(map) do table.insert(pairs_, field .. '=' .. bytes) end
  table.sort(pairs_)
  return table.concat(pairs_, ' ')
end
local counted = {}
local flat = redis.call('HGETALL', prefix .. ':{' .. prefix .. ':global}:held')
for index = 1, #flat, 2 do counted[flat[index]] = tonumber(flat[index + 1]) end
return {render(counted), render(held)}
"#;
    let reply = cluster.cli(&["EVAL", ACCOUNT, "0", &cluster.prefix]);
    let mut lines = reply.lines();
    let counted = lines.next().unwrap_or_default().to_owned();
    let held = lines.next().unwrap_or_default().to_owned();
    (counted, held)
}

/// 18. What the deployment counts as held is exactly what its mailboxes hold, through every way
///     bytes come and go: join announcements, broadcasts and targeted messages sent through two
///     instances, stream and poll reads whose acknowledgements trim replay windows (by bytes),
///     a recipient evicted past `mailbox_max_bytes` and a leave; once every peer is gone,
///     nothing is counted at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_held_bytes_counted_are_the_bytes_the_mailboxes_hold() {
    let settings = json!({
        "max_message_bytes": 1024,
        "mailbox_max_bytes": 4096,
        "replay_window_bytes": 2048,
    });
    let Some(cluster) = Cluster::start("cluster_held_accounts", 2, settings).await else {
        return;
    };
    let alice = cluster.at(0).join("accounts", "alice").await;
    let bob = cluster.at(1).join("accounts", "bob").await;
    let carol = cluster.at(1).join("accounts", "carol").await;
    let dave = cluster.at(0).join("accounts", "dave").await; // never reads
    let (counted, held) = held_accounts(&cluster);
    assert_eq!(counted, held, "after the joins");
    assert!(
        counted.starts_with("*="),
        "announcements count in the total: {counted}"
    );

    let mut bob_events = bob.events(None).await;
    for n in 0..12 {
        let message = json!({"type": "note", "data": format!("{n:0>400}")});
        let sender = if n % 2 == 0 { &alice } else { &carol };
        let sent = answer(
            sender
                .client
                .post(sender.url("/api/rooms/accounts/messages"))
                .bearer_auth(&sender.token)
                .json(&message),
        )
        .await;
        assert_eq!(sent.status, 202, "{}", sent.body);
    }
    // Dave's undelivered bytes went past mailbox_max_bytes: he was evicted.
    loop {
        let message = bob_events.next_message().await;
        if message["type"] == "leave" {
            assert_eq!(message["data"]["peer_id"], dave.id);
            assert_eq!(message["data"]["reason"], "evicted");
            break;
        }
    }
    let (_, carol_inbox) = carol.poll(0, 0.0).await;
    let carol_last = carol_inbox["last_id"].as_u64().expect("last_id");
    let (status, _) = carol.poll(carol_last, 0.0).await; // acknowledges what the first returned
    assert_eq!(status, 200);
    let (counted, held) = held_accounts(&cluster);
    assert_eq!(counted, held, "after sends, reads and an eviction");

    // Bob's replay window keeps at most replay_window_bytes of what he was delivered.
    let bob_list = format!("{}:{{accounts}}:m:{}", cluster.prefix, bob.id);
    eventually("bob's acknowledgement reached Redis", || {
        let kept = cluster.cli(&["LRANGE", &bob_list, "0", "-1"]);
        async move { !kept.is_empty() && kept.lines().count() <= 2048 / 400 }
    })
    .await;
    let (counted, held) = held_accounts(&cluster);
    assert_eq!(counted, held, "after the replay window was trimmed");
    drop(bob_events);

    assert_eq!(carol.leave().await, 204);
    let (counted, held) = held_accounts(&cluster);
    assert_eq!(counted, held, "after a leave");
    assert_eq!(alice.leave().await, 204);
    assert_eq!(bob.leave().await, 204);
    let (counted, held) = held_accounts(&cluster);
    assert_eq!(
        (counted.as_str(), held.as_str()),
        ("", ""),
        "nothing is held once all left"
    );
}

/// 19. One poll in flight per peer across the cluster: a poll waiting on instance A ends at once
///     when the same peer polls on instance B, answering no messages with `last_id` = its
///     `after`; the newer poll is the one that receives what is sent next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_poll_on_one_instance_ends_the_older_on_another() {
    let Some(cluster) = Cluster::start("cluster_one_poll", 2, json!({})).await else {
        return;
    };
    let alice = cluster.at(0).join("one-poll", "alice").await;
    let bob = cluster.at(1).join("one-poll", "bob").await;
    let older = tokio::spawn({
        let alice = alice.clone();
        async move { alice.poll(1, 25.0).await }
    });
    eventually("the older poll is waiting on A", || async {
        metric(cluster.at(0), "signpost_polls_in_flight").await == 1.0
    })
    .await;

    let newer = tokio::spawn({
        let alice = via(&alice, cluster.at(1));
        async move { alice.poll(1, 25.0).await }
    });
    let started = Instant::now();
    let (status, body) = older.await.expect("the older poll");
    assert!(
        started.elapsed() < PROMPT,
        "ended after {:?}",
        started.elapsed()
    );
    assert_eq!(status, 200);
    assert_eq!(body["messages"], json!([]));
    assert_eq!(body["last_id"], 1);
    assert_eq!(body["reset"], false);

    bob.send_ok(json!({"type": "offer", "to": alice.id, "data": "late"}))
        .await;
    let (status, body) = newer.await.expect("the newer poll");
    assert_eq!(status, 200);
    assert_eq!(
        seen(&body["messages"][0]),
        (2, bob.id.as_str(), &json!("late"))
    );
}

/// 20. A backlog in Redis is read in answers of at most `poll_max_bytes` (at least one message
///     each), with nothing skipped: polls through another instance than the sends' get every
///     message once, in order, each answer's `last_id` its last message's, and a stream
///     opened on the backlog gets all of it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_is_read_in_answers_bounded_in_bytes() {
    let settings = json!({"max_message_bytes": 1024, "poll_max_bytes": 2048});
    let Some(cluster) = Cluster::start("cluster_poll_bytes", 2, settings).await else {
        return;
    };
    let alice = cluster.at(0).join("backlog", "alice").await;
    let bob = cluster.at(0).join("backlog", "bob").await;
    for n in 0..12 {
        alice
            .send_ok(json!({"type": "offer", "to": bob.id, "data": format!("{n:0>600}")}))
            .await;
    }
    let bob_b = via(&bob, cluster.at(1));
    let mut after = 0;
    let mut received = Vec::new();
    while received.len() < 12 {
        let (status, body) = bob_b.poll(after, 0.0).await;
        assert_eq!(status, 200, "{body}");
        let messages = body["messages"].as_array().expect("messages");
        assert!(
            !messages.is_empty(),
            "an answer carries at least one message"
        );
        let bytes: usize = messages.iter().map(|m| m.to_string().len()).sum();
        assert!(
            messages.len() == 1 || bytes <= 2048,
            "{} messages, {bytes} bytes in one answer",
            messages.len()
        );
        for message in messages {
            let (id, from, data) = seen(message);
            assert_eq!((id, from), (received.len() as u64 + 1, alice.id.as_str()));
            received.push(data.clone());
        }
        assert_eq!(body["last_id"], received.len() as u64);
        after = received.len() as u64;
    }
    assert!(received.len() == 12 && received[11] == json!(format!("{:0>600}", 11)));

    let carol = cluster.at(0).join("backlog", "carol").await;
    for n in 0..12 {
        alice
            .send_ok(json!({"type": "offer", "to": carol.id, "data": format!("{n:0>600}")}))
            .await;
    }
    let mut events = via(&carol, cluster.at(1)).events(None).await;
    for n in 0..12 {
        let message = events.next_message().await;
        assert_eq!(
            seen(&message),
            (n + 1, alice.id.as_str(), &json!(format!("{n:0>600}")))
        );
    }
}

/// Every command Redis runs from now on, as `MONITOR` reports it, through a connection of its
/// own.
struct Monitor {
    connection: tokio::net::TcpStream,
    seen: String,
}

impl Monitor {
    async fn start(cluster: &Cluster) -> Monitor {
        use tokio::io::AsyncWriteExt;
        let mut connection = tokio::net::TcpStream::connect(("127.0.0.1", cluster.port))
            .await
            .expect("a connection to Redis");
        connection.write_all(b"MONITOR\r\n").await.expect("MONITOR");
        let mut monitor = Monitor {
            connection,
            seen: String::new(),
        };
        monitor.read_until("+OK\r\n").await;
        monitor.seen.clear();
        monitor
    }

    /// Reads what Redis reports until `text` is among it.
    async fn read_until(&mut self, text: &str) {
        use tokio::io::AsyncReadExt;
        let mut buffer = [0u8; 4096];
        while !self.seen.contains(text) {
            let read = tokio::time::timeout(EVENT_DEADLINE, self.connection.read(&mut buffer))
                .await
                .expect("MONITOR reports within the deadline")
                .expect("MONITOR's connection reads");
            assert!(read > 0, "MONITOR's connection closed");
            self.seen
                .push_str(&String::from_utf8_lossy(&buffer[..read]));
        }
    }

    /// The commands reported so far: every one Redis ran before this call.
    async fn commands(mut self, cluster: &Cluster) -> Vec<String> {
        let marker = format!("until-{}", uuid::Uuid::new_v4().simple());
        cluster.cli(&["ECHO", &marker]);
        self.read_until(&marker).await;
        self.seen.lines().map(str::to_owned).collect()
    }
}

/// How many of `commands` (as `MONITOR` reports them) call the room library's `function`.
fn function_calls(commands: &[String], function: &str) -> usize {
    let name = format!("_{function}\"");
    commands.iter().filter(|line| line.contains(&name)).count()
}

/// 21. A streamed message costs Redis one script call, the send's: its wake-up carries the
///     message, and the stream on another instance answers from it instead of reading its
///     mailbox (`src/store/redis/carried.rs`). Ids stay gapless and in order.
#[cfg_attr(
    signpost_missing = "redis",
    ignore = "needs redis-server: apt-get install redis-server (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_woken_stream_answers_from_its_wake_up_without_reading_redis() {
    let Some(cluster) = Cluster::start("cluster_carried", 2, json!({})).await else {
        return;
    };
    let alice = cluster.at(0).join("carried", "alice").await;
    let bob = cluster.at(0).join("carried", "bob").await;
    let mut events = via(&bob, cluster.at(1)).events(None).await;
    alice
        .send_ok(json!({"type": "offer", "to": bob.id, "data": 0}))
        .await;
    assert_eq!(
        seen(&events.next_message().await),
        (1, alice.id.as_str(), &json!(0))
    );

    let monitor = Monitor::start(&cluster).await;
    for n in 1..=10 {
        alice
            .send_ok(json!({"type": "candidate", "to": bob.id, "data": n}))
            .await;
        assert_eq!(
            seen(&events.next_message().await),
            (n + 1, alice.id.as_str(), &json!(n))
        );
    }
    let commands = monitor.commands(&cluster).await;
    let calls = |function: &str| function_calls(&commands, function);
    assert_eq!(calls("send"), 10, "{commands:#?}");
    assert_eq!(
        calls("read"),
        0,
        "the stream read its mailbox: {commands:#?}"
    );
}

/// 22. A poll answers what arrived since the previous poll's answer from that message's
///     wake-up, which its instance kept, instead of reading its mailbox: the open that makes it
///     the peer's poll found that message as the newest, so nothing was lost in between.
#[cfg_attr(
    signpost_missing = "redis",
    ignore = "needs redis-server: apt-get install redis-server (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_answers_what_arrived_between_polls_without_reading_redis() {
    const WAKE_UPS: &str = "signpost_store_wakeups_total";
    let Some(cluster) = Cluster::start("cluster_carried_poll", 2, json!({})).await else {
        return;
    };
    let alice = cluster.at(0).join("carried", "alice").await;
    let bob = cluster.at(0).join("carried", "bob").await;
    let bob_on_b = via(&bob, cluster.at(1));
    // B hears two wake-ups per round: a poll's open, and the message sent for the next poll.
    // Pub/sub keeps their order, so once B has counted all of them it has recorded the message.
    let base = metric(cluster.at(1), WAKE_UPS).await;
    let (status, body) = bob_on_b.poll(0, 0.0).await;
    assert_eq!((status, &body["last_id"]), (200, &json!(0)), "{body}");

    let monitor = Monitor::start(&cluster).await;
    for n in 1..=5u64 {
        // Sent while Bob has no poll in flight; B hears its wake-up before Bob polls again.
        alice
            .send_ok(json!({"type": "candidate", "to": bob.id, "data": n}))
            .await;
        eventually("instance B heard the message's wake-up", || async {
            metric(cluster.at(1), WAKE_UPS).await >= base + 2.0 * n as f64
        })
        .await;
        let (status, body) = bob_on_b.poll(n - 1, 0.0).await;
        assert_eq!(status, 200, "{body}");
        let messages = body["messages"].as_array().expect("messages");
        assert_eq!(messages.len(), 1, "{body}");
        assert_eq!(seen(&messages[0]), (n, alice.id.as_str(), &json!(n)));
    }
    let commands = monitor.commands(&cluster).await;
    let calls = |function: &str| function_calls(&commands, function);
    assert_eq!(calls("open"), 5, "{commands:#?}");
    assert_eq!(calls("read"), 0, "the poll read its mailbox: {commands:#?}");
}
