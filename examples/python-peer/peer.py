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
"""

import argparse
import asyncio
import json
import sys
import threading
import urllib.error
import urllib.request

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import candidate_from_sdp


def report(event, **fields):
    print(json.dumps({"event": event, **fields}), flush=True)


class Signpost:
    """The HTTP API (docs/API.md): join, send, receive (SSE or long-poll), leave."""

    def __init__(self, base, room, name):
        self.base = base.rstrip("/")
        self.room = room
        self.name = name
        self.joined = None

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
        body = {"name": self.name} if self.name else {}
        self.joined = await asyncio.to_thread(self.request, "POST", f"/api/rooms/{self.room}/peers", body)
        return self.joined

    async def send(self, to, kind, data):
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
            yield item

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
        self.signpost = Signpost(args.url, args.room, args.name)
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
