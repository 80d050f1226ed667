// @ts-check
/**
 * Relaydesk agent console: entry module. Logs in, then wires the shared client
 * (`/client/relaydesk.js`) to the store and the views:
 *
 *   login ─▶ Store ◀─ client events (message, accepted, failed, typing, read, conv, presence)
 *              │  ◀─ REST (queue, my conversations, details, agents, support types)
 *              ▼
 *   render: lists.js (left) · pane.js (center) · details.js (right) · team.js (supervisors)
 *
 * Every change goes through the store, which schedules one render per task.
 */

import { byId, isTypingTarget } from './dom.js';
import { armAudio, beep, flashTitle, setUnreadTotal, stopFlash, toast } from './notify.js';
import {
  clearSession, loadClientLib, loadSession, login, makeCaller, messageOf, retryAfterOf, saveSession,
  statusOf,
} from './session.js';
import { Store } from './store.js';
import { conversationTitle, createPane, showDialog } from './pane.js';
import { createDetails } from './details.js';
import { createLists } from './lists.js';
import { createTeam } from './team.js';

/**
 * What the view modules share.
 * @typedef {Object} App
 * @property {Store} store
 * @property {import('./session.js').Session} session
 * @property {(method: string, path: string, body?: unknown) => Promise<any>} call
 * @property {any} client the RelaydeskClient (null if the library failed to load)
 * @property {import('./session.js').ClientLib | null} lib
 * @property {Set<string>} taking conversations being taken by this console
 * @property {(id: string | null) => void} open
 * @property {(id: string) => Promise<void>} take
 * @property {() => Promise<void>} refreshLists
 * @property {() => Promise<void>} refreshQueue
 * @property {() => Promise<void>} refreshAgents
 * @property {(view: 'inbox' | 'team') => void} setView
 * @property {(c: any) => boolean} applyConversation merges an API answer and places it in the lists; true if it just became mine
 * @property {(id: string) => void} afterHandover after a transfer or escalation by me
 */

const NOTICE_KEY = 'relaydesk.console.notice';
const POLL_MS = 10_000;

boot();

function boot() {
  armAudio();
  const tenantParam = new URLSearchParams(location.search).get('tenant')?.trim() ?? '';
  let session = loadSession();
  if (session && tenantParam && session.tenant !== tenantParam) {
    clearSession();
    session = null;
  }
  if (session) void startApp(session);
  else showLogin(tenantParam);
}

// ---- login ---------------------------------------------------------------------------

/** @param {string} tenant */
function showLogin(tenant) {
  byId('app').hidden = true;
  byId('login-view').hidden = false;
  const form = byId('login-form', HTMLFormElement);
  const tenantInput = byId('login-tenant', HTMLInputElement);
  const email = byId('login-email', HTMLInputElement);
  const password = byId('login-password', HTMLInputElement);
  const submit = byId('login-submit', HTMLButtonElement);
  const error = byId('login-error');
  const notice = byId('login-notice');
  tenantInput.value = tenant;
  const pending = sessionStorage.getItem(NOTICE_KEY);
  if (pending) {
    sessionStorage.removeItem(NOTICE_KEY);
    notice.textContent = pending;
    notice.hidden = false;
  }
  (tenant ? email : tenantInput).focus();

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    error.hidden = true;
    const t = tenantInput.value.trim();
    const em = email.value.trim();
    if (!t || !em || !password.value) {
      error.textContent = 'Enter the tenant ID, your email and your password.';
      error.hidden = false;
      (!t ? tenantInput : !em ? email : password).focus();
      return;
    }
    submit.disabled = true;
    submit.textContent = 'Signing in…';
    try {
      const session = await login(t, em, password.value);
      saveSession(session);
      const url = new URL(location.href);
      if (url.searchParams.get('tenant') !== t) {
        url.searchParams.set('tenant', t);
        history.replaceState(null, '', url);
      }
      notice.hidden = true;
      password.value = '';
      void startApp(session);
    } catch (err) {
      const s = statusOf(err);
      error.textContent =
        s === 429 ? `Too many attempts, try again in ${retryAfterOf(err) ?? 30} s.`
          : s === 401 ? 'Wrong email or password.'
          : s === 400 ? `Check the tenant ID and try again (${messageOf(err)}).`
            : s === 404 ? 'Unknown tenant.'
              : s === 0 ? 'The server cannot be reached. Try again in a moment.'
                : `Sign-in failed: ${messageOf(err)}`;
      error.hidden = false;
      password.select();
    } finally {
      submit.disabled = false;
      submit.textContent = 'Sign in';
    }
  });
}

// ---- the console ---------------------------------------------------------------------

/** @param {import('./session.js').Session} session */
async function startApp(session) {
  byId('login-view').hidden = true;
  byId('app').hidden = false;
  const me = session.agent;
  const store = new Store(me);
  const outboxKey = `relaydesk.console.outbox.${me.id}`;
  let loggingOut = false;
  /** @type {'inbox' | 'team'} */
  let view = 'inbox';
  let connState = 'connecting';
  let listErrorShown = false;

  /** @param {string} [notice] shown on the login screen */
  function logout(notice) {
    if (loggingOut) return;
    loggingOut = true;
    try {
      app.client?.stop();
    } catch {
      /* already stopped */
    }
    if (!notice) {
      // A deliberate logout ends the session on the server too (its token and the
      // connection tokens minted with it stop working). Kept alive across the reload.
      void fetch(`${location.origin}/v1/auth/logout`, {
        method: 'POST',
        headers: { Authorization: `Bearer ${session.token}` },
        keepalive: true,
      }).catch(() => {});
    }
    clearSession();
    try {
      if (notice) sessionStorage.setItem(NOTICE_KEY, notice);
      else sessionStorage.removeItem(outboxKey); // a deliberate logout drops what was not sent
    } catch {
      /* storage unavailable */
    }
    location.replace(location.pathname + location.search);
  }

  /** @type {App} */
  const app = {
    store,
    session,
    call: makeCaller(session, () => logout('Your session has expired. Please sign in again.')),
    client: null,
    lib: null,
    taking: new Set(),
    open: (id) => openConversation(id),
    take,
    refreshLists,
    refreshQueue,
    refreshAgents,
    setView,
    applyConversation,
    afterHandover,
  };

  const pane = createPane(app);
  const details = createDetails(app);
  const lists = createLists(app);
  const team = createTeam(app);

  store.onChange = () => {
    lists.render();
    pane.render();
    details.render();
    if (view === 'team') team.render();
    setUnreadTotal(store.totalUnread());
  };

  // Header
  byId('me-name').textContent = me.name;
  byId('me-role').textContent = me.role;
  const statusSel = byId('status-toggle', HTMLSelectElement);
  const statusDot = byId('status-dot');
  setMyStatus(me.status ?? 'offline');
  /** The status this console is setting (its presence frame is no news). @type {string | null} */
  let requestedStatus = null;
  statusSel.addEventListener('change', async () => {
    const want = statusSel.value;
    const prev = session.agent.status ?? 'offline';
    statusSel.disabled = true;
    requestedStatus = want;
    try {
      const res = await app.call('PUT', `/v1/agents/${me.id}/status`, { status: want });
      setMyStatus(res?.agent?.status ?? want);
    } catch (e) {
      setMyStatus(prev);
      toast(`Could not change your status: ${messageOf(e)}`, 'error');
    } finally {
      statusSel.disabled = false;
      requestedStatus = null;
    }
  });
  byId('logout-button').addEventListener('click', () => logout());
  const helpDialog = byId('help-dialog', HTMLDialogElement);
  byId('help-button').addEventListener('click', () => showDialog(helpDialog));
  for (const b of helpDialog.querySelectorAll('[data-close]')) b.addEventListener('click', () => helpDialog.close());
  if (store.isSupervisor) {
    byId('view-switch').hidden = false;
    byId('view-inbox').addEventListener('click', () => setView('inbox'));
    byId('view-team').addEventListener('click', () => setView('team'));
    byId('team-refresh').addEventListener('click', () => void team.refresh());
  }

  /** @param {string} status */
  function setMyStatus(status) {
    session.agent.status = status;
    saveSession(session);
    statusSel.value = status;
    statusDot.className = `status-dot status-dot--${status}`;
    const mine = store.agents.get(me.id);
    if (mine && mine.status !== status) {
      store.agents.set(me.id, { ...mine, status });
      store.changed();
    }
  }

  /** @param {'inbox' | 'team'} v */
  function setView(v) {
    if (v === 'team' && !store.isSupervisor) return;
    view = v;
    byId('inbox-view').hidden = v !== 'inbox';
    byId('team-view').hidden = v !== 'team';
    byId('view-inbox').setAttribute('aria-pressed', String(v === 'inbox'));
    byId('view-team').setAttribute('aria-pressed', String(v === 'team'));
    if (v === 'team') void team.refresh();
    store.changed();
  }

  /** @param {string} state connecting | open | fallback | closed */
  function renderConnection(state) {
    connState = state;
    const el = byId('connection');
    const labels = /** @type {Record<string, string>} */ ({
      connecting: 'Connecting…', open: 'Live', fallback: 'Fallback (polling)', closed: 'Offline',
    });
    el.className = `conn conn--${state}`;
    el.dataset.state = state;
    el.title = state === 'fallback' ? 'Real-time connection unavailable: using HTTP' : '';
    byId('connection-label').textContent = labels[state] ?? state;
  }

  // ---- data loading ------------------------------------------------------------------

  async function refreshQueue() {
    const q = await app.call('GET', '/v1/queue');
    store.setQueue((q?.conversations ?? []).filter((/** @type {any} */ c) => !app.taking.has(c.id)));
    store.queueStats = Array.isArray(q?.support_types) ? q.support_types : [];
    store.changed();
  }

  /** The queue and my open conversations (at start, after every reconnect, and polled). */
  async function refreshLists() {
    const [queue, assigned, snoozed] = await Promise.allSettled([
      refreshQueue(),
      app.call('GET', '/v1/conversations?assignee=me&status=assigned&limit=100'),
      app.call('GET', '/v1/conversations?assignee=me&status=snoozed&limit=100'),
    ]);
    if (assigned.status === 'fulfilled') {
      const list = [
        ...(assigned.value?.conversations ?? []),
        ...(snoozed.status === 'fulfilled' ? snoozed.value?.conversations ?? [] : []),
      ].filter((c) => !c.assignee || c.assignee === me.id);
      store.setMine(list);
    }
    const failure = [queue, assigned].find((r) => r.status === 'rejected');
    if (failure && failure.status === 'rejected') {
      if (!listErrorShown && statusOf(failure.reason) !== 401) {
        toast(`Could not load the conversations: ${messageOf(failure.reason)}`, 'error');
      }
      listErrorShown = true;
    } else listErrorShown = false;
  }

  async function refreshAgents() {
    if (!store.isSupervisor) {
      store.agentsAllowed = false;
      return;
    }
    try {
      const res = await app.call('GET', '/v1/agents?limit=200');
      store.agentsAllowed = true;
      store.agents = new Map();
      for (const a of res?.agents ?? []) {
        store.agents.set(a.id, a);
        if (a.name) store.names.set(a.id, a.name);
        if (a.id === me.id && a.status && a.status !== session.agent.status) setMyStatus(a.status);
      }
      store.changed();
    } catch (e) {
      if (statusOf(e) === 403) store.agentsAllowed = false;
      else throw e;
    }
  }

  async function loadSupportTypes() {
    try {
      const res = await app.call('GET', '/v1/support-types');
      for (const st of res?.support_types ?? []) store.supportTypes.set(st.key, st);
      store.changed();
    } catch (e) {
      console.warn('support types unavailable', e);
    }
  }

  /** @param {any} c */
  function applyConversation(c) {
    if (!c?.id) return false;
    store.upsert(c);
    const became = store.place(c.id);
    if (became) pane.keep(c.id);
    return became;
  }

  /** @type {Map<string, ReturnType<typeof setTimeout>>} */
  const detailTimers = new Map();
  /**
   * Re-reads a conversation (debounced per conversation).
   * @param {string} id
   */
  function fetchConversation(id) {
    clearTimeout(detailTimers.get(id));
    detailTimers.set(id, setTimeout(async () => {
      detailTimers.delete(id);
      try {
        const res = await app.call('GET', `/v1/conversations/${id}`);
        if (res?.conversation) applyConversation(res.conversation);
      } catch (e) {
        if (statusOf(e) !== 403 && statusOf(e) !== 404) console.warn('conversation refresh failed', e);
      }
    }, 150));
  }

  // ---- actions -----------------------------------------------------------------------

  /** @param {string | null} id */
  function openConversation(id) {
    pane.open(id);
    stopFlash();
    const url = new URL(location.href);
    url.hash = id ? `c=${id}` : '';
    history.replaceState(null, '', url);
  }

  /** @param {string} id */
  async function take(id) {
    if (app.taking.has(id)) return;
    app.taking.add(id);
    store.changed();
    try {
      const res = await app.call('POST', `/v1/conversations/${id}/assign`, { agent_id: me.id });
      if (res?.conversation) applyConversation(res.conversation);
      else applyConversation({ id, status: 'assigned', assignee: me.id });
      openConversation(id);
      pane.focusComposer();
      scheduleQueueStats();
    } catch (e) {
      const s = statusOf(e);
      if (s === 409) {
        toast('This conversation was already taken.', 'info');
        void refreshQueue().catch(() => {});
      } else {
        toast(`Could not take the conversation: ${messageOf(e)}`, 'error');
      }
    } finally {
      // The `assigned` frame may trail the answer: it is not a "new assignment" for us.
      setTimeout(() => app.taking.delete(id), 5000);
    }
  }

  /** @param {string} id */
  function afterHandover(id) {
    if (store.openId !== id || store.mine.includes(id) || store.isSupervisor) return;
    const next = store.mine[0] ?? null;
    openConversation(next);
  }

  /** @param {number} dir */
  function navigate(dir) {
    const order = store.navigationOrder();
    if (order.length === 0) return;
    const idx = store.openId ? order.indexOf(store.openId) : -1;
    let next;
    if (idx === -1) next = dir > 0 ? order[0] : order[order.length - 1];
    else next = order[Math.min(order.length - 1, Math.max(0, idx + dir))];
    if (next && next !== store.openId) {
      if (view !== 'inbox') setView('inbox');
      openConversation(next);
    }
  }

  /**
   * A new conversation became mine without my asking.
   * @param {string} id
   */
  function announceAssignment(id) {
    const c = store.convs.get(id);
    const label = c && (c.subject || c.visitor_name) ? `: ${conversationTitle(c)}` : '';
    toast(`New conversation assigned${label}`, 'info');
    if (document.hidden || (store.openId !== null && store.openId !== id)) {
      beep();
      flashTitle('● New conversation');
    }
  }

  // ---- client events -----------------------------------------------------------------

  /** @param {any} f a `conv` frame */
  function onConvFrame(f) {
    const id = f?.conv;
    if (typeof id !== 'string') return;
    const known = store.convs.has(id);
    /** @type {any} */
    const patch = { id };
    if (typeof f.status === 'string') patch.status = f.status;
    else if (f.event === 'queued') patch.status = 'queued';
    else if (f.event === 'resolved') patch.status = 'resolved';
    if (patch.status || 'assignee' in f) patch.assignee = f.assignee ?? null;
    if (typeof f.support_type === 'string') patch.support_type = f.support_type;
    if (f.event === 'resolved' && f.reason) patch.resolution_reason = f.reason;
    const became = applyConversation(patch);
    // Announced at once (timers are throttled in a background tab); the details follow.
    if (became && !app.taking.has(id)) announceAssignment(id);
    // Frames carry the state only: subjects, tags and participants come from a re-read.
    const c = store.convs.get(id);
    const listed = store.queue.includes(id) || store.mine.includes(id);
    if (store.openId === id || (listed && (!known || c?.subject === undefined))) fetchConversation(id);
    if (store.openId === id && f.event === 'transferred' && f.assignee && f.assignee !== me.id && !store.isSupervisor) {
      toast(`This conversation was transferred to ${store.nameOf(f.assignee)}`);
    }
    if (f.event === 'queued' || f.event === 'assigned') scheduleQueueStats();
    if (store.isSupervisor) scheduleTeamRefresh();
  }

  /** @param {any} f a `presence` frame */
  function onPresence(f) {
    if (!f || typeof f.agent !== 'string') return;
    if (f.agent === me.id && typeof f.status === 'string') {
      const prev = session.agent.status;
      const mine = f.status === requestedStatus;
      setMyStatus(f.status);
      if (!mine && prev !== f.status) {
        // Set elsewhere: another console, an admin, or the server (every console gone
        // past the grace period makes an online agent away).
        toast(`Your status is now ${f.status === 'away' ? 'Away' : f.status === 'online' ? 'Online' : 'Offline'}.`, 'info');
      }
    }
    const a = store.agents.get(f.agent);
    if (a && typeof f.status === 'string') {
      store.agents.set(f.agent, { ...a, status: f.status });
      store.changed();
    }
    if (store.isSupervisor) scheduleTeamRefresh();
  }

  /** @param {any} f an `error` frame */
  function onErrorFrame(f) {
    if (!f) return;
    if (f.id) return; // a refused send: reported by `failed`
    if (f.t === 'client_error') {
      // The client's own trouble (connection token, REST fallback). A 401 means the
      // session is over.
      if (f.status === 401) logout('Your session has expired. Please sign in again.');
      else console.warn('relaydesk client', f.code, f.message);
      return;
    }
    if (f.conv && f.conv === store.openId && (f.code === 'forbidden' || f.code === 'not_found')) {
      toast(`This conversation cannot be followed live: ${f.message || f.code}`, 'error');
      return;
    }
    console.warn('relaydesk error frame', f);
  }

  /** @type {ReturnType<typeof setTimeout> | undefined} */
  let teamTimer;
  function scheduleTeamRefresh() {
    if (view !== 'team') return;
    clearTimeout(teamTimer);
    teamTimer = setTimeout(() => void team.refresh(), 800);
  }
  /** @type {ReturnType<typeof setTimeout> | undefined} */
  let statsTimer;
  function scheduleQueueStats() {
    clearTimeout(statsTimer);
    statsTimer = setTimeout(() => void refreshQueue().catch(() => {}), 1500);
  }

  /** @param {any} client */
  function wire(client) {
    /**
     * @param {string} type
     * @param {(detail: any) => void} fn
     */
    const on = (type, fn) =>
      client.addEventListener(type, (/** @type {Event} */ e) => {
        try {
          fn(/** @type {CustomEvent} */ (e).detail ?? {});
        } catch (err) {
          console.error(`console: handling "${type}" failed`, err);
        }
      });
    on('state', (d) => renderConnection(d.state));
    on('welcome', () => {
      void refreshLists();
      if (store.isSupervisor) scheduleTeamRefresh();
    });
    on('message', (d) => {
      const m = d.message;
      if (!m) return;
      const conv = d.conv ?? m.conv;
      const viewing = store.openId === conv && !document.hidden;
      store.addMessage(m.conv ? m : { ...m, conv }, { countUnread: !viewing });
    });
    on('accepted', (d) => store.accepted(d));
    on('failed', (d) => {
      store.failed(d);
      if (d.conv !== store.openId) toast(`A message could not be sent: ${d.message || d.code}`, 'error');
    });
    on('typing', (d) => store.setTyping(d.conv, d.by, Boolean(d.on)));
    on('read', (d) => store.setRead(d.conv, d.by, Number(d.seq) || 0));
    on('conv', (d) => onConvFrame(d.frame ?? d));
    on('presence', (d) => onPresence(d.frame ?? d));
    on('error', (d) => onErrorFrame(d.frame ?? d));
  }

  // ---- keyboard ----------------------------------------------------------------------

  document.addEventListener('keydown', (e) => {
    const dialogOpen = document.querySelector('dialog[open]');
    if (e.altKey && (e.key === 'ArrowDown' || e.key === 'ArrowUp')) {
      if (dialogOpen) return;
      e.preventDefault();
      navigate(e.key === 'ArrowDown' ? 1 : -1);
      return;
    }
    if ((e.ctrlKey || e.metaKey) && e.key === 'Enter') {
      e.preventDefault();
      if (dialogOpen?.id === 'resolve-dialog') {
        byId('resolve-form', HTMLFormElement).requestSubmit();
      } else if (!dialogOpen && store.openId) {
        pane.openResolve();
      }
      return;
    }
    if (e.key === '?' && !e.ctrlKey && !e.metaKey && !e.altKey && !isTypingTarget(e.target) && !dialogOpen) {
      e.preventDefault();
      showDialog(helpDialog);
    }
  });

  document.addEventListener('visibilitychange', () => {
    if (!document.hidden) store.changed(); // marks the open conversation read
  });

  // ---- start -------------------------------------------------------------------------

  renderConnection('connecting');
  store.changed();
  const lib = await loadClientLib();
  app.lib = lib;
  if (lib?.RelaydeskClient) {
    try {
      const client = new lib.RelaydeskClient({
        apiBase: location.origin,
        apiToken: session.token,
        storage: window.sessionStorage,
        storageKey: outboxKey,
      });
      app.client = client;
      wire(client);
      client.start();
      if (typeof client.state === 'string') renderConnection(client.state);
    } catch (e) {
      console.error('console: the client could not start', e);
      renderConnection('closed');
      toast('Real-time updates are unavailable; the lists are refreshed periodically.', 'error');
    }
  } else {
    renderConnection('closed');
    toast('Real-time updates are unavailable; the lists are refreshed periodically.', 'error');
  }

  const hash = new URLSearchParams(location.hash.slice(1)).get('c');
  if (hash) openConversation(hash);
  await Promise.allSettled([loadSupportTypes(), refreshLists(), refreshAgents()]);

  let tick = 0;
  setInterval(() => {
    if (loggingOut) return;
    tick++;
    // A safety net behind the live frames: faster while not live. Also notices an
    // expired session (401 → login).
    if (connState !== 'open' || tick % 3 === 0) void refreshLists();
    if (store.isSupervisor && view === 'team') void team.refresh();
    store.changed(); // relative times
  }, POLL_MS);
  setInterval(() => store.pruneTyping(), 1000);
}
