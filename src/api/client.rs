//! The client address of a Rocket request, by the one rule of [`crate::client_address`]: the
//! TCP peer (which `front` hands Rocket as the request's remote), or, behind a trusted proxy,
//! the rightmost untrusted `X-Forwarded-For` entry. Rocket's own `client_ip()` is not used: it
//! believes `X-Real-IP` from anyone.

use std::net::IpAddr;

use rocket::request::Request;

use crate::client_address::TrustedProxies;

/// The address a request's limits are charged to; `None` only for a request with no remote
/// address (Rocket's local client in tests), which no limit can be charged to.
pub struct ClientAddress(pub Option<IpAddr>);

impl ClientAddress {
    pub fn of(request: &Request<'_>) -> ClientAddress {
        let Some(peer) = request.remote().map(|remote| remote.ip()) else {
            return ClientAddress(None);
        };
        let client = match request.rocket().state::<TrustedProxies>() {
            Some(trusted) => {
                let forwarded: Vec<&str> = request.headers().get("X-Forwarded-For").collect();
                trusted.client_address(peer, forwarded.into_iter())
            }
            None => crate::client_address::canonical(peer),
        };
        ClientAddress(Some(client))
    }
}
