// The room page's entry point: a full mesh of RTCPeerConnections set up through signpost, with
// audio/video, chat and file transfer over data channels. It reads the page's URL, shows the
// lobby or joins the room, and exposes `window.signpostApp`, the hooks scripts and tests drive
// the page with. The peer-to-peer conventions are in docs/PROTOCOL.md; all HTTP is in
// signpost.js. The page's modules, under app/:
// - room.js: the call: one Link per other peer, and what signaling events do to them;
// - link.js: the connection to one peer (RTCPeerConnection, perfect negotiation, chat channel);
// - identity.js: this page's participant key and the `resume` proofs made with it;
// - safety-code.js: the code two people compare to rule out someone in the middle;
// - transfers.js: file transfer over data channels;
// - media.js: the camera and microphone;
// - room-ui.js: the room's DOM: tiles, chat log, status panel and roster, transfers;
// - lobby.js: the form that opens a room, and why a join was refused.

import { Room } from "./app/room.js";
import { RoomUi, showError } from "./app/room-ui.js";
import { showLobby, showRefusedJoin } from "./app/lobby.js";
import { MAX_RECEIVED_FILE_BYTES } from "./app/transfers.js";

const ui = new RoomUi();
const room = new Room(ui);
ui.attach(room);

// ---- automation hook: tests and scripts drive the page through this ----

window.signpostApp = {
  /** [{peer_id, name, connectionState, dataChannelState}] for every other peer. */
  peers: () => [...room.links.values()].map((link) => ({
    peer_id: link.id,
    name: link.name,
    connectionState: link.pc?.connectionState ?? "new",
    dataChannelState: link.chat?.readyState ?? null,
  })),
  /** Sends `text` to every peer whose chat channel is open; returns how many it reached. */
  sendChat: (text) => room.sendChat(String(text)),
  /** [{from, text}], oldest first; `from` is a peer_id (this page's own for what it sent). */
  chatLog: () => room.chat.map(({ from, text }) => ({ from, text })),
  /** "sse" or "poll" (null before joining). */
  transport: () => room.client?.transport ?? null,
  // Beyond the basics, for scripting files and media:
  /** This page's peer_id (null before joining). */
  peerId: () => room.client?.peerId ?? null,
  /** "video", "audio" or "none"; null while the page is still asking for camera/microphone. */
  mediaMode: () => room.mediaMode,
  /**
   * [{id, peer_id, direction, name, size, bytes, state, sha256, sawProgress, peakBuffered,
   * savedType}]: `state` is "sending", "receiving", "done", "failed" or "refused" (too large);
   * `savedType` is the MIME type a received file is saved under.
   */
  transfers: () => room.transfers.list.map(({ blob, ...transfer }) => ({ ...transfer, savedType: blob?.type ?? null })),
  /** The largest file this page receives, in bytes. */
  maxReceivedFileBytes: () => MAX_RECEIVED_FILE_BYTES,
  /** Sends `file` (a File or Blob) to every connected peer. */
  sendFile: (file) => room.sendFile(file),
  /** Inbound RTP statistics from `peerId`: {audio, video}, each null or the stats object. */
  inboundStats: (peerId) => room.links.get(peerId)?.inboundStats() ?? Promise.resolve(null),
  /** How many times this page rejoined after the server forgot it. */
  rejoins: () => room.rejoins,
  /** How many `resume` messages this page refused (a bad signature, or nobody it knows). */
  refusedResumes: () => room.refusedResumes,
  /**
   * End-to-end encryption of signaling: `on` when the page has a room key, `rejected` the
   * messages refused because of it (not opening with the key, replayed, clear to a keyed page,
   * or sealed to a page without the key).
   */
  encryption: () => ({ on: room.encrypted, rejected: room.client?.refused ?? 0 }),
  /**
   * The safety code of the connection to `peerId` ("123 456"), from both DTLS fingerprints: the
   * same on both ends unless someone sits in the middle. Null until connected.
   */
  safetyCode: (peerId) => room.links.get(peerId)?.safety ?? null,
  /**
   * When (ms since the page's time origin) the page started to join, and when each peer's chat
   * channel first opened: set-up times, for benchmarks.
   */
  timings: () => ({ joinStarted: room.joinStartedAt, chatOpened: Object.fromEntries(room.chatOpenedAt) }),
};

// ---- joining ----

async function main() {
  const params = new URLSearchParams(location.search);
  const name = params.get("room");
  if (!name) return showLobby();
  const peerName = params.get("name") || "";
  const wanted = ["none", "audio", "video"].includes(params.get("media")) ? params.get("media") : "video";
  const transport = ["sse", "poll", "auto"].includes(params.get("transport")) ? params.get("transport") : "auto";
  // A join token from the application comes in the fragment (#token=…), and so does the room
  // key (#key=…): browsers never send the fragment to a server, so both stay out of every
  // access log, and the key out of the server's reach. With a token, the token names the peer.
  const fragment = new URLSearchParams(location.hash.slice(1));
  const joinToken = fragment.get("token") || undefined;
  const key = fragment.get("key") || undefined;

  const share = new URL(location.pathname, location.origin);
  share.searchParams.set("room", name);
  if (key) share.hash = new URLSearchParams({ key }).toString();
  ui.showRoom(name, share.href);
  try {
    await room.join(name, { name: joinToken ? undefined : peerName, joinToken, key, transport }, wanted);
  } catch (error) {
    ui.hideRoom();
    showRefusedJoin({ room: name, name: peerName, media: wanted }, error);
    return;
  }
  ui.showJoined();
}

// A page restored from the back/forward cache has left the room (see signpost.js): rejoin.
window.addEventListener("pageshow", (event) => {
  if (event.persisted) location.reload();
});

main().catch((error) => showError(`Something went wrong: ${error.message}`));
