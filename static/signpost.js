// signpost.js: a signaling client for the signpost HTTP API (docs/API.md). No DOM code, no
// dependencies: import it from any page.
//
//   import { Signpost } from "/signpost.js";
//   const client = await Signpost.join("demo", { name: "Alice", types: ["offer", "answer"] });
//   // or, in a room that needs a join token from the application's backend:
//   const client = await Signpost.join("demo", { joinToken, types: ["offer", "answer"] });
//   client.on("offer", (envelope) => ...);   // {id, from, type, data}
//   client.on("join", (envelope) => ...);    // envelope.data = {peer_id, name}
//   client.send("offer", data, toPeerId);    // batched: one POST for what is sent together
//   await client.leave();
//
// Receiving uses Server-Sent Events or long-polling (`transport: "auto" | "sse" | "poll"`). In
// "auto" it starts on SSE and moves to long-polling for good when no `ready` event arrives within
// `readyTimeoutMs` or the stream keeps failing: the signature of a proxy that buffers responses.
// Either way it remembers the last message id it delivered and resumes after it, so a
// reconnection loses nothing and repeats nothing.

/** Message types the server itself emits. */
const SERVER_TYPES = ["join", "leave"];

/** The most messages the server accepts in one POST (docs/API.md, Send). */
const MAX_BATCH = 64;

const DEFAULTS = {
  transport: "auto",
  /** SSE: how long to wait for `ready` before calling an attempt failed. */
  readyTimeoutMs: 5000,
  /** SSE in "auto": failed attempts in a row (no `ready`) before moving to long-polling. */
  sseFailuresBeforePoll: 3,
  /** How long send() waits to gather messages sent together (trickle ICE) into one POST. */
  batchDelayMs: 10,
  /** Reconnect backoff: first delay, cap, and the shortest poll wait worth trying. */
  backoffMinMs: 250,
  backoffMaxMs: 10000,
  minPollWaitSecs: 2,
  /** Base URL of the server; the page's own origin by default. */
  baseUrl: "",
};

/**
 * A peer in a room. Events (subscribe with `on(type, fn)`):
 * - any message type, `join`, `leave`: `fn(envelope)` with `{id, from, type, data}`;
 * - `reset`: `fn({reason, last_id})`: messages were lost; treat peer connections as unknown;
 * - `transport`: `fn("sse" | "poll")` when the transport is chosen or changes;
 * - `status`: `fn({connected, detail})` as the receiving side connects and disconnects;
 * - `error`: `fn({code, message})` for failures a person may want to see;
 * - `closed`: `fn({reason})` when the client stops for good (left, or removed by the server).
 */
export class Signpost {
  /**
   * Joins `room` and starts receiving. Options: `name`, `meta`, `joinToken` (a join token
   * signed by the application, sent as `Authorization: Bearer` on the join only; its name and
   * meta are the peer's), `types` (message types to receive besides join/leave: over SSE only
   * subscribed types reach the page), and the keys of DEFAULTS. Throws an Error with `code`
   * (the API's error code, e.g. `join_token_expired`) when the join is refused.
   */
  static async join(room, options = {}) {
    const settings = { ...DEFAULTS, ...options };
    const body = {};
    if (settings.name) body.name = settings.name;
    if (settings.meta) body.meta = settings.meta;
    const headers = { "Content-Type": "application/json" };
    if (settings.joinToken) headers.Authorization = `Bearer ${settings.joinToken}`;
    let response;
    try {
      response = await fetch(`${settings.baseUrl}/api/rooms/${encodeURIComponent(room)}/peers`, {
        method: "POST",
        headers,
        body: JSON.stringify(body),
      });
    } catch (networkError) {
      throw apiError(0, { error: "network", message: "the server cannot be reached" });
    }
    const joined = await response.json().catch(() => ({}));
    if (response.status !== 201) throw apiError(response.status, joined);
    const client = new Signpost(joined, settings);
    return client;
  }

  constructor(joined, settings) {
    /** The join response: peer_id, token, peers, ice_servers, *_url, timings. */
    this.joined = joined;
    this.room = joined.room;
    this.peerId = joined.peer_id;
    this.name = joined.name ?? null;
    /** Peers already in the room when this one joined, in join order. */
    this.peers = joined.peers ?? [];
    /** RTCIceServer objects from the server's configuration. */
    this.iceServers = joined.ice_servers ?? [];
    this.settings = settings;
    this.handlers = new Map();
    this.types = new Set([...SERVER_TYPES, ...(settings.types ?? [])]);
    /** The id of the last message delivered; receiving resumes after it. */
    this.lastId = 0;
    this.current = null; // "sse" | "poll"
    this.closed = false;
    this.outbox = [];
    this.flushTimer = null;
    this.sending = null;
    this.source = null;
    this.pollAbort = null;
    /** The poll wait that gets through; shortened when a proxy cuts longer requests. */
    this.pollWaitSecs = joined.poll_max_wait_secs ?? 25;
    this.onSseMessage = (event) => {
      if (event.target === this.source) this.deliver(JSON.parse(event.data));
    };
    this.onPageHide = () => this.leaveOnUnload();
    globalThis.addEventListener?.("pagehide", this.onPageHide);
    // Start on a later task, so that the caller, resuming from `await Signpost.join()`,
    // subscribes before anything is emitted.
    setTimeout(() => (settings.transport === "poll" ? this.startPoll() : this.startSse()), 0);
  }

  /** Subscribes `fn` to `type`; returns a function that unsubscribes. */
  on(type, fn) {
    if (!this.handlers.has(type)) this.handlers.set(type, new Set());
    this.handlers.get(type).add(fn);
    if (!this.types.has(type) && !LOCAL_EVENTS.has(type)) {
      this.types.add(type);
      this.source?.addEventListener(type, this.onSseMessage);
    }
    return () => this.handlers.get(type)?.delete(fn);
  }

  emit(type, value) {
    for (const fn of this.handlers.get(type) ?? []) {
      try {
        fn(value);
      } catch (error) {
        console.error(`signpost: a "${type}" handler failed`, error);
      }
    }
  }

  /** "sse" or "poll": how messages are being received. */
  get transport() {
    return this.current;
  }

  setTransport(transport) {
    if (this.current === transport) return;
    this.current = transport;
    this.emit("transport", transport);
  }

  // ---- sending ----

  /**
   * Queues a message to `to` (a peer id; omitted or null: every other peer). Messages queued
   * within `batchDelayMs` of each other, or while an earlier POST is in flight, go in one POST,
   * in order. Resolves when the server has accepted the message; rejects if it refused it.
   */
  send(type, data = null, to = null) {
    if (this.closed) return Promise.reject(new Error("signpost: the client has left"));
    return new Promise((resolve, reject) => {
      const message = { type, data };
      if (to) message.to = to;
      this.outbox.push({ message, resolve, reject });
      if (!this.sending && !this.flushTimer) {
        this.flushTimer = setTimeout(() => this.flush(), this.settings.batchDelayMs);
      }
    });
  }

  /**
   * Sends what is queued, one POST at a time so that the server accepts messages in the order
   * they were sent. Resolves when the queue is empty.
   */
  flush() {
    clearTimeout(this.flushTimer);
    this.flushTimer = null;
    if (!this.sending) {
      this.sending = (async () => {
        while (this.outbox.length > 0 && !this.closed) {
          await this.post(this.outbox.splice(0, MAX_BATCH));
        }
      })().finally(() => {
        this.sending = null;
        // Queued between the loop's last check and now: send it too.
        if (this.outbox.length > 0 && !this.closed) this.flush();
      });
    }
    return this.sending;
  }

  /** POSTs one batch, retrying what may succeed later (rate limit, proxy or network trouble). */
  async post(batch) {
    const body = JSON.stringify(batch.map((entry) => entry.message));
    let failures = 0;
    while (!this.closed) {
      let response;
      try {
        response = await fetch(this.url(this.joined.send_url), {
          method: "POST",
          headers: this.authHeaders({ "Content-Type": "application/json" }),
          body,
        });
      } catch (networkError) {
        failures += 1;
        this.reportError("network", "Cannot reach the server to send; retrying.");
        await delay(this.backoff(failures));
        continue;
      }
      if (response.status === 202) {
        for (const entry of batch) entry.resolve();
        return;
      }
      const body_ = await response.json().catch(() => ({}));
      if (response.status === 429) {
        const seconds = Number(response.headers.get("Retry-After") ?? body_.retry_after ?? 1);
        await delay(Math.max(0.05, seconds) * 1000);
        continue;
      }
      if (response.status >= 500 || (response.status >= 400 && !body_.error)) {
        // A proxy's error page (502, 503, 504) or a server hiccup: the batch was not accepted.
        failures += 1;
        await delay(this.backoff(failures));
        continue;
      }
      const error = apiError(response.status, body_);
      if (error.code === "peer_not_found" || error.code === "invalid_token") {
        this.close("removed");
      } else if (error.code !== "unknown_recipient") {
        // unknown_recipient: the peer left meanwhile, which the `leave` event reports.
        this.reportError(error.code, error.message);
      }
      for (const entry of batch) entry.reject(error);
      return;
    }
    for (const entry of batch) entry.reject(new Error("signpost: the client has left"));
  }

  // ---- receiving ----

  /** Delivers one envelope, once, in id order. */
  deliver(envelope) {
    if (typeof envelope.id === "number") {
      if (envelope.id <= this.lastId) return; // already delivered before a reconnection
      this.lastId = envelope.id;
    }
    this.emit(envelope.type, envelope);
  }

  onReset(reset) {
    // The messages after lastId are gone (or lastId is unknown to the server): continue with
    // what the server still holds, whatever its ids.
    this.lastId = 0;
    this.emit("reset", reset);
  }

  /** Opens an SSE stream that resumes after lastId. */
  startSse(failures = 0) {
    if (this.closed) return;
    this.setTransport("sse");
    const params = new URLSearchParams({ token: this.joined.token });
    if (this.lastId > 0) params.set("last_event_id", String(this.lastId));
    const source = new EventSource(this.url(`${this.joined.events_url}?${params}`));
    this.source = source;
    let ready = false;
    const fail = (reason) => {
      if (this.source !== source) return;
      source.close();
      this.source = null;
      clearTimeout(readyTimer);
      const failed = ready ? 1 : failures + 1;
      this.emit("status", { connected: false, detail: reason });
      if (!ready && this.settings.transport === "auto" && failed >= this.settings.sseFailuresBeforePoll) {
        this.reportError("sse_blocked", "Streaming does not get through this network; switched to long-polling.");
        this.startPoll();
        return;
      }
      this.reconnect(failed, () => this.startSse(failed));
    };
    const readyTimer = setTimeout(() => {
      if (this.settings.transport === "auto") {
        // Nothing arrived: a proxy is holding the stream back. Long-polling gets through.
        source.close();
        this.source = null;
        this.reportError("sse_blocked", "No answer on the event stream within 5 s; switched to long-polling.");
        this.startPoll();
      } else {
        fail("no ready event");
      }
    }, this.settings.readyTimeoutMs);
    source.addEventListener("ready", () => {
      ready = true;
      clearTimeout(readyTimer);
      this.emit("status", { connected: true, detail: "stream open" });
    });
    source.addEventListener("reset", (event) => this.onReset(JSON.parse(event.data)));
    for (const type of this.types) source.addEventListener(type, this.onSseMessage);
    // The browser would reconnect by itself, but with a fixed delay and no way to notice that
    // the peer is gone (a 404 closes it for good). Reconnecting here adds backoff and a check.
    source.onerror = (event) => {
      // A message whose type is "error" is dispatched here too; only a plain Event is a failure.
      if (!(event instanceof MessageEvent)) fail("stream interrupted");
    };
  }

  /** Long-polls after lastId until closed, adapting the wait to what the network lets through. */
  async startPoll() {
    if (this.closed) return;
    this.setTransport("poll");
    let failures = 0;
    let connected = false;
    while (!this.closed && this.current === "poll") {
      const wait = this.pollWaitSecs;
      const started = Date.now();
      const abort = new AbortController();
      this.pollAbort = abort;
      // A request the network holds far longer than asked is as good as cut.
      const watchdog = setTimeout(() => abort.abort(), (wait + 15) * 1000);
      let response = null;
      try {
        response = await fetch(
          this.url(`${this.joined.poll_url}?after=${this.lastId}&wait=${wait}`),
          { headers: this.authHeaders(), signal: abort.signal, cache: "no-store" },
        );
      } catch (networkError) {
        response = null;
      } finally {
        clearTimeout(watchdog);
      }
      if (this.closed) return;
      const elapsedSecs = (Date.now() - started) / 1000;
      if (response?.status === 200) {
        let body;
        try {
          body = await response.json();
        } catch (cut) {
          // The body was cut off mid-way: treat it like a cut request.
          body = null;
        }
        if (body) {
          failures = 0;
          if (!connected) {
            connected = true;
            this.emit("status", { connected: true, detail: "polling" });
          }
          if (body.reset) this.onReset({ reason: body.reset_reason, last_id: body.last_id });
          for (const envelope of body.messages) this.deliver(envelope);
          if (body.reset || body.messages.length === 0) this.lastId = Math.max(this.lastId, body.last_id);
          continue;
        }
      }
      if (response && response.status !== 200 && response.status < 500) {
        const error = apiError(response.status, await response.json().catch(() => ({})));
        if (["peer_not_found", "room_not_found", "invalid_token"].includes(error.code)) {
          this.close("removed");
          return;
        }
        this.reportError(error.code, error.message);
      }
      connected = false;
      this.emit("status", { connected: false, detail: "poll interrupted" });
      failures += 1;
      // A proxy's 502/504, or a cut, after the request had waited a while: the network does not
      // let requests wait this long. Retry at once with a shorter wait, and keep it.
      const cut = response === null || response.status === 502 || response.status === 504;
      if (cut && elapsedSecs >= 1 && wait > this.settings.minPollWaitSecs) {
        const shorter = Math.floor(Math.min(wait, elapsedSecs) / 2);
        this.pollWaitSecs = Math.max(this.settings.minPollWaitSecs, shorter);
        this.reportError("poll_cut", `The network cut a ${wait} s poll; now waiting at most ${this.pollWaitSecs} s.`);
        continue;
      }
      await this.reconnectDelay(failures);
    }
  }

  /** Waits before reconnecting, and stops if the server says this peer is gone. */
  async reconnect(failures, again) {
    await this.reconnectDelay(failures);
    if (!this.closed) again();
  }

  async reconnectDelay(failures) {
    if (failures >= 2) {
      // Several failures: ask whether this peer still exists (it may have timed out).
      try {
        const response = await fetch(this.url(this.joined.leave_url), { cache: "no-store" });
        if (response.status === 404) {
          this.close("removed");
          return;
        }
      } catch (networkError) {
        // The server is unreachable: keep trying with backoff.
      }
      this.reportError("reconnecting", "Lost the connection to the server; reconnecting.");
    }
    await delay(this.backoff(failures));
  }

  backoff(failures) {
    const { backoffMinMs, backoffMaxMs } = this.settings;
    const base = Math.min(backoffMaxMs, backoffMinMs * 2 ** Math.max(0, failures - 1));
    return base / 2 + Math.random() * (base / 2);
  }

  /** The peers in the room now (`GET /api/rooms/{room}`), this one included, or null. */
  async roomPeers() {
    try {
      const response = await fetch(this.url(`/api/rooms/${encodeURIComponent(this.room)}`), { cache: "no-store" });
      return response.ok ? (await response.json()).peers : null;
    } catch (networkError) {
      return null;
    }
  }

  // ---- leaving ----

  /** Leaves the room: stops receiving, sends what is queued, then deletes the peer. */
  async leave() {
    if (this.closed) return;
    await this.flush().catch(() => {});
    this.close("left");
    await fetch(this.url(this.joined.leave_url), {
      method: "DELETE",
      headers: this.authHeaders(),
      keepalive: true,
    }).catch(() => {});
  }

  /** On page close: a beacon, because a fetch may be cancelled as the page goes away. */
  leaveOnUnload() {
    if (this.closed) return;
    const url = this.url(`${this.joined.leave_url}/leave?token=${encodeURIComponent(this.joined.token)}`);
    navigator.sendBeacon?.(url);
    this.close("left");
  }

  close(reason) {
    if (this.closed) return;
    this.closed = true;
    this.source?.close();
    this.source = null;
    this.pollAbort?.abort();
    clearTimeout(this.flushTimer);
    globalThis.removeEventListener?.("pagehide", this.onPageHide);
    if (reason === "removed") this.reportError("removed", "The server no longer knows this peer (it timed out or was removed). Rejoin to continue.");
    this.emit("closed", { reason });
  }

  // ---- helpers ----

  url(path) {
    return `${this.settings.baseUrl}${path}`;
  }

  authHeaders(extra = {}) {
    return { Authorization: `Bearer ${this.joined.token}`, ...extra };
  }

  reportError(code, message) {
    this.emit("error", { code, message });
  }
}

/** Events the client emits itself, which never come from the server. */
const LOCAL_EVENTS = new Set(["reset", "transport", "status", "error", "closed"]);

function apiError(status, body) {
  const error = new Error(body?.message ?? `HTTP ${status}`);
  error.code = body?.error ?? `http_${status}`;
  error.status = status;
  return error;
}

function delay(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
