//! ICE servers for a peer: the configured ones, the built-in STUN server, and TURN with
//! ephemeral credentials in the form coturn checks with `use-auth-secret`.
//!
//! coturn's "TURN REST API" scheme: the username is `<unix expiry>:<anything>` and the credential
//! is `base64(HMAC-SHA1(static-auth-secret, username))`. coturn recomputes the credential from
//! the username with the same secret and refuses it once the expiry has passed, so signpost and
//! coturn share nothing at run time but the secret, which never leaves either server.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use sha1::Sha1;

use crate::config::{Config, IceServer, Secret};
use crate::identity::PeerId;

/// What a peer passes to `new RTCPeerConnection({iceServers})`, and until when it works.
#[derive(Debug, Clone, Serialize)]
pub struct IceServers {
    pub ice_servers: Vec<IceServer>,
    /// Unix time (seconds) at which the TURN credentials expire; `None` when there are none.
    pub expires_at: Option<u64>,
}

/// TURN URLs and the secret their credentials are derived from.
#[derive(Debug, Clone)]
pub struct Turn {
    urls: Vec<String>,
    secret: Secret,
    ttl: Duration,
}

/// Everything needed to answer "which ICE servers may this peer use", fixed at start-up.
#[derive(Debug, Clone)]
pub struct IceConfig {
    /// `ice_servers` from the config, handed out as they are.
    fixed: Vec<IceServer>,
    turn: Option<Turn>,
}

impl IceConfig {
    pub fn new(config: &Config) -> Self {
        let turn = config.turn_secret.as_ref().map(|secret| Turn {
            urls: config.turn_urls.clone(),
            secret: secret.clone(),
            ttl: config.turn_credential_ttl(),
        });
        Self {
            fixed: config.ice_servers.clone(),
            turn,
        }
    }

    /// The ICE servers for `peer` as of `now`: the configured ones, then `stun_url` (the built-in
    /// STUN server, when it runs), then TURN with credentials that expire `ttl` after `now`.
    pub fn for_peer(&self, peer: PeerId, stun_url: Option<String>, now: SystemTime) -> IceServers {
        let mut ice_servers = self.fixed.clone();
        if let Some(url) = stun_url {
            ice_servers.push(IceServer {
                urls: vec![url],
                username: None,
                credential: None,
            });
        }
        let mut expires_at = None;
        if let Some(turn) = &self.turn {
            let expiry = unix_seconds(now) + turn.ttl.as_secs();
            let username = format!("{expiry}:{peer}");
            let credential = turn_credential(&turn.secret, &username);
            ice_servers.push(IceServer {
                urls: turn.urls.clone(),
                username: Some(username),
                credential: Some(credential),
            });
            expires_at = Some(expiry);
        }
        IceServers {
            ice_servers,
            expires_at,
        }
    }
}

/// `base64(HMAC-SHA1(secret, username))`, the password coturn expects for `username`.
pub fn turn_credential(secret: &Secret, username: &str) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(secret.expose())
        .expect("HMAC takes keys of any length");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn unix_seconds(time: SystemTime) -> u64 {
    // A clock before 1970 is a broken clock; credentials then expire at once rather than never.
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixed vector computed independently, with
    /// `echo -n "1700000000:alice" | openssl dgst -sha1 -hmac "north" -binary | base64`.
    #[test]
    fn credential_matches_an_openssl_computed_vector() {
        assert_eq!(
            turn_credential(&Secret::new("north"), "1700000000:alice"),
            OPENSSL_VECTOR
        );
    }

    const OPENSSL_VECTOR: &str = "Cd/49soE35ICqcJF/bCTn8Z4OyE=";

    #[test]
    fn credentials_expire_ttl_after_now_and_name_the_peer() {
        let config = Config {
            turn_urls: vec!["turn:turn.example.org".into()],
            turn_secret: Some(Secret::new("s")),
            turn_credential_ttl_secs: 600,
            ..Config::default()
        };
        let peer = PeerId::random();
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let servers = IceConfig::new(&config).for_peer(peer, None, now);
        assert_eq!(servers.expires_at, Some(1_600));
        let turn = servers.ice_servers.last().unwrap();
        assert_eq!(
            turn.username.as_deref(),
            Some(format!("1600:{peer}").as_str())
        );
    }
}
