//! Admission called directly (`signpost::admission`, no HTTP), on every store: which error wins
//! when several refusals apply, pair by pair along the order that `src/admission.rs` states, and
//! that a refused join changes nothing (the rooms and the counts are as before). The HTTP-level
//! check of the same order is `tests/client_limits.rs`'s
//! `the_admission_order_is_the_same_on_both_stores`.

#[macro_use]
mod common;

use std::net::IpAddr;
use std::time::Duration;

use serde_json::{json, value::RawValue, Value};
use signpost::admission::{Admission, Admitted, JoinRequest};
use signpost::config::Config;
use signpost::error::Error;
use signpost::hub::Hub;
use signpost::identity::RoomName;
use signpost::join_token::{JoinTokens, MintRequest};
use signpost::metrics::Metrics;
use signpost::resume::ResumeKeys;

const KEY: &str = "admission-key-of-at-least-32-bytes";
const RESUME_SECRET: &str = "admission-resume-secret-of-32-bytes";
/// The client at its limits in each test.
const CLIENT: &str = "192.0.2.1";
/// Anyone else.
const OTHER: &str = "192.0.2.2";
/// Every room the tests use, whose members a snapshot records.
const ROOMS: [&str; 3] = ["here", "new", "other"];

/// The admission state of one server, on the running test's store.
struct Fixture {
    hub: Hub,
    tokens: JoinTokens,
    resume: ResumeKeys,
}

/// What a refused join must leave as it was: the server's counts of rooms and peers, and the
/// members of every room of [`ROOMS`].
#[derive(Debug, PartialEq)]
struct Snapshot {
    counts: (usize, usize),
    rooms: Vec<Option<Vec<String>>>,
}

fn ip(address: &str) -> Option<IpAddr> {
    Some(address.parse().expect("an IP address"))
}

fn room(name: &str) -> Result<RoomName, Error> {
    Ok(RoomName::parse(name).expect("a valid room name"))
}

fn raw(json: &str) -> Option<Box<RawValue>> {
    Some(RawValue::from_string(json.to_owned()).expect("JSON"))
}

/// A body with a resume credential, and nothing else.
fn resuming(credential: &str) -> Result<JoinRequest, Error> {
    Ok(JoinRequest {
        resume: Some(credential.to_owned()),
        ..JoinRequest::default()
    })
}

fn empty() -> Result<JoinRequest, Error> {
    Ok(JoinRequest::default())
}

impl Fixture {
    /// `Rocket.toml`'s defaults with `settings` over them, validated as at start; on Redis with
    /// a key prefix of its own.
    fn new(settings: Value) -> Fixture {
        let config: Config = common::test_figment(settings)
            .focus("signpost")
            .extract()
            .expect("the settings extract");
        config.validate().expect("the settings are valid");
        Fixture {
            hub: Hub::with_metrics(&config, Metrics::new()).expect("the store starts"),
            tokens: JoinTokens::new(&config).expect("the join keys"),
            resume: ResumeKeys::new(&config).expect("the resume secret"),
        }
    }

    fn admission(&self) -> Admission<'_> {
        Admission {
            hub: &self.hub,
            tokens: &self.tokens,
            resume: &self.resume,
        }
    }

    fn token(&self, room: &str, name: Option<&str>) -> String {
        self.tokens
            .mint(&MintRequest {
                room: room.to_owned(),
                name: name.map(str::to_owned),
                ttl: Duration::from_secs(600),
                ..MintRequest::default()
            })
            .expect("a token")
    }

    /// A join that must succeed.
    async fn joined(&self, name: &str, token: Option<&str>, from: &str) -> Admitted {
        self.admission()
            .join(room(name), empty(), token, ip(from))
            .await
            .unwrap_or_else(|error| panic!("join {name} from {from}: {}", error.code()))
    }

    async fn snapshot(&self) -> Snapshot {
        let mut rooms = Vec::new();
        for name in ROOMS {
            let peers = self.hub.room(&room(name).unwrap()).await.expect("a room");
            rooms.push(peers.map(|peers| {
                let mut ids: Vec<_> = peers.iter().map(|peer| peer.peer_id.to_string()).collect();
                ids.sort();
                ids
            }));
        }
        Snapshot {
            counts: self.hub.counts().await.expect("the counts"),
            rooms,
        }
    }

    /// Asserts that the join is refused with `code` (`why`: which refusals applied) and that it
    /// changed nothing.
    async fn refused(
        &self,
        why: &str,
        join: (Result<RoomName, Error>, Result<JoinRequest, Error>),
        token: Option<&str>,
        from: Option<IpAddr>,
        code: &str,
    ) {
        let before = self.snapshot().await;
        let (room, request) = join;
        let answer = self.admission().join(room, request, token, from).await;
        assert_eq!(answer.err().map(|error| error.code()), Some(code), "{why}");
        assert_eq!(
            self.snapshot().await,
            before,
            "{why}: the refused join changed something"
        );
    }
}

store_tests! {
    /// The join rate wins over every other refusal, and every join is charged to it, whatever
    /// its fate: a join with a bad room name too (the path is checked after the rate).
    async fn the_rate_wins_over_everything_and_charges_every_join() {
        let server = Fixture::new(json!({
            "join_burst": 3,
            "join_rate_per_sec": 0.001,
            "max_peers_per_room": 1,
            "resume_secret": RESUME_SECRET,
        }));
        server.joined("here", None, CLIENT).await;
        let bad_room = || Err(Error::InvalidRoomName("a test's bad room name"));
        server
            .refused("a bad room name, charged", (bad_room(), empty()), None, ip(CLIENT), "invalid_room_name")
            .await;
        server
            .refused("a bad body, charged", (room("here"), Err(Error::InvalidJson("x".into()))), None, ip(CLIENT), "invalid_json")
            .await;
        // The burst is spent.
        let cases = [
            ("the rate and a bad room name", (bad_room(), empty())),
            ("the rate and a bad body", (room("here"), Err(Error::InvalidJson("x".into())))),
            ("the rate and a bad resume credential", (room("new"), resuming("not-a-credential"))),
            ("the rate and a full room", (room("here"), empty())),
            ("the rate alone", (room("new"), empty())),
        ];
        for (why, join) in cases {
            server.refused(why, join, None, ip(CLIENT), "too_many_joins").await;
        }
        server.joined("new", None, OTHER).await;
    }

    /// A bad room name wins over a bad body, and the body's name over its meta.
    async fn the_path_wins_over_the_body() {
        let server = Fixture::new(json!({}));
        let bad_room = Err(Error::InvalidRoomName("a test's bad room name"));
        server
            .refused("a bad room name and a bad body", (bad_room, Err(Error::InvalidJson("x".into()))), None, ip(CLIENT), "invalid_room_name")
            .await;
        let both = JoinRequest {
            name: Some("x".repeat(65)),
            meta: raw("[1]"),
            resume: None,
        };
        server
            .refused("a bad name and a bad meta", (room("here"), Ok(both)), None, ip(CLIENT), "invalid_name")
            .await;
    }

    /// The body wins over the join token: a malformed body, a bad name or a bad meta is told so
    /// whatever the token.
    async fn the_body_wins_over_the_token() {
        let server = Fixture::new(json!({"join_auth": "required", "join_keys": {"k": KEY}}));
        server
            .refused("a malformed body and no token", (room("here"), Err(Error::InvalidJson("x".into()))), None, ip(CLIENT), "invalid_json")
            .await;
        let long_name = JoinRequest { name: Some("x".repeat(65)), ..JoinRequest::default() };
        server
            .refused("a bad name and a bad token", (room("here"), Ok(long_name)), Some("not-a-token"), ip(CLIENT), "invalid_name")
            .await;
        let array_meta = JoinRequest { meta: raw("[1]"), ..JoinRequest::default() };
        server
            .refused("a bad meta and no token", (room("here"), Ok(array_meta)), None, ip(CLIENT), "invalid_meta")
            .await;
    }

    /// The join token (and its claims) wins over the resume credential and over the store's
    /// checks.
    async fn the_token_wins_over_the_resume_credential_and_the_store() {
        let server = Fixture::new(json!({
            "join_auth": "required",
            "join_keys": {"k": KEY},
            "resume_secret": RESUME_SECRET,
            "max_peers_per_room": 1,
            "max_rooms": 1,
        }));
        let alice = server.joined("here", Some(&server.token("here", None)), CLIENT).await;
        let credential = alice.resume.expect("a resume credential");
        server
            .refused("no token and a bad resume credential", (room("here"), resuming("not-a-credential")), None, ip(CLIENT), "missing_join_token")
            .await;
        server
            .refused("no token and a present peer's credential", (room("here"), resuming(&credential)), None, ip(CLIENT), "missing_join_token")
            .await;
        server
            .refused("a token for another room and a full room", (room("here"), empty()), Some(&server.token("other", None)), ip(CLIENT), "room_not_allowed")
            .await;
        let contradicted = JoinRequest {
            name: Some("Bob".into()),
            resume: Some("not-a-credential".into()),
            meta: None,
        };
        server
            .refused("a contradicted claim and a bad resume credential", (room("here"), Ok(contradicted)), Some(&server.token("here", Some("Alice"))), ip(CLIENT), "claim_mismatch")
            .await;
        server
            .refused("no token and a server at max_rooms", (room("new"), empty()), None, ip(CLIENT), "missing_join_token")
            .await;
    }

    /// Without `resume_secret`, a credential is refused (`resume_not_enabled`) after the token
    /// and before the store.
    async fn resume_not_enabled_sits_between_the_token_and_the_store() {
        let server = Fixture::new(json!({
            "join_auth": "optional",
            "join_keys": {"k": KEY},
            "max_peers_per_room": 1,
        }));
        server.joined("here", None, CLIENT).await;
        server
            .refused("a bad token and a credential", (room("here"), resuming("anything")), Some("not-a-token"), ip(CLIENT), "invalid_join_token")
            .await;
        server
            .refused("a credential and a full room", (room("here"), resuming("anything")), None, ip(CLIENT), "resume_not_enabled")
            .await;
    }

    /// The resume credential wins over the store's checks: a bad one, or one for another room,
    /// is told so even when the room is full or the server and the client at their limits.
    async fn the_resume_credential_wins_over_the_store() {
        let server = Fixture::new(json!({
            "resume_secret": RESUME_SECRET,
            "max_peers_per_room": 1,
            "max_rooms": 1,
            "max_peers_per_client": 1,
            "max_rooms_per_client": 1,
        }));
        let alice = server.joined("here", None, CLIENT).await;
        let credential = alice.resume.expect("a resume credential");
        server
            .refused("a bad credential and a full room", (room("here"), resuming("not-a-credential")), None, ip(CLIENT), "invalid_resume")
            .await;
        server
            .refused("another room's credential, max_rooms and the client's limits", (room("new"), resuming(&credential)), None, ip(CLIENT), "invalid_resume")
            .await;
    }

    /// `peer_present` wins over a full room and the client's limits: a credential never takes a
    /// live peer's place, and says so first.
    async fn peer_present_wins_over_room_full_and_the_client_limits() {
        let server = Fixture::new(json!({
            "resume_secret": RESUME_SECRET,
            "max_peers_per_room": 1,
            "max_peers_per_client": 1,
            "max_rooms_per_client": 1,
        }));
        let alice = server.joined("here", None, CLIENT).await;
        let credential = alice.resume.expect("a resume credential");
        server
            .refused("a present peer in a full room, from an address at its limits", (room("here"), resuming(&credential)), None, ip(CLIENT), "peer_present")
            .await;
    }

    /// `room_full` wins over the client's limits; and a full room is not a new one, so a server
    /// at `max_rooms` still answers `room_full` for it.
    async fn room_full_wins_over_the_client_limits_and_max_rooms() {
        let server = Fixture::new(json!({
            "max_peers_per_room": 1,
            "max_rooms": 1,
            "max_peers_per_client": 1,
            "max_rooms_per_client": 1,
        }));
        server.joined("here", None, CLIENT).await;
        server
            .refused("a full room, at max_rooms, from an address at its limits", (room("here"), empty()), None, ip(CLIENT), "room_full")
            .await;
    }

    /// `too_many_rooms` (the server's limit) wins over the client's limits.
    async fn max_rooms_wins_over_the_client_limits() {
        let server = Fixture::new(json!({
            "max_rooms": 1,
            "max_peers_per_client": 1,
            "max_rooms_per_client": 1,
        }));
        server.joined("here", None, CLIENT).await;
        server
            .refused("a new room at max_rooms, from an address at its limits", (room("new"), empty()), None, ip(CLIENT), "too_many_rooms")
            .await;
    }

    /// The address's peers win over its rooms; its rooms alone refuse a room new to it only.
    async fn peers_per_client_win_over_rooms_per_client() {
        let server = Fixture::new(json!({"max_peers_per_client": 2, "max_rooms_per_client": 1}));
        server.joined("here", None, CLIENT).await;
        server
            .refused("a new room for an address at its rooms", (room("new"), empty()), None, ip(CLIENT), "too_many_rooms_for_client")
            .await;
        server.joined("here", None, CLIENT).await;
        server
            .refused("an address at its peers and its rooms", (room("new"), empty()), None, ip(CLIENT), "too_many_peers_for_client")
            .await;
        server.joined("new", None, OTHER).await;
    }
}
