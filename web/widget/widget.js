// @ts-check
/**
 * @file Relaydesk chat widget: one `<script>` tag adds a support chat to any page.
 *
 *   <script src="https://CORE/widget.js" data-site-key="site_…" async></script>
 *
 * Optional attributes: `data-name`, `data-email`, `data-external-id` and `data-hash`
 * (identity verification: the tenant's HMAC-SHA256 of the external id),
 * `data-prechat="true"` (ask name and email before the first message),
 * `data-support-type` (the support type key new conversations go to).
 *
 * Served by core-api at `/widget.js`. A classic script (no module, no build step): it
 * derives the API origin from its own `src`, loads the protocol client with
 * `import(apiBase + '/client/relaydesk.js')`, and renders everything inside an open
 * shadow root attached to one host element appended to `document.body`, with its own
 * styles: it neither reads nor changes the host page's styles. The only global is
 * `window.Relaydesk` with `open()`, `close()` and `identify({...})`.
 *
 * Stable test hooks (`data-testid`): `widget-bubble`, `widget-input`, `widget-send`,
 * `widget-message` (with `data-seq`, empty while pending, `data-kind` and `data-state`:
 * sending | sent | read | failed), `widget-typing`, `widget-csat`, `widget-csat-1`…`5`,
 * `widget-status` (with `data-online`). Also `widget-panel`, `widget-unread`,
 * `widget-prechat`, `widget-prechat-name`, `widget-prechat-email`, `widget-prechat-submit`.
 */
(() => {
  'use strict';

  // -------------------------------------------------------------------------------------
  // Types
  // -------------------------------------------------------------------------------------

  /** @typedef {typeof import('../client/relaydesk.js')} ClientModule */
  /** @typedef {import('../client/relaydesk.js').RelaydeskClient} RelaydeskClient */
  /** @typedef {import('../client/relaydesk.js').Message} Message */
  /** @typedef {import('../client/relaydesk.js').Actor} Actor */
  /** @typedef {import('../client/relaydesk.js').ConvFrame} ConvFrame */

  /**
   * Who the visitor is, from the script's attributes or `Relaydesk.identify()`.
   * @typedef {object} Identity
   * @property {string} [externalId] the tenant's own user id (needs `hash`)
   * @property {string} [hash] HMAC-SHA256 of `externalId` with the tenant's identity secret
   * @property {string} [name]
   * @property {string} [email]
   */

  /**
   * The argument of `Relaydesk.identify()`: camelCase or the API's snake_case.
   * @typedef {object} IdentifyInput
   * @property {string} [externalId]
   * @property {string} [external_id]
   * @property {string} [hash]
   * @property {string} [name]
   * @property {string} [email]
   */

  /**
   * The widget's options, from the script tag.
   * @typedef {object} WidgetOptions
   * @property {string} siteKey
   * @property {string} apiBase core-api origin (of the script's src)
   * @property {Identity} identity
   * @property {boolean} prechat ask name and email before the first message
   * @property {string|null} supportType
   */

  /**
   * `GET /v1/widget/config?site_key=`.
   * @typedef {object} WidgetConfig
   * @property {{name: string}} tenant
   * @property {boolean} online
   * @property {number} agents_online
   */

  /**
   * `POST /v1/widget/sessions` → 201.
   * @typedef {object} SessionAnswer
   * @property {{id: string}} visitor
   * @property {string} token visitor API token
   * @property {string} connect_token connection token for the edge
   * @property {string} [edge_url]
   * @property {string[]} [edge_urls]
   */

  /**
   * A conversation as `GET /v1/conversations/{id}` shows it to its visitor.
   * @typedef {object} Conversation
   * @property {string} id
   * @property {'queued'|'assigned'|'resolved'|'snoozed'|string} status
   * @property {{score: number, comment: string|null}|null} [csat]
   */

  /**
   * What the widget keeps in localStorage (one key per site key), so that a reload keeps
   * the same visitor and conversation.
   * @typedef {object} Saved
   * @property {string|null} token visitor API token
   * @property {string|null} visitorId
   * @property {string} identity key of the identity the session was made for
   * @property {string|null} convId the current conversation
   * @property {number} readSeq highest seq the visitor has seen (unread badge)
   * @property {number} staffRead highest seq of the conversation read by staff (receipts)
   * @property {Record<string, number>} csat scores given, by conversation id
   * @property {{qid: string, text: string}[]} queue texts written before the conversation existed
   * @property {boolean} prechatDone
   */

  /**
   * The live session.
   * @typedef {object} Session
   * @property {string} token
   * @property {string} visitorId
   * @property {string|null} connectToken the session's own connection token, used once
   * @property {string[]} edgeUrls
   */

  /**
   * One row of the message list.
   * @typedef {object} Item
   * @property {string} key DOM identity (stable from pending to accepted to received)
   * @property {number|null} seq null while pending
   * @property {'own'|'other'|'event'} side
   * @property {string} kind
   * @property {string} text
   * @property {string} [author]
   * @property {number} [ts]
   * @property {'sending'|'sent'|'read'|'failed'|null} state own messages only
   */

  /** @typedef {Error & {status?: number, code?: string}} HttpError */

  // -------------------------------------------------------------------------------------
  // Boot
  // -------------------------------------------------------------------------------------

  const w = /** @type {Window & {Relaydesk?: unknown}} */ (window);
  if (w.Relaydesk) return; // loaded twice

  const script = /** @type {HTMLScriptElement|null} */ (
    (document.currentScript instanceof HTMLScriptElement ? document.currentScript : null) ||
      Array.from(document.querySelectorAll('script[data-site-key]')).find((s) =>
        /\/widget\.js(?:[?#]|$)/.test(/** @type {HTMLScriptElement} */ (s).src),
      ) ||
      null
  );
  if (!script || !script.src) return;
  const siteKey = (script.dataset.siteKey || '').trim();
  // Not configured (e.g. a page template whose placeholder was not replaced).
  if (!siteKey || /^__[A-Z0-9_]+__$/.test(siteKey)) return;

  const attr = (/** @type {string} */ name) => {
    const v = script.getAttribute(name);
    return v && v.trim() ? v.trim() : undefined;
  };

  /** @type {WidgetOptions} */
  const opts = {
    siteKey,
    apiBase: new URL(script.src, location.href).origin,
    identity: {
      externalId: attr('data-external-id'),
      hash: attr('data-hash'),
      name: attr('data-name'),
      email: attr('data-email'),
    },
    prechat: attr('data-prechat') === 'true',
    supportType: attr('data-support-type') || null,
  };

  const STORE_KEY = `relaydesk.widget.${siteKey}`;
  const CONFIG_REFRESH_MS = 60000;
  const TYPING_SHOW_MS = 8000;
  const TYPING_IDLE_MS = 3000;

  /** @type {Promise<ClientModule|null>} */
  const libReady = import(opts.apiBase + '/client/relaydesk.js').then(
    (m) => /** @type {ClientModule} */ (m),
    (e) => {
      console.error('Relaydesk: could not load the client library', e);
      return null;
    },
  );

  // -------------------------------------------------------------------------------------
  // Storage
  // -------------------------------------------------------------------------------------

  /** @returns {Storage|null} */
  function storage() {
    try {
      return window.localStorage;
    } catch {
      return null;
    }
  }

  /** @returns {Saved} */
  function loadSaved() {
    /** @type {Saved} */
    const empty = {
      token: null,
      visitorId: null,
      identity: '',
      convId: null,
      readSeq: 0,
      staffRead: 0,
      csat: {},
      queue: [],
      prechatDone: false,
    };
    try {
      const raw = storage()?.getItem(STORE_KEY);
      if (!raw) return empty;
      const s = JSON.parse(raw);
      return {
        token: typeof s.token === 'string' ? s.token : null,
        visitorId: typeof s.visitorId === 'string' ? s.visitorId : null,
        identity: typeof s.identity === 'string' ? s.identity : '',
        convId: typeof s.convId === 'string' ? s.convId : null,
        readSeq: Number.isInteger(s.readSeq) ? s.readSeq : 0,
        staffRead: Number.isInteger(s.staffRead) ? s.staffRead : 0,
        csat: s.csat && typeof s.csat === 'object' ? s.csat : {},
        queue: Array.isArray(s.queue) ? s.queue.filter((/** @type {any} */ q) => q && typeof q.text === 'string') : [],
        prechatDone: !!s.prechatDone,
      };
    } catch {
      return empty;
    }
  }

  const saved = loadSaved();

  function save() {
    try {
      storage()?.setItem(STORE_KEY, JSON.stringify(saved));
    } catch {
      /* private mode or full: the session lasts this page */
    }
  }

  /**
   * A key telling which identity a stored session belongs to.
   * @param {Identity} id
   */
  function identityKey(id) {
    return id.externalId ? `ext:${id.externalId}` : 'anon';
  }

  // -------------------------------------------------------------------------------------
  // HTTP
  // -------------------------------------------------------------------------------------

  /**
   * JSON call to core-api (the client library's `api` when loaded).
   * @param {string|null} token
   * @param {string} method
   * @param {string} path
   * @param {unknown} [body]
   * @returns {Promise<any>}
   */
  async function http(token, method, path, body) {
    const lib = await libReady;
    if (lib) return lib.api(opts.apiBase, token, method, path, body);
    /** @type {Record<string, string>} */
    const headers = { Accept: 'application/json' };
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    /** @type {Response} */
    let res;
    try {
      res = await fetch(opts.apiBase + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    } catch (e) {
      throw Object.assign(new Error('network error'), { status: 0, code: 'unavailable' });
    }
    const data = await res.json().catch(() => null);
    if (!res.ok) {
      throw Object.assign(new Error(data?.error?.message || `HTTP ${res.status}`), {
        status: res.status,
        code: data?.error?.code || 'internal',
      });
    }
    return data;
  }

  /**
   * A call with the visitor token; a 401 renews the session and retries once.
   * @param {string} method
   * @param {string} path
   * @param {unknown} [body]
   * @returns {Promise<any>}
   */
  async function visitorApi(method, path, body) {
    const s = await sessionReady();
    try {
      return await http(s.token, method, path, body);
    } catch (e) {
      if (/** @type {HttpError} */ (e).status !== 401) throw e;
      const fresh = await renewSession(s);
      return http(fresh.token, method, path, body);
    }
  }

  /** @param {number} ms */
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  /** @param {unknown} e */
  const statusOf = (e) => /** @type {HttpError} */ (e)?.status ?? 0;

  /** @param {unknown} e */
  const retryable = (e) => {
    const s = statusOf(e);
    return s === 0 || s === 408 || s === 429 || s >= 500;
  };

  // -------------------------------------------------------------------------------------
  // Session
  // -------------------------------------------------------------------------------------

  /** @type {Session|null} */
  let session = null;
  /** @type {Promise<Session>|null} */
  let sessionPromise = null;
  /** @type {Promise<Session>|null} */
  let renewing = null;
  /** The identity in force (attributes, replaced by identify() and the pre-chat form). */
  let identity = opts.identity;

  /** @returns {Promise<Session>} */
  function sessionReady() {
    if (!sessionPromise) sessionPromise = establish();
    return sessionPromise;
  }

  /**
   * The stored session when it belongs to the same identity, else a new one.
   * @returns {Promise<Session>}
   */
  async function establish() {
    if (saved.token && saved.visitorId && saved.identity === identityKey(identity)) {
      session = { token: saved.token, visitorId: saved.visitorId, connectToken: null, edgeUrls: [] };
      return session;
    }
    return adopt(await createSession(identity));
  }

  /**
   * `POST /v1/widget/sessions`, retried while the network or the server fails.
   * @param {Identity} who
   * @returns {Promise<SessionAnswer>}
   */
  async function createSession(who) {
    /** @type {Record<string, string>} */
    const visitor = {};
    if (who.externalId) {
      visitor.external_id = who.externalId;
      if (who.hash) visitor.hash = who.hash;
    }
    if (who.name) visitor.name = who.name;
    if (who.email) visitor.email = who.email;
    const body = Object.keys(visitor).length ? { site_key: siteKey, visitor } : { site_key: siteKey };
    let delay = 1000;
    for (;;) {
      try {
        return await http(null, 'POST', '/v1/widget/sessions', body);
      } catch (e) {
        if (statusOf(e) === 401 && who.externalId) {
          // The identity hash does not verify: chat anonymously rather than not at all.
          console.warn('Relaydesk: identity verification failed (data-hash); continuing anonymously');
          return createSession({ name: who.name, email: who.email });
        }
        if (!retryable(e)) {
          showFatal('Chat is not available on this site.');
          throw e;
        }
        await sleep(delay);
        delay = Math.min(delay * 2, 60000);
      }
    }
  }

  /**
   * Makes a new session the current one. A different visitor starts without a
   * conversation.
   * @param {SessionAnswer} a
   * @returns {Session}
   */
  function adopt(a) {
    const urls = Array.isArray(a.edge_urls) && a.edge_urls.length ? a.edge_urls : a.edge_url ? [a.edge_url] : [];
    session = { token: a.token, visitorId: a.visitor.id, connectToken: a.connect_token || null, edgeUrls: urls };
    if (saved.visitorId !== a.visitor.id) {
      saved.convId = null;
      saved.readSeq = 0;
      saved.staffRead = 0;
      saved.csat = {};
      convId = null;
      convStatus = null;
      resetView();
    }
    saved.token = a.token;
    saved.visitorId = a.visitor.id;
    saved.identity = identityKey(identity);
    save();
    return session;
  }

  /**
   * The visitor token was refused (expired): a new session for the same identity, a new
   * client, and the conversation reloaded when the visitor is the same.
   * @param {Session} stale
   * @returns {Promise<Session>}
   */
  function renewSession(stale) {
    if (session && session !== stale) {
      // Renewed already; a client still on the stale token moves to the new one.
      if (clientSession === stale) void restartClient();
      return Promise.resolve(session);
    }
    if (!renewing) {
      renewing = (async () => {
        const s = adopt(await createSession(identity));
        sessionPromise = Promise.resolve(s);
        if (clientSession) void restartClient();
        return s;
      })().finally(() => {
        renewing = null;
      });
    }
    return renewing;
  }

  /**
   * A new identity (identify() or the pre-chat form).
   * @param {Identity} who
   */
  async function switchIdentity(who) {
    await sessionReady().catch(() => null);
    identity = who;
    const s = adopt(await createSession(who));
    sessionPromise = Promise.resolve(s);
    await restartClient();
    void trackPageview(true);
  }

  // -------------------------------------------------------------------------------------
  // Conversation state
  // -------------------------------------------------------------------------------------

  /** @type {RelaydeskClient|null} */
  let client = null;
  /** @type {string|null} */
  let convId = saved.convId;
  /** @type {string|null} */
  let convStatus = null;
  /** Own messages of this page: seq → client id (keeps one DOM node from pending on). */
  const ownIdBySeq = new Map();
  /** Accepted own messages whose `msg` frame has not arrived yet: id → item data. */
  /** @type {Map<string, {seq: number, text: string, kind: string, ts: number}>} */
  const acceptedLocal = new Map();
  /** Texts of own messages by client id (for failed ones). @type {Map<string, {text: string, kind: string}>} */
  const sentTexts = new Map();
  /** Refused for good. @type {Map<string, {text: string, kind: string}>} */
  const failedLocal = new Map();
  /** Highest seq a staff member has read. */
  let readUpTo = saved.staffRead;
  /** Who is typing: actor id → name and expiry timer. @type {Map<string, {name: string, timer: ReturnType<typeof setTimeout>}>} */
  const typers = new Map();
  /** @type {Promise<string>|null} */
  let creatingConv = null;
  /** Conversations left for a new one (resolved past their reopen window). */
  const retired = new Set();
  let qidCounter = 0;

  function resetView() {
    ownIdBySeq.clear();
    acceptedLocal.clear();
    failedLocal.clear();
    readUpTo = 0;
    for (const t of typers.values()) clearTimeout(t.timer);
    typers.clear();
    hideCsat();
    scheduleRender();
  }

  /** @param {Message} m */
  function isOwn(m) {
    return (!!session && m.from?.id === session.visitorId) || m.from?.role === 'visitor';
  }

  /** The session the running client was made with. @type {Session|null} */
  let clientSession = null;
  /** Restarts run one after the other. @type {Promise<void>} */
  let clientChain = Promise.resolve();

  /**
   * Starts (or restarts) the client for the current session.
   * @returns {Promise<void>}
   */
  function restartClient() {
    clientChain = clientChain.then(startClient, startClient);
    return clientChain;
  }

  async function startClient() {
    const lib = await libReady;
    if (!lib) {
      showFatal('Chat could not be loaded. Please try again later.');
      return;
    }
    const s = await sessionReady();
    if (client) client.stop();
    clientSession = s;
    const c = new lib.RelaydeskClient({
      apiBase: opts.apiBase,
      apiToken: s.token,
      storage: storage(),
      storageKey: `${STORE_KEY}.client.${s.visitorId}`,
      connect: async () => {
        if (s.connectToken) {
          const token = s.connectToken;
          s.connectToken = null;
          if (s.edgeUrls.length) return { token, edgeUrls: s.edgeUrls };
        }
        try {
          const r = await lib.api(opts.apiBase, s.token, 'POST', '/v1/connect-tokens', {});
          const urls = Array.isArray(r?.edge_urls) && r.edge_urls.length ? r.edge_urls : [r?.edge_url].filter(Boolean);
          return { token: r.token, edgeUrls: urls };
        } catch (e) {
          if (statusOf(e) === 401) void renewSession(s).catch(() => {});
          throw e;
        }
      },
    });
    client = c;
    for (const p of c.pending()) sentTexts.set(p.id, { text: p.text, kind: p.kind });
    c.addEventListener('message', (e) => onMessage(/** @type {CustomEvent} */ (e).detail));
    c.addEventListener('accepted', (e) => onAccepted(/** @type {CustomEvent} */ (e).detail));
    c.addEventListener('failed', (e) => onFailed(/** @type {CustomEvent} */ (e).detail));
    c.addEventListener('typing', (e) => onTyping(/** @type {CustomEvent} */ (e).detail));
    c.addEventListener('read', (e) => onRead(/** @type {CustomEvent} */ (e).detail));
    c.addEventListener('conv', (e) => onConv(/** @type {CustomEvent} */ (e).detail.frame));
    c.addEventListener('state', (e) => onState(/** @type {CustomEvent} */ (e).detail));
    c.start();
    if (convId) await loadConversation(convId);
    void flushQueue();
    scheduleRender();
  }

  /**
   * Loads a stored conversation: its state, its history, then live delivery.
   * @param {string} id
   */
  async function loadConversation(id) {
    /** @type {Conversation} */
    let conv;
    try {
      conv = (await visitorApi('GET', `/v1/conversations/${encodeURIComponent(id)}`))?.conversation;
    } catch (e) {
      if (statusOf(e) === 404 || statusOf(e) === 403) forgetConversation();
      return;
    }
    if (convId !== id) return;
    convStatus = conv?.status || null;
    if (conv?.csat && !saved.csat[id]) {
      saved.csat[id] = conv.csat.score;
      save();
    }
    client?.subscribe(id);
    try {
      const r = await visitorApi('GET', `/v1/conversations/${encodeURIComponent(id)}/messages?limit=500`);
      if (convId === id && client) client.ingest(id, Array.isArray(r?.messages) ? r.messages : [], 0);
    } catch {
      /* the subscription replays what is missing */
    }
    if (convStatus === 'resolved') showCsat();
    scheduleRender();
  }

  function forgetConversation() {
    if (convId) retired.add(convId);
    if (convId && client) client.unsubscribe(convId);
    convId = null;
    convStatus = null;
    saved.convId = null;
    saved.readSeq = 0;
    saved.staffRead = 0;
    save();
    resetView();
  }

  /**
   * The conversation, created on the first message.
   * @returns {Promise<string>}
   */
  function ensureConversation() {
    if (convId) return Promise.resolve(convId);
    if (!creatingConv) {
      creatingConv = (async () => {
        let delay = 1000;
        let supportType = opts.supportType;
        for (;;) {
          try {
            const r = await visitorApi('POST', '/v1/conversations', supportType ? { support_type: supportType } : {});
            /** @type {Conversation} */
            const conv = r.conversation;
            convId = conv.id;
            convStatus = conv.status;
            saved.convId = conv.id;
            saved.readSeq = 0;
            saved.staffRead = 0;
            save();
            client?.subscribe(conv.id);
            return conv.id;
          } catch (e) {
            const st = statusOf(e);
            if ((st === 400 || st === 404) && supportType) {
              console.warn(`Relaydesk: support type "${supportType}" refused; using the default`);
              supportType = null;
              continue;
            }
            if (!retryable(e)) throw e;
            await sleep(delay);
            delay = Math.min(delay * 2, 30000);
          }
        }
      })().finally(() => {
        creatingConv = null;
      });
    }
    return creatingConv;
  }

  /**
   * Sends what was written before the conversation existed (kept across reloads).
   */
  async function flushQueue() {
    if (!saved.queue.length) return;
    let id;
    try {
      id = await ensureConversation();
    } catch (e) {
      showNotice('Your message could not be sent. Please try again later.');
      return;
    }
    while (saved.queue.length && client && convId === id) {
      const q = saved.queue[0];
      const cid = client.send(id, q.text);
      sentTexts.set(cid, { text: q.text, kind: 'text' });
      rekey(`q:${q.qid}`, `id:${cid}`);
      saved.queue.shift();
      save();
    }
    scheduleRender();
  }

  /**
   * Sends the composer's text.
   * @param {string} text
   */
  function sendText(text) {
    if (!convId || !client) {
      saved.queue.push({ qid: `${Date.now().toString(36)}${qidCounter++}`, text });
      save();
      scheduleRender();
      void flushQueue();
      return;
    }
    const cid = client.send(convId, text);
    sentTexts.set(cid, { text, kind: 'text' });
    scheduleRender();
  }

  // ----- client events -------------------------------------------------------------------

  /** @param {{conv: string, message: Message}} d */
  function onMessage(d) {
    if (!convId && !creatingConv && convStatus === null && !retired.has(d.conv)) {
      // The first conversation the server tells us about (e.g. an agent wrote first).
      convId = d.conv;
      saved.convId = d.conv;
      save();
    }
    if (d.conv !== convId) return;
    const m = d.message;
    for (const [id, a] of acceptedLocal) if (a.seq === m.seq) acceptedLocal.delete(id);
    const t = typers.get(m.from?.id);
    if (t) {
      clearTimeout(t.timer);
      typers.delete(m.from.id);
    }
    scheduleRender();
  }

  /** @param {{id: string, conv: string, seq: number, msg: string, ts: number}} d */
  function onAccepted(d) {
    if (d.conv !== convId) return;
    ownIdBySeq.set(d.seq, d.id);
    const sent = sentTexts.get(d.id);
    if (sent && !client?.messages(d.conv).some((m) => m.seq === d.seq)) {
      acceptedLocal.set(d.id, { seq: d.seq, text: sent.text, kind: sent.kind, ts: d.ts });
    }
    scheduleRender();
  }

  /** @param {{id: string, conv: string, code: string, message: string}} d */
  function onFailed(d) {
    const sent = sentTexts.get(d.id);
    const resolvedForGood = d.code === 'forbidden' && ((d.conv === convId && convStatus === 'resolved') || retired.has(d.conv));
    if (resolvedForGood && sent) {
      // Written to a conversation resolved past its reopen window: start a new one with it.
      if (d.conv === convId) forgetConversation();
      saved.queue.push({ qid: `${Date.now().toString(36)}${qidCounter++}`, text: sent.text });
      save();
      rekey(`id:${d.id}`, `q:${saved.queue[saved.queue.length - 1].qid}`);
      scheduleRender();
      void flushQueue();
      return;
    }
    if (d.conv !== convId) return;
    failedLocal.set(d.id, sent || { text: '', kind: 'text' });
    scheduleRender();
  }

  /** @param {{conv: string, by: Actor, on: boolean}} d */
  function onTyping(d) {
    if (d.conv !== convId || !d.by || d.by.role === 'visitor' || d.by.id === session?.visitorId) return;
    const prev = typers.get(d.by.id);
    if (prev) clearTimeout(prev.timer);
    if (d.on) {
      const timer = setTimeout(() => {
        typers.delete(d.by.id);
        renderTyping();
      }, TYPING_SHOW_MS);
      typers.set(d.by.id, { name: d.by.name || 'An agent', timer });
    } else {
      typers.delete(d.by.id);
    }
    renderTyping();
  }

  /** @param {{conv: string, by: Actor, seq: number}} d */
  function onRead(d) {
    if (d.conv !== convId || !d.by || d.by.role === 'visitor') return;
    if (d.seq > readUpTo) {
      readUpTo = d.seq;
      saved.staffRead = d.seq;
      save();
      scheduleRender();
    }
  }

  /** @param {ConvFrame} f */
  function onConv(f) {
    if (!convId && !creatingConv && f.event === 'created' && !retired.has(f.conv)) {
      convId = f.conv;
      saved.convId = f.conv;
      save();
    }
    if (f.conv !== convId) return;
    if (f.status) convStatus = f.status;
    if (f.event === 'resolved') {
      convStatus = 'resolved';
      showCsat();
    } else if (f.event === 'reopened') {
      // A later resolution asks again (a new rating replaces the old one).
      delete saved.csat[f.conv];
      save();
      hideCsat();
    }
  }

  let everOpen = false;
  /** @param {{state: string, code?: number}} d */
  function onState(d) {
    if (d.state === 'open') {
      everOpen = true;
      setConn('');
    } else if (d.state === 'connecting') {
      setConn(everOpen ? 'Reconnecting…' : '');
    } else if (d.state === 'fallback') {
      setConn('Connection is limited: messages may take a little longer.');
    } else if (d.state === 'closed' && d.code) {
      setConn('Chat is unavailable right now.');
    }
  }

  // -------------------------------------------------------------------------------------
  // UI
  // -------------------------------------------------------------------------------------

  const CSS = `
:host { all: initial; }
*, *::before, *::after { box-sizing: border-box; }
[hidden] { display: none !important; }
.root {
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
  color: #111827; -webkit-font-smoothing: antialiased; text-align: left; letter-spacing: normal;
}
button, textarea, input { font: inherit; color: inherit; margin: 0; text-transform: none; letter-spacing: normal; }
button { cursor: pointer; }
:focus { outline: none; }
:focus-visible { outline: 3px solid #0b3d91; outline-offset: 2px; }
.sr-only {
  position: absolute; width: 1px; height: 1px; padding: 0; margin: -1px; overflow: hidden;
  clip: rect(0 0 0 0); white-space: nowrap; border: 0;
}
.bubble {
  position: fixed; right: 20px; bottom: 20px; width: 60px; height: 60px; padding: 0;
  border: 0; border-radius: 50%; background: #1d4ed8; color: #fff;
  display: flex; align-items: center; justify-content: center;
  box-shadow: 0 6px 20px rgba(0, 0, 0, .25);
}
.bubble:hover { background: #1e40af; }
.bubble:focus-visible { outline: 3px solid #0b3d91; outline-offset: 3px; box-shadow: 0 0 0 3px #fff, 0 6px 20px rgba(0, 0, 0, .25); }
.bubble svg { width: 28px; height: 28px; display: block; }
.badge {
  position: absolute; top: -4px; right: -4px; min-width: 22px; height: 22px; padding: 0 6px;
  border-radius: 11px; border: 2px solid #fff; background: #b91c1c; color: #fff;
  font-size: 12px; font-weight: 700; line-height: 18px; text-align: center;
}
.panel {
  position: fixed; right: 20px; bottom: 92px; width: 370px; height: 600px;
  max-height: calc(100vh - 112px); display: flex; flex-direction: column;
  background: #fff; border: 1px solid #d0d5dd; border-radius: 14px; overflow: hidden;
  box-shadow: 0 12px 48px rgba(0, 0, 0, .28);
}
.head { display: flex; align-items: center; gap: 12px; padding: 14px 12px 14px 16px; background: #1d4ed8; color: #fff; }
.title { flex: 1; min-width: 0; }
.name { margin: 0; font-size: 16px; font-weight: 700; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.status { display: flex; align-items: center; gap: 6px; min-height: 19px; font-size: 13px; color: #e0e7ff; }
.dot { width: 8px; height: 8px; border-radius: 50%; background: #cbd5e1; flex: none; }
.status[data-online="true"] .dot { background: #4ade80; }
.status[data-online="unknown"] .dot { display: none; }
.close {
  width: 36px; height: 36px; padding: 0; border: 0; border-radius: 8px; background: transparent;
  color: #fff; font-size: 24px; line-height: 1;
}
.close:hover { background: rgba(255, 255, 255, .16); }
.close:focus-visible { outline: 3px solid #fff; outline-offset: -3px; }
.conn { padding: 6px 16px; background: #fef3c7; color: #78350f; font-size: 13px; }
.log {
  flex: 1; min-height: 0; overflow-y: auto; overscroll-behavior: contain; padding: 16px;
  display: flex; flex-direction: column; gap: 8px; background: #fff;
}
.empty { margin: auto 0; color: #4b5563; text-align: center; }
.row { display: flex; flex-direction: column; max-width: 82%; }
.row.own { align-self: flex-end; align-items: flex-end; }
.row.other { align-self: flex-start; align-items: flex-start; }
.row.event { align-self: center; max-width: 100%; }
.text {
  margin: 0; padding: 8px 12px; border-radius: 16px; white-space: pre-wrap;
  overflow-wrap: anywhere; word-break: break-word;
}
.own .text { background: #1d4ed8; color: #fff; border-bottom-right-radius: 4px; }
.own .text a { color: #fff; }
.other .text { background: #f1f3f5; color: #111827; border-bottom-left-radius: 4px; }
.other .text a { color: #1d4ed8; }
.event .text { padding: 2px 8px; background: transparent; color: #4b5563; font-size: 12px; text-align: center; }
.meta { margin-top: 2px; padding: 0 4px; font-size: 12px; color: #4b5563; }
.row[data-state="failed"] .meta { color: #b91c1c; }
.typing { padding: 0 16px 6px; font-size: 13px; font-style: italic; color: #4b5563; }
.csat { margin: 0 12px 8px; padding: 12px; border: 1px solid #d0d5dd; border-radius: 10px; background: #f9fafb; }
.csat p { margin: 0 0 8px; font-weight: 600; }
.stars { display: flex; gap: 6px; margin-top: 8px; }
.stars button {
  width: 40px; height: 40px; padding: 0; border: 1px solid #9ca3af; border-radius: 8px;
  background: #fff; color: #4b5563; font-size: 20px; line-height: 1;
}
.stars:hover button { color: #b45309; border-color: #b45309; }
.stars button:hover ~ button { color: #4b5563; border-color: #9ca3af; }
.stars button:disabled { cursor: default; }
.csat label { display: block; margin-bottom: 4px; font-size: 13px; color: #374151; }
.csat textarea, .prechat input {
  width: 100%; padding: 8px 10px; border: 1px solid #6b7280; border-radius: 8px; background: #fff; color: #111827;
}
.csat textarea { resize: vertical; min-height: 40px; max-height: 120px; }
.composer { display: flex; align-items: flex-end; gap: 8px; padding: 10px 12px; border-top: 1px solid #e5e7eb; background: #fff; }
.input {
  flex: 1; min-width: 0; min-height: 40px; max-height: 120px; padding: 9px 12px; resize: none;
  border: 1px solid #6b7280; border-radius: 10px; background: #fff; color: #111827; line-height: 1.4;
}
.input::placeholder, .csat textarea::placeholder, .prechat input::placeholder { color: #6b7280; }
.primary {
  height: 40px; padding: 0 16px; border: 0; border-radius: 10px; background: #1d4ed8; color: #fff; font-weight: 600;
}
.primary:hover { background: #1e40af; }
.primary:disabled { background: #6b7280; cursor: default; }
.prechat { flex: 1; overflow-y: auto; padding: 16px; display: flex; flex-direction: column; gap: 12px; }
.prechat p { margin: 0; }
.prechat label { display: flex; flex-direction: column; gap: 4px; font-size: 13px; font-weight: 600; }
.prechat input { font-weight: 400; font-size: 14px; }
.error-text { color: #b91c1c; font-size: 13px; }
.notice { padding: 6px 16px; background: #fee2e2; color: #7f1d1d; font-size: 13px; }
@media (max-width: 479px) {
  .panel { top: 0; right: 0; bottom: 0; left: 0; width: auto; height: auto; max-height: none; border: 0; border-radius: 0; }
  .root.is-open .bubble { display: none; }
}
@media (prefers-reduced-motion: no-preference) {
  .panel:not([hidden]) { animation: rd-in .16s ease-out; }
  @keyframes rd-in { from { opacity: 0; transform: translateY(8px); } to { opacity: 1; transform: none; } }
}
`;

  const ICON_CHAT =
    '<svg viewBox="0 0 24 24" aria-hidden="true" focusable="false"><path fill="currentColor" d="M4 3h16a2 2 0 0 1 2 2v11a2 2 0 0 1-2 2H9l-5 4v-4H4a2 2 0 0 1-2-2V5a2 2 0 0 1 2-2zm3 6a1.5 1.5 0 1 0 0 3 1.5 1.5 0 0 0 0-3zm5 0a1.5 1.5 0 1 0 0 3 1.5 1.5 0 0 0 0-3zm5 0a1.5 1.5 0 1 0 0 3 1.5 1.5 0 0 0 0-3z"/></svg>';

  /**
   * Creates an element.
   * @template {keyof HTMLElementTagNameMap} K
   * @param {K} tag
   * @param {Record<string, string>} [attrs]
   * @param {(Node|string)[]} [children]
   * @returns {HTMLElementTagNameMap[K]}
   */
  function el(tag, attrs = {}, children = []) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === 'class') e.className = v;
      else e.setAttribute(k, v);
    }
    for (const c of children) e.append(c);
    return e;
  }

  const host = document.createElement('relaydesk-widget');
  host.setAttribute(
    'style',
    'all: initial !important; display: block !important; position: fixed !important; ' +
      'right: 0 !important; bottom: 0 !important; width: 0 !important; height: 0 !important; ' +
      'z-index: 2147483000 !important; overflow: visible !important;',
  );
  const shadow = host.attachShadow({ mode: 'open' });

  const root = el('div', { class: 'root' });
  const bubble = el('button', {
    class: 'bubble',
    type: 'button',
    'data-testid': 'widget-bubble',
    'aria-label': 'Open chat',
    'aria-expanded': 'false',
    'aria-controls': 'rd-panel',
  });
  bubble.innerHTML = ICON_CHAT;
  const badge = el('span', { class: 'badge', 'data-testid': 'widget-unread', 'aria-hidden': 'true' });
  badge.hidden = true;
  bubble.append(badge);

  const tenantName = el('h2', { class: 'name', id: 'rd-title' }, ['Support']);
  const statusDot = el('span', { class: 'dot', 'aria-hidden': 'true' });
  const statusText = el('span', {}, ['']);
  const status = el('div', { class: 'status', 'data-testid': 'widget-status', 'data-online': 'unknown' }, [
    statusDot,
    statusText,
  ]);
  const closeBtn = el('button', { class: 'close', type: 'button', 'aria-label': 'Close chat' }, ['×']);
  const head = el('div', { class: 'head' }, [el('div', { class: 'title' }, [tenantName, status]), closeBtn]);
  const conn = el('div', { class: 'conn', role: 'status' });
  conn.hidden = true;
  const notice = el('div', { class: 'notice', role: 'alert' });
  notice.hidden = true;

  const log = el('div', {
    class: 'log',
    role: 'log',
    'aria-live': 'polite',
    'aria-relevant': 'additions',
    'aria-label': 'Messages',
    tabindex: '0',
  });
  const empty = el('p', { class: 'empty' }, ['Hi! How can we help you today?']);
  const typingSlot = el('div', {});
  const csatSlot = el('div', {});

  // Pre-chat form.
  const preName = el('input', { type: 'text', name: 'name', autocomplete: 'name', required: '', maxlength: '200', 'data-testid': 'widget-prechat-name' });
  const preEmail = el('input', { type: 'email', name: 'email', autocomplete: 'email', required: '', maxlength: '320', 'data-testid': 'widget-prechat-email' });
  const preError = el('p', { class: 'error-text', role: 'alert' });
  preError.hidden = true;
  const preSubmit = el('button', { class: 'primary', type: 'submit', 'data-testid': 'widget-prechat-submit' }, ['Start chat']);
  const prechat = el('form', { class: 'prechat', 'data-testid': 'widget-prechat', 'aria-label': 'Before we start', novalidate: '' }, [
    el('p', {}, ['Please tell us who you are before we start.']),
    el('label', {}, ['Name', preName]),
    el('label', {}, ['Email', preEmail]),
    preError,
    preSubmit,
  ]);
  prechat.hidden = true;

  const input = el('textarea', {
    class: 'input',
    id: 'rd-input',
    rows: '1',
    placeholder: 'Write a message…',
    'data-testid': 'widget-input',
    maxlength: '10000',
  });
  const sendBtn = el('button', { class: 'primary', type: 'submit', 'data-testid': 'widget-send' }, ['Send']);
  const composer = el('form', { class: 'composer' }, [
    el('label', { class: 'sr-only', for: 'rd-input' }, ['Message']),
    input,
    sendBtn,
  ]);

  const panel = el(
    'div',
    { class: 'panel', id: 'rd-panel', role: 'dialog', 'aria-labelledby': 'rd-title', 'aria-label': 'Chat', 'data-testid': 'widget-panel' },
    [head, conn, notice, prechat, log, typingSlot, csatSlot, composer],
  );
  panel.hidden = true;
  root.append(panel, bubble);

  function mountStyles() {
    try {
      if ('adoptedStyleSheets' in shadow && typeof CSSStyleSheet === 'function' && 'replaceSync' in CSSStyleSheet.prototype) {
        const sheet = new CSSStyleSheet();
        sheet.replaceSync(CSS);
        shadow.adoptedStyleSheets = [sheet];
        return;
      }
    } catch {
      /* fall back to a style element */
    }
    shadow.append(el('style', {}, [CSS]));
  }
  mountStyles();
  shadow.append(root);

  // ----- open / close ----------------------------------------------------------------------

  let isOpen = false;

  function openPanel() {
    if (isOpen) return;
    isOpen = true;
    panel.hidden = false;
    root.classList.add('is-open');
    bubble.setAttribute('aria-expanded', 'true');
    updatePrechat();
    renderUnread();
    scrollToEnd(true);
    const target = !prechat.hidden ? preName : input;
    setTimeout(() => target.focus(), 0);
    markRead();
  }

  function closePanel() {
    if (!isOpen) return;
    isOpen = false;
    const hadFocus = shadow.activeElement && panel.contains(shadow.activeElement);
    panel.hidden = true;
    root.classList.remove('is-open');
    bubble.setAttribute('aria-expanded', 'false');
    renderUnread();
    if (hadFocus) bubble.focus();
  }

  bubble.addEventListener('click', () => (isOpen ? closePanel() : openPanel()));
  closeBtn.addEventListener('click', closePanel);
  root.addEventListener('keydown', (e) => {
    if (e.key === 'Escape' && isOpen) {
      e.stopPropagation();
      closePanel();
    }
  });

  // ----- composer ------------------------------------------------------------------------

  /** @type {ReturnType<typeof setTimeout>|null} */
  let typingIdle = null;

  function stopTyping() {
    if (typingIdle) clearTimeout(typingIdle);
    typingIdle = null;
    if (convId && client) client.typing(convId, false);
  }

  function autosize() {
    input.style.height = 'auto';
    input.style.height = `${Math.min(input.scrollHeight + 2, 120)}px`;
  }

  input.addEventListener('input', () => {
    autosize();
    if (!convId || !client) return;
    if (input.value.trim()) {
      client.typing(convId, true);
      if (typingIdle) clearTimeout(typingIdle);
      typingIdle = setTimeout(stopTyping, TYPING_IDLE_MS);
    } else {
      stopTyping();
    }
  });

  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
      e.preventDefault();
      submit();
    }
  });

  composer.addEventListener('submit', (e) => {
    e.preventDefault();
    submit();
  });

  function submit() {
    const text = input.value.trim();
    if (!text) return;
    if (needsPrechat()) {
      updatePrechat();
      return;
    }
    input.value = '';
    autosize();
    stopTyping();
    sendText(text);
    scrollToEnd(true);
    input.focus();
  }

  // ----- pre-chat --------------------------------------------------------------------------

  function needsPrechat() {
    return (
      opts.prechat && !saved.prechatDone && !convId && !saved.queue.length && !identity.name && !identity.email && !identity.externalId
    );
  }

  function updatePrechat() {
    const show = needsPrechat();
    prechat.hidden = !show;
    log.hidden = show;
    composer.hidden = show;
  }

  prechat.addEventListener('submit', async (e) => {
    e.preventDefault();
    const name = preName.value.trim();
    const email = preEmail.value.trim();
    if (!name || !email || !preEmail.checkValidity()) {
      preError.textContent = !name ? 'Please enter your name.' : 'Please enter a valid email address.';
      preError.hidden = false;
      (!name ? preName : preEmail).focus();
      return;
    }
    preError.hidden = true;
    preSubmit.disabled = true;
    try {
      await switchIdentity({ ...identity, name, email });
      saved.prechatDone = true;
      save();
      updatePrechat();
      input.focus();
    } catch {
      preError.textContent = 'Something went wrong. Please try again.';
      preError.hidden = false;
    } finally {
      preSubmit.disabled = false;
    }
  });

  // ----- rendering -------------------------------------------------------------------------

  /** DOM nodes of the message list by item key. @type {Map<string, HTMLElement>} */
  const nodes = new Map();
  let renderQueued = false;

  function scheduleRender() {
    if (renderQueued) return;
    renderQueued = true;
    queueMicrotask(() => {
      renderQueued = false;
      render();
    });
  }

  /**
   * Moves a node to a new key (a queued text that became an outbox entry).
   * @param {string} from
   * @param {string} to
   */
  function rekey(from, to) {
    const n = nodes.get(from);
    if (!n) return;
    nodes.delete(from);
    nodes.set(to, n);
  }

  /** @returns {Item[]} */
  function items() {
    /** @type {Item[]} */
    const list = [];
    if (convId && client) {
      const held = client.messages(convId);
      const heldSeqs = new Set();
      for (const m of held) {
        heldSeqs.add(m.seq);
        if (m.kind === 'note' || m.kind === 'suggestion') continue;
        const own = isOwn(m);
        const id = ownIdBySeq.get(m.seq);
        list.push({
          key: id ? `id:${id}` : `seq:${m.seq}`,
          seq: m.seq,
          side: m.kind === 'event' ? 'event' : own ? 'own' : 'other',
          kind: m.kind,
          text: typeof m.body?.text === 'string' ? m.body.text : '',
          author: own ? undefined : m.from?.name || (m.from?.role === 'bot' ? 'Assistant' : 'Support'),
          ts: m.ts,
          state: own ? (m.seq <= readUpTo ? 'read' : 'sent') : null,
        });
      }
      for (const [id, a] of acceptedLocal) {
        if (heldSeqs.has(a.seq)) continue;
        list.push({ key: `id:${id}`, seq: a.seq, side: 'own', kind: a.kind, text: a.text, ts: a.ts, state: a.seq <= readUpTo ? 'read' : 'sent' });
      }
      list.sort((x, y) => /** @type {number} */ (x.seq) - /** @type {number} */ (y.seq));
      for (const p of client.pending(convId)) {
        list.push({ key: `id:${p.id}`, seq: null, side: 'own', kind: p.kind, text: p.text, state: 'sending' });
      }
    }
    for (const [id, f] of failedLocal) {
      list.push({ key: `id:${id}`, seq: null, side: 'own', kind: f.kind, text: f.text, state: 'failed' });
    }
    for (const q of saved.queue) {
      list.push({ key: `q:${q.qid}`, seq: null, side: 'own', kind: 'text', text: q.text, state: 'sending' });
    }
    return list;
  }

  /** @param {number|undefined} ts */
  function time(ts) {
    if (!ts) return '';
    try {
      return new Date(ts).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
    } catch {
      return '';
    }
  }

  const STATE_TEXT = { sending: 'Sending…', sent: 'Sent', read: 'Read', failed: 'Not delivered' };

  /**
   * Text with http(s) links as anchors (built as nodes: nothing is parsed as HTML).
   * @param {HTMLElement} p
   * @param {string} text
   */
  function fillText(p, text) {
    p.textContent = '';
    const re = /\bhttps?:\/\/[^\s<>"']+[^\s<>"'.,;:!?)\]]/g;
    let last = 0;
    for (const m of text.matchAll(re)) {
      const i = /** @type {number} */ (m.index);
      if (i > last) p.append(text.slice(last, i));
      p.append(el('a', { href: m[0], target: '_blank', rel: 'noopener noreferrer nofollow' }, [m[0]]));
      last = i + m[0].length;
    }
    if (last < text.length) p.append(text.slice(last));
  }

  /**
   * Updates (or creates) the node of an item.
   * @param {Item} it
   * @returns {HTMLElement}
   */
  function nodeFor(it) {
    let n = nodes.get(it.key);
    if (!n) {
      n = el('div', { 'data-testid': 'widget-message' }, [el('p', { class: 'text' }), el('div', { class: 'meta' })]);
      nodes.set(it.key, n);
    }
    n.className = `row ${it.side}`;
    n.dataset.seq = it.seq === null ? '' : String(it.seq);
    n.dataset.kind = it.kind;
    if (it.state) n.dataset.state = it.state;
    else delete n.dataset.state;
    const p = /** @type {HTMLElement} */ (n.firstChild);
    if (p.dataset.text !== it.text) {
      p.dataset.text = it.text;
      fillText(p, it.text);
    }
    const meta = /** @type {HTMLElement} */ (n.lastChild);
    const parts = [];
    if (it.side === 'other' && it.author) parts.push(it.author);
    const t = time(it.ts);
    if (t && it.side !== 'event') parts.push(t);
    if (it.state) parts.push(STATE_TEXT[it.state]);
    const metaText = parts.join(' · ');
    if (meta.textContent !== metaText) meta.textContent = metaText;
    meta.hidden = !metaText;
    return n;
  }

  function render() {
    const list = items();
    const nearEnd = log.scrollHeight - log.scrollTop - log.clientHeight < 80;
    const keep = new Set(list.map((i) => i.key));
    for (const [k, n] of nodes) {
      if (!keep.has(k)) {
        n.remove();
        nodes.delete(k);
      }
    }
    if (list.length) empty.remove();
    else if (!empty.isConnected) log.prepend(empty);
    const offset = empty.isConnected ? 1 : 0;
    list.forEach((it, i) => {
      const n = nodeFor(it);
      const at = log.children[i + offset] || null;
      if (at !== n) log.insertBefore(n, at);
    });
    renderTyping();
    renderUnread();
    if (nearEnd) scrollToEnd(false);
    markRead();
  }

  /** @param {boolean} force */
  function scrollToEnd(force) {
    if (!isOpen && !force) return;
    requestAnimationFrame(() => {
      log.scrollTop = log.scrollHeight;
    });
  }

  function renderTyping() {
    const names = [...typers.values()].map((t) => t.name);
    if (!names.length) {
      typingSlot.textContent = '';
      return;
    }
    const text = names.length === 1 ? `${names[0]} is typing…` : `${names.slice(0, -1).join(', ')} and ${names.at(-1)} are typing…`;
    let n = /** @type {HTMLElement|null} */ (typingSlot.firstElementChild);
    if (!n) {
      n = el('div', { class: 'typing', 'data-testid': 'widget-typing', role: 'status' });
      typingSlot.append(n);
    }
    if (n.textContent !== text) n.textContent = text;
  }

  /** Messages from others the visitor has not seen. */
  function unreadCount() {
    if (!convId || !client) return 0;
    return client.messages(convId).filter((m) => m.seq > saved.readSeq && !isOwn(m) && m.kind === 'text').length;
  }

  function renderUnread() {
    const n = isOpen && document.visibilityState === 'visible' ? 0 : unreadCount();
    badge.hidden = n === 0;
    badge.textContent = n > 99 ? '99+' : String(n);
    const label = isOpen ? 'Close chat' : n ? `Open chat, ${n} unread message${n === 1 ? '' : 's'}` : 'Open chat';
    if (bubble.getAttribute('aria-label') !== label) bubble.setAttribute('aria-label', label);
  }

  /** Read receipt for the latest seq while the panel is open and the page visible. */
  function markRead() {
    if (!isOpen || document.visibilityState !== 'visible' || !convId || !client) return;
    const latest = client.lastSeq(convId);
    if (latest > 0) client.read(convId, latest);
    if (latest > saved.readSeq) {
      saved.readSeq = latest;
      save();
      renderUnread();
    }
  }

  document.addEventListener('visibilitychange', () => {
    markRead();
    renderUnread();
  });

  /** @param {string} text */
  function setConn(text) {
    conn.textContent = text;
    conn.hidden = !text;
  }

  /** @param {string} text */
  function showNotice(text) {
    notice.textContent = text;
    notice.hidden = !text;
  }

  /** @param {string} text */
  function showFatal(text) {
    showNotice(text);
    composer.hidden = true;
  }

  // ----- CSAT ----------------------------------------------------------------------------

  function hideCsat() {
    csatSlot.textContent = '';
  }

  function showCsat() {
    const id = convId;
    if (!id || csatSlot.firstChild) return;
    const box = el('section', { class: 'csat', 'data-testid': 'widget-csat', 'aria-labelledby': 'rd-csat-q' });
    if (saved.csat[id]) {
      box.append(el('p', { role: 'status' }, ['Thanks for your feedback!']));
      csatSlot.append(box);
      return;
    }
    const q = el('p', { id: 'rd-csat-q' }, ['How was your conversation?']);
    const comment = el('textarea', { id: 'rd-csat-comment', rows: '2', maxlength: '2000', placeholder: 'Tell us more (optional)' });
    const err = el('p', { class: 'error-text', role: 'alert' });
    err.hidden = true;
    const stars = el('div', { class: 'stars', role: 'group', 'aria-label': 'Rating from 1 to 5 stars' });
    const labels = ['very bad', 'bad', 'okay', 'good', 'excellent'];
    for (let s = 1; s <= 5; s++) {
      const b = el('button', { type: 'button', 'data-testid': `widget-csat-${s}`, 'aria-label': `${s} star${s > 1 ? 's' : ''}, ${labels[s - 1]}` }, ['★']);
      b.addEventListener('click', () => rate(s));
      stars.append(b);
    }
    box.append(q, el('label', { for: 'rd-csat-comment' }, ['Add a comment (optional), then choose a rating:']), comment, stars, err);
    csatSlot.append(box);
    scrollToEnd(false);

    /** @param {number} score */
    async function rate(score) {
      const buttons = stars.querySelectorAll('button');
      buttons.forEach((b) => (b.disabled = true));
      err.hidden = true;
      const text = comment.value.trim();
      try {
        await visitorApi('POST', `/v1/conversations/${encodeURIComponent(/** @type {string} */ (id))}/csat`, text ? { score, comment: text } : { score });
        saved.csat[/** @type {string} */ (id)] = score;
        save();
        box.textContent = '';
        box.append(el('p', { role: 'status', tabindex: '-1' }, ['Thanks for your feedback!']));
        /** @type {HTMLElement} */ (box.firstChild).focus();
      } catch (e) {
        if (statusOf(e) === 409) {
          hideCsat(); // reopened meanwhile: nothing to rate
          return;
        }
        buttons.forEach((b) => (b.disabled = false));
        err.textContent = 'Your rating could not be sent. Please try again.';
        err.hidden = false;
      }
    }
  }

  // ----- header: tenant name and online status ---------------------------------------------

  async function loadConfig() {
    try {
      /** @type {WidgetConfig} */
      const c = await http(null, 'GET', `/v1/widget/config?site_key=${encodeURIComponent(siteKey)}`);
      const name = c?.tenant?.name || 'Support';
      tenantName.textContent = name;
      panel.setAttribute('aria-label', `Chat with ${name}`);
      status.dataset.online = c?.online ? 'true' : 'false';
      statusText.textContent = c?.online ? 'Online — we typically reply in minutes' : 'Offline — leave a message';
    } catch {
      /* keep what is shown; retried with the next refresh */
    }
    // Without a WebSocket no `conv` frame comes: notice a resolution by polling.
    if (client?.state === 'fallback' && convId && convStatus !== 'resolved') {
      try {
        const r = await visitorApi('GET', `/v1/conversations/${encodeURIComponent(convId)}`);
        if (r?.conversation?.status === 'resolved') {
          convStatus = 'resolved';
          showCsat();
        }
      } catch {
        /* next time */
      }
    }
  }

  // ----- page views --------------------------------------------------------------------------

  let lastTracked = '';

  /**
   * `POST /v1/widget/pageviews` for the current page (once per URL unless forced).
   * @param {boolean} [force]
   * @returns {Promise<void>}
   */
  async function trackPageview(force = false) {
    const url = location.href;
    if (!force && url === lastTracked) return;
    lastTracked = url;
    await visitorApi('POST', '/v1/widget/pageviews', {
      url: url.slice(0, 2048),
      title: (document.title || '').slice(0, 500),
      referrer: (document.referrer || '').slice(0, 2048),
    }).catch(() => {
      /* analytics only */
    });
  }

  function watchNavigation() {
    // SPA navigations: history.pushState does not fire an event of its own.
    const later = () => setTimeout(() => void trackPageview(), 50);
    window.addEventListener('popstate', later);
    const original = history.pushState;
    history.pushState = function pushState(...args) {
      const r = original.apply(this, /** @type {any} */ (args));
      later();
      return r;
    };
  }

  // -------------------------------------------------------------------------------------
  // Public API and start
  // -------------------------------------------------------------------------------------

  /** @type {Promise<void>} */
  let ready = Promise.resolve();

  /** @param {IdentifyInput} v */
  function normalizeIdentity(v) {
    /** @type {Identity} */
    const id = {};
    const ext = v?.externalId ?? v?.external_id;
    if (typeof ext === 'string' && ext) id.externalId = ext;
    if (typeof v?.hash === 'string' && v.hash) id.hash = v.hash;
    if (typeof v?.name === 'string' && v.name) id.name = v.name;
    if (typeof v?.email === 'string' && v.email) id.email = v.email;
    return id;
  }

  w.Relaydesk = Object.freeze({
    /** Opens the chat panel. */
    open() {
      void ready.then(openPanel);
    },
    /** Closes the chat panel. */
    close() {
      void ready.then(closePanel);
    },
    /**
     * Tells who the visitor is: `{externalId (or external_id), hash, name, email}`.
     * Another visitor than the current one starts without the current conversation.
     * @param {IdentifyInput} v
     * @returns {Promise<void>}
     */
    identify(v) {
      const next = normalizeIdentity(v);
      ready = ready.then(() => switchIdentity(next)).catch((e) => console.error('Relaydesk: identify failed', e));
      return ready;
    },
  });

  async function start() {
    document.body.append(host);
    updatePrechat();
    void loadConfig();
    setInterval(loadConfig, CONFIG_REFRESH_MS);
    try {
      await sessionReady();
    } catch {
      return;
    }
    // Also proves a stored token still valid (a 401 renews the session first).
    await trackPageview();
    watchNavigation();
    await restartClient();
  }

  ready = new Promise((resolve) => {
    const go = () => {
      resolve(undefined);
      void start();
    };
    if (document.body) go();
    else document.addEventListener('DOMContentLoaded', go, { once: true });
  });
})();
