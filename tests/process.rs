//! The real binary, as an operator runs it: SIGTERM ends streams and polls at once and the
//! process exits within Rocket's shutdown bound; its log has one line per join, leave and error,
//! with room and peer, and never a token.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde_json::{json, Value};

use common::eventually::eventually_within;
use common::process::{ChildProcess, Watch};

/// `shutdown.grace` and `shutdown.mercy` in `Rocket.toml`.
const GRACE: Duration = Duration::from_secs(2);
const MERCY: Duration = Duration::from_secs(3);
const DEADLINE: Duration = Duration::from_secs(10);

struct Joined {
    id: String,
    token: String,
}

async fn join(client: &reqwest::Client, base: &str, name: &str) -> Joined {
    let body: Value = client
        .post(format!("{base}/api/rooms/sigterm/peers"))
        .json(&json!({ "name": name }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    Joined {
        id: body["peer_id"].as_str().unwrap().to_owned(),
        token: body["token"].as_str().unwrap().to_owned(),
    }
}

/// One SIGTERM: the open stream ends cleanly, the waiting poll answers 200, the process exits
/// successfully within grace + mercy, and the log tells the story without a single token.
#[tokio::test]
async fn sigterm_ends_streams_and_polls_and_the_log_keeps_tokens_out() {
    let mut command = Command::new(env!("CARGO_BIN_EXE_signpost"));
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("ROCKET_ADDRESS", "127.0.0.1")
        .env("ROCKET_PORT", "0")
        .env("ROCKET_SIGNPOST", "{log_level=\"info\"}")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    // Killed if the test fails before it exits by itself.
    let mut process = ChildProcess::spawn("signpost", command, Watch::Stderr);
    let base = process.read_until("the banner", DEADLINE, |line| {
        Some(line.split("listening on ").nth(1)?.trim().to_owned())
    });

    let client = reqwest::Client::new();
    let alice = join(&client, &base, "alice").await;
    let bob = join(&client, &base, "bob").await;
    let carol = join(&client, &base, "carol").await;
    let left = client
        .delete(format!("{base}/api/rooms/sigterm/peers/{}", carol.id))
        .bearer_auth(&carol.token)
        .send()
        .await
        .unwrap();
    assert_eq!(left.status(), 204);
    // An error whose token is in the query: the log must show the path only.
    let wrong = client
        .get(format!(
            "{base}/api/rooms/sigterm/peers/{}/events?token={}",
            alice.id, bob.token
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 403);

    let response = client
        .get(format!(
            "{base}/api/rooms/sigterm/peers/{}/events",
            alice.id
        ))
        .bearer_auth(&alice.token)
        .send()
        .await
        .unwrap();
    let mut stream = response.bytes_stream().eventsource();
    let ready = stream.next().await.unwrap().unwrap();
    assert_eq!(ready.event, "ready");
    let poll = tokio::spawn({
        let client = client.clone();
        // Bob has seen carol's join and leave (ids 1 and 2): nothing new, so the poll waits.
        let url = format!(
            "{base}/api/rooms/sigterm/peers/{}/messages?after=2&wait=25",
            bob.id
        );
        let token = bob.token.clone();
        async move {
            let response = client.get(url).bearer_auth(token).send().await.unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        }
    });
    // Wait until the poll is waiting (the server counts it), then signal.
    eventually_within("the poll started waiting", DEADLINE, || async {
        let metrics = client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        metrics.contains("signpost_polls_in_flight 1\n")
    })
    .await;

    let signalled = Instant::now();
    process.terminate();

    // Skip what was already queued (carol's join and leave), then expect the end.
    let stream_end = async {
        loop {
            match tokio::time::timeout(DEADLINE, stream.next()).await {
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(error))) => panic!("the stream was cut: {error}"),
                Ok(None) => return signalled.elapsed(),
                Err(_) => panic!("the stream did not end"),
            }
        }
    };
    let (stream_took, polled) = tokio::join!(stream_end, poll);
    let poll_took = signalled.elapsed();
    let (status, body) = polled.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, json!({"messages": [], "last_id": 2, "reset": false}));
    assert!(
        stream_took < GRACE,
        "the stream ended after {stream_took:?}"
    );
    assert!(poll_took < GRACE, "the poll returned after {poll_took:?}");

    let (exit, mut process) = tokio::task::spawn_blocking(move || {
        let exit = process.wait();
        (exit, process)
    })
    .await
    .unwrap();
    let exit_took = signalled.elapsed();
    assert!(exit.success(), "a clean exit: {exit:?}");
    assert!(
        exit_took <= GRACE + MERCY + Duration::from_secs(1),
        "exited after {exit_took:?}"
    );

    let log = process.whole_output(DEADLINE).join("\n");
    for peer in [&alice, &bob, &carol] {
        assert!(
            log.contains(&format!("join room=sigterm peer={}", peer.id)),
            "{log}"
        );
        assert!(
            !log.contains(&peer.token),
            "a token reached the log:\n{log}"
        );
    }
    assert!(
        log.contains(&format!("leave room=sigterm peer={} reason=left", carol.id)),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "request failed method=GET path=/api/rooms/sigterm/peers/{}/events status=403 code=wrong_peer",
            alice.id
        )),
        "{log}"
    );
    assert!(log.contains("shutting down"), "{log}");
}
