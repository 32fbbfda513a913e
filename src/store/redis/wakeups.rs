//! Wake-ups over Redis pub/sub: one subscriber connection per instance, shared by every reader
//! on it, with a local `watch` per channel that fans a wake-up out to that mailbox's readers.
//!
//! One task owns the connection and performs every SUBSCRIBE and UNSUBSCRIBE in the order the
//! readers asked for them (the decision to unsubscribe is taken under the same lock as a new
//! reader's registration, so an unsubscribe can never overtake a later subscribe). A reader's
//! `subscribe` returns once Redis has confirmed the subscription, so anything appended after
//! the reader's next read is published to it. When the connection drops (Redis restarted,
//! `CLIENT KILL TYPE pubsub`), the task reconnects, subscribes again to every channel, and
//! wakes every reader, who reads its mailbox again: wake-ups lost in between delay nothing
//! further and lose nothing. A periodic PING finds a connection that died silently.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::select;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{sleep, timeout};

use crate::error::{ApiResult, Error};
use crate::logging;
use crate::store::Wake;

use super::Inner;

/// How often the subscriber connection is checked with a PING.
const PING_EVERY: Duration = Duration::from_secs(5);
/// How long a PING, a (re)connection or a subscription may take before the connection counts
/// as dead.
const PATIENCE: Duration = Duration::from_secs(2);
/// Wait between reconnection attempts: short, since readers wait on it.
const RECONNECT_DELAY: Duration = Duration::from_millis(200);

pub struct Wakeups {
    /// Channel name → its local fan-out. A `parking_lot::Mutex`: held for a map update, never
    /// across `.await`.
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    commands: mpsc::UnboundedSender<Command>,
    /// Taken by the task when it starts.
    receiver: Mutex<Option<mpsc::UnboundedReceiver<Command>>>,
}

struct Channel {
    wake: watch::Sender<u64>,
    /// Subscriptions alive for this channel on this instance.
    readers: usize,
}

enum Command {
    Subscribe(String, oneshot::Sender<bool>),
    Unsubscribe(String),
}

/// A reader's hold on its channel; the last one dropped unsubscribes.
pub struct Subscription {
    channel: String,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    commands: mpsc::UnboundedSender<Command>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut channels = self.channels.lock();
        let Some(entry) = channels.get_mut(&self.channel) else {
            return;
        };
        entry.readers -= 1;
        if entry.readers == 0 {
            channels.remove(&self.channel);
            let _ = self
                .commands
                .send(Command::Unsubscribe(std::mem::take(&mut self.channel)));
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

    /// Subscribes to `channel`, returning once Redis confirmed it.
    pub async fn subscribe(&self, channel: String, inner: &Inner) -> ApiResult<Wake> {
        let (receiver, command) = {
            let mut channels = self.channels.lock();
            let entry = channels.entry(channel.clone()).or_insert_with(|| Channel {
                wake: watch::channel(0).0,
                readers: 0,
            });
            entry.readers += 1;
            let (confirm, confirmed) = oneshot::channel();
            let _ = self
                .commands
                .send(Command::Subscribe(channel.clone(), confirm));
            (entry.wake.subscribe(), confirmed)
        };
        let subscription = Subscription {
            channel,
            channels: Arc::clone(&self.channels),
            commands: self.commands.clone(),
        };
        let confirmed = matches!(timeout(PATIENCE, command).await, Ok(Ok(true)));
        inner.metrics.store_round_trip(!confirmed);
        if !confirmed {
            return Err(Error::StoreUnavailable);
        }
        Ok(Wake {
            receiver,
            _subscription: Some(subscription),
        })
    }

    /// Wakes the readers of `channel` on this instance.
    fn wake(&self, channel: &str) {
        if let Some(entry) = self.channels.lock().get(channel) {
            entry.wake.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Wakes every reader on this instance: after a reconnection, when wake-ups may have been
    /// lost.
    fn wake_all(&self) {
        for entry in self.channels.lock().values() {
            entry.wake.send_modify(|n| *n = n.wrapping_add(1));
        }
    }
}

/// Starts the task that owns the subscriber connection; it ends with `shutdown`.
pub fn spawn(client: redis::Client, inner: Arc<Inner>, mut shutdown: rocket::Shutdown) {
    let Some(mut commands) = inner.wakeups.receiver.lock().take() else {
        return;
    };
    tokio::spawn(async move {
        let mut connected_before = false;
        loop {
            let connection = select! {
                connection = timeout(PATIENCE, client.get_async_pubsub()) => connection,
                _ = &mut shutdown => return,
            };
            let Ok(Ok(pubsub)) = connection else {
                // Readers asking now are told at once that the store is unavailable.
                while let Ok(command) = commands.try_recv() {
                    if let Command::Subscribe(_, confirm) = command {
                        let _ = confirm.send(false);
                    }
                }
                select! {
                    _ = sleep(RECONNECT_DELAY) => continue,
                    _ = &mut shutdown => return,
                }
            };
            let (mut sink, mut messages) = pubsub.split();
            let channels: Vec<String> = inner.wakeups.channels.lock().keys().cloned().collect();
            if !channels.is_empty()
                && !matches!(
                    timeout(PATIENCE, sink.subscribe(&channels)).await,
                    Ok(Ok(()))
                )
            {
                continue;
            }
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
                        Some(Command::Subscribe(channel, confirm)) => {
                            let done = matches!(timeout(PATIENCE, sink.subscribe(&channel)).await, Ok(Ok(())));
                            let _ = confirm.send(done);
                            if !done { break; }
                        }
                        Some(Command::Unsubscribe(channel)) => {
                            if !matches!(timeout(PATIENCE, sink.unsubscribe(&channel)).await, Ok(Ok(()))) {
                                break;
                            }
                        }
                    },
                    message = messages.next() => match message {
                        Some(message) => {
                            inner.metrics.store_woke();
                            inner.wakeups.wake(message.get_channel_name());
                        }
                        None => break,
                    },
                    _ = ping.tick() => {
                        // Any reply will do: with subscriptions, Redis answers ["pong", ""], not
                        // the "PONG" a String would parse.
                        let pong: Result<Result<redis::Value, _>, _> = timeout(PATIENCE, sink.ping()).await;
                        if !matches!(pong, Ok(Ok(_))) { break; }
                    }
                    _ = &mut shutdown => return,
                }
            }
            logging::warn(format_args!("redis: wake-up connection lost; reconnecting"));
            // Readers wake now and read again (the store may be gone: they end and their
            // clients reconnect), and again once the connection is back.
            inner.wakeups.wake_all();
        }
    });
}
