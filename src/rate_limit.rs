//! A token bucket: the per-peer send rate, and the per-client join rate.

use std::time::{Duration, Instant};

/// Holds up to `burst` tokens and refills at `rate` per second; each message sent costs one.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    /// Tokens available at `updated`; never above `burst`.
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: f64, burst: f64, now: Instant) -> Self {
        Self {
            rate,
            burst,
            tokens: burst,
            updated: now,
        }
    }

    /// Whether the bucket would be full at `now`: then it is the same as a new one, and a table
    /// of buckets may forget it.
    pub fn is_full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens + elapsed * self.rate >= self.burst
    }

    /// Takes `cost` tokens, all or none. On refusal, says how long until they would be there.
    pub fn take(&mut self, cost: f64, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.updated = now;
        if cost <= self.tokens {
            self.tokens -= cost;
            return Ok(());
        }
        // A cost above the burst can never be paid at once; report the wait for a full bucket.
        let missing = cost.min(self.burst) - self.tokens;
        Err(Duration::try_from_secs_f64(missing / self.rate).unwrap_or(Duration::MAX))
    }

    /// Gives back `cost` tokens taken for something that was then refused for another reason,
    /// so that it costs nothing.
    pub fn give_back(&mut self, cost: f64) {
        self.tokens = (self.tokens + cost).min(self.burst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_refills_at_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 3.0, start);
        assert!(bucket.take(3.0, start).is_ok());
        let wait = bucket.take(1.0, start).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        assert!(bucket.take(1.0, start + Duration::from_millis(100)).is_ok());
        assert!(bucket
            .take(1.0, start + Duration::from_millis(100))
            .is_err());
        assert!(
            bucket.take(3.0, start + Duration::from_secs(60)).is_ok(),
            "capped at burst"
        );
        assert!(bucket.take(1.0, start + Duration::from_secs(60)).is_err());
    }
}
