//! Idempotent sends: the `Idempotency-Key` a send may carry, the fingerprint of its batch, and
//! the sends a peer made under a key, remembered for a window (the memory store's copy; Redis
//! keeps the same beside the peer's mailbox, `store/redis/lua/send.lua`).
//!
//! A send retried with the same key by the same peer within `idempotency_window_secs` is
//! answered as the first was and appends nothing; the same key with another batch is refused
//! (`idempotency_key_reused`). Only accepted sends are remembered: a refusal (a 4xx, a 503) is
//! tried for real when retried. A peer remembers at most `idempotency_keys_per_peer` keys (past
//! it the oldest is forgotten), each of at most [`IdempotencyKey::MAX_LEN`] bytes and a 16-byte
//! fingerprint, and forgets them all when it leaves the room.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::identity::PeerId;
use crate::message::Draft;

/// A client's name for one send, unique among its sends: 1 to [`MAX_LEN`](Self::MAX_LEN)
/// characters of `A-Z a-z 0-9 . _ : -` (a UUID, a counter, a ULID all fit).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// The longest key: a UUID (36) with room for a prefix, and a bound on what a peer's
    /// remembered keys hold.
    pub const MAX_LEN: usize = 64;

    /// The key `text` is, or `None` if it is empty, too long or has another character.
    pub fn parse(text: &str) -> Option<Self> {
        let valid = !text.is_empty()
            && text.len() <= Self::MAX_LEN
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
        valid.then(|| Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a batch is, for telling a retry from another send under the same key: the first 128
/// bits of the SHA-256 of every message's recipient, type and data, as the hub encoded them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint([u8; 16]);

impl Fingerprint {
    /// The fingerprint of a batch given as its messages' recipients (`None`: every other
    /// peer) and envelopes.
    pub fn of<'a>(batch: impl IntoIterator<Item = (Option<PeerId>, &'a Draft)>) -> Self {
        let mut hash = Sha256::new();
        for (to, draft) in batch {
            // Each field ends with a byte no field can hold (a NUL never appears unescaped in
            // JSON, a type or a peer id), so that no two batches hash the same bytes.
            if let Some(to) = to {
                hash.update(to.to_string().as_bytes());
            }
            hash.update([0]);
            hash.update(draft.kind().as_bytes());
            hash.update([0]);
            hash.update(draft.unsigned_body().as_bytes());
            hash.update([0]);
        }
        let digest = hash.finalize();
        let mut bytes = [0; 16];
        bytes.copy_from_slice(&digest[..16]);
        Self(bytes)
    }

    /// In hex (32 characters), as Redis keeps it.
    pub fn hex(&self) -> String {
        let mut hex = String::with_capacity(32);
        for byte in self.0 {
            hex.push(char::from_digit(u32::from(byte >> 4), 16).unwrap_or('0'));
            hex.push(char::from_digit(u32::from(byte & 0xf), 16).unwrap_or('0'));
        }
        hex
    }
}

/// What a send under a key that was seen before is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recalled {
    /// The same batch: answered as the first was, with its count of accepted messages.
    Replay { accepted: usize },
    /// Another batch under the same key: refused.
    Reused,
}

/// The keyed sends one peer made within the window: at most `capacity`, the oldest forgotten
/// first. Bounded per peer and dropped with it.
#[derive(Debug)]
pub struct RecentSends {
    window: Duration,
    capacity: usize,
    /// Key → the batch's fingerprint, its accepted count and when it is forgotten.
    sends: HashMap<IdempotencyKey, (Fingerprint, usize, Instant)>,
    /// The keys of `sends` in the order they expire, which is the order they were sent in
    /// (one window for all).
    order: VecDeque<IdempotencyKey>,
}

impl RecentSends {
    pub fn new(window: Duration, capacity: usize) -> Self {
        Self {
            window,
            capacity,
            sends: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Forgets what expired by `now`.
    fn expire(&mut self, now: Instant) {
        while let Some(oldest) = self.order.front() {
            match self.sends.get(oldest) {
                Some((_, _, expires)) if *expires > now => break,
                _ => {
                    if let Some(key) = self.order.pop_front() {
                        self.sends.remove(&key);
                    }
                }
            }
        }
    }

    /// What a send of `fingerprint` under `key` at `now` is answered from memory, if anything.
    pub fn recall(
        &mut self,
        key: &IdempotencyKey,
        fingerprint: Fingerprint,
        now: Instant,
    ) -> Option<Recalled> {
        self.expire(now);
        let (seen, accepted, _) = self.sends.get(key)?;
        Some(if *seen == fingerprint {
            Recalled::Replay {
                accepted: *accepted,
            }
        } else {
            Recalled::Reused
        })
    }

    /// Remembers an accepted send of `fingerprint` under `key` (not remembered yet: `recall`
    /// answered `None`) until `now` plus the window, forgetting the oldest past the capacity.
    pub fn remember(
        &mut self,
        key: IdempotencyKey,
        fingerprint: Fingerprint,
        accepted: usize,
        now: Instant,
    ) {
        while self.order.len() >= self.capacity {
            match self.order.pop_front() {
                Some(oldest) => {
                    self.sends.remove(&oldest);
                }
                None => return,
            }
        }
        self.order.push_back(key.clone());
        self.sends
            .insert(key, (fingerprint, accepted, now + self.window));
    }

    /// Keys remembered (expired ones included until the next look).
    pub fn len(&self) -> usize {
        self.sends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sends.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::MessageType;

    fn key(text: &str) -> IdempotencyKey {
        IdempotencyKey::parse(text).unwrap()
    }

    fn fingerprint(kind: &str) -> Fingerprint {
        let draft = Draft::new(MessageType::parse_client(kind).unwrap(), None);
        Fingerprint::of([(None, &draft)])
    }

    /// Keys are 1-64 characters of the documented set, nothing else.
    #[test]
    fn keys_have_one_format() {
        for good in ["a", "0c1d-2e:3f_4.5", &"k".repeat(64)] {
            assert!(IdempotencyKey::parse(good).is_some(), "{good}");
        }
        for bad in ["", &"k".repeat(65), "a b", "a/b", "é", "a\n", "a,b"] {
            assert!(IdempotencyKey::parse(bad).is_none(), "{bad:?}");
        }
    }

    /// The fingerprint tells batches apart by content, and is the same for the same batch.
    #[test]
    fn fingerprints_follow_the_batch() {
        assert_eq!(fingerprint("offer"), fingerprint("offer"));
        assert_ne!(fingerprint("offer"), fingerprint("answer"));
        assert_eq!(fingerprint("offer").hex().len(), 32);
    }

    /// A key is recalled within the window, forgotten after it, and the oldest goes past the
    /// capacity.
    #[test]
    fn sends_are_remembered_for_the_window_and_up_to_the_capacity() {
        let start = Instant::now();
        let window = Duration::from_secs(10);
        let mut sends = RecentSends::new(window, 2);
        let offer = fingerprint("offer");
        let answer = fingerprint("answer");
        assert_eq!(sends.recall(&key("a"), offer, start), None);
        sends.remember(key("a"), offer, 1, start);
        assert_eq!(
            sends.recall(&key("a"), offer, start),
            Some(Recalled::Replay { accepted: 1 })
        );
        assert_eq!(
            sends.recall(&key("a"), answer, start),
            Some(Recalled::Reused)
        );
        assert_eq!(sends.recall(&key("a"), offer, start + window), None);
        assert!(sends.is_empty());

        for name in ["a", "b", "c"] {
            sends.remember(key(name), offer, 1, start);
        }
        assert_eq!(sends.len(), 2);
        assert_eq!(sends.recall(&key("a"), offer, start), None);
        assert!(sends.recall(&key("c"), offer, start).is_some());
    }
}
