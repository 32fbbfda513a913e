//! Join tokens: the application's backend decides who may join which room, under which name,
//! by signing a JWT that the browser presents on its join (`Authorization: Bearer <jwt>`).
//! signpost never calls the application back; it only checks the signature and the claims.
//!
//! The rules, each one a pitfall other servers fell into (see docs/API.md, "Join tokens"):
//! - HS256 only: the header's `alg` must be exactly that, so `none`, another HMAC and the
//!   public-key families are refused before any key is used.
//! - The header's `kid` picks the key among `join_keys`; without one, every key is tried, so a
//!   key can be rotated (see the README).
//! - `aud` and `exp` are required, `nbf` is checked when present, both with the leeway.
//! - Every claim signpost reads has one JSON type; a claim of another type makes the token
//!   invalid rather than absent (jsonwebtoken's CVE-2026-25537 was the opposite).
//! - Nothing here ever puts the token, or a secret, into an error message or a log line.
//!
//! No HTTP here: [`JoinTokens::admit`] takes the token the route found and the room of the path.

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::config::{Config, JoinAuth};
use crate::error::{ApiResult, Error};
use crate::identity::RoomName;

/// The claims of a valid token that decide something about the peer.
#[derive(Debug, Clone)]
pub struct JoinClaims {
    /// The application's id for the user: logged with the join, never shown to other peers.
    pub sub: Option<String>,
    /// The peer's display name; a join body may repeat it but not contradict it.
    pub name: Option<String>,
    /// The peer's `meta` object, compact JSON; a join body may repeat it but not contradict it.
    pub meta: Option<Box<RawValue>>,
}

/// What an operator asks of `signpost token`: the claims of a token to sign.
#[derive(Debug, Clone, Default)]
pub struct MintRequest {
    pub room: String,
    pub name: Option<String>,
    /// A JSON object.
    pub meta: Option<Value>,
    pub sub: Option<String>,
    /// From now until `exp`.
    pub ttl: Duration,
    /// Which of `join_keys` signs; `None` is only allowed when there is exactly one.
    pub kid: Option<String>,
}

/// The `join_auth` mode and the keys, ready to verify and to sign. Cheap to share (managed by
/// Rocket); building it decodes each secret once.
pub struct JoinTokens {
    mode: JoinAuth,
    /// `(kid, key)` in the order of the config's table (sorted by kid), never empty unless
    /// `mode` is `Open`.
    keys: Vec<(String, DecodingKey, EncodingKey)>,
    /// HS256 only, `aud` and `exp` required, `nbf` checked, the configured leeway.
    validation: Validation,
    audience: String,
}

impl JoinTokens {
    /// The verifier for a validated `config` (keys at least 32 bytes, a mode other than `open`
    /// only with keys).
    pub fn new(config: &Config) -> Result<Self, String> {
        let mut keys = Vec::with_capacity(config.join_keys.len());
        for (kid, secret) in &config.join_keys {
            let secret = secret.expose();
            let decoding = DecodingKey::from_secret(secret);
            let encoding = EncodingKey::from_secret(secret);
            match (decoding, encoding) {
                (Ok(decoding), Ok(encoding)) => keys.push((kid.clone(), decoding, encoding)),
                // The secret's content is never quoted, only its name.
                _ => {
                    return Err(format!(
                        "signpost.join_keys.{kid} is not a usable HS256 key"
                    ))
                }
            }
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[&config.join_token_audience]);
        validation.set_required_spec_claims(&["exp", "aud"]);
        validation.leeway = config.join_token_leeway_secs;
        validation.validate_exp = true;
        // Off by default in jsonwebtoken: a token meant for later must not work now.
        validation.validate_nbf = true;
        validation.validate_aud = true;
        Ok(Self {
            mode: config.join_auth,
            keys,
            validation,
            audience: config.join_token_audience.clone(),
        })
    }

    pub fn mode(&self) -> JoinAuth {
        self.mode
    }

    /// Decides a join to `room` that presents `token` (from `Authorization: Bearer`), by the
    /// `join_auth` mode: `Ok(None)` is an open join, `Ok(Some(claims))` a join the token's
    /// claims apply to. Under `open` a token is not even looked at, as before tokens existed.
    pub fn admit(&self, token: Option<&str>, room: &RoomName) -> ApiResult<Option<JoinClaims>> {
        match (self.mode, token) {
            (JoinAuth::Open, _) | (JoinAuth::Optional, None) => Ok(None),
            (JoinAuth::Required, None) => Err(Error::MissingJoinToken),
            (JoinAuth::Optional | JoinAuth::Required, Some(token)) => {
                self.verify(token, room).map(Some)
            }
        }
    }

    /// Checks `token` for a join to `room`: signature, then claims, then the room, so that a
    /// token for another room is only told so once it is otherwise valid.
    pub fn verify(&self, token: &str, room: &RoomName) -> ApiResult<JoinClaims> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| {
            invalid("it is not a compact JWS with a JSON header naming a known `alg`")
        })?;
        if header.alg != Algorithm::HS256 {
            return Err(invalid(
                "its `alg` is not HS256, the only algorithm accepted",
            ));
        }
        let claims = match &header.kid {
            Some(kid) => {
                let (_, key, _) = self
                    .keys
                    .iter()
                    .find(|(name, _, _)| name == kid)
                    .ok_or_else(|| invalid("its `kid` names no key of signpost.join_keys"))?;
                self.decode(token, key)?
            }
            None => self.decode_with_any_key(token)?,
        };
        let room_claim =
            string_claim(&claims, "room")?.ok_or_else(|| invalid("the claim `room` is missing"))?;
        let sub = string_claim(&claims, "sub")?;
        let name = string_claim(&claims, "name")?;
        let meta = match claims.get("meta") {
            None | Some(Value::Null) => None,
            Some(object @ Value::Object(_)) => serde_json::value::to_raw_value(object).ok(),
            Some(_) => return Err(invalid("the claim `meta` is not a JSON object")),
        };
        // The numeric dates were checked by jsonwebtoken as far as it reads them; `iat` it does
        // not read, and `exp`/`nbf` must be numbers, not strings it might skip.
        for date in ["exp", "nbf", "iat"] {
            match claims.get(date) {
                None | Some(Value::Null) | Some(Value::Number(_)) => {}
                Some(_) => return Err(invalid_claim_type(date)),
            }
        }
        if room_claim != room.as_str() {
            return Err(Error::RoomNotAllowed);
        }
        Ok(JoinClaims { sub, name, meta })
    }

    /// Without a `kid`, each key in turn: the first under which the signature holds decides.
    fn decode_with_any_key(&self, token: &str) -> ApiResult<Map<String, Value>> {
        for (_, key, _) in &self.keys {
            match self.decode(token, key) {
                Err(Error::InvalidJoinToken(reason)) if reason == BAD_SIGNATURE => continue,
                decided => return decided,
            }
        }
        Err(invalid(BAD_SIGNATURE))
    }

    /// Signature, `aud`, `exp` and `nbf`, by jsonwebtoken; the claims as a JSON object.
    fn decode(&self, token: &str, key: &DecodingKey) -> ApiResult<Map<String, Value>> {
        match jsonwebtoken::decode::<Map<String, Value>>(token, key, &self.validation) {
            Ok(data) => Ok(data.claims),
            Err(error) => Err(match error.kind() {
                ErrorKind::ExpiredSignature => Error::JoinTokenExpired,
                ErrorKind::InvalidSignature => invalid(BAD_SIGNATURE),
                ErrorKind::InvalidAlgorithm => {
                    invalid("its `alg` is not HS256, the only algorithm accepted")
                }
                ErrorKind::ImmatureSignature => invalid("its `nbf` is still in the future"),
                ErrorKind::InvalidAudience => {
                    Error::InvalidJoinToken(format!("its `aud` is not {:?}", self.audience).into())
                }
                ErrorKind::MissingRequiredClaim(claim) | ErrorKind::InvalidClaimFormat(claim) => {
                    match claim.as_str() {
                        "exp" => invalid("the claim `exp` is missing or not a number"),
                        "aud" => invalid("the claim `aud` is missing or not a string"),
                        "nbf" => invalid("the claim `nbf` is not a number"),
                        _ => invalid("a registered claim is missing or of the wrong type"),
                    }
                }
                _ => invalid("it is not a compact JWS whose payload is a JSON object"),
            }),
        }
    }

    /// Signs a token for `request`, as the application's backend would: `aud`, `exp`, `iat`,
    /// `room`, and `name`, `meta`, `sub` when given; the header names the key's `kid`.
    pub fn mint(&self, request: &MintRequest) -> Result<String, String> {
        let (kid, _, key) = match &request.kid {
            Some(kid) => self
                .keys
                .iter()
                .find(|(name, _, _)| name == kid)
                .ok_or_else(|| format!("no key named {kid:?} in signpost.join_keys"))?,
            None => match self.keys.as_slice() {
                [only] => only,
                [] => {
                    return Err("signpost.join_keys is empty: there is no key to sign with".into())
                }
                _ => {
                    let names: Vec<&str> = self.keys.iter().map(|(n, _, _)| n.as_str()).collect();
                    return Err(format!(
                        "signpost.join_keys has several keys; pick one with --kid ({})",
                        names.join(", ")
                    ));
                }
            },
        };
        RoomName::parse(&request.room).map_err(|invalid| format!("--room: {}", invalid.0))?;
        if let Some(meta) = &request.meta {
            if !meta.is_object() {
                return Err("--meta must be a JSON object".into());
            }
        }
        let now = unix_now();
        let mut claims = Map::new();
        claims.insert("aud".into(), self.audience.clone().into());
        claims.insert("iat".into(), now.into());
        claims.insert(
            "exp".into(),
            now.saturating_add(request.ttl.as_secs()).into(),
        );
        claims.insert("room".into(), request.room.clone().into());
        for (claim, value) in [("name", &request.name), ("sub", &request.sub)] {
            if let Some(value) = value {
                claims.insert(claim.into(), value.clone().into());
            }
        }
        if let Some(meta) = &request.meta {
            claims.insert("meta".into(), meta.clone());
        }
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(kid.clone());
        jsonwebtoken::encode(&header, &claims, key).map_err(|error| error.to_string())
    }
}

/// The reason for a signature that holds under no key; also how [`JoinTokens`] tells it from
/// other failures when it tries each key.
const BAD_SIGNATURE: &str = "its signature does not match any key of signpost.join_keys";

fn invalid(reason: &'static str) -> Error {
    Error::InvalidJoinToken(Cow::Borrowed(reason))
}

fn invalid_claim_type(claim: &str) -> Error {
    Error::InvalidJoinToken(format!("the claim `{claim}` is not a number").into())
}

/// A claim that must be a string when present (`null` counts as absent).
fn string_claim(claims: &Map<String, Value>, claim: &str) -> ApiResult<Option<String>> {
    match claims.get(claim) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(value)) => Ok(Some(value.clone())),
        Some(_) => Err(Error::InvalidJoinToken(
            format!("the claim `{claim}` is not a string").into(),
        )),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::Secret;

    const KEY_A: &str = "a-secret-of-at-least-thirty-two-bytes-1";
    const KEY_B: &str = "b-secret-of-at-least-thirty-two-bytes-2";

    fn tokens(keys: &[(&str, &str)]) -> JoinTokens {
        let config = Config {
            join_auth: JoinAuth::Required,
            join_keys: keys
                .iter()
                .map(|(kid, secret)| (kid.to_string(), Secret::new(*secret)))
                .collect::<BTreeMap<_, _>>(),
            ..Config::default()
        };
        JoinTokens::new(&config).unwrap()
    }

    fn room(name: &str) -> RoomName {
        RoomName::parse(name).unwrap()
    }

    fn mint(tokens: &JoinTokens, kid: Option<&str>) -> String {
        tokens
            .mint(&MintRequest {
                room: "demo".into(),
                name: Some("Alice".into()),
                meta: Some(serde_json::json!({"role": "host"})),
                sub: Some("user-1".into()),
                ttl: Duration::from_secs(300),
                kid: kid.map(str::to_owned),
            })
            .unwrap()
    }

    /// A minted token verifies for its room and carries its claims; for another room it is
    /// refused as such.
    #[test]
    fn minted_tokens_verify_for_their_room_only() {
        let tokens = tokens(&[("a", KEY_A)]);
        let token = mint(&tokens, None);
        let claims = tokens.verify(&token, &room("demo")).unwrap();
        assert_eq!(claims.name.as_deref(), Some("Alice"));
        assert_eq!(claims.sub.as_deref(), Some("user-1"));
        assert_eq!(claims.meta.unwrap().get(), r#"{"role":"host"}"#);
        assert!(matches!(
            tokens.verify(&token, &room("other")),
            Err(Error::RoomNotAllowed)
        ));
    }

    /// With two keys, each one's tokens verify, and a token re-labelled with the other key's
    /// `kid` does not.
    #[test]
    fn rotation_keys_are_chosen_by_kid() {
        let tokens = tokens(&[("a", KEY_A), ("b", KEY_B)]);
        let by_b = mint(&tokens, Some("b"));
        assert!(tokens.verify(&by_b, &room("demo")).is_ok());
        // Signed with b's secret but naming a's kid: a's key decides, and refuses it.
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("a".into());
        let claims = serde_json::json!({"aud": "signpost", "exp": unix_now() + 60, "room": "demo"});
        let key_b = EncodingKey::from_secret(KEY_B.as_bytes()).unwrap();
        let relabelled = jsonwebtoken::encode(&header, &claims, &key_b).unwrap();
        assert_eq!(
            tokens.verify(&relabelled, &room("demo")).unwrap_err(),
            invalid(BAD_SIGNATURE)
        );
        header.kid = None;
        let without_kid = jsonwebtoken::encode(&header, &claims, &key_b).unwrap();
        assert!(
            tokens.verify(&without_kid, &room("demo")).is_ok(),
            "each key is tried"
        );
        assert!(
            tokens.mint(&MintRequest::default()).is_err(),
            "several keys need --kid"
        );
    }

    /// Open mode never looks at a token; optional mode accepts none but checks one.
    #[test]
    fn modes_decide_whether_a_token_is_needed() {
        let mut verifier = tokens(&[("a", KEY_A)]);
        assert!(matches!(
            verifier.admit(None, &room("demo")),
            Err(Error::MissingJoinToken)
        ));
        verifier.mode = JoinAuth::Optional;
        assert!(matches!(verifier.admit(None, &room("demo")), Ok(None)));
        assert!(matches!(
            verifier.admit(Some("garbage"), &room("demo")),
            Err(Error::InvalidJoinToken(_))
        ));
        verifier.mode = JoinAuth::Open;
        assert!(matches!(
            verifier.admit(Some("garbage"), &room("demo")),
            Ok(None)
        ));
    }
}
