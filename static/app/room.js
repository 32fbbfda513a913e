// The call: this page in one room, with a connection (link.js) to every other peer, set up
// through signpost.js by the conventions of docs/PROTOCOL.md: who offers, what a `join`, a
// `leave`, a `reset` or a rejoin does to the connections, and how a page that rejoined under a
// new peer id is recognised (`resume`). No DOM: everything a person sees goes through `view`
// (room-ui.js).

import { Signpost } from "../signpost.js";
import { Link } from "./link.js";
import { createIdentity, sameKey, signResume, verifyResume } from "./identity.js";
import { acquireLocalMedia, stopTracks } from "./media.js";
import { Transfers } from "./transfers.js";

/**
 * After this page rejoins, how long it waits for the peers listed in the room to prove they are
 * ones it is already connected to (their `resume`, docs/PROTOCOL.md section 7) before offering
 * to them as to strangers.
 */
const RESUME_GRACE_MS = 3000;

/** The message types the page receives besides join/leave. */
const SIGNALING_TYPES = ["offer", "answer", "candidate", "resume"];

/**
 * One room, as this page takes part in it. `view` is what shows it (room-ui.js's RoomUi): the
 * room calls it with what changed and never touches the DOM itself.
 */
export class Room {
  constructor(view) {
    this.view = view;
    /** The signaling client; null until joined. */
    this.client = null;
    /** peer_id → Link, one per other peer in the room. */
    this.links = new Map();
    /** Peers that left: late messages from them must not create a new connection. */
    this.departed = new Set();
    /** peer_id → name, from `join` events: the name for the connection its offer will start. */
    this.names = new Map();
    /**
     * This page's participant key (identity.js), for the life of the page; null until made, and
     * where WebCrypto is missing.
     */
    this.identity = null;
    /** This page's camera/microphone stream; null without one (or while asking). */
    this.localStream = null;
    /** "video", "audio" or "none": what this page sends; null while asking for it. */
    this.mediaMode = null;
    /** Whether this page has a room key (`#key=` in its link): signaling is end-to-end encrypted. */
    this.encrypted = false;
    /** Whether signaling is receiving (a stream is open or polls get answers). */
    this.signalingConnected = false;
    /** [{from, text}], oldest first; `from` is a peer_id (this page's own for what it sent). */
    this.chat = [];
    /** When (performance.now()) this page started to join; null before. */
    this.joinStartedAt = null;
    /** peer_id → when its first chat channel opened (performance.now()). */
    this.chatOpenedAt = new Map();
    /** How many times this page rejoined after the server forgot it. */
    this.rejoins = 0;
    /** How many `resume` messages this page refused (a bad signature, or nobody it knows). */
    this.refusedResumes = 0;
    this.transfers = new Transfers({
      changed: (transfer) => view.renderTransfer(transfer),
      error: (message) => view.showError(message),
    });
    /** What every Link is given of this call (see link.js). */
    this.linkCall = {
      client: null,
      localStream: () => this.localStream,
      identity: () => this.identity,
      events: {
        changed: (link) => {
          view.renderTile(link);
          view.renderStatus();
        },
        chat: (link, text) => this.addChat(link.id, text),
        chatOpened: (link) => {
          if (!this.chatOpenedAt.has(link.id)) this.chatOpenedAt.set(link.id, performance.now());
        },
        fileChannel: (link, channel) => this.transfers.receive(link, channel),
        error: (message) => view.showError(message),
        vanished: (link, why) => {
          view.showError(`${link.label()} ${why}.`);
          link.close();
        },
        closed: (link) => this.forget(link),
      },
    };
  }

  /**
   * Joins `room`: asks for camera/microphone (`wanted`) and makes the participant key
   * meanwhile, then follows the room. `options` are Signpost.join's (name, joinToken, key,
   * transport). Throws Signpost.join's error when the join is refused.
   */
  async join(room, options, wanted) {
    this.encrypted = Boolean(options.key);
    const view = this.view;
    // Asking for camera/microphone may wait on a person; join meanwhile.
    view.askingForMedia(wanted);
    const media = acquireLocalMedia(wanted).then(({ stream, mode, failure }) => {
      this.localStream = stream;
      this.mediaMode = mode;
      view.showLocalMedia({ stream, mode, failure, wanted });
    });
    const identity = createIdentity().catch((error) => {
      view.showError(`No participant key (${error.message}): after a server restart, connections will be set up again.`);
      return null;
    }).then((key) => { this.identity = key; });
    this.joinStartedAt = performance.now();
    let client;
    try {
      client = await Signpost.join(room, { ...options, types: SIGNALING_TYPES });
    } catch (error) {
      media.then(() => stopTracks(this.localStream));
      throw error;
    }
    this.client = client;
    this.linkCall.client = client;
    this.follow(client, Promise.all([media, identity]));
  }

  /** Subscribes to the client's events; signaling waits for `ready` (local media and key). */
  follow(client, ready) {
    const view = this.view;
    client.on("transport", () => view.renderStatus());
    client.on("status", ({ connected }) => {
      this.signalingConnected = connected;
      view.renderStatus();
    });
    client.on("error", ({ message }) => view.showError(message));
    // Refused messages are never applied (a tampered offer never reaches setRemoteDescription);
    // the view counts them and says why.
    client.on("refused", (refusal) => view.showRefused(refusal));
    // Signaling waits for local media so that offers and answers carry it. Every handler chains
    // on the same promise, so messages are still handled in the order they arrived.
    const afterMedia = (handler) => (event) => ready.then(() => handler(event));
    // Conventions (docs/PROTOCOL.md): the newcomer offers to everyone already there.
    ready.then(() => {
      for (const peer of client.peers) this.linkFor(peer.peer_id, peer.name)?.start();
    });
    // A newcomer's connection starts with its offer (it offers, the others wait), so a `join`
    // only notes the name: a participant who rejoined proves who it is (`resume`) instead of
    // offering, and must not get a second tile meanwhile.
    client.on("join", afterMedia(({ data }) => {
      this.names.set(data.peer_id, data.name ?? null);
      // Back under the same id (a resume credential): the connection we kept is its again.
      this.links.get(data.peer_id)?.adopted();
    }));
    client.on("leave", afterMedia(({ data }) => this.onLeave(data)));
    // Keyed, names come sealed inside each message (`name`), not in the server's `join`.
    for (const type of ["offer", "answer"]) {
      client.on(type, afterMedia(({ from, data, name }) => this.linkFor(from, name ?? this.names.get(from))?.onDescription(data)));
    }
    client.on("candidate", afterMedia(({ from, data }) => this.links.get(from)?.onCandidate(data)));
    client.on("resume", afterMedia((envelope) => this.onResume(envelope)));
    client.on("reset", afterMedia(() => this.resynchronise()));
    client.on("rejoined", afterMedia((rejoined) => {
      this.rejoins += 1;
      view.showSelf();
      this.onRejoined(rejoined);
    }));
    client.on("closed", ({ reason }) => {
      for (const link of [...this.links.values()]) link.close();
      stopTracks(this.localStream);
      view.showClosed(reason);
    });
  }

  /** The link to `peerId`, made if there is none (unless that peer left); null if it left. */
  linkFor(peerId, name) {
    let link = this.links.get(peerId);
    if (!link && this.departed.has(peerId)) return null;
    if (!link) {
      link = new Link(peerId, name, this.linkCall);
      this.links.set(peerId, link);
      this.view.addTile(link);
      this.view.renderStatus();
    } else if (name && !link.name) {
      link.name = name;
      this.view.renderTile(link);
    }
    return link;
  }

  /** A link closed: the peer is departed, its tile goes, its unfinished transfers failed. */
  forget(link) {
    this.departed.add(link.id);
    this.view.removeTile(link);
    this.links.delete(link.id);
    this.transfers.failWith(link.id);
    this.view.renderStatus();
  }

  onLeave(data) {
    const link = this.links.get(data.peer_id);
    if (!link) return;
    if (data.reason !== "left" && link.working()) {
      // Timed out on the server, yet still talking to us: cut off from signaling only. It will
      // rejoin and resume; if it does not, the connection ends (or the grace runs out).
      link.orphan();
      return;
    }
    const why = { timeout: "timed out", evicted: "was disconnected by the server" }[data.reason];
    if (why) this.view.showError(`${link.label()} ${why}.`);
    link.close();
  }

  /**
   * After a `reset` the signaling history is unknown: re-read the room and renegotiate. A
   * connection that works needs no signaling and is left alone, whatever the room says.
   */
  async resynchronise() {
    this.view.showError("Some signaling messages were lost; reconnecting to the other peers.");
    const peers = await this.client.roomPeers();
    if (!peers) return;
    const present = new Set(peers.map((peer) => peer.peer_id));
    for (const link of [...this.links.values()]) {
      if (link.working()) continue;
      if (!present.has(link.id)) link.close();
      else link.pc?.restartIce();
    }
    for (const peer of peers) {
      if (peer.peer_id !== this.client.peerId && !this.links.has(peer.peer_id)) this.linkFor(peer.peer_id, peer.name)?.start();
    }
  }

  // ---- identity across rejoins (docs/PROTOCOL.md, section 7) ----

  /**
   * Tells `to` (null: everyone in the room) that this page, under its current peer id, holds
   * the participant key its connections know it by. `reply`: an answer to another's `resume`.
   */
  async announceResume(to, reply) {
    if (!this.identity) return;
    const signature = await signResume(this.identity, this.client.room, this.client.peerId);
    await this.client.send("resume", { key: this.identity.publicJwk, signature, reply }, to).catch(() => {});
  }

  /**
   * This page rejoined under a new peer id, its connections intact: proves to the room who it
   * is, and connects to the listed peers that do not prove to be ones it knows within the grace.
   */
  async onRejoined({ peerId, previousPeerId, peers }) {
    this.view.showError("The server lost track of this page (a restart?); rejoined the room, connections kept.");
    for (const link of this.links.values()) link.polite = peerId < link.id;
    // Resumed under the same id (the server's resume credential): nobody needs telling.
    if (peerId !== previousPeerId) await this.announceResume(null, false);
    const strangers = peers.filter((peer) => !this.links.has(peer.peer_id));
    for (const peer of strangers) this.names.set(peer.peer_id, peer.name ?? null);
    const grace = this.links.size > 0 ? RESUME_GRACE_MS : 0;
    setTimeout(() => {
      if (this.client.closed) return;
      for (const peer of strangers) {
        if (!this.links.has(peer.peer_id)) this.linkFor(peer.peer_id, peer.name)?.start();
      }
    }, grace);
  }

  /**
   * A peer says its connection to us is the one whose data channel told us its key. Believed
   * only when the signature over (room, the sender's peer id as the server reports it) verifies
   * with a key exactly one connection of ours was told over its own DTLS-protected channel: a
   * replay from another peer id, a key nobody here uses, or a forged signature changes nothing.
   */
  async onResume({ from, data }) {
    if (from === this.client.peerId) return;
    const refuse = (why) => {
      this.refusedResumes += 1;
      console.warn(`signpost: a resume from ${from} ${why}; ignored`);
    };
    if (!(await verifyResume(data?.key, data?.signature, this.client.room, from))) return refuse("does not verify");
    const matches = [...this.links.values()].filter((link) => sameKey(link.peerKey, data.key));
    if (matches.length !== 1) return refuse("names no connection of ours");
    const [link] = matches;
    if (link.id !== from) {
      // A connection started with `from` before its proof arrived is a duplicate of this one.
      const duplicate = this.links.get(from);
      if (duplicate && duplicate !== link) this.discard(duplicate);
      this.rekey(link, from);
    }
    if (!data.reply) await this.announceResume(from, true);
  }

  /** `link`'s peer proved to be `id` now (it rejoined): the same connection and tile, a new id. */
  rekey(link, id) {
    const previous = link.id;
    this.links.delete(previous);
    link.rekey(id, this.names.get(id));
    this.links.set(id, link);
    for (const entry of this.chat) if (entry.from === previous) entry.from = id;
    this.transfers.rename(previous, id);
    this.view.retagTile(link);
    this.view.renderStatus();
  }

  /** Drops a duplicate connection, without marking the peer departed. */
  discard(link) {
    link.close();
    this.departed.delete(link.id);
  }

  // ---- chat and files ----

  /** Sends `text` to every peer whose chat channel is open; returns how many it reached. */
  sendChat(text) {
    const message = JSON.stringify({ type: "chat", text });
    let reached = 0;
    for (const link of this.links.values()) {
      if (link.sendChat(message)) reached += 1;
    }
    this.addChat(this.client?.peerId ?? null, text);
    return reached;
  }

  addChat(from, text) {
    const entry = { from, text };
    this.chat.push(entry);
    this.view.addChat(entry);
  }

  /** Sends `file` (a File or Blob) to every connected peer; returns how many it goes to. */
  sendFile(file) {
    return this.transfers.sendToAll(file, [...this.links.values()]);
  }

  leave() {
    return this.client?.leave();
  }
}
