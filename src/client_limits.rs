//! Limits one client address cannot get past, so that no single client can lock others out of
//! an open server: a join rate (a token bucket per address) and a count of the live peers each
//! address holds. Addresses are keyed by [`limit_key`] (an IPv6 client by its /64).
//!
//! Memory stays bounded by the clients that are active: a bucket that has refilled is the same
//! as no bucket, so full ones are forgotten, and a count that falls to zero is removed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::client_address::limit_key;
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

    /// Charges one join to `client`; on refusal, how long until it may join again.
    pub fn charge(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut state = self.state.lock();
        if state.buckets.len() >= state.sweep_at {
            state.buckets.retain(|_, bucket| !bucket.is_full(now));
            state.sweep_at = (state.buckets.len() * 2).max(FIRST_SWEEP_AT);
        }
        state
            .buckets
            .entry(limit_key(client))
            .or_insert_with(|| TokenBucket::new(self.rate, self.burst, now))
            .take(1.0, now)
    }

    /// Buckets held right now (for tests of the memory bound).
    pub fn tracked(&self) -> usize {
        self.state.lock().buckets.len()
    }
}

/// Live peers per client address, against `max_peers_per_client`. Not locked by itself: the hub
/// keeps it under its rooms lock, so that the count always equals the peers in the rooms.
#[derive(Debug, Default)]
pub struct PeersPerClient {
    /// Never holds a zero.
    counts: HashMap<IpAddr, usize>,
}

impl PeersPerClient {
    /// Counts one more peer for `client` unless it already holds `limit`.
    pub fn try_add(&mut self, client: IpAddr, limit: usize) -> bool {
        let count = self.counts.entry(limit_key(client)).or_insert(0);
        if *count >= limit {
            if *count == 0 {
                self.counts.remove(&limit_key(client));
            }
            return false;
        }
        *count += 1;
        true
    }

    /// One peer of `client` is gone.
    pub fn remove(&mut self, client: IpAddr) {
        let key = limit_key(client);
        if let Some(count) = self.counts.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                self.counts.remove(&key);
            }
        }
    }

    /// The peers `client` holds.
    pub fn count(&self, client: IpAddr) -> usize {
        self.counts.get(&limit_key(client)).copied().unwrap_or(0)
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

    /// The count refuses past the limit and frees a place when a peer goes.
    #[test]
    fn live_peers_are_counted_per_address() {
        let mut peers = PeersPerClient::default();
        assert!(peers.try_add(ip("192.0.2.1"), 2));
        assert!(peers.try_add(ip("192.0.2.1"), 2));
        assert!(!peers.try_add(ip("192.0.2.1"), 2));
        assert!(peers.try_add(ip("192.0.2.2"), 2));
        peers.remove(ip("192.0.2.1"));
        assert_eq!(peers.count(ip("192.0.2.1")), 1);
        assert!(peers.try_add(ip("192.0.2.1"), 2));
        peers.remove(ip("192.0.2.2"));
        assert!(peers.counts.len() == 1, "a zero count is dropped");
    }
}
