//! Wake-ups over Redis pub/sub: one subscriber connection per instance, shared by every reader
//! on it, with a local `watch` per channel that fans a wake-up out to that mailbox's readers.
//!
//! One task owns the connection and performs every SUBSCRIBE and UNSUBSCRIBE, one after the
//! other. A reader's `subscribe` returns once Redis has confirmed the subscription (at once if
//! it already was), so anything appended after the reader's next read is published to it. A
//! channel whose last reader went stays subscribed for a while ([`LINGER`]): a long-polling
//! peer asks again right after each answer. The task unsubscribes the channels that lingered
//! long enough, having removed them from the map under its lock, so that a reader arriving
//! after that asks for a new subscription, which the task performs after the unsubscribe. When the connection drops (Redis restarted,
//! `CLIENT KILL TYPE pubsub`), the task reconnects, subscribes again to every channel, and
//! wakes every reader, who reads its mailbox again: wake-ups lost in between delay nothing
//! further and lose nothing. A periodic PING finds a connection that died silently.
//!
//! In a Redis Cluster the channels are sharded (`SSUBSCRIBE`, on the room's slot, which the
//! cluster connection routes to the slot's owner): [`spawn_sharded`]. The redis crate does not
//! follow a slot that moves (design note, finding 9): the server then pushes a `SUNSUBSCRIBE`
//! of its channels, and the subscription is gone. So a `SUNSUBSCRIBE` this instance did not ask
//! for (its channel still has readers or lingers) is subscribed again, retried until it holds,
//! and that channel's readers read once more, since wake-ups published meanwhile were lost; a
//! lost connection (a node gone) subscribes every channel again and wakes every reader.
//!
//! With Sentinel, every (re)connection goes to the master the commands' connection resolved
//! (`connection.rs`), and the task also reconnects whenever that connection is found stale
//! (`+switch-master`, a failover's start, `ROLE`, an error saying the master went): the old
//! master keeps its subscribers connected for ~10 s after a planned failover, deaf to every
//! wake-up published on the new one.

use std::collections::HashMap;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::select;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep, timeout, Instant};

use crate::error::{ApiResult, Error};
use crate::logging;
use crate::store::{OwnOpens, Wake};
use crate::wake_counter::WakeCounter;

use super::carried::{SharedCarried, WakeUp};
use super::Inner;

/// How often the subscriber connection is checked with a PING.
const PING_EVERY: Duration = Duration::from_secs(5);
/// How long a PING, a (re)connection or a subscription may take before the connection counts
/// as dead.
const PATIENCE: Duration = Duration::from_secs(2);
/// Wait between reconnection attempts: short, since readers wait on it.
const RECONNECT_DELAY: Duration = Duration::from_millis(200);
/// How long a channel with no reader stays subscribed: a long-poll's next request comes within
/// a round trip of its answer, and re-subscribing for each would cost two round trips per poll
/// on the instance's one subscriber connection.
const LINGER: Duration = Duration::from_secs(10);

pub struct Wakeups {
    /// Channel name → its local fan-out. A `parking_lot::Mutex`: held for a map update, never
    /// across `.await`.
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    commands: mpsc::UnboundedSender<Command>,
    /// Taken by the task when it starts.
    receiver: Mutex<Option<mpsc::UnboundedReceiver<Command>>>,
}

struct Channel {
    wake: WakeCounter,
    /// The wake-ups' record and the messages they carried (`carried.rs`), updated with `wake`.
    carried: SharedCarried,
    /// Subscriptions alive for this channel on this instance.
    readers: usize,
    /// Whether Redis has confirmed the subscription: a reader that finds it so needs no round
    /// trip of its own.
    confirmed: bool,
    /// When the last reader went; the channel stays subscribed for [`LINGER`] after, since a
    /// long-polling peer asks again at once.
    idle_since: Option<Instant>,
}

/// A reader's request for a subscription, answered once Redis confirmed it (or could not).
struct Command {
    channel: String,
    confirm: oneshot::Sender<bool>,
}

/// A reader's hold on its channel; once the last one is dropped, the channel is unsubscribed
/// after [`LINGER`] unless a reader comes back.
pub struct Subscription {
    channel: String,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut channels = self.channels.lock();
        let Some(entry) = channels.get_mut(&self.channel) else {
            return;
        };
        entry.readers -= 1;
        if entry.readers == 0 {
            // Unsubscribed later, by the connection's task, if no reader comes back.
            entry.idle_since = Some(Instant::now());
        }
    }
}

impl Wakeups {
    pub fn new() -> Self {
        let (commands, receiver) = mpsc::unbounded_channel();
        Self {
            channels: Arc::default(),
            commands,
            receiver: Mutex::new(Some(receiver)),
        }
    }

    /// Subscribes to `channel`, returning once Redis confirmed it, with the channel's record of
    /// carried messages; the wake-up of the open whose nonce is in `own_open` does not wake the
    /// reader (`OwnOpens`).
    pub async fn subscribe(
        &self,
        channel: String,
        inner: &Inner,
        own_open: Arc<AtomicU32>,
    ) -> ApiResult<(Wake, SharedCarried)> {
        let (receiver, command, carried) = {
            let mut channels = self.channels.lock();
            let entry = channels.entry(channel.clone()).or_insert_with(|| Channel {
                wake: WakeCounter::new(0),
                carried: SharedCarried::default(),
                readers: 0,
                confirmed: false,
                idle_since: None,
            });
            entry.readers += 1;
            entry.idle_since = None;
            let command = (!entry.confirmed).then(|| {
                let (confirm, confirmed) = oneshot::channel();
                let _ = self.commands.send(Command {
                    channel: channel.clone(),
                    confirm,
                });
                confirmed
            });
            (entry.wake.watch(), command, Arc::clone(&entry.carried))
        };
        let subscription = Subscription {
            channel: channel.clone(),
            channels: Arc::clone(&self.channels),
        };
        if let Some(command) = command {
            let confirmed = matches!(timeout(PATIENCE, command).await, Ok(Ok(true)));
            inner.metrics.store_round_trip(!confirmed);
            if !confirmed {
                return Err(Error::StoreUnavailable);
            }
            if let Some(entry) = self.channels.lock().get_mut(&channel) {
                entry.confirmed = true;
            }
        }
        let wake = Wake::passing_own_opens(receiver, own_open, Some(Box::new(subscription)));
        Ok((wake, carried))
    }

    /// Forgets the channels that have had no reader for [`LINGER`], returning their names to
    /// unsubscribe from (the caller, the connection's task, does so in order).
    fn expired(&self, now: Instant) -> Vec<String> {
        let mut channels = self.channels.lock();
        let expired: Vec<String> = channels
            .iter()
            .filter(|(_, entry)| {
                entry
                    .idle_since
                    .is_some_and(|since| now.duration_since(since) >= LINGER)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in &expired {
            channels.remove(name);
        }
        expired
    }

    /// After a reconnection: no subscription is confirmed until the new connection confirms it.
    fn unconfirm_all(&self) {
        for entry in self.channels.lock().values_mut() {
            entry.confirmed = false;
        }
    }

    fn confirm_all(&self) {
        for entry in self.channels.lock().values_mut() {
            entry.confirmed = true;
        }
    }

    /// Wakes the readers of `channel` on this instance, with the wake-up's `payload`: "o<nonce>"
    /// from an open (open.lua), which does not wake the reader that opened (`OwnOpens`), or the
    /// messages appended ("m...", `carried.rs`), recorded for the readers to answer from.
    fn wake(&self, channel: &str, payload: &[u8]) {
        let wake_up = WakeUp::parse(payload);
        if let Some(entry) = self.channels.lock().get(channel) {
            entry.wake_up(wake_up);
        }
    }

    /// Wakes every reader on this instance: after a reconnection, when wake-ups may have been
    /// lost. Plain wake-ups: only Redis can tell what changed.
    fn wake_all(&self) {
        for entry in self.channels.lock().values() {
            entry.wake_up(WakeUp::Plain);
        }
    }
}

impl Channel {
    /// Records `wake_up` and wakes the channel's readers, in that order, so that a reader woken
    /// finds it recorded.
    fn wake_up(&self, wake_up: WakeUp) {
        let nonce = wake_up.nonce();
        self.carried.lock().record(wake_up);
        self.wake.change(|value| OwnOpens::next(value, nonce));
    }
}

/// Starts the task that owns the subscriber connection; it ends with `shutdown`. The connection
/// is made by the commands' [`Connection`](super::connection::Connection): in Sentinel mode, to
/// the master it resolves, at every (re)connect; and it reconnects whenever the commands'
/// connection is found stale (`+switch-master`, `ROLE`, an error that says the master went),
/// since a planned failover leaves the old master's subscribers connected for ~10 s.
pub fn spawn(inner: Arc<Inner>, mut shutdown: rocket::Shutdown) {
    let Some(mut commands) = inner.wakeups.receiver.lock().take() else {
        return;
    };
    if inner.connection.is_cluster() {
        tokio::spawn(spawn_sharded(inner, commands, shutdown));
        return;
    }
    let mut switched = inner.connection.switched();
    tokio::spawn(async move {
        let mut connected_before = false;
        loop {
            // A switch from now on moves this connection again.
            switched.borrow_and_update();
            let connection = select! {
                connection = timeout(PATIENCE, inner.connection.pubsub()) => connection,
                _ = &mut shutdown => return,
            };
            let Ok(Ok(pubsub)) = connection else {
                // Readers asking now are told at once that the store is unavailable.
                while let Ok(command) = commands.try_recv() {
                    let _ = command.confirm.send(false);
                }
                select! {
                    _ = sleep(RECONNECT_DELAY) => continue,
                    _ = &mut shutdown => return,
                }
            };
            let (mut sink, mut messages) = pubsub.split();
            inner.wakeups.unconfirm_all();
            let channels: Vec<String> = inner.wakeups.channels.lock().keys().cloned().collect();
            if !channels.is_empty()
                && !matches!(
                    timeout(PATIENCE, sink.subscribe(&channels)).await,
                    Ok(Ok(()))
                )
            {
                continue;
            }
            inner.wakeups.confirm_all();
            if connected_before {
                inner.metrics.store_reconnected();
                logging::info(format_args!(
                    "redis: wake-up connection re-established; {} mailboxes re-read",
                    channels.len()
                ));
            }
            connected_before = true;
            inner.wakeups.wake_all();

            let mut ping = tokio::time::interval(PING_EVERY);
            ping.tick().await;
            loop {
                select! {
                    command = commands.recv() => match command {
                        None => return,
                        Some(Command { channel, confirm }) => {
                            let done = matches!(timeout(PATIENCE, sink.subscribe(&channel)).await, Ok(Ok(())));
                            let _ = confirm.send(done);
                            if !done { break; }
                        }
                    },
                    message = messages.next() => match message {
                        Some(message) => {
                            inner
                                .wakeups
                                .wake(message.get_channel_name(), message.get_payload_bytes());
                            // Counted once recorded: a wake-up counted is one a reader finds.
                            inner.metrics.store_woke();
                        }
                        None => break,
                    },
                    _ = ping.tick() => {
                        let expired = inner.wakeups.expired(Instant::now());
                        if !expired.is_empty()
                            && !matches!(timeout(PATIENCE, sink.unsubscribe(&expired)).await, Ok(Ok(())))
                        {
                            break;
                        }
                        // Any reply will do: with subscriptions, Redis answers ["pong", ""], not
                        // the "PONG" a String would parse.
                        let pong: Result<Result<redis::Value, _>, _> = timeout(PATIENCE, sink.ping()).await;
                        if !matches!(pong, Ok(Ok(_))) { break; }
                    }
                    _ = switched.changed() => break,
                    _ = &mut shutdown => return,
                }
            }
            logging::warn(format_args!(
                "redis: wake-up connection lost or moved; reconnecting"
            ));
            // Readers that come now must wait for the new connection's confirmation.
            inner.wakeups.unconfirm_all();
            // Readers wake now and read again (the store may be gone: they end and their
            // clients reconnect), and again once the connection is back.
            inner.wakeups.wake_all();
        }
    });
}

/// The wake-ups' task in a Redis Cluster: sharded pub/sub on a RESP3 cluster connection, whose
/// pushes arrive on a channel of their own (see the module's doc).
async fn spawn_sharded(
    inner: Arc<Inner>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    mut shutdown: rocket::Shutdown,
) {
    let mut connected_before = false;
    loop {
        let (sender, mut pushes) = mpsc::unbounded_channel();
        let connection = select! {
            connection = timeout(PATIENCE, inner.connection.sharded_pubsub(sender)) => connection,
            _ = &mut shutdown => return,
        };
        let Ok(Ok(mut connection)) = connection else {
            while let Ok(command) = commands.try_recv() {
                let _ = command.confirm.send(false);
            }
            select! {
                _ = sleep(RECONNECT_DELAY) => continue,
                _ = &mut shutdown => return,
            }
        };
        inner.wakeups.unconfirm_all();
        let channels: Vec<String> = inner.wakeups.channels.lock().keys().cloned().collect();
        if !ssubscribe_all(&mut connection, &channels).await {
            continue;
        }
        inner.wakeups.confirm_all();
        if connected_before {
            inner.metrics.store_reconnected();
        }
        connected_before = true;
        inner.wakeups.wake_all();

        let mut linger = tokio::time::interval(PING_EVERY);
        linger.tick().await;
        loop {
            select! {
                command = commands.recv() => match command {
                    None => return,
                    Some(Command { channel, confirm }) => {
                        let done = matches!(
                            timeout(PATIENCE, connection.ssubscribe(&channel)).await,
                            Ok(Ok(()))
                        );
                        let _ = confirm.send(done);
                    }
                },
                push = pushes.recv() => match push {
                    None => break,
                    Some(push) => match push.kind {
                        redis::PushKind::SMessage => {
                            if let Some(channel) = push_channel(&push) {
                                inner.wakeups.wake(&channel, push_payload(&push));
                                inner.metrics.store_woke();
                            }
                        }
                        // A slot moved: the server dropped the subscription. Unless this
                        // instance asked (the channel is gone from the map), subscribe again,
                        // on the slot's new owner, and have its readers read once more.
                        redis::PushKind::SUnsubscribe => {
                            let Some(channel) = push_channel(&push) else { continue };
                            if !inner.wakeups.channels.lock().contains_key(&channel) {
                                continue;
                            }
                            logging::info(format_args!(
                                "redis: the cluster unsubscribed {channel} (its slot moved); subscribing again"
                            ));
                            let started = Instant::now();
                            while !matches!(
                                timeout(PATIENCE, connection.ssubscribe(&channel)).await,
                                Ok(Ok(()))
                            ) {
                                if started.elapsed() > PATIENCE * 5 {
                                    break;
                                }
                                sleep(RESUBSCRIBE_DELAY).await;
                            }
                            inner.wakeups.wake(&channel, b"");
                        }
                        // A node's connection went: the crate subscribes again where it can;
                        // subscribe every channel again to be sure, and wake every reader.
                        redis::PushKind::Disconnection => {
                            let channels: Vec<String> =
                                inner.wakeups.channels.lock().keys().cloned().collect();
                            let subscribed = ssubscribe_all(&mut connection, &channels).await;
                            inner.wakeups.wake_all();
                            if !subscribed {
                                break;
                            }
                        }
                        _ => {}
                    },
                },
                _ = linger.tick() => {
                    for channel in inner.wakeups.expired(Instant::now()) {
                        let _ = timeout(PATIENCE, connection.sunsubscribe(&channel)).await;
                    }
                }
                _ = &mut shutdown => return,
            }
        }
        logging::warn(format_args!(
            "redis: cluster wake-up connection lost; reconnecting"
        ));
        inner.wakeups.unconfirm_all();
        inner.wakeups.wake_all();
    }
}

/// Between two attempts to subscribe a channel again after its slot moved: the slot's new owner
/// answers within a few milliseconds of the move, or, after a failover, once the replica is
/// promoted.
const RESUBSCRIBE_DELAY: Duration = Duration::from_millis(100);

/// `SSUBSCRIBE` of each of `channels` (each routed to its slot); false if one failed.
async fn ssubscribe_all(
    connection: &mut redis::cluster_async::ClusterConnection,
    channels: &[String],
) -> bool {
    for channel in channels {
        if !matches!(
            timeout(PATIENCE, connection.ssubscribe(channel)).await,
            Ok(Ok(()))
        ) {
            return false;
        }
    }
    true
}

/// The channel a push is about (its first element).
/// The payload of a sharded message push, `[channel, payload]` ("" when it has none).
fn push_payload(push: &redis::PushInfo) -> &[u8] {
    match push.data.get(1) {
        Some(redis::Value::BulkString(bytes)) => bytes,
        _ => b"",
    }
}

fn push_channel(push: &redis::PushInfo) -> Option<String> {
    match push.data.first()? {
        redis::Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        redis::Value::SimpleString(text) => Some(text.clone()),
        _ => None,
    }
}
