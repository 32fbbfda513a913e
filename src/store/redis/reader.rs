//! [`Reader`]: a peer's mailbox in Redis, for its stream or its poll: subscribing to its
//! wake-ups, opening (which replaces an older reader of the same kind, on any instance),
//! reading by id (or from the messages its wake-ups carried, `carried.rs`), and acknowledging
//! what was delivered.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use crate::error::{ApiResult, Error};
use crate::identity::{PeerId, RoomName};
use crate::mailbox::{Batch, PollTicket, Read, StreamTicket, Ticket};

use super::carried::{LastLook, SharedCarried};
use super::presence::Listening;
use super::scripts::{self, Opened, ReaderKeys, READ_LIMIT};
use super::Inner;

/// A peer's mailbox in Redis, for its stream or poll.
pub struct Reader {
    inner: Arc<Inner>,
    room: RoomName,
    peer: PeerId,
    /// `KEYS[1]` and the peer id as the scripts take them, formatted once for every read.
    keys: ReaderKeys,
    /// The newest id the reader has delivered (0: none); sent with the next read, or by
    /// [`Reader::flush`] when there is none to come.
    pending_ack: AtomicU64,
    /// The newest id Redis has been told of.
    sent_ack: AtomicU64,
    /// The nonce of this reader's open, which its wake-up carries, so that it does not wake
    /// this reader (`store::OwnOpens`); 0 before the open.
    own_open: Arc<AtomicU32>,
    /// The mailbox channel's wake-ups and the messages they carried; set by `subscribe`.
    carried: OnceLock<SharedCarried>,
    /// Where the channel's wake-ups stood (`Carried::count`) before the reader's last look at
    /// Redis (its open or its last read), and the newest id that look found: what the next
    /// read may answer from (`LastLook`).
    since: AtomicU64,
    newest_seen: AtomicU64,
    /// The entries, and their envelopes' bytes, that reads returned since the last
    /// acknowledgement sent: what Redis may still count as undelivered (`Reader::may_answer`).
    unacked_entries: AtomicUsize,
    unacked_bytes: AtomicUsize,
}

/// A nonce for an open: 0 is none. Counted from a random start, so that two instances' opens
/// of one peer share a nonce once in 2^32; a shared one would only leave the older reader
/// waiting to be told it was replaced until its next look at the mailbox.
fn open_nonce() -> u32 {
    static NEXT: OnceLock<AtomicU32> = OnceLock::new();
    let next = NEXT.get_or_init(|| AtomicU32::new(uuid::Uuid::new_v4().as_u128() as u32));
    loop {
        let nonce = next.fetch_add(1, Ordering::Relaxed);
        if nonce != 0 {
            return nonce;
        }
    }
}

impl Reader {
    /// The reader of `peer`, whose token the caller has checked.
    pub(super) fn new(inner: Arc<Inner>, room: RoomName, peer: PeerId) -> Self {
        let keys = ReaderKeys {
            peers: inner.keys.peers(&room),
            peer: peer.to_string(),
        };
        Self {
            inner,
            room,
            peer,
            keys,
            pending_ack: AtomicU64::new(0),
            sent_ack: AtomicU64::new(0),
            own_open: Arc::default(),
            carried: OnceLock::new(),
            since: AtomicU64::new(0),
            newest_seen: AtomicU64::new(0),
            unacked_entries: AtomicUsize::new(0),
            unacked_bytes: AtomicUsize::new(0),
        }
    }

    pub async fn subscribe(&self) -> ApiResult<crate::store::Wake> {
        let channel = self.inner.keys.wake(&self.room, self.peer);
        let (wake, carried) = self
            .inner
            .wakeups
            .subscribe(channel, &self.inner, Arc::clone(&self.own_open))
            .await?;
        let _ = self.carried.set(carried);
        Ok(wake)
    }

    /// Where the channel's wake-ups stand now (0 before `subscribe`).
    fn wake_ups_so_far(&self) -> u64 {
        self.carried
            .get()
            .map_or(0, |carried| carried.lock().count())
    }

    pub async fn open_stream(&self, acknowledge: Option<u64>) -> ApiResult<(StreamTicket, u64)> {
        let (epoch, last) = self.open("stream", acknowledge).await?;
        Ok((StreamTicket(epoch), last))
    }

    /// Makes the caller the peer's one poll in flight (an older one, on any instance, reads
    /// `Replaced`), after acknowledging `acknowledge`.
    pub async fn open_poll(&self, acknowledge: u64) -> ApiResult<(PollTicket, u64)> {
        self.pending_ack.fetch_max(acknowledge, Ordering::Relaxed);
        let (epoch, last) = self.open("poll", Some(acknowledge)).await?;
        self.sent_ack.fetch_max(acknowledge, Ordering::Relaxed);
        Ok((PollTicket(epoch), last))
    }

    /// Makes the caller the peer's newest reader of `kind`, after acknowledging `acknowledge`:
    /// its epoch, and the newest id.
    async fn open(&self, kind: &str, acknowledge: Option<u64>) -> ApiResult<(u64, u64)> {
        // Known before the wake-up can arrive.
        let nonce = open_nonce();
        self.own_open.store(nonce, Ordering::Release);
        self.since.store(self.wake_ups_so_far(), Ordering::Relaxed);
        match scripts::open(&self.inner, &self.keys, kind, acknowledge, nonce).await? {
            Opened::Open { epoch, last_id } => {
                self.newest_seen.store(last_id, Ordering::Relaxed);
                Ok((epoch, last_id))
            }
            Opened::Closed => Err(Error::PeerNotFound),
        }
    }

    pub fn acknowledge(&self, id: u64) {
        self.pending_ack.fetch_max(id, Ordering::Relaxed);
    }

    /// What follows `cursor`: at most a read's limit of entries and, past the first,
    /// `max_bytes` bytes of envelopes; from the messages the wake-ups carried when they can tell
    /// (`carried.rs`), otherwise read from Redis, carrying the acknowledgement not yet sent.
    pub async fn read(
        &self,
        cursor: u64,
        ticket: Option<Ticket>,
        max_bytes: usize,
    ) -> ApiResult<Read> {
        if let Some(carried) = self.carried.get() {
            let mut carried = carried.lock();
            let look = LastLook {
                since: self.since.load(Ordering::Relaxed),
                own_open: self.own_open.load(Ordering::Acquire),
                newest: self.newest_seen.load(Ordering::Relaxed),
            };
            if let Some(batch) = carried.read(look, cursor, READ_LIMIT, max_bytes) {
                if self.may_answer(&batch) {
                    self.count_unacked(&batch, false);
                    return Ok(Read::Batch(batch));
                }
            }
            // Noted before the read is sent: whatever Redis publishes after it comes later.
            self.since.store(carried.count(), Ordering::Relaxed);
        }
        let ack = self.pending_ack.load(Ordering::Relaxed);
        let unsent = ack > self.sent_ack.load(Ordering::Relaxed);
        let read = scripts::read(
            &self.inner,
            &self.keys,
            cursor,
            unsent.then_some(ack),
            ticket,
            max_bytes,
        )
        .await?;
        self.sent_ack.fetch_max(ack, Ordering::Relaxed);
        if let Read::Batch(batch) = &read {
            self.newest_seen.store(batch.last_id, Ordering::Relaxed);
            self.count_unacked(batch, true);
            if let (Some(carried), Some(newest)) = (self.carried.get(), batch.entries.last()) {
                carried.lock().forget_through(newest.id);
            }
        }
        Ok(read)
    }

    /// Whether the reader may answer `batch` from what was carried, without the read of Redis
    /// that would carry its acknowledgement: only while what it answered since its last
    /// acknowledgement stays within a quarter of its mailbox's bounds. Redis counts what
    /// was not acknowledged as undelivered, and a reader that keeps up must never be evicted
    /// for volume; acknowledged at each read, it was at most one read behind.
    fn may_answer(&self, batch: &Batch) -> bool {
        let limits = &self.inner.limits;
        let entries = self.unacked_entries.load(Ordering::Relaxed) + batch.entries.len();
        let bytes = self.unacked_bytes.load(Ordering::Relaxed) + batch_bytes(batch);
        entries <= limits.mailbox_capacity / 4 && bytes <= limits.mailbox_max_bytes / 4
    }

    /// Counts `batch` as returned and not acknowledged; `from_redis`: its read carried the
    /// acknowledgement of everything returned before.
    fn count_unacked(&self, batch: &Batch, from_redis: bool) {
        let (entries, bytes) = (batch.entries.len(), batch_bytes(batch));
        if from_redis {
            self.unacked_entries.store(entries, Ordering::Relaxed);
            self.unacked_bytes.store(bytes, Ordering::Relaxed);
        } else {
            self.unacked_entries.fetch_add(entries, Ordering::Relaxed);
            self.unacked_bytes.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// Whether an acknowledgement is waiting for the next read or [`Reader::flush`].
    pub fn unflushed(&self) -> bool {
        self.pending_ack.load(Ordering::Relaxed) > self.sent_ack.load(Ordering::Relaxed)
    }

    /// Sends an acknowledgement that no read has carried yet.
    pub async fn flush(&self) -> ApiResult<()> {
        let ack = self.pending_ack.load(Ordering::Relaxed);
        if ack <= self.sent_ack.load(Ordering::Relaxed) {
            return Ok(());
        }
        scripts::acknowledge(&self.inner, &self.keys, ack).await?;
        self.sent_ack.fetch_max(ack, Ordering::Relaxed);
        self.unacked_entries.store(0, Ordering::Relaxed);
        self.unacked_bytes.store(0, Ordering::Relaxed);
        Ok(())
    }

    pub fn listen(&self) -> Listening {
        Listening::new(Arc::clone(&self.inner), self.room.clone(), self.peer)
    }
}

/// The bytes of `batch`'s envelopes, as the mailbox counts them.
fn batch_bytes(batch: &Batch) -> usize {
    batch
        .entries
        .iter()
        .map(|entry| entry.message.body().len())
        .sum()
}
