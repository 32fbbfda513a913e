//! How a peer and a message are kept in Redis: the token's digest instead of the token, the
//! peer's record, and a stored message.

use sha2::{Digest, Sha256};

use crate::error::{ApiResult, Error};
use crate::identity::PeerId;
use crate::message::EncodedMessage;
use crate::store::PeerInfo;

/// SHA-256 of a peer token, in hex: what Redis keeps instead of the token, so that a look at
/// Redis (or a dump of it) reveals no credential, and comparing digests leaks nothing useful
/// about the token through timing.
///
/// The first 128 bits are kept: as hard to find a token for as the whole, and half the bytes in
/// Redis for every peer.
pub(super) fn digest(token: &str) -> String {
    let hash = Sha256::digest(token.as_bytes());
    let mut hex = String::with_capacity(32);
    for byte in &hash[..16] {
        hex.push(char::from_digit(u32::from(byte >> 4), 16).unwrap_or('0'));
        hex.push(char::from_digit(u32::from(byte & 0xf), 16).unwrap_or('0'));
    }
    hex
}

/// A message as the room scripts keep it: `<type> <envelope without id>`.
pub(super) fn stored(message: &EncodedMessage) -> String {
    format!("{} {}", message.kind(), message.body())
}

/// A peer's name and meta as Redis keeps them: the peer id is the record's field.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct StoredInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) meta: Option<Box<serde_json::value::RawValue>>,
}

/// The peer `id` from its stored name and meta.
pub(super) fn parse_info(id: &str, info: &str) -> ApiResult<PeerInfo> {
    let malformed = || Error::Internal("a peer record in Redis is malformed");
    let peer_id = PeerId::parse(id).ok_or_else(malformed)?;
    let StoredInfo { name, meta } = serde_json::from_str(info).map_err(|_| malformed())?;
    Ok(PeerInfo {
        peer_id,
        name,
        meta,
    })
}

/// Peer `id`'s record, `<join seq>\n<token digest>\n<client key>\n<name and meta JSON>` → (seq,
/// info).
pub(super) fn parse_record(id: &str, record: &str) -> ApiResult<(u64, PeerInfo)> {
    let mut parts = record.splitn(4, '\n');
    let (Some(seq), Some(_digest), Some(_client), Some(info)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Error::Internal("a peer record in Redis is malformed"));
    };
    let seq = seq
        .parse()
        .map_err(|_| Error::Internal("a peer record in Redis is malformed"))?;
    Ok((seq, parse_info(id, info)?))
}
