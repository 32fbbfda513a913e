// The connection to one other peer: its RTCPeerConnection, negotiated with the "perfect
// negotiation" pattern, its media, and its chat channel (docs/PROTOCOL.md). No DOM: what a
// person sees of it is drawn by room-ui.js from the events this module reports.

import { isPublicKey } from "./identity.js";
import { safetyCode } from "./safety-code.js";

/** How long a failed connection gets to recover (ICE restart) before its peer is shown gone. */
const FAILED_GRACE_MS = 5000;
/**
 * How long a connection the server reported gone (timed out, not left) is kept while its data
 * channel still works: the peer is cut off from the server, not from us, and will rejoin.
 */
const ORPHAN_GRACE_MS = 20000;

/**
 * The connection to one other peer. Either side may offer at any time; on a collision the polite
 * peer (the smaller peer_id) rolls back its own offer and the impolite one ignores the incoming
 * offer.
 *
 * `call` is what the connection needs from the call it belongs to:
 * - `client`: the Signpost client (sends signaling, knows this page's peer id and ICE servers);
 * - `localStream()`: this page's camera/microphone stream, or null;
 * - `identity()`: this page's participant key ({publicJwk}), or null;
 * - `events`: callbacks, each given this link: `changed(link)` (anything shown of it changed),
 *   `chat(link, text)`, `chatOpened(link)`, `fileChannel(link, channel)`, `error(message)`,
 *   `vanished(link, why)` (its connection ended without a word from the server: the call closes
 *   it) and `closed(link)`.
 */
export class Link {
  constructor(id, name, call) {
    /** The other peer's peer_id; changes once if it proves to be a peer that rejoined. */
    this.id = id;
    /** Its name, when known (from its `join`, or sealed in its first message). */
    this.name = name ?? null;
    this.call = call;
    /** Whether this side yields on an offer collision: the smaller peer_id does. */
    this.polite = call.client.peerId < id;
    this.makingOffer = false;
    this.ignoreOffer = false;
    this.settingRemoteAnswer = false;
    /** Whether this side already added its tracks to the transceivers of a remote offer. */
    this.mediaAttached = false;
    /** The chat channel messages go out on: an open one when there is one. */
    this.chat = null;
    /** Every chat channel of this connection (two after a collision). */
    this.chats = new Set();
    /** The participant key the other side sent over the chat channel (DTLS-protected). */
    this.peerKey = null;
    /** The safety code of the connection ("123 456"), from both DTLS fingerprints; null before. */
    this.safety = null;
    /** Whether the server reported the peer gone while the connection still works. */
    this.orphaned = false;
    this.closed = false;
    /** Pending ends: a failed connection that does not recover, an orphan that does not resume. */
    this.failedTimer = null;
    this.orphanTimer = null;
    /** Incoming signaling, handled strictly one message after the other. */
    this.inbox = Promise.resolve();
    /** What the other side sends: its tracks are added and removed as they come and go. */
    this.remoteStream = new MediaStream();
    this.pc = this.createConnection();
  }

  label() {
    return this.name || `peer ${this.id.slice(0, 8)}`;
  }

  signal(type, data) {
    this.call.client.send(type, data, this.id).catch(() => {});
  }

  createConnection() {
    const { events } = this.call;
    const pc = new RTCPeerConnection({ iceServers: this.call.client.iceServers });
    pc.onnegotiationneeded = async () => {
      try {
        this.makingOffer = true;
        await pc.setLocalDescription();
        const { type, sdp } = pc.localDescription;
        this.signal(type, { type, sdp });
      } catch (error) {
        events.error(`Could not start a connection with ${this.label()}: ${error.message}`);
      } finally {
        this.makingOffer = false;
      }
    };
    // Candidates come in bursts; signpost.js sends those of one burst in one request.
    pc.onicecandidate = ({ candidate }) => this.signal("candidate", candidate ? candidate.toJSON() : null);
    pc.ontrack = ({ track }) => {
      this.remoteStream.addTrack(track);
      track.onunmute = () => events.changed(this);
      track.onended = () => {
        this.remoteStream.removeTrack(track);
        events.changed(this);
      };
      events.changed(this);
    };
    pc.ondatachannel = ({ channel }) => {
      if (channel.label === "chat") this.useChat(channel);
      else if (channel.label === "file") events.fileChannel(this, channel);
    };
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === "failed") {
        events.error(`The connection with ${this.label()} failed; trying again.`);
        pc.restartIce();
        // A peer whose tab died without a word: its connection fails and stays failed.
        this.failedTimer ??= setTimeout(() => this.vanish("is gone (the connection failed)"), FAILED_GRACE_MS);
      } else if (pc.connectionState === "connected") {
        clearTimeout(this.failedTimer);
        this.failedTimer = null;
        safetyCode(pc).then((code) => {
          this.safety = code;
          events.changed(this);
        });
      } else if (pc.connectionState === "closed") {
        this.vanish("is gone (the connection closed)");
      }
      events.changed(this);
    };
    return pc;
  }

  /** The offering side (the newcomer): media or receive-only transceivers, and the chat channel. */
  start() {
    const stream = this.call.localStream();
    for (const kind of ["audio", "video"]) {
      const track = stream?.getTracks().find((t) => t.kind === kind);
      if (track) this.pc.addTrack(track, stream);
      else this.pc.addTransceiver(kind, { direction: "recvonly" });
    }
    this.useChat(this.pc.createDataChannel("chat"));
  }

  /** Sends the local tracks on the transceivers the remote offer created (answering side). */
  attachLocalMedia() {
    const stream = this.call.localStream();
    if (this.mediaAttached || !stream) return;
    this.mediaAttached = true;
    const senders = new Set(this.pc.getSenders().map((sender) => sender.track));
    for (const track of stream.getTracks()) {
      if (!senders.has(track)) this.pc.addTrack(track, stream);
    }
  }

  onDescription(description) {
    this.inbox = this.inbox.then(async () => {
      if (this.closed) return;
      const pc = this.pc;
      const readyForOffer = !this.makingOffer && (pc.signalingState === "stable" || this.settingRemoteAnswer);
      const offerCollision = description.type === "offer" && !readyForOffer;
      this.ignoreOffer = !this.polite && offerCollision;
      if (this.ignoreOffer) return;
      try {
        this.settingRemoteAnswer = description.type === "answer";
        await pc.setRemoteDescription(description); // rolls back our own offer if needed
        this.settingRemoteAnswer = false;
        if (description.type === "offer") {
          this.attachLocalMedia();
          await pc.setLocalDescription();
          const { type, sdp } = pc.localDescription;
          this.signal(type, { type, sdp });
        }
      } catch (error) {
        this.settingRemoteAnswer = false;
        this.call.events.error(`Negotiation with ${this.label()} failed: ${error.message}`);
      }
    });
  }

  onCandidate(candidate) {
    this.inbox = this.inbox.then(async () => {
      if (this.closed) return;
      try {
        // null or an empty candidate: the end of the remote's candidates.
        await this.pc.addIceCandidate(candidate?.candidate ? candidate : undefined);
      } catch (error) {
        if (!this.ignoreOffer && candidate?.candidate) {
          this.call.events.error(`A network address from ${this.label()} was refused: ${error.message}`);
        }
      }
    });
  }

  useChat(channel) {
    const { events } = this.call;
    this.chats.add(channel);
    channel.onopen = () => {
      events.chatOpened(this);
      // With two chat channels (after a collision), send on whichever is open.
      this.chat = channel;
      const identity = this.call.identity();
      if (identity) channel.send(JSON.stringify({ type: "key", key: identity.publicJwk }));
      events.changed(this);
    };
    channel.onclose = () => {
      this.chats.delete(channel);
      const open = [...this.chats].find((other) => other.readyState === "open");
      if (open) this.chat = open;
      // The other side closed its connection (a tab closed without its leave beacon): gone.
      else if (this.chat === channel) this.vanish("is gone (the connection closed)");
      events.changed(this);
    };
    channel.onmessage = ({ data }) => {
      let message;
      try {
        message = JSON.parse(data);
      } catch {
        return;
      }
      if (message?.type === "chat" && typeof message.text === "string") events.chat(this, message.text);
      // The first key is the one: a connection's peer does not change.
      if (message?.type === "key" && isPublicKey(message.key)) this.peerKey ??= message.key;
    };
    if (!this.chat || this.chat.readyState !== "open") this.chat = channel;
    events.changed(this);
  }

  /** Sends `text` on the chat channel if it is open; returns whether it went. */
  sendChat(message) {
    if (this.chat?.readyState !== "open") return false;
    this.chat.send(message);
    return true;
  }

  /** Whether media and chat flow: no signaling is needed to keep it. */
  working() {
    return this.pc.connectionState === "connected" && this.chat?.readyState === "open";
  }

  /** The server reports this peer gone but the connection works: wait for it to resume. */
  orphan() {
    this.orphaned = true;
    clearTimeout(this.orphanTimer);
    this.orphanTimer = setTimeout(() => this.vanish("did not come back to the room"), ORPHAN_GRACE_MS);
    this.call.events.changed(this);
  }

  /** The server lists this peer again (it rejoined, under this id or another): no longer an orphan. */
  adopted() {
    this.orphaned = false;
    clearTimeout(this.orphanTimer);
    this.orphanTimer = null;
    this.call.events.changed(this);
  }

  /** This connection's peer proved to be `id` now (it rejoined): the same connection, a new id. */
  rekey(id, name) {
    this.id = id;
    this.polite = this.call.client.peerId < id;
    this.name = name ?? this.name;
    this.adopted();
  }

  /** Its connection ended without a `leave` from the server (yet): the call shows it gone. */
  vanish(why) {
    if (this.closed) return;
    this.call.events.vanished(this, why);
  }

  /** Inbound RTP statistics: {audio, video}, each null or the stats object. */
  async inboundStats() {
    const result = { audio: null, video: null };
    for (const report of (await this.pc.getStats()).values()) {
      if (report.type === "inbound-rtp" && (report.kind === "audio" || report.kind === "video")) {
        result[report.kind] = { ...report };
      }
    }
    return result;
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.failedTimer);
    clearTimeout(this.orphanTimer);
    this.pc.close();
    this.call.events.closed(this);
  }
}
