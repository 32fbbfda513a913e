//! Resume credentials (issue 10, docs/API.md "Resuming"): with `resume_secret` set, a peer the
//! server forgot rejoins under the same peer id, and nobody takes over another participant's
//! place with a credential: forged, from another room, another peer's while it is present, or
//! to a server that issues none. Each refusal is a precise 4xx and changes nothing.

mod common;

use common::{Peer, Server};
use serde_json::{json, Value};

const SECRET: &str = "a-resume-secret-of-at-least-32-bytes";

async fn server() -> Server {
    Server::with(json!({ "resume_secret": SECRET })).await
}

/// `POST /api/rooms/{room}/peers` with `body`: the status and the answer.
async fn join_with(server: &Server, room: &str, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(server.url(&format!("/api/rooms/{room}/peers")))
        .json(&body)
        .send()
        .await
        .expect("a join");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON answer"))
}

/// The peer ids the server lists in `room`.
async fn room_ids(server: &Server, room: &str) -> Vec<String> {
    let (_, body) = server.get_json(&format!("/api/rooms/{room}")).await;
    body["peers"]
        .as_array()
        .map(|peers| {
            peers
                .iter()
                .map(|peer| peer["peer_id"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn credential(peer: &Peer) -> String {
    peer.joined["resume"]
        .as_str()
        .expect("a resume credential")
        .to_owned()
}

store_tests! {
    /// A peer the server forgot comes back under its old id with its credential, with a new
    /// token, and the others hear it join again under that id.
    async fn a_forgotten_peer_resumes_its_peer_id() {
        let server = server().await;
        let alice = server.join("resume", "Alice").await;
        let bob = server.join("resume", "Bob").await;
        let mut bob_events = bob.events(None).await;
        let resume = credential(&alice);
        assert_eq!(alice.leave().await, 204, "the server forgets Alice");
        assert_eq!(bob_events.next_message().await["type"], "leave");

        let (status, joined) =
            join_with(&server, "resume", json!({"name": "Alice", "resume": resume})).await;
        assert_eq!(status, 201, "{joined}");
        assert_eq!(joined["peer_id"], json!(alice.id), "the same peer id");
        assert_ne!(joined["token"], json!(alice.token), "a new token");
        assert_eq!(joined["resume"], json!(resume), "the same credential stays good");
        let announced = bob_events.next_message().await;
        assert_eq!(announced["type"], "join");
        assert_eq!(announced["data"]["peer_id"], json!(alice.id));
        let (status, _) = alice.poll(0, 0.0).await;
        assert_eq!(status, 401, "the old token is gone with the old peer");
    }

    /// A credential never takes over a live participant: Bob presenting Alice's while she is in
    /// the room gets 409 peer_present, and the room is unchanged.
    async fn a_credential_cannot_take_a_present_peers_place() {
        let server = server().await;
        let alice = server.join("present", "Alice").await;
        let before = room_ids(&server, "present").await;
        let (status, body) =
            join_with(&server, "present", json!({"name": "Bob", "resume": credential(&alice)}))
                .await;
        assert_eq!((status, body["error"].as_str()), (409, Some("peer_present")), "{body}");
        assert_eq!(room_ids(&server, "present").await, before);
        let (status, _) = alice.poll(0, 0.0).await;
        assert_eq!(status, 200, "Alice's token still works");
    }

    /// A credential from another room is refused (403 invalid_resume), even when its peer id is
    /// free there; so is a forged one and one signed with another secret. Nothing is created.
    async fn forged_and_replayed_credentials_are_refused() {
        let server = server().await;
        let alice = server.join("one-room", "Alice").await;
        let stolen = credential(&alice);
        let forged = {
            // Alice's credential with its signature's last characters changed.
            let mut forged = stolen.clone();
            forged.truncate(forged.len() - 4);
            forged.push_str("AAAA");
            forged
        };
        let other_secret = {
            let other = Server::with(json!({"resume_secret": "another-secret-of-at-least-32-bytes!!"})).await;
            credential(&other.join("other-room", "Eve").await)
        };
        for (what, resume) in [("another room's", stolen), ("forged", forged), ("another secret's", other_secret)] {
            let (status, body) =
                join_with(&server, "other-room", json!({"name": "Eve", "resume": resume})).await;
            assert_eq!((status, body["error"].as_str()), (403, Some("invalid_resume")), "{what}: {body}");
        }
        let (status, _) = server.get_json("/api/rooms/other-room").await;
        assert_eq!(status, 404, "no room was created");
        assert_eq!(room_ids(&server, "one-room").await, vec![alice.id.clone()]);
    }

    /// Without `resume_secret` (the default) a join response has no credential, and a join that
    /// presents one is told so (403 resume_not_enabled) and changes nothing.
    async fn without_a_secret_there_is_nothing_to_resume() {
        let server = Server::start().await;
        let alice = server.join("plain", "Alice").await;
        assert_eq!(alice.joined["resume"], Value::Null);
        let (status, body) =
            join_with(&server, "plain", json!({"name": "Alice", "resume": "eyJhbGciOiJIUzI1NiJ9.e30.x"})).await;
        assert_eq!((status, body["error"].as_str()), (403, Some("resume_not_enabled")), "{body}");
        assert_eq!(room_ids(&server, "plain").await, vec![alice.id.clone()]);
    }
}
