//! Counters and gauges that the hub, the transports, the request logs (every rejection) and the
//! STUN server report into, exposed in the Prometheus/OpenMetrics text format by `GET /metrics`.
//!
//! Reporting is an atomic add on a handle resolved when the server starts (every label value is
//! known then, except error codes, which only cost a map lookup on the error path), so the hot
//! path pays no lock and no allocation. Room and peer counts are read from the hub at scrape
//! time instead of being tracked on every join and leave.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::mailbox::ResetReason;
use crate::membership::LeaveReason;

type Labels = [(&'static str, &'static str); 1];

/// A cheap, cloneable handle; every clone reports into the same registry.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    rooms: Gauge,
    peers: Gauge,
    sse_streams: Gauge,
    polls_in_flight: Gauge,
    connections: Gauge,
    joined: Counter,
    left: Counter,
    timed_out: Counter,
    evicted: Counter,
    accepted: Counter,
    delivered_sse: Counter,
    delivered_poll: Counter,
    reset_expired: Counter,
    reset_ahead: Counter,
    reset_lost: Counter,
    rejections: Family<Labels, Counter>,
    stun_answered: Counter,
    stun_ignored: Counter,
    store_round_trips: Counter,
    store_errors: Counter,
    store_reconnects: Counter,
    store_wakeups: Counter,
    presence_sweeps: Counter,
}

/// Decrements a gauge when dropped: what an open stream or a waiting poll holds.
pub struct GaugeGuard(Gauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("signpost");
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let gauge = Gauge::default();
            registry.register(name, help, gauge.clone());
            gauge
        };
        let rooms = gauge(&mut registry, "rooms", "Rooms that exist now");
        let peers = gauge(&mut registry, "peers", "Peers in all rooms now");
        let sse_streams = gauge(&mut registry, "sse_streams", "Open SSE streams");
        let polls_in_flight = gauge(&mut registry, "polls_in_flight", "Long-polls waiting");
        let connections = gauge(&mut registry, "connections", "Open client connections");

        let counters = |registry: &mut Registry, name: &str, help: &str, label, values: &[_]| {
            let family = Family::<Labels, Counter>::default();
            registry.register(name, help, family.clone());
            values
                .iter()
                .map(|value| family.get_or_create(&[(label, *value)]).clone())
                .collect::<Vec<_>>()
        };
        let departures = counters(
            &mut registry,
            "peers_left",
            "Peers that left their room, by reason (evicted: stopped reading)",
            "reason",
            &["left", "timeout", "evicted"],
        );
        let delivered = counters(
            &mut registry,
            "messages_delivered",
            "Messages handed to a peer, by transport",
            "transport",
            &["sse", "poll"],
        );
        let resets = counters(
            &mut registry,
            "mailbox_resets",
            "Reads that could not resume gaplessly and were told to reset, by reason",
            "reason",
            &["expired", "ahead", "lost"],
        );
        let stun = counters(
            &mut registry,
            "stun_requests",
            "UDP datagrams received by the built-in STUN server, by outcome",
            "outcome",
            &["answered", "ignored"],
        );
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let counter = Counter::<u64, AtomicU64>::default();
            registry.register(name, help, counter.clone());
            counter
        };
        let joined = counter(&mut registry, "peers_joined", "Peers that joined a room");
        let accepted = counter(
            &mut registry,
            "messages_accepted",
            "Messages accepted from senders",
        );
        let store_round_trips = counter(
            &mut registry,
            "store_round_trips",
            "Commands and scripts sent to the shared store (Redis)",
        );
        let store_errors = counter(
            &mut registry,
            "store_errors",
            "Round trips to the shared store that failed (unreachable, timed out, refused)",
        );
        let store_reconnects = counter(
            &mut registry,
            "store_reconnects",
            "Times the shared store's wake-up (pub/sub) connection was established again",
        );
        let store_wakeups = counter(
            &mut registry,
            "store_wakeups",
            "Wake-ups received from the shared store for readers on this instance",
        );
        let presence_sweeps = counter(
            &mut registry,
            "presence_sweeps",
            "Presence sweeps this instance completed (one that could not reach the store is not counted)",
        );
        let rejections = Family::<Labels, Counter>::default();
        registry.register(
            "rejections",
            "Requests answered with an error, by error code",
            rejections.clone(),
        );

        Self {
            inner: Arc::new(Inner {
                registry,
                rooms,
                peers,
                sse_streams,
                polls_in_flight,
                connections,
                joined,
                left: departures[0].clone(),
                timed_out: departures[1].clone(),
                evicted: departures[2].clone(),
                accepted,
                delivered_sse: delivered[0].clone(),
                delivered_poll: delivered[1].clone(),
                reset_expired: resets[0].clone(),
                reset_ahead: resets[1].clone(),
                reset_lost: resets[2].clone(),
                rejections,
                stun_answered: stun[0].clone(),
                stun_ignored: stun[1].clone(),
                store_round_trips,
                store_errors,
                store_reconnects,
                store_wakeups,
                presence_sweeps,
            }),
        }
    }

    pub fn peer_joined(&self) {
        self.inner.joined.inc();
    }

    pub fn peer_left(&self, reason: LeaveReason) {
        match reason {
            LeaveReason::Left => &self.inner.left,
            LeaveReason::Timeout => &self.inner.timed_out,
            LeaveReason::Evicted => &self.inner.evicted,
        }
        .inc();
    }

    pub fn messages_accepted(&self, count: usize) {
        self.inner.accepted.inc_by(count as u64);
    }

    pub fn delivered_by_sse(&self, count: usize) {
        self.inner.delivered_sse.inc_by(count as u64);
    }

    pub fn delivered_by_poll(&self, count: usize) {
        self.inner.delivered_poll.inc_by(count as u64);
    }

    pub fn mailbox_reset(&self, reason: ResetReason) {
        match reason {
            ResetReason::Expired => &self.inner.reset_expired,
            ResetReason::Ahead => &self.inner.reset_ahead,
            ResetReason::Lost => &self.inner.reset_lost,
        }
        .inc();
    }

    /// An error response with this `code`.
    pub fn rejected(&self, code: &'static str) {
        self.inner.rejections.get_or_create(&[("code", code)]).inc();
    }

    /// A round trip to the shared store, and whether it failed.
    pub fn store_round_trip(&self, failed: bool) {
        self.inner.store_round_trips.inc();
        if failed {
            self.inner.store_errors.inc();
        }
    }

    pub fn store_reconnected(&self) {
        self.inner.store_reconnects.inc();
    }

    pub fn store_woke(&self) {
        self.inner.store_wakeups.inc();
    }

    /// A presence sweep completed, whether or not it removed anyone.
    pub fn presence_swept(&self) {
        self.inner.presence_sweeps.inc();
    }

    pub fn stun_answered(&self) {
        self.inner.stun_answered.inc();
    }

    pub fn stun_ignored(&self) {
        self.inner.stun_ignored.inc();
    }

    /// Counts an open SSE stream until the guard drops.
    pub fn sse_stream_opened(&self) -> GaugeGuard {
        self.inner.sse_streams.inc();
        GaugeGuard(self.inner.sse_streams.clone())
    }

    /// Counts a waiting long-poll until the guard drops.
    pub fn poll_started(&self) -> GaugeGuard {
        self.inner.polls_in_flight.inc();
        GaugeGuard(self.inner.polls_in_flight.clone())
    }

    /// Counts an open client connection until the guard drops.
    pub fn connection_opened(&self) -> GaugeGuard {
        self.inner.connections.inc();
        GaugeGuard(self.inner.connections.clone())
    }

    pub fn sse_streams(&self) -> i64 {
        self.inner.sse_streams.get()
    }

    pub fn polls_in_flight(&self) -> i64 {
        self.inner.polls_in_flight.get()
    }

    /// The exposition text, with the room and peer gauges set from `counts`.
    /// `counts` is `None` when the store could not count: the gauges keep their last values.
    pub fn render(&self, counts: Option<(usize, usize)>) -> String {
        if let Some((rooms, peers)) = counts {
            self.inner.rooms.set(rooms as i64);
            self.inner.peers.set(peers as i64);
        }
        let mut text = String::with_capacity(4096);
        // Writing to a String cannot fail.
        let _ = encode(&mut text, &self.inner.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_count_what_is_open_and_labels_come_out() {
        let metrics = Metrics::new();
        let stream = metrics.sse_stream_opened();
        let _poll = metrics.poll_started();
        drop(stream);
        metrics.rejected("room_full");
        metrics.peer_left(LeaveReason::Evicted);
        let text = metrics.render(Some((2, 3)));
        assert!(text.contains("signpost_sse_streams 0\n"), "{text}");
        assert!(text.contains("signpost_polls_in_flight 1\n"), "{text}");
        assert!(text.contains("signpost_rooms 2\n"), "{text}");
        assert!(
            text.contains("signpost_rejections_total{code=\"room_full\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("signpost_peers_left_total{reason=\"evicted\"} 1\n"),
            "{text}"
        );
    }
}
