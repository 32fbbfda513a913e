//! Resume credentials: how a peer the server forgot (a restart of a memory-store server, a
//! timeout while it was cut off) rejoins under the same peer id.
//!
//! With `resume_secret` set, every join response carries a credential: an HS256 JWT whose
//! claims are the room and the peer id, audience `signpost-resume`, no expiry (it is only good
//! while that peer id is absent from the room, and the secret can be rotated). Any instance with
//! the secret verifies it without stored state, so it survives the restart that forgot the
//! peer. A join that presents it gets that peer id back, unless the peer is in the room now
//! (`peer_present`: a credential never takes over a live peer's place), it names another room,
//! or it was not signed with this secret (`invalid_resume`).
//!
//! Without the secret no credential is issued and one presented is refused
//! (`resume_not_enabled`): the pages then recognise a rejoined participant by the key it proves
//! over their existing data channel (docs/PROTOCOL.md, section 7).

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::error::{ApiResult, Error};
use crate::identity::{PeerId, RoomName};

/// The `aud` of every resume credential, so that no other token signed with the same secret
/// (a join token, say, if an operator reused it) passes for one.
const AUDIENCE: &str = "signpost-resume";

#[derive(Serialize, Deserialize)]
struct Claims {
    aud: String,
    room: String,
    peer: PeerId,
}

/// Signs and checks resume credentials; `None` inside when no `resume_secret` is configured.
pub struct ResumeKeys {
    keys: Option<(EncodingKey, DecodingKey)>,
    /// HS256 only, `aud` required, no `exp` (see the module doc).
    validation: Validation,
}

impl ResumeKeys {
    pub fn new(config: &Config) -> Result<Self, String> {
        let keys = match &config.resume_secret {
            None => None,
            Some(secret) => Some((
                EncodingKey::from_secret(secret.expose())
                    .map_err(|_| "signpost.resume_secret is not a usable HS256 key")?,
                DecodingKey::from_secret(secret.expose())
                    .map_err(|_| "signpost.resume_secret is not a usable HS256 key")?,
            )),
        };
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["aud"]);
        validation.validate_exp = false;
        validation.validate_aud = true;
        Ok(Self { keys, validation })
    }

    /// The credential for `peer` in `room`, or `None` without a secret.
    pub fn issue(&self, room: &RoomName, peer: PeerId) -> Option<String> {
        let (encoding, _) = self.keys.as_ref()?;
        let claims = Claims {
            aud: AUDIENCE.to_owned(),
            room: room.to_string(),
            peer,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, encoding).ok()
    }

    /// The peer id `credential` entitles its holder to in `room`.
    pub fn verify(&self, room: &RoomName, credential: &str) -> ApiResult<PeerId> {
        let (_, decoding) = self.keys.as_ref().ok_or(Error::ResumeNotEnabled)?;
        let claims = jsonwebtoken::decode::<Claims>(credential, decoding, &self.validation)
            .map_err(|_| Error::InvalidResume("it was not signed by this server".into()))?
            .claims;
        if claims.room != room.as_str() {
            return Err(Error::InvalidResume("it is for another room".into()));
        }
        Ok(claims.peer)
    }
}
