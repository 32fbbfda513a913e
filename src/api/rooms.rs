//! Joining, leaving and looking at rooms.

use rocket::http::Status;
use rocket::response::status::Created;
use rocket::serde::json::Json;
use rocket::State;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use std::net::IpAddr;

use crate::api::auth::{BearerHeader, Token};
use crate::api::body::JsonBody;
use crate::api::client::ClientAddress;
use crate::api::ice::{self, StunUrl};
use crate::config::{Config, IceServer, JoinAuth};
use crate::error::{ApiResult, Error};
use crate::hub::{Hub, PeerInfo};
use crate::ice::IceConfig;
use crate::identity::{PeerId, RoomName};
use crate::join_token::{JoinClaims, JoinTokens};
use crate::logging;
use crate::message::JsonObject;
use crate::relay_routes::{peer_url, RelayRoute};
use crate::resume::ResumeKeys;

/// The longest display name, in characters: enough for a full name, short enough for a tile.
const MAX_NAME_CHARS: usize = 64;
/// The largest `meta` object, in bytes: room for an avatar URL and a few flags, not a payload.
const MAX_META_BYTES: usize = 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    meta: Option<Box<RawValue>>,
    /// A resume credential from an earlier join response: join under that peer id.
    #[serde(default)]
    resume: Option<String>,
}

#[derive(Serialize)]
pub struct JoinResponse {
    room: String,
    peer_id: PeerId,
    /// The peer's secret; this response is the only place it ever appears.
    token: String,
    /// The credential to rejoin as this peer after the server forgot it; `null` without a
    /// `resume_secret`.
    resume: Option<String>,
    name: Option<String>,
    peers: Vec<PeerInfo>,
    ice_servers: Vec<IceServer>,
    /// Unix seconds when the TURN credentials in `ice_servers` expire; `null` without TURN.
    ice_servers_expires_at: Option<u64>,
    ice_servers_url: String,
    events_url: String,
    poll_url: String,
    send_url: String,
    leave_url: String,
    heartbeat_secs: f64,
    poll_max_wait_secs: f64,
    peer_timeout_secs: f64,
}

#[derive(Serialize)]
pub struct RoomResponse {
    room: String,
    peers: Vec<PeerInfo>,
}

/// What a join needs besides the hub: who may join, and from where.
pub struct Admission<'r> {
    tokens: &'r JoinTokens,
    resume: &'r ResumeKeys,
    client: Option<IpAddr>,
    token: BearerHeader,
}

#[rocket::async_trait]
impl<'r> rocket::request::FromRequest<'r> for Admission<'r> {
    type Error = Error;

    async fn from_request(
        request: &'r rocket::Request<'_>,
    ) -> rocket::request::Outcome<Self, Error> {
        let (Some(tokens), Some(resume)) = (
            request.rocket().state::<JoinTokens>(),
            request.rocket().state::<ResumeKeys>(),
        ) else {
            let error = Error::Internal("the join admission state is not managed");
            return rocket::request::Outcome::Error((error.status(), error));
        };
        let client = ClientAddress::of(request).0;
        let token = BearerHeader::of(request);
        rocket::request::Outcome::Success(Admission {
            tokens,
            resume,
            client,
            token,
        })
    }
}

#[post("/rooms/<room>/peers", data = "<body>")]
pub async fn join(
    hub: &State<Hub>,
    config: &State<Config>,
    ice: &State<IceConfig>,
    stun: StunUrl,
    admission: Admission<'_>,
    room: Result<RoomName, Error>,
    body: Result<JsonBody<Option<JsonObject<JoinRequest>>>, Error>,
) -> ApiResult<Created<Json<JoinResponse>>> {
    let room = room?;
    let client = admission.client;
    let joined = admit_and_join(hub, &admission, &room, body)
        .await
        .inspect_err(|error| {
            // The address that was refused, for operators; the token never.
            let client = client.map_or_else(|| "-".to_owned(), |client| client.to_string());
            logging::info(format_args!(
                "join refused room={room} client={client} error={}",
                error.code()
            ));
        })?;
    let (joined, name) = joined;
    let peer_url = peer_url(&room, joined.peer_id);
    let resume = admission.resume.issue(&room, joined.peer_id);
    let ice_servers = ice::for_peer(ice, joined.peer_id, stun);
    let response = JoinResponse {
        room: room.to_string(),
        peer_id: joined.peer_id,
        token: joined.token.reveal().to_owned(),
        resume,
        name,
        peers: joined.peers,
        ice_servers: ice_servers.ice_servers,
        ice_servers_expires_at: ice_servers.expires_at,
        ice_servers_url: format!("{peer_url}/ice-servers"),
        events_url: RelayRoute::Events.url(&room, joined.peer_id),
        poll_url: RelayRoute::Poll.url(&room, joined.peer_id),
        send_url: RelayRoute::Send.url(&room, joined.peer_id),
        leave_url: peer_url.clone(),
        heartbeat_secs: config.heartbeat_secs,
        poll_max_wait_secs: config.poll_max_wait_secs,
        peer_timeout_secs: config.peer_timeout_secs,
    };
    Ok(Created::new(peer_url).body(Json(response)))
}

/// The join's checks in order (docs/API.md, "Which error wins"): the client's join rate (first:
/// every join is charged to it, and its refusal wins over any other, so that a flood of bad
/// tokens is held to it too), the body, the token and its claims, the resume credential, then the
/// store's checks, in the order [`NewPeer`] states. The store charges the rate of a join that
/// reaches it (on Redis, in the admission's round trip); a join refused before is charged here.
///
/// [`NewPeer`]: crate::store::NewPeer
async fn admit_and_join(
    hub: &Hub,
    admission: &Admission<'_>,
    room: &RoomName,
    body: Result<JsonBody<Option<JsonObject<JoinRequest>>>, Error>,
) -> ApiResult<(crate::hub::Joined, Option<String>)> {
    let checked = check_request(admission, room, body);
    let CheckedJoin {
        resumed,
        name,
        meta,
        sub,
    } = match checked {
        Ok(checked) => checked,
        Err(error) => {
            // Charged all the same, and the rate's refusal wins: the hub charges the joins that
            // reach it, in the store's first round trip.
            if let Some(client) = admission.client {
                hub.charge_join(client).await?;
            }
            return Err(error);
        }
    };
    let joined = hub
        .join_as(room, resumed, name.clone(), meta, admission.client)
        .await?;
    if let Some(sub) = sub {
        // `sub` is the application's and may hold anything: quoted, so it cannot forge a line.
        logging::info(format_args!(
            "join token room={room} peer={} sub={sub:?}",
            joined.peer_id
        ));
    }
    Ok((joined, name))
}

/// A join request that passed the checks that need no store.
struct CheckedJoin {
    /// The peer id of a verified resume credential.
    resumed: Option<PeerId>,
    name: Option<String>,
    meta: Option<Box<RawValue>>,
    /// The join token's `sub`, for the log.
    sub: Option<String>,
}

/// The checks of a join that need no store: the body, the token and its claims, the resume
/// credential.
fn check_request(
    admission: &Admission<'_>,
    room: &RoomName,
    body: Result<JsonBody<Option<JsonObject<JoinRequest>>>, Error>,
) -> ApiResult<CheckedJoin> {
    let request = body?.0.map_or(
        JoinRequest {
            name: None,
            meta: None,
            resume: None,
        },
        |JsonObject(request)| request,
    );
    let name = request.name.map(validate_name).transpose()?;
    let meta = request.meta.map(validate_meta).transpose()?;
    let claims = admission.tokens.admit(admission.token.as_deref(), room)?;
    let JoinClaims { sub, name, meta } = match claims {
        None => JoinClaims {
            sub: None,
            name,
            meta,
        },
        Some(claims) => apply_claims(claims, name, meta)?,
    };
    let resumed = request
        .resume
        .as_deref()
        .map(|credential| admission.resume.verify(room, credential))
        .transpose()?;
    Ok(CheckedJoin {
        resumed,
        name,
        meta,
        sub,
    })
}

/// The peer's name and meta (and the token's `sub`) when a token was presented: the token's,
/// which the body may repeat but not contradict, or the body's for a claim the token leaves
/// out. The token's claims meet the same rules as a body's.
fn apply_claims(
    claims: JoinClaims,
    name: Option<String>,
    meta: Option<Box<RawValue>>,
) -> ApiResult<JoinClaims> {
    let name = match (claims.name, name) {
        (Some(claimed), Some(sent)) if claimed != sent => return Err(Error::ClaimMismatch("name")),
        (Some(claimed), _) => Some(validate_name(claimed).map_err(|error| {
            Error::InvalidJoinToken(format!("the claim `name`: {}", error.message()).into())
        })?),
        (None, sent) => sent,
    };
    let meta = match (claims.meta, meta) {
        (Some(claimed), Some(sent)) if !same_json(&claimed, &sent) => {
            return Err(Error::ClaimMismatch("meta"))
        }
        (Some(claimed), _) => Some(validate_meta(claimed).map_err(|error| {
            Error::InvalidJoinToken(format!("the claim `meta`: {}", error.message()).into())
        })?),
        (None, sent) => sent,
    };
    Ok(JoinClaims {
        sub: claims.sub,
        name,
        meta,
    })
}

/// Whether two JSON texts hold the same value (key order and spacing aside).
fn same_json(a: &RawValue, b: &RawValue) -> bool {
    let parse = |raw: &RawValue| serde_json::from_str::<serde_json::Value>(raw.get()).ok();
    parse(a).is_some() && parse(a) == parse(b)
}

fn validate_name(name: String) -> ApiResult<String> {
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(Error::InvalidName("a name has at most 64 characters"));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::InvalidName(
            "a name may not contain control characters",
        ));
    }
    Ok(name)
}

fn validate_meta(meta: Box<RawValue>) -> ApiResult<Box<RawValue>> {
    if !meta.get().starts_with('{') {
        return Err(Error::InvalidMeta("meta must be a JSON object"));
    }
    if meta.get().len() > MAX_META_BYTES {
        return Err(Error::InvalidMeta("meta is larger than 1024 bytes"));
    }
    Ok(meta)
}

/// The credentials a look at a room or a peer may present: a peer token (`Authorization:
/// Bearer` or `?token=`, as the peer's other requests send it) or a join token (the header only,
/// as for a join).
pub struct LookCredentials<'r> {
    tokens: &'r JoinTokens,
    peer_token: Token,
    bearer: BearerHeader,
}

#[rocket::async_trait]
impl<'r> rocket::request::FromRequest<'r> for LookCredentials<'r> {
    type Error = Error;

    async fn from_request(
        request: &'r rocket::Request<'_>,
    ) -> rocket::request::Outcome<Self, Error> {
        let Some(tokens) = request.rocket().state::<JoinTokens>() else {
            let error = Error::Internal("the join tokens are not managed");
            return rocket::request::Outcome::Error((error.status(), error));
        };
        let peer_token = Token::find(request.headers().get_one("Authorization"), || {
            request.query_value::<String>("token").and_then(Result::ok)
        });
        rocket::request::Outcome::Success(LookCredentials {
            tokens,
            peer_token,
            bearer: BearerHeader::of(request),
        })
    }
}

impl LookCredentials<'_> {
    /// Under `join_auth = "required"`, rooms are invite-only, and so is looking at them: only a
    /// request with a credential for `room` (a valid join token for it, or the token of one of
    /// its peers) may. Any other gets `credential_required`, whether or not the room exists, so
    /// that rooms cannot be found by guessing names. Under `open` and `optional`, anyone may.
    async fn admit(&self, hub: &Hub, room: &RoomName) -> ApiResult<()> {
        if self.tokens.mode() != JoinAuth::Required {
            return Ok(());
        }
        if let Some(token) = self.bearer.as_deref() {
            if self.tokens.verify(token, room).is_ok() {
                return Ok(());
            }
        }
        if let Some(token) = self.peer_token.as_deref() {
            match hub.identify(room, Some(token)).await {
                Ok(_) => return Ok(()),
                Err(Error::StoreUnavailable) => return Err(Error::StoreUnavailable),
                Err(_) => {}
            }
        }
        Err(Error::CredentialRequired)
    }
}

#[get("/rooms/<room>")]
pub async fn room(
    hub: &State<Hub>,
    credentials: LookCredentials<'_>,
    room: Result<RoomName, Error>,
) -> ApiResult<Json<RoomResponse>> {
    let room = room?;
    credentials.admit(hub, &room).await?;
    let peers = hub.room(&room).await?.ok_or(Error::RoomNotFound)?;
    Ok(Json(RoomResponse {
        room: room.to_string(),
        peers,
    }))
}

#[get("/rooms/<room>/peers/<peer>")]
pub async fn peer(
    hub: &State<Hub>,
    credentials: LookCredentials<'_>,
    room: Result<RoomName, Error>,
    peer: Result<PeerId, Error>,
) -> ApiResult<Json<PeerInfo>> {
    let room = room?;
    let peer = peer?;
    credentials.admit(hub, &room).await?;
    Ok(Json(hub.peer(&room, peer).await?))
}

#[delete("/rooms/<room>/peers/<peer>")]
pub async fn leave(
    hub: &State<Hub>,
    room: Result<RoomName, Error>,
    peer: Result<PeerId, Error>,
    token: Token,
) -> ApiResult<Status> {
    hub.leave(&room?, peer?, token.as_deref()).await?;
    Ok(Status::NoContent)
}

/// The same as `DELETE`, for `navigator.sendBeacon`, which can only POST. Its body (whatever the
/// browser sends) is ignored.
#[post("/rooms/<room>/peers/<peer>/leave")]
pub async fn leave_beacon(
    hub: &State<Hub>,
    room: Result<RoomName, Error>,
    peer: Result<PeerId, Error>,
    token: Token,
) -> ApiResult<Status> {
    leave(hub, room, peer, token).await
}
