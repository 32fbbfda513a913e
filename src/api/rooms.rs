//! Joining, leaving and looking at rooms.

use rocket::http::Status;
use rocket::response::status::Created;
use rocket::serde::json::Json;
use rocket::State;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::api::auth::Token;
use crate::api::body::JsonBody;
use crate::api::ice::{self, StunUrl};
use crate::config::{Config, IceServer};
use crate::error::{ApiResult, Error};
use crate::hub::{Hub, PeerInfo};
use crate::ice::IceConfig;
use crate::identity::{PeerId, RoomName};

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
}

#[derive(Serialize)]
pub struct JoinResponse {
    room: String,
    peer_id: PeerId,
    /// The peer's secret; this response is the only place it ever appears.
    token: String,
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

fn peer_url(room: &RoomName, peer: PeerId) -> String {
    format!("/api/rooms/{room}/peers/{peer}")
}

#[post("/rooms/<room>/peers", data = "<body>")]
pub async fn join(
    hub: &State<Hub>,
    config: &State<Config>,
    ice: &State<IceConfig>,
    stun: StunUrl,
    room: Result<RoomName, Error>,
    body: Result<JsonBody<Option<JoinRequest>>, Error>,
) -> ApiResult<Created<Json<JoinResponse>>> {
    let room = room?;
    let request = body?.0.unwrap_or(JoinRequest {
        name: None,
        meta: None,
    });
    let name = request.name.map(validate_name).transpose()?;
    let meta = request.meta.map(validate_meta).transpose()?;
    let joined = hub.join(&room, name.clone(), meta).await?;
    let peer_url = peer_url(&room, joined.peer_id);
    let ice_servers = ice::for_peer(ice, joined.peer_id, stun);
    let response = JoinResponse {
        room: room.to_string(),
        peer_id: joined.peer_id,
        token: joined.token.reveal().to_owned(),
        name,
        peers: joined.peers,
        ice_servers: ice_servers.ice_servers,
        ice_servers_expires_at: ice_servers.expires_at,
        ice_servers_url: format!("{peer_url}/ice-servers"),
        events_url: format!("{peer_url}/events"),
        poll_url: format!("{peer_url}/messages"),
        send_url: format!("/api/rooms/{room}/messages"),
        leave_url: peer_url.clone(),
        heartbeat_secs: config.heartbeat_secs,
        poll_max_wait_secs: config.poll_max_wait_secs,
        peer_timeout_secs: config.peer_timeout_secs,
    };
    Ok(Created::new(peer_url).body(Json(response)))
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

#[get("/rooms/<room>")]
pub async fn room(
    hub: &State<Hub>,
    room: Result<RoomName, Error>,
) -> ApiResult<Json<RoomResponse>> {
    let room = room?;
    let peers = hub.room(&room).await?.ok_or(Error::RoomNotFound)?;
    Ok(Json(RoomResponse {
        room: room.to_string(),
        peers,
    }))
}

#[get("/rooms/<room>/peers/<peer>")]
pub async fn peer(
    hub: &State<Hub>,
    room: Result<RoomName, Error>,
    peer: Result<PeerId, Error>,
) -> ApiResult<Json<PeerInfo>> {
    Ok(Json(hub.peer(&room?, peer?).await?))
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
