//! The Redis store behind the [`Store`] and [`Reader`] traits: each method delegates to the
//! inherent method of the same name, so that the store's own code reads as Redis code and this
//! file is the only one that knows the seam.

use std::net::IpAddr;
use std::sync::Arc;

use rocket::async_trait;

use crate::error::ApiResult;
use crate::idempotency::IdempotencyKey;
use crate::identity::{PeerId, RoomName};
use crate::mailbox::{PollTicket, Read, StreamTicket, Ticket};
use crate::message::EncodedMessage;
use crate::store::{
    Departure, JoinOutcome, Listening, NewPeer, Outgoing, PeerInfo, Reader, Sent, Store, Wake,
};

use super::{Reader as RedisReader, RedisStore};

#[async_trait]
impl Store for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn start(&self, shutdown: rocket::Shutdown) {
        RedisStore::start(self, shutdown);
    }

    async fn ready(&self) -> ApiResult<()> {
        RedisStore::ready(self).await
    }

    async fn charge_join(&self, client: IpAddr) -> ApiResult<()> {
        RedisStore::charge_join(self, client).await
    }

    async fn join(
        &self,
        room: &RoomName,
        peer: NewPeer,
        announcement: Arc<EncodedMessage>,
    ) -> ApiResult<JoinOutcome> {
        RedisStore::join(self, room, peer, announcement).await
    }

    async fn leave(
        &self,
        room: &RoomName,
        peer: PeerId,
        token: Option<&str>,
    ) -> ApiResult<Vec<Departure>> {
        RedisStore::leave(self, room, peer, token).await
    }

    async fn identify(&self, room: &RoomName, token: Option<&str>) -> ApiResult<PeerId> {
        RedisStore::identify(self, room, token).await
    }

    async fn send(
        &self,
        room: &RoomName,
        token: Option<&str>,
        batch: &[Outgoing],
        key: Option<&IdempotencyKey>,
    ) -> ApiResult<Sent> {
        RedisStore::send(self, room, token, batch, key).await
    }

    async fn reader(
        &self,
        room: &RoomName,
        peer: PeerId,
        token: Option<&str>,
    ) -> ApiResult<Box<dyn Reader>> {
        let reader = RedisStore::reader(self, room, peer, token).await?;
        Ok(Box::new(reader))
    }

    async fn room(&self, room: &RoomName) -> ApiResult<Option<Vec<PeerInfo>>> {
        RedisStore::room(self, room).await
    }

    async fn peer(&self, room: &RoomName, peer: PeerId) -> ApiResult<PeerInfo> {
        RedisStore::peer(self, room, peer).await
    }

    async fn sweep(&self) -> ApiResult<Vec<(RoomName, Departure)>> {
        RedisStore::sweep(self).await
    }

    async fn counts(&self) -> ApiResult<(usize, usize)> {
        RedisStore::counts(self).await
    }
}

#[async_trait]
impl Reader for RedisReader {
    async fn subscribe(&self) -> ApiResult<Wake> {
        RedisReader::subscribe(self).await
    }

    async fn open_stream(&self, acknowledge: Option<u64>) -> ApiResult<(StreamTicket, u64)> {
        RedisReader::open_stream(self, acknowledge).await
    }

    async fn open_poll(&self, acknowledge: u64) -> ApiResult<(PollTicket, u64)> {
        RedisReader::open_poll(self, acknowledge).await
    }

    fn acknowledge(&self, id: u64) {
        RedisReader::acknowledge(self, id);
    }

    fn unflushed(&self) -> bool {
        RedisReader::unflushed(self)
    }

    async fn flush(&self) -> ApiResult<()> {
        RedisReader::flush(self).await
    }

    async fn read(&self, cursor: u64, ticket: Option<Ticket>, max_bytes: usize) -> ApiResult<Read> {
        RedisReader::read(self, cursor, ticket, max_bytes).await
    }

    fn listen(&self) -> Listening {
        Listening::new(RedisReader::listen(self))
    }

    /// Wake-ups travel over the instance's pub/sub connection, which can drop unnoticed until
    /// its next health check.
    fn may_miss_wakeups(&self) -> bool {
        true
    }
}
