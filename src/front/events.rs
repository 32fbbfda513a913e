//! The Server-Sent Events transport: one live stream per peer, resumable by `Last-Event-ID`.
//!
//! The stream reads its peer's mailbox by id and only uses the mailbox's wake-up signal to know
//! when to look again, so a slow client gets bigger batches, never a gap. A message counts as
//! delivered once the stream has handed it to the connection (hyper takes the next chunk only
//! when its write buffer has room); the mailbox's replay window covers what a cut connection
//! loses after that.

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use hyper::body::Frame;
use hyper::header::{HeaderName, HeaderValue, CACHE_CONTROL, EXPIRES};
use hyper::http::request::Parts;
use rocket::response::stream::stream;
use serde::Serialize;
use tokio::select;
use tokio::time::{interval_at, sleep, Instant, MissedTickBehavior, Sleep};

use crate::error::Error;
use crate::front::request;
use crate::front::response::{self, Answer};
use crate::front::Front;
use crate::identity::PeerId;
use crate::mailbox::{Read, Ticket};
use crate::message::EncodedMessage;

/// Once this much is written, the chunk is handed to the connection even if the mailbox has
/// more: a stream never holds more than about this much of a backlog in memory at once.
const CHUNK_BYTES: usize = 16 * 1024;

/// How long a stream's acknowledgement waits for the next read to carry it. A call's offer,
/// answer and candidates come tens of milliseconds apart, so on a shared store most reads
/// carry the previous one's acknowledgement, and a message costs one call less. Delivered
/// messages count against the byte bounds this much longer (a refused sender is told to retry
/// after a second).
const ACK_DELAY: Duration = Duration::from_millis(250);

/// Completes when `deadline` passes; never, when there is none.
async fn due(deadline: &mut Option<Pin<Box<Sleep>>>) {
    match deadline {
        Some(sleep) => sleep.await,
        None => std::future::pending().await,
    }
}

/// Appends one event as Rocket's `Event` writes it: `id:` and `event:` when given, then the data
/// as one `data:` line per line of it (split at `\n`, `\r` or `\r\n`), then a blank line.
fn write_event(out: &mut Vec<u8>, id: Option<u64>, event: &str, data: &[u8]) {
    if let Some(id) = id {
        out.extend_from_slice(b"id:");
        out.extend_from_slice(itoa::Buffer::new().format(id).as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"event:");
    out.extend_from_slice(event.as_bytes());
    out.push(b'\n');
    let mut rest = data;
    loop {
        let end = rest
            .iter()
            .position(|&byte| byte == b'\n' || byte == b'\r')
            .unwrap_or(rest.len());
        out.extend_from_slice(b"data:");
        out.extend_from_slice(&rest[..end]);
        out.push(b'\n');
        rest = match rest.get(end..) {
            Some([b'\r', b'\n', tail @ ..]) | Some([b'\r' | b'\n', tail @ ..]) => tail,
            _ => break,
        };
    }
    out.push(b'\n');
}

/// More than an event adds to its envelope: `id:` and up to 20 digits, `event:`, `data:`, the
/// envelope's `"id":` and digits again, and the line ends.
const EVENT_OVERHEAD: usize = 64;

/// Appends the event of mailbox entry `id`, as [`write_event`] writes it, with the envelope
/// rendered straight into `out`: an envelope holds a line break only when the client's raw
/// `data` did, and only then is it copied out and split into `data:` lines.
fn write_message_event(out: &mut Vec<u8>, id: u64, kind: &str, message: &EncodedMessage) {
    let start = out.len();
    out.extend_from_slice(b"id:");
    out.extend_from_slice(itoa::Buffer::new().format(id).as_bytes());
    out.extend_from_slice(b"\nevent:");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\ndata:");
    let data = out.len();
    message.render_into(id, out);
    if memchr::memchr2(b'\n', b'\r', &out[data..]).is_some() {
        let envelope = out.split_off(data);
        out.truncate(start);
        write_event(out, Some(id), kind, &envelope);
    } else {
        out.extend_from_slice(b"\n\n");
    }
}

/// Appends an event whose data is `value` as JSON.
fn write_json_event(out: &mut Vec<u8>, event: &str, value: &impl Serialize) {
    // Serialising a struct of numbers, ids and fixed strings cannot fail.
    let data = serde_json::to_vec(value).unwrap_or_default();
    write_event(out, None, event, &data);
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

const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");

/// `GET /api/rooms/{room}/peers/{peer}/events`: the stream, with the same bytes and headers
/// Rocket's `EventStream` gives, except that all the events of one mailbox read go out as one
/// chunk (Rocket writes every field of every event with a write of its own).
pub async fn events(
    front: &Front,
    room: &str,
    peer: &str,
    request: &Parts,
) -> Result<Answer, Error> {
    let peer = request::peer(peer)?;
    let query = request::Query::parse(request, ["token", "last_event_id"]);
    let token = request::token(request, query.first("token"));
    let reader = front
        .hub
        .reader(&request::room(room)?, peer, token.as_deref())
        .await?;
    // A reconnecting EventSource sends the header; the query is for a first connection that
    // resumes where an earlier client left off. The header is newer, so it wins; both must be
    // ids when present (EventSource sends no header rather than an empty one).
    let id = |text: &str| {
        text.trim()
            .parse::<u64>()
            .map_err(|_| Error::InvalidLastEventId)
    };
    let from_header = request::header(request, LAST_EVENT_ID)
        .map(id)
        .transpose()?;
    let from_query = query.value("last_event_id")?.map(id).transpose()?;
    let resume_from = from_header.or(from_query);
    // Subscribed before the first read, so nothing appended after that read goes unnoticed.
    let mut wake = reader.subscribe().await?;
    let (ticket, last_id) = reader.open_stream(resume_from).await?;
    let mut cursor = resume_from.unwrap_or(0);
    let presence = reader.listen();
    let metrics = front.metrics.clone();
    let open = metrics.sse_stream_opened();
    let mut shutdown = front.shutdown.clone();

    let ticket = Ticket::Stream(ticket);
    // A read copies at most this much of a backlog, as a poll's answer does; the stream reads
    // on while the mailbox holds more.
    let max_bytes = front.config.poll_max_bytes;
    let period = front.config.heartbeat();
    let mut heartbeat = interval_at(Instant::now() + period, period);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);

    let stream = stream! {
        let _presence = presence;
        let _open = open;
        let mut out = Vec::new();
        write_json_event(&mut out, "ready", &Ready { peer_id: peer, last_id });
        yield out;
        // When the acknowledgement that no read has carried yet goes on its own.
        let mut ack_due: Option<Pin<Box<Sleep>>> = None;
        'stream: loop {
            wake.mark_seen();
            // The store being unreachable ends the stream too: the client reconnects, to this
            // instance or another, and resumes from its last id.
            let batch = match reader.read(cursor, Some(ticket), max_bytes).await {
                Ok(Read::Batch(batch)) => batch,
                Ok(Read::Closed | Read::Replaced) | Err(_) => break,
            };
            let mut out = Vec::new();
            if let Some(reason) = batch.reset {
                metrics.mailbox_reset(reason);
                write_json_event(
                    &mut out,
                    "reset",
                    &Reset { reason: reason.as_str(), last_id: batch.last_id },
                );
                cursor = batch.entries.first().map_or(batch.last_id, |entry| entry.id - 1);
            }
            // Counted as the batch is handed over, so that a client never sees a message before
            // the counter does.
            metrics.delivered_by_sse(batch.entries.len());
            let read_any = !batch.entries.is_empty();
            // Sized once for the whole read (bounded by the chunk size), not grown event by event.
            let size: usize = batch.entries.iter().map(|entry| {
                entry.message.encoded_len() + entry.message.kind().len() + EVENT_OVERHEAD
            }).sum();
            out.reserve(size.min(CHUNK_BYTES + EVENT_OVERHEAD));
            for entry in batch.entries {
                write_message_event(&mut out, entry.id, entry.message.kind(), &entry.message);
                cursor = entry.id;
                if out.len() >= CHUNK_BYTES {
                    yield std::mem::take(&mut out);
                }
            }
            if !out.is_empty() {
                yield out;
            }
            reader.acknowledge(cursor);
            // A store may hand over a long backlog in several reads: while the mailbox holds
            // more than was read, read on, as no wake-up will come for what is already there.
            // (A read that brought nothing cannot loop: it waits like any other.)
            let more = read_any && cursor < batch.last_id;
            // The acknowledgement goes with the next read (one call to a shared store, not
            // two), unless none comes within ACK_DELAY: then on its own.
            match (reader.unflushed(), ack_due.is_some()) {
                (true, false) => ack_due = Some(Box::pin(sleep(ACK_DELAY))),
                (false, true) => ack_due = None,
                _ => {}
            }
            loop {
                select! {
                    // A shutdown ends even a stream that always has more to read.
                    biased;
                    _ = &mut shutdown => break 'stream,
                    () = std::future::ready(()), if more => {},
                    changed = wake.changed() => if changed.is_err() { break 'stream },
                    // After a heartbeat the mailbox is read again, so a wake-up that a shared
                    // store lost delays a message by one heartbeat at most.
                    _ = heartbeat.tick() => yield b":\n".to_vec(),
                    () = due(&mut ack_due), if ack_due.is_some() => {
                        ack_due = None;
                        if reader.flush().await.is_err() {
                            break 'stream;
                        }
                        continue;
                    }
                }
                break;
            }
        }
    };
    let chunks = stream.map(|chunk| Ok(Frame::data(Bytes::from(chunk))));
    let mut response = response::stream("text/event-stream", chunks.boxed());
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(EXPIRES, HeaderValue::from_static("0"));
    // nginx honours this per response; without it, it buffers the stream until full.
    headers.insert("X-Accel-Buffering", HeaderValue::from_static("no"));
    Ok(Answer::Response(response))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: Option<u64>, kind: &str, data: &str) -> String {
        let mut out = Vec::new();
        write_event(&mut out, id, kind, data.as_bytes());
        String::from_utf8(out).unwrap()
    }

    /// The bytes are those Rocket's `Event::data(..).id(..).event(..)` writes, field for field.
    #[test]
    fn events_are_written_as_rocket_writes_them() {
        assert_eq!(
            event(Some(4), "offer", r#"{"id":4}"#),
            "id:4\nevent:offer\ndata:{\"id\":4}\n\n"
        );
        assert_eq!(event(None, "ready", "{}"), "event:ready\ndata:{}\n\n");
        assert_eq!(event(None, "x", ""), "event:x\ndata:\n\n");
    }

    /// A message's event rendered in place is byte for byte the event of its rendered envelope,
    /// with and without line breaks in the client's data.
    #[test]
    fn message_events_are_the_events_of_their_envelopes() {
        use crate::identity::PeerId;
        use crate::message::MessageType;
        use serde_json::value::RawValue;
        let kind = MessageType::parse_client("offer").unwrap();
        for data in [r#"{"sdp":"v=0"}"#, "{\n \"a\": 1\r\n}", "[\r1]"] {
            let data = RawValue::from_string(data.into()).unwrap();
            let message = EncodedMessage::from_peer(PeerId::random(), kind, Some(&data));
            let mut expected = b"earlier".to_vec();
            write_event(
                &mut expected,
                Some(12),
                "offer",
                message.render(12).as_bytes(),
            );
            let mut written = b"earlier".to_vec();
            write_message_event(&mut written, 12, "offer", &message);
            assert_eq!(
                String::from_utf8(written).unwrap(),
                String::from_utf8(expected).unwrap()
            );
        }
    }

    /// Data with line breaks (a client's raw JSON may have them) becomes several `data:` lines,
    /// which an EventSource joins back with `\n`.
    #[test]
    fn every_line_of_data_gets_its_own_field() {
        assert_eq!(
            event(Some(1), "m", "a\nb\r\nc\rd\n"),
            "id:1\nevent:m\ndata:a\ndata:b\ndata:c\ndata:d\ndata:\n\n"
        );
    }
}
