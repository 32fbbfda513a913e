//! The Server-Sent Events transport: one live stream per peer, resumable by `Last-Event-ID`.
//!
//! The stream reads its peer's mailbox by id and only uses the mailbox's wake-up signal to know
//! when to look again, so a slow client gets bigger batches, never a gap. A message counts as
//! delivered once the stream has handed it to the connection (Rocket pulls the next event only
//! when it can write); the mailbox's replay window covers what a cut connection loses after that.

use rocket::futures::Stream;
use rocket::request::Request;
use rocket::response::stream::{Event, EventStream};
use rocket::response::{self, Responder};
use rocket::tokio::select;
use rocket::{Shutdown, State};
use serde::Serialize;

use crate::api::auth::{LastEventIdHeader, Token};
use crate::config::Config;
use crate::error::{ApiResult, Error};
use crate::hub::Hub;
use crate::identity::{PeerId, RoomName};
use crate::mailbox::Read;
use crate::metrics::Metrics;

/// An event stream with the headers that keep proxies from buffering it.
pub struct Sse<S>(EventStream<S>);

impl<'r, S: Stream<Item = Event> + Send + 'r> Responder<'r, 'r> for Sse<S> {
    fn respond_to(self, request: &'r Request<'_>) -> response::Result<'r> {
        let mut response = self.0.respond_to(request)?;
        // nginx honours this per response; without it, it buffers the stream until it is full.
        response.set_raw_header("X-Accel-Buffering", "no");
        Ok(response)
    }
}

#[derive(Serialize)]
struct Ready {
    peer_id: PeerId,
    /// The newest id in the mailbox when the stream opened.
    last_id: u64,
}

#[derive(Serialize)]
struct Reset {
    reason: &'static str,
    /// The newest id in the mailbox; messages that follow continue from what is still held.
    last_id: u64,
}

#[allow(clippy::too_many_arguments)] // each argument is a guard Rocket resolves; none is optional
#[get("/rooms/<room>/peers/<peer>/events?<last_event_id>")]
pub fn events(
    hub: &State<Hub>,
    config: &State<Config>,
    metrics: &State<Metrics>,
    room: Result<RoomName, Error>,
    peer: Result<PeerId, Error>,
    token: Token,
    header: LastEventIdHeader,
    last_event_id: Option<&str>,
    mut shutdown: Shutdown,
) -> ApiResult<Sse<impl Stream<Item = Event>>> {
    let peer = peer?;
    let mailbox = hub.mailbox(&room?, peer, token.as_deref())?;
    // A reconnecting EventSource sends the header; the query is for a first connection that
    // resumes where an earlier client left off. The header is newer, so it wins.
    let resume_from = match header
        .0
        .as_deref()
        .or(last_event_id)
        .filter(|id| !id.is_empty())
    {
        Some(id) => Some(id.parse::<u64>().map_err(|_| Error::InvalidLastEventId)?),
        None => None,
    };
    if let Some(id) = resume_from {
        mailbox.acknowledge(id);
    }
    let mut cursor = resume_from.unwrap_or(0);
    let ticket = mailbox.open_stream();
    let presence = mailbox.listen();
    let metrics = metrics.inner().clone();
    let open = metrics.sse_stream_opened();
    // Subscribed before the first read, so nothing pushed after that read goes unnoticed.
    let mut wake = mailbox.subscribe();

    let stream = EventStream! {
        let _presence = presence;
        let _open = open;
        yield Event::json(&Ready { peer_id: peer, last_id: mailbox.last_id() }).event("ready");
        loop {
            wake.borrow_and_update();
            let batch = match mailbox.read_after(cursor, Some(ticket)) {
                Read::Batch(batch) => batch,
                Read::Closed | Read::Replaced => break,
            };
            if let Some(reason) = batch.reset {
                metrics.mailbox_reset(reason.as_str());
                yield Event::json(&Reset { reason: reason.as_str(), last_id: batch.last_id })
                    .event("reset");
                cursor = batch.entries.first().map_or(batch.last_id, |entry| entry.id - 1);
            }
            // Counted as the batch is handed over, so that a client never sees a message before
            // the counter does.
            metrics.delivered_by_sse(batch.entries.len());
            for entry in batch.entries {
                yield Event::data(entry.message.render(entry.id))
                    .id(entry.id.to_string())
                    .event(entry.message.kind().to_owned());
                cursor = entry.id;
            }
            mailbox.acknowledge(cursor);
            select! {
                changed = wake.changed() => if changed.is_err() { break },
                _ = &mut shutdown => break,
            }
        }
    };
    Ok(Sse(stream.heartbeat(config.heartbeat())))
}
