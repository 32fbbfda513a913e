//! Membership: who is in a room and why they left. A domain type with no storage and no HTTP in
//! it, below the store that records departures, the hub that announces them and the metrics that
//! count them, so that all three name it without importing one another.

use serde::Serialize;

/// Why a peer left its room, as told to the others in the `leave` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaveReason {
    /// It asked to leave.
    Left,
    /// No stream or poll for `peer_timeout_secs`.
    Timeout,
    /// Its undelivered backlog reached `mailbox_capacity`: it stopped reading.
    Evicted,
}

impl LeaveReason {
    pub fn as_str(self) -> &'static str {
        match self {
            LeaveReason::Left => "left",
            LeaveReason::Timeout => "timeout",
            LeaveReason::Evicted => "evicted",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "left" => Some(LeaveReason::Left),
            "timeout" => Some(LeaveReason::Timeout),
            "evicted" => Some(LeaveReason::Evicted),
            _ => None,
        }
    }
}
