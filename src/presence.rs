//! Presence: a background sweeper that removes peers with no open stream and no poll in flight
//! for `peer_timeout_secs`, so that the others get a `leave` with reason `timeout`. It also
//! starts the store's own background work ([`Store::start`]: with Redis, wake-ups and presence
//! refresh); every instance sweeps, and each removal happens once.
//!
//! [`Store::start`]: crate::store::Store::start

use rocket::fairing::AdHoc;
use rocket::tokio::{self, select, time};

use crate::config::Config;
use crate::hub::Hub;

/// Starts the sweeper at liftoff; it stops when the server shuts down.
pub fn stage() -> AdHoc {
    AdHoc::on_liftoff("signpost presence sweeper", |rocket| {
        Box::pin(async move {
            let (Some(hub), Some(config)) = (rocket.state::<Hub>(), rocket.state::<Config>())
            else {
                return;
            };
            let hub = hub.clone();
            hub.store().start(rocket.shutdown());
            let timeout = config.peer_timeout();
            // A quarter of the timeout bounds how late a removal can be (by 25%) while keeping
            // the sweep, which walks every peer, rare.
            let period = (timeout / 4).clamp(
                time::Duration::from_millis(20),
                time::Duration::from_secs(5),
            );
            let mut shutdown = rocket.shutdown();
            tokio::spawn(async move {
                let mut ticks = time::interval(period);
                ticks.set_missed_tick_behavior(time::MissedTickBehavior::Delay);
                loop {
                    select! {
                        _ = ticks.tick() => {
                            // A store that is down is retried at the next tick; the sweep is
                            // idempotent, so a missed one only delays a removal.
                            if let Err(error) = hub.sweep().await {
                                crate::logging::warn(format_args!("presence sweep failed: {}", error.code()));
                            }
                        }
                        _ = &mut shutdown => break,
                    }
                }
            });
        })
    })
}
