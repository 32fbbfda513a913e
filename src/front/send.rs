//! Sending: one message or a batch, from the peer whose token the request carries.

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::http::request::Parts;

use crate::api::body::parse_json;
use crate::error::Error;
use crate::front::request;
use crate::front::response::{self, Answer};
use crate::front::Front;
use crate::message::MessageBatch;

/// `POST /api/rooms/{room}/messages`: `202 {"accepted": n}`, with `Idempotent-Replayed: true`
/// when it answers a retry under the send's `Idempotency-Key` instead of delivering it again.
pub async fn send(
    front: &Front,
    room: &str,
    request: &Parts,
    body: Incoming,
) -> Result<Answer, Error> {
    let room = request::room(room)?;
    let query = request::Query::parse(request, ["token"]);
    let token = request::token(request, query.first("token"));
    // Authentication comes before body errors, so that a stranger learns nothing from them.
    if token.as_deref().is_none() {
        return Err(Error::MissingToken);
    }
    let key = request::idempotency_key(request)?;
    let bytes = request::body(request, body, &front.config).await?;
    let content_type = request::header(request, CONTENT_TYPE);
    let batch: MessageBatch<'_> = parse_json(&bytes, content_type, front.config.max_body_bytes)?;
    let accepted = front
        .hub
        .send(&room, token.as_deref(), batch.0, key.as_ref())
        .await?;
    if accepted.replayed {
        let mut response = response::json(202, accepted_body(accepted.count));
        response.headers_mut().insert(
            HeaderName::from_static("idempotent-replayed"),
            HeaderValue::from_static("true"),
        );
        return Ok(Answer::Response(response));
    }
    front.metrics.messages_accepted(accepted.count);
    // Nearly every send carries one message: its answer is a constant, with nothing to allocate.
    if accepted.count == 1 {
        return Ok(Answer::json(202, Bytes::from_static(b"{\"accepted\":1}")));
    }
    Ok(Answer::json(202, accepted_body(accepted.count)))
}

/// `{"accepted":<count>}`.
fn accepted_body(count: usize) -> Vec<u8> {
    let mut json = Vec::with_capacity(24);
    json.extend_from_slice(b"{\"accepted\":");
    json.extend_from_slice(itoa::Buffer::new().format(count).as_bytes());
    json.push(b'}');
    json
}
