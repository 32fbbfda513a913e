//! The ledger of bytes held in mailboxes: per client address (the sender's limit key, which
//! the hub computes once, an IPv6 client by its prefix) and in total, each held to its limit (`client_max_held_bytes`,
//! `max_held_bytes`).
//!
//! A message's bytes are charged when it is pushed and released when it leaves the mailbox
//! (trimmed from the replay window, or the mailbox closed), so that what one address can make
//! the server hold is bounded whoever its recipients are and however slowly they read. The
//! memory store charges a whole send at once (one update, not one per recipient) and each
//! mailbox releases what one trim or close let go of at once.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::net::IpAddr;

use parking_lot::Mutex;

use crate::error::{ApiResult, Error};

/// Shared by every mailbox of a store (an `Arc`). Its lock is the innermost of the memory store:
/// taken after the rooms lock and after a mailbox's, never the other way round, and held for a
/// few additions only.
#[derive(Debug)]
pub struct HeldBytes {
    state: Mutex<Ledger>,
    /// `client_max_held_bytes`.
    client_limit: usize,
    /// `max_held_bytes`.
    total_limit: usize,
}

#[derive(Debug, Default)]
struct Ledger {
    /// Bytes held in all mailboxes; the sum of `clients` plus what no address is charged for.
    total: usize,
    /// Bytes held per sender's limit key; an address holding nothing has no entry, so the map
    /// is as large as the addresses with messages waiting, not all that ever sent.
    clients: HashMap<IpAddr, usize>,
}

impl HeldBytes {
    pub fn new(client_limit: usize, total_limit: usize) -> Self {
        Self {
            state: Mutex::new(Ledger::default()),
            client_limit,
            total_limit,
        }
    }

    /// Charges `bytes` to `client` and to the total, unless that would take `client` past
    /// `client_max_held_bytes` (429 `too_many_bytes_held`) or the total past `max_held_bytes`
    /// (503 `server_full`); refused, nothing is charged. `None` (a peer with no address) is
    /// held to the total only.
    pub fn try_charge(&self, client: Option<IpAddr>, bytes: usize) -> ApiResult<()> {
        let mut ledger = self.state.lock();
        let Ledger { total, clients } = &mut *ledger;
        // One look-up of the address (an entry) for the check and the charge.
        let entry = client.map(|key| clients.entry(key));
        if let Some(entry) = &entry {
            let held = match entry {
                Entry::Occupied(held) => *held.get(),
                Entry::Vacant(_) => 0,
            };
            if held.saturating_add(bytes) > self.client_limit {
                return Err(Error::TooManyBytesHeld {
                    limit: self.client_limit,
                });
            }
        }
        if total.saturating_add(bytes) > self.total_limit {
            return Err(Error::ServerFull);
        }
        match entry {
            Some(Entry::Occupied(mut held)) => *held.get_mut() += bytes,
            Some(Entry::Vacant(held)) => {
                held.insert(bytes);
            }
            None => {}
        }
        *total += bytes;
        Ok(())
    }

    /// Charges `bytes` whatever the limits: the server's own events (`join`, `leave`), which no
    /// client can be refused for and no address is charged for.
    pub fn charge(&self, client: Option<IpAddr>, bytes: usize) {
        self.state.lock().add(client, bytes);
    }

    /// Releases `bytes` charged to `client`.
    pub fn release(&self, client: Option<IpAddr>, bytes: usize) {
        self.release_all(&[(client, bytes)]);
    }

    /// Releases several charges under one lock: what one trim or close let go of.
    pub fn release_all(&self, charges: &[(Option<IpAddr>, usize)]) {
        if charges.is_empty() {
            return;
        }
        let mut ledger = self.state.lock();
        for &(client, bytes) in charges {
            ledger.total = ledger.total.saturating_sub(bytes);
            if let Some(Entry::Occupied(mut held)) = client.map(|key| ledger.clients.entry(key)) {
                *held.get_mut() = held.get().saturating_sub(bytes);
                if *held.get() == 0 {
                    held.remove();
                }
            }
        }
    }

    /// Bytes held for `client`'s address; for tests and metrics.
    pub fn held_by(&self, client: IpAddr) -> usize {
        let ledger = self.state.lock();
        ledger.clients.get(&client).copied().unwrap_or(0)
    }

    /// Bytes held in all mailboxes; for tests and metrics.
    pub fn total(&self) -> usize {
        self.state.lock().total
    }
}

impl Ledger {
    fn add(&mut self, key: Option<IpAddr>, bytes: usize) {
        self.total += bytes;
        if let Some(key) = key {
            *self.clients.entry(key).or_insert(0) += bytes;
        }
    }
}

/// Charges gathered while a mailbox's lock is held (a trim, a close), to release at once:
/// merged by address, since a mailbox's entries mostly come from a few senders.
#[derive(Debug, Default)]
pub struct Releases(Vec<(Option<IpAddr>, usize)>);

impl Releases {
    pub fn add(&mut self, client: Option<IpAddr>, bytes: usize) {
        match self.0.iter_mut().find(|(held_for, _)| *held_for == client) {
            Some((_, total)) => *total += bytes,
            None => self.0.push((client, bytes)),
        }
    }

    pub fn release(self, ledger: &HeldBytes) {
        ledger.release_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// A charge that would take an address past its limit is refused whole; other addresses and
    /// the total are unaffected; releasing makes room again.
    #[test]
    fn each_address_is_held_to_its_limit() {
        let ledger = HeldBytes::new(100, 1000);
        let one = Some(ip("192.0.2.1"));
        ledger.try_charge(one, 60).unwrap();
        assert_eq!(
            ledger.try_charge(one, 41),
            Err(Error::TooManyBytesHeld { limit: 100 })
        );
        assert_eq!(ledger.held_by(ip("192.0.2.1")), 60);
        ledger.try_charge(Some(ip("192.0.2.2")), 100).unwrap();
        ledger.try_charge(None, 500).unwrap();
        assert_eq!(ledger.total(), 660);
        ledger.release(one, 60);
        ledger.try_charge(one, 100).unwrap();
        // An address charged nothing yet is held to the same limit.
        assert_eq!(
            ledger.try_charge(Some(ip("192.0.2.3")), 101),
            Err(Error::TooManyBytesHeld { limit: 100 })
        );
        assert_eq!(ledger.held_by(ip("192.0.2.3")), 0);
        assert_eq!(ledger.total(), 700);
    }

    /// The total is held to `max_held_bytes` whoever is charged, a peer without address too.
    #[test]
    fn the_total_is_held_to_its_limit() {
        let ledger = HeldBytes::new(100, 150);
        ledger.try_charge(Some(ip("192.0.2.1")), 100).unwrap();
        assert_eq!(ledger.try_charge(None, 51), Err(Error::ServerFull));
        assert_eq!(
            ledger.try_charge(Some(ip("192.0.2.2")), 51),
            Err(Error::ServerFull)
        );
        // The server's own events are charged whatever the limits.
        ledger.charge(None, 80);
        assert_eq!(ledger.total(), 180);
    }
}
