//! Admission: whether a join is let in, and as whom. No HTTP here: `api/rooms.rs` collects the
//! request (room, body, bearer header, client address) and calls [`Admission::join`], and a test
//! can call it the same way.
//!
//! # The order of checks
//! This is the one place that states it; `docs/API.md` ("Which error wins") says the same to
//! clients, and [`NewPeer`] points here. A join is checked in this order, and the first check
//! that fails is the answer, on every store:
//!
//! 1. **The client's join rate** (`too_many_joins`): every join from a known address is charged
//!    to it, whatever its fate, and its refusal wins over any other, so that a flood of bad
//!    tokens or bodies is held to it too. A join that reaches the store is charged there, first,
//!    in the store's admission (on Redis in the same round trip); a join refused before is
//!    charged by [`Hub::charge_join`] before its refusal is returned.
//! 2. **The path and the body**: `invalid_room_name`, then the body's (`invalid_json`,
//!    `invalid_body`, ...), then `invalid_name`, `invalid_meta`.
//! 3. **The join token and its claims**, by `join_auth`: `missing_join_token`,
//!    `invalid_join_token`, `join_token_expired`, `room_not_allowed`, then `claim_mismatch` (the
//!    body contradicts the token).
//! 4. **The resume credential**: `resume_not_enabled`, `invalid_resume`.
//! 5. **The store's atomic checks**, in one step with the join itself:
//!    1. `peer_present`: a resumed join names a peer that is in the room;
//!    2. `room_full`: the room has `max_peers_per_room` peers;
//!    3. `too_many_rooms`: the room is new and the server holds `max_rooms` rooms;
//!    4. `too_many_peers_for_client`: the address holds `max_peers_per_client` peers;
//!    5. `too_many_rooms_for_client`: the room is new to the address, and it has peers in
//!       `max_rooms_per_client` rooms.
//!
//! A refused join changes nothing and holds nothing (no room slot, no count), except the one
//! join it was charged to the rate. `tests/admission.rs` pins every pair of refusals on every
//! store.
//!
//! [`NewPeer`]: crate::store::NewPeer

use std::net::IpAddr;

use serde_json::value::RawValue;

use crate::error::{ApiResult, Error};
use crate::hub::{Hub, Joined};
use crate::identity::{PeerId, RoomName};
use crate::join_token::{JoinClaims, JoinTokens};
use crate::logging;
use crate::resume::ResumeKeys;

/// The longest display name, in characters: enough for a full name, short enough for a tile.
const MAX_NAME_CHARS: usize = 64;
/// The largest `meta` object, in bytes: room for an avatar URL and a few flags, not a payload.
const MAX_META_BYTES: usize = 1024;

/// What a join asks for, as its body said it (an absent body asks for nothing).
#[derive(Debug, Default)]
pub struct JoinRequest {
    /// The display name; at most [`MAX_NAME_CHARS`] characters, no control characters.
    pub name: Option<String>,
    /// Public data about the peer: a JSON object of at most [`MAX_META_BYTES`] bytes.
    pub meta: Option<Box<RawValue>>,
    /// A resume credential from an earlier join response: join under that peer id.
    pub resume: Option<String>,
}

/// A join that was let in.
pub struct Admitted {
    /// The room it joined.
    pub room: RoomName,
    /// The new peer, its token and the peers that were there before it.
    pub joined: Joined,
    /// The peer's display name: the token's claim, else the body's.
    pub name: Option<String>,
    /// The credential to rejoin as this peer after the server forgot it; `None` without a
    /// `resume_secret`.
    pub resume: Option<String>,
}

/// Everything a join is checked against: the rooms, who may join, and resume credentials.
/// Borrowed for one join; the server holds each part for its lifetime.
#[derive(Clone, Copy)]
pub struct Admission<'a> {
    pub hub: &'a Hub,
    pub tokens: &'a JoinTokens,
    pub resume: &'a ResumeKeys,
}

/// A join request that passed the checks that need no store.
struct Checked {
    /// The peer id of a verified resume credential.
    resumed: Option<PeerId>,
    name: Option<String>,
    meta: Option<Box<RawValue>>,
    /// The join token's `sub`, for the log.
    sub: Option<String>,
}

impl Admission<'_> {
    /// Admits a join to `room` (which may have failed to parse) with `request` (whose body may
    /// have failed to parse), presenting `join_token` (`Authorization: Bearer`), from `client`
    /// (`None`: not counted against the per-client limits), in the order of the module doc.
    /// A refusal is logged with the client's address, never a token.
    pub async fn join(
        &self,
        room: Result<RoomName, Error>,
        request: Result<JoinRequest, Error>,
        join_token: Option<&str>,
        client: Option<IpAddr>,
    ) -> ApiResult<Admitted> {
        let room = match room {
            Ok(room) => room,
            Err(error) => return Err(self.charged(client, error).await),
        };
        let (joined, name) = self
            .admit(&room, request, join_token, client)
            .await
            .inspect_err(|error| {
                // The address that was refused, for operators; the token never.
                let client = client.map_or_else(|| "-".to_owned(), |client| client.to_string());
                logging::info(format_args!(
                    "join refused room={room} client={client} error={}",
                    error.code()
                ));
            })?;
        let resume = self.resume.issue(&room, joined.peer_id);
        Ok(Admitted {
            room,
            joined,
            name,
            resume,
        })
    }

    /// `error`, for a join refused before the store, once the join is charged to `client`'s
    /// rate; or the rate's own refusal, which wins. (The store charges the joins that reach it,
    /// in its first round trip.)
    async fn charged(&self, client: Option<IpAddr>, error: Error) -> Error {
        match client {
            Some(client) => self.hub.charge_join(client).await.err().unwrap_or(error),
            None => error,
        }
    }

    /// Steps 2 to 5 of the module doc, on a room whose name is valid: the joined peer and its
    /// name.
    async fn admit(
        &self,
        room: &RoomName,
        request: Result<JoinRequest, Error>,
        join_token: Option<&str>,
        client: Option<IpAddr>,
    ) -> ApiResult<(Joined, Option<String>)> {
        let Checked {
            resumed,
            name,
            meta,
            sub,
        } = match self.check(room, request, join_token) {
            Ok(checked) => checked,
            Err(error) => return Err(self.charged(client, error).await),
        };
        let joined = self
            .hub
            .join_as(room, resumed, name.clone(), meta, client)
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

    /// Steps 2 to 4 of the module doc, the checks that need no store: the body, the token and
    /// its claims, the resume credential.
    fn check(
        &self,
        room: &RoomName,
        request: Result<JoinRequest, Error>,
        join_token: Option<&str>,
    ) -> ApiResult<Checked> {
        let request = request?;
        let name = request.name.map(validate_name).transpose()?;
        let meta = request.meta.map(validate_meta).transpose()?;
        let claims = self.tokens.admit(join_token, room)?;
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
            .map(|credential| self.resume.verify(room, credential))
            .transpose()?;
        Ok(Checked {
            resumed,
            name,
            meta,
            sub,
        })
    }
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
