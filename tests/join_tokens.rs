//! Join tokens: the application's backend signs who may join which room, under which name, and
//! signpost holds every join to it (docs/API.md, "Join tokens"). One test per row of the error
//! table, the attacks other servers fell for, and tokens from an independent implementation
//! (PyJWT).

#[macro_use]
mod common;

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::{external, process, Events, Server, EVENT_DEADLINE};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const KEY_ONE: &str = "key-one-a-secret-of-at-least-32-bytes";
const KEY_TWO: &str = "key-two-another-secret-of-32-bytes-or-more";

/// Minted once by PyJWT 2.6 (Debian python3-jwt), expiring in 2100:
/// `jwt.encode({"aud": "signpost", "exp": 4102444800, "iat": 1767225600, "room": "fixture-room",
/// "name": "Fixture", "meta": {"role": "guest"}, "sub": "fixture-user"}, FIXTURE_KEY,
/// algorithm="HS256", headers={"kid": "fixture"})`.
const FIXTURE_TOKEN: &str = "eyJhbGciOiJIUzI1NiIsImtpZCI6ImZpeHR1cmUiLCJ0eXAiOiJKV1QifQ.eyJhdWQiOiJzaWducG9zdCIsImV4cCI6NDEwMjQ0NDgwMCwiaWF0IjoxNzY3MjI1NjAwLCJyb29tIjoiZml4dHVyZS1yb29tIiwibmFtZSI6IkZpeHR1cmUiLCJtZXRhIjp7InJvbGUiOiJndWVzdCJ9LCJzdWIiOiJmaXh0dXJlLXVzZXIifQ.ElvZbZz6g8sCGsZHz2bKcvQ7cWPtTcfwNazrBuubGeg";
const FIXTURE_KEY: &str = "fixture-key-of-at-least-thirty-two-bytes";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A server in `mode` with two keys, `one` and `two`.
async fn server(mode: &str) -> Server {
    Server::with(json!({
        "join_auth": mode,
        "join_keys": {"one": KEY_ONE, "two": KEY_TWO},
    }))
    .await
}

/// Valid claims for `room`, expiring in five minutes.
fn claims(room: &str) -> Value {
    json!({"aud": "signpost", "exp": now() + 300, "iat": now(), "room": room})
}

/// `claims` signed with `secret` by jsonwebtoken, under `kid` if given.
fn sign(claims: &Value, secret: &str, kid: Option<&str>) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = kid.map(str::to_owned);
    let key = EncodingKey::from_secret(secret.as_bytes()).unwrap();
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

/// A token with a header of our own making and any signature: for headers no honest library
/// would write.
fn forge(header: Value, claims: &Value, signature: &[u8]) -> String {
    let part = |value: &Value| URL_SAFE_NO_PAD.encode(value.to_string());
    format!(
        "{}.{}.{}",
        part(&header),
        part(claims),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

/// A join's answer: status, `WWW-Authenticate`, and the JSON body.
struct Answer {
    status: u16,
    authenticate: Option<String>,
    body: Value,
    text: String,
}

async fn join(server: &Server, room: &str, token: Option<&str>, body: Value) -> Answer {
    let mut request = server
        .client
        .post(server.url(&format!("/api/rooms/{room}/peers")))
        .json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("join request");
    let status = response.status().as_u16();
    let authenticate = response
        .headers()
        .get("WWW-Authenticate")
        .map(|value| value.to_str().unwrap().to_owned());
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer {
        status,
        authenticate,
        body,
        text,
    }
}

/// `GET path` with `token` as `Authorization: Bearer`: under `required`, rooms and peers are
/// shown only to a request with a credential for the room.
async fn look(server: &Server, path: &str, token: &str) -> (u16, Value) {
    let response = server
        .client
        .get(server.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// `GET path` with a join token for `room` as the credential.
async fn look_invited(server: &Server, room: &str) -> (u16, Value) {
    let token = sign(&claims(room), KEY_ONE, Some("one"));
    look(server, &format!("/api/rooms/{room}"), &token).await
}

/// Asserts a 401 with `code`, `WWW-Authenticate: Bearer`, and a message that does not echo the
/// token (not even its signature).
fn assert_unauthorized(answer: &Answer, code: &str, token: &str, what: &str) {
    assert_eq!(answer.status, 401, "{what}: {}", answer.text);
    assert_eq!(answer.body["error"], code, "{what}: {}", answer.text);
    assert_eq!(answer.authenticate.as_deref(), Some("Bearer"), "{what}");
    let signature = token.rsplit('.').next().unwrap_or(token);
    assert!(
        signature.len() < 8 || !answer.text.contains(signature),
        "{what}: the answer echoes the token: {}",
        answer.text
    );
}

/// The fixed PyJWT-minted fixture joins its room, with its name and meta: no Python needed.
#[tokio::test]
async fn a_fixture_token_minted_by_pyjwt_joins() {
    let server = Server::with(json!({
        "join_auth": "required",
        "join_keys": {"fixture": FIXTURE_KEY},
    }))
    .await;
    let answer = join(&server, "fixture-room", Some(FIXTURE_TOKEN), json!({})).await;
    assert_eq!(answer.status, 201, "{}", answer.text);
    assert_eq!(answer.body["name"], "Fixture");
    let (_, listing) = look(&server, "/api/rooms/fixture-room", FIXTURE_TOKEN).await;
    assert_eq!(listing["peers"][0]["meta"], json!({"role": "guest"}));
    assert!(
        !listing.to_string().contains("fixture-user"),
        "sub is never shown to other peers"
    );
}

/// Mints a token with Debian's PyJWT (the test fails when PyJWT is missing:
/// `external::can_run`).
fn pyjwt(test: &str, claims: &Value, secret: &str, kid: Option<&str>) -> Option<String> {
    if !external::can_run(test, external::python_module("jwt", "python3-jwt")) {
        return None;
    }
    let script = "import jwt, json, sys\n\
                  claims, secret, kid = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]\n\
                  headers = {'kid': kid} if kid else None\n\
                  print(jwt.encode(claims, secret, algorithm='HS256', headers=headers))";
    let mut command = Command::new("/usr/bin/python3");
    command.args(["-c", script, &claims.to_string(), secret, kid.unwrap_or("")]);
    let output = process::run("python3", command, EVENT_DEADLINE);
    assert!(
        output.status.success(),
        "PyJWT minted a token: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(String::from_utf8(output.stdout).unwrap().trim().to_owned())
}

/// Tokens minted now by an independent implementation (PyJWT) join, with and without `kid`.
#[cfg_attr(
    signpost_missing = "python3-jwt",
    ignore = "needs PyJWT: apt-get install python3-jwt (README.md, Prerequisites)"
)]
#[tokio::test]
async fn tokens_minted_by_pyjwt_join() {
    let server = server("required").await;
    let mut claims = claims("py-room");
    claims["name"] = json!("Py");
    let Some(with_kid) = pyjwt("tokens_minted_by_pyjwt_join", &claims, KEY_TWO, Some("two")) else {
        return;
    };
    let answer = join(&server, "py-room", Some(&with_kid), json!({})).await;
    assert_eq!(answer.status, 201, "{}", answer.text);
    assert_eq!(answer.body["name"], "Py");
    let without_kid = pyjwt("tokens_minted_by_pyjwt_join", &claims, KEY_ONE, None).unwrap();
    let answer = join(&server, "py-room", Some(&without_kid), json!({})).await;
    assert_eq!(answer.status, 201, "{}", answer.text);
}

/// Error table, row 1: `required` and no token is 401 `missing_join_token`; a peer token or a
/// `?token=` query does not count as one.
#[tokio::test]
async fn a_required_room_refuses_a_join_without_a_token() {
    let server = server("required").await;
    let answer = join(&server, "closed", None, json!({"name": "Eve"})).await;
    assert_unauthorized(&answer, "missing_join_token", "", "no token");
    let good = sign(&claims("closed"), KEY_ONE, Some("one"));
    let response = server
        .client
        .post(server.url(&format!("/api/rooms/closed/peers?token={good}")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        401,
        "a join token only counts in the header"
    );
    assert_eq!(
        look_invited(&server, "closed").await.0,
        404,
        "no one joined"
    );
}

/// Error table, row 2: every way a token can be malformed, forged or mis-typed is 401
/// `invalid_join_token`, and nobody joins.
#[tokio::test]
async fn invalid_tokens_are_refused_with_invalid_join_token() {
    let server = server("required").await;
    let room = "guarded";
    let good = claims(room);
    let with = |change: &dyn Fn(&mut Value)| {
        let mut claims = good.clone();
        change(&mut claims);
        claims
    };
    let hs256 = json!({"alg": "HS256", "typ": "JWT", "kid": "one"});
    let cases: Vec<(&str, String)> = vec![
        ("not a JWT", "not-a-jwt".to_owned()),
        ("two parts", "eyJhbGciOiJIUzI1NiJ9.e30".to_owned()),
        (
            "bad signature",
            forge(hs256.clone(), &good, b"0123456789abcdef0123456789abcdef"),
        ),
        ("unknown kid", sign(&good, KEY_ONE, Some("three"))),
        (
            "signed by key two under key one's kid",
            sign(&good, KEY_TWO, Some("one")),
        ),
        (
            "signed by an unknown key, no kid",
            sign(&good, "x".repeat(40).as_str(), None),
        ),
        (
            "alg none",
            forge(json!({"alg": "none", "typ": "JWT"}), &good, b""),
        ),
        ("alg HS512", {
            let mut header = Header::new(Algorithm::HS512);
            header.kid = Some("one".into());
            let key = EncodingKey::from_secret(KEY_ONE.as_bytes()).unwrap();
            jsonwebtoken::encode(&header, &good, &key).unwrap()
        }),
        (
            "alg RS256",
            forge(json!({"alg": "RS256", "kid": "one"}), &good, &[7; 256]),
        ),
        (
            "missing aud",
            sign(
                &with(&|c| drop(c.as_object_mut().unwrap().remove("aud"))),
                KEY_ONE,
                Some("one"),
            ),
        ),
        (
            "wrong aud",
            sign(
                &with(&|c| c["aud"] = json!("another-service")),
                KEY_ONE,
                Some("one"),
            ),
        ),
        (
            "aud a number",
            sign(&with(&|c| c["aud"] = json!(7)), KEY_ONE, Some("one")),
        ),
        (
            "missing exp",
            sign(
                &with(&|c| drop(c.as_object_mut().unwrap().remove("exp"))),
                KEY_ONE,
                Some("one"),
            ),
        ),
        (
            "exp a string",
            sign(
                &with(&|c| c["exp"] = json!((now() + 300).to_string())),
                KEY_ONE,
                Some("one"),
            ),
        ),
        (
            "missing room",
            sign(
                &with(&|c| drop(c.as_object_mut().unwrap().remove("room"))),
                KEY_ONE,
                Some("one"),
            ),
        ),
        (
            "room a number",
            sign(&with(&|c| c["room"] = json!(42)), KEY_ONE, Some("one")),
        ),
        (
            "name a number",
            sign(&with(&|c| c["name"] = json!(42)), KEY_ONE, Some("one")),
        ),
        (
            "meta a string",
            sign(&with(&|c| c["meta"] = json!("{}")), KEY_ONE, Some("one")),
        ),
        (
            "sub an object",
            sign(&with(&|c| c["sub"] = json!({})), KEY_ONE, Some("one")),
        ),
        (
            "iat a string",
            sign(&with(&|c| c["iat"] = json!("now")), KEY_ONE, Some("one")),
        ),
        (
            "nbf a string",
            sign(&with(&|c| c["nbf"] = json!("later")), KEY_ONE, Some("one")),
        ),
        (
            "nbf ten minutes ahead",
            sign(
                &with(&|c| c["nbf"] = json!(now() + 600)),
                KEY_ONE,
                Some("one"),
            ),
        ),
        (
            "name over 64 characters",
            sign(
                &with(&|c| c["name"] = json!("n".repeat(65))),
                KEY_ONE,
                Some("one"),
            ),
        ),
    ];
    for (what, token) in &cases {
        let answer = join(&server, room, Some(token), json!({})).await;
        assert_unauthorized(&answer, "invalid_join_token", token, what);
    }
    assert_eq!(
        look_invited(&server, "guarded").await.0,
        404,
        "no one joined"
    );
    // The control: the same claims, well signed, join.
    let answer = join(
        &server,
        room,
        Some(&sign(&good, KEY_ONE, Some("one"))),
        json!({}),
    )
    .await;
    assert_eq!(answer.status, 201, "{}", answer.text);
}

/// Error table, row 3, and the leeway's edges: 20 s past `exp` still joins (leeway 60 s); 600 s
/// past is 401 `join_token_expired`; an `nbf` 20 s ahead joins too.
#[tokio::test]
async fn expiry_is_checked_with_the_leeway() {
    let server = server("required").await;
    let mut recent = claims("clock");
    recent["exp"] = json!(now() - 20);
    recent["nbf"] = json!(now() + 20);
    let answer = join(
        &server,
        "clock",
        Some(&sign(&recent, KEY_ONE, None)),
        json!({}),
    )
    .await;
    assert_eq!(answer.status, 201, "within the leeway: {}", answer.text);
    let mut stale = claims("clock");
    stale["exp"] = json!(now() - 600);
    let token = sign(&stale, KEY_ONE, None);
    let answer = join(&server, "clock", Some(&token), json!({})).await;
    assert_unauthorized(&answer, "join_token_expired", &token, "600 s past exp");
}

/// Error table, row 4: a valid token for another room is 403 `room_not_allowed`.
#[tokio::test]
async fn a_token_for_another_room_is_403_room_not_allowed() {
    let server = server("required").await;
    let token = sign(&claims("room-a"), KEY_ONE, Some("one"));
    let answer = join(&server, "room-b", Some(&token), json!({})).await;
    assert_eq!(answer.status, 403, "{}", answer.text);
    assert_eq!(answer.body["error"], "room_not_allowed");
    assert!(!answer.text.contains(token.rsplit('.').next().unwrap()));
    assert_eq!(look_invited(&server, "room-b").await.0, 404);
}

/// Two keys in rotation: tokens signed by either join, whether or not they name their `kid`.
#[tokio::test]
async fn both_keys_of_a_rotation_are_accepted() {
    let server = server("required").await;
    for (secret, kid) in [
        (KEY_ONE, Some("one")),
        (KEY_TWO, Some("two")),
        (KEY_ONE, None),
        (KEY_TWO, None),
    ] {
        let answer = join(
            &server,
            "rotation",
            Some(&sign(&claims("rotation"), secret, kid)),
            json!({}),
        )
        .await;
        assert_eq!(answer.status, 201, "{kid:?}: {}", answer.text);
    }
}

/// The token's name and meta become the peer's: in the join response, in the `join` event the
/// others receive, and in the room listing; a body may repeat them, not contradict them.
#[tokio::test]
async fn name_and_meta_come_from_the_token() {
    let server = server("required").await;
    let host = sign(&claims("named"), KEY_ONE, None);
    let host = join(&server, "named", Some(&host), json!({"name": "Host"})).await;
    assert_eq!(host.status, 201, "{}", host.text);
    let host_peer = common::Peer {
        id: host.body["peer_id"].as_str().unwrap().to_owned(),
        token: host.body["token"].as_str().unwrap().to_owned(),
        room: "named".into(),
        base: server.base.clone(),
        client: server.client.clone(),
        joined: host.body.clone(),
    };
    let mut events: Events = host_peer.events(None).await;

    let mut alice = claims("named");
    alice["name"] = json!("Alice");
    alice["meta"] = json!({"role": "speaker", "avatar": "a.png"});
    alice["sub"] = json!("user-1234");
    let token = sign(&alice, KEY_TWO, Some("two"));

    let contradicting = join(&server, "named", Some(&token), json!({"name": "Mallory"})).await;
    assert_eq!(contradicting.status, 403, "{}", contradicting.text);
    assert_eq!(contradicting.body["error"], "claim_mismatch");
    let other_meta = join(
        &server,
        "named",
        Some(&token),
        json!({"meta": {"role": "host"}}),
    )
    .await;
    assert_eq!(
        other_meta.body["error"], "claim_mismatch",
        "{}",
        other_meta.text
    );

    // The same meta, keys in another order, is no contradiction.
    let body = json!({"name": "Alice", "meta": {"avatar": "a.png", "role": "speaker"}});
    let answer = join(&server, "named", Some(&token), body).await;
    assert_eq!(answer.status, 201, "{}", answer.text);
    assert_eq!(answer.body["name"], "Alice");

    let event = events.next_message().await;
    assert_eq!(event["type"], "join");
    assert_eq!(event["data"]["name"], "Alice");
    assert_eq!(
        event["data"]["meta"],
        json!({"role": "speaker", "avatar": "a.png"})
    );
    let (_, listing) = look(&server, "/api/rooms/named", &host_peer.token).await;
    assert_eq!(listing["peers"][1]["name"], "Alice");
    assert_eq!(listing["peers"][1]["meta"]["role"], "speaker");
    assert!(
        !listing.to_string().contains("user-1234"),
        "sub stays private"
    );
    assert!(
        !event.to_string().contains("user-1234"),
        "sub stays private"
    );
}

/// `optional`: a join without a token is an open join, but a token that is sent must be valid
/// and its claims apply.
#[tokio::test]
async fn optional_mode_checks_only_the_tokens_it_is_given() {
    let server = server("optional").await;
    let open = join(&server, "lobby", None, json!({"name": "Walk-in"})).await;
    assert_eq!(open.status, 201, "{}", open.text);
    let answer = join(&server, "lobby", Some("not-a-jwt"), json!({})).await;
    assert_unauthorized(
        &answer,
        "invalid_join_token",
        "not-a-jwt",
        "optional, bad token",
    );
    let mut invited = claims("lobby");
    invited["name"] = json!("Invited");
    let answer = join(
        &server,
        "lobby",
        Some(&sign(&invited, KEY_ONE, None)),
        json!({}),
    )
    .await;
    assert_eq!(answer.body["name"], "Invited", "{}", answer.text);
    let answer = join(
        &server,
        "other",
        Some(&sign(&invited, KEY_ONE, None)),
        json!({}),
    )
    .await;
    assert_eq!(answer.body["error"], "room_not_allowed");
    let (status, listing) = server.get_json("/api/rooms/lobby").await;
    assert_eq!(
        status, 200,
        "optional: anyone may look, as before: {listing}"
    );
    let walk_in = open.body["peer_id"].as_str().unwrap();
    let path = format!("/api/rooms/lobby/peers/{walk_in}");
    assert_eq!(server.get_json(&path).await.0, 200);
}

store_tests! {
    /// Under `required`, a room and its peers are shown only to a request with a credential
    /// for that room: the token of one of its peers (header or `?token=`) or a join token for it
    /// (header). Without one, or with one for another room, the answer is `401
    /// credential_required`, the same bytes whether or not the room exists, so invite-only rooms
    /// cannot be found by guessing names.
    async fn a_required_server_shows_rooms_only_to_those_invited() {
    let server = server("required").await;
    let mut invite = claims("private");
    invite["name"] = json!("Host");
    let host = join(&server, "private", Some(&sign(&invite, KEY_ONE, None)), json!({})).await;
    assert_eq!(host.status, 201, "{}", host.text);
    let host_id = host.body["peer_id"].as_str().unwrap();
    let host_token = host.body["token"].as_str().unwrap();
    let elsewhere = join(&server, "elsewhere", Some(&sign(&claims("elsewhere"), KEY_TWO, None)), json!({})).await;
    let elsewhere_token = elsewhere.body["token"].as_str().unwrap();

    /// Status, `WWW-Authenticate` and body of `GET path` with `token` as a bearer (if any).
    async fn raw(server: &Server, path: &str, token: Option<&str>) -> (u16, Option<String>, String) {
        let mut request = server.client.get(server.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let authenticate = response
            .headers()
            .get("WWW-Authenticate")
            .map(|value| value.to_str().unwrap().to_owned());
        (response.status().as_u16(), authenticate, response.text().await.unwrap())
    }
    let refused = raw(&server, "/api/rooms/nowhere", None).await;
    assert_eq!(refused.0, 401, "{}", refused.2);
    assert_eq!(refused.1.as_deref(), Some("Bearer"));
    let body: Value = serde_json::from_str(&refused.2).unwrap();
    assert_eq!(body["error"], "credential_required");
    let other_room = sign(&claims("elsewhere"), KEY_ONE, None);
    let expired = {
        let mut stale = claims("private");
        stale["exp"] = json!(now() - 600);
        sign(&stale, KEY_ONE, None)
    };
    let peer_path = format!("/api/rooms/private/peers/{host_id}");
    let absent_peer_path = format!("/api/rooms/nowhere/peers/{host_id}");
    for path in ["/api/rooms/private", "/api/rooms/nowhere", &peer_path, &absent_peer_path] {
        for (what, token) in [
            ("no credential", None),
            ("a join token for another room", Some(other_room.as_str())),
            ("an expired join token", Some(expired.as_str())),
            ("a peer token of another room", Some(elsewhere_token)),
            ("garbage", Some("not-a-token")),
        ] {
            assert_eq!(raw(&server, path, token).await, refused, "{path}, {what}");
        }
    }
    let query = format!("/api/rooms/private?token={}", sign(&claims("private"), KEY_ONE, None));
    assert_eq!(raw(&server, &query, None).await, refused, "a join token only counts in the header");

    let (status, listing) = look(&server, "/api/rooms/private", host_token).await;
    assert_eq!((status, listing["peers"][0]["name"].as_str()), (200, Some("Host")), "{listing}");
    let (status, listing) = server.get_json(&format!("/api/rooms/private?token={host_token}")).await;
    assert_eq!(status, 200, "a peer token as ?token=: {listing}");
    assert_eq!(look(&server, &peer_path, host_token).await.0, 200);
    assert_eq!(look_invited(&server, "private").await.0, 200, "a join token for the room");
    let (status, answer) = look_invited(&server, "nowhere").await;
    assert_eq!((status, answer["error"].as_str()), (404, Some("room_not_found")), "invited, told the truth");
}
}

/// The typed client on an invite-only server: a peer that joined with a join token lists its
/// room with its own token (`Peer::room_peers`), while `Client::room`, which sends no credential,
/// is refused with `credential_required`.
#[tokio::test]
async fn the_typed_client_lists_an_invite_only_room_as_its_peer() {
    let server = server("required").await;
    let client = signpost::client::Client::new(&server.base);
    let invite = |name: &str| {
        let mut claims = claims("private");
        claims["name"] = json!(name);
        signpost::client::JoinOptions::default().join_token(sign(&claims, KEY_ONE, None))
    };
    let host = client
        .join("private", invite("Host"))
        .await
        .expect("the host joins");
    let guest = client
        .join("private", invite("Guest"))
        .await
        .expect("the guest joins");
    let names: Vec<_> = guest
        .room_peers()
        .await
        .expect("a peer lists its own room")
        .into_iter()
        .map(|peer| (peer.peer_id, peer.name))
        .collect();
    assert_eq!(
        names,
        [
            (host.id().to_owned(), Some("Host".to_owned())),
            (guest.id().to_owned(), Some("Guest".to_owned())),
        ]
    );
    let refused = client
        .room("private")
        .await
        .expect_err("no credential, no listing");
    assert_eq!(refused.code(), Some("credential_required"));
}

/// A join token minted by PyJWT opens the look at its room as it opens the join.
#[tokio::test]
async fn a_join_token_minted_by_pyjwt_shows_its_room() {
    let server = server("required").await;
    let Some(token) = pyjwt(
        "a_join_token_minted_by_pyjwt_shows_its_room",
        &claims("py-look"),
        KEY_ONE,
        Some("one"),
    ) else {
        return;
    };
    assert_eq!(
        join(&server, "py-look", Some(&token), json!({"name": "Py"}))
            .await
            .status,
        201
    );
    let (status, listing) = look(&server, "/api/rooms/py-look", &token).await;
    assert_eq!(
        (status, listing["peers"][0]["name"].as_str()),
        (200, Some("Py")),
        "{listing}"
    );
    assert_eq!(server.get_json("/api/rooms/py-look").await.0, 401);
}

/// `open` (the default) does not look at a join's `Authorization` header at all.
#[tokio::test]
async fn open_mode_ignores_join_tokens() {
    let server = Server::start().await;
    let answer = join(&server, "public", Some("anything"), json!({"name": "Bob"})).await;
    assert_eq!(answer.status, 201, "{}", answer.text);
}

/// Each refusal is counted by its code in `/metrics`.
#[tokio::test]
async fn refusals_are_counted_by_code() {
    let server = server("required").await;
    join(&server, "counted", None, json!({})).await;
    join(&server, "counted", Some("x.y.z"), json!({})).await;
    let response = server
        .client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap();
    let text = response.text().await.unwrap();
    for code in ["missing_join_token", "invalid_join_token"] {
        let line = format!("signpost_rejections_total{{code=\"{code}\"}} 1");
        assert!(text.contains(&line), "{line} in\n{text}");
    }
}

/// A mode that needs keys without any, and a key under 32 bytes, stop the server at start.
#[tokio::test]
async fn unusable_token_settings_stop_the_server_from_starting() {
    for settings in [
        json!({"join_auth": "required"}),
        json!({"join_auth": "optional", "join_keys": {}}),
        json!({"join_keys": {"short": "only-31-bytes-long-secret-here!"}}),
        json!({"join_auth": "sometimes", "join_keys": {"one": KEY_ONE}}),
        json!({"trusted_proxies": ["10.0.0.0/33"]}),
        json!({"join_rate_per_sec": 0}),
    ] {
        match signpost::build(common::test_figment(settings.clone()))
            .ignite()
            .await
        {
            Ok(_) => panic!("{settings} should be refused"),
            // Looking at a Rocket error marks it handled (else it panics when dropped).
            Err(error) => assert!(
                matches!(error.kind(), rocket::error::ErrorKind::FailedFairings(_)),
                "{settings}: refused by the config fairing, not {error}"
            ),
        }
    }
}

/// `signpost token` prints a token that the server, configured the same way, accepts; with two
/// keys it asks which.
#[tokio::test]
async fn the_token_subcommand_mints_tokens_the_server_accepts() {
    let server = server("required").await;
    let keys = format!("{{join_keys={{one=\"{KEY_ONE}\",two=\"{KEY_TWO}\"}}}}");
    let mint = |extra: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_signpost"));
        command
            .arg("token")
            .args(["--room", "cli", "--name", "Alice", "--ttl", "5m"])
            .args(extra)
            .env("ROCKET_SIGNPOST", &keys);
        process::run("signpost token", command, EVENT_DEADLINE)
    };
    let output = mint(&["--kid", "two", "--meta", r#"{"role":"host"}"#]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let token = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    let answer = join(&server, "cli", Some(&token), json!({})).await;
    assert_eq!(answer.status, 201, "{}", answer.text);
    assert_eq!(answer.body["name"], "Alice");
    let ambiguous = mint(&[]);
    assert!(!ambiguous.status.success());
    assert!(String::from_utf8_lossy(&ambiguous.stderr).contains("--kid"));
}
