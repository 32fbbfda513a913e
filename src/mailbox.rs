//! A peer's mailbox: the source of truth for what it has been sent and what it has received.
//!
//! Every message addressed to a peer gets the mailbox's next id (1, 2, 3, … with no gaps), so a
//! client always knows the last thing it saw and can ask for everything after it. Messages are
//! *undelivered* until a live stream has written them or a poll has acknowledged them (by asking
//! for what comes after). Undelivered messages are always kept, up to `capacity` messages and
//! `max_bytes`; delivered ones are kept only as a replay window of the newest `replay_window`
//! (and at most `replay_window_bytes`), for clients whose connection was cut after the server
//! wrote but before they read. A client that asks for something older than the window gets an
//! explicit reset, never a silent gap.
//!
//! Every stored message's bytes are charged to its sender's address in the store's
//! [`HeldBytes`] ledger by the store that pushes it; the mailbox releases them when the message
//! leaves (trimmed, or the mailbox closed).
//!
//! Readers (an SSE stream, long-polls) never receive messages through a channel: they hold a
//! [`watch`] receiver that only says "something changed", then read from the mailbox by id. A slow
//! reader therefore cannot lag a channel and lose messages; it just reads a bigger batch.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::held_bytes::{HeldBytes, Releases};
use crate::message::EncodedMessage;
use crate::wake_counter::{WakeCounter, WakeWatcher};

/// One stored message and the id it has in this mailbox.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: u64,
    pub message: Arc<EncodedMessage>,
}

/// An entry as the mailbox holds it: with the address its bytes are charged to.
#[derive(Debug)]
struct Stored {
    entry: Entry,
    /// The sender's address (`None`: a server event, or a peer with no address).
    charged_to: Option<IpAddr>,
}

impl Stored {
    /// What it counts for in the byte bounds: its envelope as stored.
    fn size(&self) -> usize {
        self.entry.message.encoded_len()
    }
}

/// The bounds of one mailbox, from the store's limits.
#[derive(Debug, Clone, Copy)]
pub struct MailboxLimits {
    /// `mailbox_capacity`: the most undelivered messages held.
    pub capacity: usize,
    /// `mailbox_max_bytes`: the most undelivered bytes held.
    pub max_bytes: usize,
    /// `replay_window`: delivered messages kept for resumes.
    pub replay_window: usize,
    /// `replay_window_bytes`: delivered bytes kept for resumes.
    pub replay_window_bytes: usize,
}

/// Why a reader must start over instead of continuing from its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetReason {
    /// Messages after the reader's id were already dropped from the replay window.
    Expired,
    /// The reader's id is beyond anything this mailbox has assigned.
    Ahead,
    /// The shared store lost writes (a Redis failover that lost the last writes, or a server
    /// that is not the history that assigned the reader's ids): the mailbox moved to a new
    /// generation, its ids jumped past every id handed out before, and what it held was
    /// dropped, so messages after the reader's id may never arrive. The memory store never
    /// loses and never answers this.
    Lost,
}

impl ResetReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ResetReason::Expired => "expired",
            ResetReason::Ahead => "ahead",
            ResetReason::Lost => "lost",
        }
    }
}

/// What one read may copy: its first entry whatever its size, so that a reader always moves
/// on, then each next entry while it fits in what is left of `max_bytes`.
pub struct ReadBudget {
    /// Bytes not taken yet.
    left: usize,
    /// Whether no entry has been looked at yet: the first is copied whatever its size.
    first: bool,
}

impl ReadBudget {
    pub fn new(max_bytes: usize) -> Self {
        Self {
            left: max_bytes,
            first: true,
        }
    }

    /// Whether the next entry, of `size` bytes, is copied (a read stops at the first that is
    /// not).
    pub fn admits(&mut self, size: usize) -> bool {
        let fits = self.first || size <= self.left;
        self.first = false;
        self.left = self.left.saturating_sub(size);
        fits
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
    /// The message would take the undelivered backlog past `capacity` messages or `max_bytes`
    /// (or the mailbox is closed); nothing was stored, and the caller releases its charge.
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
    /// closing. A counter rather than a bare `Notify` because a reader that subscribed before
    /// reading sees any later bump, so a wake-up can never fall between a read and the wait.
    wake: WakeCounter,
    /// What it holds at most; see the module docs.
    limits: MailboxLimits,
    /// Where the bytes of its entries are charged; released as they leave.
    held: Arc<HeldBytes>,
}

/// Guarded by a `parking_lot::Mutex`: every critical section is a few field updates or a copy of
/// `Arc`s, never I/O and never across `.await`, so a blocking lock is cheaper than an async one.
struct MailboxState {
    /// Stored messages; ids are consecutive, ending at `last_id`. Each one's bytes are charged
    /// in the ledger while it is here.
    entries: VecDeque<Stored>,
    /// Encoded bytes of the undelivered entries (ids after `delivered`).
    undelivered_bytes: usize,
    /// Encoded bytes of the delivered entries still held (the replay window).
    delivered_bytes: usize,
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
    pub fn new(limits: MailboxLimits, held: Arc<HeldBytes>) -> Self {
        Self {
            state: Mutex::new(MailboxState {
                entries: VecDeque::new(),
                undelivered_bytes: 0,
                delivered_bytes: 0,
                last_id: 0,
                delivered: 0,
                listeners: 0,
                idle_since: Instant::now(),
                stream_epoch: 0,
                poll_epoch: 0,
                closed: false,
            }),
            wake: WakeCounter::new(0),
            limits,
            held,
        }
    }

    /// Stores a message under the next id, unless that would take the undelivered backlog past
    /// its bounds. The caller has charged its bytes to `charged_to` in the ledger (a store
    /// charges a whole send at once); from here the mailbox releases them when the entry
    /// leaves, and on `Full` the caller does.
    pub fn push(&self, message: Arc<EncodedMessage>, charged_to: Option<IpAddr>) -> Push {
        let size = message.encoded_len();
        let id = {
            let mut state = self.state.lock();
            if state.closed
                || state.undelivered() >= self.limits.capacity as u64
                || state.undelivered_bytes + size > self.limits.max_bytes
            {
                return Push::Full;
            }
            state.last_id += 1;
            let id = state.last_id;
            state.entries.push_back(Stored {
                entry: Entry { id, message },
                charged_to,
            });
            state.undelivered_bytes += size;
            id
        };
        self.wake();
        Push::Stored { id }
    }

    /// Marks every message up to `id` as delivered and trims the replay window, releasing what
    /// it trims. Ids beyond the newest are clamped: a client cannot acknowledge what does not
    /// exist yet.
    pub fn acknowledge(&self, id: u64) {
        let mut releases = Releases::default();
        self.state
            .lock()
            .acknowledge(id, &self.limits, &mut releases);
        // After the mailbox's lock: the ledger's is never held with it.
        releases.release(&self.held);
    }

    /// A poll's start, under one lock: [`listen`](Self::listen), [`subscribe`]
    /// (Self::subscribe), [`acknowledge`](Self::acknowledge) `acknowledge` and
    /// [`open_poll`](Self::open_poll), in that order. Returns the listener's guard, the
    /// wake-ups as seen before the open, the ticket and the newest id; or `None` once the peer
    /// is gone, and then nothing of it was done.
    pub fn start_poll(
        self: &Arc<Self>,
        acknowledge: u64,
    ) -> Option<(Listening, WakeWatcher, PollTicket, u64)> {
        let mut releases = Releases::default();
        let (started, others_listen) = {
            let mut state = self.state.lock();
            if state.closed {
                return None;
            }
            state.listeners += 1;
            let watcher = self.wake.watch();
            state.acknowledge(acknowledge, &self.limits, &mut releases);
            let ((ticket, newest), others_listen) = state.open_poll();
            let started = (Listening(Arc::clone(self)), watcher, ticket, newest);
            (started, others_listen)
        };
        releases.release(&self.held);
        // As `open_poll` does: a lone poll's open wakes nobody.
        if others_listen {
            self.wake();
        }
        Some(started)
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
        let first_held = state
            .entries
            .front()
            .map_or(last_id + 1, |stored| stored.entry.id);
        let (reset, skip) = if cursor + 1 < first_held {
            (Some(ResetReason::Expired), 0)
        } else {
            (None, (cursor + 1 - first_held) as usize)
        };
        let mut budget = ReadBudget::new(max_bytes);
        let entries = state
            .entries
            .iter()
            .skip(skip)
            .take_while(|stored| budget.admits(stored.size()))
            .map(|stored| stored.entry.clone())
            .collect();
        Read::Batch(Batch {
            reset,
            entries,
            last_id,
        })
    }

    /// A receiver that changes whenever a reader should look again. Subscribe before reading.
    pub fn subscribe(&self) -> WakeWatcher {
        self.wake.watch()
    }

    /// Makes the caller the peer's live stream; any earlier stream sees `Replaced` and ends.
    /// Returns its ticket and the newest id, or `None` once the peer is gone.
    pub fn open_stream(&self) -> Option<(StreamTicket, u64)> {
        let opened = {
            let mut state = self.state.lock();
            if state.closed {
                return None;
            }
            state.stream_epoch += 1;
            (StreamTicket(state.stream_epoch), state.last_id)
        };
        self.wake();
        Some(opened)
    }

    /// Makes the caller the peer's poll; an earlier poll still waiting sees `Replaced` and ends.
    /// Returns its ticket and the newest id, or `None` once the peer is gone. The caller
    /// listens first ([`listen`](Self::listen)): an earlier poll is woken to see it was
    /// replaced only when another listener than the caller is there, so a lone poll's open
    /// wakes nobody, itself included, and its first read can wait for a wake-up.
    pub fn open_poll(&self) -> Option<(PollTicket, u64)> {
        let (opened, others_listen) = {
            let mut state = self.state.lock();
            if state.closed {
                return None;
            }
            state.open_poll()
        };
        if others_listen {
            self.wake();
        }
        Some(opened)
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

    /// Ends every reader and lets go of every entry, releasing their bytes: the peer is gone.
    pub fn close(&self) {
        let mut releases = Releases::default();
        {
            let mut state = self.state.lock();
            state.closed = true;
            for stored in state.entries.drain(..) {
                releases.add(stored.charged_to, stored.size());
            }
            state.undelivered_bytes = 0;
            state.delivered_bytes = 0;
        }
        releases.release(&self.held);
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

    /// Bytes held: undelivered, and in the replay window; for tests and metrics.
    pub fn held_bytes(&self) -> (usize, usize) {
        let state = self.state.lock();
        (state.undelivered_bytes, state.delivered_bytes)
    }

    fn wake(&self) {
        self.wake.change(|generation| generation.wrapping_add(1));
    }
}

impl MailboxState {
    fn undelivered(&self) -> u64 {
        self.last_id - self.delivered
    }

    /// [`Mailbox::open_poll`] under the mailbox's lock: the ticket and the newest id, and
    /// whether a listener other than the caller is there to be woken.
    fn open_poll(&mut self) -> ((PollTicket, u64), bool) {
        self.poll_epoch += 1;
        (
            (PollTicket(self.poll_epoch), self.last_id),
            self.listeners > 1,
        )
    }

    /// [`Mailbox::acknowledge`] under the mailbox's lock, collecting what it trims in
    /// `releases`.
    fn acknowledge(&mut self, id: u64, limits: &MailboxLimits, releases: &mut Releases) {
        let id = id.min(self.last_id);
        if id > self.delivered {
            self.deliver_through(id);
            self.trim(limits, releases);
        }
    }

    /// Moves the entries after `delivered` up to `id` (held, all of them: undelivered entries
    /// are never trimmed) from the undelivered bytes to the replay window's.
    fn deliver_through(&mut self, id: u64) {
        let first = self
            .entries
            .front()
            .map_or(self.delivered + 1, |stored| stored.entry.id);
        let start = (self.delivered + 1).saturating_sub(first) as usize;
        let end = (id + 1).saturating_sub(first) as usize;
        let moved: usize = self
            .entries
            .range(start..end.min(self.entries.len()))
            .map(Stored::size)
            .sum();
        self.undelivered_bytes -= moved;
        self.delivered_bytes += moved;
        self.delivered = id;
    }

    /// Drops the oldest delivered messages beyond the replay window (by count or by bytes),
    /// adding their charges to `releases`.
    fn trim(&mut self, limits: &MailboxLimits, releases: &mut Releases) {
        while let Some(front) = self.entries.front() {
            let id = front.entry.id;
            if id > self.delivered {
                break;
            }
            let delivered_held = self.delivered - id + 1;
            if delivered_held <= limits.replay_window as u64
                && self.delivered_bytes <= limits.replay_window_bytes
            {
                break;
            }
            let size = front.size();
            releases.add(front.charged_to, size);
            self.delivered_bytes -= size;
            self.entries.pop_front();
        }
    }
}

impl Drop for Mailbox {
    /// A mailbox dropped without being closed (its store dropped) still gives its bytes back.
    fn drop(&mut self) {
        let mut releases = Releases::default();
        for stored in self.state.get_mut().entries.drain(..) {
            releases.add(stored.charged_to, stored.size());
        }
        releases.release(&self.held);
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
    use futures_util::FutureExt;

    use super::*;

    fn message() -> Arc<EncodedMessage> {
        EncodedMessage::from_server("join", &serde_json::json!({}))
    }

    /// A mailbox bounded by counts only, as the tests before the byte bounds knew it.
    fn counted(capacity: usize, replay_window: usize) -> Mailbox {
        let limits = MailboxLimits {
            capacity,
            max_bytes: usize::MAX,
            replay_window,
            replay_window_bytes: usize::MAX,
        };
        Mailbox::new(limits, Arc::new(HeldBytes::new(usize::MAX, usize::MAX)))
    }

    /// A message whose envelope is exactly `size` bytes (at least 22).
    fn sized(size: usize) -> Arc<EncodedMessage> {
        let body = format!("{{\"type\":\"x\",\"data\":\"{}\"}}", "a".repeat(size - 22));
        assert_eq!(body.len(), size);
        EncodedMessage::stored("x", body)
    }

    /// A mailbox bounded in bytes, charging `ledger`.
    fn bounded(max_bytes: usize, replay_window_bytes: usize, ledger: &Arc<HeldBytes>) -> Mailbox {
        let limits = MailboxLimits {
            capacity: 1000,
            max_bytes,
            replay_window: 1000,
            replay_window_bytes,
        };
        Mailbox::new(limits, Arc::clone(ledger))
    }

    /// Pushes as a store does: charges the ledger first, refunds a `Full` push.
    fn charge_and_push(
        mailbox: &Mailbox,
        ledger: &HeldBytes,
        from: Option<IpAddr>,
        message: Arc<EncodedMessage>,
    ) -> Push {
        let size = message.encoded_len();
        ledger.try_charge(from, size).unwrap();
        let push = mailbox.push(message, from);
        if push == Push::Full {
            ledger.release(from, size);
        }
        push
    }

    fn ids(read: Read) -> (Option<ResetReason>, Vec<u64>) {
        match read {
            Read::Batch(batch) => (batch.reset, batch.entries.iter().map(|e| e.id).collect()),
            other => panic!("expected a batch, got {other:?}"),
        }
    }

    #[test]
    fn ids_start_at_one_and_have_no_gaps() {
        let mailbox = counted(10, 10);
        for expected in 1..=5 {
            assert_eq!(mailbox.push(message(), None), Push::Stored { id: expected });
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
        let mailbox = counted(3, 2);
        for _ in 0..3 {
            mailbox.push(message(), None);
        }
        assert_eq!(
            mailbox.push(message(), None),
            Push::Full,
            "backlog of 3 is full"
        );
        // A reader that keeps up can receive forever: only the replay window stays behind.
        for round in 0..100u64 {
            mailbox.acknowledge(mailbox.last_id());
            assert!(
                matches!(mailbox.push(message(), None), Push::Stored { .. }),
                "round {round}"
            );
        }
        mailbox.acknowledge(mailbox.last_id());
        assert_eq!(mailbox.held(), 2);
    }

    #[test]
    fn asking_for_what_was_trimmed_resets_explicitly() {
        let mailbox = counted(10, 2);
        for _ in 0..6 {
            mailbox.push(message(), None);
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
        let mailbox = counted(2, 0);
        mailbox.acknowledge(100);
        mailbox.push(message(), None);
        mailbox.push(message(), None);
        assert_eq!(
            ids(mailbox.read_after(0, None, usize::MAX)),
            (None, vec![1, 2])
        );
    }

    #[test]
    fn a_new_stream_replaces_the_old_one_and_closing_ends_both() {
        let mailbox = counted(2, 2);
        let (first, _) = mailbox.open_stream().unwrap();
        let (second, _) = mailbox.open_stream().unwrap();
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
        let mailbox = Arc::new(counted(2, 2));
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
        let mailbox = counted(2, 2);
        let mut wake = mailbox.subscribe();
        wake.mark_seen();
        mailbox.push(message(), None);
        wake.changed().await.unwrap();
        assert_eq!(
            ids(mailbox.read_after(0, None, usize::MAX)),
            (None, vec![1])
        );
    }

    /// The undelivered backlog is bounded in bytes: a push that would go past `max_bytes` is
    /// `Full` and stores nothing; delivering makes room.
    #[test]
    fn undelivered_bytes_are_bounded() {
        let ledger = Arc::new(HeldBytes::new(usize::MAX, usize::MAX));
        let mailbox = bounded(250, 1000, &ledger);
        for _ in 0..2 {
            assert!(matches!(
                charge_and_push(&mailbox, &ledger, None, sized(100)),
                Push::Stored { .. }
            ));
        }
        assert_eq!(
            charge_and_push(&mailbox, &ledger, None, sized(100)),
            Push::Full
        );
        assert_eq!(mailbox.held_bytes(), (200, 0));
        assert_eq!(ledger.total(), 200);
        mailbox.acknowledge(2);
        assert_eq!(mailbox.held_bytes(), (0, 200));
        assert!(matches!(
            charge_and_push(&mailbox, &ledger, None, sized(100)),
            Push::Stored { .. }
        ));
    }

    /// The replay window keeps at most `replay_window_bytes` of delivered messages; trimmed ones
    /// are released from their sender's charge, and a resume from before them resets.
    #[test]
    fn the_replay_window_is_trimmed_by_bytes_and_releases_them() {
        let ledger = Arc::new(HeldBytes::new(usize::MAX, usize::MAX));
        let sender: IpAddr = "192.0.2.7".parse().unwrap();
        let mailbox = bounded(10_000, 250, &ledger);
        for _ in 0..5 {
            charge_and_push(&mailbox, &ledger, Some(sender), sized(100));
        }
        assert_eq!(ledger.held_by(sender), 500);
        mailbox.acknowledge(5);
        // 200 bytes fit in the window of 250: ids 4 and 5 stay.
        assert_eq!(mailbox.held_bytes(), (0, 200));
        assert_eq!(ledger.held_by(sender), 200);
        assert_eq!(
            ids(mailbox.read_after(3, None, usize::MAX)),
            (None, vec![4, 5])
        );
        assert_eq!(
            ids(mailbox.read_after(2, None, usize::MAX)),
            (Some(ResetReason::Expired), vec![4, 5])
        );
    }

    /// Closing lets go of everything, undelivered and replay window alike, charged to whoever
    /// sent it; dropping an unclosed mailbox does too.
    #[test]
    fn closing_releases_every_charge() {
        let ledger = Arc::new(HeldBytes::new(usize::MAX, usize::MAX));
        let alice: IpAddr = "192.0.2.1".parse().unwrap();
        let bob: IpAddr = "2001:db8::1".parse().unwrap();
        let mailbox = bounded(10_000, 10_000, &ledger);
        charge_and_push(&mailbox, &ledger, Some(alice), sized(100));
        charge_and_push(&mailbox, &ledger, Some(bob), sized(60));
        charge_and_push(&mailbox, &ledger, None, sized(40));
        mailbox.acknowledge(1);
        assert_eq!(ledger.total(), 200);
        mailbox.close();
        assert_eq!(
            (ledger.held_by(alice), ledger.held_by(bob), ledger.total()),
            (0, 0, 0)
        );
        assert_eq!(mailbox.push(sized(40), None), Push::Full, "closed");

        let dropped = bounded(10_000, 10_000, &ledger);
        charge_and_push(&dropped, &ledger, Some(alice), sized(100));
        drop(dropped);
        assert_eq!(ledger.total(), 0);
    }

    /// A read stops before the entry that would take it past its byte budget, but always
    /// carries one entry, however large; the next read continues without a gap.
    #[test]
    fn a_read_is_bounded_by_its_byte_budget() {
        let mailbox = counted(100, 100);
        for size in [100, 100, 300, 50] {
            mailbox.push(sized(size), None);
        }
        assert_eq!(ids(mailbox.read_after(0, None, 250)), (None, vec![1, 2]));
        assert_eq!(ids(mailbox.read_after(0, None, 200)), (None, vec![1, 2]));
        assert_eq!(ids(mailbox.read_after(2, None, 250)), (None, vec![3]));
        assert_eq!(ids(mailbox.read_after(3, None, 250)), (None, vec![4]));
        assert_eq!(ids(mailbox.read_after(0, None, 0)), (None, vec![1]));
    }

    /// A poll's open wakes the mailbox's listeners only when another than the opener is there
    /// (an older poll, a stream), so a lone poll is not woken by its own open.
    #[test]
    fn a_polls_open_wakes_only_other_listeners() {
        let mailbox = Arc::new(counted(2, 2));
        let mut wake = mailbox.subscribe();
        let alone = mailbox.listen();
        mailbox.open_poll();
        assert!(
            wake.changed().now_or_never().is_none(),
            "a lone poll's own open"
        );
        let other = mailbox.listen();
        mailbox.open_poll();
        assert!(
            wake.changed().now_or_never().is_some(),
            "another listener is there"
        );
        drop((alone, other));
    }

    /// A poll's start is its listen, subscription, acknowledgement and open: it keeps the
    /// peer present, replaces the poll before it, acknowledges, wakes only another listener,
    /// and sees what comes after its open. On a closed mailbox it does none of it.
    #[test]
    fn a_polls_start_is_its_listen_subscribe_acknowledge_and_open() {
        let mailbox = Arc::new(counted(4, 4));
        for _ in 0..3 {
            mailbox.push(message(), None);
        }
        let (older, _) = mailbox.open_poll().unwrap();
        let (alone, mut wake, ticket, newest) = mailbox.start_poll(2).unwrap();
        assert_eq!(newest, 3);
        assert_eq!(
            mailbox.idle_for(Instant::now()),
            None,
            "present while it polls"
        );
        let read = |ticket| mailbox.read_after(2, Some(Ticket::Poll(ticket)), usize::MAX);
        assert!(matches!(read(older), Read::Replaced));
        assert!(matches!(read(ticket), Read::Batch(batch) if batch.entries.len() == 1));
        assert_eq!(
            mailbox.held_bytes().0,
            message().encoded_len(),
            "1 and 2 delivered"
        );
        assert!(
            wake.changed().now_or_never().is_none(),
            "a lone poll's own start"
        );
        mailbox.push(message(), None);
        assert!(
            wake.changed().now_or_never().is_some(),
            "what comes after its open"
        );

        let (newer, mut newer_wake, _, _) = mailbox.start_poll(0).unwrap();
        assert!(
            wake.changed().now_or_never().is_some(),
            "the poll it replaces is woken to see it"
        );
        assert!(
            newer_wake.changed().now_or_never().is_some(),
            "its own open, seen"
        );
        drop((alone, newer));
        assert!(mailbox.idle_for(Instant::now()).is_some());

        mailbox.close();
        assert!(mailbox.start_poll(0).is_none());
        assert!(
            mailbox.idle_for(Instant::now()).is_some(),
            "no listener left behind"
        );
    }

    /// A newer poll ends the older one (its read is `Replaced`), and polls and streams do not
    /// end each other.
    #[test]
    fn a_new_poll_replaces_the_old_one_only() {
        let mailbox = counted(2, 2);
        let (stream, _) = mailbox.open_stream().unwrap();
        let (first, _) = mailbox.open_poll().unwrap();
        let (second, _) = mailbox.open_poll().unwrap();
        let read = |ticket| mailbox.read_after(0, Some(ticket), usize::MAX);
        assert!(matches!(read(Ticket::Poll(first)), Read::Replaced));
        assert!(matches!(read(Ticket::Poll(second)), Read::Batch(_)));
        assert!(matches!(read(Ticket::Stream(stream)), Read::Batch(_)));
    }
}
