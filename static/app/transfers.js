// File transfer over data channels (docs/PROTOCOL.md): one "file" channel per file, a JSON
// header, binary chunks with flow control, and a receipt. No DOM: room-ui.js draws each
// transfer when this module reports it changed.

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
export const MAX_RECEIVED_FILE_BYTES = 1024 * 1024 * 1024;
/** Files up to this size get a SHA-256 shown on both sides (WebCrypto hashes in one piece). */
const HASH_LIMIT_BYTES = 64 * 1024 * 1024;

/**
 * Every file sent or received by this page, oldest first. Each transfer is a plain record:
 * {id, peer_id, direction, name, size, bytes, state, sha256, sawProgress, peakBuffered}, with
 * `mime` (what the sender says) once received and `blob` once complete. `state` is "sending",
 * "receiving", "done", "failed" or "refused" (too large).
 *
 * `events`: `changed(transfer)` whenever anything of a transfer changes (it is new, progressed,
 * finished), and `error(message)` for what a person should read.
 */
export class Transfers {
  constructor(events) {
    this.events = events;
    /** Every transfer, oldest first. */
    this.list = [];
    this.nextId = 1;
  }

  /** Sends `file` to every link whose connection is up; returns how many it goes to. */
  sendToAll(file, links) {
    const targets = links.filter((link) => link.pc.connectionState === "connected");
    if (targets.length === 0) this.events.error(`Cannot send ${file.name ?? "the file"}: no peer is connected.`);
    for (const link of targets) this.send(link, file);
    return targets.length;
  }

  /**
   * Sends `file` on a new "file" channel: a JSON header, binary chunks, then waits for the
   * receiver's receipt. Chunks are queued only while the channel's buffer is below the high
   * mark, so memory stays bounded and the transfer runs at the speed of the connection.
   */
  async send(link, file) {
    const transfer = this.add(link, "send", file.name ?? "file", file.size);
    if (file.size <= HASH_LIMIT_BYTES) sha256(file).then((hash) => { transfer.sha256 = hash; this.events.changed(transfer); });
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
          this.progress(transfer, offset - channel.bufferedAmount);
        }
      }
      await Promise.race([receipt, closed]);
      transfer.state = "done";
      this.progress(transfer, file.size);
      channel.close();
    } catch (error) {
      transfer.state = "failed";
      this.events.changed(transfer);
      this.events.error(`Sending ${transfer.name} to ${link.label()} failed: ${error.message}`);
    }
  }

  /** Receives one file on `channel` from `link`: header, chunks up to `size`, then a receipt. */
  receive(link, channel) {
    channel.binaryType = "arraybuffer";
    let transfer = null;
    const chunks = [];
    const finish = async () => {
      // Saved as bytes whatever type the sender claims: a "text/html" file opened from its Save
      // link would otherwise run as a page of this origin, with this page's room and tokens.
      transfer.blob = new Blob(chunks, { type: "application/octet-stream" });
      chunks.length = 0;
      transfer.state = "done";
      channel.send(JSON.stringify({ type: "received", size: transfer.bytes }));
      this.events.changed(transfer);
      if (transfer.size <= HASH_LIMIT_BYTES) {
        transfer.sha256 = await sha256(transfer.blob);
        this.events.changed(transfer);
      }
    };
    channel.onmessage = async ({ data }) => {
      if (!transfer) {
        let header;
        try {
          header = JSON.parse(data);
        } catch {
          return channel.close();
        }
        if (header.type !== "file" || !Number.isSafeInteger(header.size) || header.size < 0) return channel.close();
        transfer = this.add(link, "receive", String(header.name ?? "file"), header.size);
        // What the sender says the file is: shown, never used to open it (see finish).
        transfer.mime = String(header.mime ?? "");
        if (header.size > MAX_RECEIVED_FILE_BYTES) {
          transfer.state = "refused";
          this.events.changed(transfer);
          this.events.error(`${transfer.name} from ${link.label()} is ${formatBytes(header.size)}; this page receives files up to ${formatBytes(MAX_RECEIVED_FILE_BYTES)}.`);
          return channel.close();
        }
        if (header.size === 0) finish();
        return;
      }
      if (typeof data === "string" || transfer.state !== "receiving") return;
      // A sender that sends more than it announced is cut off rather than buffered.
      if (transfer.bytes + data.byteLength > transfer.size) return channel.close();
      chunks.push(data);
      this.progress(transfer, transfer.bytes + data.byteLength);
      if (transfer.bytes >= transfer.size) finish();
    };
    channel.onclose = () => {
      if (transfer && transfer.state === "receiving") {
        transfer.state = "failed";
        this.events.changed(transfer);
        this.events.error(`${transfer.name} from ${link.label()} did not arrive completely.`);
      }
    };
  }

  /** The peer `peerId` is gone: its unfinished transfers failed. */
  failWith(peerId) {
    for (const transfer of this.list) {
      if (transfer.peer_id === peerId && !["done", "failed"].includes(transfer.state)) {
        transfer.state = "failed";
        this.events.changed(transfer);
      }
    }
  }

  /** The peer `previous` proved to be `id` now (it rejoined): its transfers are `id`'s. */
  rename(previous, id) {
    for (const transfer of this.list) if (transfer.peer_id === previous) transfer.peer_id = id;
  }

  add(link, direction, name, size) {
    const transfer = {
      id: this.nextId++,
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
    this.list.push(transfer);
    this.events.changed(transfer);
    return transfer;
  }

  progress(transfer, bytes) {
    transfer.bytes = Math.max(0, Math.min(bytes, transfer.size));
    if (transfer.bytes > 0 && transfer.bytes < transfer.size) transfer.sawProgress = true;
    this.events.changed(transfer);
  }
}

/** The SHA-256 of `blob` in hex, or null where WebCrypto is missing (pages without HTTPS). */
async function sha256(blob) {
  if (!crypto.subtle) return null;
  const digest = await crypto.subtle.digest("SHA-256", await blob.arrayBuffer());
  return [...new Uint8Array(digest)].map((byte) => byte.toString(16).padStart(2, "0")).join("");
}

/** `bytes` for a person: "512 B", "1.5 KiB", "3.0 MiB", "1 GiB". */
export function formatBytes(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  if (bytes < 1024 * 1024 * 1024) return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
  return `${+(bytes / 1024 / 1024 / 1024).toFixed(1)} GiB`;
}
