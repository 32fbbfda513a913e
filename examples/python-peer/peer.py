"""A signpost peer in Python: aiortc for WebRTC, the standard library for HTTP.

It joins a room, follows docs/PROTOCOL.md (as the newcomer it offers to every peer already
there; as a peer already there it waits for the newcomers' offers and answers them), chats over
the `chat` data channel, and receives the others' video and reports its frame size.

    python peer.py http://127.0.0.1:8000 demo --name robot --transport sse

It prints one JSON object per line on stdout, for people and for tests:

    {"event": "joined", "peer_id": "…", "peers": [...]}
    {"event": "connected", "peer_id": "…"}           a chat channel to that peer is open
    {"event": "chat", "from": "…", "text": "…"}       a chat message arrived
    {"event": "video", "from": "…", "width": 640, "height": 480}   the first frame of its video

With --until-chat-and-video it leaves the room and exits once it has had both a chat message
and a video frame from some peer (exit status 0), or fails after --timeout seconds (status 1).

With --key (the room key of a page's link, `#key=<this>`) its signaling is end-to-end encrypted
as docs/PROTOCOL.md, section 8 specifies (Python's `cryptography`: HKDF and AES-GCM): it seals
every message it sends, opens what it receives, and refuses (and reports) what does not open:

    {"event": "refused", "reason": "unauthenticated", "from": "…", "type": "offer"}
"""

import argparse
import asyncio
import base64
import json
import os
import sys
import threading
import urllib.error
import urllib.request

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import candidate_from_sdp
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


def report(event, **fields):
    print(json.dumps({"event": event, **fields}), flush=True)


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text):
    if not isinstance(text, str) or len(text) % 4 == 1:
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Refused(Exception):
    """A message that is not delivered; `reason` as in docs/PROTOCOL.md, section 8."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


class RoomCipher:
    """docs/PROTOCOL.md, section 8: the room's AES-GCM key, and sequences out and in."""

    VERSION = "signpost-e2ee-v1"

    def __init__(self, room, key_text):
        raw = unb64url(key_text)
        if len(raw) < 16:
            raise ValueError("a room key has at least 16 bytes")
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=self.VERSION.encode(), info=room.encode())
        self.aead = AESGCM(hkdf.derive(raw))
        self.room = room
        self.sequence = 0  # the last sequence sealed; the first message is 1
        self.seen = {}  # sender peer_id -> the highest sequence accepted from it

    def additional_data(self, sender, to, kind):
        return f"{self.VERSION}\n{self.room}\n{sender}\n{to or '*'}\n{kind}".encode()

    def seal(self, sender, to, kind, data, name=None):
        self.sequence += 1
        inner = {"seq": self.sequence, "data": data}
        if name:
            inner["name"] = name
        iv = os.urandom(12)
        plain = json.dumps(inner, separators=(",", ":")).encode()
        sealed = self.aead.encrypt(iv, plain, self.additional_data(sender, to, kind))
        return {"e2ee": self.VERSION, "iv": b64url(iv), "ct": b64url(sealed)}

    def open(self, envelope, recipient):
        """The inner object ({"seq", "data", "name"?}) of an envelope that reached `recipient`."""
        data, sender, kind = envelope.get("data"), envelope.get("from"), envelope["type"]
        try:
            if data.get("e2ee") != self.VERSION:
                raise ValueError("another version")
            iv, sealed = unb64url(data["iv"]), unb64url(data["ct"])
            if len(iv) != 12:
                raise ValueError("a nonce has 12 bytes")
        except (AttributeError, KeyError, ValueError, TypeError):
            raise Refused("unauthenticated")
        for to in (recipient, None):  # sealed for this peer, or for everyone ("*")
            try:
                plain = self.aead.decrypt(iv, sealed, self.additional_data(sender, to, kind))
                inner = json.loads(plain)
                break
            except (InvalidTag, ValueError):
                continue
        else:
            raise Refused("unauthenticated")
        seq = inner.get("seq") if isinstance(inner, dict) else None
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
            raise Refused("unauthenticated")
        if seq <= self.seen.get(sender, 0):
            raise Refused("replayed")
        self.seen[sender] = seq
        return inner


def is_sealed(data):
    return isinstance(data, dict) and isinstance(data.get("e2ee"), str)


class Signpost:
    """The HTTP API (docs/API.md): join, send, receive (SSE or long-poll), leave. With a room
    key, `data` is sealed on the way out and opened on the way in (docs/PROTOCOL.md, 8)."""

    def __init__(self, base, room, name, key=None):
        self.base = base.rstrip("/")
        self.room = room
        self.name = name
        self.joined = None
        self.cipher = RoomCipher(room, key) if key else None

    def request(self, method, path, body=None, timeout=30):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if self.joined:
            request.add_header("Authorization", f"Bearer {self.joined['token']}")
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read()
            return json.loads(text) if text else None

    async def join(self):
        # With a key the name travels sealed in every message instead of in the clear join.
        body = {"name": self.name} if self.name and not self.cipher else {}
        self.joined = await asyncio.to_thread(self.request, "POST", f"/api/rooms/{self.room}/peers", body)
        return self.joined

    async def send(self, to, kind, data):
        if self.cipher:
            data = self.cipher.seal(self.joined["peer_id"], to, kind, data, self.name)
        message = {"type": kind, "to": to, "data": data}
        await asyncio.to_thread(self.request, "POST", self.joined["send_url"], message)

    async def leave(self):
        await asyncio.to_thread(self.request, "DELETE", self.joined["leave_url"])

    async def receive(self, transport):
        """Yields envelopes ({"id", "from", "type", "data"}) in mailbox order."""
        queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        reader = self.read_stream if transport == "sse" else self.read_polls
        threading.Thread(target=reader, args=(loop, queue), daemon=True).start()
        while True:
            item = await queue.get()
            if isinstance(item, Exception):
                raise item
            try:
                yield self.open(item)
            except Refused as refused:
                report("refused", reason=refused.reason, type=item["type"], **{"from": item.get("from")})

    def open(self, envelope):
        """The envelope as the sender wrote it, or Refused (docs/PROTOCOL.md, 8)."""
        if envelope["type"] in ("join", "leave"):
            return envelope  # the server's own, in the clear
        if not self.cipher:
            if is_sealed(envelope.get("data")):
                raise Refused("encrypted")
            return envelope
        if not is_sealed(envelope.get("data")):
            raise Refused("downgrade")
        inner = self.cipher.open(envelope, self.joined["peer_id"])
        return {**envelope, "data": inner.get("data"), "name": inner.get("name")}

    def read_stream(self, loop, queue):
        """The SSE stream, resumed with Last-Event-ID whenever it ends (docs/API.md)."""
        last_id = None
        while True:
            request = urllib.request.Request(self.base + self.joined["events_url"])
            request.add_header("Authorization", f"Bearer {self.joined['token']}")
            if last_id is not None:
                request.add_header("Last-Event-ID", str(last_id))
            try:
                with urllib.request.urlopen(request, timeout=60) as stream:
                    event, data = None, []
                    for raw in stream:
                        line = raw.decode().rstrip("\r\n")
                        if line.startswith(":"):
                            continue
                        if line:
                            field, _, value = line.partition(":")
                            if field == "event":
                                event = value
                            elif field == "data":
                                data.append(value)
                            continue
                        if data and event not in ("ready", "reset"):
                            envelope = json.loads("\n".join(data))
                            last_id = envelope["id"]
                            loop.call_soon_threadsafe(queue.put_nowait, envelope)
                        event, data = None, []
            except urllib.error.HTTPError as error:
                loop.call_soon_threadsafe(queue.put_nowait, error)
                return
            except OSError:
                continue  # the stream was cut: reconnect and resume

    def read_polls(self, loop, queue):
        """Long-polls, each asking for what comes after the last id it got."""
        after = 0
        while True:
            path = f"{self.joined['poll_url']}?after={after}"
            try:
                answer = self.request("GET", path, timeout=self.joined["poll_max_wait_secs"] + 10)
            except urllib.error.HTTPError as error:
                loop.call_soon_threadsafe(queue.put_nowait, error)
                return
            except OSError:
                continue
            for envelope in answer["messages"]:
                loop.call_soon_threadsafe(queue.put_nowait, envelope)
            after = answer["last_id"]


class Peer:
    def __init__(self, args):
        self.signpost = Signpost(args.url, args.room, args.name, args.key)
        self.transport = args.transport
        self.chat_text = args.chat
        self.connections = {}  # peer_id -> RTCPeerConnection
        self.got_chat = asyncio.Event()
        self.got_video = asyncio.Event()

    def connection(self, other):
        """The connection to `other`, created on first use with the join's ICE servers."""
        if other not in self.connections:
            servers = [RTCIceServer(**server) for server in self.signpost.joined["ice_servers"]]
            pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))
            pc.on("datachannel", lambda channel: self.use_chat(other, channel))
            pc.on("track", lambda track: self.watch(other, track))
            self.connections[other] = pc
        return self.connections[other]

    def use_chat(self, other, channel):
        if channel.label != "chat":
            return

        def opened():
            report("connected", peer_id=other)
            channel.send(json.dumps({"type": "chat", "text": self.chat_text}))

        @channel.on("message")
        def on_message(frame):
            try:
                message = json.loads(frame)
            except (TypeError, ValueError):
                return  # not JSON: ignored, as PROTOCOL.md says
            if isinstance(message, dict) and message.get("type") == "chat":
                report("chat", **{"from": other, "text": message.get("text")})
                self.got_chat.set()

        if channel.readyState == "open":
            opened()
        else:
            channel.on("open", opened)

    def watch(self, other, track):
        if track.kind != "video":
            return

        async def first_frame():
            try:
                frame = await track.recv()
                report("video", **{"from": other, "width": frame.width, "height": frame.height})
                self.got_video.set()
                while True:  # keep draining, or the receiver's jitter buffer fills
                    await track.recv()
            except MediaStreamError:
                pass  # the connection closed

        asyncio.ensure_future(first_frame())

    async def offer(self, other):
        """The newcomer's first offer: audio and video to receive, and the chat channel."""
        pc = self.connection(other)
        pc.addTransceiver("audio", direction="recvonly")
        pc.addTransceiver("video", direction="recvonly")
        self.use_chat(other, pc.createDataChannel("chat"))
        # aiortc gathers every candidate before setLocalDescription returns: they are in the SDP,
        # so no `candidate` message follows (PROTOCOL.md 1).
        await pc.setLocalDescription(await pc.createOffer())
        await self.signpost.send(other, "offer", {"type": "offer", "sdp": pc.localDescription.sdp})

    async def handle(self, envelope):
        kind, sender, data = envelope["type"], envelope.get("from"), envelope.get("data")
        if kind == "join":
            return  # the newcomer offers; we answer (PROTOCOL.md 2)
        if kind == "leave":
            pc = self.connections.pop(data["peer_id"], None)
            if pc:
                await pc.close()
        elif kind == "offer":
            # This peer never offers after its first offers, so it never has to give way on a
            # collision (PROTOCOL.md 3): it answers every offer.
            pc = self.connection(sender)
            await pc.setRemoteDescription(RTCSessionDescription(sdp=data["sdp"], type="offer"))
            await pc.setLocalDescription(await pc.createAnswer())
            await self.signpost.send(sender, "answer", {"type": "answer", "sdp": pc.localDescription.sdp})
        elif kind == "answer" and sender in self.connections:
            await self.connections[sender].setRemoteDescription(RTCSessionDescription(sdp=data["sdp"], type="answer"))
        elif kind == "candidate" and sender in self.connections:
            if not data or not data.get("candidate"):
                return  # end of candidates
            candidate = candidate_from_sdp(data["candidate"].removeprefix("candidate:"))
            candidate.sdpMid = data.get("sdpMid")
            candidate.sdpMLineIndex = data.get("sdpMLineIndex")
            await self.connections[sender].addIceCandidate(candidate)

    async def run(self, until_chat_and_video):
        joined = await self.signpost.join()
        report("joined", peer_id=joined["peer_id"], peers=[p["peer_id"] for p in joined["peers"]])
        for other in joined["peers"]:
            await self.offer(other["peer_id"])
        messages = asyncio.ensure_future(self.read_messages())
        try:
            if until_chat_and_video:
                await asyncio.gather(self.got_chat.wait(), self.got_video.wait())
            else:
                await messages
        finally:
            messages.cancel()
            await self.signpost.leave()
            for pc in self.connections.values():
                await pc.close()

    async def read_messages(self):
        async for envelope in self.signpost.receive(self.transport):
            await self.handle(envelope)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("url", help="signpost's base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("room")
    parser.add_argument("--name", default="aiortc")
    parser.add_argument("--transport", choices=["sse", "poll"], default="sse")
    parser.add_argument("--chat", default="hello from aiortc", help="what to say on each chat channel")
    parser.add_argument("--key", help="the room key (a page link's #key=…): end-to-end encrypted signaling")
    parser.add_argument("--until-chat-and-video", action="store_true")
    parser.add_argument("--timeout", type=float, default=None, help="give up after this many seconds")
    args = parser.parse_args()
    try:
        asyncio.run(asyncio.wait_for(Peer(args).run(args.until_chat_and_video), args.timeout))
    except (asyncio.TimeoutError, TimeoutError):
        report("timeout")
        sys.exit(1)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
