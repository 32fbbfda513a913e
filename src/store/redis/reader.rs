//! [`Reader`]: a peer's mailbox in Redis, for its stream or its poll: subscribing to its
//! wake-ups, opening (which replaces an older reader of the same kind, on any instance),
//! reading by id, and acknowledging what was delivered.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crate::error::{ApiResult, Error};
use crate::identity::{PeerId, RoomName};
use crate::mailbox::{PollTicket, Read, StreamTicket, Ticket};

use super::presence::Listening;
use super::scripts::{self, Opened, ReaderKeys};
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
        }
    }

    pub async fn subscribe(&self) -> ApiResult<crate::store::Wake> {
        let channel = self.inner.keys.wake(&self.room, self.peer);
        self.inner
            .wakeups
            .subscribe(channel, &self.inner, Arc::clone(&self.own_open))
            .await
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
        match scripts::open(&self.inner, &self.keys, kind, acknowledge, nonce).await? {
            Opened::Open { epoch, last_id } => Ok((epoch, last_id)),
            Opened::Closed => Err(Error::PeerNotFound),
        }
    }

    pub fn acknowledge(&self, id: u64) {
        self.pending_ack.fetch_max(id, Ordering::Relaxed);
    }

    /// What follows `cursor`: at most a read's limit of entries and, past the first,
    /// `max_bytes` bytes of envelopes; carrying the acknowledgement not yet sent.
    pub async fn read(
        &self,
        cursor: u64,
        ticket: Option<Ticket>,
        max_bytes: usize,
    ) -> ApiResult<Read> {
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
        Ok(read)
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
        Ok(())
    }

    pub fn listen(&self) -> Listening {
        Listening::new(Arc::clone(&self.inner), self.room.clone(), self.peer)
    }
}
