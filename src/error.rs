//! The one error type of the API. Every failure a client can cause is a variant here, with a
//! stable snake_case `code` for programs and a message for people; [`Error::status`] is the only
//! place that decides HTTP status codes.

use std::borrow::Cow;
use std::io::Cursor;
use std::time::Duration;

use rocket::http::{ContentType, Header, Status};
use rocket::request::Request;
use rocket::response::{self, Responder, Response};
use serde::Serialize;

pub type ApiResult<T> = Result<T, Error>;

/// The code of the error a request was answered with, kept in the request's local cache for
/// the request log and the rejection counters (`api::RequestLog` reads it); `None` when it was
/// not answered with an [`Error`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorCode(pub Option<&'static str>);

#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// The body is not JSON (syntax error or truncated).
    InvalidJson(String),
    /// The body is JSON of the wrong shape: a missing or unknown field, a wrong type.
    InvalidBody(String),
    /// A body was required and none was sent.
    EmptyBody,
    UnsupportedMediaType(String),
    BodyTooLarge {
        limit: usize,
    },
    MessageTooLarge {
        index: usize,
        size: usize,
        limit: usize,
    },
    EmptyBatch,
    InvalidRoomName(&'static str),
    InvalidPeerId,
    InvalidName(&'static str),
    InvalidMeta(&'static str),
    InvalidType {
        index: usize,
        reason: String,
    },
    UnknownRecipient {
        index: usize,
    },
    SelfRecipient {
        index: usize,
    },
    InvalidQuery {
        parameter: &'static str,
        reason: String,
    },
    InvalidLastEventId,
    MissingToken,
    InvalidToken,
    WrongPeer,
    RoomNotFound,
    PeerNotFound,
    RoomFull {
        limit: usize,
    },
    TooManyRooms {
        limit: usize,
    },
    RateLimited {
        retry_after: Duration,
    },
    /// `join_auth = "required"` and the join carries no `Authorization: Bearer` token.
    MissingJoinToken,
    /// The join token fails a check other than its expiry or its room; the reason names the
    /// check, never the token.
    InvalidJoinToken(Cow<'static, str>),
    /// The join token's `exp` is past by more than the leeway: the fix is a fresh token.
    JoinTokenExpired,
    /// A valid join token, for another room than the path's.
    RoomNotAllowed,
    /// The join body's `name` or `meta` contradicts the token's claim of that name.
    ClaimMismatch(&'static str),
    /// This client address is over `join_rate_per_sec` / `join_burst`.
    TooManyJoins {
        retry_after: Duration,
    },
    /// This client address already holds `max_peers_per_client` live peers; one of them
    /// leaving or timing out frees a place.
    TooManyPeersForClient {
        limit: usize,
        retry_after: Duration,
    },
    /// This client address holds peers in `max_rooms_per_client` rooms, and the join is to
    /// another; its last peer leaving one of them frees a place.
    TooManyRoomsForClient {
        limit: usize,
        retry_after: Duration,
    },
    /// `join_auth = "required"` and a look at a room or a peer presents no credential for that
    /// room (a peer token of the room, or a join token for it): the same answer whether or not
    /// the room exists, so that invite-only rooms cannot be found by guessing names.
    CredentialRequired,
    /// The send would take the bytes held in mailboxes for the sender's address past
    /// `client_max_held_bytes`; they are released as the recipients read them (and the replay
    /// windows roll on), so retrying soon succeeds for a sender whose peers are reading.
    TooManyBytesHeld {
        limit: usize,
    },
    /// The send would take the bytes held in all mailboxes past `max_held_bytes`.
    ServerFull,
    /// The `Idempotency-Key` header is not 1-64 characters of `A-Z a-z 0-9 . _ : -`.
    InvalidIdempotencyKey,
    /// The sender sent another batch under this `Idempotency-Key` within the window: a key
    /// names one send, and a retry carries the same batch.
    IdempotencyKeyReused,
    /// A CORS preflight from an origin not in `cors_allowed_origins`, or for a method the API
    /// does not use.
    CorsRefused(String),
    /// No route for this method and path.
    RouteNotFound,
    /// A route has this path, but not this method; `allow` lists the methods it has, as the
    /// `Allow` header says them (`GET, HEAD, OPTIONS`).
    MethodNotAllowed {
        allow: String,
    },
    /// A status Rocket produced before any handler ran, and that no variant above covers.
    Http(Status),
    /// The shared store (Redis) did not answer; nothing was changed that the client can see
    /// half done, and the request can be retried.
    StoreUnavailable,
    /// A join presented a resume credential, and this server issues none (no `resume_secret`).
    ResumeNotEnabled,
    /// A resume credential that this server did not sign, or signed for another room.
    InvalidResume(Cow<'static, str>),
    /// A resume credential for a peer that is in the room right now.
    PeerPresent,
    /// `GET /metrics` without the `metrics_token` (or with another).
    MetricsTokenRequired,
    /// A fault of the server's, not the client's (the OS refused randomness, say).
    Internal(&'static str),
    /// The request body did not arrive whole within `body_read_timeout_secs`; the connection is
    /// closed with the answer, since the rest of the body may still be on its way.
    BodyTimeout {
        limit: Duration,
    },
    /// This client address already has `max_connections_per_client` connections open to this
    /// instance; the connection is closed with the answer.
    TooManyConnections {
        limit: usize,
    },
}

impl Error {
    pub fn status(&self) -> Status {
        use Error::*;
        match self {
            InvalidJson(_)
            | EmptyBody
            | InvalidRoomName(_)
            | InvalidPeerId
            | InvalidQuery { .. }
            | InvalidLastEventId
            | InvalidIdempotencyKey => Status::BadRequest,
            MissingToken | InvalidToken | MissingJoinToken | InvalidJoinToken(_)
            | JoinTokenExpired | CredentialRequired | MetricsTokenRequired => Status::Unauthorized,
            WrongPeer | CorsRefused(_) | RoomNotAllowed | ClaimMismatch(_) => Status::Forbidden,
            RoomNotFound | PeerNotFound | RouteNotFound => Status::NotFound,
            MethodNotAllowed { .. } => Status::MethodNotAllowed,
            // `to` names no peer of the room *now*: most often one that just left (its `leave`
            // is on the way). The room's state, not the request's form, is at odds: a 409, as
            // for a full room, and a request that is valid by docs/openapi.yaml is never a 422.
            RoomFull { .. } | TooManyRooms { .. } | UnknownRecipient { .. } => Status::Conflict,
            // The key's earlier send, not this request's form, is at odds: a 409 for the same
            // reason (the IETF idempotency draft's 422 would say the request itself is malformed).
            IdempotencyKeyReused => Status::Conflict,
            BodyTooLarge { .. } | MessageTooLarge { .. } => Status::PayloadTooLarge,
            UnsupportedMediaType(_) => Status::UnsupportedMediaType,
            InvalidBody(_)
            | EmptyBatch
            | InvalidName(_)
            | InvalidMeta(_)
            | InvalidType { .. }
            | SelfRecipient { .. } => Status::UnprocessableEntity,
            RateLimited { .. }
            | TooManyJoins { .. }
            | TooManyPeersForClient { .. }
            | TooManyRoomsForClient { .. }
            | TooManyBytesHeld { .. } => Status::TooManyRequests,
            // The server's state, not this client's doing: a 503, like a store that is down.
            ServerFull => Status::ServiceUnavailable,
            StoreUnavailable => Status::ServiceUnavailable,
            // Forbidden, like a credential this server did not sign: the request is well formed,
            // and this server cannot accept what it presents.
            ResumeNotEnabled => Status::Forbidden,
            InvalidResume(_) => Status::Forbidden,
            PeerPresent => Status::Conflict,
            Http(status) => *status,
            Internal(_) => Status::InternalServerError,
            BodyTimeout { .. } => Status::RequestTimeout,
            TooManyConnections { .. } => Status::TooManyRequests,
        }
    }

    pub fn code(&self) -> &'static str {
        use Error::*;
        match self {
            InvalidJson(_) => "invalid_json",
            InvalidBody(_) => "invalid_body",
            EmptyBody => "empty_body",
            UnsupportedMediaType(_) => "unsupported_media_type",
            BodyTooLarge { .. } => "body_too_large",
            MessageTooLarge { .. } => "message_too_large",
            EmptyBatch => "empty_batch",
            InvalidRoomName(_) => "invalid_room_name",
            InvalidPeerId => "invalid_peer_id",
            InvalidName(_) => "invalid_name",
            InvalidMeta(_) => "invalid_meta",
            InvalidType { .. } => "invalid_type",
            UnknownRecipient { .. } => "unknown_recipient",
            SelfRecipient { .. } => "self_recipient",
            InvalidQuery { .. } => "invalid_query",
            InvalidLastEventId => "invalid_last_event_id",
            MissingToken => "missing_token",
            InvalidToken => "invalid_token",
            WrongPeer => "wrong_peer",
            RoomNotFound => "room_not_found",
            PeerNotFound => "peer_not_found",
            RoomFull { .. } => "room_full",
            TooManyRooms { .. } => "too_many_rooms",
            RateLimited { .. } => "rate_limited",
            MissingJoinToken => "missing_join_token",
            InvalidJoinToken(_) => "invalid_join_token",
            JoinTokenExpired => "join_token_expired",
            RoomNotAllowed => "room_not_allowed",
            ClaimMismatch(_) => "claim_mismatch",
            TooManyJoins { .. } => "too_many_joins",
            TooManyPeersForClient { .. } => "too_many_peers_for_client",
            TooManyRoomsForClient { .. } => "too_many_rooms_for_client",
            CredentialRequired => "credential_required",
            TooManyBytesHeld { .. } => "too_many_bytes_held",
            ServerFull => "server_full",
            InvalidIdempotencyKey => "invalid_idempotency_key",
            IdempotencyKeyReused => "idempotency_key_reused",
            CorsRefused(_) => "cors_refused",
            RouteNotFound => "not_found",
            MethodNotAllowed { .. } => "method_not_allowed",
            Http(status) => http_code(*status),
            StoreUnavailable => "store_unavailable",
            ResumeNotEnabled => "resume_not_enabled",
            InvalidResume(_) => "invalid_resume",
            PeerPresent => "peer_present",
            MetricsTokenRequired => "metrics_token_required",
            Internal(_) => "internal_error",
            BodyTimeout { .. } => "body_timeout",
            TooManyConnections { .. } => "too_many_connections",
        }
    }

    pub fn message(&self) -> Cow<'static, str> {
        use Error::*;
        match self {
            InvalidJson(detail) => format!("the body is not valid JSON: {detail}").into(),
            InvalidBody(detail) => {
                format!("the body does not have the expected shape: {detail}").into()
            }
            EmptyBody => "this request needs a JSON body".into(),
            UnsupportedMediaType(got) => {
                format!("send the body as application/json, not {got}").into()
            }
            BodyTooLarge { limit } => format!("the body is larger than {limit} bytes").into(),
            MessageTooLarge { index, size, limit } => {
                format!("message {index} is {size} bytes once encoded; the limit is {limit}").into()
            }
            EmptyBatch => "the batch holds no messages".into(),
            InvalidRoomName(why) | InvalidName(why) | InvalidMeta(why) => Cow::Borrowed(why),
            InvalidPeerId => {
                "a peer id is a UUID such as 0b6c3f1e-8a8e-4d5c-9f3e-2a1b0c9d8e7f".into()
            }
            InvalidType { index, reason } => format!("message {index}: {reason}").into(),
            UnknownRecipient { index } => {
                format!("message {index}: `to` is not a peer of this room").into()
            }
            SelfRecipient { index } => {
                format!("message {index}: a peer cannot send to itself").into()
            }
            InvalidQuery { parameter, reason } => {
                format!("query parameter `{parameter}` {reason}").into()
            }
            InvalidLastEventId => "Last-Event-ID must be a message id (a whole number)".into(),
            MissingToken => {
                "send the peer's token as `Authorization: Bearer <token>` or `?token=<token>`"
                    .into()
            }
            InvalidToken => "the token is not that of any peer in this room".into(),
            WrongPeer => "the token belongs to another peer of this room".into(),
            RoomNotFound => "no such room: it is created when its first peer joins".into(),
            PeerNotFound => "no such peer in this room: it left, timed out or was evicted".into(),
            RoomFull { limit } => format!("the room already has {limit} peers").into(),
            TooManyRooms { limit } => {
                format!("the server already holds {limit} rooms; try again later").into()
            }
            RateLimited { retry_after } => format!(
                "sending too fast; retry in {:.1} s",
                retry_after.as_secs_f64()
            )
            .into(),
            MissingJoinToken => {
                "this room needs a join token from the application: `Authorization: Bearer <token>`"
                    .into()
            }
            InvalidJoinToken(why) => format!("the join token is not valid: {why}").into(),
            JoinTokenExpired => {
                "the join token has expired; ask the application for a new one".into()
            }
            RoomNotAllowed => "the join token is for another room".into(),
            ClaimMismatch(claim) => format!(
                "the body's `{claim}` differs from the join token's; leave it out or send the same"
            )
            .into(),
            TooManyJoins { retry_after } => format!(
                "too many joins from this address; retry in {:.1} s",
                retry_after.as_secs_f64()
            )
            .into(),
            TooManyPeersForClient { limit, .. } => format!(
                "this address already holds {limit} peers; one must leave before another joins"
            )
            .into(),
            TooManyRoomsForClient { limit, .. } => format!(
                "this address already has peers in {limit} rooms; \
                 one must leave its room before this address joins another"
            )
            .into(),
            CredentialRequired => "rooms on this server are invite-only: send a peer token of \
                                   this room or a join token for it, as `Authorization: Bearer \
                                   <token>` or `?token=<token>`"
                .into(),
            TooManyBytesHeld { limit } => format!(
                "this address's messages waiting in mailboxes already take {limit} bytes; retry once its peers have read them"
            )
            .into(),
            ServerFull => {
                "the server holds as many undelivered messages as it may; retry after the time in Retry-After"
                    .into()
            }
            InvalidIdempotencyKey => {
                "Idempotency-Key must be 1 to 64 characters of A-Z a-z 0-9 . _ : -".into()
            }
            IdempotencyKeyReused => "this Idempotency-Key was used for another batch within the \
                                     idempotency window; a retry sends the same batch, a new \
                                     batch a new key"
                .into(),
            CorsRefused(why) => why.clone().into(),
            RouteNotFound => "no such endpoint; see docs/API.md".into(),
            MethodNotAllowed { allow } => {
                format!("this endpoint does not answer that method; it answers {allow}").into()
            }
            Http(status) => status.reason_lossy().to_owned().into(),
            StoreUnavailable => {
                "the shared store is unreachable; retry after the time in Retry-After".into()
            }
            ResumeNotEnabled => {
                "this server issues no resume credentials (no resume_secret): join without one"
                    .into()
            }
            InvalidResume(why) => format!("the resume credential is refused: {why}").into(),
            PeerPresent => {
                "that peer is in the room now: its place cannot be taken over; join as a new peer"
                    .into()
            }
            MetricsTokenRequired => {
                "the metrics need the server's metrics_token: `Authorization: Bearer <token>`"
                    .into()
            }
            Internal(why) => Cow::Borrowed(why),
            BodyTimeout { limit } => format!(
                "the body did not arrive within {} s; the connection is closed",
                limit.as_secs_f64()
            )
            .into(),
            TooManyConnections { limit } => format!(
                "this address already has {limit} connections open to this server; close one"
            )
            .into(),
        }
    }

    /// Classifies a serde_json failure: broken JSON is a 400, JSON of the wrong shape a 422.
    pub fn from_json(error: &serde_json::Error) -> Self {
        use serde_json::error::Category;
        match error.classify() {
            Category::Data => Error::InvalidBody(error.to_string()),
            Category::Syntax | Category::Eof | Category::Io => {
                Error::InvalidJson(error.to_string())
            }
        }
    }
}

/// The code for a bare HTTP status: its reason phrase in snake_case ("payload_too_large").
fn http_code(status: Status) -> &'static str {
    match status.code {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        406 => "not_acceptable",
        408 => "request_timeout",
        411 => "length_required",
        413 => "body_too_large",
        414 => "uri_too_long",
        415 => "unsupported_media_type",
        422 => "unprocessable_entity",
        431 => "headers_too_large",
        503 => "service_unavailable",
        500..=599 => "internal_error",
        _ => "http_error",
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after: Option<u64>,
}

impl Error {
    /// Whole seconds, rounded up, as the `Retry-After` header requires; for the 429s and
    /// `store_unavailable`.
    fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Error::RateLimited { retry_after }
            | Error::TooManyJoins { retry_after }
            | Error::TooManyPeersForClient { retry_after, .. }
            | Error::TooManyRoomsForClient { retry_after, .. } => {
                Some(retry_after.as_secs_f64().ceil().max(1.0) as u64)
            }
            // A reconnect to Redis takes well under a second; a client that waits one retries
            // soon without hammering an instance that cannot serve it.
            Error::StoreUnavailable => Some(1),
            // Connections close all the time (a poll ends, a tab closes): a second is enough
            // for one to free a place, and not so soon that a refused client spins.
            Error::TooManyConnections { .. } => Some(1),
            // Held bytes go as recipients read (a poll or a stream's write): within a second
            // for peers that are reading, and one second is no hammering for those that are not.
            Error::TooManyBytesHeld { .. } | Error::ServerFull => Some(1),
            _ => None,
        }
    }

    /// The JSON body: `{"error": code, "message": ..., "retry_after": seconds?}`.
    pub fn body(&self) -> String {
        let message = self.message();
        let body = Body {
            error: self.code(),
            message: &message,
            retry_after: self.retry_after_secs(),
        };
        // A struct of strings and a number always serialises.
        serde_json::to_string(&body).unwrap_or_default()
    }

    /// The headers that go with the status: `WWW-Authenticate` on the 401s and `Allow` on the
    /// 405 (RFC 9110 requires both), `Retry-After` on the 429s and the 503, and
    /// `Connection: close` on the errors after which the connection cannot serve another request.
    pub fn headers(&self) -> impl Iterator<Item = (&'static str, String)> {
        let authenticate = matches!(
            self,
            Error::MissingToken
                | Error::InvalidToken
                | Error::MissingJoinToken
                | Error::InvalidJoinToken(_)
                | Error::JoinTokenExpired
                | Error::CredentialRequired
                | Error::MetricsTokenRequired
        )
        .then(|| ("WWW-Authenticate", "Bearer".to_owned()));
        let retry_after = self
            .retry_after_secs()
            .map(|seconds| ("Retry-After", seconds.to_string()));
        let allow = match self {
            Error::MethodNotAllowed { allow } => Some(("Allow", allow.clone())),
            _ => None,
        };
        let close = matches!(
            self,
            Error::BodyTimeout { .. } | Error::TooManyConnections { .. }
        )
        .then(|| ("Connection", "close".to_owned()));
        authenticate
            .into_iter()
            .chain(retry_after)
            .chain(allow)
            .chain(close)
    }
}

impl<'r> Responder<'r, 'static> for Error {
    fn respond_to(self, request: &'r Request<'_>) -> response::Result<'static> {
        // For the request log, which prints the code and counts the rejection: the error type
        // sits below the metrics and knows nothing of them.
        request.local_cache(|| ErrorCode(Some(self.code())));
        let json = self.body();
        let mut response = Response::build();
        response
            .status(self.status())
            .header(ContentType::JSON)
            .sized_body(json.len(), Cursor::new(json));
        for (name, value) in self.headers() {
            response.header(Header::new(name, value));
        }
        response.ok()
    }
}
