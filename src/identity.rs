//! Names and secrets that identify rooms and peers: validated room names, peer ids and the bearer
//! tokens that prove a request speaks for a peer.
//!
//! Validation lives in constructors, so a `RoomName` or `PeerId` that exists is always well formed
//! and the rest of the crate never re-checks.

use std::fmt;

use subtle::ConstantTimeEq;
use uuid::Uuid;

/// A room's name: 1 to 64 characters of `A-Z a-z 0-9 . _ -`, and neither `.` nor `..`.
///
/// The alphabet is URL-safe, so a name is copied into URLs without encoding, and `.`/`..` are
/// refused so that no name looks like a path segment a proxy or client would normalise away.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomName(String);

/// Why a room name was refused; the message is written for the person who chose it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidRoomName(pub &'static str);

impl RoomName {
    /// The longest name accepted, in bytes (every allowed character is one byte).
    pub const MAX_LEN: usize = 64;

    pub fn parse(name: &str) -> Result<Self, InvalidRoomName> {
        if name.is_empty() || name.len() > Self::MAX_LEN {
            return Err(InvalidRoomName("a room name has 1 to 64 characters"));
        }
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if !name.chars().all(allowed) {
            return Err(InvalidRoomName(
                "a room name may only contain A-Z, a-z, 0-9, '.', '_' and '-'",
            ));
        }
        if name == "." || name == ".." {
            return Err(InvalidRoomName("'.' and '..' are not room names"));
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A peer's public identity: a random (v4) UUID, shown to the other peers of its room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct PeerId(Uuid);

impl PeerId {
    pub fn random() -> Self {
        Self(Uuid::new_v4())
    }

    pub fn parse(text: &str) -> Option<Self> {
        Uuid::parse_str(text).ok().map(Self)
    }

    /// The length of a peer id as text: a hyphenated UUID.
    pub const LEN: usize = uuid::fmt::Hyphenated::LENGTH;

    /// The id as text (what `Display` writes), into `buffer`, without the formatting machinery.
    pub fn encode(self, buffer: &mut [u8; Self::LEN]) -> &str {
        self.0.hyphenated().encode_lower(buffer)
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// A peer's secret: 256 bits from the operating system's CSPRNG, written as 64 hex digits.
///
/// Only the peer that joined ever sees it. `Debug` is redacted so that it cannot reach a log by
/// accident, and comparison runs in constant time so that response timing reveals nothing.
#[derive(Clone)]
pub struct PeerToken(String);

impl PeerToken {
    /// Bytes of randomness; 256 bits is well past the 128 needed to make guessing hopeless.
    const BYTES: usize = 32;

    /// A fresh token. Fails only if the OS has no randomness to give, which is not survivable
    /// for a server that hands out secrets, so the caller reports it rather than degrading.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; Self::BYTES];
        getrandom::fill(&mut bytes)?;
        let mut hex = String::with_capacity(Self::BYTES * 2);
        for byte in bytes {
            hex.push(char::from_digit(u32::from(byte >> 4), 16).unwrap_or('0'));
            hex.push(char::from_digit(u32::from(byte & 0xf), 16).unwrap_or('0'));
        }
        Ok(Self(hex))
    }

    /// Whether `presented` is this token, in time that depends only on the lengths.
    ///
    /// Word by word: the differences of every 8 bytes are folded together without a branch, and
    /// the fold is compared once, by `subtle` (which keeps the compiler from turning that last
    /// step into an early exit). `subtle`'s own slice comparison takes a barrier per byte, about
    /// 10 instructions a byte, and a send compares its token with every peer's in the room.
    pub fn matches(&self, presented: &str) -> bool {
        let (ours, theirs) = (self.0.as_bytes(), presented.as_bytes());
        if ours.len() != theirs.len() {
            return false;
        }
        let word = |bytes: &[u8]| u64::from_ne_bytes(bytes.try_into().unwrap_or_default());
        let (mut our_words, mut their_words) = (ours.chunks_exact(8), theirs.chunks_exact(8));
        let mut difference = 0u64;
        for (a, b) in (&mut our_words).zip(&mut their_words) {
            difference |= word(a) ^ word(b);
        }
        for (a, b) in our_words.remainder().iter().zip(their_words.remainder()) {
            difference |= u64::from(a ^ b);
        }
        difference.ct_eq(&0).into()
    }

    /// The secret itself, for the one response that hands it to its peer.
    pub fn reveal(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PeerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PeerToken(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names_follow_the_documented_alphabet() {
        for good in ["a", "Team-Standup_2.0", &"x".repeat(64), "..."] {
            assert!(RoomName::parse(good).is_ok(), "{good} should be accepted");
        }
        for bad in ["", ".", "..", "a b", "café", "a/b", &"x".repeat(65), "a?b"] {
            assert!(RoomName::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn tokens_are_long_random_and_compare_exactly() {
        let a = PeerToken::generate().unwrap();
        let b = PeerToken::generate().unwrap();
        assert_eq!(a.reveal().len(), 64);
        assert_ne!(a.reveal(), b.reveal());
        assert!(a.matches(a.reveal()));
        assert!(!a.matches(b.reveal()));
        assert!(!a.matches(&a.reveal()[..63]));
        assert_eq!(format!("{a:?}"), "PeerToken(<redacted>)");
    }

    /// A token differing from the peer's in any one byte, in a whole word or in the tail, is
    /// not the peer's; only the same bytes are.
    #[test]
    fn one_byte_off_anywhere_does_not_match() {
        for length in [64, 13, 1] {
            let token = PeerToken("a".repeat(length));
            assert!(token.matches(&"a".repeat(length)));
            for position in 0..length {
                let mut presented = "a".repeat(length).into_bytes();
                presented[position] = b'b';
                let presented = String::from_utf8(presented).unwrap();
                assert!(
                    !token.matches(&presented),
                    "{length} bytes, off at {position}"
                );
            }
        }
        assert!(!PeerToken(String::new()).matches("a"));
        assert!(PeerToken(String::new()).matches(""));
    }
}
