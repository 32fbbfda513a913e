//! A peer's mailbox: the source of truth for what it has been sent and what it has received.
//!
//! Every message addressed to a peer gets the mailbox's next id (1, 2, 3, … with no gaps), so a
//! client always knows the last thing it saw and can ask for everything after it. Messages are
//! *undelivered* until a live stream has written them or a poll has acknowledged them (by asking
//! for what comes after). Undelivered messages are always kept, up to `capacity`; delivered ones
//! are kept only as a replay window of the newest `replay_window`, for clients whose connection
//! was cut after the server wrote but before they read. A client that asks for something older
//! than the window gets an explicit reset, never a silent gap.
//!
//! Readers (an SSE stream, long-polls) never receive messages through a channel: they hold a
//! [`watch`] receiver that only says "something changed", then read from the mailbox by id. A slow
//! reader therefore cannot lag a channel and lose messages; it just reads a bigger batch.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::message::EncodedMessage;

/// One stored message and the id it has in this mailbox.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: u64,
    pub message: Arc<EncodedMessage>,
}

/// Why a reader must start over instead of continuing from its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetReason {
    /// Messages after the reader's id were already dropped from the replay window.
    Expired,
    /// The reader's id is beyond anything this mailbox has assigned.
    Ahead,
}

impl ResetReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ResetReason::Expired => "expired",
            ResetReason::Ahead => "ahead",
        }
    }
}

/// What a read found after the reader's id.
#[derive(Debug)]
pub struct Batch {
    /// Set when the reader cannot continue gaplessly from its id; `entries` then holds everything
    /// the mailbox still has.
    pub reset: Option<ResetReason>,
    /// Messages in id order, without gaps.
    pub entries: Vec<Entry>,
    /// The newest id this mailbox has assigned (0 before the first message).
    pub last_id: u64,
}

impl Batch {
    /// No messages and no reset, as a reader that stops answers when `last_id` is where it was.
    pub fn empty(last_id: u64) -> Self {
        Self {
            reset: None,
            entries: Vec::new(),
            last_id,
        }
    }
}

/// The outcome of a read.
#[derive(Debug)]
pub enum Read {
    Batch(Batch),
    /// The peer left or was removed; no more messages will come.
    Closed,
    /// A newer reader of the same kind took over: a newer stream (for a stream's ticket) or a
    /// newer poll (for a poll's ticket).
    Replaced,
}

/// The outcome of a push.
#[derive(Debug, PartialEq, Eq)]
pub enum Push {
    Stored {
        id: u64,
    },
    /// The peer already has `capacity` undelivered messages; nothing was stored.
    Full,
}

/// Proof that a stream owns the peer's live stream, as of when it opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamTicket(pub u64);

/// Proof that a poll is the peer's newest, as of when it started: one poll is in flight per
/// peer, and a newer one ends the older at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollTicket(pub u64);

/// Who is reading: a read with a ticket reports [`Read::Replaced`] once a newer reader of the
/// same kind started (streams and polls do not end each other).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ticket {
    Stream(StreamTicket),
    Poll(PollTicket),
}

pub struct Mailbox {
    state: Mutex<MailboxState>,
    /// Bumped after every change a reader may care about: a new message, a replaced stream, or
    /// closing. A `watch` rather than `Notify` because a receiver that subscribed before reading
    /// sees any later bump, so a wake-up can never fall between a read and the wait.
    wake: watch::Sender<u64>,
    /// The most undelivered messages held; see the module docs.
    capacity: usize,
    /// How many delivered messages are kept for resumes.
    replay_window: usize,
}

/// Guarded by a `parking_lot::Mutex`: every critical section is a few field updates or a copy of
/// `Arc`s, never I/O and never across `.await`, so a blocking lock is cheaper than an async one.
struct MailboxState {
    /// Stored messages; ids are consecutive, ending at `last_id`.
    entries: VecDeque<Entry>,
    /// The newest id assigned; 0 before the first message.
    last_id: u64,
    /// Every id up to and including this one counts as delivered. Never exceeds `last_id`.
    delivered: u64,
    /// Open streams and polls in flight; the peer is present while this is above zero.
    listeners: u32,
    /// When `listeners` last dropped to zero (or when the mailbox was created).
    idle_since: Instant,
    /// Incremented by each new live stream; a stream whose ticket is older has been replaced.
    stream_epoch: u64,
    /// Incremented by each new poll; a poll whose ticket is older has been replaced.
    poll_epoch: u64,
    /// Set when the peer is gone; readers stop.
    closed: bool,
}

impl Mailbox {
    pub fn new(capacity: usize, replay_window: usize) -> Self {
        Self {
            state: Mutex::new(MailboxState {
                entries: VecDeque::new(),
                last_id: 0,
                delivered: 0,
                listeners: 0,
                idle_since: Instant::now(),
                stream_epoch: 0,
                poll_epoch: 0,
                closed: false,
            }),
            wake: watch::channel(0).0,
            capacity,
            replay_window,
        }
    }

    /// Stores a message under the next id, unless the undelivered backlog is already full.
    pub fn push(&self, message: Arc<EncodedMessage>) -> Push {
        let id = {
            let mut state = self.state.lock();
            if state.undelivered() >= self.capacity as u64 {
                return Push::Full;
            }
            state.last_id += 1;
            let id = state.last_id;
            state.entries.push_back(Entry { id, message });
            id
        };
        self.wake();
        Push::Stored { id }
    }

    /// Marks every message up to `id` as delivered and trims the replay window. Ids beyond the
    /// newest are clamped: a client cannot acknowledge what does not exist yet.
    pub fn acknowledge(&self, id: u64) {
        let mut state = self.state.lock();
        let id = id.min(state.last_id);
        if id > state.delivered {
            state.delivered = id;
            state.trim(self.replay_window);
        }
    }

    /// What follows `cursor`, oldest first, stopping before the entry that would take the
    /// batch's encoded bytes past `max_bytes` (always at least one entry when any follows), so
    /// that no read copies a whole backlog at once. With a `ticket`, reports `Replaced` once a
    /// newer reader of its kind started.
    pub fn read_after(&self, cursor: u64, ticket: Option<Ticket>, max_bytes: usize) -> Read {
        let state = self.state.lock();
        if state.closed {
            return Read::Closed;
        }
        let replaced = match ticket {
            Some(Ticket::Stream(StreamTicket(epoch))) => epoch != state.stream_epoch,
            Some(Ticket::Poll(PollTicket(epoch))) => epoch != state.poll_epoch,
            None => false,
        };
        if replaced {
            return Read::Replaced;
        }
        let last_id = state.last_id;
        if cursor > last_id {
            return Read::Batch(Batch {
                reset: Some(ResetReason::Ahead),
                entries: Vec::new(),
                last_id,
            });
        }
        let first_held = state.entries.front().map_or(last_id + 1, |entry| entry.id);
        let (reset, skip) = if cursor + 1 < first_held {
            (Some(ResetReason::Expired), 0)
        } else {
            (None, (cursor + 1 - first_held) as usize)
        };
        let mut budget = max_bytes;
        let entries = state
            .entries
            .iter()
            .skip(skip)
            .enumerate()
            .take_while(|(index, entry)| {
                let size = entry.message.encoded_len();
                let fits = *index == 0 || size <= budget;
                budget = budget.saturating_sub(size);
                fits
            })
            .map(|(_, entry)| entry.clone())
            .collect();
        Read::Batch(Batch {
            reset,
            entries,
            last_id,
        })
    }

    /// A receiver that changes whenever a reader should look again. Subscribe before reading.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.wake.subscribe()
    }

    /// Makes the caller the peer's live stream; any earlier stream sees `Replaced` and ends.
    pub fn open_stream(&self) -> StreamTicket {
        let ticket = {
            let mut state = self.state.lock();
            state.stream_epoch += 1;
            StreamTicket(state.stream_epoch)
        };
        self.wake();
        ticket
    }

    /// Makes the caller the peer's poll; an earlier poll still waiting sees `Replaced` and ends.
    pub fn open_poll(&self) -> PollTicket {
        let ticket = {
            let mut state = self.state.lock();
            state.poll_epoch += 1;
            PollTicket(state.poll_epoch)
        };
        self.wake();
        ticket
    }

    /// Registers a listener (stream or poll) for presence until the guard is dropped.
    pub fn listen(self: &Arc<Self>) -> Listening {
        self.state.lock().listeners += 1;
        Listening(Arc::clone(self))
    }

    /// How long the peer has had no listener, or `None` while one is open.
    pub fn idle_for(&self, now: Instant) -> Option<Duration> {
        let state = self.state.lock();
        (state.listeners == 0).then(|| now.saturating_duration_since(state.idle_since))
    }

    /// Ends every reader: the peer is gone.
    pub fn close(&self) {
        self.state.lock().closed = true;
        self.wake();
    }

    /// The newest id assigned so far.
    pub fn last_id(&self) -> u64 {
        self.state.lock().last_id
    }

    /// Messages held (undelivered plus replay window); for tests and metrics.
    pub fn held(&self) -> usize {
        self.state.lock().entries.len()
    }

    fn wake(&self) {
        self.wake
            .send_modify(|generation| *generation = generation.wrapping_add(1));
    }
}

impl MailboxState {
    fn undelivered(&self) -> u64 {
        self.last_id - self.delivered
    }

    /// Drops the oldest delivered messages beyond the replay window.
    fn trim(&mut self, replay_window: usize) {
        while let Some(front) = self.entries.front() {
            let delivered_held = self.delivered.saturating_sub(front.id) + 1;
            if front.id > self.delivered || delivered_held <= replay_window as u64 {
                break;
            }
            self.entries.pop_front();
        }
    }
}

/// A registered listener; dropping it (a stream closing, a poll returning) starts the idle clock
/// once no other listener remains.
pub struct Listening(Arc<Mailbox>);

impl Drop for Listening {
    fn drop(&mut self) {
        let mut state = self.0.state.lock();
        state.listeners -= 1;
        if state.listeners == 0 {
            state.idle_since = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> Arc<EncodedMessage> {
        EncodedMessage::from_server("join", &serde_json::json!({}))
    }

    fn ids(read: Read) -> (Option<ResetReason>, Vec<u64>) {
        match read {
            Read::Batch(batch) => (batch.reset, batch.entries.iter().map(|e| e.id).collect()),
            other => panic!("expected a batch, got {other:?}"),
        }
    }

    #[test]
    fn ids_start_at_one_and_have_no_gaps() {
        let mailbox = Mailbox::new(10, 10);
        for expected in 1..=5 {
            assert_eq!(mailbox.push(message()), Push::Stored { id: expected });
        }
        assert_eq!(
            ids(mailbox.read_after(0, None, usize::MAX)),
            (None, vec![1, 2, 3, 4, 5])
        );
        assert_eq!(
            ids(mailbox.read_after(3, None, usize::MAX)),
            (None, vec![4, 5])
        );
        assert_eq!(ids(mailbox.read_after(5, None, usize::MAX)), (None, vec![]));
    }

    #[test]
    fn undelivered_backlog_is_bounded_but_delivered_volume_is_not() {
        let mailbox = Mailbox::new(3, 2);
        for _ in 0..3 {
            mailbox.push(message());
        }
        assert_eq!(mailbox.push(message()), Push::Full, "backlog of 3 is full");
        // A reader that keeps up can receive forever: only the replay window stays behind.
        for round in 0..100u64 {
            mailbox.acknowledge(mailbox.last_id());
            assert!(
                matches!(mailbox.push(message()), Push::Stored { .. }),
                "round {round}"
            );
        }
        mailbox.acknowledge(mailbox.last_id());
        assert_eq!(mailbox.held(), 2);
    }

    #[test]
    fn asking_for_what_was_trimmed_resets_explicitly() {
        let mailbox = Mailbox::new(10, 2);
        for _ in 0..6 {
            mailbox.push(message());
        }
        mailbox.acknowledge(6);
        assert_eq!(
            ids(mailbox.read_after(4, None, usize::MAX)),
            (None, vec![5, 6])
        );
        assert_eq!(
            ids(mailbox.read_after(3, None, usize::MAX)),
            (Some(ResetReason::Expired), vec![5, 6])
        );
        assert_eq!(
            ids(mailbox.read_after(9, None, usize::MAX)),
            (Some(ResetReason::Ahead), vec![])
        );
    }

    #[test]
    fn acknowledging_the_future_is_clamped() {
        let mailbox = Mailbox::new(2, 0);
        mailbox.acknowledge(100);
        mailbox.push(message());
        mailbox.push(message());
        assert_eq!(
            ids(mailbox.read_after(0, None, usize::MAX)),
            (None, vec![1, 2])
        );
    }

    #[test]
    fn a_new_stream_replaces_the_old_one_and_closing_ends_both() {
        let mailbox = Mailbox::new(2, 2);
        let first = mailbox.open_stream();
        let second = mailbox.open_stream();
        assert!(matches!(
            mailbox.read_after(0, Some(Ticket::Stream(first)), usize::MAX),
            Read::Replaced
        ));
        assert!(matches!(
            mailbox.read_after(0, Some(Ticket::Stream(second)), usize::MAX),
            Read::Batch(_)
        ));
        mailbox.close();
        assert!(matches!(
            mailbox.read_after(0, Some(Ticket::Stream(second)), usize::MAX),
            Read::Closed
        ));
    }

    #[test]
    fn presence_counts_listeners() {
        let mailbox = Arc::new(Mailbox::new(2, 2));
        let now = Instant::now();
        assert!(mailbox.idle_for(now).is_some());
        let stream = mailbox.listen();
        let poll = mailbox.listen();
        assert_eq!(mailbox.idle_for(now), None);
        drop(stream);
        assert_eq!(mailbox.idle_for(now), None);
        drop(poll);
        assert!(mailbox.idle_for(Instant::now()).is_some());
    }

    #[tokio::test]
    async fn a_push_wakes_a_subscribed_reader() {
        let mailbox = Mailbox::new(2, 2);
        let mut wake = mailbox.subscribe();
        wake.borrow_and_update();
        mailbox.push(message());
        wake.changed().await.unwrap();
        assert_eq!(
            ids(mailbox.read_after(0, None, usize::MAX)),
            (None, vec![1])
        );
    }
}
