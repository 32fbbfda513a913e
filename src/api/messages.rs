//! Sending: one message or a batch, from the peer whose token the request carries.

use rocket::response::status::Accepted;
use rocket::serde::json::Json;
use rocket::State;
use serde::Serialize;

use crate::api::auth::Token;
use crate::api::body::JsonBody;
use crate::error::{ApiResult, Error};
use crate::hub::Hub;
use crate::identity::RoomName;
use crate::message::MessageBatch;
use crate::metrics::Metrics;

#[derive(Serialize)]
pub struct SendResponse {
    accepted: usize,
}

#[post("/rooms/<room>/messages", data = "<body>")]
pub fn send(
    hub: &State<Hub>,
    metrics: &State<Metrics>,
    room: Result<RoomName, Error>,
    token: Token,
    body: Result<JsonBody<MessageBatch>, Error>,
) -> ApiResult<Accepted<Json<SendResponse>>> {
    let room = room?;
    // Authentication comes before body errors, so that a stranger learns nothing from them.
    if token.as_deref().is_none() {
        return Err(Error::MissingToken);
    }
    let batch = body?.0 .0;
    let accepted = hub.send(&room, token.as_deref(), batch)?;
    metrics.messages_accepted(accepted);
    Ok(Accepted(Json(SendResponse { accepted })))
}
