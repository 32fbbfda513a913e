//! A counter that readers wait on to change: what `tokio::sync::watch::channel::<u64>` did for
//! a mailbox's wake-ups (a new message, a newer reader, closing), for the one or two readers a
//! mailbox has. `watch` wakes its receivers through eight `Notify`s (its `BigNotify`, made for
//! channels with many receivers), which cost about 1,100 instructions per wake-up in the relay's
//! profile, more than the message's whole push into the mailbox; one `Notify` costs a fraction
//! of that (docs/BENCHMARKS.md, "The floor of a relay on hyper").
//!
//! The value is the version: every change must give a new value (the users count), so a reader
//! tells "changed since I looked" by comparing values, without a version of its own to keep in
//! step. A reader never misses a change: it registers for the notification before it loads the
//! value, and a writer stores the value before it notifies.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// The writing side, one per mailbox (or Redis channel). Dropping it closes the counter: its
/// watchers' [`WakeWatcher::changed`] then fail.
pub struct WakeCounter {
    shared: Arc<Shared>,
}

struct Shared {
    /// The current value; only ever replaced by a different one.
    value: AtomicU64,
    /// Set once, when the [`WakeCounter`] is dropped.
    closed: AtomicBool,
    /// Wakes every watcher waiting in [`WakeWatcher::changed`].
    notify: Notify,
}

/// A reader's side: the value it saw last, and a way to wait for another.
pub struct WakeWatcher {
    shared: Arc<Shared>,
    /// The value at the reader's last look ([`WakeWatcher::mark_seen`] or a change returned).
    seen: u64,
}

/// The counter's writer is gone: no change will come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

impl WakeCounter {
    pub fn new(value: u64) -> Self {
        Self {
            shared: Arc::new(Shared {
                value: AtomicU64::new(value),
                closed: AtomicBool::new(false),
                notify: Notify::new(),
            }),
        }
    }

    /// Replaces the value with `next(value)`, which must differ from it, and wakes the watchers.
    /// Writers may race: each change is applied to the value the other left.
    pub fn change(&self, next: impl Fn(u64) -> u64) {
        let _ = self
            .shared
            .value
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |value| {
                Some(next(value))
            });
        self.shared.notify.notify_waiters();
    }

    /// A watcher that has seen the current value.
    pub fn watch(&self) -> WakeWatcher {
        WakeWatcher {
            seen: self.shared.value.load(Ordering::Acquire),
            shared: Arc::clone(&self.shared),
        }
    }

    pub fn get(&self) -> u64 {
        self.shared.value.load(Ordering::Acquire)
    }
}

impl Drop for WakeCounter {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.notify.notify_waiters();
    }
}

impl WakeWatcher {
    /// Takes the current value as seen, and returns it.
    pub fn mark_seen(&mut self) -> u64 {
        self.seen = self.shared.value.load(Ordering::Acquire);
        self.seen
    }

    /// The value at the last look.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// Resolves with the value once it differs from the one seen last (at once if it already
    /// does), taking it as seen; fails once the counter's writer is gone and nothing changed.
    pub async fn changed(&mut self) -> Result<u64, Closed> {
        // A change already made is taken without registering for the notification (a lock).
        let value = self.shared.value.load(Ordering::Acquire);
        if value != self.seen {
            self.seen = value;
            return Ok(value);
        }
        loop {
            let notified = self.shared.notify.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the value is loaded: a change stored after the load notifies it.
            notified.as_mut().enable();
            let value = self.shared.value.load(Ordering::Acquire);
            if value != self.seen {
                self.seen = value;
                return Ok(value);
            }
            if self.shared.closed.load(Ordering::Acquire) {
                return Err(Closed);
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::FutureExt;

    use super::*;

    /// A watcher wakes for a change made after it last looked, once per look, and not for one
    /// it has seen.
    #[test]
    fn a_watcher_sees_each_change_after_its_look() {
        let counter = WakeCounter::new(0);
        let mut watcher = counter.watch();
        assert!(
            watcher.changed().now_or_never().is_none(),
            "nothing changed"
        );
        counter.change(|n| n + 1);
        assert_eq!(watcher.changed().now_or_never(), Some(Ok(1)));
        assert!(watcher.changed().now_or_never().is_none(), "seen already");
        counter.change(|n| n + 1);
        assert_eq!(watcher.mark_seen(), 2);
        assert!(watcher.changed().now_or_never().is_none(), "marked seen");
    }

    /// A watcher already waiting is woken by a change from another task, and by the counter's
    /// end, which it then reports.
    #[tokio::test]
    async fn a_waiting_watcher_is_woken_by_a_change_and_by_the_end() {
        let counter = WakeCounter::new(7);
        let mut watcher = counter.watch();
        let waiting = tokio::spawn(async move {
            let first = watcher.changed().await;
            let second = watcher.changed().await;
            (first, second)
        });
        tokio::task::yield_now().await;
        counter.change(|n| n + 1);
        drop(counter);
        let woken = tokio::time::timeout(Duration::from_secs(10), waiting).await;
        assert_eq!(
            woken.expect("the watcher was woken").unwrap(),
            (Ok(8), Err(Closed))
        );
    }

    /// A change that races with a watcher's wait is never lost: many changes from other
    /// threads, each awaited by the watcher before the next is made.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_change_is_lost_between_a_look_and_the_wait() {
        let counter = Arc::new(WakeCounter::new(0));
        let mut watcher = counter.watch();
        let (next, mut go) = tokio::sync::mpsc::unbounded_channel::<()>();
        let writer = {
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                while go.recv().await.is_some() {
                    counter.change(|n| n + 1);
                }
            })
        };
        for expected in 1..=2_000 {
            next.send(()).unwrap();
            let changed = tokio::time::timeout(Duration::from_secs(10), watcher.changed()).await;
            assert_eq!(changed, Ok(Ok(expected)), "change {expected} was lost");
        }
        drop(next);
        writer.await.unwrap();
    }
}
