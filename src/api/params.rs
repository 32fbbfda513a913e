//! How path segments become domain values, with precise errors instead of Rocket's bare 404/422.
//! Handlers take `Result<RoomName, Error>` and `Result<PeerId, Error>` and use `?`.

use rocket::request::FromParam;

use crate::error::Error;
use crate::identity::{PeerId, RoomName};

/// A room name from a (percent-decoded) path segment; the relay routes (`front`) use it too.
pub fn room_name(segment: &str) -> Result<RoomName, Error> {
    RoomName::parse(segment).map_err(|invalid| Error::InvalidRoomName(invalid.0))
}

/// A peer id from a (percent-decoded) path segment; the relay routes (`front`) use it too.
pub fn peer_id(segment: &str) -> Result<PeerId, Error> {
    PeerId::parse(segment).ok_or(Error::InvalidPeerId)
}

impl<'a> FromParam<'a> for RoomName {
    type Error = Error;

    fn from_param(param: &'a str) -> Result<Self, Error> {
        room_name(param)
    }
}

impl<'a> FromParam<'a> for PeerId {
    type Error = Error;

    fn from_param(param: &'a str) -> Result<Self, Error> {
        peer_id(param)
    }
}

/// Parses an optional numeric query parameter, naming it in the error.
pub fn number<T: std::str::FromStr>(
    parameter: &'static str,
    value: Option<&str>,
) -> Result<Option<T>, Error> {
    value
        .map(|text| {
            text.parse().map_err(|_| Error::InvalidQuery {
                parameter,
                reason: format!("must be a non-negative number, not {text:?}"),
            })
        })
        .transpose()
}
