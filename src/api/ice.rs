//! ICE servers for a peer: in the join response, and from `GET …/ice-servers` to refresh TURN
//! credentials before they expire.
//!
//! The refresh endpoint is scoped to the peer (`/api/rooms/{room}/peers/{peer_id}/ice-servers`)
//! rather than a bare `/api/ice-servers`: the hub finds a token within its room, and a lookup by
//! token alone would need either a scan of every peer of every room under the hub's lock or a
//! second index that every join and leave (and a future shared store) must keep in step.

use std::time::SystemTime;

use rocket::request::{FromRequest, Outcome, Request};
use rocket::serde::json::Json;
use rocket::State;

use crate::api::auth::Token;
use crate::config::Config;
use crate::error::{ApiResult, Error};
use crate::hub::Hub;
use crate::ice::{IceConfig, IceServers};
use crate::identity::{PeerId, RoomName};
use crate::stun::StunServer;

/// The URL of the built-in STUN server as the requesting client should reach it, or `None` when
/// it is not running. Without `stun_url` in the config, it is the host the client used to reach
/// signpost (its `Host` header) with the STUN port.
pub struct StunUrl(pub Option<String>);

#[rocket::async_trait]
impl<'r> FromRequest<'r> for StunUrl {
    type Error = std::convert::Infallible;

    async fn from_request(request: &'r Request<'_>) -> Outcome<Self, Self::Error> {
        let rocket = request.rocket();
        let (Some(server), Some(config)) = (rocket.state::<StunServer>(), rocket.state::<Config>())
        else {
            return Outcome::Success(StunUrl(None));
        };
        if let Some(url) = &config.stun_url {
            return Outcome::Success(StunUrl(Some(url.clone())));
        }
        let address = server.local_addr();
        let host = match request.host() {
            Some(host) => host.domain().to_string(),
            // HTTP/1.0 without Host: the bound address, if it names one.
            None if !address.ip().is_unspecified() => match address.ip() {
                std::net::IpAddr::V6(v6) => format!("[{v6}]"),
                v4 => v4.to_string(),
            },
            None => return Outcome::Success(StunUrl(None)),
        };
        Outcome::Success(StunUrl(Some(format!("stun:{host}:{}", address.port()))))
    }
}

/// The ICE servers for `peer`, as of now.
pub fn for_peer(ice: &IceConfig, peer: PeerId, stun: StunUrl) -> IceServers {
    ice.for_peer(peer, stun.0, SystemTime::now())
}

#[get("/rooms/<room>/peers/<peer>/ice-servers")]
pub async fn ice_servers(
    hub: &State<Hub>,
    ice: &State<IceConfig>,
    room: Result<RoomName, Error>,
    peer: Result<PeerId, Error>,
    token: Token<'_>,
    stun: StunUrl,
) -> ApiResult<Json<IceServers>> {
    let peer = peer?;
    hub.authenticate(&room?, peer, token.as_deref()).await?;
    Ok(Json(for_peer(ice, peer, stun)))
}
