//! The relay routes (send, the SSE stream, the long-poll), each defined once: its method and its
//! path. Below both HTTP layers, so that the front matches requests against the same table that
//! the `405` table lists and that the join answer's URLs are written from.
//!
//! Every relay path hangs under a room (`/api/rooms/{room}/…`) or under one of its peers
//! (`/api/rooms/{room}/peers/{peer}/…`, the peer's own URL, which Rocket serves), and ends in
//! one fixed segment.

use crate::identity::{PeerId, RoomName};

/// Where every room's path begins.
const ROOMS: &str = "/api/rooms/";
/// The segment between a room and one of its peers.
const PEERS: &str = "peers";

/// One of the three routes the front serves on hyper itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayRoute {
    /// `POST /api/rooms/{room}/messages`: a peer sends.
    Send,
    /// `GET /api/rooms/{room}/peers/{peer}/events`: a peer's SSE stream.
    Events,
    /// `GET /api/rooms/{room}/peers/{peer}/messages`: a peer's long-poll.
    Poll,
}

/// What a relay route's path hangs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Under {
    /// `/api/rooms/{room}`.
    Room,
    /// `/api/rooms/{room}/peers/{peer}`.
    Peer,
}

/// A request's path matched to a relay route; the room and the peer are the path's segments as
/// sent, still percent-encoded. `peer` is empty for [`RelayRoute::Send`], which names none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayPath<'a> {
    pub route: RelayRoute,
    pub room: &'a str,
    pub peer: &'a str,
}

impl RelayRoute {
    /// Every relay route.
    pub const ALL: [RelayRoute; 3] = [RelayRoute::Send, RelayRoute::Events, RelayRoute::Poll];

    /// The route's method, what its path hangs under and its last segment: the one place any
    /// of them is spelled.
    const fn definition(self) -> (&'static str, Under, &'static str) {
        match self {
            RelayRoute::Send => ("POST", Under::Room, "messages"),
            RelayRoute::Events => ("GET", Under::Peer, "events"),
            RelayRoute::Poll => ("GET", Under::Peer, "messages"),
        }
    }

    /// The method, upper case.
    pub fn method(self) -> &'static str {
        self.definition().0
    }

    /// The path as Rocket spells a template: `/api/rooms/<room>/peers/<peer>/events`.
    pub fn template(self) -> String {
        match self.definition() {
            (_, Under::Room, last) => format!("{ROOMS}<room>/{last}"),
            (_, Under::Peer, last) => format!("{ROOMS}<room>/{PEERS}/<peer>/{last}"),
        }
    }

    /// The route's URL for `room` and `peer`, as the join answer gives it (`send_url`,
    /// `events_url`, `poll_url`); the send route's names no peer.
    pub fn url(self, room: &RoomName, peer: PeerId) -> String {
        match self.definition() {
            (_, Under::Room, last) => format!("{ROOMS}{room}/{last}"),
            (_, Under::Peer, last) => format!("{}/{last}", peer_url(room, peer)),
        }
    }

    /// The relay route a request with `method` and `path` names, if any. On the front's path
    /// for every request: it only borrows from `path`, and reads its segments once.
    pub fn matching<'a>(method: &str, path: &'a str) -> Option<RelayPath<'a>> {
        let mut segments = crate::split::split(path.strip_prefix(ROOMS)?, b'/');
        let mut next = || segments.next();
        let (room, under, peer, last) = match (next(), next(), next(), next(), next()) {
            (Some(room), Some(last), None, _, _) => (room, Under::Room, "", last),
            (Some(room), Some(PEERS), Some(peer), Some(last), None) => {
                (room, Under::Peer, peer, last)
            }
            _ => return None,
        };
        let route = RelayRoute::ALL
            .into_iter()
            .find(|route| route.definition() == (method, under, last))?;
        Some(RelayPath { route, room, peer })
    }
}

/// A peer's own URL (`/api/rooms/{room}/peers/{peer}`: look at it, leave), under which its
/// relay routes hang.
pub fn peer_url(room: &RoomName, peer: PeerId) -> String {
    format!("{ROOMS}{room}/{PEERS}/{peer}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each route matches its own method and path, with its segments as sent, and nothing
    /// else: not another method, not a segment more or less, not a trailing slash.
    #[test]
    fn requests_match_their_route_only() {
        let matched = |method, path| RelayRoute::matching(method, path);
        assert_eq!(
            matched("POST", "/api/rooms/a%2Eb/messages"),
            Some(RelayPath {
                route: RelayRoute::Send,
                room: "a%2Eb",
                peer: ""
            })
        );
        assert_eq!(
            matched("GET", "/api/rooms/r/peers/p/events").map(|m| (m.route, m.room, m.peer)),
            Some((RelayRoute::Events, "r", "p"))
        );
        assert_eq!(
            matched("GET", "/api/rooms/r/peers/p/messages").map(|m| m.route),
            Some(RelayRoute::Poll)
        );
        // An empty segment is the route's, refused by the handler as an invalid name.
        assert_eq!(
            matched("POST", "/api/rooms//messages").map(|m| (m.route, m.room)),
            Some((RelayRoute::Send, ""))
        );
        for (method, path) in [
            ("GET", "/api/rooms/r/messages"),
            ("PUT", "/api/rooms/r/messages"),
            ("POST", "/api/rooms/r/peers/p/messages"),
            ("HEAD", "/api/rooms/r/peers/p/events"),
            ("POST", "/api/rooms/r/messages/"),
            ("GET", "/api/rooms/r/peers/p/events/"),
            ("GET", "/api/rooms/r/peers/p"),
            ("POST", "/api/rooms/r/peers"),
            ("GET", "/api/rooms/r/people/p/events"),
            ("GET", "/api/rooms/r/peers/p/ice-servers"),
            ("POST", "/api/rooms/messages"),
            ("POST", "/api/room/r/messages"),
            ("GET", "/index.html"),
        ] {
            assert_eq!(matched(method, path), None, "{method} {path}");
        }
    }

    /// A route's URL is its template filled in, and matches back to the route.
    #[test]
    fn urls_follow_the_templates_and_match_back() {
        let room = RoomName::parse("demo").expect("a room name");
        let peer = PeerId::random();
        assert_eq!(
            RelayRoute::Events.template(),
            "/api/rooms/<room>/peers/<peer>/events"
        );
        assert_eq!(RelayRoute::Send.template(), "/api/rooms/<room>/messages");
        assert_eq!(
            RelayRoute::Poll.url(&room, peer),
            format!("/api/rooms/demo/peers/{peer}/messages")
        );
        assert_eq!(
            peer_url(&room, peer),
            format!("/api/rooms/demo/peers/{peer}")
        );
        for route in RelayRoute::ALL {
            let url = route.url(&room, peer);
            let template = route
                .template()
                .replace("<room>", "demo")
                .replace("<peer>", &peer.to_string());
            assert_eq!(url, template, "{route:?}");
            let back = RelayRoute::matching(route.method(), &url).expect("matches back");
            assert_eq!(back.route, route);
            assert_eq!(back.room, "demo");
        }
    }
}
