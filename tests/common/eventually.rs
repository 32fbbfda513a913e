//! Waiting for a state that announces itself with no event: a gauge settling after a request
//! the test cannot watch finish, a sweep, a port being released, a proxy cutting a stream.
//! Where the test can await an event (an SSE message, a log line, a page's promise), it awaits
//! that instead; this is the fallback, one poll loop for all the tests.

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use super::EVENT_DEADLINE;

/// How long [`eventually`] waits between two checks: short next to any deadline, long enough
/// that a check which sends a request does not flood the server.
pub const CHECK_EVERY: Duration = Duration::from_millis(25);

/// Checks `condition` until it is true, at most [`EVENT_DEADLINE`] long. Guarantees that it
/// returns only once `condition` was seen true, and otherwise fails the test with a message
/// naming `what` was awaited.
pub async fn eventually<F, Fut>(what: &str, condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually_within(what, EVENT_DEADLINE, condition).await
}

/// [`eventually`] with a deadline of `within` (a page's or a restart's, longer than an
/// event's).
pub async fn eventually_within<F, Fut>(what: &str, within: Duration, condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    poll_until(what, within, condition, |holds| *holds).await;
}

/// Reads `probe` until `accept` holds for what it read, at most `within` long, and returns that
/// value. Guarantees the returned value was accepted; otherwise fails the test with a message
/// naming `what` was awaited and showing the last value read, which usually says why.
pub async fn poll_until<T, F, Fut>(
    what: &str,
    within: Duration,
    mut probe: F,
    accept: impl Fn(&T) -> bool,
) -> T
where
    T: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let value = probe().await;
        if accept(&value) {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting until {what}; last seen: {value:?}"
        );
        tokio::time::sleep(CHECK_EVERY).await;
    }
}
