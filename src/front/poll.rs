//! The long-poll transport, for networks where streams do not get through: each request returns
//! what came after `after` at once, or waits for it up to `wait` seconds. Asking for what comes
//! after `after` acknowledges everything up to it.
//!
//! An answer carries at most `poll_max_bytes` of messages (the next poll gets the rest at once),
//! and a peer has one poll in flight: a newer poll ends an older one, which answers no messages
//! with `last_id` = its `after`, so that a client cannot make the server hold many answers.

use std::time::Duration;

use hyper::http::request::Parts;
use tokio::select;
use tokio::time::{sleep_until, Instant};

use crate::api::params::number;
use crate::error::Error;
use crate::front::request;
use crate::front::response::Answer;
use crate::front::Front;
use crate::mailbox::{Batch, Read, Ticket};
use crate::metrics::Metrics;
use crate::store::PollStart;

/// `GET /api/rooms/{room}/peers/{peer}/messages?after=&wait=`.
pub async fn poll(front: &Front, room: &str, peer: &str, request: &Parts) -> Result<Answer, Error> {
    // The query and the token live in this block only, and so take no room in the state that
    // waits: this future is part of every request's (boxed) future.
    let (reader, after, wait) = {
        let query = request::Query::parse(request, ["token", "after", "wait"]);
        let token = request::token(request, query.first("token"));
        let reader = front
            .hub
            .reader(
                &request::room(room)?,
                request::peer(peer)?,
                token.as_deref(),
            )
            .await?;
        let after: u64 = number("after", query.value("after")?)?.unwrap_or(0);
        let max_wait = front.config.poll_max_wait();
        let wait = match number::<f64>("wait", query.value("wait")?)? {
            Some(seconds) if !(seconds.is_finite() && seconds >= 0.0) => {
                return Err(Error::InvalidQuery {
                    parameter: "wait",
                    reason: format!("must be a non-negative number of seconds, not {seconds}"),
                })
            }
            // Clamp before converting: a huge `wait` would overflow a Duration.
            Some(seconds) => Duration::from_secs_f64(seconds.min(max_wait.as_secs_f64())),
            None => max_wait,
        };
        (reader, after, wait)
    };

    let metrics = &front.metrics;
    let mut shutdown = front.shutdown.clone();
    // Listening, so that the peer stays present; subscribed before the first read (and before
    // taking over from an older poll, so that a still newer one is noticed too), so that
    // nothing appended after that read goes unnoticed; and the wake-ups seen up to the open:
    // whatever is appended after it wakes this poll, even when its first read is skipped.
    let PollStart {
        listening: _presence,
        mut wake,
        ticket,
        newest,
    } = reader.start_poll(after).await?;
    let ticket = Ticket::Poll(ticket);
    // The open saw nothing after `after`: a read now would find nothing (no message, and no
    // reset: `after` is the newest id; a peer gone fails the open), so the poll waits at once,
    // and a message appended since the open wakes it. On Redis a read saved is a round trip and
    // a script call; in memory, a read and the wake-up the open no longer sends its opener.
    let mut read_now = newest != after;
    let max_bytes = front.config.poll_max_bytes;
    // Counted once it is the peer's poll and has acknowledged `after`.
    let _in_flight = metrics.poll_started();
    let deadline = Instant::now() + wait;
    // A shared store's wake-up may be lost with its connection: look again at least this often.
    // (No timer at all for the memory store, whose wake-ups cannot be lost.)
    let recheck = reader.may_miss_wakeups().then(|| front.config.heartbeat());
    loop {
        let batch = if read_now {
            wake.mark_seen();
            match reader.read(after, Some(ticket), max_bytes).await? {
                Read::Batch(batch) => batch,
                Read::Closed => return Err(Error::PeerNotFound),
                // A newer poll of this peer took over: this one answers nothing at once, and
                // its client, if it is still there, polls again from the same `after`.
                Read::Replaced => {
                    return Ok(Answer::json(
                        200,
                        render(metrics, after, Batch::empty(after)),
                    ))
                }
            }
        } else {
            Batch::empty(after)
        };
        read_now = true;
        if !batch.entries.is_empty() || batch.reset.is_some() {
            return Ok(Answer::json(200, render(metrics, after, batch)));
        }
        // A wake-up or a recheck means "look again"; the deadline, a shutdown (so that the
        // client reconnects to a restarted server instead of hanging) or a closed mailbox mean
        // "answer now". One timer serves the recheck and the deadline, whichever comes first.
        let timer = recheck.map_or(deadline, |period| deadline.min(Instant::now() + period));
        let answer_now = select! {
            changed = wake.changed() => changed.is_err(),
            () = sleep_until(timer) => timer == deadline,
            () = &mut shutdown => true,
        };
        if answer_now {
            return Ok(Answer::json(200, render(metrics, after, batch)));
        }
    }
}

/// `{"messages":[…],"last_id":n,"reset":false}`, assembled from the envelopes' shared encoding.
/// `last_id` is what the client passes as `after` next.
fn render(metrics: &Metrics, after: u64, batch: Batch) -> Vec<u8> {
    metrics.delivered_by_poll(batch.entries.len());
    if let Some(reason) = batch.reset {
        metrics.mailbox_reset(reason);
    }
    let last_id = match (batch.entries.last(), batch.reset) {
        (Some(entry), _) => entry.id,
        (None, Some(_)) => batch.last_id,
        (None, None) => after,
    };
    let size: usize = batch
        .entries
        .iter()
        .map(|entry| entry.message.encoded_len() + 24)
        .sum();
    let mut out = Vec::with_capacity(size + 64);
    out.extend_from_slice(b"{\"messages\":[");
    for (index, entry) in batch.entries.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        entry.message.render_into(entry.id, &mut out);
    }
    out.extend_from_slice(b"],\"last_id\":");
    out.extend_from_slice(itoa::Buffer::new().format(last_id).as_bytes());
    match batch.reset {
        Some(reason) => {
            out.extend_from_slice(b",\"reset\":true,\"reset_reason\":\"");
            out.extend_from_slice(reason.as_str().as_bytes());
            out.extend_from_slice(b"\"}");
        }
        None => out.extend_from_slice(b",\"reset\":false}"),
    }
    out
}
