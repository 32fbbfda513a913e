//! Presence: a background sweeper that removes peers with no open stream and no poll in flight
//! for `peer_timeout_secs`, so that the others get a `leave` with reason `timeout`.

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
                        _ = ticks.tick() => { hub.sweep(std::time::Instant::now(), timeout); }
                        _ = &mut shutdown => break,
                    }
                }
            });
        })
    })
}
