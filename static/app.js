// The room page: a full mesh of RTCPeerConnections set up through signpost, with audio/video,
// chat and file transfer over data channels. The peer-to-peer conventions are in
// docs/PROTOCOL.md; all HTTP is in signpost.js.

import { Signpost } from "./signpost.js";

/** Data channel message size: 16 KiB crosses every WebRTC implementation unsplit. */
const FILE_CHUNK_BYTES = 16 * 1024;
/** Read from disk in pieces this large, so a big file is never held whole by the sender. */
const FILE_READ_BYTES = 1024 * 1024;
/** Stop queueing file chunks above this many buffered bytes; resume below the low mark. */
const FILE_HIGH_WATER = 1024 * 1024;
const FILE_LOW_WATER = 256 * 1024;
/**
 * The largest file this page receives: a received file is held in memory until it is saved, so
 * one announced larger is refused before any of it is buffered (the page says so where it
 * describes transfers).
 */
const MAX_RECEIVED_FILE_BYTES = 1024 * 1024 * 1024;
/** Files up to this size get a SHA-256 shown on both sides (WebCrypto hashes in one piece). */
const HASH_LIMIT_BYTES = 64 * 1024 * 1024;
/** Shown error lines. */
const MAX_ERRORS = 6;
/**
 * After this page rejoins, how long it waits for the peers listed in the room to prove they are
 * ones it is already connected to (their `resume`, docs/PROTOCOL.md section 7) before offering
 * to them as to strangers.
 */
const RESUME_GRACE_MS = 3000;
/**
 * How long a connection the server reported gone (timed out, not left) is kept while its data
 * channel still works: the peer is cut off from the server, not from us, and will rejoin.
 */
const ORPHAN_GRACE_MS = 20000;
/** How long a failed connection gets to recover (ICE restart) before its peer is shown gone. */
const FAILED_GRACE_MS = 5000;

const $ = (id) => document.getElementById(id);

const params = new URLSearchParams(location.search);
const app = {
  client: null,
  /** peer_id → Link, one per other peer in the room. */
  links: new Map(),
  /** Peers that left: late messages from them must not create a new connection. */
  departed: new Set(),
  /** peer_id → name, from `join` events: the name for the connection its offer will start. */
  names: new Map(),
  /**
   * This page's participant key (ECDSA P-256), for the life of the page: the others learn its
   * public half over the data channel and recognise this page by it after a rejoin. Null where
   * WebCrypto is missing (pages without HTTPS or localhost).
   */
  identity: null,
  localStream: null,
  /** "video", "audio" or "none": what this page sends; null while asking for it. */
  mediaMode: null,
  /** Whether signaling is receiving (a stream is open or polls get answers). */
  signalingConnected: false,
  /** Whether this page has a room key (`#key=` in its link): signaling is end-to-end encrypted. */
  encrypted: false,
  /** peer_id → when its first chat channel opened (performance.now()). */
  chatOpenedAt: new Map(),
  chat: [],
  transfers: [],
  nextTransferId: 1,
};

// ---- automation hook: tests and scripts drive the page through this ----

window.signpostApp = {
  /** [{peer_id, name, connectionState, dataChannelState}] for every other peer. */
  peers: () => [...app.links.values()].map((link) => ({
    peer_id: link.id,
    name: link.name,
    connectionState: link.pc?.connectionState ?? "new",
    dataChannelState: link.chat?.readyState ?? null,
  })),
  /** Sends `text` to every peer whose chat channel is open; returns how many it reached. */
  sendChat: (text) => sendChat(String(text)),
  /** [{from, text}], oldest first; `from` is a peer_id (this page's own for what it sent). */
  chatLog: () => app.chat.map(({ from, text }) => ({ from, text })),
  /** "sse" or "poll" (null before joining). */
  transport: () => app.client?.transport ?? null,
  // Beyond the basics, for scripting files and media:
  /** This page's peer_id (null before joining). */
  peerId: () => app.client?.peerId ?? null,
  /** "video", "audio" or "none"; null while the page is still asking for camera/microphone. */
  mediaMode: () => app.mediaMode,
  /**
   * [{id, peer_id, direction, name, size, bytes, state, sha256, sawProgress, peakBuffered,
   * savedType}]: `state` is "sending", "receiving", "done", "failed" or "refused" (too large);
   * `savedType` is the MIME type a received file is saved under.
   */
  transfers: () => app.transfers.map(({ element, blob, ...transfer }) => ({ ...transfer, savedType: blob?.type ?? null })),
  /** The largest file this page receives, in bytes. */
  maxReceivedFileBytes: () => MAX_RECEIVED_FILE_BYTES,
  /** Sends `file` (a File or Blob) to every connected peer. */
  sendFile: (file) => sendFileToAll(file),
  /** Inbound RTP statistics from `peerId`: {audio, video}, each null or the stats object. */
  inboundStats: (peerId) => inboundStats(app.links.get(peerId)),
  /** How many times this page rejoined after the server forgot it. */
  rejoins: () => app.rejoins ?? 0,
  /** How many `resume` messages this page refused (a bad signature, or nobody it knows). */
  refusedResumes: () => app.refusedResumes ?? 0,
  /**
   * End-to-end encryption of signaling: `on` when the page has a room key, `rejected` the
   * messages refused because of it (not opening with the key, replayed, clear to a keyed page,
   * or sealed to a page without the key).
   */
  encryption: () => ({ on: app.encrypted, rejected: app.client?.refused ?? 0 }),
  /**
   * When (ms since the page's time origin) the page started to join, and when each peer's chat
   * channel first opened: set-up times, for benchmarks.
   */
  /**
   * The safety code of the connection to `peerId` ("123 456"), from both DTLS fingerprints: the
   * same on both ends unless someone sits in the middle. Null until connected.
   */
  safetyCode: (peerId) => app.links.get(peerId)?.safety ?? null,
  timings: () => ({ joinStarted: app.joinStartedAt ?? null, chatOpened: Object.fromEntries(app.chatOpenedAt) }),
};

// ---- joining ----

async function main() {
  const room = params.get("room");
  if (!room) return showLobby();
  const name = params.get("name") || "";
  const wanted = ["none", "audio", "video"].includes(params.get("media")) ? params.get("media") : "video";
  const transport = ["sse", "poll", "auto"].includes(params.get("transport")) ? params.get("transport") : "auto";

  $("lobby").hidden = true;
  $("room").hidden = false;
  $("room-bar").hidden = false;
  $("room-name").textContent = room;
  // A join token from the application comes in the fragment (#token=…), and so does the room
  // key (#key=…): browsers never send the fragment to a server, so both stay out of every
  // access log, and the key out of the server's reach. With a token, the token names the peer.
  const fragment = new URLSearchParams(location.hash.slice(1));
  const joinToken = fragment.get("token") || undefined;
  const key = fragment.get("key") || undefined;
  app.encrypted = Boolean(key);

  const share = new URL(location.pathname, location.origin);
  share.searchParams.set("room", room);
  if (key) share.hash = new URLSearchParams({ key }).toString();
  $("share-link").value = share.href;
  $("copy-link").onclick = async () => {
    await navigator.clipboard?.writeText(share.href).catch(() => {});
    $("share-link").select();
  };

  // Asking for camera/microphone may wait on a person; join meanwhile.
  const media = startMedia(wanted);
  const identity = createIdentity().then((key) => { app.identity = key; });
  let client;
  app.joinStartedAt = performance.now();
  try {
    client = await Signpost.join(room, {
      name: joinToken ? undefined : name,
      joinToken,
      key,
      transport,
      types: ["offer", "answer", "candidate", "resume"],
    });
  } catch (error) {
    media.then(() => app.localStream?.getTracks().forEach((track) => track.stop()));
    $("lobby").hidden = false;
    $("room").hidden = true;
    $("lobby-error").textContent = joinRefusal(room, error);
    fillLobby({ room, name, media: wanted });
    return;
  }
  app.client = client;
  const showSelf = () => { $("status-self").textContent = `${client.name ?? "(no name)"} · ${client.peerId.slice(0, 8)}`; };
  showSelf();
  $("local-label").textContent = client.name ? `${client.name} (you)` : "You";

  client.on("transport", renderStatus);
  client.on("status", ({ connected }) => {
    app.signalingConnected = connected;
    renderStatus();
  });
  client.on("error", ({ message }) => showError(message));
  // Refused messages are never applied (a tampered offer never reaches setRemoteDescription);
  // the page counts them and says why, once per reason and sender.
  const told = new Set();
  client.on("refused", ({ reason, from }) => {
    renderEncryption();
    if (told.has(`${reason} ${from}`)) return;
    told.add(`${reason} ${from}`);
    const who = from ? `peer ${from.slice(0, 8)}` : "the server";
    showError({
      unauthenticated: `A message from ${who} does not open with this room's key (altered on the way, or sent with another key); refused.`,
      replayed: `A message from ${who} was replayed or reordered on the way; refused.`,
      downgrade: `${who[0].toUpperCase()}${who.slice(1)} sent an unencrypted message into this encrypted room; refused.`,
      encrypted: "This room is encrypted: open the link with its key. An encrypted message was refused.",
    }[reason] ?? `A message from ${who} was refused (${reason}).`);
  });
  // Signaling waits for local media so that offers and answers carry it. Every handler chains on
  // the same promise, so messages are still handled in the order they arrived.
  const ready = Promise.all([media, identity]);
  const afterMedia = (handler) => (event) => ready.then(() => handler(event));
  // Conventions (docs/PROTOCOL.md): the newcomer offers to everyone already there.
  ready.then(() => {
    for (const peer of client.peers) linkFor(peer.peer_id, peer.name)?.start();
  });
  // A newcomer's connection starts with its offer (it offers, the others wait), so a `join`
  // only notes the name: a participant who rejoined proves who it is (`resume`) instead of
  // offering, and must not get a second tile meanwhile.
  client.on("join", afterMedia(({ data }) => {
    app.names.set(data.peer_id, data.name ?? null);
    // Back under the same id (a resume credential): the connection we kept is its again.
    app.links.get(data.peer_id)?.adopted();
  }));
  client.on("leave", afterMedia(({ data }) => {
    const link = app.links.get(data.peer_id);
    if (!link) return;
    if (data.reason !== "left" && link.working()) {
      // Timed out on the server, yet still talking to us: cut off from signaling only. It will
      // rejoin and resume; if it does not, the connection ends (or the grace runs out).
      link.orphan();
      return;
    }
    const why = { timeout: "timed out", evicted: "was disconnected by the server" }[data.reason];
    if (why) showError(`${link.label()} ${why}.`);
    link.close();
  }));
  // Keyed, names come sealed inside each message (`name`), not in the server's `join`.
  for (const type of ["offer", "answer"]) {
    client.on(type, afterMedia(({ from, data, name }) => linkFor(from, name ?? app.names.get(from))?.onDescription(data)));
  }
  client.on("candidate", afterMedia(({ from, data }) => app.links.get(from)?.onCandidate(data)));
  client.on("resume", afterMedia((envelope) => onResume(envelope)));
  client.on("reset", afterMedia(() => resynchronise()));
  client.on("rejoined", afterMedia((rejoined) => {
    app.rejoins = (app.rejoins ?? 0) + 1;
    showSelf();
    onRejoined(rejoined);
  }));
  client.on("closed", ({ reason }) => {
    for (const link of [...app.links.values()]) link.close();
    app.localStream?.getTracks().forEach((track) => track.stop());
    if (reason === "left") showError("You left the room.");
    if (reason === "refused") showError("You are no longer in the room, and could not rejoin it. Reload to try again.");
    $("leave").textContent = "Rejoin";
    $("leave").onclick = () => location.reload();
    renderStatus();
  });
  renderEncryption();

  $("leave").onclick = () => client.leave();
  $("chat-form").onsubmit = (event) => {
    event.preventDefault();
    const text = $("chat-input").value.trim();
    if (!text) return;
    if (sendChat(text) === 0) showError("Nobody can receive chat yet: no peer is connected.");
    $("chat-input").value = "";
  };
  $("file-limit").textContent = formatBytes(MAX_RECEIVED_FILE_BYTES);
  $("file-input").onchange = () => {
    for (const file of $("file-input").files) sendFileToAll(file);
    $("file-input").value = "";
  };
  renderStatus();
}

/**
 * After a `reset` the signaling history is unknown: re-read the room and renegotiate. A
 * connection that works needs no signaling and is left alone, whatever the room says.
 */
async function resynchronise() {
  showError("Some signaling messages were lost; reconnecting to the other peers.");
  const peers = await app.client.roomPeers();
  if (!peers) return;
  const present = new Set(peers.map((peer) => peer.peer_id));
  for (const link of [...app.links.values()]) {
    if (link.working()) continue;
    if (!present.has(link.id)) link.close();
    else link.pc?.restartIce();
  }
  for (const peer of peers) {
    if (peer.peer_id !== app.client.peerId && !app.links.has(peer.peer_id)) linkFor(peer.peer_id, peer.name)?.start();
  }
}

// ---- identity across rejoins (docs/PROTOCOL.md, section 7) ----

/** Generates this page's participant key, or returns null where WebCrypto is missing. */
async function createIdentity() {
  if (!crypto.subtle) return null;
  try {
    const pair = await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, false, ["sign", "verify"]);
    const { kty, crv, x, y } = await crypto.subtle.exportKey("jwk", pair.publicKey);
    return { privateKey: pair.privateKey, publicJwk: { kty, crv, x, y } };
  } catch (error) {
    showError(`No participant key (${error.message}): after a server restart, connections will be set up again.`);
    return null;
  }
}

/** What a `resume` signs: the room and the signer's new peer id, which the server vouches for. */
function resumeStatement(room, peerId) {
  return new TextEncoder().encode(`signpost-resume\n${room}\n${peerId}`);
}

function isPublicKey(key) {
  return key?.kty === "EC" && key.crv === "P-256" && typeof key.x === "string" && typeof key.y === "string";
}

function sameKey(a, b) {
  return isPublicKey(a) && isPublicKey(b) && a.x === b.x && a.y === b.y;
}

/** Whether `signature` (base64url, r‖s) is `key`'s over the statement for `peerId`. */
async function verifyResume(key, signature, peerId) {
  if (!crypto.subtle || !isPublicKey(key) || typeof signature !== "string") return false;
  try {
    const publicKey = await crypto.subtle.importKey("jwk", { kty: key.kty, crv: key.crv, x: key.x, y: key.y }, { name: "ECDSA", namedCurve: "P-256" }, false, ["verify"]);
    const bytes = Uint8Array.from(atob(signature.replace(/-/g, "+").replace(/_/g, "/")), (c) => c.charCodeAt(0));
    return await crypto.subtle.verify({ name: "ECDSA", hash: "SHA-256" }, publicKey, bytes, resumeStatement(app.client.room, peerId));
  } catch {
    return false;
  }
}

/**
 * Tells `to` (null: everyone in the room) that this page, under its current peer id, holds the
 * participant key its connections know it by. `reply`: an answer to another's `resume`.
 */
async function announceResume(to, reply) {
  if (!app.identity) return;
  const statement = resumeStatement(app.client.room, app.client.peerId);
  const raw = new Uint8Array(await crypto.subtle.sign({ name: "ECDSA", hash: "SHA-256" }, app.identity.privateKey, statement));
  const signature = btoa(String.fromCharCode(...raw)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  await app.client.send("resume", { key: app.identity.publicJwk, signature, reply }, to).catch(() => {});
}

/**
 * This page rejoined under a new peer id, its connections intact: proves to the room who it is,
 * and connects to the listed peers that do not prove to be ones it knows within the grace.
 */
async function onRejoined({ peerId, previousPeerId, peers }) {
  showError("The server lost track of this page (a restart?); rejoined the room, connections kept.");
  for (const link of app.links.values()) link.polite = peerId < link.id;
  // Resumed under the same id (the server's resume credential): nobody needs telling.
  if (peerId !== previousPeerId) await announceResume(null, false);
  const strangers = peers.filter((peer) => !app.links.has(peer.peer_id));
  for (const peer of strangers) app.names.set(peer.peer_id, peer.name ?? null);
  const grace = app.links.size > 0 ? RESUME_GRACE_MS : 0;
  setTimeout(() => {
    if (app.client.closed) return;
    for (const peer of strangers) {
      if (!app.links.has(peer.peer_id)) linkFor(peer.peer_id, peer.name)?.start();
    }
  }, grace);
}

/**
 * A peer says its connection to us is the one whose data channel told us its key. Believed only
 * when the signature over (room, the sender's peer id as the server reports it) verifies with a
 * key exactly one connection of ours was told over its own DTLS-protected channel: a replay from
 * another peer id, a key nobody here uses, or a forged signature changes nothing.
 */
async function onResume({ from, data }) {
  if (from === app.client.peerId) return;
  const refuse = (why) => {
    app.refusedResumes = (app.refusedResumes ?? 0) + 1;
    console.warn(`signpost: a resume from ${from} ${why}; ignored`);
  };
  if (!(await verifyResume(data?.key, data?.signature, from))) return refuse("does not verify");
  const matches = [...app.links.values()].filter((link) => sameKey(link.peerKey, data.key));
  if (matches.length !== 1) return refuse("names no connection of ours");
  const [link] = matches;
  if (link.id !== from) {
    // A connection started with `from` before its proof arrived is a duplicate of this one.
    const duplicate = app.links.get(from);
    if (duplicate && duplicate !== link) duplicate.discard();
    link.rekey(from);
  }
  if (!data.reply) await announceResume(from, true);
}

/** What to tell a person whose join was refused, by the API's error code. */
function joinRefusal(room, error) {
  const reasons = {
    missing_join_token: `"${room}" is open by invitation only: open the link you were given.`,
    join_token_expired: `Your invitation to "${room}" has expired: ask for a new link.`,
    room_not_allowed: `Your invitation is for another room, not "${room}".`,
    invalid_join_token: `Your invitation link for "${room}" is not valid (${error.message}).`,
    too_many_joins: `Too many joins from your network just now: ${error.message}.`,
    invalid_room_key: `The room key in this link is not valid (${error.message}): open the link exactly as it was shared.`,
    e2ee_unavailable: `This link is end-to-end encrypted, which needs HTTPS or localhost: ${error.message}.`,
  };
  return reasons[error.code] ?? `Could not join "${room}": ${error.message}`;
}

function showLobby() {
  fillLobby({ room: "", name: "", media: "video" });
}

/** Makes the lobby's form join: to the room page, with a fresh room key for a new room. */
function installLobby() {
  $("join-form").onsubmit = (event) => {
    event.preventDefault();
    const form = new FormData(event.target);
    const next = new URLSearchParams({ room: form.get("room") });
    if (form.get("name")) next.set("name", form.get("name"));
    if (form.get("media") !== "video") next.set("media", form.get("media"));
    // A new room gets a fresh room key, in the fragment: only those given the link can read its
    // signaling. The same key must reach the others, so they join with the shared link.
    const encrypt = form.get("encrypt") === "on" && Boolean(globalThis.crypto?.subtle);
    const hash = encrypt ? `#${new URLSearchParams({ key: Signpost.newRoomKey() })}` : "";
    location.assign(`${location.pathname}?${next}${hash}`);
  };
}

function fillLobby({ room, name, media }) {
  const form = $("join-form");
  form.room.value = room;
  form.name.value = name;
  form.media.value = media;
  // The lobby shown after a refused join is the same form, with what was asked filled in.
  if (!form.onsubmit) installLobby();
}

// ---- local media ----

/** Asks for camera and/or microphone; on refusal or absence, continues as a data-only peer. */
async function startMedia(wanted) {
  const attempts = { video: [{ audio: true, video: true }, { audio: true }], audio: [{ audio: true }], none: [] }[wanted];
  let failure = null;
  if (attempts.length > 0) {
    $("status-media").textContent = "asking for permission…";
    $("media-note").textContent = "Allow the camera/microphone to be seen and heard (or block them to join with chat and files only).";
  }
  if (attempts.length > 0 && !navigator.mediaDevices?.getUserMedia) {
    attempts.length = 0;
    failure = { name: "InsecureContext" };
  }
  for (const constraints of attempts) {
    try {
      app.localStream = await navigator.mediaDevices.getUserMedia(constraints);
      break;
    } catch (error) {
      failure = failure ?? error;
    }
  }
  const stream = app.localStream;
  app.mediaMode = stream ? (stream.getVideoTracks().length > 0 ? "video" : "audio") : "none";
  $("local-video").srcObject = stream;
  $("toggle-mic").disabled = !stream?.getAudioTracks().length;
  $("toggle-camera").disabled = !stream?.getVideoTracks().length;
  $("toggle-mic").onclick = () => toggle("audio", "toggle-mic", ["Mute", "Unmute"]);
  $("toggle-camera").onclick = () => toggle("video", "toggle-camera", ["Camera off", "Camera on"]);

  let note = { video: "camera and microphone", audio: "microphone only", none: "none: chat and files only" }[app.mediaMode];
  if (wanted === "none") note = "none (chosen): chat and files only";
  else if (failure && app.mediaMode !== wanted) note += ` (${mediaProblem(failure)})`;
  $("status-media").textContent = note;
  const problem = mediaProblem(failure);
  $("media-note").textContent = failure && app.mediaMode !== wanted
    ? `${problem[0].toUpperCase()}${problem.slice(1)}: others will not ${app.mediaMode === "audio" ? "see" : "see or hear"} you, but chat and files work.`
    : "";
  if (app.mediaMode !== "video") $("tiles").querySelector(".local").classList.add("no-video");
}

function mediaProblem(error) {
  switch (error?.name) {
    case "NotAllowedError": return "camera/microphone access was refused";
    case "NotFoundError": return "no camera/microphone found";
    case "NotReadableError": return "the camera/microphone is in use by another program";
    case "InsecureContext": return "camera/microphone need HTTPS (or localhost), and this page has neither";
    default: return `camera/microphone unavailable (${error?.message ?? error})`;
  }
}

function toggle(kind, buttonId, [onLabel, offLabel]) {
  const tracks = kind === "audio" ? app.localStream.getAudioTracks() : app.localStream.getVideoTracks();
  const enabled = !tracks[0].enabled;
  for (const track of tracks) track.enabled = enabled;
  $(buttonId).textContent = enabled ? onLabel : offLabel;
  $(buttonId).classList.toggle("off", !enabled);
}

// ---- one connection per other peer ----

function linkFor(peerId, name) {
  let link = app.links.get(peerId);
  if (!link && app.departed.has(peerId)) return null;
  if (!link) {
    link = new Link(peerId, name);
    app.links.set(peerId, link);
    renderStatus();
  } else if (name && !link.name) {
    link.name = name;
    link.renderTile();
  }
  return link;
}

/**
 * The connection to one other peer, negotiated with the "perfect negotiation" pattern: either
 * side may offer at any time; on a collision the polite peer (the smaller peer_id) rolls back
 * its own offer and the impolite one ignores the incoming offer.
 */
class Link {
  constructor(id, name) {
    this.id = id;
    this.name = name ?? null;
    this.polite = app.client.peerId < id;
    this.makingOffer = false;
    this.ignoreOffer = false;
    this.settingRemoteAnswer = false;
    this.chat = null;
    /** Every chat channel of this connection (two after a collision). */
    this.chats = new Set();
    /** The participant key the other side sent over the chat channel (DTLS-protected). */
    this.peerKey = null;
    this.closed = false;
    /** Pending ends: a failed connection that does not recover, an orphan that does not resume. */
    this.failedTimer = null;
    this.orphanTimer = null;
    /** Incoming signaling, handled strictly one message after the other. */
    this.inbox = Promise.resolve();
    this.remoteStream = new MediaStream();
    this.pc = this.createConnection();
    this.tile = this.createTile();
  }

  label() {
    return this.name || `peer ${this.id.slice(0, 8)}`;
  }

  createConnection() {
    const pc = new RTCPeerConnection({ iceServers: app.client.iceServers });
    const signal = (type, data) => app.client.send(type, data, this.id).catch(() => {});
    pc.onnegotiationneeded = async () => {
      try {
        this.makingOffer = true;
        await pc.setLocalDescription();
        const { type, sdp } = pc.localDescription;
        signal(type, { type, sdp });
      } catch (error) {
        showError(`Could not start a connection with ${this.label()}: ${error.message}`);
      } finally {
        this.makingOffer = false;
      }
    };
    // Candidates come in bursts; signpost.js sends those of one burst in one request.
    pc.onicecandidate = ({ candidate }) => signal("candidate", candidate ? candidate.toJSON() : null);
    pc.ontrack = ({ track }) => {
      this.remoteStream.addTrack(track);
      track.onunmute = () => this.renderTile();
      track.onended = () => {
        this.remoteStream.removeTrack(track);
        this.renderTile();
      };
      this.playRemote();
    };
    pc.ondatachannel = ({ channel }) => {
      if (channel.label === "chat") this.useChat(channel);
      else if (channel.label === "file") receiveFile(this, channel);
    };
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === "failed") {
        showError(`The connection with ${this.label()} failed; trying again.`);
        pc.restartIce();
        // A peer whose tab died without a word: its connection fails and stays failed.
        this.failedTimer ??= setTimeout(() => this.vanish("is gone (the connection failed)"), FAILED_GRACE_MS);
      } else if (pc.connectionState === "connected") {
        clearTimeout(this.failedTimer);
        this.failedTimer = null;
        safetyCode(pc).then((code) => {
          this.safety = code;
          this.renderTile();
        });
      } else if (pc.connectionState === "closed") {
        this.vanish("is gone (the connection closed)");
      }
      this.renderTile();
      renderStatus();
    };
    return pc;
  }

  /** The offering side (the newcomer): media or receive-only transceivers, and the chat channel. */
  start() {
    const stream = app.localStream;
    for (const kind of ["audio", "video"]) {
      const track = stream?.getTracks().find((t) => t.kind === kind);
      if (track) this.pc.addTrack(track, stream);
      else this.pc.addTransceiver(kind, { direction: "recvonly" });
    }
    this.useChat(this.pc.createDataChannel("chat"));
  }

  /** Sends the local tracks on the transceivers the remote offer created (answering side). */
  attachLocalMedia() {
    if (this.mediaAttached || !app.localStream) return;
    this.mediaAttached = true;
    const senders = new Set(this.pc.getSenders().map((sender) => sender.track));
    for (const track of app.localStream.getTracks()) {
      if (!senders.has(track)) this.pc.addTrack(track, app.localStream);
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
          app.client.send(type, { type, sdp }, this.id).catch(() => {});
        }
      } catch (error) {
        this.settingRemoteAnswer = false;
        showError(`Negotiation with ${this.label()} failed: ${error.message}`);
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
          showError(`A network address from ${this.label()} was refused: ${error.message}`);
        }
      }
    });
  }

  useChat(channel) {
    this.chats.add(channel);
    channel.onopen = () => {
      if (!app.chatOpenedAt.has(this.id)) app.chatOpenedAt.set(this.id, performance.now());
      // With two chat channels (after a collision), send on whichever is open.
      this.chat = channel;
      if (app.identity) channel.send(JSON.stringify({ type: "key", key: app.identity.publicJwk }));
      renderStatus();
    };
    channel.onclose = () => {
      this.chats.delete(channel);
      const open = [...this.chats].find((other) => other.readyState === "open");
      if (open) this.chat = open;
      // The other side closed its connection (a tab closed without its leave beacon): gone.
      else if (this.chat === channel) this.vanish("is gone (the connection closed)");
      renderStatus();
    };
    channel.onmessage = ({ data }) => {
      let message;
      try {
        message = JSON.parse(data);
      } catch {
        return;
      }
      if (message?.type === "chat" && typeof message.text === "string") addChat(this.id, message.text);
      // The first key is the one: a connection's peer does not change.
      if (message?.type === "key" && isPublicKey(message.key)) this.peerKey ??= message.key;
    };
    if (!this.chat || this.chat.readyState !== "open") this.chat = channel;
    renderStatus();
  }

  createTile() {
    const figure = document.createElement("figure");
    figure.className = "tile";
    figure.dataset.peerId = this.id;
    const video = document.createElement("video");
    video.dataset.peerId = this.id;
    video.autoplay = true;
    video.playsInline = true;
    const caption = document.createElement("figcaption");
    const badge = document.createElement("span");
    badge.className = "badge";
    const name = document.createElement("span");
    const safety = document.createElement("span");
    safety.className = "safety";
    safety.title = "Safety code: the same on both ends unless someone sits in the middle of the connection. Compare it aloud.";
    caption.append(name, safety, badge);
    figure.append(video, caption);
    $("tiles").append(figure);
    this.video = video;
    this.caption = name;
    this.safetyLabel = safety;
    this.badge = badge;
    this.renderTile();
    return figure;
  }

  playRemote() {
    if (this.video.srcObject !== this.remoteStream) this.video.srcObject = this.remoteStream;
    this.video.play().catch(() => {
      // Autoplay with sound needs a click on pages without camera/mic permission.
      this.video.muted = true;
      this.video.play().catch(() => {});
      if (!this.unmuteButton) {
        this.unmuteButton = document.createElement("button");
        this.unmuteButton.textContent = "Click to hear";
        this.unmuteButton.className = "unmute";
        this.unmuteButton.onclick = () => {
          this.video.muted = false;
          this.unmuteButton.remove();
        };
        this.tile.append(this.unmuteButton);
      }
    });
    this.renderTile();
  }

  renderTile() {
    this.caption.textContent = this.label();
    this.safetyLabel.textContent = this.safety ? `code ${this.safety}` : "";
    const state = this.pc.connectionState;
    this.badge.textContent = state === "connected" ? "" : describeState(state);
    const hasVideo = this.remoteStream.getVideoTracks().some((track) => !track.muted);
    this.tile?.classList.toggle("no-video", !hasVideo);
  }

  /** Whether media and chat flow: no signaling is needed to keep it. */
  working() {
    return this.pc.connectionState === "connected" && this.chat?.readyState === "open";
  }

  /** The server reports this peer gone but the connection works: wait for it to resume. */
  orphan() {
    this.badge.textContent = "reconnecting to the server…";
    clearTimeout(this.orphanTimer);
    this.orphanTimer = setTimeout(() => this.vanish("did not come back to the room"), ORPHAN_GRACE_MS);
  }

  /** The server lists this peer again (it rejoined under its id): no longer an orphan. */
  adopted() {
    clearTimeout(this.orphanTimer);
    this.orphanTimer = null;
    this.renderTile();
  }

  /** This connection's peer proved to be `id` now (it rejoined): the same tile, a new id. */
  rekey(id) {
    const previous = this.id;
    app.links.delete(previous);
    this.id = id;
    app.links.set(id, this);
    this.polite = app.client.peerId < id;
    this.name = app.names.get(id) ?? this.name;
    clearTimeout(this.orphanTimer);
    this.orphanTimer = null;
    this.tile.dataset.peerId = id;
    this.video.dataset.peerId = id;
    for (const entry of app.chat) if (entry.from === previous) entry.from = id;
    for (const transfer of app.transfers) if (transfer.peer_id === previous) transfer.peer_id = id;
    this.renderTile();
    renderStatus();
  }

  /** Shown gone at once: its connection ended without a `leave` from the server (yet). */
  vanish(why) {
    if (this.closed) return;
    showError(`${this.label()} ${why}.`);
    this.close();
  }

  /** Drops a duplicate connection, without marking the peer departed. */
  discard() {
    this.close();
    app.departed.delete(this.id);
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.failedTimer);
    clearTimeout(this.orphanTimer);
    app.departed.add(this.id);
    this.pc.close();
    this.tile.remove();
    app.links.delete(this.id);
    for (const transfer of app.transfers) {
      if (transfer.peer_id === this.id && !["done", "failed"].includes(transfer.state)) {
        transfer.state = "failed";
        renderTransfer(transfer);
      }
    }
    renderStatus();
  }
}

/**
 * A short code from a connection's two DTLS fingerprints (docs/PROTOCOL.md, section 8): SHA-256
 * of "signpost-safety-v1", then the two fingerprints sorted, one per line; its first 3 bytes as a
 * number mod 10^6, in two groups of three digits. Both ends compute the same code; a party in the
 * middle holds two connections with other fingerprints, so the two people would read different
 * codes. Null where a fingerprint or WebCrypto is missing.
 */
async function safetyCode(pc) {
  const fingerprints = [pc.localDescription?.sdp, pc.remoteDescription?.sdp].map(sdpFingerprint);
  if (fingerprints.includes(null) || !crypto.subtle) return null;
  fingerprints.sort();
  const text = `signpost-safety-v1\n${fingerprints.join("\n")}`;
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text)));
  const number = ((digest[0] << 16) | (digest[1] << 8) | digest[2]) % 1000000;
  return String(number).padStart(6, "0").replace(/^(\d{3})(\d{3})$/, "$1 $2");
}

/** The first `a=fingerprint` of `sdp` as "sha-256 AB:CD:…" (algorithm lower case, hex upper). */
function sdpFingerprint(sdp) {
  const match = /^a=fingerprint:(\S+) (\S+)/m.exec(sdp ?? "");
  return match ? `${match[1].toLowerCase()} ${match[2].toUpperCase()}` : null;
}

function describeState(state) {
  return {
    new: "waiting",
    connecting: "connecting…",
    connected: "connected",
    disconnected: "connection interrupted",
    failed: "connection failed",
    closed: "closed",
  }[state] ?? state;
}

async function inboundStats(link) {
  if (!link) return null;
  const result = { audio: null, video: null };
  for (const report of (await link.pc.getStats()).values()) {
    if (report.type === "inbound-rtp" && (report.kind === "audio" || report.kind === "video")) {
      result[report.kind] = { ...report };
    }
  }
  return result;
}

// ---- chat ----

function sendChat(text) {
  const message = JSON.stringify({ type: "chat", text });
  let reached = 0;
  for (const link of app.links.values()) {
    if (link.chat?.readyState === "open") {
      link.chat.send(message);
      reached += 1;
    }
  }
  addChat(app.client?.peerId ?? null, text);
  return reached;
}

function addChat(from, text) {
  app.chat.push({ from, text });
  const item = document.createElement("li");
  const mine = from === app.client?.peerId;
  item.className = mine ? "mine" : "";
  const who = document.createElement("strong");
  who.textContent = mine ? "You" : (app.links.get(from)?.label() ?? "someone who left");
  item.append(who, document.createTextNode(` ${text}`));
  $("chat-log").append(item);
  $("chat-log").scrollTop = $("chat-log").scrollHeight;
}

// ---- files ----

function sendFileToAll(file) {
  const targets = [...app.links.values()].filter((link) => link.pc.connectionState === "connected");
  if (targets.length === 0) showError(`Cannot send ${file.name ?? "the file"}: no peer is connected.`);
  for (const link of targets) sendFile(link, file);
  return targets.length;
}

/**
 * Sends `file` on a new "file" channel: a JSON header, binary chunks, then waits for the
 * receiver's receipt. Chunks are queued only while the channel's buffer is below the high mark,
 * so memory stays bounded and the transfer runs at the speed of the connection.
 */
async function sendFile(link, file) {
  const transfer = newTransfer(link, "send", file.name ?? "file", file.size);
  if (file.size <= HASH_LIMIT_BYTES) sha256(file).then((hash) => { transfer.sha256 = hash; renderTransfer(transfer); });
  const channel = link.pc.createDataChannel("file");
  channel.binaryType = "arraybuffer";
  channel.bufferedAmountLowThreshold = FILE_LOW_WATER;
  const closed = new Promise((resolve, reject) => {
    channel.addEventListener("close", () => reject(new Error("the connection closed")), { once: true });
  });
  closed.catch(() => {});
  const opened = new Promise((resolve) => channel.addEventListener("open", resolve, { once: true }));
  const receipt = new Promise((resolve) => {
    channel.addEventListener("message", ({ data }) => {
      try {
        if (JSON.parse(data).type === "received") resolve();
      } catch {
        // not a receipt
      }
    });
  });
  const drained = () => Promise.race([
    new Promise((resolve) => channel.addEventListener("bufferedamountlow", resolve, { once: true })),
    closed,
  ]);
  try {
    await Promise.race([opened, closed]);
    channel.send(JSON.stringify({ type: "file", name: transfer.name, size: file.size, mime: file.type || "" }));
    for (let offset = 0; offset < file.size;) {
      const piece = await file.slice(offset, offset + FILE_READ_BYTES).arrayBuffer();
      for (let start = 0; start < piece.byteLength; start += FILE_CHUNK_BYTES) {
        if (channel.bufferedAmount > FILE_HIGH_WATER) await drained();
        const length = Math.min(FILE_CHUNK_BYTES, piece.byteLength - start);
        channel.send(new Uint8Array(piece, start, length));
        transfer.peakBuffered = Math.max(transfer.peakBuffered, channel.bufferedAmount);
        offset += length;
        progress(transfer, offset - channel.bufferedAmount);
      }
    }
    await Promise.race([receipt, closed]);
    transfer.state = "done";
    progress(transfer, file.size);
    channel.close();
  } catch (error) {
    transfer.state = "failed";
    renderTransfer(transfer);
    showError(`Sending ${transfer.name} to ${link.label()} failed: ${error.message}`);
  }
}

/** Receives one file on `channel`: header, chunks up to `size`, then sends a receipt. */
function receiveFile(link, channel) {
  channel.binaryType = "arraybuffer";
  let transfer = null;
  const chunks = [];
  channel.onmessage = async ({ data }) => {
    if (!transfer) {
      let header;
      try {
        header = JSON.parse(data);
      } catch {
        return channel.close();
      }
      if (header.type !== "file" || !Number.isSafeInteger(header.size) || header.size < 0) return channel.close();
      transfer = newTransfer(link, "receive", String(header.name ?? "file"), header.size);
      // What the sender says the file is: shown, never used to open it (see finish).
      transfer.mime = String(header.mime ?? "");
      if (header.size > MAX_RECEIVED_FILE_BYTES) {
        transfer.state = "refused";
        renderTransfer(transfer);
        showError(`${transfer.name} from ${link.label()} is ${formatBytes(header.size)}; this page receives files up to ${formatBytes(MAX_RECEIVED_FILE_BYTES)}.`);
        return channel.close();
      }
      if (header.size === 0) finish();
      return;
    }
    if (typeof data === "string" || transfer.state !== "receiving") return;
    // A sender that sends more than it announced is cut off rather than buffered.
    if (transfer.bytes + data.byteLength > transfer.size) return channel.close();
    chunks.push(data);
    progress(transfer, transfer.bytes + data.byteLength);
    if (transfer.bytes >= transfer.size) finish();
  };
  channel.onclose = () => {
    if (transfer && transfer.state === "receiving") {
      transfer.state = "failed";
      renderTransfer(transfer);
      showError(`${transfer.name} from ${link.label()} did not arrive completely.`);
    }
  };
  const finish = async () => {
    // Saved as bytes whatever type the sender claims: a "text/html" file opened from its Save
    // link would otherwise run as a page of this origin, with this page's room and tokens.
    transfer.blob = new Blob(chunks, { type: "application/octet-stream" });
    chunks.length = 0;
    transfer.state = "done";
    channel.send(JSON.stringify({ type: "received", size: transfer.bytes }));
    renderTransfer(transfer);
    if (transfer.size <= HASH_LIMIT_BYTES) {
      transfer.sha256 = await sha256(transfer.blob);
      renderTransfer(transfer);
    }
  };
}

function newTransfer(link, direction, name, size) {
  const transfer = {
    id: app.nextTransferId++,
    peer_id: link.id,
    direction,
    name,
    size,
    bytes: 0,
    state: direction === "send" ? "sending" : "receiving",
    sha256: null,
    /** Whether a progress update between 0 and all bytes was shown. */
    sawProgress: false,
    /** Sending: the most bytes the channel ever held queued (flow control bounds it). */
    peakBuffered: 0,
  };
  app.transfers.push(transfer);
  const item = document.createElement("li");
  item.innerHTML = `<div class="transfer-head"><span class="transfer-name"></span><span class="transfer-state"></span></div><progress max="1" value="0"></progress>`;
  transfer.element = item;
  $("transfers").prepend(item);
  renderTransfer(transfer);
  return transfer;
}

function progress(transfer, bytes) {
  transfer.bytes = Math.max(0, Math.min(bytes, transfer.size));
  if (transfer.bytes > 0 && transfer.bytes < transfer.size) transfer.sawProgress = true;
  renderTransfer(transfer);
}

function renderTransfer(transfer) {
  const item = transfer.element;
  const peer = app.links.get(transfer.peer_id)?.label() ?? "a peer who left";
  const arrow = transfer.direction === "send" ? `to ${peer}` : `from ${peer}`;
  item.querySelector(".transfer-name").textContent = `${transfer.name} ${arrow}`;
  const percent = transfer.size ? Math.floor((100 * transfer.bytes) / transfer.size) : 100;
  const state = { sending: `${percent}%`, receiving: `${percent}%`, done: "done", failed: "failed", refused: "refused: too large" }[transfer.state];
  item.querySelector(".transfer-state").textContent = `${formatBytes(transfer.size)} · ${state}`;
  item.querySelector("progress").value = transfer.size ? transfer.bytes / transfer.size : 1;
  item.classList.toggle("failed", transfer.state === "failed" || transfer.state === "refused");
  if (transfer.blob && !item.querySelector("a")) {
    const link = document.createElement("a");
    link.href = URL.createObjectURL(transfer.blob);
    link.download = transfer.name;
    link.textContent = "Save";
    item.querySelector(".transfer-head").append(link);
  }
  item.title = transfer.sha256 ? `SHA-256 ${transfer.sha256}` : "";
}

/** The SHA-256 of `blob` in hex, or null where WebCrypto is missing (pages without HTTPS). */
async function sha256(blob) {
  if (!crypto.subtle) return null;
  const digest = await crypto.subtle.digest("SHA-256", await blob.arrayBuffer());
  return [...new Uint8Array(digest)].map((byte) => byte.toString(16).padStart(2, "0")).join("");
}

function formatBytes(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  if (bytes < 1024 * 1024 * 1024) return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
  return `${+(bytes / 1024 / 1024 / 1024).toFixed(1)} GiB`;
}

// ---- status panel ----

function renderStatus() {
  const client = app.client;
  if (client) {
    const how = { sse: "event stream (SSE)", poll: "long-polling" }[client.transport] ?? "connecting…";
    const state = app.signalingConnected ? "" : ", connecting…";
    $("status-transport").textContent = client.closed ? "not connected" : `${how}${state}`;
  }
  const body = $("status-peers").tBodies[0];
  body.replaceChildren(...[...app.links.values()].map((link) => {
    const row = document.createElement("tr");
    row.dataset.peerId = link.id;
    for (const text of [link.label(), describeState(link.pc.connectionState), link.chat?.readyState ?? "—"]) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.append(cell);
    }
    return row;
  }));
  $("status-peers").hidden = app.links.size === 0;
  $("status-alone").hidden = app.links.size > 0 || Boolean(client?.closed);
}

/** The encryption line of the status panel: on or off, and how many messages were refused. */
function renderEncryption() {
  const refused = app.client?.refused ?? 0;
  const state = app.encrypted
    ? "end-to-end: the server relays only ciphertext (room key in the link)"
    : "off: the server can read the connection set-up (open a link with #key= to encrypt)";
  $("status-encryption").textContent = refused > 0 ? `${state} · ${refused} refused` : state;
  $("status-encryption").classList.toggle("off", !app.encrypted);
  $("room-lock").textContent = app.encrypted ? "🔒 encrypted" : "not encrypted";
  $("room-lock").classList.toggle("off", !app.encrypted);
}

function showError(message) {
  const list = $("status-errors");
  const item = document.createElement("li");
  item.textContent = `${new Date().toLocaleTimeString()} ${message}`;
  list.prepend(item);
  while (list.children.length > MAX_ERRORS) list.lastChild.remove();
}

// A page restored from the back/forward cache has left the room (see signpost.js): rejoin.
window.addEventListener("pageshow", (event) => {
  if (event.persisted) location.reload();
});

main().catch((error) => showError(`Something went wrong: ${error.message}`));
