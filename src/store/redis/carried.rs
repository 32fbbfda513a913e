//! [`Carried`]: the messages that came with a mailbox's wake-ups, so that a reader that was
//! woken by them can answer from them instead of reading Redis.
//!
//! A script that appends to a mailbox publishes the appended entries with the wake-up
//! ("m<id of the first>" then ",<bytes>:<stored value>" for each, `room.lua`'s `finish`), unless
//! they are over [`CARRIED_MAX_BYTES`] or something else happened to the mailbox in the same
//! call (a seal, the peer's removal): then the wake-up is a plain one ("1"), as every wake-up
//! used to be. On the relay's hot path this saves the read that each message cost (a script
//! call, the mailbox state parsed, the list read): about a quarter of what a streamed message
//! cost Redis (docs/BENCHMARKS.md, "Wake-ups that carry their messages").
//!
//! The mailbox in Redis stays the truth. A reader answers from what was carried only when
//! nothing but carried messages (and its own open) reached the mailbox's channel since its last
//! look at Redis (its open or its last read, [`LastLook`]), and when what was carried starts
//! right after its cursor: what it answers is then what Redis changed after that look, in order,
//! as a read would have found it. Messages carried before the look count only if the newest of
//! them is exactly the newest id the look found: then the look saw them, in the same server
//! history (a history that lost them would have sealed the mailbox first, and its ids jump past
//! every id the old one gave). That is how a poll, whose look is its open, answers what arrived
//! between its predecessor's answer and itself. Anything else (a plain wake-up, another
//! reader's open, a reconnection, a gap) sends it to Redis, as before. Since a reader notes
//! where the channel's wake-ups stood before it sends each look, a wake-up that Redis published
//! after it (on another connection, so it may arrive before the look's answer) always counts as
//! coming after it.
//!
//! Kept per channel on an instance, bounded by [`CARRIED_MAX_ENTRIES`] and
//! [`CARRIED_MAX_BYTES`] twice over; what a reader delivered is forgotten when it reads, so an
//! idle mailbox holds nothing here.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::mailbox::{Batch, Entry, ReadBudget};
use crate::message::EncodedMessage;

/// The most bytes of stored values one wake-up carries; a larger append wakes its readers
/// plainly and they read it. Signaling messages are far smaller (an SDP offer is a few KB); a
/// bound keeps the instance's one subscriber connection from carrying large batches twice.
pub const CARRIED_MAX_BYTES: usize = 16 * 1024;

/// The most entries a channel keeps: a reader woken reads within a round trip, and one that
/// falls further behind reads Redis.
const CARRIED_MAX_ENTRIES: usize = 64;

/// A mailbox's wake-ups on this instance, and the messages they carried.
#[derive(Default)]
pub struct Carried {
    /// Wake-ups so far, of every kind.
    count: u64,
    /// `count` at the last wake-up that was neither carried messages nor an open (0: none): the
    /// mailbox changed in a way that only Redis can tell (a seal, the peer's removal, a lost
    /// connection's wake-ups).
    plain: u64,
    /// `count` at the last open and that open's nonce, and `count` at the open before it.
    last_open: (u64, u32),
    open_before: u64,
    /// Carried entries, ids contiguous, oldest first, each with `count` at the wake-up that
    /// carried it.
    entries: VecDeque<(u64, Entry)>,
    /// Bytes of the envelopes in `entries`.
    bytes: usize,
}

/// A reader's last look at Redis (its open or its last read): which carried messages it may
/// answer from.
#[derive(Clone, Copy, Debug)]
pub struct LastLook {
    /// [`Carried::count`] before the look was sent.
    pub since: u64,
    /// The nonce of the reader's own open (0: none), whose wake-up is no reason to look again.
    pub own_open: u32,
    /// The newest id the look found in the mailbox.
    pub newest: u64,
}

/// What a wake-up said.
#[derive(Debug)]
pub enum WakeUp {
    /// Messages appended, with their ids: "m<first id>,<bytes>:<value>,<bytes>:<value>...".
    Carried(Vec<Entry>),
    /// A reader's open: "o<nonce>".
    Open(u32),
    /// Anything else, and a wake-up the instance makes itself (a reconnection).
    Plain,
}

impl WakeUp {
    /// Reads a wake-up's payload; one that does not parse is a plain wake-up, which only makes
    /// its readers read Redis.
    pub fn parse(payload: &[u8]) -> Self {
        match payload.first() {
            Some(b'o') => std::str::from_utf8(&payload[1..])
                .ok()
                .and_then(|digits| digits.parse().ok())
                .map_or(Self::Plain, Self::Open),
            Some(b'm') => parse_carried(&payload[1..]).map_or(Self::Plain, Self::Carried),
            _ => Self::Plain,
        }
    }

    /// The open's nonce that the reader's `Wake` passes over (`store::OwnOpens`); 0 for none.
    pub fn nonce(&self) -> u32 {
        match self {
            Self::Open(nonce) => *nonce,
            _ => 0,
        }
    }
}

/// "<first id>,<bytes>:<value>,...", each value "<type> <envelope without id>".
fn parse_carried(mut rest: &[u8]) -> Option<Vec<Entry>> {
    let (first, tail) = split_number(rest, b',')?;
    rest = tail;
    let mut entries = Vec::new();
    let mut id = first;
    loop {
        let (bytes, tail) = split_number(rest, b':')?;
        let bytes = usize::try_from(bytes).ok()?;
        let value = tail.get(..bytes)?;
        let value = std::str::from_utf8(value).ok()?;
        let (kind, body) = value.split_once(' ')?;
        entries.push(Entry {
            id,
            message: EncodedMessage::stored(kind, body.to_owned()),
        });
        rest = &tail[bytes..];
        match rest.split_first() {
            None => return Some(entries),
            Some((b',', tail)) => rest = tail,
            Some(_) => return None,
        }
        id += 1;
    }
}

/// The decimal number before `separator`, and what follows the separator.
fn split_number(text: &[u8], separator: u8) -> Option<(u64, &[u8])> {
    let end = text.iter().position(|&byte| byte == separator)?;
    let number = std::str::from_utf8(&text[..end]).ok()?.parse().ok()?;
    Some((number, &text[end + 1..]))
}

impl Carried {
    /// Where the wake-ups stand: a reader notes it before each read of Redis (or its open), and
    /// answers from what was carried later only if nothing else came after it.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Records one wake-up.
    pub fn record(&mut self, wake_up: WakeUp) {
        self.count += 1;
        match wake_up {
            WakeUp::Carried(entries) => {
                let follows = self.entries.back().is_none_or(|(_, last)| {
                    entries.first().is_some_and(|entry| entry.id == last.id + 1)
                });
                if !follows {
                    self.forget_all();
                }
                for entry in entries {
                    self.bytes += entry.message.body().len();
                    self.entries.push_back((self.count, entry));
                }
                while self.entries.len() > CARRIED_MAX_ENTRIES || self.bytes > 2 * CARRIED_MAX_BYTES
                {
                    self.forget_oldest();
                }
            }
            WakeUp::Open(nonce) => {
                self.open_before = self.last_open.0;
                self.last_open = (self.count, nonce);
            }
            WakeUp::Plain => {
                self.plain = self.count;
                self.forget_all();
            }
        }
    }

    /// What follows `cursor`, as a read of Redis would answer it (at most `limit` entries and,
    /// past the first, `max_bytes` bytes of envelopes), for a reader whose last look at Redis
    /// was `look`; `None` when only Redis can answer. Forgets what the reader has delivered, up
    /// to `cursor`.
    pub fn read(
        &mut self,
        look: LastLook,
        cursor: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Option<Batch> {
        let LastLook {
            since,
            own_open,
            newest: seen,
        } = look;
        self.forget_through(cursor);
        let only_own_open = self.last_open.0 <= since
            || (own_open != 0 && self.last_open.1 == own_open && self.open_before <= since);
        if self.plain > since || !only_own_open {
            return None;
        }
        if self.entries.front()?.1.id != cursor + 1 {
            return None;
        }
        // Carried before the look: only what the look saw, up to the newest id it found.
        let before = self
            .entries
            .iter()
            .take_while(|(at, _)| *at <= since)
            .last();
        if before.is_some_and(|(_, entry)| entry.id != seen) {
            return None;
        }
        let newest = self.entries.back()?.1.id;
        let mut budget = ReadBudget::new(max_bytes);
        let entries = self
            .entries
            .iter()
            .take(limit)
            .take_while(|(_, entry)| budget.admits(entry.message.body().len()))
            .map(|(_, entry)| entry.clone())
            .collect();
        Some(Batch {
            reset: None,
            entries,
            last_id: newest,
        })
    }

    /// Forgets what a read of Redis answered up to `newest`: it will not be read again.
    pub fn forget_through(&mut self, newest: u64) {
        while self
            .entries
            .front()
            .is_some_and(|(_, entry)| entry.id <= newest)
        {
            self.forget_oldest();
        }
    }

    fn forget_oldest(&mut self) {
        if let Some((_, entry)) = self.entries.pop_front() {
            self.bytes -= entry.message.body().len();
        }
    }

    fn forget_all(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }
}

/// A channel's [`Carried`], shared by the subscriber task that records wake-ups and the readers
/// that read from it. A `parking_lot::Mutex`: held for a record or a read of a few entries,
/// never across `.await`.
pub type SharedCarried = Arc<parking_lot::Mutex<Carried>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(first: u64, values: &[&str]) -> Vec<u8> {
        let mut text = format!("m{first}");
        for value in values {
            text.push_str(&format!(",{}:{value}", value.len()));
        }
        text.into_bytes()
    }

    /// A look that found nothing (so that nothing carried before it counts).
    fn look(since: u64, own_open: u32) -> LastLook {
        LastLook {
            since,
            own_open,
            newest: 0,
        }
    }

    fn ids(batch: &Batch) -> Vec<u64> {
        batch.entries.iter().map(|entry| entry.id).collect()
    }

    /// A carried wake-up's entries, their ids counted from the first, each value's type cut off
    /// its envelope; opens and anything else parse as what they are.
    #[test]
    fn wake_ups_parse() {
        let WakeUp::Carried(entries) =
            WakeUp::parse(&payload(7, &["offer {\"a\":\"x,y:z\"}", "answer {}"]))
        else {
            panic!("not carried");
        };
        assert_eq!(entries.len(), 2);
        assert_eq!((entries[0].id, entries[1].id), (7, 8));
        assert_eq!(entries[0].message.body(), "{\"a\":\"x,y:z\"}");
        assert_eq!(entries[1].message.body(), "{}");
        assert!(matches!(WakeUp::parse(b"o42"), WakeUp::Open(42)));
        assert!(matches!(WakeUp::parse(b"1"), WakeUp::Plain));
        assert!(
            matches!(WakeUp::parse(b"m7,99:short"), WakeUp::Plain),
            "cut short"
        );
        assert!(
            matches!(WakeUp::parse(b"m7,5:offer"), WakeUp::Plain),
            "no type"
        );
        assert!(
            matches!(WakeUp::parse(b"m7,4:a {}x"), WakeUp::Plain),
            "trailing bytes"
        );
    }

    /// A reader answers from what was carried after its last read of Redis, from its cursor on,
    /// within a read's bounds; and forgets what it delivered.
    #[test]
    fn a_reader_answers_from_what_follows_its_cursor() {
        let mut carried = Carried::default();
        let since = carried.count();
        carried.record(WakeUp::parse(&payload(5, &["a {}", "b {\"x\":1}", "c {}"])));
        let batch = carried
            .read(look(since, 0), 4, 256, 1 << 20)
            .expect("carried");
        assert_eq!(ids(&batch), [5, 6, 7]);
        assert_eq!(batch.last_id, 7);
        assert!(batch.reset.is_none());
        let batch = carried
            .read(look(since, 0), 4, 2, 1 << 20)
            .expect("carried");
        assert_eq!(ids(&batch), [5, 6], "at most the limit");
        let batch = carried.read(look(since, 0), 4, 256, 3).expect("carried");
        assert_eq!(ids(&batch), [5], "past the first, within the bytes");
        assert!(carried.read(look(since, 0), 5, 256, 1 << 20).is_some());
        assert!(
            carried.read(look(since, 0), 4, 256, 1 << 20).is_none(),
            "5 was forgotten"
        );
        assert!(
            carried.read(look(since, 0), 3, 256, 1 << 20).is_none(),
            "a gap"
        );
        carried.forget_through(7);
        assert!(carried.read(look(since, 0), 6, 256, 1 << 20).is_none());
    }

    /// Anything but carried messages and the reader's own open since its last read of Redis
    /// sends it to Redis: a plain wake-up, another reader's open, or its own with another.
    #[test]
    fn only_redis_answers_after_anything_else() {
        let messages = || WakeUp::parse(&payload(1, &["a {}"]));
        let mut carried = Carried::default();
        let since = carried.count();
        carried.record(WakeUp::Open(9));
        carried.record(messages());
        assert!(
            carried.read(look(since, 9), 0, 256, 1024).is_some(),
            "its own open"
        );
        assert!(
            carried.read(look(since, 8), 0, 256, 1024).is_none(),
            "another's open"
        );

        let mut carried = Carried::default();
        let since = carried.count();
        carried.record(WakeUp::Open(8));
        carried.record(WakeUp::Open(9));
        carried.record(messages());
        assert!(
            carried.read(look(since, 9), 0, 256, 1024).is_none(),
            "two opens"
        );
        let since = carried.count();
        carried.record(WakeUp::parse(&payload(2, &["b {}"])));
        assert!(
            carried.read(look(since, 9), 1, 256, 1024).is_some(),
            "both before"
        );

        let mut carried = Carried::default();
        let since = carried.count();
        carried.record(messages());
        carried.record(WakeUp::Plain);
        carried.record(WakeUp::parse(&payload(2, &["b {}"])));
        assert!(
            carried.read(look(since, 0), 1, 256, 1024).is_none(),
            "a plain wake-up"
        );
        let since = carried.count();
        carried.record(WakeUp::parse(&payload(3, &["c {}"])));
        assert!(
            carried.read(look(since, 0), 2, 256, 1024).is_some(),
            "before the read"
        );
        let since = carried.count();
        carried.record(WakeUp::parse(&payload(4, &["d {}"])));
        assert!(
            carried.read(look(since, 0), 2, 256, 1024).is_none(),
            "3 came before"
        );
    }

    /// What was carried before a reader's look counts when the look found its newest id (a
    /// poll answers what arrived between its predecessor's answer and its open), and not when
    /// the look found another: a server history that lost it, or a look that missed some.
    #[test]
    fn what_the_look_saw_counts() {
        let mut carried = Carried::default();
        carried.record(WakeUp::parse(&payload(2, &["a {}", "b {}"])));
        let since = carried.count();
        let seen = |newest| LastLook {
            since,
            own_open: 0,
            newest,
        };
        assert!(
            carried.read(seen(1 << 32), 1, 256, 1024).is_none(),
            "sealed"
        );
        assert!(carried.read(seen(2), 1, 256, 1024).is_none(), "3 unseen");
        carried.record(WakeUp::parse(&payload(4, &["c {}"])));
        assert_eq!(
            ids(&carried.read(seen(3), 1, 256, 1024).unwrap()),
            [2, 3, 4]
        );
    }

    /// Carried entries that do not follow the ones kept replace them, and the kept ones stay
    /// within their bounds.
    #[test]
    fn what_is_kept_is_contiguous_and_bounded() {
        let mut carried = Carried::default();
        carried.record(WakeUp::parse(&payload(1, &["a {}"])));
        carried.record(WakeUp::parse(&payload(5, &["e {}"])));
        assert!(carried.read(look(0, 0), 0, 256, 1024).is_none());
        assert_eq!(ids(&carried.read(look(0, 0), 4, 256, 1024).unwrap()), [5]);
        assert!(
            carried.read(look(2, 0), 4, 256, 1024).is_none(),
            "carried before the reader's last look"
        );
        for id in 6..6 + 2 * CARRIED_MAX_ENTRIES as u64 {
            carried.record(WakeUp::parse(&payload(id, &["x {}"])));
        }
        assert_eq!(carried.entries.len(), CARRIED_MAX_ENTRIES);
        let big = format!("x {}", "y".repeat(CARRIED_MAX_BYTES));
        carried.record(WakeUp::parse(&payload(
            6 + 2 * CARRIED_MAX_ENTRIES as u64,
            &[&big],
        )));
        carried.record(WakeUp::parse(&payload(
            7 + 2 * CARRIED_MAX_ENTRIES as u64,
            &[&big],
        )));
        assert!(carried.bytes <= 2 * CARRIED_MAX_BYTES);
    }
}
