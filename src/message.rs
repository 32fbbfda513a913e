//! Signaling messages: what a client sends, and the envelope a recipient receives.
//!
//! An envelope is encoded to JSON exactly once, when the server accepts the message, and shared
//! by every recipient's mailbox. Only the per-mailbox `id` differs between recipients, so it is
//! spliced in front of the shared encoding when the envelope is written out
//! ([`EncodedMessage::render`]); nothing is re-serialised per recipient.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::identity::PeerId;

/// The most messages one request may carry. A burst of trickle-ICE candidates fits easily; a
/// larger batch would let one request hold the hub lock for a long time.
pub const MAX_BATCH: usize = 64;

/// Types the server itself emits; a client may not send them, so a recipient can trust them.
pub const RESERVED_TYPES: [&str; 4] = ["join", "leave", "ready", "reset"];

/// A message type: 1 to 32 of `a-z 0-9 _ -`, starting with a letter, and not reserved.
///
/// The alphabet needs no escaping in JSON or in an SSE `event:` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageType<'a>(&'a str);

impl<'a> MessageType<'a> {
    pub const MAX_LEN: usize = 32;

    /// Validates a type a client wants to send.
    pub fn parse_client(kind: &'a str) -> Result<Self, String> {
        let well_formed = (1..=Self::MAX_LEN).contains(&kind.len())
            && kind.starts_with(|c: char| c.is_ascii_lowercase())
            && kind
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if !well_formed {
            return Err(format!(
                "message type {kind:?} is invalid: use 1 to 32 of a-z, 0-9, '_' and '-', starting with a letter"
            ));
        }
        if RESERVED_TYPES.contains(&kind) {
            return Err(format!(
                "message type {kind:?} is reserved for events the server emits"
            ));
        }
        Ok(Self(kind))
    }

    pub fn as_str(&self) -> &'a str {
        self.0
    }
}

/// A message's type as a stored message keeps it: inline, since every type is at most
/// [`MessageType::MAX_LEN`] bytes (the server's own are shorter), so that a message allocates
/// nothing for it. A longer one (only a corrupted store could hold it) is kept on the heap.
#[derive(Debug, Clone)]
enum TypeName {
    Inline {
        len: u8,
        bytes: [u8; MessageType::MAX_LEN],
    },
    Heap(Box<str>),
}

impl TypeName {
    fn new(kind: &str) -> Self {
        let mut bytes = [0; MessageType::MAX_LEN];
        match (bytes.get_mut(..kind.len()), u8::try_from(kind.len())) {
            (Some(inline), Ok(len)) => {
                inline.copy_from_slice(kind.as_bytes());
                Self::Inline { len, bytes }
            }
            _ => Self::Heap(kind.into()),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            // Whole UTF-8 text went in, so it always reads back.
            Self::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            Self::Heap(kind) => kind,
        }
    }
}

/// One message as a client sends it, borrowed from the request's body (nothing of it is
/// copied before its envelope is encoded). Unknown fields are refused, so a client that tries
/// to set `from` (the server decides it) or misspells `to` hears about it instead of being
/// ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutgoingMessage<'a> {
    /// Borrowed unless it has escapes to decode.
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    /// The recipient; absent or null means every other peer of the room.
    #[serde(default)]
    pub to: Option<PeerId>,
    /// Any JSON, kept as the exact text the client sent so that it is never re-encoded.
    #[serde(default, borrow)]
    pub data: Option<&'a RawValue>,
}

/// `T` read from a JSON object only. serde's derived structs also accept an array of their
/// fields in order (`["offer", null, null]` for a message), which no client means and the
/// documents do not allow: such a body is refused as JSON of the wrong shape.
#[derive(Debug)]
pub struct JsonObject<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for JsonObject<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<T>(std::marker::PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
            type Value = T;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map))
            }
        }

        deserializer
            .deserialize_map(ObjectVisitor(std::marker::PhantomData))
            .map(JsonObject)
    }
}

/// The body of a send: one message object, or an array of them.
#[derive(Debug)]
pub struct MessageBatch<'a>(pub Vec<OutgoingMessage<'a>>);

impl<'de> Deserialize<'de> for MessageBatch<'de> {
    /// Dispatches on the JSON shape by hand rather than with `#[serde(untagged)]`, so that an
    /// error inside a message keeps serde's precise wording ("unknown field `from`", ...).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BatchVisitor;

        impl<'de> Visitor<'de> for BatchVisitor {
            type Value = MessageBatch<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a message object or an array of message objects")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<MessageBatch<'de>, A::Error> {
                let one = OutgoingMessage::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(MessageBatch(vec![one]))
            }

            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<MessageBatch<'de>, A::Error> {
                let mut messages = Vec::new();
                while let Some(JsonObject(message)) =
                    seq.next_element::<JsonObject<OutgoingMessage>>()?
                {
                    if messages.len() == MAX_BATCH {
                        return Err(de::Error::custom(format!(
                            "a batch carries at most {MAX_BATCH} messages"
                        )));
                    }
                    messages.push(message);
                }
                Ok(MessageBatch(messages))
            }
        }

        deserializer.deserialize_any(BatchVisitor)
    }
}

/// A message as stored in mailboxes: its type and its envelope, encoded once.
#[derive(Debug)]
pub struct EncodedMessage {
    kind: TypeName,
    /// The envelope's JSON object without its `id`: `{"from":…,"type":…,"data":…}`.
    /// Always a non-empty object, so `render` can splice the id after its opening brace.
    /// A `String` rather than a `Box<str>`: shrinking it to fit would copy it once more.
    body: String,
}

#[derive(Serialize)]
struct EnvelopeBody<'a, D: Serialize + ?Sized> {
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<PeerId>,
    #[serde(rename = "type")]
    kind: &'a str,
    data: &'a D,
}

/// `{"from":"<36>","type":"<kind>","data":<data>}`, without `from` when it is `None`, into one
/// buffer of about the right size.
fn encode_body<D: Serialize + ?Sized>(
    from: Option<PeerId>,
    kind: &str,
    data: &D,
    data_len: usize,
) -> String {
    let mut body = Vec::with_capacity(data_len + kind.len() + 64);
    let envelope = EnvelopeBody { from, kind, data };
    // Serialising a struct of strings, ids and already-valid JSON cannot fail.
    if serde_json::to_writer(&mut body, &envelope).is_err() {
        body = b"{}".to_vec();
    }
    // serde_json writes only UTF-8.
    String::from_utf8(body).unwrap_or_else(|_| String::from("{}"))
}

/// The bytes `"from":"<peer id>",` add to an envelope: a hyphenated UUID is always 36 characters.
const FROM_FIELD_LEN: usize = r#""from":"","#.len() + PeerId::LEN;

/// A peer's message before the store has said who sent it: the envelope without its `from`,
/// `{"type":…,"data":…}`, encoded once when the request is read. The store that identifies the
/// sender (by its token, atomically with delivery) signs it by splicing `from` in, so a store
/// that identifies and delivers in one round trip (Redis) needs no second trip to learn the
/// sender first.
#[derive(Debug)]
pub struct Draft {
    /// `{"type":"<kind>","data":…}`: a non-empty object, so `from` can be spliced after its
    /// brace.
    body: String,
    kind_len: usize,
}

impl Draft {
    /// What comes before the type, and between the type and the data.
    const BEFORE_KIND: &'static str = r#"{"type":""#;
    const BEFORE_DATA: &'static str = r#"","data":"#;
    /// Where a draft's body spells its type.
    const KIND_AT: usize = Self::BEFORE_KIND.len();

    /// Written by hand, byte for byte what serde writes ([`EncodedMessage::from_peer`]): the
    /// type needs no escaping (its alphabet is `a-z 0-9 _ -`) and the data is copied as sent.
    pub fn new(kind: MessageType<'_>, data: Option<&RawValue>) -> Self {
        let kind = kind.as_str();
        let data = data.unwrap_or(RawValue::NULL).get();
        let mut body = String::with_capacity(
            Self::BEFORE_KIND.len() + kind.len() + Self::BEFORE_DATA.len() + data.len() + 1,
        );
        body.push_str(Self::BEFORE_KIND);
        body.push_str(kind);
        body.push_str(Self::BEFORE_DATA);
        body.push_str(data);
        body.push('}');
        Self {
            body,
            kind_len: kind.len(),
        }
    }

    pub fn kind(&self) -> &str {
        &self.body[Self::KIND_AT..Self::KIND_AT + self.kind_len]
    }

    /// The envelope without `from`, as sent to a store that signs it itself.
    pub fn unsigned_body(&self) -> &str {
        &self.body
    }

    /// The size the signed envelope will have, as counted against the message size limit.
    pub fn signed_len(&self) -> usize {
        self.body.len() + FROM_FIELD_LEN
    }

    /// The envelope with `from` set to `sender`: byte for byte what [`EncodedMessage::from_peer`]
    /// encodes.
    pub fn sign(&self, sender: PeerId) -> Arc<EncodedMessage> {
        let mut body = String::with_capacity(self.signed_len());
        body.push_str("{\"from\":\"");
        body.push_str(sender.encode(&mut [0; PeerId::LEN]));
        body.push_str("\",");
        body.push_str(&self.body[1..]);
        Arc::new(EncodedMessage {
            kind: TypeName::new(self.kind()),
            body,
        })
    }
}

impl EncodedMessage {
    /// A message as a store kept it: its type and its envelope without `id`, already encoded.
    pub fn stored(kind: &str, body: String) -> Arc<Self> {
        Arc::new(Self {
            kind: TypeName::new(kind),
            body,
        })
    }

    /// The envelope without its `id`, as a store keeps it.
    pub fn body(&self) -> &str {
        &self.body
    }

    /// A message from a peer.
    pub fn from_peer(from: PeerId, kind: MessageType<'_>, data: Option<&RawValue>) -> Arc<Self> {
        let data = data.unwrap_or(RawValue::NULL);
        Self::encode(Some(from), kind.as_str(), data, data.get().len())
    }

    /// An event the server emits (`join`, `leave`, ...); it has no `from`.
    pub fn from_server<D: Serialize>(kind: &'static str, data: &D) -> Arc<Self> {
        Self::encode(None, kind, data, 64)
    }

    /// `data_len` is a guess at the encoded size of `data`, so that the envelope is written
    /// into one buffer of the right size instead of one that grows and is then shrunk.
    fn encode<D: Serialize + ?Sized>(
        from: Option<PeerId>,
        kind: &str,
        data: &D,
        data_len: usize,
    ) -> Arc<Self> {
        Arc::new(Self {
            kind: TypeName::new(kind),
            body: encode_body(from, kind, data, data_len),
        })
    }

    pub fn kind(&self) -> &str {
        self.kind.as_str()
    }

    /// The size this message adds to a mailbox, as counted against the message size limit.
    pub fn encoded_len(&self) -> usize {
        self.body.len()
    }

    /// The full envelope `{"id":…,"from":…,"type":…,"data":…}` for the mailbox slot `id`.
    pub fn render(&self, id: u64) -> String {
        let mut out = Vec::with_capacity(self.body.len() + 28);
        self.render_into(id, &mut out);
        // Only UTF-8 went in: the body is a `str` and the id is digits.
        String::from_utf8(out).unwrap_or_default()
    }

    /// [`render`](Self::render), appended to `out`: a stream writes many envelopes into one
    /// buffer without allocating for each.
    pub fn render_into(&self, id: u64, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"id\":");
        out.extend_from_slice(itoa::Buffer::new().format(id).as_bytes());
        out.push(b',');
        out.extend_from_slice(&self.body.as_bytes()[1..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_are_checked_and_reserved_ones_refused() {
        assert!(MessageType::parse_client("offer").is_ok());
        assert!(MessageType::parse_client("ice-candidate_2").is_ok());
        for bad in [
            "",
            "Offer",
            "2fa",
            "a b",
            "x".repeat(33).as_str(),
            "join",
            "reset",
        ] {
            assert!(MessageType::parse_client(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn envelope_is_encoded_once_and_takes_its_id_when_rendered() {
        let from = PeerId::random();
        let kind = MessageType::parse_client("offer").unwrap();
        let data = RawValue::from_string(r#"{"sdp":"v=0\r\n"}"#.into()).unwrap();
        let message = EncodedMessage::from_peer(from, kind, Some(&data));
        let rendered: serde_json::Value = serde_json::from_str(&message.render(42)).unwrap();
        assert_eq!(rendered["id"], 42);
        assert_eq!(rendered["from"], from.to_string());
        assert_eq!(rendered["type"], "offer");
        assert_eq!(rendered["data"]["sdp"], "v=0\r\n");
        assert_eq!(message.render(7).matches("\"id\"").count(), 1);
    }

    #[test]
    fn a_signed_draft_is_the_envelope_encoded_with_its_sender() {
        let from = PeerId::random();
        let kind = MessageType::parse_client("candidate").unwrap();
        let data = RawValue::from_string(r#"{"candidate":"a=1","n":[1,2]}"#.into()).unwrap();
        let draft = Draft::new(kind, Some(&data));
        let signed = draft.sign(from);
        let direct = EncodedMessage::from_peer(from, kind, Some(&data));
        assert_eq!(signed.body(), direct.body());
        assert_eq!(draft.signed_len(), direct.encoded_len());
        assert_eq!((draft.kind(), signed.kind()), ("candidate", "candidate"));
        let without_data = Draft::new(kind, None).sign(from);
        assert_eq!(
            without_data.body(),
            EncodedMessage::from_peer(from, kind, None).body()
        );
    }

    /// A stored message keeps its type, inline or, past the longest a type may be (only a
    /// corrupted store could hold one), on the heap.
    #[test]
    fn a_stored_message_keeps_its_type_whatever_its_length() {
        for kind in [
            "offer",
            "x".repeat(MessageType::MAX_LEN).as_str(),
            "é".repeat(40).as_str(),
        ] {
            assert_eq!(EncodedMessage::stored(kind, "{}".into()).kind(), kind);
        }
    }

    #[test]
    fn server_events_have_no_sender() {
        let message = EncodedMessage::from_server("leave", &serde_json::json!({"reason": "left"}));
        let rendered: serde_json::Value = serde_json::from_str(&message.render(1)).unwrap();
        assert!(rendered.get("from").is_none());
        assert_eq!(rendered["type"], "leave");
    }

    #[test]
    fn a_batch_is_one_object_or_an_array() {
        let one: MessageBatch = serde_json::from_str(r#"{"type":"offer","data":1}"#).unwrap();
        assert_eq!(one.0.len(), 1);
        let many: MessageBatch =
            serde_json::from_str(r#"[{"type":"a"},{"type":"b","to":null}]"#).unwrap();
        assert_eq!(many.0.len(), 2);
        let err = serde_json::from_str::<MessageBatch>(r#"{"type":"a","from":"x"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `from`"), "{err}");
        let too_many = format!("[{}]", vec![r#"{"type":"a"}"#; MAX_BATCH + 1].join(","));
        assert!(serde_json::from_str::<MessageBatch>(&too_many).is_err());
    }

    /// A message is read from the body without copies where it can be, and decoded where its
    /// type has escapes; its data is the exact text sent, whitespace and escapes included.
    #[test]
    fn a_message_borrows_what_it_can_from_the_body() {
        let body = r#"{"type":"offer","data":{ "sdp" : "v=0\r\n" }}"#;
        let MessageBatch(batch) = serde_json::from_str(body).unwrap();
        assert!(matches!(batch[0].kind, Cow::Borrowed("offer")));
        assert_eq!(batch[0].data.unwrap().get(), r#"{ "sdp" : "v=0\r\n" }"#);
        let MessageBatch(batch) = serde_json::from_str(r#"{"type":"off\u0065r"}"#).unwrap();
        assert!(matches!(batch[0].kind, Cow::Owned(ref kind) if kind == "offer"));
        assert!(batch[0].data.is_none());
    }
}
