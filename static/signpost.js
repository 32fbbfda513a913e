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
// "auto" it starts on SSE and moves to long-polling when no `ready` event arrives within
// `readyTimeoutMs`, or streams keep failing while the server answers: the signature of a proxy
// that buffers responses. An unreachable server is not that signature; and after an outage
// "auto" tries SSE again, in case the verdict was the outage's.
// Either way it remembers the last message id it delivered and resumes after it, so a
// reconnection loses nothing and repeats nothing. Receiving is one state machine (`state`:
// idle, connecting, streaming, polling, backing-off, rejoining, closed), whose states and
// transitions are listed in RECEIVING_STATES below.
//
// Outages: while the server cannot be reached the client keeps trying, with exponential backoff
// and full jitter (capped), honouring `Retry-After`; it never gives up while the page is open.
// When the server has forgotten this peer (a restart, or a timeout while it was cut off), it
// joins the room again by itself, with the same name, meta and join token (and the resume
// credential, which brings back the same peer id where the server has a `resume_secret`), and
// emits `rejoined` with its peer id, new or the same. Peer connections are the page's and are
// never touched: a page that wants the others to recognise it under a new peer id follows
// docs/PROTOCOL.md, section 7.
//
// End-to-end encryption: with `key` (a room key, base64url, at least 128 bits, shared out of
// band, e.g. in a link's fragment), every message this client sends carries its `data`
// encrypted and authenticated (AES-GCM under a key HKDF derives from the room key and the room
// name), bound to the room, the sender, the recipient and the type, with a per-sender sequence
// inside (docs/PROTOCOL.md, section 8). The server relays ciphertext; name and meta travel inside
// it instead of in the join. What does not open (altered, another key, replayed), a clear
// message to a keyed client and a sealed one to a client without the key are never delivered:
// each emits `refused`. The application writes no crypto.
//
//   const client = await Signpost.join("demo", { key: Signpost.newRoomKey(), types: [...] });

/** Message types the server itself emits. */
const SERVER_TYPES = ["join", "leave"];

/** The most messages the server accepts in one POST (docs/API.md, Send). */
const MAX_BATCH = 64;
/** Random bytes of a send's Idempotency-Key: 22 base64url characters, unique among a peer's. */
const IDEMPOTENCY_KEY_BYTES = 16;

const DEFAULTS = {
  transport: "auto",
  /** SSE: how long to wait for `ready` before calling an attempt failed. */
  readyTimeoutMs: 5000,
  /** SSE in "auto": failed attempts in a row (no `ready`) before moving to long-polling. */
  sseFailuresBeforePoll: 3,
  /** How long send() waits to gather messages sent together (trickle ICE) into one POST. */
  batchDelayMs: 10,
  /**
   * Reconnect and rejoin backoff (full jitter: a random wait up to min(cap, first * 2^(n-1))):
   * the first ceiling, the cap, and the shortest poll wait worth trying. A first ceiling of 1 s
   * spreads the pages of a restarted server over a second: with 250 ms, 2,000 of them made its
   * joins wait 0.5 s (p99); with 1 s, 4 ms (docs/BENCHMARKS.md, "Reconnect storm"). The cap
   * bounds how long a page waits once the server is back.
   */
  backoffMinMs: 1000,
  backoffMaxMs: 4000,
  minPollWaitSecs: 2,
  /**
   * How long a join, or the question "does the server still know me?", may take before it
   * counts as unanswered: a server that hangs must not stall the way back.
   */
  requestTimeoutMs: 10000,
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
 * - `rejoined`: `fn({peerId, previousPeerId, peers})` after the server forgot this peer and the
 *   client joined the room again by itself: `peerId` is its id now (new, or the same when the
 *   server took its resume credential), `peers` those in the room;
 * - `closed`: `fn({reason})` when the client stops for good (left, or a rejoin was refused, e.g.
 *   because the join token expired);
 * - `refused`: `fn({reason, from, type})` for a message not delivered because of encryption:
 *   `reason` is "unauthenticated" (does not open with this room's key: altered, another key, or
 *   addressed elsewhere), "replayed" (its sequence is not above the sender's last), "downgrade"
 *   (a clear message to a keyed client) or "encrypted" (a sealed message, and this client has
 *   no key). `client.refused` counts them.
 *
 * With a room key, messages from peers carry `name` (and `meta`) as the sender sealed them, since
 * the server's join has neither.
 */
export class Signpost {
  /**
   * Joins `room` and starts receiving. Options: `name`, `meta`, `joinToken` (a join token
   * signed by the application, sent as `Authorization: Bearer` on the join only; its name and
   * meta are the peer's), `types` (message types to receive besides join/leave: over SSE only
   * subscribed types reach the page), and the keys of DEFAULTS. Throws an Error with `code`
   * (the API's error code, e.g. `join_token_expired`) when the join is refused.
   * `key`: the room key (base64url of at least 16 bytes); with it, everything sent is sealed and
   * only sealed messages are delivered (docs/PROTOCOL.md, section 8). A key that is too short or
   * not base64url throws `invalid_room_key`; a page without WebCrypto (no HTTPS, not
   * localhost) throws `e2ee_unavailable`.
   */
  static async join(room, options = {}) {
    const settings = { ...DEFAULTS, ...options };
    const cipher = settings.key ? await RoomCipher.create(room, settings.key) : null;
    let response;
    try {
      response = await joinRequest(room, settings);
    } catch (networkError) {
      throw apiError(0, { error: "network", message: "the server cannot be reached" });
    }
    const joined = await response.json().catch(() => ({}));
    if (response.status !== 201) throw apiError(response.status, joined);
    return new Signpost(joined, settings, cipher);
  }

  /** A fresh room key: 128 random bits, base64url (22 characters). */
  static newRoomKey() {
    return base64url(crypto.getRandomValues(new Uint8Array(ROOM_KEY_BYTES)));
  }

  constructor(joined, settings, cipher = null) {
    this.settings = settings;
    /** The room's cipher when the client has a key; null in the clear. */
    this.cipher = cipher;
    /** Messages not delivered because of encryption (see `refused`). */
    this.refused = 0;
    /**
     * Keyed clients open messages one at a time (WebCrypto is asynchronous): each delivery
     * chains on this, so messages and resets are emitted in the order they arrived.
     */
    this.opening = Promise.resolve();
    this.handlers = new Map();
    this.types = new Set([...SERVER_TYPES, ...(settings.types ?? [])]);
    this.adopt(joined);
    /** Where receiving is: one of RECEIVING_STATES; changed only by `transition`. */
    this.state = "idle";
    /**
     * Bumped by every transition: an asynchronous step (a stream's callbacks, the poll loop, a
     * backoff) acts only while the epoch it was given is current; any other transition (a
     * rejoin a send started, a leave) ends it.
     */
    this.epoch = 0;
    /** "sse" or "poll": the transport of the latest connecting or polling state; null before. */
    this.receivingBy = null;
    /** The EventSource of the "connecting" and "streaming" states; null in every other. */
    this.source = null;
    /** Aborts the request of the "polling" state; null in every other. */
    this.pollAbort = null;
    /** The rejoin of the "rejoining" state, shared by whoever asks for one meanwhile. */
    this.rejoinDone = null;
    this.outbox = [];
    this.flushTimer = null;
    this.sending = null;
    // What receiving has learnt, which outlives the states:
    /**
     * Set in "auto" once streaming is shown not to work while the server answers (a proxy
     * buffers it): from then on this client long-polls, until an outage makes the verdict
     * doubtful (see poll). An unreachable server never sets it.
     */
    this.sseBlocked = false;
    /** When the server was first found unreachable in the current outage (ms), or null. */
    this.unreachableSince = null;
    /** The poll wait that gets through; shortened when a proxy cuts longer requests. */
    this.pollWaitSecs = joined.poll_max_wait_secs ?? 25;
    this.onSseMessage = (event) => {
      if (event.target === this.source) this.deliver(JSON.parse(event.data));
    };
    this.onPageHide = () => this.leaveOnUnload();
    globalThis.addEventListener?.("pagehide", this.onPageHide);
    // Start on a later task, so that the caller, resuming from `await Signpost.join()`,
    // subscribes before anything is emitted.
    setTimeout(() => {
      if (this.state === "idle") this.startReceiving();
    }, 0);
  }

  /** Takes on the identity a join response gives: on the first join and on every rejoin. */
  adopt(joined) {
    /** The join response: peer_id, token, peers, ice_servers, *_url, timings. */
    this.joined = joined;
    /**
     * Counts joins: an answer to a request made before the latest (re)join speaks of a peer
     * this client no longer is, and must not start another rejoin.
     */
    this.incarnation = (this.incarnation ?? 0) + 1;
    this.room = joined.room;
    this.peerId = joined.peer_id;
    // Keyed, the server was not told the name: it travels sealed (see seal()).
    this.name = joined.name ?? (this.cipher ? this.settings.name ?? null : null);
    /** Peers already in the room when this one (re)joined, in join order. */
    this.peers = joined.peers ?? [];
    /** RTCIceServer objects from the server's configuration. */
    this.iceServers = joined.ice_servers ?? [];
    /** The id of the last message delivered; receiving resumes after it. Ids are per peer. */
    this.lastId = 0;
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
    return this.receivingBy;
  }

  /** Whether the client stopped for good (left, or a rejoin was refused). */
  get closed() {
    return this.state === "closed";
  }

  /**
   * The one place where `state` changes (see RECEIVING_STATES). Leaving a state releases what
   * it held (the stream, except to "streaming", which keeps it; the poll in flight); entering "connecting" or "polling" emits
   * `transport` when the transport changes. Returns the new epoch, the caller's licence to go
   * on acting in this state.
   */
  transition(next) {
    if (!RECEIVING_STATES[this.state].includes(next)) {
      throw new Error(`signpost: no transition from "${this.state}" to "${next}"`);
    }
    // "streaming" goes on with the stream "connecting" opened; every other state has its own.
    if (next !== "streaming") {
      this.source?.close();
      this.source = null;
    }
    this.pollAbort?.abort();
    this.pollAbort = null;
    this.state = next;
    this.epoch += 1;
    const transport = { connecting: "sse", polling: "poll" }[next];
    if (transport && transport !== this.receivingBy) {
      this.receivingBy = transport;
      this.emit("transport", transport);
    }
    return this.epoch;
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
    let messages = batch.map((entry) => entry.message);
    if (this.cipher) {
      try {
        messages = await Promise.all(messages.map((message) => this.seal(message)));
      } catch (error) {
        for (const entry of batch) entry.reject(error);
        return;
      }
    }
    const body = JSON.stringify(messages);
    // One key for the batch and every retry of it: a retry after a lost answer or a 503 that
    // came after the server took the batch is answered as the first, not delivered twice
    // (docs/API.md, Send, "Retrying a send").
    const idempotencyKey = base64url(crypto.getRandomValues(new Uint8Array(IDEMPOTENCY_KEY_BYTES)));
    let failures = 0;
    while (!this.closed) {
      const incarnation = this.incarnation;
      let response;
      try {
        response = await fetch(this.url(this.joined.send_url), {
          method: "POST",
          headers: this.authHeaders({
            "Content-Type": "application/json",
            "Idempotency-Key": idempotencyKey,
          }),
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
      const retryAfter = retryAfterMs(response, body_);
      if (response.status === 429 || (response.status === 503 && retryAfter !== null)) {
        failures += 1;
        await delay((retryAfter ?? 1000) + this.backoff(failures));
        continue;
      }
      if (response.status >= 500 || (response.status >= 400 && !body_.error)) {
        // A proxy's error page (502, 503, 504) or a server hiccup: the batch was not accepted.
        failures += 1;
        await delay(this.backoff(failures));
        continue;
      }
      const error = apiError(response.status, body_);
      if (FORGOTTEN.has(error.code)) {
        // The server forgot this peer: rejoin. The batch was addressed as the old peer, to
        // peers that may have new ids too; the page negotiates afresh after `rejoined`.
        this.rejoin(incarnation);
      } else if (error.code !== "unknown_recipient") {
        // unknown_recipient: the peer left meanwhile, which the `leave` event reports.
        this.reportError(error.code, error.message);
      }
      for (const entry of batch) entry.reject(error);
      return;
    }
    for (const entry of batch) entry.reject(new Error("signpost: the client has left"));
  }

  /**
   * `message` ({type, data, to?}) with its `data` sealed for its recipient: the sequence number
   * is taken here, as the batch goes out, so numbers rise in the order the server accepts them.
   */
  seal(message) {
    const inner = { seq: this.cipher.nextSequence(), data: message.data };
    if (this.name) inner.name = this.name;
    if (this.settings.meta) inner.meta = this.settings.meta;
    return this.cipher
      .seal(this.peerId, message.to ?? null, message.type, inner)
      .then((data) => ({ ...message, data }));
  }

  // ---- receiving ----

  /** Delivers one envelope, once, in id order (opened first when the client has a key). */
  deliver(envelope) {
    if (typeof envelope.id === "number") {
      if (envelope.id <= this.lastId) return; // already delivered before a reconnection
      this.lastId = envelope.id;
    }
    const fromServer = SERVER_TYPES.includes(envelope.type);
    if (!this.cipher) {
      if (!fromServer && isSealed(envelope.data)) return this.refuse("encrypted", envelope);
      return this.emit(envelope.type, envelope);
    }
    // The peer id this message reached: a rejoin while earlier messages are being opened must
    // not make them look addressed to someone else.
    const recipient = this.peerId;
    this.opening = this.opening.then(async () => {
      if (fromServer) return this.emit(envelope.type, envelope);
      if (!isSealed(envelope.data)) return this.refuse("downgrade", envelope);
      const opened = await this.cipher.open(envelope, recipient);
      if (typeof opened === "string") return this.refuse(opened, envelope);
      this.emit(envelope.type, { ...envelope, ...opened });
    }).catch((error) => {
      // Never expected (every failure to open is a refusal), but a rejected link would stop
      // every later delivery: count it as one more refusal instead.
      console.error("signpost: opening a message failed", error);
      this.refuse("unauthenticated", envelope);
    });
  }

  /** Counts and reports a message that is not delivered; it is never applied. */
  refuse(reason, envelope) {
    this.refused += 1;
    this.emit("refused", { reason, from: envelope.from ?? null, type: envelope.type });
  }

  onReset(reset) {
    // The messages after lastId are gone (or lastId is unknown to the server): continue with
    // what the server still holds, whatever its ids.
    this.lastId = 0;
    if (this.cipher) this.opening = this.opening.then(() => this.emit("reset", reset));
    else this.emit("reset", reset);
  }

  /** Starts receiving on the transport the settings (and what was learnt) call for. */
  startReceiving() {
    if (this.closed) return;
    const poll = this.settings.transport === "poll" || (this.settings.transport === "auto" && this.sseBlocked);
    if (poll) this.poll(this.transition("polling"));
    else {
      this.transition("connecting");
      this.stream();
    }
  }

  /**
   * In "connecting": opens an SSE stream that resumes after lastId. The stream acts while it is
   * `this.source`, which any transition closes and clears.
   * `attempt` counts failures in a row (for the backoff); `blocked` those among them where the
   * server answered and still the stream did not open: only those show that streaming does not
   * get through.
   */
  stream(attempt = 0, blocked = 0) {
    const params = new URLSearchParams({ token: this.joined.token });
    if (this.lastId > 0) params.set("last_event_id", String(this.lastId));
    const source = new EventSource(this.url(`${this.joined.events_url}?${params}`));
    this.source = source;
    let ready = false;
    const fail = async (reason) => {
      if (this.source !== source) return;
      clearTimeout(readyTimer);
      const backingOff = this.transition("backing-off");
      this.emit("status", { connected: false, detail: reason });
      const failures = ready ? 1 : attempt + 1;
      const outcome = await this.recover(failures);
      if (backingOff !== this.epoch || outcome === "rejoining") return;
      // A stream that never opened although the server answers: streaming is held back.
      const held = !ready && outcome === "known" ? blocked + 1 : ready ? 0 : blocked;
      if (this.settings.transport === "auto" && held >= this.settings.sseFailuresBeforePoll) {
        this.fallBackToPoll("Streaming does not get through this network; switched to long-polling.");
        return;
      }
      this.transition("connecting");
      this.stream(failures, held);
    };
    const readyTimer = setTimeout(() => {
      if (this.source !== source) return;
      if (this.settings.transport === "auto") {
        // Connected, yet nothing arrived: a proxy is holding the stream back.
        this.fallBackToPoll("No answer on the event stream within 5 s; switched to long-polling.");
      } else {
        fail("no ready event");
      }
    }, this.settings.readyTimeoutMs);
    source.addEventListener("ready", () => {
      ready = true;
      clearTimeout(readyTimer);
      if (this.source === source && this.state === "connecting") this.transition("streaming");
      this.unreachableSince = null;
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

  fallBackToPoll(message) {
    this.sseBlocked = true;
    this.reportError("sse_blocked", message);
    this.poll(this.transition("polling"));
  }

  /**
   * In "polling" (licensed by `epoch`): long-polls after lastId until another transition, adapting
   * the wait to what the network lets through. A failed poll passes through "backing-off" and
   * comes back to "polling" in this same loop.
   */
  async poll(epoch) {
    const current = () => epoch === this.epoch;
    let failures = 0;
    let connected = false;
    while (current()) {
      const wait = this.pollWaitSecs;
      const started = Date.now();
      const abort = new AbortController();
      this.pollAbort = abort;
      const incarnation = this.incarnation;
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
      if (!current()) return;
      const elapsedSecs = (Date.now() - started) / 1000;
      if (response?.status === 200) {
        let body;
        try {
          body = await response.json();
        } catch (cut) {
          // The body was cut off mid-way: treat it like a cut request.
          body = null;
        }
        if (!current()) return;
        if (body) {
          failures = 0;
          const afterOutage = this.unreachableSince !== null;
          this.unreachableSince = null;
          if (!connected) {
            connected = true;
            this.emit("status", { connected: true, detail: "polling" });
          }
          if (body.reset) this.onReset({ reason: body.reset_reason, last_id: body.last_id });
          for (const envelope of body.messages) this.deliver(envelope);
          if (body.reset || body.messages.length === 0) this.lastId = Math.max(this.lastId, body.last_id);
          if (afterOutage && this.settings.transport === "auto" && this.sseBlocked) {
            // Streaming was judged blocked, but the server has been away since: the verdict may
            // have been the outage's. Try streaming again; a proxy that blocks it sends us back.
            this.sseBlocked = false;
            this.startReceiving();
            return;
          }
          continue;
        }
      }
      let retryAfter = null;
      if (response && response.status !== 200 && response.status < 500) {
        const body = await response.json().catch(() => ({}));
        const error = apiError(response.status, body);
        if (FORGOTTEN.has(error.code)) {
          this.rejoin(incarnation);
          return;
        }
        retryAfter = retryAfterMs(response, body);
        if (error.code !== "rate_limited") this.reportError(error.code, error.message);
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
      epoch = this.transition("backing-off");
      if (retryAfter !== null) await delay(retryAfter);
      if ((await this.recover(failures)) === "rejoining" || !current()) return;
      epoch = this.transition("polling");
    }
  }

  /**
   * After `failures` failed attempts in a row to receive: waits (backoff with full jitter),
   * then finds out why from the server. Returns "known" (the server answers and knows this
   * peer: try again), "unreachable" (try again later) or "rejoining" (the server forgot this
   * peer, or it was unreachable for longer than the peer timeout: a rejoin has started and
   * this receiving loop must end).
   */
  async recover(failures) {
    const incarnation = this.incarnation;
    await delay(this.backoff(failures));
    // Closed, or rejoined meanwhile (a send found the peer forgotten): this loop is over.
    if (this.closed || incarnation !== this.incarnation) return "rejoining";
    const timeoutMs = (this.joined.peer_timeout_secs ?? Infinity) * 1000;
    if (this.unreachableSince !== null && Date.now() - this.unreachableSince > timeoutMs) {
      // Cut off for longer than the server keeps a silent peer: it has forgotten this one.
      this.rejoin(incarnation);
      return "rejoining";
    }
    let response = null;
    try {
      // With the peer's token: a server with join_auth = "required" shows a peer only to a
      // peer of its room, and answers 401 credential_required to one it has forgotten.
      response = await fetch(this.url(this.joined.leave_url), {
        cache: "no-store",
        headers: this.authHeaders(),
        signal: AbortSignal.timeout(this.settings.requestTimeoutMs),
      });
    } catch (networkError) {
      response = null;
    }
    if (response?.status === 404 || response?.status === 401) {
      const body = await response.json().catch(() => ({}));
      if (FORGOTTEN.has(body.error) || body.error === "credential_required") {
        this.rejoin(incarnation);
        return "rejoining";
      }
    }
    if (response === null || response.status >= 500) {
      this.unreachableSince ??= Date.now();
      if (failures >= 2) this.reportError("reconnecting", "Lost the connection to the server; reconnecting.");
      return "unreachable";
    }
    return "known";
  }

  /**
   * Joins the room again after the server forgot this peer: same name, meta and join token,
   * retried with backoff (and `Retry-After`) until it succeeds or is refused for good. Emits
   * `rejoined`, then receives as the new peer. One rejoin at a time; callers share it.
   * `incarnation` is the join the caller's evidence is about: evidence about an earlier one
   * (a request sent before the last rejoin, answered after it) starts nothing.
   */
  rejoin(incarnation) {
    if (this.closed || incarnation !== this.incarnation) return Promise.resolve();
    if (this.state !== "rejoining") {
      this.transition("rejoining");
      const done = this.rejoinUntilBack().finally(() => {
        if (this.rejoinDone === done) this.rejoinDone = null;
      });
      this.rejoinDone = done;
    }
    return this.rejoinDone;
  }

  /** In "rejoining": joins until the server takes this client back or refuses it for good. */
  async rejoinUntilBack() {
    this.emit("status", { connected: false, detail: "rejoining" });
    const previousPeerId = this.peerId;
    let failures = 0;
    while (!this.closed) {
      let response = null;
      let body = {};
      try {
        response = await joinRequest(this.room, this.settings, this.joined.resume);
        body = await response.json().catch(() => ({}));
      } catch (networkError) {
        response = null;
      }
      if (this.closed) return;
      if (RESUME_REFUSED.has(body.error)) {
        // The credential cannot bring this peer id back (no secret on this server now, or the
        // old peer is still there): join as a new peer at once; the pages re-pair by key.
        this.joined = { ...this.joined, resume: null };
        continue;
      }
      if (response?.status === 201) {
        // As after any outage, "auto" tries streaming again (see poll).
        if (this.unreachableSince !== null) this.sseBlocked = false;
        this.adopt(body);
        this.unreachableSince = null;
        this.emit("rejoined", { peerId: this.peerId, previousPeerId, peers: this.peers });
        this.startReceiving();
        return;
      }
      failures += 1;
      const status = response?.status ?? 0;
      if (status >= 400 && status < 500 && ![408, 409, 429].includes(status) && body.error) {
        // Refused for good (the join token expired, say): a person must decide what next.
        const error = apiError(status, body);
        this.reportError(error.code, `Could not rejoin the room: ${error.message}`);
        this.close("refused");
        return;
      }
      const retryAfter = retryAfterMs(response, body);
      await delay((retryAfter ?? 0) + this.backoff(failures));
    }
  }

  /** Exponential backoff with full jitter: a random wait up to min(cap, first * 2^(n-1)). */
  backoff(failures) {
    const { backoffMinMs, backoffMaxMs } = this.settings;
    const ceiling = Math.min(backoffMaxMs, backoffMinMs * 2 ** Math.max(0, failures - 1));
    return Math.random() * ceiling;
  }

  /** The peers in the room now (`GET /api/rooms/{room}`), this one included, or null. */
  async roomPeers() {
    try {
      // The peer's token: a server with join_auth = "required" shows a room only to its peers.
      const headers = this.joined ? this.authHeaders() : {};
      const response = await fetch(this.url(`/api/rooms/${encodeURIComponent(this.room)}`), { cache: "no-store", headers });
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
    this.transition("closed");
    clearTimeout(this.flushTimer);
    globalThis.removeEventListener?.("pagehide", this.onPageHide);
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

/**
 * The receiving side's states, each with the states it may go to. `Signpost.transition` is the
 * only place `state` changes, and it refuses any move not listed here.
 * - "idle": joined; receiving starts on a later task (see the constructor).
 * - "connecting": an SSE stream is open, waiting for the server's `ready`. Then "streaming"; or,
 *   when it fails, "backing-off"; or, in "auto" with no `ready` within readyTimeoutMs (or after
 *   sseFailuresBeforePoll failures while the server answers), "polling".
 * - "streaming": `ready` arrived: messages come over SSE. A failure: "backing-off".
 * - "polling": long-polling. A failed poll: "backing-off" (a cut poll retries at once with a
 *   shorter wait, staying here); the first answer after an outage, in "auto" where streaming was
 *   judged blocked: "connecting", to try streaming again.
 * - "backing-off": after a failure, waiting (backoff with full jitter, `Retry-After`), then asking
 *   the server whether it still knows this peer: back to "connecting" or "polling", or to
 *   "rejoining" when it does not (or was unreachable for longer than the peer timeout).
 * - "rejoining": the server forgot this peer: joining again until it answers: then "connecting"
 *   or "polling" as the new peer, or "closed" when refused for good.
 * - "closed": left, or a rejoin was refused. Final.
 * Any state but "closed" goes to "rejoining" when a send finds the peer forgotten, and to
 * "closed" on leave().
 */
const RECEIVING_STATES = {
  idle: ["connecting", "polling", "rejoining", "closed"],
  connecting: ["streaming", "backing-off", "polling", "rejoining", "closed"],
  streaming: ["backing-off", "rejoining", "closed"],
  polling: ["backing-off", "connecting", "rejoining", "closed"],
  "backing-off": ["connecting", "polling", "rejoining", "closed"],
  rejoining: ["connecting", "polling", "closed"],
  closed: [],
};

/** Events the client emits itself, which never come from the server. */
const LOCAL_EVENTS = new Set(["reset", "transport", "status", "error", "closed", "rejoined", "refused"]);

/** Error codes that mean the server no longer knows this peer: rejoin. */
const FORGOTTEN = new Set(["peer_not_found", "room_not_found", "invalid_token"]);

/** Join refusals of a resume credential, after which a plain join is the way back. */
const RESUME_REFUSED = new Set(["resume_not_enabled", "invalid_resume", "peer_present"]);

/**
 * POST /api/rooms/{room}/peers with the name, meta and join token of `settings`, and `resume`
 * (a resume credential from an earlier join response) when there is one.
 */
function joinRequest(room, settings, resume = null) {
  const body = {};
  if (resume) body.resume = resume;
  // Keyed, name and meta travel sealed inside the messages instead (docs/PROTOCOL.md, 8).
  if (settings.name && !settings.key) body.name = settings.name;
  if (settings.meta && !settings.key) body.meta = settings.meta;
  const headers = { "Content-Type": "application/json" };
  if (settings.joinToken) headers.Authorization = `Bearer ${settings.joinToken}`;
  return fetch(`${settings.baseUrl}/api/rooms/${encodeURIComponent(room)}/peers`, {
    method: "POST",
    headers,
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(settings.requestTimeoutMs),
  });
}

/** The wait a 429 or 503 asks for (`Retry-After`, or the body's `retry_after`), in ms, or null. */
function retryAfterMs(response, body) {
  const header = response?.headers?.get("Retry-After");
  const seconds = Number(header ?? body?.retry_after ?? NaN);
  return Number.isFinite(seconds) && seconds >= 0 ? seconds * 1000 : null;
}

function apiError(status, body) {
  const error = new Error(body?.message ?? `HTTP ${status}`);
  error.code = body?.error ?? `http_${status}`;
  error.status = status;
  return error;
}

function delay(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// ---- end-to-end encryption (docs/PROTOCOL.md, section 8) ----

/** The format's version: the `e2ee` field of sealed data, and the HKDF salt and AAD prefix. */
const E2EE_VERSION = "signpost-e2ee-v1";
/** The shortest room key accepted, and the size of a new one: 128 bits. */
const ROOM_KEY_BYTES = 16;
/** AES-GCM nonces: 96 random bits per message (NIST SP 800-38D's recommended size). */
const NONCE_BYTES = 12;

/** Whether `data` is sealed data: `{"e2ee": "signpost-e2ee-v1", "iv": …, "ct": …}`. */
function isSealed(data) {
  return data !== null && typeof data === "object" && typeof data.e2ee === "string";
}

/**
 * One room's AES-GCM key, this client's sending sequence, and the last sequence accepted from
 * each sender. Nonces are random, so nothing about the key is ever reused across clients.
 * Exported for checks against docs/PROTOCOL.md's test vector; `Signpost` uses it by itself.
 */
export class RoomCipher {
  static async create(room, keyText) {
    const raw = typeof keyText === "string" ? unbase64url(keyText) : null;
    if (!raw || raw.length < ROOM_KEY_BYTES) {
      throw apiError(0, { error: "invalid_room_key", message: "the room key must be base64url of at least 16 bytes" });
    }
    if (!globalThis.crypto?.subtle) {
      throw apiError(0, { error: "e2ee_unavailable", message: "end-to-end encryption needs WebCrypto (HTTPS or localhost)" });
    }
    const material = await crypto.subtle.importKey("raw", raw, "HKDF", false, ["deriveKey"]);
    const key = await crypto.subtle.deriveKey(
      { name: "HKDF", hash: "SHA-256", salt: utf8(E2EE_VERSION), info: utf8(room) },
      material,
      { name: "AES-GCM", length: 256 },
      false,
      ["encrypt", "decrypt"],
    );
    return new RoomCipher(room, key);
  }

  constructor(room, key) {
    this.room = room;
    this.key = key;
    /** The last sequence number this client sealed; the first message is 1. */
    this.sequence = 0;
    /** sender peer_id → the highest sequence accepted from it. */
    this.seen = new Map();
  }

  nextSequence() {
    this.sequence += 1;
    return this.sequence;
  }

  /** What the tag authenticates besides the plaintext: who sent what to whom, where. */
  additionalData(from, to, type) {
    return utf8(`${E2EE_VERSION}\n${this.room}\n${from}\n${to ?? "*"}\n${type}`);
  }

  async seal(from, to, type, inner) {
    const iv = crypto.getRandomValues(new Uint8Array(NONCE_BYTES));
    const sealed = await crypto.subtle.encrypt(
      { name: "AES-GCM", iv, additionalData: this.additionalData(from, to, type) },
      this.key,
      utf8(JSON.stringify(inner)),
    );
    return { e2ee: E2EE_VERSION, iv: base64url(iv), ct: base64url(new Uint8Array(sealed)) };
  }

  /**
   * Opens an envelope that reached `recipient` (this client's peer id): `{data, seq, name?,
   * meta?}`, or the reason it is refused. Envelopes do not say whether they were sent to one
   * peer or to everyone, so both readings are tried: sealed for `recipient`, or for "*". A
   * message sealed for another recipient, sender, type or room opens under neither.
   */
  async open(envelope, recipient) {
    const { data, from, type } = envelope;
    if (data.e2ee !== E2EE_VERSION || typeof data.iv !== "string" || typeof data.ct !== "string") return "unauthenticated";
    const iv = unbase64url(data.iv);
    const ct = unbase64url(data.ct);
    if (!iv || iv.length !== NONCE_BYTES || !ct) return "unauthenticated";
    let inner = null;
    for (const to of [recipient, "*"]) {
      try {
        const plain = await crypto.subtle.decrypt(
          { name: "AES-GCM", iv, additionalData: this.additionalData(from, to, type) },
          this.key,
          ct,
        );
        inner = JSON.parse(new TextDecoder().decode(plain));
        break;
      } catch {
        // Not sealed for this (recipient, sender, type) under this key: try the next reading.
      }
    }
    if (inner === null || typeof inner !== "object" || !Number.isSafeInteger(inner.seq)) return "unauthenticated";
    if (inner.seq <= (this.seen.get(from) ?? 0)) return "replayed";
    this.seen.set(from, inner.seq);
    const opened = { data: inner.data ?? null, seq: inner.seq };
    if (typeof inner.name === "string") opened.name = inner.name;
    if (inner.meta !== undefined) opened.meta = inner.meta;
    return opened;
  }
}

function utf8(text) {
  return new TextEncoder().encode(text);
}

function base64url(bytes) {
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** The bytes of unpadded base64url `text`, or null if it is not that. */
function unbase64url(text) {
  if (!/^[A-Za-z0-9_-]*$/.test(text) || text.length % 4 === 1) return null;
  try {
    return Uint8Array.from(atob(text.replace(/-/g, "+").replace(/_/g, "/")), (c) => c.charCodeAt(0));
  } catch {
    return null;
  }
}
