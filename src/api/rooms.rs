//! Joining, leaving and looking at rooms.

use rocket::http::Status;
use rocket::response::status::Created;
use rocket::serde::json::Json;
use rocket::State;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use std::net::IpAddr;

use crate::admission::{Admission, Admitted, JoinRequest};
use crate::api::auth::{BearerHeader, Token};
use crate::api::body::JsonBody;
use crate::api::client::ClientAddress;
use crate::api::ice::{self, StunUrl};
use crate::config::{Config, IceServer, JoinAuth};
use crate::error::{ApiResult, Error};
use crate::hub::{Hub, PeerInfo};
use crate::ice::IceConfig;
use crate::identity::{PeerId, RoomName};
use crate::join_token::JoinTokens;
use crate::message::JsonObject;
use crate::relay_routes::{peer_url, RelayRoute};
use crate::resume::ResumeKeys;

/// A join's body as it arrives; [`JoinRequest`] is what admission checks.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinBody {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    meta: Option<Box<RawValue>>,
    /// A resume credential from an earlier join response: join under that peer id.
    #[serde(default)]
    resume: Option<String>,
}

impl From<JoinBody> for JoinRequest {
    fn from(JoinBody { name, meta, resume }: JoinBody) -> Self {
        JoinRequest { name, meta, resume }
    }
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

/// What a join needs besides its room and body: the admission state, and who asks, from where.
pub struct Joining<'r> {
    admission: Admission<'r>,
    client: Option<IpAddr>,
    token: BearerHeader,
}

#[rocket::async_trait]
impl<'r> rocket::request::FromRequest<'r> for Joining<'r> {
    type Error = Error;

    async fn from_request(
        request: &'r rocket::Request<'_>,
    ) -> rocket::request::Outcome<Self, Error> {
        let (Some(hub), Some(tokens), Some(resume)) = (
            request.rocket().state::<Hub>(),
            request.rocket().state::<JoinTokens>(),
            request.rocket().state::<ResumeKeys>(),
        ) else {
            let error = Error::Internal("the join admission state is not managed");
            return rocket::request::Outcome::Error((error.status(), error));
        };
        rocket::request::Outcome::Success(Joining {
            admission: Admission {
                hub,
                tokens,
                resume,
            },
            client: ClientAddress::of(request).0,
            token: BearerHeader::of(request),
        })
    }
}

/// Admission (`crate::admission`, where the order of checks is stated) translated from HTTP.
#[post("/rooms/<room>/peers", data = "<body>")]
pub async fn join(
    config: &State<Config>,
    ice: &State<IceConfig>,
    stun: StunUrl,
    joining: Joining<'_>,
    room: Result<RoomName, Error>,
    body: Result<JsonBody<Option<JsonObject<JoinBody>>>, Error>,
) -> ApiResult<Created<Json<JoinResponse>>> {
    let request = body.map(|body| {
        body.0
            .map_or_else(JoinRequest::default, |JsonObject(body)| body.into())
    });
    let Admitted {
        room,
        joined,
        name,
        resume,
    } = joining
        .admission
        .join(room, request, joining.token.as_deref(), joining.client)
        .await?;
    let peer_url = peer_url(&room, joined.peer_id);
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

/// The credentials a look at a room or a peer may present: a peer token (`Authorization:
/// Bearer` or `?token=`, as the peer's other requests send it) or a join token (the header only,
/// as for a join).
pub struct LookCredentials<'r> {
    tokens: &'r JoinTokens,
    peer_token: Token<'r>,
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
        let peer_token = Token::of(request);
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
    token: Token<'_>,
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
    token: Token<'_>,
) -> ApiResult<Status> {
    leave(hub, room, peer, token).await
}
