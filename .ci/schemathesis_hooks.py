"""schemathesis hooks for .ci/fuzz: the fuzzer keeps the tokens its joins were given, as a client does.

A peer token is a capability for one peer of one room, handed out once by the join. The
document's links carry a join's room and peer id to the next operation; this hook remembers each
join's token and sends it, as `Authorization: Bearer`, with requests for that peer (or, for a
send, which names no peer, the room's newest). Credentials given this way are the client's own,
so schemathesis's `ignored_auth` check can test them: it drops them and forges them, and expects
401s. Requests for peers the fuzzer never joined go without a token.
"""

import json

import schemathesis

JOIN = "POST /api/rooms/{room}/peers"
# The beacon leave is a POST to `…/peers/{peer}/leave`. schemathesis counts a request as the
# removal of a resource only when it is a DELETE, or targets the resource's own URI; after a
# beacon it would take every later 404 of the peer for a "created resource not found". So the
# fuzzer sends the beacon without a token (its refusals are still checked); its success path is
# DELETE's handler, fuzzed as `leave`, and tests/membership.rs covers the beacon itself.
BEACON = "POST /api/rooms/{room}/peers/{peer}/leave"
# (room, peer id) -> token, and room -> the newest token of that room.
TOKENS: dict[tuple[str, str], str] = {}
ROOMS: dict[str, str] = {}


@schemathesis.hook
def after_call(ctx, case, response):
    if case.operation.label != JOIN or response.status_code != 201:
        return
    joined = response.json()
    TOKENS[(joined["room"], joined["peer_id"])] = joined["token"]
    ROOMS[joined["room"]] = joined["token"]


@schemathesis.auth(refresh_interval=None)
class PeerToken:
    def get(self, case, ctx):
        if case.operation.label in (JOIN, BEACON) or not case.operation.definition.raw.get("security"):
            return None
        room = case.path_parameters.get("room")
        peer = case.path_parameters.get("peer")
        if peer is None:
            return ROOMS.get(room)
        return TOKENS.get((room, peer))

    def set(self, case, token, ctx):
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {token}"}


@schemathesis.hook("filter_body").apply_to(path="/api/rooms/{room}/peers", method="POST")
def meta_within_its_limit(ctx, body):
    """A join's `meta` is any object of at most 1024 bytes as sent; JSON Schema has no word for
    a serialised size, so the document cannot say it. Bodies whose `meta` is over the limit (the
    server's 422 `invalid_meta`, tested in tests/bad_input.rs) are not generated, in either
    direction: the document cannot say whether they are valid."""
    if not isinstance(body, dict) or not isinstance(body.get("meta"), dict):
        return True
    return len(json.dumps(body["meta"])) <= 1024
