//! Sending: one message or a batch, from the peer whose token the request carries.

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::http::request::Parts;
use hyper::Response;

use crate::error::Error;
use crate::front::request;
use crate::front::response::{self, ResponseBody};
use crate::front::Front;
use crate::message::MessageBatch;

/// `POST /api/rooms/{room}/messages`: `202 {"accepted": n}`.
pub async fn send(
    front: &Front,
    room: &str,
    request: &Parts,
    body: Incoming,
) -> Result<Response<ResponseBody>, Error> {
    let room = request::room(room)?;
    let token = request::token(request);
    // Authentication comes before body errors, so that a stranger learns nothing from them.
    if token.as_deref().is_none() {
        return Err(Error::MissingToken);
    }
    let batch: MessageBatch = request::json_body(request, body, &front.config).await?;
    let accepted = front.hub.send(&room, token.as_deref(), batch.0).await?;
    front.metrics.messages_accepted(accepted);
    // Nearly every send carries one message: its answer is a constant, with nothing to allocate.
    if accepted == 1 {
        return Ok(response::json(202, Bytes::from_static(b"{\"accepted\":1}")));
    }
    let mut json = Vec::with_capacity(24);
    json.extend_from_slice(b"{\"accepted\":");
    json.extend_from_slice(itoa::Buffer::new().format(accepted).as_bytes());
    json.push(b'}');
    Ok(response::json(202, json))
}
