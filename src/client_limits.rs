//! Limits one client address cannot get past, so that no single client can lock others out of
//! an open server: a join rate (a token bucket per address), the live peers each address holds
//! and the rooms it holds them in. This is the memory store's side; the Redis store keeps the
//! same counts deployment-wide, in its scripts. Every address here is already a limit key
//! ([`limit_key`](crate::client_address::limit_key): an IPv6 client by its configured prefix),
//! computed once by the hub.
//!
//! Memory stays bounded by the clients that are active: a bucket that has refilled is the same
//! as no bucket, so full ones are forgotten, and a count that falls to zero is removed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::identity::RoomName;
use crate::rate_limit::TokenBucket;

/// How many buckets may exist before the first sweep for full ones. Below this a sweep is not
/// worth it; above, sweeps happen each time the table doubles, so they cost O(1) per join.
const FIRST_SWEEP_AT: usize = 1024;

/// `join_rate_per_sec` and `join_burst`, per client address.
pub struct JoinRate {
    rate: f64,
    burst: f64,
    /// Behind a `parking_lot::Mutex`: one short critical section per join (a hash lookup and
    /// some arithmetic), never held across anything else.
    state: Mutex<JoinRateState>,
}

struct JoinRateState {
    buckets: HashMap<IpAddr, TokenBucket>,
    /// The table's size at which full buckets are next swept out; at least `FIRST_SWEEP_AT`.
    sweep_at: usize,
}

impl JoinRate {
    pub fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst,
            state: Mutex::new(JoinRateState {
                buckets: HashMap::new(),
                sweep_at: FIRST_SWEEP_AT,
            }),
        }
    }

    /// Charges one join to `client` (a limit key); on refusal, how long until it may join again.
    pub fn charge(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut state = self.state.lock();
        if state.buckets.len() >= state.sweep_at {
            state.buckets.retain(|_, bucket| !bucket.is_full(now));
            state.sweep_at = (state.buckets.len() * 2).max(FIRST_SWEEP_AT);
        }
        state
            .buckets
            .entry(client)
            .or_insert_with(|| TokenBucket::new(self.rate, self.burst, now))
            .take(1.0, now)
    }

    /// Buckets held right now (for tests of the memory bound).
    pub fn tracked(&self) -> usize {
        self.state.lock().buckets.len()
    }
}

/// Which per-address limit a join would break.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientRefusal {
    /// `max_peers_per_client`: the address holds that many live peers.
    Peers,
    /// `max_rooms_per_client`: the join is to a room where the address has no peer yet, and it
    /// has peers in that many rooms.
    Rooms,
}

/// Live peers per client address, against `max_peers_per_client`, and the rooms they are in,
/// against `max_rooms_per_client`. Not locked by itself: the memory store keeps it under its
/// rooms lock, so that the counts always equal the peers in the rooms.
#[derive(Debug, Default)]
pub struct ClientHoldings {
    /// Never holds an address without a peer.
    clients: HashMap<IpAddr, Holding>,
}

#[derive(Debug, Default)]
struct Holding {
    /// Live peers of the address; the sum of `rooms`' values.
    peers: usize,
    /// Its live peers in each room where it has any; never holds a zero.
    rooms: HashMap<RoomName, usize>,
}

impl ClientHoldings {
    /// Counts one more peer of `client` in `room`, unless that breaks a limit: the peers first,
    /// then the rooms (docs/API.md, "Which error wins").
    pub fn try_add(
        &mut self,
        client: IpAddr,
        room: &RoomName,
        max_peers: usize,
        max_rooms: usize,
    ) -> Result<(), ClientRefusal> {
        if let Some(holding) = self.clients.get(&client) {
            if holding.peers >= max_peers {
                return Err(ClientRefusal::Peers);
            }
            if !holding.rooms.contains_key(room) && holding.rooms.len() >= max_rooms {
                return Err(ClientRefusal::Rooms);
            }
        } else if max_peers == 0 {
            return Err(ClientRefusal::Peers);
        } else if max_rooms == 0 {
            return Err(ClientRefusal::Rooms);
        }
        let holding = self.clients.entry(client).or_default();
        holding.peers += 1;
        *holding.rooms.entry(room.clone()).or_insert(0) += 1;
        Ok(())
    }

    /// One peer of `client` in `room` is gone.
    pub fn remove(&mut self, client: IpAddr, room: &RoomName) {
        let Some(holding) = self.clients.get_mut(&client) else {
            return;
        };
        if let Some(count) = holding.rooms.get_mut(room) {
            *count -= 1;
            holding.peers -= 1;
            if *count == 0 {
                holding.rooms.remove(room);
            }
        }
        if holding.peers == 0 {
            self.clients.remove(&client);
        }
    }

    /// The peers `client` holds.
    pub fn peers(&self, client: IpAddr) -> usize {
        self.clients.get(&client).map_or(0, |holding| holding.peers)
    }

    /// The rooms in which `client` holds a peer.
    pub fn rooms(&self, client: IpAddr) -> usize {
        self.clients
            .get(&client)
            .map_or(0, |holding| holding.rooms.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// One address spends its burst and is refused; another is not affected.
    #[test]
    fn the_join_rate_is_per_address() {
        let rate = JoinRate::new(1.0, 2.0);
        let now = Instant::now();
        assert!(rate.charge(ip("192.0.2.1"), now).is_ok());
        assert!(rate.charge(ip("192.0.2.1"), now).is_ok());
        let wait = rate.charge(ip("192.0.2.1"), now).unwrap_err();
        assert!(wait > Duration::ZERO);
        assert!(rate.charge(ip("192.0.2.2"), now).is_ok());
    }

    /// Many addresses that each joined once are forgotten once their buckets refill, so the
    /// table does not grow with every address ever seen.
    #[test]
    fn refilled_buckets_are_forgotten() {
        let rate = JoinRate::new(10.0, 5.0);
        let start = Instant::now();
        for n in 0..5000u32 {
            let address = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n));
            rate.charge(address, start).unwrap();
        }
        assert!(rate.tracked() <= 5000);
        let later = start + Duration::from_secs(1);
        for n in 0..4000u32 {
            let address = IpAddr::from(std::net::Ipv4Addr::from(0x0b00_0000 + n));
            rate.charge(address, later).unwrap();
        }
        assert!(rate.tracked() < 5000, "{} buckets kept", rate.tracked());
    }

    fn room(name: &str) -> RoomName {
        RoomName::parse(name).unwrap()
    }

    /// The count refuses past the limit and frees a place when a peer goes.
    #[test]
    fn live_peers_are_counted_per_address() {
        let mut held = ClientHoldings::default();
        let (a, b) = (ip("192.0.2.1"), ip("192.0.2.2"));
        assert!(held.try_add(a, &room("r1"), 2, 10).is_ok());
        assert!(held.try_add(a, &room("r2"), 2, 10).is_ok());
        assert_eq!(
            held.try_add(a, &room("r3"), 2, 10),
            Err(ClientRefusal::Peers)
        );
        assert!(held.try_add(b, &room("r1"), 2, 10).is_ok());
        held.remove(a, &room("r1"));
        assert_eq!(held.peers(a), 1);
        assert!(held.try_add(a, &room("r1"), 2, 10).is_ok());
        held.remove(b, &room("r1"));
        assert!(
            held.clients.len() == 1,
            "an address without peers is dropped"
        );
    }

    /// Rooms are counted once however many peers the address has in each; a new room past the
    /// limit is refused, a room it is already in is not; leaving the last peer of a room frees it.
    #[test]
    fn rooms_are_counted_per_address() {
        let mut held = ClientHoldings::default();
        let a = ip("192.0.2.1");
        assert!(held.try_add(a, &room("r1"), 10, 2).is_ok());
        assert!(held.try_add(a, &room("r1"), 10, 2).is_ok());
        assert!(held.try_add(a, &room("r2"), 10, 2).is_ok());
        assert_eq!((held.peers(a), held.rooms(a)), (3, 2));
        assert_eq!(
            held.try_add(a, &room("r3"), 10, 2),
            Err(ClientRefusal::Rooms)
        );
        assert!(
            held.try_add(a, &room("r2"), 10, 2).is_ok(),
            "a room it is in"
        );
        assert_eq!(
            held.try_add(a, &room("r3"), 4, 2),
            Err(ClientRefusal::Peers),
            "the peers are checked first"
        );
        held.remove(a, &room("r1"));
        assert_eq!(held.rooms(a), 2, "one peer is left in r1");
        held.remove(a, &room("r1"));
        assert_eq!(held.rooms(a), 1);
        assert!(held.try_add(a, &room("r3"), 10, 2).is_ok());
    }
}
