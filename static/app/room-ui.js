// The room page's DOM (static/index.html): the tiles, the chat log, the status panel with its
// roster of peers, the transfers list, the local media controls. Everything here is drawing and
// forms: what happens in the call is room.js's, which tells this view what changed.

import { mediaProblem, toggleTracks } from "./media.js";
import { MAX_RECEIVED_FILE_BYTES, formatBytes } from "./transfers.js";

/** Shown error lines. */
const MAX_ERRORS = 6;

const $ = (id) => document.getElementById(id);

/** The view of one Room (room.js): `attach` it to the room, then `showJoined` once joined. */
export class RoomUi {
  constructor() {
    /** The room shown; null until attached. */
    this.room = null;
    /** Link → its tile's elements {figure, video, caption, safety, badge, unmute}. */
    this.tiles = new Map();
    /** Transfer → its list item. */
    this.transferItems = new Map();
    /** "reason sender" pairs already told about (see showRefused). */
    this.toldRefusals = new Set();
  }

  /** Shows the room instead of the lobby, with the link that shares it. */
  showRoom(room, shareHref) {
    $("lobby").hidden = true;
    $("room").hidden = false;
    $("room-bar").hidden = false;
    $("room-name").textContent = room;
    $("share-link").value = shareHref;
    $("copy-link").onclick = async () => {
      await navigator.clipboard?.writeText(shareHref).catch(() => {});
      $("share-link").select();
    };
  }

  /** Back to the lobby (a refused join). */
  hideRoom() {
    $("lobby").hidden = false;
    $("room").hidden = true;
  }

  /** Shows `room` (room.js) from now on. */
  attach(room) {
    this.room = room;
  }

  /** Installs the room's controls once it is joined. */
  showJoined() {
    const room = this.room;
    const client = room.client;
    this.showSelf();
    $("local-label").textContent = client.name ? `${client.name} (you)` : "You";
    this.renderEncryption();
    $("leave").onclick = () => room.leave();
    $("chat-form").onsubmit = (event) => {
      event.preventDefault();
      const text = $("chat-input").value.trim();
      if (!text) return;
      if (room.sendChat(text) === 0) this.showError("Nobody can receive chat yet: no peer is connected.");
      $("chat-input").value = "";
    };
    $("file-limit").textContent = formatBytes(MAX_RECEIVED_FILE_BYTES);
    $("file-input").onchange = () => {
      for (const file of $("file-input").files) room.sendFile(file);
      $("file-input").value = "";
    };
    this.renderStatus();
  }

  showSelf() {
    const client = this.room.client;
    $("status-self").textContent = `${client.name ?? "(no name)"} · ${client.peerId.slice(0, 8)}`;
  }

  /** The left room, or the refused rejoin: the page offers to load again. */
  showClosed(reason) {
    if (reason === "left") this.showError("You left the room.");
    if (reason === "refused") this.showError("You are no longer in the room, and could not rejoin it. Reload to try again.");
    $("leave").textContent = "Rejoin";
    $("leave").onclick = () => location.reload();
    this.renderStatus();
  }

  // ---- local media ----

  askingForMedia(wanted) {
    if (wanted === "none") return;
    $("status-media").textContent = "asking for permission…";
    $("media-note").textContent = "Allow the camera/microphone to be seen and heard (or block them to join with chat and files only).";
  }

  /** What acquireLocalMedia (media.js) found: the preview, the buttons, and what it means. */
  showLocalMedia({ stream, mode, failure, wanted }) {
    $("local-video").srcObject = stream;
    $("toggle-mic").disabled = !stream?.getAudioTracks().length;
    $("toggle-camera").disabled = !stream?.getVideoTracks().length;
    const toggle = (kind, button, [onLabel, offLabel]) => {
      const enabled = toggleTracks(stream, kind);
      $(button).textContent = enabled ? onLabel : offLabel;
      $(button).classList.toggle("off", !enabled);
    };
    $("toggle-mic").onclick = () => toggle("audio", "toggle-mic", ["Mute", "Unmute"]);
    $("toggle-camera").onclick = () => toggle("video", "toggle-camera", ["Camera off", "Camera on"]);

    let note = { video: "camera and microphone", audio: "microphone only", none: "none: chat and files only" }[mode];
    if (wanted === "none") note = "none (chosen): chat and files only";
    else if (failure && mode !== wanted) note += ` (${mediaProblem(failure)})`;
    $("status-media").textContent = note;
    const problem = mediaProblem(failure);
    $("media-note").textContent = failure && mode !== wanted
      ? `${problem[0].toUpperCase()}${problem.slice(1)}: others will not ${mode === "audio" ? "see" : "see or hear"} you, but chat and files work.`
      : "";
    if (mode !== "video") $("tiles").querySelector(".local").classList.add("no-video");
  }

  // ---- tiles: one per other peer ----

  addTile(link) {
    const figure = document.createElement("figure");
    figure.className = "tile";
    const video = document.createElement("video");
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
    this.tiles.set(link, { figure, video, caption: name, safety, badge, unmute: null });
    this.retagTile(link);
  }

  /** Marks the tile with the link's peer id (it changes when the peer proves it rejoined). */
  retagTile(link) {
    const tile = this.tiles.get(link);
    if (!tile) return;
    tile.figure.dataset.peerId = link.id;
    tile.video.dataset.peerId = link.id;
    this.renderTile(link);
  }

  removeTile(link) {
    this.tiles.get(link)?.figure.remove();
    this.tiles.delete(link);
  }

  renderTile(link) {
    const tile = this.tiles.get(link);
    if (!tile) return;
    if (link.remoteStream.getTracks().length > 0 && tile.video.srcObject !== link.remoteStream) this.playRemote(link, tile);
    tile.caption.textContent = link.label();
    tile.safety.textContent = link.safety ? `code ${link.safety}` : "";
    const state = link.pc.connectionState;
    if (link.orphaned) tile.badge.textContent = "reconnecting to the server…";
    else tile.badge.textContent = state === "connected" ? "" : describeState(state);
    const hasVideo = link.remoteStream.getVideoTracks().some((track) => !track.muted);
    tile.figure.classList.toggle("no-video", !hasVideo);
  }

  playRemote(link, tile) {
    tile.video.srcObject = link.remoteStream;
    tile.video.play().catch(() => {
      // Autoplay with sound needs a click on pages without camera/mic permission.
      tile.video.muted = true;
      tile.video.play().catch(() => {});
      if (!tile.unmute) {
        tile.unmute = document.createElement("button");
        tile.unmute.textContent = "Click to hear";
        tile.unmute.className = "unmute";
        tile.unmute.onclick = () => {
          tile.video.muted = false;
          tile.unmute.remove();
        };
        tile.figure.append(tile.unmute);
      }
    });
  }

  // ---- chat ----

  addChat({ from, text }) {
    const room = this.room;
    const item = document.createElement("li");
    const mine = from === room?.client?.peerId;
    item.className = mine ? "mine" : "";
    const who = document.createElement("strong");
    who.textContent = mine ? "You" : (room?.links.get(from)?.label() ?? "someone who left");
    item.append(who, document.createTextNode(` ${text}`));
    $("chat-log").append(item);
    $("chat-log").scrollTop = $("chat-log").scrollHeight;
  }

  // ---- files ----

  renderTransfer(transfer) {
    let item = this.transferItems.get(transfer);
    if (!item) {
      item = document.createElement("li");
      item.innerHTML = `<div class="transfer-head"><span class="transfer-name"></span><span class="transfer-state"></span></div><progress max="1" value="0"></progress>`;
      this.transferItems.set(transfer, item);
      $("transfers").prepend(item);
    }
    const peer = this.room?.links.get(transfer.peer_id)?.label() ?? "a peer who left";
    const arrow = transfer.direction === "send" ? `to ${peer}` : `from ${peer}`;
    item.querySelector(".transfer-name").textContent = `${transfer.name} ${arrow}`;
    const percent = transfer.size ? Math.floor((100 * transfer.bytes) / transfer.size) : 100;
    const state = { sending: `${percent}%`, receiving: `${percent}%`, done: "done", failed: "failed", refused: "refused: too large" }[transfer.state];
    item.querySelector(".transfer-state").textContent = `${formatBytes(transfer.size)} · ${state}`;
    item.querySelector("progress").value = transfer.size ? transfer.bytes / transfer.size : 1;
    item.classList.toggle("failed", transfer.state === "failed" || transfer.state === "refused");
    if (transfer.blob && !item.querySelector("a")) {
      const save = document.createElement("a");
      save.href = URL.createObjectURL(transfer.blob);
      save.download = transfer.name;
      save.textContent = "Save";
      item.querySelector(".transfer-head").append(save);
    }
    item.title = transfer.sha256 ? `SHA-256 ${transfer.sha256}` : "";
  }

  // ---- status panel ----

  /** The signaling line and the roster: every other peer, its connection and its chat channel. */
  renderStatus() {
    const room = this.room;
    const client = room?.client;
    if (client) {
      const how = { sse: "event stream (SSE)", poll: "long-polling" }[client.transport] ?? "connecting…";
      const state = room.signalingConnected ? "" : ", connecting…";
      $("status-transport").textContent = client.closed ? "not connected" : `${how}${state}`;
    }
    const links = room ? [...room.links.values()] : [];
    const body = $("status-peers").tBodies[0];
    body.replaceChildren(...links.map((link) => {
      const row = document.createElement("tr");
      row.dataset.peerId = link.id;
      for (const text of [link.label(), describeState(link.pc.connectionState), link.chat?.readyState ?? "—"]) {
        const cell = document.createElement("td");
        cell.textContent = text;
        row.append(cell);
      }
      return row;
    }));
    $("status-peers").hidden = links.length === 0;
    $("status-alone").hidden = links.length > 0 || Boolean(client?.closed);
  }

  /** The encryption line of the status panel: on or off, and how many messages were refused. */
  renderEncryption() {
    const encrypted = this.room?.encrypted ?? false;
    const refused = this.room?.client?.refused ?? 0;
    const state = encrypted
      ? "end-to-end: the server relays only ciphertext (room key in the link)"
      : "off: the server can read the connection set-up (open a link with #key= to encrypt)";
    $("status-encryption").textContent = refused > 0 ? `${state} · ${refused} refused` : state;
    $("status-encryption").classList.toggle("off", !encrypted);
    $("room-lock").textContent = encrypted ? "🔒 encrypted" : "not encrypted";
    $("room-lock").classList.toggle("off", !encrypted);
  }

  /** A message refused because of encryption: counted, and said why once per reason and sender. */
  showRefused({ reason, from }) {
    this.renderEncryption();
    if (this.toldRefusals.has(`${reason} ${from}`)) return;
    this.toldRefusals.add(`${reason} ${from}`);
    const who = from ? `peer ${from.slice(0, 8)}` : "the server";
    this.showError({
      unauthenticated: `A message from ${who} does not open with this room's key (altered on the way, or sent with another key); refused.`,
      replayed: `A message from ${who} was replayed or reordered on the way; refused.`,
      downgrade: `${who[0].toUpperCase()}${who.slice(1)} sent an unencrypted message into this encrypted room; refused.`,
      encrypted: "This room is encrypted: open the link with its key. An encrypted message was refused.",
    }[reason] ?? `A message from ${who} was refused (${reason}).`);
  }

  showError(message) {
    showError(message);
  }
}

/** Adds a line to the status panel's errors, newest first, keeping the last MAX_ERRORS. */
export function showError(message) {
  const list = $("status-errors");
  const item = document.createElement("li");
  item.textContent = `${new Date().toLocaleTimeString()} ${message}`;
  list.prepend(item);
  while (list.children.length > MAX_ERRORS) list.lastChild.remove();
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
