//! The browser client end to end: real headless Chromium pages of `static/` joining rooms on a
//! test server, connecting to each other over WebRTC, and driven through `window.signpostApp`.
//!
//! Skipped with a printed reason when Chromium is missing, unless `CI=true` (see
//! `common/browser.rs`). Pages use `media=none` except where media is what is tested, to keep
//! the two cores for what each test is about.

#[path = "common/browser.rs"]
mod chrome;
mod common;
#[path = "common/proxy.rs"]
mod proxy;

use std::time::Duration;

use chromiumoxide::cdp::browser_protocol::dom::SetFileInputFilesParams;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use chrome::{Chromium, Tab};
use common::eventually::eventually_within;
use common::Server;
use proxy::{Hostility, Proxy};

/// The room page's URL for `room` with extra query parameters.
fn room_url(server: &Server, room: &str, query: &str) -> String {
    server.url(&format!("/?room={room}&{query}"))
}

/// Opens one page per query string in `room`, in order (so each joins after the previous one),
/// and returns each page with its peer id.
async fn open_pages<const N: usize>(
    chromium: &Chromium,
    server: &Server,
    room: &str,
    queries: [&str; N],
) -> [(Tab, String); N] {
    let mut pages = Vec::with_capacity(N);
    for query in queries {
        pages.push(chromium.join(&room_url(server, room, query)).await);
    }
    pages.try_into().ok().expect("one page per query")
}

/// Waits until every page is connected to every other one.
async fn wait_full_mesh(pages: &[(&Tab, &str)]) {
    for (tab, id) in pages {
        let others: Vec<&str> = pages
            .iter()
            .map(|(_, other)| *other)
            .filter(|other| other != id)
            .collect();
        tab.wait_connected(&others).await;
    }
}

/// Two pages in one room open a data channel to each other and chat both ways, peer to peer.
#[cfg_attr(
    signpost_missing = "chromium",
    ignore = "needs Chromium: apt-get install chromium, or CHROMIUM=<path> (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pages_chat_both_ways() {
    let Some(chromium) = Chromium::launch("two_pages_chat_both_ways").await else {
        return;
    };
    let server = Server::start().await;
    let [(alice, alice_id), (bob, bob_id)] = open_pages(
        &chromium,
        &server,
        "chat",
        ["name=Alice&media=none", "name=Bob&media=none"],
    )
    .await;

    wait_full_mesh(&[(&alice, &alice_id), (&bob, &bob_id)]).await;
    let names = bob.eval("signpostApp.peers().map(p => p.name)").await;
    assert_eq!(
        names,
        serde_json::json!(["Alice"]),
        "Bob sees Alice by name"
    );

    let reached = alice.eval("signpostApp.sendChat('hello from Alice')").await;
    assert_eq!(reached, 1, "Alice's message goes to one peer");
    bob.wait_chat(&alice_id, "hello from Alice").await;
    bob.eval("signpostApp.sendChat('hi Alice, Bob here')").await;
    alice.wait_chat(&bob_id, "hi Alice, Bob here").await;

    let log = alice.eval("signpostApp.chatLog()").await;
    assert_eq!(
        log,
        serde_json::json!([
            {"from": alice_id, "text": "hello from Alice"},
            {"from": bob_id, "text": "hi Alice, Bob here"},
        ]),
        "Alice's log has both messages in order, her own included"
    );
    for tab in [&alice, &bob] {
        assert_eq!(tab.eval("signpostApp.transport()").await, "sse");
    }
    chromium.close().await;
    server.stop().await;
}

/// With fake camera and microphone, each page decodes the other's video and receives its audio.
#[cfg_attr(
    signpost_missing = "chromium",
    ignore = "needs Chromium: apt-get install chromium, or CHROMIUM=<path> (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_see_and_hear_each_other() {
    let Some(chromium) = Chromium::launch("pages_see_and_hear_each_other").await else {
        return;
    };
    let server = Server::start().await;
    let [(alice, alice_id), (bob, bob_id)] =
        open_pages(&chromium, &server, "media", ["name=Alice", "name=Bob"]).await;

    for (tab, other) in [(&alice, &bob_id), (&bob, &alice_id)] {
        let mode = tab
            .wait_for("media to be decided", "signpostApp.mediaMode()")
            .await;
        assert_eq!(mode, "video", "camera and microphone granted");
        let width = tab
            .wait_for(
                "the remote video to decode",
                &format!("document.querySelector('video[data-peer-id=\"{other}\"]')?.videoWidth"),
            )
            .await;
        assert!(width.as_u64().unwrap() > 0);
        tab.wait_for(
            "remote audio to be received and decoded",
            &format!(
                "signpostApp.inboundStats('{other}').then(s => s.audio && s.audio.packetsReceived > 0 \
                 && s.audio.totalSamplesReceived > 0 && s.audio.totalAudioEnergy > 0)"
            ),
        )
        .await;
    }
    alice.eval("signpostApp.sendChat('Can you see me?')").await;
    bob.wait_chat(&alice_id, "Can you see me?").await;
    alice.screenshot("media-alice").await;
    bob.screenshot("media-bob").await;
    chromium.close().await;
    server.stop().await;
}

/// A page whose camera and microphone are refused joins as a data-only peer, says so, and still
/// connects and chats.
#[cfg_attr(
    signpost_missing = "chromium",
    ignore = "needs Chromium: apt-get install chromium, or CHROMIUM=<path> (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_media_page_joins_data_only_and_says_so() {
    let Some(chromium) =
        Chromium::launch_refusing_media("refused_media_page_joins_data_only_and_says_so").await
    else {
        return;
    };
    let server = Server::start().await;
    let [(refused, refused_id), (other, other_id)] = open_pages(
        &chromium,
        &server,
        "refused",
        ["name=Refused", "name=Other&media=none"],
    )
    .await;

    let mode = refused
        .wait_for("media to be decided", "signpostApp.mediaMode()")
        .await;
    assert_eq!(mode, "none", "no camera, no microphone");
    let note = refused
        .eval("document.getElementById('media-note').textContent")
        .await;
    assert!(
        note.as_str().unwrap().contains("refused"),
        "the page says why: {note}"
    );
    refused.wait_connected(&[&other_id]).await;
    other.wait_connected(&[&refused_id]).await;
    refused
        .eval("signpostApp.sendChat('no camera, still here')")
        .await;
    other.wait_chat(&refused_id, "no camera, still here").await;
    refused.screenshot("refused-media").await;
    chromium.close().await;
    server.stop().await;
}

/// A page forced onto long-polling and a page on SSE still connect and chat: signaling works
/// whichever transport each side can use.
#[cfg_attr(
    signpost_missing = "chromium",
    ignore = "needs Chromium: apt-get install chromium, or CHROMIUM=<path> (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_page_connects_with_sse_page() {
    let Some(chromium) = Chromium::launch("long_poll_page_connects_with_sse_page").await else {
        return;
    };
    let server = Server::start().await;
    let [(polling, polling_id), (streaming, streaming_id)] = open_pages(
        &chromium,
        &server,
        "mixed",
        [
            "name=Poll&media=none&transport=poll",
            "name=Stream&media=none",
        ],
    )
    .await;

    assert_eq!(polling.eval("signpostApp.transport()").await, "poll");
    assert_eq!(streaming.eval("signpostApp.transport()").await, "sse");
    wait_full_mesh(&[(&polling, &polling_id), (&streaming, &streaming_id)]).await;
    streaming.eval("signpostApp.sendChat('over SSE')").await;
    polling.wait_chat(&streaming_id, "over SSE").await;
    polling.eval("signpostApp.sendChat('over long-poll')").await;
    streaming.wait_chat(&polling_id, "over long-poll").await;
    chromium.close().await;
    server.stop().await;
}

/// Three pages form a full mesh; when one closes its tab, it leaves (by beacon, not by timeout)
/// and the other two see it go while staying connected to each other.
#[cfg_attr(
    signpost_missing = "chromium",
    ignore = "needs Chromium: apt-get install chromium, or CHROMIUM=<path> (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_pages_mesh_then_one_leaves() {
    let Some(chromium) = Chromium::launch("three_pages_mesh_then_one_leaves").await else {
        return;
    };
    // A presence timeout far beyond the page deadline: only the page's beacon can remove it.
    let server = Server::with(serde_json::json!({"peer_timeout_secs": 300.0})).await;
    let [(ann, ann_id), (ben, ben_id), (cat, cat_id)] = open_pages(
        &chromium,
        &server,
        "mesh",
        [
            "name=Ann&media=none",
            "name=Ben&media=none",
            "name=Cat&media=none",
        ],
    )
    .await;
    wait_full_mesh(&[(&ann, &ann_id), (&ben, &ben_id), (&cat, &cat_id)]).await;

    cat.close().await;
    for tab in [&ann, &ben] {
        tab.wait_for(
            "the closed page to disappear",
            &format!(
                "!signpostApp.peers().some(p => p.peer_id === '{cat_id}') \
                 && !document.querySelector('[data-peer-id=\"{cat_id}\"]')"
            ),
        )
        .await;
    }
    let (status, room) = server.get_json("/api/rooms/mesh").await;
    assert_eq!(status, 200);
    assert_eq!(
        room["peers"].as_array().unwrap().len(),
        2,
        "the server removed the page"
    );
    ann.wait_connected(&[&ben_id]).await;
    ann.eval("signpostApp.sendChat('still here')").await;
    ben.wait_chat(&ann_id, "still here").await;
    chromium.close().await;
    server.stop().await;
}

/// A file of a few MiB picked in one page arrives intact in the other (same SHA-256 as the file
/// on disk), with progress shown on both sides along the way and the sender's queue bounded by
/// flow control.
#[cfg_attr(
    signpost_missing = "chromium",
    ignore = "needs Chromium: apt-get install chromium, or CHROMIUM=<path> (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_arrives_intact_with_progress() {
    let Some(chromium) = Chromium::launch("file_arrives_intact_with_progress").await else {
        return;
    };
    let server = Server::start().await;
    let [(sender, sender_id), (receiver, receiver_id)] = open_pages(
        &chromium,
        &server,
        "files",
        ["name=Sender&media=none", "name=Receiver&media=none"],
    )
    .await;
    wait_full_mesh(&[(&sender, &sender_id), (&receiver, &receiver_id)]).await;

    // 5 MiB of varied bytes (xorshift), so that a dropped, repeated or reordered chunk shows.
    let size = 5 * 1024 * 1024;
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let bytes: Vec<u8> = (0..size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let expected_sha256 = format!("{:x}", Sha256::digest(&bytes));
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("sample.bin");
    std::fs::write(&path, &bytes).unwrap();

    // Pick the file in the page's file input, as a person would.
    let input = sender
        .page
        .find_element("#file-input")
        .await
        .expect("the file input");
    sender
        .page
        .execute(
            SetFileInputFilesParams::builder()
                .file(path.display().to_string())
                .backend_node_id(input.backend_node_id)
                .build()
                .unwrap(),
        )
        .await
        .expect("the file is picked");

    let received = receiver
        .wait_for(
            "the file to arrive and be hashed",
            "signpostApp.transfers().find(t => t.direction === 'receive' && t.state === 'done' && t.sha256)",
        )
        .await;
    assert_eq!(received["name"], "sample.bin");
    assert_eq!(received["size"], size);
    assert_eq!(received["bytes"], size);
    assert_eq!(received["peer_id"], sender_id.as_str());
    assert_eq!(
        received["sha256"],
        expected_sha256.as_str(),
        "the bytes arrived intact"
    );
    assert_eq!(
        received["sawProgress"], true,
        "the receiver showed progress"
    );

    let sent = sender
        .wait_for(
            "the sender to get the receipt",
            "signpostApp.transfers().find(t => t.direction === 'send' && t.state === 'done' && t.sha256)",
        )
        .await;
    assert_eq!(
        sent["sha256"],
        expected_sha256.as_str(),
        "the sender hashed the file on disk"
    );
    assert_eq!(sent["peer_id"], receiver_id.as_str());
    assert_eq!(sent["sawProgress"], true, "the sender showed progress");
    // Flow control: never more than the 1 MiB high mark plus one 16 KiB chunk queued, although
    // the page could hand the whole file to the channel at once.
    let peak = sent["peakBuffered"].as_u64().unwrap();
    assert!(
        peak > 0 && peak <= 1024 * 1024 + 16 * 1024,
        "queued at most ~1 MiB, not {peak}"
    );
    let bar = receiver
        .eval("document.querySelector('#transfers progress').value")
        .await;
    assert_eq!(bar, 1, "the receiver's progress bar is full");
    sender.screenshot("file-sender").await;
    receiver.screenshot("file-receiver").await;
    chromium.close().await;
    server.stop().await;
}

/// A received file is saved as `application/octet-stream` whatever type its sender claims (an
/// HTML file cannot run as a page of this origin), and a file announced larger than the page's
/// limit is refused, with a message naming the limit, before any of its bytes are kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn received_files_are_bytes_and_too_large_ones_are_refused() {
    let Some(chromium) =
        Chromium::launch("received_files_are_bytes_and_too_large_ones_are_refused").await
    else {
        return;
    };
    let server = Server::start().await;
    let [(sender, sender_id), (receiver, receiver_id)] = open_pages(
        &chromium,
        &server,
        "file-types",
        ["name=Sender&media=none", "name=Receiver&media=none"],
    )
    .await;
    wait_full_mesh(&[(&sender, &sender_id), (&receiver, &receiver_id)]).await;

    let reached = sender
        .eval(
            "signpostApp.sendFile(new File(['<script>document.title = \"pwned\"</script>'], \
             'page.html', { type: 'text/html' }))",
        )
        .await;
    assert_eq!(reached, 1);
    let received = receiver
        .wait_for(
            "the HTML file to arrive",
            "signpostApp.transfers().find(t => t.name === 'page.html' && t.state === 'done')",
        )
        .await;
    assert_eq!(
        received["mime"], "text/html",
        "the claimed type is kept, to show"
    );
    assert_eq!(received["savedType"], "application/octet-stream");

    // A "file" that announces 2 GiB (its pieces are made on demand, so nothing that large
    // exists): the receiver refuses it on its header.
    let limit = receiver.eval("signpostApp.maxReceivedFileBytes()").await;
    assert_eq!(limit, 1024 * 1024 * 1024, "the page's limit is 1 GiB");
    sender
        .eval(
            "signpostApp.sendFile({ name: 'huge.bin', size: 2 * 1024 ** 3, type: '', \
             slice: (start, end) => new Blob([new Uint8Array(end - start)]) })",
        )
        .await;
    let refused = receiver
        .wait_for(
            "the large file to be refused",
            "signpostApp.transfers().find(t => t.name === 'huge.bin' && t.state === 'refused')",
        )
        .await;
    assert_eq!(refused["bytes"], 0, "none of it was kept");
    assert_eq!(refused["savedType"], Value::Null);
    sender
        .wait_for(
            "the sender to see its transfer fail",
            "signpostApp.transfers().find(t => t.name === 'huge.bin' && t.state === 'failed')",
        )
        .await;
    let shown = receiver
        .eval("[...document.querySelectorAll('#status-errors li')].map(li => li.textContent).join(' ')")
        .await;
    assert!(
        shown.as_str().unwrap().contains("up to 1 GiB"),
        "the refusal names the limit: {shown}"
    );
    let described = receiver
        .eval("document.getElementById('file-limit').textContent")
        .await;
    assert_eq!(
        described, "1 GiB",
        "the page states its limit where it describes transfers"
    );
    // The refused transfer stays refused: the chunks already on their way are not kept.
    let after = receiver
        .eval("signpostApp.transfers().find(t => t.name === 'huge.bin')")
        .await;
    assert_eq!(
        (&after["state"], &after["bytes"]),
        (&json!("refused"), &json!(0))
    );
    chromium.close().await;
    server.stop().await;
}

/// Behind a proxy that buffers event streams and answers polls that wait over 3 s with a 504, a
/// page on `transport=auto` moves to long-polling, shortens its polls below the cut and keeps
/// that wait, and still connects and chats with a page that has a direct connection.
#[cfg_attr(
    signpost_missing = "chromium",
    ignore = "needs Chromium: apt-get install chromium, or CHROMIUM=<path> (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_transport_gets_through_a_hostile_proxy() {
    let Some(chromium) = Chromium::launch("auto_transport_gets_through_a_hostile_proxy").await
    else {
        return;
    };
    let server = Server::start().await;
    let proxy = Proxy::start(
        &server.base,
        Hostility {
            hold_streams: true,
            cut_polls_after: Some(Duration::from_secs(3)),
            ..Hostility::default()
        },
    )
    .await;
    let (behind, behind_id) = chromium
        .join(&proxy.url("/?room=proxied&name=Behind&media=none"))
        .await;
    let (direct, direct_id) = chromium
        .join(&room_url(&server, "proxied", "name=Direct&media=none"))
        .await;

    behind.wait_connected(&[&direct_id]).await;
    direct.wait_connected(&[&behind_id]).await;
    behind
        .eval("signpostApp.sendChat('through the proxy')")
        .await;
    direct.wait_chat(&behind_id, "through the proxy").await;
    direct.eval("signpostApp.sendChat('back through it')").await;
    behind.wait_chat(&direct_id, "back through it").await;
    assert_eq!(behind.eval("signpostApp.transport()").await, "poll");

    // Once signaling goes quiet, a poll waits long enough to be cut; the ones after it must not.
    let polls = || {
        proxy
            .seen()
            .into_iter()
            .filter(|request| request.target.contains("/messages?"))
            .collect::<Vec<_>>()
    };
    let cut_then_two = || async {
        let polls = polls();
        polls
            .iter()
            .position(|poll| poll.cut)
            .is_some_and(|cut| polls.len() >= cut + 3)
    };
    let what = "a cut poll, then two that get through";
    eventually_within(what, chrome::PAGE_DEADLINE, cut_then_two).await;
    assert!(
        proxy
            .seen()
            .iter()
            .any(|request| request.target.contains("/events?")),
        "it tried the event stream first"
    );
    let polls = polls();
    let first_cut = polls.iter().position(|poll| poll.cut).unwrap();
    assert!(
        polls[first_cut].target.contains("wait=25"),
        "{:?}",
        polls[first_cut]
    );
    for poll in &polls[first_cut + 1..] {
        let wait: f64 = poll
            .target
            .split("wait=")
            .nth(1)
            .and_then(|wait| wait.split('&').next())
            .and_then(|wait| wait.parse().ok())
            .expect("a wait parameter");
        assert!(
            wait < 3.0,
            "after the cut, polls wait less than 3 s: {poll:?}"
        );
    }
    // The last one may still be waiting; every one before it got through.
    assert!(polls[first_cut + 1..polls.len() - 1]
        .iter()
        .all(|poll| !poll.cut));
    chromium.close().await;
    server.stop().await;
}

/// signpost.js on its own (no room page): when a proxy cuts the event stream every second, it
/// reconnects from the last id it saw, and every message arrives exactly once, in order.
#[cfg_attr(
    signpost_missing = "chromium",
    ignore = "needs Chromium: apt-get install chromium, or CHROMIUM=<path> (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signaling_module_resumes_cut_streams_without_loss() {
    let Some(chromium) =
        Chromium::launch("signaling_module_resumes_cut_streams_without_loss").await
    else {
        return;
    };
    let server = Server::start().await;
    let proxy = Proxy::start(
        &server.base,
        Hostility {
            cut_streams_after: Some(Duration::from_secs(1)),
            ..Hostility::default()
        },
    )
    .await;
    let page = chromium.open(&proxy.url("/")).await;
    let page_id = page
        .eval(
            "(async () => { \
               const { Signpost } = await import('/signpost.js'); \
               window.notes = []; \
               const client = await Signpost.join('resume', { transport: 'sse', types: ['note'] }); \
               client.on('note', (envelope) => notes.push(envelope.data)); \
               return client.peerId; })()",
        )
        .await;
    let page_id = page_id.as_str().expect("the module joined").to_owned();
    let sender = server.join("resume", "sender").await;
    let streams = || {
        proxy
            .seen()
            .into_iter()
            .filter(|request| request.target.contains("/events?"))
            .collect::<Vec<_>>()
    };

    let opened = || async { !streams().is_empty() };
    eventually_within(
        "the module to open its stream",
        chrome::PAGE_DEADLINE,
        opened,
    )
    .await;
    let rounds = 5;
    let per_round = 4;
    for round in 0..rounds {
        let streams_before = streams().len();
        let batch: Vec<Value> = (0..per_round)
            .map(|k| json!({"type": "note", "to": page_id, "data": round * per_round + k}))
            .collect();
        sender.send_ok(Value::from(batch)).await;
        page.wait_for(
            "this round's notes",
            &format!("notes.length >= {}", (round + 1) * per_round),
        )
        .await;
        // Wait for the proxy to cut the stream and the module to reconnect before the next round.
        let reconnected = || async { streams().len() > streams_before };
        eventually_within("the module reconnected", chrome::PAGE_DEADLINE, reconnected).await;
    }
    let notes = page.eval("notes").await;
    let expected: Vec<i64> = (0..rounds * per_round).collect();
    assert_eq!(notes, json!(expected), "every note once, in order");
    let streams = streams();
    assert!(
        streams.len() > rounds as usize,
        "the proxy cut the stream every round"
    );
    for stream in &streams[1..] {
        assert!(
            stream.target.contains("last_event_id="),
            "a reconnection resumes from the last id: {}",
            stream.target
        );
    }
    chromium.close().await;
    server.stop().await;
}

/// A server of one HTML page on `listener`: the origin of another site's page. It answers every
/// request with `html`, except `/favicon.ico` (404), and closes each connection.
fn serve_page(listener: tokio::net::TcpListener, html: String) -> tokio::task::JoinHandle<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let html = html.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buffer = [0; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buffer[..n]),
                    }
                }
                let response = if head.starts_with(b"GET /favicon.ico ") {
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_owned()
                } else {
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{html}",
                        html.len()
                    )
                };
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    })
}

/// An application's page on another origin imports `signpost.js` from the signpost server, as
/// README.md shows (`import … from "http://<signpost>/signpost.js"`), joins a room there (the
/// server's `cors_allowed_origins` names the page's origin), and receives and sends messages.
#[cfg_attr(
    signpost_missing = "chromium",
    ignore = "needs Chromium: apt-get install chromium, or CHROMIUM=<path> (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_another_origin_imports_the_module_and_joins() {
    let Some(chromium) =
        Chromium::launch("a_page_of_another_origin_imports_the_module_and_joins").await
    else {
        return;
    };
    // The server's settings name the page's origin, and the page names the server: bind the
    // page's port first, serve the page once the server runs.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let page_origin = format!("http://{}", listener.local_addr().unwrap());
    let server = Server::with(json!({ "cors_allowed_origins": [page_origin] })).await;
    let html = format!(
        r#"<!doctype html>
<meta charset="utf-8">
<title>An application</title>
<script type="module">
  import {{ Signpost }} from "{signpost}/signpost.js";
  window.notes = [];
  const client = await Signpost.join("elsewhere", {{ name: "app", baseUrl: "{signpost}", transport: "sse", types: ["note"] }});
  client.on("note", (envelope) => notes.push(envelope.data));
  window.app = {{ client, peerId: client.peerId }};
</script>
"#,
        signpost = server.base
    );
    let page_server = serve_page(listener, html);
    assert_ne!(
        page_origin, server.base,
        "the page and signpost have different origins"
    );

    let page = chromium
        .open_other(&format!("{page_origin}/app.html"))
        .await;
    let page_id = page
        .wait_for(
            "the page's join through the imported module",
            "window.app?.peerId",
        )
        .await;
    let page_id = page_id.as_str().expect("a peer id").to_owned();
    let sender = server.join("elsewhere", "sender").await;
    let mut events = sender.events(None).await;
    sender
        .send_ok(json!({"type": "note", "to": page_id, "data": "hello, other origin"}))
        .await;
    page.wait_for("the note on the page", "notes.length === 1")
        .await;
    assert_eq!(page.eval("notes").await, json!(["hello, other origin"]));
    page.eval(&format!(
        "app.client.send('note', 'hello back', {})",
        Value::from(sender.id.as_str())
    ))
    .await;
    let reply = events.next_message().await;
    assert_eq!(reply["from"], page_id.as_str());
    assert_eq!(reply["data"], "hello back");
    chromium.close().await;
    page_server.abort();
    server.stop().await;
}

/// A join token signed with `secret` for `room`, as an application's backend would mint it,
/// with `exp` `expires_in` seconds from now (negative: in the past).
fn join_token(secret: &str, room: &str, name: &str, expires_in: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = json!({"aud": "signpost", "exp": now + expires_in, "room": room, "name": name});
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).unwrap();
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

/// In a room that requires a join token, the page joins with the one in its `#token=` fragment,
/// under the token's name; with an expired token it stays in the lobby and says the invitation
/// expired.
#[cfg_attr(
    signpost_missing = "chromium",
    ignore = "needs Chromium: apt-get install chromium, or CHROMIUM=<path> (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_joins_with_a_token_from_the_fragment_and_explains_an_expired_one() {
    let Some(chromium) =
        Chromium::launch("page_joins_with_a_token_from_the_fragment_and_explains_an_expired_one")
            .await
    else {
        return;
    };
    let secret = "browser-test-secret-of-at-least-32-bytes";
    let server = Server::with(json!({"join_auth": "required", "join_keys": {"app": secret}})).await;

    let token = join_token(secret, "invited", "Invitee", 300);
    let (_invited, peer_id) = chromium
        .join(&room_url(
            &server,
            "invited",
            &format!("media=none#token={token}"),
        ))
        .await;
    // Under `required` a room is shown only with a credential for it: the join token is one.
    let listing: Value = server
        .client
        .get(server.url("/api/rooms/invited"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listing["peers"][0]["peer_id"], peer_id.as_str());
    assert_eq!(
        listing["peers"][0]["name"], "Invitee",
        "the token names the peer"
    );

    let stale = join_token(secret, "invited", "Late", -600);
    let late = chromium
        .open(&room_url(
            &server,
            "invited",
            &format!("media=none&name=Late#token={stale}"),
        ))
        .await;
    let message = late
        .wait_for(
            "the page to explain the refusal",
            "document.getElementById('lobby-error').textContent",
        )
        .await;
    // In the page's words, not only the server's message passed through.
    assert!(
        message.as_str().unwrap().contains("invitation")
            && message.as_str().unwrap().contains("has expired"),
        "the page says the invitation expired: {message}"
    );
    let listing: Value = server
        .client
        .get(server.url("/api/rooms/invited"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        listing["peers"].as_array().unwrap().len(),
        1,
        "the late page did not join"
    );
    chromium.close().await;
    server.stop().await;
}
