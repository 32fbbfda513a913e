//! End-to-end encrypted signaling (docs/PROTOCOL.md, section 8) against real browsers: pages
//! with a room key in their link (`#key=`) connect through a recording proxy that never sees a
//! session description; what that proxy alters, and what comes under another key or in the clear,
//! is refused, counted, and never applied.
//!
//! Pages load through the proxy (`tests/common/proxy.rs`), so every request and response of
//! the API passes it. Skipped with a printed reason when Chromium (or Firefox, for the tests
//! that use it) is missing, unless `CI=true` (`common/external.rs`).

#[path = "common/browser.rs"]
#[allow(dead_code)] // screenshots and the like, for tests/browser.rs
mod chrome;
mod common;
#[path = "common/firefox.rs"]
mod firefox;
#[path = "common/proxy.rs"]
mod proxy;

use serde_json::{json, Value};

use chrome::{Chromium, Tab};
use common::eventually::poll_until;
use common::Server;
use firefox::Firefox;
use proxy::{Hostility, Proxy, Seen};

/// One room key for the tests (16 bytes, base64url); [`OTHER_KEY`] is another.
const KEY: &str = "c2lnbnBvc3QtdGVzdC1rZXk";
const OTHER_KEY: &str = "YW5vdGhlci1yb29tLWtleSE";

/// What must never cross the server in a keyed room: SDP and its addresses and fingerprints.
const SECRETS: &[&str] = &["a=fingerprint", "a=ice-ufrag", "candidate:", "\"sdp\""];

/// The room page's URL through `proxy`, with `query` and, when given, the room key.
fn page_url(proxy: &Proxy, room: &str, query: &str, key: Option<&str>) -> String {
    let fragment = key.map(|key| format!("#key={key}")).unwrap_or_default();
    proxy.url(&format!("/?room={room}&media=none&{query}{fragment}"))
}

/// Opens a page and returns it with its peer id; it also starts counting the page's errors and
/// its calls of `setRemoteDescription` (see [`page_health`]).
async fn open(chromium: &Chromium, url: &str) -> (Tab, String) {
    let tab = chromium.open(url).await;
    tab.eval(WATCH_PAGE).await;
    let id = tab.peer_id().await;
    (tab, id)
}

/// Installed in each page as soon as it loads: counts uncaught errors and rejections, and every
/// `setRemoteDescription` with the SDP it was given.
const WATCH_PAGE: &str = "(() => { window.__errors = []; window.__remote = [];
    addEventListener('error', (e) => __errors.push(String(e.message)));
    addEventListener('unhandledrejection', (e) => __errors.push(String(e.reason)));
    const original = RTCPeerConnection.prototype.setRemoteDescription;
    RTCPeerConnection.prototype.setRemoteDescription = function (description) {
      __remote.push(description?.sdp ?? null);
      return original.apply(this, arguments);
    };
    return true; })()";

/// `{errors, remote}`: the page's uncaught errors, and how many remote descriptions it applied.
async fn page_health(tab: &Tab) -> Value {
    tab.eval("({ errors: __errors, remote: __remote.length })")
        .await
}

/// Every API body the proxy relayed, both ways, as text.
fn api_bodies(seen: &[Seen]) -> Vec<(String, String)> {
    seen.iter()
        .filter(|request| request.target.starts_with("/api/"))
        .map(|request| {
            let both = [request.request_body.as_slice(), &request.response].concat();
            (
                request.target.clone(),
                String::from_utf8_lossy(&both).into_owned(),
            )
        })
        .collect()
}

/// Asserts that no API body the proxy saw holds any of [`SECRETS`] or `names`, and that it did
/// see sealed messages both ways (so that the check is not vacuous). Each name holds a space,
/// which base64url never does: ciphertext cannot spell it by chance (a short name could).
fn assert_only_ciphertext(proxy: &Proxy, names: &[&str]) {
    assert!(names.iter().all(|name| name.contains(' ')));
    let bodies = api_bodies(&proxy.seen());
    for (target, body) in &bodies {
        for secret in SECRETS.iter().chain(names) {
            assert!(
                !body.contains(secret),
                "the proxy saw {secret:?} in {target}: {body}"
            );
        }
    }
    let posted = bodies
        .iter()
        .any(|(target, body)| target.ends_with("/messages") && body.contains("\"offer\""));
    let sealed = bodies
        .iter()
        .filter(|(_, body)| body.contains("signpost-e2ee-v1"))
        .count();
    assert!(posted, "the proxy saw an offer being sent");
    assert!(
        sealed >= 2,
        "the proxy saw sealed messages sent and received"
    );
}

/// Two keyed Chromium pages connect and chat, names included, while the proxy relaying all of
/// their signaling sees no SDP, no candidate, and no name: only sealed envelopes.
#[cfg_attr(
    signpost_missing = "chromium",
    ignore = "needs Chromium (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_pages_connect_and_the_proxy_sees_only_ciphertext() {
    let Some(chromium) =
        Chromium::launch("keyed_pages_connect_and_the_proxy_sees_only_ciphertext").await
    else {
        return;
    };
    let server = Server::start().await;
    let proxy = Proxy::start(&server.base, Hostility::default()).await;
    let (alice, alice_id) = open(
        &chromium,
        &page_url(&proxy, "sealed", "name=Alice%20Liddell", Some(KEY)),
    )
    .await;
    let (bob, bob_id) = open(
        &chromium,
        &page_url(&proxy, "sealed", "name=Bob%20Dylan", Some(KEY)),
    )
    .await;
    alice.wait_connected(&[&bob_id]).await;
    bob.wait_connected(&[&alice_id]).await;

    alice.eval("signpostApp.sendChat('sealed hello')").await;
    bob.wait_chat(&alice_id, "sealed hello").await;
    bob.wait_for(
        "Alice's name, which travelled sealed",
        "signpostApp.peers().some(p => p.name === 'Alice Liddell')",
    )
    .await;
    for tab in [&alice, &bob] {
        assert_eq!(
            tab.eval("signpostApp.encryption()").await,
            json!({"on": true, "rejected": 0})
        );
        assert_eq!(page_health(tab).await["errors"], json!([]));
    }
    // The safety code: the same on both ends of the connection.
    let code = alice
        .wait_for(
            "Alice's safety code",
            &format!("signpostApp.safetyCode('{bob_id}')"),
        )
        .await;
    assert_eq!(code.as_str().map(str::len), Some(7), "{code}");
    let bobs = bob
        .wait_for(
            "Bob's safety code",
            &format!("signpostApp.safetyCode('{alice_id}')"),
        )
        .await;
    assert_eq!(code, bobs, "both ends read the same safety code");
    assert_only_ciphertext(&proxy, &["Alice Liddell", "Bob Dylan"]);
    chromium.close().await;
    server.stop().await;
}

/// The proxy changes one character of the newcomer's sealed offer: the page already there
/// refuses it and counts it, applies no remote description, throws nothing, and does not
/// connect to the newcomer.
#[cfg_attr(
    signpost_missing = "chromium",
    ignore = "needs Chromium (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_altered_offer_is_refused_and_counted() {
    let Some(chromium) = Chromium::launch("an_altered_offer_is_refused_and_counted").await else {
        return;
    };
    let server = Server::start().await;
    let hostility = Hostility {
        alter_first_offer: true,
        ..Hostility::default()
    };
    let proxy = Proxy::start(&server.base, hostility).await;
    let (bob, _) = open(
        &chromium,
        &page_url(&proxy, "altered", "name=Bob%20Dylan", Some(KEY)),
    )
    .await;
    let (alice, _) = open(
        &chromium,
        &page_url(&proxy, "altered", "name=Alice%20Liddell", Some(KEY)),
    )
    .await;

    let refused = bob
        .wait_until(
            "Bob refusing the altered offer",
            "signpostApp.encryption()",
            |value| value["rejected"].as_u64().unwrap_or(0) >= 1,
        )
        .await;
    assert_eq!(refused["on"], true);
    assert!(
        proxy.seen().iter().any(|request| request.altered),
        "the proxy altered an offer"
    );
    assert_eq!(
        page_health(&bob).await,
        json!({"errors": [], "remote": 0}),
        "the altered offer never reached setRemoteDescription, and nothing was thrown"
    );
    bob.wait_for(
        "the refusal shown to a person",
        "[...document.querySelectorAll('#status-errors li')].some(li => li.textContent.includes('does not open'))",
    )
    .await;
    assert_eq!(
        bob.eval("signpostApp.peers().filter(p => p.connectionState === 'connected').length")
            .await,
        0
    );
    assert_eq!(page_health(&alice).await["errors"], json!([]));
    chromium.close().await;
    server.stop().await;
}

/// Pages with different keys never connect, and each refuses what the other sealed: Alice
/// (key 1) refuses Bob's offer (key 2); Bob refuses Carol's (key 1); Alice and Carol connect.
#[cfg_attr(
    signpost_missing = "chromium",
    ignore = "needs Chromium (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_keys_never_connect_and_both_refuse() {
    let Some(chromium) = Chromium::launch("different_keys_never_connect_and_both_refuse").await
    else {
        return;
    };
    let server = Server::start().await;
    let proxy = Proxy::start(&server.base, Hostility::default()).await;
    let (alice, alice_id) = open(
        &chromium,
        &page_url(&proxy, "keys", "name=Alice%20Liddell", Some(KEY)),
    )
    .await;
    let (bob, bob_id) = open(
        &chromium,
        &page_url(&proxy, "keys", "name=Bob%20Dylan", Some(OTHER_KEY)),
    )
    .await;
    let (carol, carol_id) = open(
        &chromium,
        &page_url(&proxy, "keys", "name=Carol", Some(KEY)),
    )
    .await;
    alice.wait_connected(&[&carol_id]).await;
    carol.wait_connected(&[&alice_id]).await;
    for (tab, who) in [(&alice, "Alice"), (&bob, "Bob")] {
        tab.wait_until(
            &format!("{who} refusing the other key's messages"),
            "signpostApp.encryption().rejected",
            |value| value.as_u64().unwrap_or(0) >= 1,
        )
        .await;
        assert_eq!(page_health(tab).await["errors"], json!([]));
    }
    assert_eq!(
        bob.eval("signpostApp.peers().filter(p => p.connectionState === 'connected').length")
            .await,
        0,
        "Bob connects to nobody"
    );
    assert_eq!(page_health(&bob).await["remote"], 0);
    for tab in [&alice, &carol] {
        let connected_to_bob = tab
            .eval(&format!(
                "signpostApp.peers().some(p => p.peer_id === '{bob_id}' && p.connectionState === 'connected')"
            ))
            .await;
        assert_eq!(connected_to_bob, false);
    }
    chromium.close().await;
    server.stop().await;
}

/// A keyed page and one without the key never connect, and both refuse: the keyed Alice refuses
/// Uma's clear offer (a downgrade); Uma, who has no key, refuses Carol's sealed offer and says
/// the room is encrypted; the keyed Alice and Carol connect.
#[cfg_attr(
    signpost_missing = "chromium",
    ignore = "needs Chromium (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_and_unkeyed_never_connect_and_both_refuse() {
    let Some(chromium) = Chromium::launch("keyed_and_unkeyed_never_connect_and_both_refuse").await
    else {
        return;
    };
    let server = Server::start().await;
    let proxy = Proxy::start(&server.base, Hostility::default()).await;
    let (alice, alice_id) = open(
        &chromium,
        &page_url(&proxy, "mixed", "name=Alice%20Liddell", Some(KEY)),
    )
    .await;
    let (uma, uma_id) = open(&chromium, &page_url(&proxy, "mixed", "name=Uma", None)).await;
    alice
        .wait_until(
            "Alice refusing Uma's clear offer",
            "signpostApp.encryption().rejected",
            |value| value.as_u64().unwrap_or(0) >= 1,
        )
        .await;
    let (carol, carol_id) = open(
        &chromium,
        &page_url(&proxy, "mixed", "name=Carol", Some(KEY)),
    )
    .await;
    alice.wait_connected(&[&carol_id]).await;
    carol.wait_connected(&[&alice_id]).await;
    let uma_state = uma
        .wait_until(
            "Uma refusing Carol's sealed offer",
            "signpostApp.encryption()",
            |value| value["rejected"].as_u64().unwrap_or(0) >= 1,
        )
        .await;
    assert_eq!(uma_state["on"], false);
    uma.wait_for(
        "Uma's page saying the room is encrypted",
        "[...document.querySelectorAll('#status-errors li')].some(li => li.textContent.includes('open the link with its key'))",
    )
    .await;
    assert_eq!(page_health(&uma).await, json!({"errors": [], "remote": 0}));
    assert_eq!(page_health(&alice).await["errors"], json!([]));
    for tab in [&alice, &carol] {
        let connected_to_uma = tab
            .eval(&format!(
                "signpostApp.peers().some(p => p.peer_id === '{uma_id}' && p.connectionState === 'connected')"
            ))
            .await;
        assert_eq!(connected_to_uma, false);
    }
    chromium.close().await;
    server.stop().await;
}

/// Chromium and Firefox (over WebDriver BiDi) with one key connect and chat both ways, and the
/// proxy between them and the server sees only sealed envelopes.
#[cfg_attr(
    any(signpost_missing = "chromium", signpost_missing = "firefox"),
    ignore = "needs Chromium and Firefox (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_and_firefox_connect_sealed() {
    let test = "chromium_and_firefox_connect_sealed";
    let Some(chromium) = Chromium::launch(test).await else {
        return;
    };
    let Some(firefox) = Firefox::launch(test).await else {
        return;
    };
    let server = Server::start().await;
    let proxy = Proxy::start(&server.base, Hostility::default()).await;
    let (chrome_tab, chrome_id) = open(
        &chromium,
        &page_url(&proxy, "two-browsers", "name=Chromium%20User", Some(KEY)),
    )
    .await;
    let fox = firefox
        .open(&page_url(
            &proxy,
            "two-browsers",
            "name=Firefox%20User",
            Some(KEY),
        ))
        .await;
    let fox_id = fox
        .wait_for("Firefox joining", "signpostApp.peerId()")
        .await;
    let fox_id = fox_id.as_str().expect("a peer id").to_owned();
    chrome_tab.wait_connected(&[&fox_id]).await;
    fox.wait_for(
        "Firefox connected to Chromium",
        &format!(
            "signpostApp.peers().some(p => p.peer_id === '{chrome_id}' && p.connectionState === 'connected' && p.dataChannelState === 'open')"
        ),
    )
    .await;
    fox.eval("signpostApp.sendChat('from Firefox')").await;
    chrome_tab.wait_chat(&fox_id, "from Firefox").await;
    chrome_tab
        .eval("signpostApp.sendChat('from Chromium')")
        .await;
    fox.wait_for(
        "Chromium's chat in Firefox",
        &format!(
            "signpostApp.chatLog().some(m => m.from === '{chrome_id}' && m.text === 'from Chromium')"
        ),
    )
    .await;
    assert_eq!(
        fox.eval("signpostApp.encryption()").await,
        json!({"on": true, "rejected": 0})
    );
    let fox_code = fox
        .wait_for(
            "Firefox's safety code",
            &format!("signpostApp.safetyCode('{chrome_id}')"),
        )
        .await;
    let chrome_code = chrome_tab
        .wait_for(
            "Chromium's safety code",
            &format!("signpostApp.safetyCode('{fox_id}')"),
        )
        .await;
    assert_eq!(
        fox_code, chrome_code,
        "both browsers read the same safety code"
    );
    assert_only_ciphertext(&proxy, &["Chromium User", "Firefox User"]);
    firefox.close().await;
    chromium.close().await;
    server.stop().await;
}

/// docs/PROTOCOL.md's test vector (section 8), made with Python's `cryptography`, opens in the
/// page's signpost.js to the plaintext the document gives; opening it again is a replay, and it
/// does not open for another recipient, sender or type, or in another room.
#[cfg_attr(
    signpost_missing = "chromium",
    ignore = "needs Chromium (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_protocol_test_vector_opens_in_the_page() {
    let Some(chromium) = Chromium::launch("the_protocol_test_vector_opens_in_the_page").await
    else {
        return;
    };
    let server = Server::start().await;
    let tab = chromium.open(&server.url("/")).await;
    let outcomes = tab
        .eval(
            r#"(async () => {
        const { RoomCipher } = await import("/signpost.js");
        const alice = "11111111-1111-4111-8111-111111111111";
        const bob = "22222222-2222-4222-8222-222222222222";
        const data = { e2ee: "signpost-e2ee-v1", iv: "AAECAwQFBgcICQoL",
          ct: "I9L6gjCChwdsu-wZEL8pZ8x8j4MiMkINrH0q4SdHMOVp9X0ZAnGMFVozIayIS4IKQnoPzYnjmGU67VSNgQd6dmdQGZo_QqwhbQcfBt1ap5k0" };
        const fresh = (room) => RoomCipher.create(room, "AAECAwQFBgcICQoLDA0ODw");
        const cipher = await fresh("demo");
        return {
          opened: await cipher.open({ from: alice, type: "answer", data }, bob),
          again: await cipher.open({ from: alice, type: "answer", data }, bob),
          otherRecipient: await (await fresh("demo")).open({ from: alice, type: "answer", data }, alice),
          otherSender: await (await fresh("demo")).open({ from: bob, type: "answer", data }, bob),
          otherType: await (await fresh("demo")).open({ from: alice, type: "offer", data }, bob),
          otherRoom: await (await fresh("demo2")).open({ from: alice, type: "answer", data }, bob),
        };
      })()"#,
        )
        .await;
    assert_eq!(
        outcomes,
        json!({
            "opened": {"seq": 1, "data": {"type": "answer", "sdp": "v=0\r\n"}, "name": "Alice"},
            "again": "replayed",
            "otherRecipient": "unauthenticated",
            "otherSender": "unauthenticated",
            "otherType": "unauthenticated",
            "otherRoom": "unauthenticated",
        })
    );
    chromium.close().await;
    server.stop().await;
}

/// Not a check: measures call set-up in Chromium with and without a room key, for
/// docs/BENCHMARKS.md ("End-to-end encrypted signaling"). The newcomer's time from starting to
/// join to its chat channel being open (join, key derivation, offer, answer and candidates
/// sealed and opened, ICE, DTLS, SCTP), over rounds that alternate the two modes. Run with
/// `cargo test --release --test e2ee -- --ignored --nocapture set_up_time`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check: run it by name (above)"]
async fn set_up_time_with_and_without_a_key() {
    let Some(chromium) = Chromium::launch("set_up_time_with_and_without_a_key").await else {
        return;
    };
    let server = Server::start().await;
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|rounds| rounds.parse().ok())
        .unwrap_or(20);
    let mut times: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        for (mode, key) in [None, Some(KEY)].into_iter().enumerate() {
            let fragment = key.map(|key| format!("#key={key}")).unwrap_or_default();
            let url = server.url(&format!("/?room=bench-{round}-{mode}&media=none{fragment}"));
            let first = chromium.open(&url).await;
            first.peer_id().await;
            let newcomer = chromium.open(&url).await;
            let timings = newcomer
                .wait_for(
                    "the newcomer's chat channel",
                    "Object.keys(signpostApp.timings().chatOpened).length > 0 && signpostApp.timings()",
                )
                .await;
            let opened = timings["chatOpened"]
                .as_object()
                .and_then(|opened| opened.values().next())
                .and_then(Value::as_f64)
                .expect("a time");
            times[mode].push(opened - timings["joinStarted"].as_f64().expect("a time"));
            newcomer.close().await;
            first.close().await;
        }
    }
    // The cost of the crypto itself: sealing and opening an offer-sized message in the page.
    let tab = chromium.open(&server.url("/")).await;
    let crypto = tab
        .eval(
            r#"(async () => {
        const { RoomCipher } = await import("/signpost.js");
        const a = await RoomCipher.create("bench", "c2lnbnBvc3QtdGVzdC1rZXk");
        const b = await RoomCipher.create("bench", "c2lnbnBvc3QtdGVzdC1rZXk");
        const sdp = "a=candidate:1 1 udp 2122260223 192.0.2.7 50931 typ host\r\n".repeat(80);
        const n = 500;
        const sealed = [];
        let start = performance.now();
        for (let i = 0; i < n; i++) sealed.push(await a.seal("p1", "p2", "offer", { seq: a.nextSequence(), data: { type: "offer", sdp } }));
        const seal = (performance.now() - start) / n;
        start = performance.now();
        for (const data of sealed) await b.open({ from: "p1", type: "offer", data }, "p2");
        const open = (performance.now() - start) / n;
        start = performance.now();
        for (let i = 0; i < 50; i++) await RoomCipher.create("bench", "c2lnbnBvc3QtdGVzdC1rZXk");
        return { bytes: sdp.length, seal, open, derive: (performance.now() - start) / 50 };
      })()"#,
        )
        .await;
    for (mode, name) in ["clear", "keyed"].iter().enumerate() {
        let mut sorted = times[mode].clone();
        sorted.sort_by(f64::total_cmp);
        let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
        println!(
            "{name}: {} set-ups, median {:.0} ms, p90 {:.0} ms, min {:.0} ms, max {:.0} ms",
            sorted.len(),
            at(0.5),
            at(0.9),
            sorted[0],
            sorted[sorted.len() - 1]
        );
    }
    println!("in-page crypto, per offer of {} bytes: seal {:.3} ms, open {:.3} ms; key derivation {:.3} ms",
        crypto["bytes"], crypto["seal"].as_f64().unwrap(), crypto["open"].as_f64().unwrap(), crypto["derive"].as_f64().unwrap());
    chromium.close().await;
    server.stop().await;
}

/// Control: in a room without a key, the same recording proxy reads every offer's fingerprint,
/// and the pages say encryption is off and refuse nothing: the recorder is not blind.
#[cfg_attr(
    signpost_missing = "chromium",
    ignore = "needs Chromium (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_the_proxy_reads_the_set_up() {
    let Some(chromium) = Chromium::launch("without_a_key_the_proxy_reads_the_set_up").await else {
        return;
    };
    let server = Server::start().await;
    let proxy = Proxy::start(&server.base, Hostility::default()).await;
    let (alice, alice_id) = open(&chromium, &page_url(&proxy, "clear", "name=Alice", None)).await;
    let (bob, bob_id) = open(&chromium, &page_url(&proxy, "clear", "name=Bob", None)).await;
    alice.wait_connected(&[&bob_id]).await;
    bob.wait_connected(&[&alice_id]).await;
    for tab in [&alice, &bob] {
        assert_eq!(
            tab.eval("signpostApp.encryption()").await,
            json!({"on": false, "rejected": 0})
        );
        let shown = tab
            .eval("document.getElementById('status-encryption').textContent")
            .await;
        assert!(shown.as_str().unwrap().starts_with("off"), "{shown}");
    }
    let bodies = api_bodies(&proxy.seen());
    for secret in SECRETS {
        assert!(
            bodies.iter().any(|(_, body)| body.contains(secret)),
            "the proxy reads {secret:?} in the clear"
        );
    }
    chromium.close().await;
    server.stop().await;
}

/// The lobby gives a new room a fresh room key: joining from it leads to a link whose fragment
/// holds 22 base64url characters (128 bits), on a page that says it is encrypted and shares the
/// key in its link.
#[cfg_attr(
    signpost_missing = "chromium",
    ignore = "needs Chromium (README.md, Prerequisites)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lobby_makes_a_room_key_for_a_new_room() {
    let Some(chromium) = Chromium::launch("the_lobby_makes_a_room_key_for_a_new_room").await else {
        return;
    };
    let server = Server::start().await;
    let tab = chromium.open(&server.url("/")).await;
    tab.eval(
        "(() => { const form = document.getElementById('join-form'); form.room.value = 'fresh'; \
         form.media.value = 'none'; form.requestSubmit(); return true; })()",
    )
    .await;
    // The page navigates: until the room page answers, evaluations may fail or see the lobby.
    let room_page = || async {
        let probe = tab
            .page
            .evaluate(
                "JSON.stringify(window.signpostApp?.peerId() ? { hash: location.hash, \
                 href: location.href, encryption: signpostApp.encryption(), \
                 share: document.getElementById('share-link').value } : null)",
            )
            .await;
        probe
            .ok()
            .and_then(|result| result.into_value::<String>().ok())
            .and_then(|text| serde_json::from_str::<Value>(&text).ok())
            .filter(|state| !state.is_null())
    };
    let what = "the lobby leads to the room page";
    let state = poll_until(what, chrome::PAGE_DEADLINE, room_page, Option::is_some)
        .await
        .expect("accepted");
    let hash = state["hash"].as_str().expect("a fragment");
    let key = hash
        .strip_prefix("#key=")
        .unwrap_or_else(|| panic!("a key in the fragment: {state}"));
    assert_eq!(key.len(), 22, "{hash}");
    assert!(key
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_'));
    assert_eq!(state["encryption"], json!({"on": true, "rejected": 0}));
    assert!(
        state["share"].as_str().unwrap().ends_with(hash),
        "the share link carries the key: {state}"
    );
    chromium.close().await;
    server.stop().await;
}
