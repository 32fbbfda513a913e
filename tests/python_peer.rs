//! A client no one here wrote against the page: `examples/python-peer/peer.py` (aiortc, following
//! docs/PROTOCOL.md) and the room page in headless Chromium talk both ways, with the Python peer
//! as the newcomer and as the peer already there, over SSE and over long-polling; and the same
//! with a room key (`--key`, and `#key=` in the page's link): end-to-end encrypted signaling
//! implemented from docs/PROTOCOL.md, section 8, with Python's `cryptography`.
//!
//! The peer runs in the virtualenv `.ci/run` makes (`target/python-venv`, or `$SIGNPOST_VENV`),
//! where aiortc is installed from PyPI. Without it, or without Chromium, the tests are ignored
//! with the reason, and fail under `CI=true` (`common/external.rs`).

#[path = "common/browser.rs"]
#[allow(dead_code)] // screenshots and the like, for tests/browser.rs
mod chrome;
mod common;

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use chrome::{Chromium, Tab};
use common::process::{ChildProcess, Watch};
use common::{external, requirements, Server};

/// The Python peer, running, and the JSON lines it prints.
struct PythonPeer {
    process: ChildProcess,
    /// Lines read while looking for another event, in order: the peer reports chat and video
    /// in whichever order they come.
    unclaimed: Vec<Value>,
}

impl PythonPeer {
    fn start(
        python: &PathBuf,
        server: &Server,
        room: &str,
        transport: &str,
        key: Option<&str>,
    ) -> PythonPeer {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/python-peer/peer.py");
        let mut command = Command::new(python);
        command.arg(script);
        if let Some(key) = key {
            command.args(["--key", key]);
        }
        command
            .args([
                &server.base,
                room,
                "--name",
                "robot",
                "--transport",
                transport,
            ])
            .args(["--chat", "hello from aiortc", "--until-chat-and-video"])
            .args(["--timeout", "60"]);
        PythonPeer {
            process: ChildProcess::spawn("the Python peer", command, Watch::Stdout),
            unclaimed: Vec::new(),
        }
    }

    /// The first line whose `event` is `event` not claimed yet (others are kept for later
    /// calls); fails after the page deadline.
    async fn next(&mut self, event: &str) -> Value {
        if let Some(index) = self
            .unclaimed
            .iter()
            .position(|line| line["event"] == event)
        {
            return self.unclaimed.remove(index);
        }
        let wait = async {
            while let Some(line) = self.process.next_line().await {
                let value: Value = serde_json::from_str(&line).expect("a JSON line");
                if value["event"] == event {
                    return value;
                }
                self.unclaimed.push(value);
            }
            panic!("the Python peer exited before {event}");
        };
        tokio::time::timeout(chrome::PAGE_DEADLINE, wait)
            .await
            .unwrap_or_else(|_| panic!("the Python peer did not report {event} in time"))
    }
}

/// The page and the Python peer chat both ways and the Python peer decodes the page's video;
/// then the peer leaves as it should and exits 0.
async fn talk(tab: &Tab, tab_id: &str, mut peer: PythonPeer, peer_id: &str, transport: &str) {
    assert_eq!(tab.eval("signpostApp.transport()").await, transport);
    let connected = peer.next("connected").await;
    assert_eq!(connected["peer_id"], tab_id);
    tab.wait_for(
        "the page's chat channel to the Python peer",
        &format!(
            "signpostApp.peers().some(p => p.peer_id === '{peer_id}' && p.dataChannelState === 'open')"
        ),
    )
    .await;
    tab.wait_for(
        "the Python peer's chat on the page",
        &format!(
            "signpostApp.chatLog().some(m => m.from === '{peer_id}' && m.text === 'hello from aiortc')"
        ),
    )
    .await;
    tab.eval("signpostApp.sendChat('hello from the page')")
        .await;
    let chat = peer.next("chat").await;
    assert_eq!(chat["from"], tab_id);
    assert_eq!(chat["text"], "hello from the page");
    let video = peer.next("video").await;
    assert_eq!(video["from"], tab_id);
    assert!(video["width"].as_u64().unwrap() > 0, "{video}");
    assert!(video["height"].as_u64().unwrap() > 0, "{video}");
    let status = peer.process.exit(chrome::PAGE_DEADLINE).await;
    assert!(status.success(), "the Python peer exited with {status}");
    tab.wait_for(
        "the page to see the Python peer leave",
        &format!("!signpostApp.peers().some(p => p.peer_id === '{peer_id}')"),
    )
    .await;
}

/// Runs one case: who joins first, and the transport both use, in the clear.
async fn case(test: &str, python_first: bool, transport: &str) {
    keyed_case(test, python_first, transport, None).await;
}

/// Runs one case, with `key` as the room key of both sides when given: then the page must show
/// encryption on and nothing refused, so the two sealed and opened every message alike.
async fn keyed_case(test: &str, python_first: bool, transport: &str, key: Option<&str>) {
    let python = requirements::aiortc_python();
    if !external::can_run(test, python.as_ref().map(|_| ()).map_err(Clone::clone)) {
        return;
    }
    let Some(chromium) = Chromium::launch(test).await else {
        return;
    };
    let python = python.expect("checked above");
    let server = Server::start().await;
    let room = format!("python-{transport}-{python_first}");
    let fragment = key.map(|key| format!("#key={key}")).unwrap_or_default();
    let page_url = server.url(&format!(
        "/?room={room}&name=page&transport={transport}{fragment}"
    ));
    if python_first {
        // The Python peer is already there; the page is the newcomer and offers.
        let mut peer = PythonPeer::start(&python, &server, &room, transport, key);
        let joined = peer.next("joined").await;
        let peer_id = joined["peer_id"].as_str().unwrap().to_owned();
        let (tab, tab_id) = chromium.join(&page_url).await;
        talk(&tab, &tab_id, peer, &peer_id, transport).await;
        assert_encryption(&tab, key).await;
        tab.close().await;
    } else {
        // The page is already there; the Python peer is the newcomer and offers.
        let (tab, tab_id) = chromium.join(&page_url).await;
        let mut peer = PythonPeer::start(&python, &server, &room, transport, key);
        let joined = peer.next("joined").await;
        assert_eq!(joined["peers"], serde_json::json!([tab_id]));
        let peer_id = joined["peer_id"].as_str().unwrap().to_owned();
        talk(&tab, &tab_id, peer, &peer_id, transport).await;
        assert_encryption(&tab, key).await;
        tab.close().await;
    }
    chromium.close().await;
}

/// The page's encryption state: on with a key, off without, and nothing refused either way.
async fn assert_encryption(tab: &Tab, key: Option<&str>) {
    assert_eq!(
        tab.eval("signpostApp.encryption()").await,
        serde_json::json!({"on": key.is_some(), "rejected": 0})
    );
}

/// A room key for the keyed cases (16 bytes, base64url).
const KEY: &str = "cHl0aG9uLXBlZXIta2V5IQ";

/// With a room key, the Python peer joins second and offers, over SSE.
#[cfg_attr(
    any(signpost_missing = "chromium", signpost_missing = "aiortc"),
    ignore = "needs Chromium, and aiortc in target/python-venv (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_python_newcomer_over_sse() {
    keyed_case("keyed_python_newcomer_over_sse", false, "sse", Some(KEY)).await;
}

/// With a room key, the Python peer is there first and answers, over long-polling.
#[cfg_attr(
    any(signpost_missing = "chromium", signpost_missing = "aiortc"),
    ignore = "needs Chromium, and aiortc in target/python-venv (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_python_already_there_over_poll() {
    keyed_case(
        "keyed_python_already_there_over_poll",
        true,
        "poll",
        Some(KEY),
    )
    .await;
}

/// The Python peer joins second and offers, over SSE.
#[cfg_attr(
    any(signpost_missing = "chromium", signpost_missing = "aiortc"),
    ignore = "needs Chromium, and aiortc in target/python-venv (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_newcomer_over_sse() {
    case("python_newcomer_over_sse", false, "sse").await;
}

/// The Python peer joins second and offers, over long-polling.
#[cfg_attr(
    any(signpost_missing = "chromium", signpost_missing = "aiortc"),
    ignore = "needs Chromium, and aiortc in target/python-venv (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_newcomer_over_poll() {
    case("python_newcomer_over_poll", false, "poll").await;
}

/// The Python peer is there first and answers the page's offer, over SSE.
#[cfg_attr(
    any(signpost_missing = "chromium", signpost_missing = "aiortc"),
    ignore = "needs Chromium, and aiortc in target/python-venv (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_already_there_over_sse() {
    case("python_already_there_over_sse", true, "sse").await;
}

/// The Python peer is there first and answers the page's offer, over long-polling.
#[cfg_attr(
    any(signpost_missing = "chromium", signpost_missing = "aiortc"),
    ignore = "needs Chromium, and aiortc in target/python-venv (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_already_there_over_poll() {
    case("python_already_there_over_poll", true, "poll").await;
}

/// With a room key, the Python peer joins second and offers, over long-polling.
#[cfg_attr(
    any(signpost_missing = "chromium", signpost_missing = "aiortc"),
    ignore = "needs Chromium, and aiortc in target/python-venv (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_python_newcomer_over_poll() {
    keyed_case("keyed_python_newcomer_over_poll", false, "poll", Some(KEY)).await;
}

/// With a room key, the Python peer is there first and answers, over SSE.
#[cfg_attr(
    any(signpost_missing = "chromium", signpost_missing = "aiortc"),
    ignore = "needs Chromium, and aiortc in target/python-venv (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_python_already_there_over_sse() {
    keyed_case(
        "keyed_python_already_there_over_sse",
        true,
        "sse",
        Some(KEY),
    )
    .await;
}
