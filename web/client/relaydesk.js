// @ts-check
/**
 * @file Relaydesk protocol v1 client for browsers (and Node 20 with a WebSocket/fetch).
 *
 * One plain ES module, no dependencies, no build step. Served by core-api at
 * `/client/relaydesk.js`; used by the visitor widget (`/widget.js`) and the agent console.
 *
 * What it does (see `docs/protocol.md` for the wire protocol):
 * - keeps one WebSocket to an edge open (`hello` with a fresh connection token on every
 *   attempt, full-jitter exponential backoff, edge URLs tried in a shuffled order,
 *   application-level `ping` when idle, close codes 4500/4503 terminal);
 * - delivers every message of the subscribed conversations once, in `seq` order, even
 *   when a replay overlaps live frames, and re-subscribes from the last contiguous
 *   `seq` when it sees a gap;
 * - sends through a persisted outbox: a message keeps its client id until it is
 *   `accepted` (or refused for good), and is re-sent with that id after every reconnect,
 *   so nothing is lost while offline and nothing is stored twice;
 * - when the WebSocket keeps failing, falls back to REST (long-poll for messages,
 *   `POST …/messages` with `Idempotency-Key` for sends) and keeps trying the WebSocket
 *   in the background.
 *
 * @example
 * import { RelaydeskClient } from '/client/relaydesk.js';
 * const client = new RelaydeskClient({ apiBase: 'http://127.0.0.1:8080', apiToken });
 * client.addEventListener('message', (e) => console.log(e.detail.message.body.text));
 * client.start();
 * client.subscribe(convId);
 * client.send(convId, 'Hello!');
 */

// ---------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------

/** @typedef {'connecting'|'open'|'fallback'|'closed'} ConnectionState */
/** @typedef {'visitor'|'agent'|'bot'|'supervisor'|'admin'} Role */

/**
 * Who did something, as shown to the other participants.
 * @typedef {object} Actor
 * @property {string} id
 * @property {Role|string} role
 * @property {string} [name]
 */

/**
 * A message body. `text` for the kinds `text`, `note`, `suggestion`.
 * @typedef {{text?: string} & Record<string, unknown>} MessageBody
 */

/**
 * A stored message: the wire `msg` frame without `t`, and the element of
 * `GET /v1/conversations/{id}/messages`.
 * @typedef {object} Message
 * @property {string} conv conversation id
 * @property {number} seq 1-based, gapless per conversation (visitors skip staff-only kinds)
 * @property {string} msg message id
 * @property {Actor} from
 * @property {'text'|'note'|'suggestion'|'event'|string} kind
 * @property {MessageBody} body
 * @property {number} ts milliseconds since the Unix epoch (commit time)
 */

// --- Frames sent by the client ---------------------------------------------------------

/** @typedef {{t: 'hello', token: string}} HelloFrame */
/** @typedef {{t: 'send', id: string, conv: string, kind: string, body: MessageBody}} SendFrame */
/** @typedef {{t: 'sub', conv: string, after: number}} SubFrame */
/** @typedef {{t: 'unsub', conv: string}} UnsubFrame */
/** @typedef {{t: 'ack', conv: string, seq: number}} AckFrame */
/** @typedef {{t: 'read', conv: string, seq: number}} ReadFrame */
/** @typedef {{t: 'typing', conv: string, on: boolean}} TypingFrame */
/** @typedef {{t: 'ping'}} PingFrame */
/**
 * @typedef {HelloFrame|SendFrame|SubFrame|UnsubFrame|AckFrame|ReadFrame|TypingFrame|PingFrame} ClientFrame
 */

// --- Frames sent by the edge -----------------------------------------------------------

/**
 * @typedef {object} WelcomeFrame
 * @property {'welcome'} t
 * @property {string} conn connection id
 * @property {string} tenant
 * @property {string} principal
 * @property {Role|string} role
 * @property {number} heartbeat_ms
 * @property {number} max_message inbound frame limit of the edge, in bytes
 */
/**
 * @typedef {object} AcceptedFrame
 * @property {'accepted'} t
 * @property {string} id the client message id
 * @property {string} conv
 * @property {number} seq
 * @property {string} msg
 * @property {number} ts
 */
/**
 * @typedef {'bad_request'|'unauthorized'|'forbidden'|'not_found'|'conflict'|'rate_limited'|'too_large'|'unavailable'|'internal'|'method_not_allowed'|'timeout'} ErrorCode
 */
/**
 * @typedef {object} ErrorFrame
 * @property {'error'} t
 * @property {string} [id] the client message id of a refused `send`
 * @property {string} [conv]
 * @property {ErrorCode|string} code
 * @property {string} message
 * @property {number} [retry_after_ms] present where a retry can work
 */
/** @typedef {Message & {t: 'msg'}} MsgFrame */
/** @typedef {{t: 'subbed', conv: string, head: number}} SubbedFrame */
/** @typedef {{t: 'read', conv: string, by: Actor, seq: number}} ReadReceiptFrame */
/** @typedef {{t: 'typing', conv: string, by: Actor, on: boolean}} TypingEventFrame */
/**
 * @typedef {'created'|'queued'|'assigned'|'transferred'|'escalated'|'resolved'|'reopened'|'snoozed'|'joined'|'updated'} ConvEventName
 */
/**
 * A change of a conversation's state (after commit).
 * @typedef {object} ConvFrame
 * @property {'conv'} t
 * @property {string} conv
 * @property {ConvEventName|string} event
 * @property {string} [status] state after the change
 * @property {string|null} [assignee] state after the change
 * @property {string} [support_type]
 * @property {string} [reason] resolution/escalation reason, or `handoff`
 */
/** @typedef {{t: 'presence', agent: string, status: 'online'|'away'|'offline'|string}} PresenceFrame */
/** @typedef {{t: 'pong'}} PongFrame */
/**
 * @typedef {WelcomeFrame|AcceptedFrame|ErrorFrame|MsgFrame|SubbedFrame|ReadReceiptFrame|TypingEventFrame|ConvFrame|PresenceFrame|PongFrame} ServerFrame
 */

// --- Client API types ------------------------------------------------------------------

/**
 * A message waiting in the outbox until it is accepted.
 * @typedef {object} OutboxEntry
 * @property {string} id client message id (`[A-Za-z0-9_-]{1,64}`), the dedupe key
 * @property {string} conv
 * @property {string} text
 * @property {string} kind
 */

/**
 * The authenticated principal, from `welcome`.
 * @typedef {object} Principal
 * @property {string} id
 * @property {Role|string} role
 * @property {string} tenant
 */

/**
 * What `connect()` resolves to: a fresh connection token and the edges to try.
 * @typedef {object} ConnectInfo
 * @property {string} token
 * @property {string[]} edgeUrls
 */

/**
 * @typedef {object} ClientOptions
 * @property {string} apiBase core-api origin, e.g. `"http://127.0.0.1:8080"`
 * @property {string} apiToken the visitor's or agent's API session token (Bearer for REST)
 * @property {() => Promise<ConnectInfo>} [connect] fetches a fresh connection token.
 *   Default: `POST {apiBase}/v1/connect-tokens` with the apiToken, using `edge_urls`
 *   (array) or else `edge_url` of the answer.
 * @property {Storage|null} [storage] where the outbox and last seqs survive page reloads
 *   (default `localStorage` when available; `null`: nothing persisted)
 * @property {string} [storageKey] key in `storage` (default `"relaydesk"`); give each
 *   principal sharing a browser its own key
 * @property {typeof WebSocket} [WebSocketImpl] default `globalThis.WebSocket`
 * @property {typeof fetch} [fetchImpl] default `globalThis.fetch`
 * @property {number} [fallbackAfter] consecutive failed WebSocket attempts before
 *   switching to the REST fallback (default 4)
 * @property {(frame: ConvFrame, principal: Principal|null) => boolean} [autoSubscribe]
 *   whether a `conv` frame about a conversation this client does not know yet makes it
 *   subscribe to it. Default: for visitors always; for staff when the frame makes them
 *   the assignee or is a `joined` event (the cases where the server subscribed them) —
 *   not for queue announcements. Pass `() => true` to subscribe to everything announced.
 * @property {number} [backoffBaseMs] reconnect backoff base (default 250)
 * @property {number} [backoffCapMs] reconnect backoff cap (default 10000)
 * @property {number} [fallbackRetryMs] WebSocket retry period while in fallback (default 30000)
 * @property {number} [pingIntervalMs] idle time before a `ping` (default 20000)
 * @property {number} [pongTimeoutMs] time allowed for any frame after a `ping` (default 10000)
 * @property {number} [handshakeTimeoutMs] time allowed from opening to `welcome` (default 15000)
 * @property {number} [ackDelayMs] batching delay of `ack` frames (default 250)
 * @property {number} [typingThrottleMs] minimum interval between `typing on` (default 2000)
 * @property {number} [longPollWait] `wait` seconds of the fallback long-poll (default 25)
 */

/**
 * Events (all `CustomEvent`, payload in `detail`):
 * @typedef {object} ClientEventMap
 * @property {{state: ConnectionState, code?: number}} state
 * @property {{frame: WelcomeFrame}} welcome
 * @property {{conv: string, message: Message, history?: boolean}} message once per seq;
 *   in seq order for live delivery; `history: true` for older messages handed to
 *   {@link RelaydeskClient#ingest} below the last contiguous seq
 * @property {{id: string, conv: string, seq: number, msg: string, ts: number}} accepted
 * @property {{id: string, conv: string, code: string, message: string}} failed
 * @property {{conv: string, by: Actor, on: boolean}} typing
 * @property {{conv: string, by: Actor, seq: number}} read
 * @property {{frame: ConvFrame}} conv
 * @property {{frame: PresenceFrame}} presence
 * @property {{frame: ErrorFrame|{t: string, code: string, message: string, status?: number}}} error
 * @property {{conv: string, head: number}} subbed
 */

/**
 * Per-conversation state kept by the client.
 * @typedef {object} ConvState
 * @property {string} id
 * @property {boolean} subscribed delivery wanted (explicitly or because the server
 *   subscribed this principal); re-subscribed after every reconnect
 * @property {boolean} explicit subscribed through `subscribe()`
 * @property {boolean} optedOut `unsubscribe()` was called (or the server took it away):
 *   stray frames do not make it subscribed again
 * @property {number} lastSeq highest contiguous seq held
 * @property {Map<number, Message>} messages held messages by seq
 * @property {number|null} head head of the `subbed` of this connection (null: none yet)
 * @property {boolean} subPending a `sub` was sent on this connection, no `subbed` yet
 * @property {boolean} synced a `subbed` arrived on this connection
 * @property {number} ackSent last `ack` sent
 * @property {number} readWanted highest seq passed to `read()`
 * @property {number} readSent highest `read` sent
 * @property {number} typingOnAt when the last `typing on` was sent (0: none pending)
 */

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/** Error codes whose request may succeed later (`shared/src/error.rs`). */
const RETRYABLE = new Set(['rate_limited', 'unavailable', 'internal', 'timeout']);

/** The error code of an HTTP status, for answers without an error body. @type {Record<number, string>} */
const STATUS_CODES = {
  400: 'bad_request', 401: 'unauthorized', 403: 'forbidden', 404: 'not_found', 405: 'method_not_allowed',
  408: 'timeout', 409: 'conflict', 413: 'too_large', 429: 'rate_limited', 500: 'internal', 502: 'unavailable', 503: 'unavailable', 504: 'unavailable',
};

/** Close codes after which the client does not reconnect. */
const TERMINAL_CLOSE = new Set([4500, 4503]);

const ID_ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-';

/**
 * A new client message id: `c` + time (base 36) + `_` + 16 random characters of
 * `[A-Za-z0-9_-]` (96 bits), at most 64 characters as the protocol requires.
 * @returns {string}
 */
export function newClientId() {
  const bytes = new Uint8Array(16);
  const c = globalThis.crypto;
  if (c && typeof c.getRandomValues === 'function') c.getRandomValues(bytes);
  else for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
  let r = '';
  for (const b of bytes) r += ID_ALPHABET[b & 63];
  return 'c' + Date.now().toString(36) + '_' + r;
}

/**
 * An HTTP error from core-api: `status` is the HTTP status (0 for a network failure),
 * `code` the error code of `{"error":{"code","message"}}`.
 */
export class ApiError extends Error {
  /**
   * @param {string} message
   * @param {number} status
   * @param {string} code
   * @param {number|null} [retryAfterMs]
   */
  constructor(message, status, code, retryAfterMs = null) {
    super(message);
    this.name = 'ApiError';
    /** @type {number} */
    this.status = status;
    /** @type {string} */
    this.code = code;
    /** @type {number|null} from `Retry-After` */
    this.retryAfterMs = retryAfterMs;
  }
}

/**
 * @typedef {object} ApiExtra
 * @property {typeof fetch} [fetchImpl]
 * @property {Record<string, string>} [headers] extra request headers
 * @property {AbortSignal} [signal]
 */

/**
 * Calls core-api with JSON in and out.
 * @param {string} apiBase core-api origin
 * @param {string|null|undefined} token Bearer token (omitted when empty)
 * @param {string} method
 * @param {string} path starting with `/`
 * @param {unknown} [body] sent as JSON when not undefined
 * @param {ApiExtra} [extra]
 * @returns {Promise<any>} the parsed JSON answer (`null` for an empty body, e.g. 204)
 * @throws {ApiError} with `.status` and `.code` (status 0, code `unavailable` when the request failed)
 */
export async function api(apiBase, token, method, path, body, extra = {}) {
  const fetchImpl = extra.fetchImpl || globalThis.fetch;
  /** @type {Record<string, string>} */
  const headers = { Accept: 'application/json', ...(extra.headers || {}) };
  if (token) headers.Authorization = `Bearer ${token}`;
  /** @type {RequestInit} */
  const init = { method, headers };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  if (extra.signal) init.signal = extra.signal;
  /** @type {Response} */
  let res;
  try {
    res = await fetchImpl(String(apiBase).replace(/\/+$/, '') + path, init);
  } catch (e) {
    if (isAbort(e)) throw e;
    throw new ApiError(`network error: ${errorMessage(e)}`, 0, 'unavailable');
  }
  const text = await res.text().catch(() => '');
  /** @type {any} */
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!res.ok) {
    const err = data && typeof data === 'object' && data.error ? data.error : {};
    const retryAfter = Number(res.headers.get('Retry-After'));
    throw new ApiError(
      typeof err.message === 'string' ? err.message : `HTTP ${res.status}`,
      res.status,
      typeof err.code === 'string' ? err.code : STATUS_CODES[res.status] || (res.status >= 500 ? 'internal' : 'bad_request'),
      Number.isFinite(retryAfter) && retryAfter >= 0 ? retryAfter * 1000 : null,
    );
  }
  return data;
}

/** @param {unknown} e */
function isAbort(e) {
  return !!e && typeof e === 'object' && /** @type {{name?: string}} */ (e).name === 'AbortError';
}

/** @param {unknown} e */
function errorMessage(e) {
  return e instanceof Error ? e.message : String(e);
}

/**
 * Fisher–Yates shuffle (a copy).
 * @template T
 * @param {T[]} list
 * @returns {T[]}
 */
function shuffled(list) {
  const a = list.slice();
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a;
}

/** @param {string} s */
function utf8Length(s) {
  return typeof TextEncoder === 'function' ? new TextEncoder().encode(s).length : s.length * 3;
}

/**
 * Sleeps, or rejects with an AbortError when the signal fires.
 * @param {number} ms
 * @param {AbortSignal} [signal]
 * @returns {Promise<void>}
 */
function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(abortError());
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(abortError());
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

function abortError() {
  const e = new Error('aborted');
  e.name = 'AbortError';
  return e;
}

/** @returns {Storage|null} */
function defaultStorage() {
  try {
    // Accessing localStorage throws in some sandboxed/third-party contexts.
    return typeof localStorage !== 'undefined' ? localStorage : null;
  } catch {
    return null;
  }
}

/** How many conversations' last seqs are kept in storage. */
const MAX_PERSISTED_CONVS = 500;

// ---------------------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------------------

/**
 * Protocol v1 client. See the module comment and {@link ClientEventMap} for the events.
 */
export class RelaydeskClient extends EventTarget {
  /** @type {Required<Omit<ClientOptions, 'storage'|'autoSubscribe'>> & {storage: Storage|null, autoSubscribe: NonNullable<ClientOptions['autoSubscribe']>}} */
  #o;
  /** @type {ConnectionState} */
  #state = 'closed';
  /** @type {Principal|null} */
  #principal = null;
  /** @type {Map<string, ConvState>} */
  #convs = new Map();
  /** @type {OutboxEntry[]} */
  #outbox = [];
  /** Outbox ids sent on the current connection (or via REST in flight). @type {Set<string>} */
  #sentHere = new Set();
  /** Retry attempts of refused-but-retryable outbox entries. @type {Map<string, number>} */
  #retries = new Map();

  #started = false;
  /** @type {WebSocket|null} */
  #ws = null;
  #welcomed = false;
  #connectedAt = 0;
  /** Consecutive attempts that did not reach `welcome`. */
  #failures = 0;
  /** Consecutive welcomed connections that lasted under 5 s (protects from hot loops). */
  #unstable = 0;
  /** Increments per attempt; stale async continuations compare against it. */
  #gen = 0;
  #maxMessage = 65536;
  /** @type {string[]} */
  #urlOrder = [];
  #urlIndex = 0;

  /** @type {ReturnType<typeof setTimeout>|null} */ #reconnectTimer = null;
  /** @type {ReturnType<typeof setTimeout>|null} */ #handshakeTimer = null;
  /** @type {ReturnType<typeof setTimeout>|null} */ #idleTimer = null;
  /** @type {ReturnType<typeof setTimeout>|null} */ #pongTimer = null;
  /** @type {ReturnType<typeof setTimeout>|null} */ #ackTimer = null;
  /** @type {ReturnType<typeof setTimeout>|null} */ #saveTimer = null;
  /** @type {Set<ReturnType<typeof setTimeout>>} */ #misc = new Set();

  /** @type {AbortController|null} */ #fallbackAbort = null;
  /** @type {Set<string>} conversations being long-polled */ #polls = new Set();
  #restFlushing = false;
  /** @type {(() => void)|null} */ #onlineListener = null;

  /** @param {ClientOptions} opts */
  constructor(opts) {
    super();
    if (!opts || typeof opts.apiBase !== 'string') throw new TypeError('apiBase is required');
    const apiBase = opts.apiBase.replace(/\/+$/, '');
    const fetchImpl = opts.fetchImpl || globalThis.fetch?.bind(globalThis);
    this.#o = {
      apiBase,
      apiToken: opts.apiToken,
      connect: opts.connect || (() => this.#defaultConnect()),
      storage: opts.storage === undefined ? defaultStorage() : opts.storage,
      storageKey: opts.storageKey || 'relaydesk',
      WebSocketImpl: opts.WebSocketImpl || globalThis.WebSocket,
      fetchImpl,
      fallbackAfter: opts.fallbackAfter ?? 4,
      autoSubscribe: opts.autoSubscribe || defaultAutoSubscribe,
      backoffBaseMs: opts.backoffBaseMs ?? 250,
      backoffCapMs: opts.backoffCapMs ?? 10000,
      fallbackRetryMs: opts.fallbackRetryMs ?? 30000,
      pingIntervalMs: opts.pingIntervalMs ?? 20000,
      pongTimeoutMs: opts.pongTimeoutMs ?? 10000,
      handshakeTimeoutMs: opts.handshakeTimeoutMs ?? 15000,
      ackDelayMs: opts.ackDelayMs ?? 250,
      typingThrottleMs: opts.typingThrottleMs ?? 2000,
      longPollWait: opts.longPollWait ?? 25,
    };
    this.#load();
  }

  // ----- public API --------------------------------------------------------------------

  /** Connects, and keeps connected until {@link stop}. */
  start() {
    if (this.#started) return;
    this.#started = true;
    this.#failures = 0;
    this.#unstable = 0;
    if (typeof globalThis.addEventListener === 'function' && !this.#onlineListener) {
      // Back online: retry now instead of waiting for the backoff.
      this.#onlineListener = () => {
        if (this.#started && !this.#ws && this.#reconnectTimer) {
          clearTimeout(this.#reconnectTimer);
          this.#reconnectTimer = null;
          this.#attempt();
        }
      };
      globalThis.addEventListener('online', this.#onlineListener);
    }
    this.#attempt();
  }

  /** Disconnects and stops reconnecting; the outbox stays (persisted). */
  stop() {
    this.#started = false;
    this.#gen++;
    this.#closeSocket(1000, 'client stop');
    this.#detachSocket();
    this.#stopFallback();
    this.#clearTimers();
    if (this.#saveTimer) this.#save();
    if (this.#onlineListener && typeof globalThis.removeEventListener === 'function') {
      globalThis.removeEventListener('online', this.#onlineListener);
    }
    this.#onlineListener = null;
    this.#setState('closed');
  }

  /** @returns {ConnectionState} */
  get state() {
    return this.#state;
  }

  /** @returns {Principal|null} `{id, role, tenant}` from `welcome`, or null */
  get principal() {
    return this.#principal;
  }

  /**
   * Subscribes to a conversation: `{"t":"sub","conv","after":<last contiguous seq>}`, now
   * if connected and again after every reconnect.
   * @param {string} conv
   */
  subscribe(conv) {
    const c = this.#conv(conv);
    c.explicit = true;
    c.optedOut = false;
    if (c.subscribed && (c.subPending || c.synced)) return;
    c.subscribed = true;
    if (this.#state === 'open') this.#sendSub(c);
    else if (this.#state === 'fallback') this.#startPoll(c.id);
  }

  /** @param {string} conv */
  unsubscribe(conv) {
    const c = this.#convs.get(conv);
    if (!c) return;
    c.subscribed = false;
    c.explicit = false;
    c.optedOut = true;
    c.subPending = false;
    c.synced = false;
    c.head = null;
    if (this.#state === 'open') this.#raw({ t: 'unsub', conv });
  }

  /**
   * Queues a message in the (persisted) outbox and sends it when possible; it is re-sent
   * with the same id after every reconnect until accepted or refused for good.
   * @param {string} conv
   * @param {string} text
   * @param {string} [kind]
   * @returns {string} the client message id
   */
  send(conv, text, kind = 'text') {
    const entry = { id: newClientId(), conv, text: String(text), kind };
    this.#outbox.push(entry);
    this.#save();
    if (this.#state === 'open') this.#transmit(entry);
    else if (this.#state === 'fallback') this.#restFlush();
    return entry.id;
  }

  /**
   * Typing indicator; `on` is sent at most once per 2 s per conversation, `off` only
   * after an `on`. Dropped when not connected (typing is ephemeral).
   * @param {string} conv
   * @param {boolean} on
   */
  typing(conv, on) {
    const c = this.#conv(conv);
    if (this.#state !== 'open') return;
    const now = Date.now();
    if (on) {
      if (c.typingOnAt && now - c.typingOnAt < this.#o.typingThrottleMs) return;
      c.typingOnAt = now;
      this.#raw({ t: 'typing', conv, on: true });
    } else if (c.typingOnAt) {
      c.typingOnAt = 0;
      this.#raw({ t: 'typing', conv, on: false });
    }
  }

  /**
   * Read receipt up to `seq` (sent now, or after the next connection).
   * @param {string} conv
   * @param {number} seq
   */
  read(conv, seq) {
    const c = this.#conv(conv);
    if (!(seq > c.readWanted)) return;
    c.readWanted = seq;
    if (this.#state === 'open') this.#flushRead(c);
  }

  /**
   * The messages this client holds for a conversation, sorted by seq, one per seq.
   * @param {string} conv
   * @returns {Message[]}
   */
  messages(conv) {
    const c = this.#convs.get(conv);
    if (!c) return [];
    return [...c.messages.values()].sort((a, b) => a.seq - b.seq);
  }

  /**
   * Outbox entries not yet accepted, in sending order.
   * @param {string} [conv] omitted: every conversation's
   * @returns {OutboxEntry[]}
   */
  pending(conv) {
    return this.#outbox.filter((e) => conv === undefined || e.conv === conv).map((e) => ({ ...e }));
  }

  /**
   * The highest contiguous seq held (0: none).
   * @param {string} conv
   * @returns {number}
   */
  lastSeq(conv) {
    return this.#convs.get(conv)?.lastSeq ?? 0;
  }

  /**
   * Hands the client a page of history fetched over REST
   * (`GET /v1/conversations/{conv}/messages?after=<after>`): every visible message with
   * `seq > after`, in order. Messages above the last contiguous seq extend it (when
   * `after` is not above it) and are emitted as `message` events in order; older ones
   * not held yet are stored and emitted with `history: true`.
   * (Addition to the contract: the widget and the console use it for history after a
   * page reload — the client persists last seqs, not messages.)
   * @param {string} conv
   * @param {Message[]} messages
   * @param {number} [after] the `after` of the request (default 0)
   */
  ingest(conv, messages, after = 0) {
    const c = this.#conv(conv);
    const sorted = messages.filter((m) => m && Number.isInteger(m.seq)).sort((a, b) => a.seq - b.seq);
    const contiguous = after <= c.lastSeq;
    let advanced = false;
    for (const m of sorted) {
      if (m.seq <= c.lastSeq) {
        if (!c.messages.has(m.seq)) {
          c.messages.set(m.seq, m);
          this.#emit('message', { conv, message: m, history: true });
        }
      } else if (contiguous) {
        c.messages.set(m.seq, m);
        c.lastSeq = m.seq;
        advanced = true;
        this.#emit('message', { conv, message: m });
      }
    }
    if (advanced) {
      this.#saveSoon();
      this.#scheduleAck(c);
    }
  }

  // ----- connection ----------------------------------------------------------------------

  /** @returns {Promise<ConnectInfo>} */
  async #defaultConnect() {
    const r = await api(this.#o.apiBase, this.#o.apiToken, 'POST', '/v1/connect-tokens', {}, {
      fetchImpl: this.#o.fetchImpl,
    });
    const urls = Array.isArray(r?.edge_urls) && r.edge_urls.length ? r.edge_urls : r?.edge_url ? [r.edge_url] : [];
    return { token: r?.token, edgeUrls: urls };
  }

  async #attempt() {
    this.#reconnectTimer = null;
    if (!this.#started) return;
    const gen = ++this.#gen;
    if (this.#state !== 'fallback') this.#setState('connecting');
    /** @type {ConnectInfo} */
    let info;
    try {
      info = await this.#o.connect();
      if (!info || typeof info.token !== 'string' || !info.token) throw new Error('connect() gave no token');
    } catch (e) {
      if (gen !== this.#gen || !this.#started) return;
      this.#emitError('connect_failed', errorMessage(e), /** @type {any} */ (e)?.status);
      this.#attemptFailed();
      return;
    }
    if (gen !== this.#gen || !this.#started) return;
    const url = this.#pickUrl((info.edgeUrls || []).filter((u) => typeof u === 'string' && u));
    if (!url) {
      this.#emitError('connect_failed', 'no edge URL');
      this.#attemptFailed();
      return;
    }
    /** @type {WebSocket} */
    let ws;
    try {
      ws = new this.#o.WebSocketImpl(url);
    } catch (e) {
      this.#emitError('connect_failed', errorMessage(e));
      this.#attemptFailed();
      return;
    }
    this.#ws = ws;
    this.#welcomed = false;
    const token = info.token;
    ws.onopen = () => {
      if (this.#ws !== ws) return;
      ws.send(JSON.stringify({ t: 'hello', token }));
    };
    ws.onmessage = (ev) => {
      if (this.#ws !== ws) return;
      this.#onData(ev.data);
    };
    ws.onerror = () => {
      /* a close event follows */
    };
    ws.onclose = (ev) => {
      if (this.#ws !== ws) return;
      this.#ended(ev.code);
    };
    this.#handshakeTimer = setTimeout(() => {
      this.#handshakeTimer = null;
      if (this.#ws === ws && !this.#welcomed) this.#drop(4000, 'handshake timeout');
    }, this.#o.handshakeTimeoutMs);
  }

  /**
   * The next edge URL: a shuffled order, advanced after every connection so a different
   * edge comes first after a failure.
   * @param {string[]} urls
   * @returns {string|undefined}
   */
  #pickUrl(urls) {
    if (!urls.length) return undefined;
    const same = urls.length === this.#urlOrder.length && urls.every((u) => this.#urlOrder.includes(u));
    if (!same) {
      this.#urlOrder = shuffled(urls);
      this.#urlIndex = 0;
    }
    const url = this.#urlOrder[this.#urlIndex % this.#urlOrder.length];
    this.#urlIndex = (this.#urlIndex + 1) % this.#urlOrder.length;
    return url;
  }

  /** A failed attempt (no `welcome`): count it, maybe fall back, and schedule the next. */
  #attemptFailed() {
    this.#failures++;
    if (this.#failures >= this.#o.fallbackAfter && this.#state !== 'fallback' && this.#started) {
      this.#startFallback();
    }
    this.#scheduleReconnect();
  }

  #scheduleReconnect() {
    if (!this.#started || this.#reconnectTimer) return;
    let delay;
    if (this.#state === 'fallback') {
      delay = this.#o.fallbackRetryMs;
    } else {
      const exp = Math.min(this.#failures + this.#unstable, 30);
      const ceiling = Math.min(this.#o.backoffCapMs, this.#o.backoffBaseMs * 2 ** exp);
      delay = Math.random() * ceiling; // full jitter
    }
    this.#reconnectTimer = setTimeout(() => this.#attempt(), delay);
  }

  /**
   * The socket ended (closed by the edge, the network, or us after a timeout).
   * @param {number} code
   */
  #ended(code) {
    const welcomed = this.#welcomed;
    const lived = Date.now() - this.#connectedAt;
    this.#detachSocket();
    if (!this.#started) return;
    if (TERMINAL_CLOSE.has(code)) {
      this.#started = false;
      this.#stopFallback();
      this.#clearTimers();
      this.#setState('closed', code);
      return;
    }
    // 4501: the next attempt fetches a new token through connect(), as every attempt does.
    if (welcomed) {
      this.#unstable = lived < 5000 ? this.#unstable + 1 : 0;
      if (this.#state === 'open') this.#setState('connecting');
      this.#scheduleReconnect();
    } else {
      this.#attemptFailed();
    }
  }

  /**
   * Abandons the current socket (dead or stuck) and handles it as closed with `code`.
   * @param {number} code
   * @param {string} reason
   */
  #drop(code, reason) {
    this.#closeSocket(code, reason);
    this.#ended(code);
  }

  /**
   * @param {number} code
   * @param {string} reason
   */
  #closeSocket(code, reason) {
    const ws = this.#ws;
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
    try {
      ws.close(code, reason);
    } catch {
      /* already closed */
    }
  }

  /** Forgets the socket and the per-connection state. */
  #detachSocket() {
    const ws = this.#ws;
    if (ws) ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
    this.#ws = null;
    this.#welcomed = false;
    this.#sentHere.clear();
    for (const t of [this.#handshakeTimer, this.#idleTimer, this.#pongTimer]) if (t) clearTimeout(t);
    this.#handshakeTimer = this.#idleTimer = this.#pongTimer = null;
    for (const c of this.#convs.values()) {
      c.head = null;
      c.subPending = false;
      c.synced = false;
      c.typingOnAt = 0;
    }
  }

  #clearTimers() {
    for (const t of [this.#reconnectTimer, this.#handshakeTimer, this.#idleTimer, this.#pongTimer, this.#ackTimer]) {
      if (t) clearTimeout(t);
    }
    this.#reconnectTimer = this.#handshakeTimer = this.#idleTimer = this.#pongTimer = this.#ackTimer = null;
    for (const t of this.#misc) clearTimeout(t);
    this.#misc.clear();
  }

  /**
   * A timer cleared by stop().
   * @param {() => void} fn
   * @param {number} ms
   */
  #later(fn, ms) {
    const t = setTimeout(() => {
      this.#misc.delete(t);
      fn();
    }, ms);
    this.#misc.add(t);
  }

  /** Any inbound frame proves the connection alive: re-arm the idle ping. */
  #alive() {
    if (this.#pongTimer) {
      clearTimeout(this.#pongTimer);
      this.#pongTimer = null;
    }
    if (this.#idleTimer) clearTimeout(this.#idleTimer);
    const ws = this.#ws;
    this.#idleTimer = setTimeout(() => {
      this.#idleTimer = null;
      if (this.#ws !== ws || !this.#welcomed) return;
      this.#raw({ t: 'ping' });
      this.#pongTimer = setTimeout(() => {
        this.#pongTimer = null;
        if (this.#ws === ws) this.#drop(4000, 'pong timeout');
      }, this.#o.pongTimeoutMs);
    }, this.#o.pingIntervalMs);
  }

  /**
   * Sends one frame on the open socket.
   * @param {ClientFrame} frame
   * @returns {boolean} whether it was handed to the socket
   */
  #raw(frame) {
    const ws = this.#ws;
    if (!ws || !this.#welcomed) return false;
    try {
      ws.send(JSON.stringify(frame));
      return true;
    } catch {
      return false;
    }
  }

  // ----- inbound frames ------------------------------------------------------------------

  /** @param {unknown} data */
  #onData(data) {
    if (typeof data !== 'string') return; // the protocol is text frames only
    /** @type {ServerFrame} */
    let f;
    try {
      f = JSON.parse(data);
    } catch {
      return;
    }
    if (!f || typeof f !== 'object' || typeof f.t !== 'string') return;
    if (this.#welcomed) this.#alive();
    switch (f.t) {
      case 'welcome':
        return this.#onWelcome(f);
      case 'accepted':
        return this.#onAccepted(f);
      case 'error':
        return this.#onError(f);
      case 'msg':
        return this.#onMsg(f);
      case 'subbed':
        return this.#onSubbed(f);
      case 'read':
        return this.#emit('read', { conv: f.conv, by: f.by, seq: f.seq });
      case 'typing':
        return this.#emit('typing', { conv: f.conv, by: f.by, on: f.on });
      case 'conv':
        return this.#onConv(f);
      case 'presence':
        return this.#emit('presence', { frame: f });
      case 'pong':
        return;
      default:
        return; // frames may be added
    }
  }

  /** @param {WelcomeFrame} f */
  #onWelcome(f) {
    if (this.#welcomed) return;
    this.#welcomed = true;
    this.#connectedAt = Date.now();
    this.#failures = 0;
    if (this.#handshakeTimer) clearTimeout(this.#handshakeTimer);
    this.#handshakeTimer = null;
    if (Number.isFinite(f.max_message) && f.max_message > 0) this.#maxMessage = f.max_message;
    this.#principal = { id: f.principal, role: f.role, tenant: f.tenant };
    this.#stopFallback();
    this.#setState('open');
    this.#emit('welcome', { frame: f });
    if (this.#state !== 'open') return; // a listener stopped the client
    this.#alive();
    for (const c of this.#convs.values()) if (c.subscribed) this.#sendSub(c);
    for (const e of this.#outbox.slice()) this.#transmit(e);
    for (const c of this.#convs.values()) {
      this.#flushRead(c);
      if (c.lastSeq > c.ackSent) this.#scheduleAck(c);
    }
  }

  /** @param {ConvState} c */
  #sendSub(c) {
    c.head = null;
    c.synced = false;
    c.subPending = this.#raw({ t: 'sub', conv: c.id, after: c.lastSeq });
  }

  /** @param {SubbedFrame} f */
  #onSubbed(f) {
    const c = this.#conv(f.conv);
    c.head = Number(f.head) || 0;
    c.subPending = false;
    c.synced = true;
    this.#emit('subbed', { conv: c.id, head: c.head });
  }

  /** @param {MsgFrame} f */
  #onMsg(f) {
    if (typeof f.conv !== 'string' || !Number.isInteger(f.seq)) return;
    const c = this.#conv(f.conv);
    if (!c.subscribed && !c.optedOut) {
      // The server subscribed us (a visitor's open conversation, an agent's assigned one):
      // track it so it is resumed after reconnects.
      c.subscribed = true;
    }
    if (f.seq <= c.lastSeq) return; // replay overlapping what we hold
    const { t: _t, ...message } = f;
    const contiguous =
      f.seq === c.lastSeq + 1 ||
      // Replayed after `subbed`: every seq up to the head that did not come is one this
      // principal may not see (a visitor is never sent notes).
      (c.head !== null && f.seq - 1 <= c.head) ||
      // Visitors skip staff-only seqs; once subbed, the server guarantees no real gap.
      (c.synced && this.#principal?.role === 'visitor');
    if (!contiguous) {
      // A gap: resume from the last contiguous seq (unless a sub is on its way already,
      // whose replay will bring this message).
      if (!c.subPending && c.subscribed) this.#sendSub(c);
      return;
    }
    c.messages.set(f.seq, /** @type {Message} */ (message));
    c.lastSeq = f.seq;
    this.#saveSoon();
    this.#emit('message', { conv: c.id, message: /** @type {Message} */ (message) });
    this.#scheduleAck(c);
  }

  /** @param {AcceptedFrame} f */
  #onAccepted(f) {
    this.#accepted({ id: f.id, conv: f.conv, seq: f.seq, msg: f.msg, ts: f.ts });
  }

  /** @param {{id: string, conv: string, seq: number, msg: string, ts: number}} a */
  #accepted(a) {
    const i = this.#outbox.findIndex((e) => e.id === a.id);
    if (i >= 0) {
      this.#outbox.splice(i, 1);
      this.#save();
    }
    this.#retries.delete(a.id);
    this.#sentHere.delete(a.id);
    this.#emit('accepted', a);
  }

  /** @param {ErrorFrame} f */
  #onError(f) {
    this.#emit('error', { frame: f });
    const retryable = RETRYABLE.has(f.code);
    if (f.id) {
      const entry = this.#outbox.find((e) => e.id === f.id);
      if (!entry) return;
      if (retryable) {
        this.#retryLater(entry, f.retry_after_ms);
      } else {
        this.#fail(entry, f.code, f.message);
      }
      return;
    }
    // A refused `sub` (conv named, or not: re-send the subs still waiting).
    const waiting = [...this.#convs.values()].filter((c) => c.subPending && (!f.conv || c.id === f.conv));
    if (!waiting.length) return;
    if (retryable) {
      const ws = this.#ws;
      this.#later(() => {
        if (this.#ws !== ws || !this.#welcomed) return;
        for (const c of waiting) if (c.subscribed && c.subPending) this.#sendSub(c);
      }, f.retry_after_ms ?? 1000);
    } else if (f.conv) {
      for (const c of waiting) {
        c.subPending = false;
        c.subscribed = false;
        c.explicit = false;
      }
    }
  }

  /** @param {ConvFrame} f */
  #onConv(f) {
    if (typeof f.conv === 'string') {
      const known = this.#convs.get(f.conv);
      const me = this.#principal;
      if (!known?.subscribed) {
        if (this.#o.autoSubscribe(f, me)) {
          const c = this.#conv(f.conv);
          c.subscribed = true;
          c.optedOut = false;
          if (this.#state === 'open') this.#sendSub(c);
          else if (this.#state === 'fallback') this.#startPoll(c.id);
        }
      } else if (
        me &&
        me.role !== 'visitor' &&
        !known.explicit &&
        (f.event === 'transferred' || f.event === 'escalated' || (f.event === 'assigned' && f.assignee)) &&
        f.assignee !== me.id
      ) {
        // The server took it away from this agent: stop resuming it after reconnects.
        known.subscribed = false;
        known.optedOut = true;
      }
    }
    this.#emit('conv', { frame: f });
  }

  // ----- outbox --------------------------------------------------------------------------

  /**
   * Sends an outbox entry on the open socket (once per connection).
   * @param {OutboxEntry} e
   */
  #transmit(e) {
    if (this.#sentHere.has(e.id)) return;
    /** @type {SendFrame} */
    const frame = { t: 'send', id: e.id, conv: e.conv, kind: e.kind, body: { text: e.text } };
    const json = JSON.stringify(frame);
    if (utf8Length(json) > this.#maxMessage) {
      // The edge would close the connection (1009) and we would resend it forever.
      this.#fail(e, 'too_large', `message over ${this.#maxMessage} bytes`);
      return;
    }
    if (!this.#ws || !this.#welcomed) return;
    try {
      this.#ws.send(json);
      this.#sentHere.add(e.id);
    } catch {
      /* resent after the reconnect */
    }
  }

  /**
   * A retryable refusal: send the same entry again later on this connection.
   * @param {OutboxEntry} e
   * @param {number|undefined} retryAfterMs
   */
  #retryLater(e, retryAfterMs) {
    const n = (this.#retries.get(e.id) || 0) + 1;
    this.#retries.set(e.id, n);
    const delay = retryAfterMs ?? Math.min(30000, 500 * 2 ** Math.min(n, 10)) * (0.5 + Math.random() / 2);
    const ws = this.#ws;
    this.#sentHere.add(e.id); // not re-sent by anything else meanwhile on this socket
    this.#later(() => {
      if (this.#ws !== ws) return; // a new connection resends it anyway
      this.#sentHere.delete(e.id);
      if (this.#outbox.includes(e)) this.#transmit(e);
    }, delay);
  }

  /**
   * A refusal for good: drop the entry and tell.
   * @param {OutboxEntry} e
   * @param {string} code
   * @param {string} message
   */
  #fail(e, code, message) {
    const i = this.#outbox.indexOf(e);
    if (i < 0) return;
    this.#outbox.splice(i, 1);
    this.#retries.delete(e.id);
    this.#sentHere.delete(e.id);
    this.#save();
    this.#emit('failed', { id: e.id, conv: e.conv, code, message });
  }

  // ----- acks and receipts -----------------------------------------------------------------

  /** @param {ConvState} c */
  #scheduleAck(c) {
    if (c.lastSeq <= c.ackSent || this.#ackTimer) return;
    this.#ackTimer = setTimeout(() => {
      this.#ackTimer = null;
      if (this.#state !== 'open') return; // flushed after the next welcome
      for (const s of this.#convs.values()) {
        if (s.lastSeq > s.ackSent && this.#raw({ t: 'ack', conv: s.id, seq: s.lastSeq })) s.ackSent = s.lastSeq;
      }
    }, this.#o.ackDelayMs);
  }

  /** @param {ConvState} c */
  #flushRead(c) {
    if (c.readWanted > c.readSent && this.#raw({ t: 'read', conv: c.id, seq: c.readWanted })) {
      c.readSent = c.readWanted;
    }
  }

  // ----- REST fallback -----------------------------------------------------------------------

  #startFallback() {
    this.#setState('fallback');
    this.#fallbackAbort = new AbortController();
    for (const c of this.#convs.values()) if (c.subscribed) this.#startPoll(c.id);
    this.#restFlush();
  }

  #stopFallback() {
    if (this.#fallbackAbort) this.#fallbackAbort.abort();
    this.#fallbackAbort = null;
    this.#polls.clear();
  }

  /**
   * Long-polls a conversation while in fallback.
   * @param {string} conv
   */
  async #startPoll(conv) {
    const ctl = this.#fallbackAbort;
    if (!ctl || this.#polls.has(conv)) return;
    this.#polls.add(conv);
    const signal = ctl.signal;
    let errors = 0;
    try {
      while (!signal.aborted && this.#convs.get(conv)?.subscribed) {
        const c = this.#conv(conv);
        const after = c.lastSeq;
        try {
          const r = await api(
            this.#o.apiBase,
            this.#o.apiToken,
            'GET',
            `/v1/conversations/${encodeURIComponent(conv)}/messages?after=${after}&wait=${this.#o.longPollWait}&limit=200`,
            undefined,
            { fetchImpl: this.#o.fetchImpl, signal },
          );
          if (signal.aborted) break;
          this.ingest(conv, Array.isArray(r?.messages) ? r.messages : [], after);
          errors = 0;
        } catch (e) {
          if (signal.aborted || isAbort(e)) break;
          const err = /** @type {ApiError} */ (e);
          this.#emitError(err.code || 'poll_failed', errorMessage(e), err.status);
          if (err.status === 403 || err.status === 404) {
            c.subscribed = false;
            break;
          }
          errors++;
          await sleep(Math.min(30000, 1000 * 2 ** Math.min(errors, 5)) * (0.5 + Math.random() / 2), signal);
        }
      }
    } catch {
      /* aborted */
    } finally {
      if (this.#fallbackAbort === ctl) this.#polls.delete(conv);
    }
  }

  /** Sends the outbox over REST, one entry at a time in order, while in fallback. */
  async #restFlush() {
    if (this.#restFlushing) return;
    const ctl = this.#fallbackAbort;
    if (!ctl) return;
    this.#restFlushing = true;
    const signal = ctl.signal;
    let errors = 0;
    try {
      while (!signal.aborted && this.#state === 'fallback' && this.#outbox.length) {
        const e = this.#outbox[0];
        try {
          const r = await api(
            this.#o.apiBase,
            this.#o.apiToken,
            'POST',
            `/v1/conversations/${encodeURIComponent(e.conv)}/messages`,
            { kind: e.kind, body: { text: e.text } },
            { fetchImpl: this.#o.fetchImpl, signal, headers: { 'Idempotency-Key': e.id } },
          );
          errors = 0;
          this.#accepted({
            id: e.id,
            conv: r?.conv ?? e.conv,
            seq: Number(r?.seq),
            msg: r?.msg,
            ts: Number(r?.ts),
          });
          // Whatever answered, never loop on the same entry.
          if (this.#outbox[0] === e) this.#outbox.shift();
        } catch (err) {
          if (signal.aborted || isAbort(err)) break;
          const ae = /** @type {ApiError} */ (err);
          const status = ae.status || 0;
          const retry = status === 0 || status === 401 || status === 408 || status === 429 || status >= 500 || RETRYABLE.has(ae.code);
          if (!retry) {
            this.#fail(e, ae.code, ae.message);
            continue;
          }
          this.#emitError(ae.code || 'send_failed', ae.message, status);
          errors++;
          const wait = ae.retryAfterMs ?? Math.min(30000, 500 * 2 ** Math.min(errors, 6)) * (0.5 + Math.random() / 2);
          await sleep(wait, signal);
        }
      }
    } catch {
      /* aborted */
    } finally {
      this.#restFlushing = false;
    }
  }

  // ----- state, events, storage ------------------------------------------------------------

  /**
   * @param {string} id
   * @returns {ConvState}
   */
  #conv(id) {
    let c = this.#convs.get(id);
    if (!c) {
      c = {
        id,
        subscribed: false,
        explicit: false,
        optedOut: false,
        lastSeq: 0,
        messages: new Map(),
        head: null,
        subPending: false,
        synced: false,
        ackSent: 0,
        readWanted: 0,
        readSent: 0,
        typingOnAt: 0,
      };
      this.#convs.set(id, c);
    }
    return c;
  }

  /**
   * @param {ConnectionState} s
   * @param {number} [code] the close code that made it `closed`
   */
  #setState(s, code) {
    if (this.#state === s) return;
    this.#state = s;
    this.#emit('state', code === undefined ? { state: s } : { state: s, code });
  }

  /**
   * @param {string} type
   * @param {unknown} detail
   */
  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  /**
   * An `error` event that is not a frame of the edge (connection or REST trouble).
   * @param {string} code
   * @param {string} message
   * @param {number} [status]
   */
  #emitError(code, message, status) {
    this.#emit('error', { frame: { t: 'client_error', code, message, status } });
  }

  #load() {
    const s = this.#o.storage;
    if (!s) return;
    try {
      const raw = s.getItem(this.#o.storageKey);
      if (!raw) return;
      const data = JSON.parse(raw);
      if (Array.isArray(data?.outbox)) {
        this.#outbox = data.outbox.filter(
          /** @param {any} e */ (e) => e && typeof e.id === 'string' && typeof e.conv === 'string' && typeof e.text === 'string',
        ).map(/** @param {any} e */ (e) => ({ id: e.id, conv: e.conv, text: e.text, kind: typeof e.kind === 'string' ? e.kind : 'text' }));
      }
      if (data?.seqs && typeof data.seqs === 'object') {
        for (const [conv, seq] of Object.entries(data.seqs)) {
          if (Number.isInteger(seq) && /** @type {number} */ (seq) > 0) this.#conv(conv).lastSeq = /** @type {number} */ (seq);
        }
      }
    } catch {
      /* unreadable: start empty */
    }
  }

  /** Saves within a second (last seqs; outbox changes are saved at once). */
  #saveSoon() {
    if (!this.#o.storage || this.#saveTimer) return;
    this.#saveTimer = setTimeout(() => this.#save(), 1000);
  }

  #save() {
    if (this.#saveTimer) clearTimeout(this.#saveTimer);
    this.#saveTimer = null;
    const s = this.#o.storage;
    if (!s) return;
    /** @type {Record<string, number>} */
    const seqs = {};
    const withSeq = [...this.#convs.values()].filter((c) => c.lastSeq > 0);
    for (const c of withSeq.slice(-MAX_PERSISTED_CONVS)) seqs[c.id] = c.lastSeq;
    try {
      s.setItem(this.#o.storageKey, JSON.stringify({ v: 1, outbox: this.#outbox, seqs }));
    } catch {
      /* quota or private mode: keep in memory */
    }
  }
}

/**
 * Default `autoSubscribe`: the server subscribed this principal to the conversation.
 * @param {ConvFrame} f
 * @param {Principal|null} me
 * @returns {boolean}
 */
function defaultAutoSubscribe(f, me) {
  if (!me || me.role === 'visitor') return true;
  return f.assignee === me.id || f.event === 'joined';
}
