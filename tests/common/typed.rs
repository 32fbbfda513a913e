//! Test support for the tests that speak the API through `signpost::client`, the typed client
//! (included with `#[path = "common/typed.rs"] mod typed;`, beside `mod common;`).

use futures_util::StreamExt;
use signpost::client::{Envelope, Event, Events};

use crate::common::EVENT_DEADLINE;

/// The next mailbox message on `events`, skipping `ready` (sent again after each reconnection);
/// fails on anything else, or after [`EVENT_DEADLINE`].
pub async fn next_message(events: &mut Events) -> Envelope {
    let wait = async {
        loop {
            match events.next().await.expect("the stream goes on") {
                Ok(Event::Message(envelope)) => return envelope,
                Ok(Event::Ready { .. }) => continue,
                Ok(other) => panic!("unexpected {other:?}"),
                Err(error) => panic!("the stream failed: {error}"),
            }
        }
    };
    tokio::time::timeout(EVENT_DEADLINE, wait)
        .await
        .expect("a message in time")
}
