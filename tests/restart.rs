//! Calls survive their signaling server (issue 10): real Chromium pages, connected to each other,
//! while the real `signpost` binary is restarted under them with SIGTERM on the same port (a
//! routine deploy), or forgets one of them.
//!
//! The server runs with the default configuration (memory store, no secret), so a restart
//! forgets every room and peer: the pages must rejoin by themselves, keep their peer
//! connections, and recognise each other under their new peer ids (docs/PROTOCOL.md, section 7).
//!
//! Skipped with a printed reason when Chromium is missing, unless `CI=true`.

#[path = "common/browser.rs"]
#[allow(dead_code)]
mod chrome;
mod common;

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use chrome::{Chromium, Tab};
use common::eventually::poll_until;
use common::process::{ChildProcess, Watch};

/// How long a restarted server may take until both pages are in its room again (the issue's
/// target).
const BACK_WITHIN: Duration = Duration::from_secs(10);

/// The real server binary on a fixed port, so that it can be stopped and started again where
/// the pages expect it.
struct Signpost {
    port: u16,
    /// The `signpost` table given in `ROCKET_SIGNPOST` (empty: the defaults).
    settings: String,
    process: Option<ChildProcess>,
}

impl Signpost {
    /// Starts the server on a free port.
    fn start(settings: &str) -> Signpost {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let mut server = Signpost {
            port,
            settings: settings.to_owned(),
            process: None,
        };
        server.start_again();
        server
    }

    /// Starts the server (again) on its port, once it is free, and waits until it listens.
    fn start_again(&mut self) {
        let mut command = Command::new(env!("CARGO_BIN_EXE_signpost"));
        command
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("ROCKET_ADDRESS", "127.0.0.1")
            .env("ROCKET_PORT", self.port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        if !self.settings.is_empty() {
            command.env("ROCKET_SIGNPOST", format!("{{{}}}", self.settings));
        }
        let mut process = ChildProcess::spawn("signpost", command, Watch::Stderr);
        process.read_until("that it listens", Duration::from_secs(30), |line| {
            line.contains("listening on ").then_some(())
        });
        self.process = Some(process);
    }

    /// SIGTERM, as a deploy does, and waits until the process has exited.
    fn stop(&mut self) {
        let mut process = self.process.take().expect("the server is running");
        process.terminate();
        assert!(process.wait().success());
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The peer ids the server lists in `room`, sorted (none if it has no such room). Under
    /// `join_auth = "required"`, asked with a join token for the room (see [`JOIN_KEY`]).
    async fn room_peers(&self, room: &str) -> Vec<String> {
        let mut request = reqwest::Client::new().get(self.url(&format!("/api/rooms/{room}")));
        if self.settings.contains("join_auth") {
            request = request.bearer_auth(join_token(room, "Operator"));
        }
        let Ok(response) = request.send().await else {
            return Vec::new();
        };
        if !response.status().is_success() {
            return Vec::new();
        }
        let body: Value = response.json().await.expect("a room");
        let mut ids: Vec<String> = body["peers"]
            .as_array()
            .expect("peers")
            .iter()
            .map(|peer| peer["peer_id"].as_str().expect("a peer id").to_owned())
            .collect();
        ids.sort();
        ids
    }

    /// Waits until the server lists exactly `count` peers in `room`, returning them.
    async fn wait_room(&self, room: &str, count: usize, within: Duration) -> Vec<String> {
        poll_until(
            &format!("the server lists {count} peers in {room}"),
            within,
            || self.room_peers(room),
            |peers| peers.len() == count,
        )
        .await
    }
}

/// Opens a data-only page in `room` and returns it with its peer id.
async fn open_page(
    chromium: &Chromium,
    server: &Signpost,
    room: &str,
    name: &str,
) -> (Tab, String) {
    chromium
        .join(&server.url(&format!("/?room={room}&name={name}&media=none")))
        .await
}

/// Waits until `tab` lists exactly the peers `others` (no one else, no one twice), each with a
/// connected peer connection and an open chat channel.
async fn wait_exactly(tab: &Tab, others: &[String]) {
    let check = format!(
        "(() => {{ const ids = {}; const peers = signpostApp.peers(); \
         return peers.length === ids.length && ids.every(id => peers.some(p => p.peer_id === id \
         && p.connectionState === 'connected' && p.dataChannelState === 'open')) }})()",
        json!(others)
    );
    tab.wait_for(&format!("listing exactly {others:?}, connected"), &check)
        .await;
}

/// Sends `text` from `from` and waits until `to` has it in its chat log (by text: peer ids
/// change across a rejoin).
async fn chat(from: &Tab, to: &Tab, text: &str) {
    let reached = from
        .eval(&format!("signpostApp.sendChat({})", json!(text)))
        .await;
    assert!(reached.as_u64() >= Some(1), "{text:?} went to a peer");
    to.wait_for(
        &format!("chat {text:?}"),
        &format!(
            "signpostApp.chatLog().some(m => m.text === {})",
            json!(text)
        ),
    )
    .await;
}

/// Starts sampling, every 20 ms, the data channel state of every peer a page lists: `bad`
/// collects every state other than `open`, `fewest` the fewest peers seen listed, and `counts`
/// the samples taken in each phase of the story (see [`enter_phase`]), starting with `up`.
async fn sample_channels(tab: &Tab) {
    tab.eval(
        "(() => { window.channelSamples = { phase: 'up', counts: {}, bad: [], fewest: Infinity }; \
         setInterval(() => { const peers = signpostApp.peers(); const s = window.channelSamples; \
         s.counts[s.phase] = (s.counts[s.phase] ?? 0) + 1; s.fewest = Math.min(s.fewest, peers.length); \
         for (const p of peers) if (p.dataChannelState !== 'open') s.bad.push(p.dataChannelState); }, 20); })()",
    )
    .await;
    enter_phase(tab, "up").await;
}

/// Starts the phase `phase` of a page's sampling and waits until the sampler has looked at the
/// page twice in it, so that every phase the story names is observed, however fast it goes.
async fn enter_phase(tab: &Tab, phase: &str) {
    tab.eval(&format!("window.channelSamples.phase = {}", json!(phase)))
        .await;
    tab.wait_for(
        &format!("two samples in phase {phase:?}"),
        &format!("(window.channelSamples.counts[{}] ?? 0) >= 2", json!(phase)),
    )
    .await;
}

/// Asserts that the data channels a page sampled never left `open`, it never listed fewer than
/// `peers` peers, and it was sampled in each of `phases`.
async fn assert_channels_stayed_open(tab: &Tab, who: &str, peers: u64, phases: &[&str]) {
    let samples = tab.eval("window.channelSamples").await;
    for phase in phases {
        assert!(
            samples["counts"][phase].as_u64() >= Some(2),
            "{who} sampled in phase {phase:?}: {samples}"
        );
    }
    assert_eq!(
        samples["bad"],
        json!([]),
        "{who}'s chat channels stayed open"
    );
    assert!(
        samples["fewest"].as_u64() >= Some(peers),
        "{who} always listed its peer: {samples}"
    );
}

/// The whole story of a deploy: two connected pages, the server stopped with SIGTERM for
/// `down`, then started again on the same port. With a `resume_secret` in `settings` the pages
/// come back under their old peer ids, otherwise under new ones.
async fn call_survives_restart(test: &str, settings: &str, down: Duration) {
    let same_ids = settings.contains("resume_secret");
    let Some(chromium) = Chromium::launch(test).await else {
        return;
    };
    let mut server = Signpost::start(settings);
    let room = "deploy";
    let (alice, alice_id) = open_page(&chromium, &server, room, "Alice").await;
    let (bob, bob_id) = open_page(&chromium, &server, room, "Bob").await;
    wait_exactly(&alice, std::slice::from_ref(&bob_id)).await;
    wait_exactly(&bob, std::slice::from_ref(&alice_id)).await;
    sample_channels(&alice).await;
    sample_channels(&bob).await;

    server.stop();
    enter_phase(&alice, "down").await;
    enter_phase(&bob, "down").await;
    // Chat is peer to peer: it goes both ways while there is no server at all.
    chat(&alice, &bob, "Alice, while the server is down").await;
    chat(&bob, &alice, "Bob, while the server is down").await;
    tokio::time::sleep(down).await; // the outage itself: nothing to wait for but time
    server.start_again();
    let back = Instant::now();

    // Both rejoin by themselves (the server forgot everything). A page knows its new peer id
    // once it has read the answer to its join, which comes after the server lists it: wait for
    // the page's `rejoined`, not only for the room.
    for (tab, who) in [(&alice, "Alice"), (&bob, "Bob")] {
        tab.wait_for(&format!("{who} rejoined"), "signpostApp.rejoins() >= 1")
            .await;
    }
    let peers = server.wait_room(room, 2, BACK_WITHIN).await;
    println!("both pages back in the room after {:?}", back.elapsed());
    assert!(
        back.elapsed() <= BACK_WITHIN,
        "both pages back within {BACK_WITHIN:?}"
    );
    let alice_now = alice.peer_id().await;
    let bob_now = bob.peer_id().await;
    let mut expected = vec![alice_now.clone(), bob_now.clone()];
    expected.sort();
    assert_eq!(
        peers, expected,
        "the room holds the two pages, as they know themselves"
    );
    if same_ids {
        assert_eq!(
            alice_now, alice_id,
            "the same peer id, by the resume credential"
        );
        assert_eq!(
            bob_now, bob_id,
            "the same peer id, by the resume credential"
        );
    } else {
        assert_ne!(alice_now, alice_id, "a new peer id after the restart");
    }
    // Each recognises the other under its new id: the same connection, no second tile.
    wait_exactly(&alice, std::slice::from_ref(&bob_now)).await;
    wait_exactly(&bob, std::slice::from_ref(&alice_now)).await;
    enter_phase(&alice, "back").await;
    enter_phase(&bob, "back").await;
    chat(&alice, &bob, "Alice, after the restart").await;
    chat(&bob, &alice, "Bob, after the restart").await;
    assert_channels_stayed_open(&alice, "Alice", 1, &["up", "down", "back"]).await;
    assert_channels_stayed_open(&bob, "Bob", 1, &["up", "down", "back"]).await;
    for tab in [&alice, &bob] {
        let transport = tab
            .wait_for(
                "receiving on SSE",
                "signpostApp.transport() === 'sse' && signpostApp.transport()",
            )
            .await;
        assert_eq!(transport, "sse");
    }

    // A newcomer finds a whole room: it reaches both, and everyone lists exactly the others.
    let (carol, carol_id) = open_page(&chromium, &server, room, "Carol").await;
    wait_exactly(&carol, &[alice_now.clone(), bob_now.clone()]).await;
    wait_exactly(&alice, &[bob_now.clone(), carol_id.clone()]).await;
    wait_exactly(&bob, &[alice_now.clone(), carol_id.clone()]).await;
    chat(&carol, &alice, "Carol, new here").await;
    chat(&bob, &carol, "Bob, welcoming Carol").await;
    assert_eq!(server.room_peers(room).await.len(), 3);
    // One rejoin each: an answer about the peer a page was before it rejoined (a send or a
    // check sent before, answered after) must not make it rejoin again under yet another id.
    for (tab, who) in [(&alice, "Alice"), (&bob, "Bob")] {
        assert_eq!(
            tab.eval("signpostApp.rejoins()").await,
            json!(1),
            "{who} rejoined once"
        );
    }
    chromium.close().await;
}

/// A deploy with the default configuration: SIGTERM, started again on the same port at once.
/// The data channel never leaves `open`, chat goes both ways during and after, both pages are
/// back in the room within 10 s, and a newcomer reaches both with no duplicates anywhere.
#[cfg_attr(
    signpost_missing = "chromium",
    ignore = "needs Chromium: apt-get install chromium, or CHROMIUM=<path> (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_survives_a_restart() {
    call_survives_restart("a_call_survives_a_restart", "", Duration::ZERO).await;
}

/// The same with the server down for longer than `peer_timeout_secs` (2 s here), so that the
/// pages give up on their old peers without asking and rejoin.
#[cfg_attr(
    signpost_missing = "chromium",
    ignore = "needs Chromium: apt-get install chromium, or CHROMIUM=<path> (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_survives_an_outage_longer_than_the_peer_timeout() {
    call_survives_restart(
        "a_call_survives_an_outage_longer_than_the_peer_timeout",
        "peer_timeout_secs=2.0",
        Duration::from_secs(5),
    )
    .await;
}

/// With a `resume_secret`, the restarted server re-admits each page under its old peer id.
#[cfg_attr(
    signpost_missing = "chromium",
    ignore = "needs Chromium: apt-get install chromium, or CHROMIUM=<path> (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_survives_a_restart_under_the_same_peer_ids() {
    call_survives_restart(
        "a_call_survives_a_restart_under_the_same_peer_ids",
        "resume_secret=\"a-resume-secret-of-at-least-32-bytes\"",
        Duration::ZERO,
    )
    .await;
}

/// What a [`Cable`] does with a page's connections.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Line {
    /// Forwards them to the server.
    Open,
    /// Closes them at once, open ones included: the server is unreachable.
    Cut,
    /// Accepts them and never answers (open ones are closed): a server that hangs. They are
    /// closed when the line changes.
    Silent,
}

/// A TCP forwarder in front of the server that can cut a page's HTTP off or make it hang, and
/// let it through again; the page's peer connections, which do not go through it, are
/// untouched.
struct Cable {
    port: u16,
    line: tokio::sync::watch::Sender<Line>,
    task: tokio::task::JoinHandle<()>,
}

impl Cable {
    async fn to(server: &Signpost) -> Cable {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("an address").port();
        let upstream = format!("127.0.0.1:{}", server.port);
        let (line, _) = tokio::sync::watch::channel(Line::Open);
        let task = {
            let line = line.clone();
            tokio::spawn(async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    let mut changes = line.subscribe();
                    let now = *changes.borrow_and_update();
                    let upstream = upstream.clone();
                    tokio::spawn(async move {
                        match now {
                            Line::Cut => {} // dropped: the connection closes at once
                            Line::Silent => {
                                let _ = changes.wait_for(|line| *line != Line::Silent).await;
                            }
                            Line::Open => {
                                let Ok(mut server) =
                                    tokio::net::TcpStream::connect(&upstream).await
                                else {
                                    return;
                                };
                                tokio::select! {
                                    _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                                    _ = changes.wait_for(|line| *line != Line::Open) => {}
                                }
                            }
                        }
                    });
                }
            })
        };
        Cable { port, line, task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn set(&self, line: Line) {
        self.line.send_replace(line);
    }
}

impl Drop for Cable {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A page that fell back to long-polling because its server hung (no `ready` within 5 s looks
/// like a buffering proxy) returns to SSE once the server answers again; one cut off from a
/// server that is merely unreachable never leaves SSE at all. Neither was forgotten: the same
/// peer id throughout.
#[cfg_attr(
    signpost_missing = "chromium",
    ignore = "needs Chromium: apt-get install chromium, or CHROMIUM=<path> (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_returns_to_sse_after_an_outage() {
    let Some(chromium) = Chromium::launch("a_page_returns_to_sse_after_an_outage").await else {
        return;
    };
    let server = Signpost::start("");
    let cable = Cable::to(&server).await;
    let (alice, alice_id) = chromium
        .join(&cable.url("/?room=outage&name=Alice&media=none&transport=auto"))
        .await;
    alice
        .wait_for("streaming", "signpostApp.transport() === 'sse'")
        .await;
    alice
        .eval(
            "(() => { window.transports = []; setInterval(() => { const t = signpostApp.transport(); \
             if (window.transports[window.transports.length - 1] !== t) window.transports.push(t); }, 20); })()",
        )
        .await;

    // Unreachable for 8 s: several failed streams, none of them a sign of a blocking proxy.
    cable.set(Line::Cut);
    tokio::time::sleep(Duration::from_secs(8)).await; // the outage itself
    cable.set(Line::Open);
    alice
        .wait_for(
            "streaming again",
            "signpostApp.transport() === 'sse' && signpostApp.rejoins() === 0",
        )
        .await;
    assert_eq!(
        alice.eval("window.transports").await,
        json!(["sse"]),
        "never polled"
    );

    // A server that hangs: the stream gets no `ready`, so the page moves to long-polling...
    cable.set(Line::Silent);
    alice
        .wait_for(
            "falling back to polling",
            "signpostApp.transport() === 'poll'",
        )
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await; // hanging a while longer
                                                      // ...and once the server answers again, back to SSE, as the same peer.
    cable.set(Line::Open);
    alice
        .wait_for("back on SSE", "signpostApp.transport() === 'sse'")
        .await;
    assert_eq!(
        alice.eval("window.transports").await,
        json!(["sse", "poll", "sse"])
    );
    assert_eq!(alice.eval("signpostApp.peerId()").await, json!(alice_id));
    assert_eq!(alice.eval("signpostApp.rejoins()").await, json!(0));
    chromium.close().await;
}

/// A page the server forgot (it timed out while its HTTP was cut off, its peer connection
/// working) rejoins by itself as the same participant: the other page keeps the connection
/// meanwhile and re-pairs it to the new peer id, with no second tile.
#[cfg_attr(
    signpost_missing = "chromium",
    ignore = "needs Chromium: apt-get install chromium, or CHROMIUM=<path> (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_page_rejoins_as_itself() {
    forgotten_page_rejoins(
        "a_forgotten_page_rejoins_as_itself",
        "peer_timeout_secs=2.0",
    )
    .await;
}

/// The same with a `resume_secret`: the page comes back under its old peer id, and the other
/// page, which heard it leave (timed out), keeps the connection for good, not only for the
/// grace it gives an orphan.
#[cfg_attr(
    signpost_missing = "chromium",
    ignore = "needs Chromium: apt-get install chromium, or CHROMIUM=<path> (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_page_resumes_its_peer_id() {
    forgotten_page_rejoins(
        "a_forgotten_page_resumes_its_peer_id",
        "peer_timeout_secs=2.0,resume_secret=\"a-resume-secret-of-at-least-32-bytes\"",
    )
    .await;
}

/// The same under `join_auth = "required"`: the pages join with join tokens in their `#token=`
/// fragments, a forgotten page's question about itself is answered `401 credential_required`
/// (the server shows peers only to the peers of their room), and it rejoins all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_page_rejoins_in_an_invite_only_room() {
    forgotten_page_rejoins(
        "a_forgotten_page_rejoins_in_an_invite_only_room",
        &format!("peer_timeout_secs=2.0,join_auth=\"required\",join_keys={{app=\"{JOIN_KEY}\"}}"),
    )
    .await;
}

/// The key that signs join tokens for the servers with `join_auth = "required"`.
const JOIN_KEY: &str = "restart-test-secret-of-at-least-32-bytes";

/// A join token for `room` under `name`, valid for five minutes, signed with [`JOIN_KEY`].
fn join_token(room: &str, name: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({"aud": "signpost", "exp": now + 300, "room": room, "name": name});
    let key = jsonwebtoken::EncodingKey::from_secret(JOIN_KEY.as_bytes()).unwrap();
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

/// How long the page keeps a working connection whose peer the server reported gone (app.js,
/// ORPHAN_GRACE_MS), and a margin.
const ORPHAN_GRACE: Duration = Duration::from_secs(22);

async fn forgotten_page_rejoins(test: &str, settings: &str) {
    let Some(chromium) = Chromium::launch(test).await else {
        return;
    };
    let same_id = settings.contains("resume_secret");
    let server = Signpost::start(settings);
    let room = "forgotten";
    // Under `required`, each page's invitation, as an application hands it out.
    let invitation = |name: &str| {
        if settings.contains("join_auth") {
            format!("#token={}", join_token(room, name))
        } else {
            String::new()
        }
    };
    let cable = Cable::to(&server).await;
    let (alice, alice_id) = chromium
        .join(&cable.url(&format!(
            "/?room={room}&name=Alice&media=none{}",
            invitation("Alice")
        )))
        .await;
    let (bob, bob_id) = chromium
        .join(&server.url(&format!(
            "/?room={room}&name=Bob&media=none{}",
            invitation("Bob")
        )))
        .await;
    wait_exactly(&alice, std::slice::from_ref(&bob_id)).await;
    wait_exactly(&bob, std::slice::from_ref(&alice_id)).await;
    sample_channels(&bob).await;

    cable.set(Line::Cut);
    // The server times Alice out; Bob hears `leave` but keeps the working connection.
    server.wait_room(room, 1, Duration::from_secs(20)).await;
    enter_phase(&bob, "alone").await;
    chat(&bob, &alice, "Bob, while Alice is cut off").await;
    cable.set(Line::Open);

    alice
        .wait_for("Alice rejoining", "signpostApp.rejoins() === 1")
        .await;
    let peers = server.wait_room(room, 2, BACK_WITHIN).await;
    let alice_now = alice.peer_id().await;
    assert_eq!(
        alice_now == alice_id,
        same_id,
        "a new peer id unless resumed"
    );
    assert!(peers.contains(&alice_now) && peers.contains(&bob_id));
    wait_exactly(&bob, std::slice::from_ref(&alice_now)).await;
    wait_exactly(&alice, std::slice::from_ref(&bob_id)).await;
    chat(&alice, &bob, "Alice, back as herself").await;
    enter_phase(&bob, "back").await;
    if same_id {
        // Nothing to await: what must not happen is Bob dropping Alice when the grace ends.
        tokio::time::sleep(ORPHAN_GRACE).await;
        wait_exactly(&bob, std::slice::from_ref(&alice_now)).await;
    }
    assert_channels_stayed_open(&bob, "Bob", 1, &["up", "alone", "back"]).await;
    chromium.close().await;
}

/// A participant that takes no part in the call: joins over HTTP and keeps polling its mailbox
/// (so that the server keeps it), to see what others broadcast and to send what it likes.
struct Stranger {
    server: String,
    room: String,
    token: String,
    messages: tokio::sync::mpsc::UnboundedReceiver<Value>,
    poller: tokio::task::JoinHandle<()>,
    http: reqwest::Client,
}

impl Stranger {
    async fn join(server: &Signpost, room: &str) -> Stranger {
        let http = reqwest::Client::new();
        let joined: Value = http
            .post(server.url(&format!("/api/rooms/{room}/peers")))
            .json(&json!({"name": "Mallory"}))
            .send()
            .await
            .expect("a join")
            .json()
            .await
            .expect("a join response");
        let token = joined["token"].as_str().expect("a token").to_owned();
        let poll_url = server.url(joined["poll_url"].as_str().expect("a poll url"));
        let (tx, messages) = tokio::sync::mpsc::unbounded_channel();
        let poller = {
            let (http, token) = (http.clone(), token.clone());
            tokio::spawn(async move {
                let mut after = 0;
                loop {
                    let body: Value = http
                        .get(format!("{poll_url}?after={after}&wait=1"))
                        .bearer_auth(&token)
                        .send()
                        .await
                        .expect("a poll")
                        .json()
                        .await
                        .expect("a poll response");
                    after = body["last_id"].as_u64().expect("last_id");
                    for message in body["messages"].as_array().expect("messages") {
                        let _ = tx.send(message.clone());
                    }
                }
            })
        };
        Stranger {
            server: server.url(""),
            room: room.to_owned(),
            token,
            messages,
            poller,
            http,
        }
    }

    /// Waits for the next message of type `kind`, skipping others.
    async fn next_of(&mut self, kind: &str) -> Value {
        loop {
            let message = tokio::time::timeout(chrome::PAGE_DEADLINE, self.messages.recv())
                .await
                .unwrap_or_else(|_| panic!("no {kind} within {:?}", chrome::PAGE_DEADLINE))
                .expect("the poller runs");
            if message["type"] == kind {
                return message;
            }
        }
    }

    /// Sends one message of type `kind` to `to`, and asserts that the server accepted it.
    async fn send(&self, kind: &str, data: Value, to: &str) {
        let status = self
            .http
            .post(format!("{}/api/rooms/{}/messages", self.server, self.room))
            .bearer_auth(&self.token)
            .json(&json!([{"type": kind, "data": data, "to": to}]))
            .send()
            .await
            .expect("a send")
            .status();
        assert_eq!(status, 202);
    }
}

impl Drop for Stranger {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

/// Nobody takes over another participant's place: a stranger in the room who saw Alice's
/// `resume` (after she rejoined) replays it to Bob, and then sends one with Alice's key and a
/// forged signature. Bob refuses both and still lists exactly Alice, on the same connection.
#[cfg_attr(
    signpost_missing = "chromium",
    ignore = "needs Chromium: apt-get install chromium, or CHROMIUM=<path> (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_can_take_over_a_participant() {
    let Some(chromium) = Chromium::launch("nobody_can_take_over_a_participant").await else {
        return;
    };
    let server = Signpost::start("peer_timeout_secs=2.0");
    let room = "takeover";
    let cable = Cable::to(&server).await;
    let (alice, alice_id) = chromium
        .join(&cable.url(&format!("/?room={room}&name=Alice&media=none")))
        .await;
    let (bob, bob_id) = open_page(&chromium, &server, room, "Bob").await;
    wait_exactly(&bob, std::slice::from_ref(&alice_id)).await;
    let mut mallory = Stranger::join(&server, room).await;

    // Alice is forgotten and rejoins; her `resume` reaches everyone, Mallory included.
    cable.set(Line::Cut);
    server.wait_room(room, 2, Duration::from_secs(20)).await;
    cable.set(Line::Open);
    let resume = mallory.next_of("resume").await;
    let alice_now = resume["from"].as_str().expect("from").to_owned();
    wait_exactly(&bob, std::slice::from_ref(&alice_now)).await;
    let refused_before = bob.eval("signpostApp.refusedResumes()").await;

    // The replay: Alice's proof, sent by Mallory. The server says it is from Mallory.
    mallory
        .send("resume", resume["data"].clone(), &bob_id)
        .await;
    // A forgery: Alice's public key with a signature Mallory made up.
    let mut forged = resume["data"].clone();
    forged["signature"] = json!("AAAA".repeat(21));
    mallory.send("resume", forged, &bob_id).await;

    let refused = bob
        .wait_for(
            "Bob refusing both",
            &format!("signpostApp.refusedResumes() - {refused_before} >= 2 && signpostApp.refusedResumes()"),
        )
        .await;
    assert_eq!(
        refused.as_u64().unwrap() - refused_before.as_u64().unwrap(),
        2
    );
    wait_exactly(&bob, std::slice::from_ref(&alice_now)).await;
    chat(&alice, &bob, "Alice, still herself").await;
    let log = bob.eval("signpostApp.chatLog()").await;
    let last = &log.as_array().expect("a log").last().expect("a message")["from"];
    assert_eq!(last, &json!(alice_now), "Bob credits Alice, not Mallory");
    chromium.close().await;
}

/// A peer whose tab closed without its leave beacon (as Firefox sometimes does) is shown gone at
/// once, long before the server's peer timeout, because its data channel closed.
#[cfg_attr(
    signpost_missing = "chromium",
    ignore = "needs Chromium: apt-get install chromium, or CHROMIUM=<path> (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_peer_is_shown_gone_at_once() {
    let Some(chromium) = Chromium::launch("a_vanished_peer_is_shown_gone_at_once").await else {
        return;
    };
    let server = Signpost::start("");
    let room = "vanish";
    let (alice, alice_id) = open_page(&chromium, &server, room, "Alice").await;
    let (bob, bob_id) = open_page(&chromium, &server, room, "Bob").await;
    wait_exactly(&alice, std::slice::from_ref(&bob_id)).await;
    wait_exactly(&bob, std::slice::from_ref(&alice_id)).await;

    // No beacon: the server keeps Bob for its 30 s peer timeout.
    bob.eval("navigator.sendBeacon = () => true").await;
    let closed = Instant::now();
    bob.page.close().await.expect("Bob's tab closes");
    alice
        .wait_for("Bob gone", "signpostApp.peers().length === 0")
        .await;
    println!("Bob shown gone after {:?}", closed.elapsed());
    assert!(closed.elapsed() < Duration::from_secs(10), "promptly");
    assert_eq!(
        server.room_peers(room).await.len(),
        2,
        "the server still lists Bob: the page did not learn it from a leave"
    );
    chromium.close().await;
}

/// With a room key (docs/PROTOCOL.md, section 8), participant keys travel only sealed: a
/// forgotten page rejoins and keeps its tile, while a stranger in the room, who sees its
/// `resume` only as ciphertext, learns no key or signature from it, and sending that ciphertext
/// to Bob as her own is refused and counted; Bob still lists exactly Alice, who chats on.
#[cfg_attr(
    signpost_missing = "chromium",
    ignore = "needs Chromium: apt-get install chromium, or CHROMIUM=<path> (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_rejoin_keeps_the_tile_and_its_proof_stays_sealed() {
    let test = "a_keyed_rejoin_keeps_the_tile_and_its_proof_stays_sealed";
    let Some(chromium) = Chromium::launch(test).await else {
        return;
    };
    let server = Signpost::start("peer_timeout_secs=2.0");
    let room = "sealed-takeover";
    let key = "cmVzdGFydC1yb29tLWtleSE";
    let cable = Cable::to(&server).await;
    let (alice, alice_id) = chromium
        .join(&cable.url(&format!("/?room={room}&name=Alice&media=none#key={key}")))
        .await;
    let (bob, bob_id) = chromium
        .join(&server.url(&format!("/?room={room}&name=Bob&media=none#key={key}")))
        .await;
    wait_exactly(&bob, std::slice::from_ref(&alice_id)).await;
    let mut mallory = Stranger::join(&server, room).await;

    // Alice is forgotten and rejoins; her sealed `resume` reaches everyone, Mallory included.
    cable.set(Line::Cut);
    server.wait_room(room, 2, Duration::from_secs(20)).await;
    cable.set(Line::Open);
    let resume = mallory.next_of("resume").await;
    let alice_now = resume["from"].as_str().expect("from").to_owned();
    let sealed = &resume["data"];
    assert_eq!(sealed["e2ee"], "signpost-e2ee-v1", "{resume}");
    let fields: Vec<&String> = sealed.as_object().expect("an object").keys().collect();
    assert_eq!(
        fields,
        ["ct", "e2ee", "iv"],
        "nothing but ciphertext: {resume}"
    );
    wait_exactly(&bob, std::slice::from_ref(&alice_now)).await;
    let rejected_before = bob.eval("signpostApp.encryption().rejected").await;

    // Mallory sends Alice's sealed proof to Bob as her own: it does not open for her peer id.
    mallory.send("resume", sealed.clone(), &bob_id).await;
    bob.wait_for(
        "Bob refusing Mallory's copy",
        &format!("signpostApp.encryption().rejected > {rejected_before}"),
    )
    .await;
    wait_exactly(&bob, std::slice::from_ref(&alice_now)).await;
    chat(&alice, &bob, "Alice, sealed and still herself").await;
    let log = bob.eval("signpostApp.chatLog()").await;
    let last = &log.as_array().expect("a log").last().expect("a message")["from"];
    assert_eq!(last, &json!(alice_now), "Bob credits Alice, not Mallory");
    chromium.close().await;
}
