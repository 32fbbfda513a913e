//! Presence for the Redis store: while this instance holds a stream or a poll for a peer, it
//! moves the peer's deadline forward every third of `peer_timeout_secs`, so a peer is timed out
//! only when no instance has listened for it for that long — including when the instance that
//! held its stream crashed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::select;
use tokio::time::{interval, MissedTickBehavior};

use crate::identity::{PeerId, RoomName};

use super::Inner;

pub struct Presence {
    /// Peers with a listener on this instance, or whose last one ended a moment ago. A
    /// `parking_lot::Mutex`: held for a map update or a copy of the keys, never across `.await`.
    listeners: Mutex<HashMap<(RoomName, PeerId), Listeners>>,
}

impl Presence {
    pub fn new() -> Self {
        Self {
            listeners: Mutex::default(),
        }
    }
}

/// A peer's listeners on this instance.
#[derive(Default)]
struct Listeners {
    count: usize,
    /// Bumped by each new listener: a final refresh waiting for an older one to be the last
    /// sees that it was not.
    generation: u64,
}

/// How long after a peer's last listener ends its final refresh waits for another to start.
/// A polling client's next poll comes one round trip after the last, and that poll's
/// authorisation refreshes the deadline itself (authorize.lua): the final refresh would be one
/// script call per poll for nothing. A tenth of the timeout at most, so that the timeout counts
/// from at most that much after the peer stopped listening, never before.
fn final_refresh_delay(peer_timeout: Duration) -> Duration {
    (peer_timeout / 10).min(Duration::from_secs(1))
}

/// A stream or poll in progress; the last one for a peer to end refreshes its deadline one last
/// time, so that its timeout counts from when it stopped listening.
pub struct Listening {
    inner: Arc<Inner>,
    room: RoomName,
    peer: PeerId,
}

impl Listening {
    pub(super) fn new(inner: Arc<Inner>, room: RoomName, peer: PeerId) -> Self {
        {
            let mut listeners = inner.presence.listeners.lock();
            let entry = listeners.entry((room.clone(), peer)).or_default();
            entry.count += 1;
            entry.generation += 1;
        }
        Self { inner, room, peer }
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        let key = (self.room.clone(), self.peer);
        let generation = {
            let mut listeners = self.inner.presence.listeners.lock();
            match listeners.get_mut(&key) {
                Some(entry) if entry.count > 1 => {
                    entry.count -= 1;
                    return;
                }
                Some(entry) => {
                    entry.count = 0;
                    entry.generation
                }
                None => return,
            }
        };
        let inner = Arc::clone(&self.inner);
        // Outside a runtime (the process is ending) the peer simply times out sooner.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                tokio::time::sleep(final_refresh_delay(inner.limits.peer_timeout)).await;
                let last = {
                    let mut listeners = inner.presence.listeners.lock();
                    let still = listeners
                        .get(&key)
                        .is_some_and(|entry| entry.count == 0 && entry.generation == generation);
                    if still {
                        listeners.remove(&key);
                    }
                    still
                };
                if last {
                    let _ = touch(&inner, &key.0, &[key.1]).await;
                }
            });
        }
    }
}

/// Moves the deadlines of `peers` of `room` to now + timeout.
async fn touch(inner: &Inner, room: &RoomName, peers: &[PeerId]) -> crate::error::ApiResult<()> {
    let mut invocation = inner.on_room("touch", &inner.keys.peers(room));
    invocation
        .arg(inner.limits.peer_timeout.as_millis() as u64)
        .arg(inner.key_ttl_ms);
    for peer in peers {
        invocation.arg(peer.to_string());
    }
    inner.run_room(&invocation).await?;
    Ok(())
}

/// Starts the refresher; it ends with `shutdown`.
pub fn spawn(inner: Arc<Inner>, mut shutdown: rocket::Shutdown) {
    let period = (inner.limits.peer_timeout / 3).max(Duration::from_millis(50));
    tokio::spawn(async move {
        let mut ticks = interval(period);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            select! {
                _ = ticks.tick() => {}
                _ = &mut shutdown => return,
            }
            let mut by_room: HashMap<RoomName, Vec<PeerId>> = HashMap::new();
            for (room, peer) in inner.presence.listeners.lock().keys() {
                by_room.entry(room.clone()).or_default().push(*peer);
            }
            for (room, peers) in by_room {
                // A store that is down is tried again at the next tick.
                let _ = touch(&inner, &room, &peers).await;
            }
        }
    });
}
