// @ts-check
/**
 * The center pane: the open conversation's header and actions, its messages (history and
 * live, with delivered/read state on mine), the visitor's typing indicator, and the
 * composer (reply or private note; Enter sends; typing and read receipts go out while
 * composing and viewing). Also the resolve, transfer and escalate dialogs.
 */

import { h, byId, reconcile, clockTime, humanize, shortId } from './dom.js';
import { toast } from './notify.js';
import { messageOf, statusOf } from './session.js';

/**
 * @typedef {import('./console.js').App} App
 * @typedef {import('./store.js').Message} Message
 * @typedef {import('./store.js').Pending} Pending
 * @typedef {import('./store.js').Conversation} Conversation
 * @typedef {{ key: string, message?: Message, pending?: Pending }} Item
 */

const HISTORY_LIMIT = 500;
const TYPING_RESEND_MS = 3000;
const TYPING_IDLE_MS = 4000;

/** @param {App} app */
export function createPane(app) {
  const { store } = app;
  const empty = byId('pane-empty');
  const main = byId('pane-main');
  const title = byId('pane-title');
  const sub = byId('pane-sub');
  const banner = byId('pane-banner');
  const list = byId('messages');
  const typingEl = byId('typing-indicator');
  const typingText = byId('typing-text');
  const form = byId('composer', HTMLFormElement);
  const input = byId('message-input', HTMLTextAreaElement);
  const inputLabel = byId('message-input-label');
  const modeReply = byId('mode-reply', HTMLButtonElement);
  const noteToggle = byId('note-toggle', HTMLButtonElement);
  const modeLabel = byId('composer-mode-label');
  const takeBtn = byId('pane-take', HTMLButtonElement);
  const joinBtn = byId('pane-join', HTMLButtonElement);
  const transferBtn = byId('pane-transfer', HTMLButtonElement);
  const escalateBtn = byId('pane-escalate', HTMLButtonElement);
  const reopenBtn = byId('pane-reopen', HTMLButtonElement);
  const resolveBtn = byId('pane-resolve', HTMLButtonElement);

  /** Per conversation: the composer's text and mode. @type {Map<string, { text: string, note: boolean }>} */
  const drafts = new Map();
  /** Conversations whose history has been read over HTTP. @type {Set<string>} */
  const loaded = new Set();
  /** Conversations subscribed only to look at them (not mine): unsubscribed on leaving. */
  const previews = new Set();
  /** The last read receipt sent per conversation. @type {Map<string, number>} */
  const readSent = new Map();
  let note = false;
  /** @type {string | null} */
  let shownId = null;
  let stickToBottom = true;
  /** @type {{ conv: string | null, on: boolean, at: number }} */
  const typingOut = { conv: null, on: false, at: 0 };
  /** @type {ReturnType<typeof setTimeout> | undefined} */
  let typingIdle;
  /** @type {ReturnType<typeof setTimeout> | undefined} */
  let readTimer;

  // ---- opening -------------------------------------------------------------------------

  /**
   * Shows a conversation (null: none). Subscribes through the client, which replays the
   * history after what it holds and then delivers live messages; the first 500 (or last
   * 500) messages are also read over HTTP so the pane fills at once.
   * @param {string | null} id
   */
  function open(id) {
    const prev = store.openId;
    if (prev === id) return;
    if (prev) leave(prev);
    store.openId = id;
    shownId = null;
    stickToBottom = true;
    if (!id) {
      store.changed();
      return;
    }
    const draft = drafts.get(id);
    input.value = draft?.text ?? '';
    setNote(draft?.note ?? false, false);
    if (app.client) {
      try {
        app.client.subscribe(id);
        if (!store.mine.includes(id)) previews.add(id);
        for (const m of safeArray(() => app.client.messages(id))) store.addMessage(m);
        for (const p of safeArray(() => app.client.pending(id))) adoptPending(id, p);
      } catch (e) {
        console.warn('subscribe failed', e);
      }
    }
    store.changed();
    void load(id);
  }

  /** @param {string} id */
  async function load(id) {
    try {
      const res = await app.call('GET', `/v1/conversations/${id}`);
      if (res?.conversation) app.applyConversation(res.conversation);
    } catch (e) {
      if (store.openId === id) {
        const s = statusOf(e);
        if (s === 404) showBanner('This conversation does not exist (or is not visible to you).');
        else if (s === 403) showBanner('You are not a participant of this conversation.');
        else toast(`Could not load the conversation: ${messageOf(e)}`, 'error');
      }
    }
    try {
      const last = store.convs.get(id)?.last_seq ?? 0;
      const after = Math.max(0, last - HISTORY_LIMIT);
      const res = await app.call(
        'GET',
        `/v1/conversations/${id}/messages?after=${after}&limit=${HISTORY_LIMIT}`,
      );
      const messages = (res?.messages ?? []).map((/** @type {Message} */ m) => ({ ...m, conv: m.conv ?? id }));
      for (const m of messages) store.addMessage(m);
      // The client persists last seqs, not messages: hand it the history (it extends its
      // contiguous position and acks; `ingest` is the library's addition to the contract).
      try {
        app.client?.ingest?.(id, messages, after);
      } catch (e) {
        console.warn('ingest failed', e);
      }
    } catch (e) {
      if (store.openId === id && statusOf(e) !== 403 && statusOf(e) !== 404) {
        toast(`Could not load the messages: ${messageOf(e)}`, 'error');
      }
    } finally {
      loaded.add(id);
      store.changed();
    }
  }

  /** @param {string} prev */
  function leave(prev) {
    drafts.set(prev, { text: input.value, note });
    stopTyping();
    if (previews.has(prev) && !store.mine.includes(prev)) {
      try {
        app.client?.unsubscribe(prev);
      } catch {
        /* already gone */
      }
    }
    previews.delete(prev);
  }

  /**
   * A message of the client's outbox (e.g. restored after a reload).
   * @param {string} conv
   * @param {any} p
   */
  function adoptPending(conv, p) {
    const id = p?.id ?? p?.frame?.id;
    if (typeof id !== 'string' || store.pending.get(conv)?.has(id)) return;
    const body = p?.body ?? p?.frame?.body;
    store.addPending({
      id,
      conv,
      kind: p?.kind ?? p?.frame?.kind ?? 'text',
      text: typeof body?.text === 'string' ? body.text : String(p?.text ?? ''),
      ts: typeof p?.ts === 'number' ? p.ts : Date.now(),
    });
  }

  /** @param {string} text */
  function showBanner(text) {
    banner.textContent = text;
    banner.hidden = false;
  }

  // ---- rendering -----------------------------------------------------------------------

  function render() {
    const id = store.openId;
    if (!id) {
      empty.hidden = false;
      main.hidden = true;
      return;
    }
    empty.hidden = true;
    main.hidden = false;
    const c = store.convs.get(id) ?? { id };
    const opening = shownId !== id;
    if (opening) {
      banner.hidden = true;
      list.replaceChildren();
    }
    shownId = id;
    renderHeader(c);
    renderMessages(id, opening);
    renderTyping();
    markRead(id);
  }

  /** @param {Conversation} c */
  function renderHeader(c) {
    title.textContent = conversationTitle(c);
    const st = c.support_type ? store.supportTypes.get(c.support_type) : undefined;
    const parts = [
      c.status ? h('span', { class: `badge badge--${c.status}` }, humanize(c.status)) : null,
      c.support_type ? h('span', null, st?.name || c.support_type) : null,
      c.status === 'assigned' || c.status === 'snoozed'
        ? h('span', null, c.assignee ? `Assigned to ${store.nameOf(c.assignee)}` : 'Unassigned')
        : null,
      c.priority ? h('span', { class: 'badge badge--priority' }, `Priority ${c.priority}`) : null,
      store.mine.includes(c.id) || !c.status ? null : h('span', { class: 'muted' }, readOnlyHint(c)),
    ].filter((x) => x !== null);
    const sig = parts.map((p) => `${p.className}:${p.textContent}`).join('|');
    if (sub.dataset.sig !== sig) {
      sub.dataset.sig = sig;
      sub.replaceChildren(.../** @type {HTMLElement[]} */ (parts));
    }
    const mineNow = c.assignee === store.me.id;
    const participant = mineNow || (c.participants ?? []).includes(store.me.id);
    const open = c.status !== 'resolved';
    takeBtn.hidden = c.status !== 'queued';
    joinBtn.hidden = !(store.isSupervisor && open && c.status !== 'queued' && !participant);
    transferBtn.hidden = !(open && c.status !== 'queued' && (mineNow || store.isSupervisor));
    escalateBtn.hidden = !(open && (mineNow || store.isSupervisor || c.status === 'queued'));
    reopenBtn.hidden = c.status !== 'resolved';
    resolveBtn.hidden = !open || !c.status;
  }

  /** @param {Conversation} c */
  function readOnlyHint(c) {
    if (c.status === 'queued') return 'Waiting in the queue';
    if (c.status === 'resolved') return '';
    return store.isSupervisor ? 'Supervising' : '';
  }

  /**
   * @param {string} id
   * @param {boolean} opening
   */
  function renderMessages(id, opening) {
    const held = store.messages.get(id);
    const pend = store.pending.get(id);
    /** @type {Item[]} */
    const items = [];
    if (held) {
      const seqs = Array.from(held.keys()).sort((a, b) => a - b);
      for (const s of seqs) {
        const m = /** @type {Message} */ (held.get(s));
        items.push({ key: `s${s}`, message: m });
      }
    }
    if (pend && pend.size) {
      // A message of mine may arrive (as `msg`) before its `accepted`: the pending copy is
      // then hidden behind the first unclaimed message of mine with the same kind and text.
      /** @type {Set<number>} */
      const claimed = new Set();
      for (const p of pend.values()) {
        let twin = null;
        if (held && !p.failed) {
          for (const m of held.values()) {
            if (m.seq > (p.after ?? 0) && !claimed.has(m.seq) && m.from?.id === store.me.id
              && m.kind === p.kind && m.body?.text === p.text) {
              twin = m;
              break;
            }
          }
        }
        if (twin) claimed.add(twin.seq);
        else items.push({ key: `p${p.id}`, pending: p });
      }
    }

    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 60;
    const visitorRead = store.visitorRead.get(id) ?? 0;
    const me = store.me.id;
    /** @param {Item} it */
    const receipt = (it) => {
      if (it.pending) return it.pending.failed ? 'failed' : 'sending';
      const m = /** @type {Message} */ (it.message);
      if (m.from?.id !== me || m.kind !== 'text') return '';
      return visitorRead >= m.seq ? 'read' : 'delivered';
    };
    reconcile(
      list,
      items,
      (it) => it.key,
      (it) => (it.pending ? renderPending(it.pending) : renderMessage(/** @type {Message} */ (it.message), receipt(it))),
      (it) => {
        if (it.pending) return `p|${it.pending.failed?.code ?? ''}`;
        const m = /** @type {Message} */ (it.message);
        return `${m.kind}|${m.from?.name ?? ''}|${m.synthetic ? 1 : 0}|${receipt(it)}|${m.body?.text ?? ''}`;
      },
    );
    if (items.length === 0) {
      list.append(
        h('li', { class: 'messages__note', 'data-key': '' }, loaded.has(id) ? 'No messages yet.' : 'Loading…'),
      );
    }
    if (opening || atBottom || stickToBottom) {
      list.scrollTop = list.scrollHeight;
      stickToBottom = false;
    }
  }

  /**
   * @param {Message} m
   * @param {string} receipt '' | 'delivered' | 'read'
   */
  function renderMessage(m, receipt) {
    const text = typeof m.body?.text === 'string' ? m.body.text : JSON.stringify(m.body ?? {});
    const attrs = { 'data-testid': 'message', 'data-seq': String(m.seq), 'data-kind': m.kind };
    if (m.kind === 'event') {
      return h('li', { ...attrs, class: 'msg msg--event' },
        h('span', null, text),
        h('time', { class: 'muted', datetime: new Date(m.ts).toISOString() }, clockTime(m.ts)));
    }
    const own = m.from?.id === store.me.id;
    const role = m.from?.role ?? '';
    const author = own ? 'You' : m.from?.name || roleLabel(role);
    const cls = [
      'msg',
      `msg--${m.kind}`,
      own ? 'msg--out' : 'msg--in',
      role === 'visitor' ? 'msg--visitor' : 'msg--staff',
    ].join(' ');
    const meta = h('div', { class: 'msg__meta' },
      m.kind === 'note' ? h('span', { class: 'badge badge--note' }, 'Note') : null,
      m.kind === 'suggestion' ? h('span', { class: 'badge badge--assigned' }, 'Suggested reply') : null,
      h('span', { class: 'msg__author' }, author),
      role === 'bot' && !own ? h('span', { class: 'badge' }, 'Bot') : null,
      h('time', { datetime: new Date(m.ts || Date.now()).toISOString() }, clockTime(m.ts)));
    if (m.kind === 'suggestion') {
      const use = () => useSuggestion(text);
      return h('li', { ...attrs, class: cls, title: 'Click to use as a draft', onclick: use },
        meta,
        h('div', { class: 'msg__bubble' }, text),
        h('div', { class: 'msg__actions' },
          h('button', {
            type: 'button', class: 'btn btn--small', 'data-testid': 'use-suggestion',
            onclick: (/** @type {Event} */ e) => { e.stopPropagation(); use(); },
          }, 'Use as draft')));
    }
    return h('li', { ...attrs, class: cls },
      meta,
      h('div', { class: 'msg__bubble' }, text),
      receipt
        ? h('div', { class: `msg__status msg__status--${receipt}`, 'data-status': receipt },
            receipt === 'read' ? '✓✓ Read' : '✓ Delivered')
        : null);
  }

  /** @param {Pending} p */
  function renderPending(p) {
    const failed = p.failed;
    return h('li', {
      'data-testid': 'message', 'data-kind': p.kind, 'data-pending': 'true', 'data-client-id': p.id,
      class: `msg msg--${p.kind} msg--out msg--staff msg--pending${failed ? ' msg--failed' : ''}`,
    },
    h('div', { class: 'msg__meta' },
      p.kind === 'note' ? h('span', { class: 'badge badge--note' }, 'Note') : null,
      h('span', { class: 'msg__author' }, 'You')),
    h('div', { class: 'msg__bubble' }, p.text),
    failed
      ? h('div', { class: 'msg__status msg__status--failed', 'data-status': 'failed' },
          `Not sent: ${failed.message || failed.code} `,
          h('button', {
            type: 'button', class: 'btn--link',
            onclick: () => {
              store.pending.get(p.conv)?.delete(p.id);
              store.changed();
            },
          }, 'Dismiss'))
      : h('div', { class: 'msg__status', 'data-status': 'sending' }, 'Sending…'));
  }

  function renderTyping() {
    const id = store.openId;
    const typers = id ? store.typers(id) : [];
    if (typers.length === 0) {
      typingEl.hidden = true;
      typingText.textContent = '';
      return;
    }
    const names = typers.map((t) => (t.role === 'visitor' ? t.name || 'Visitor' : t.name));
    typingText.textContent =
      names.length === 1 ? `${names[0]} is typing…` : `${names.join(', ')} are typing…`;
    typingEl.hidden = false;
  }

  /**
   * Read receipts: while the conversation is on screen, its latest message is read (and
   * viewed, for the unread counts). Staff who merely look at someone else's conversation
   * send no receipt.
   * @param {string} id
   */
  function markRead(id) {
    if (document.hidden) return;
    store.markViewed(id);
    if (readTimer || !unreadReceipt(id)) return;
    // One receipt per 250 ms at most, for the latest seq of what is open then.
    readTimer = setTimeout(() => {
      readTimer = undefined;
      const open = store.openId;
      if (!open || document.hidden) return;
      const seq = unreadReceipt(open);
      if (!seq) return;
      try {
        app.client.read(open, seq);
        readSent.set(open, seq);
      } catch (e) {
        console.warn('read receipt failed', e);
      }
    }, 250);
  }

  /**
   * The seq a read receipt should now claim for a conversation, or 0 for none.
   * @param {string} id
   */
  function unreadReceipt(id) {
    const c = store.convs.get(id);
    const takesPart = c && (c.assignee === store.me.id || (c.participants ?? []).includes(store.me.id));
    if (!takesPart || !app.client) return 0;
    const seq = store.lastHeldSeq(id);
    return seq > (readSent.get(id) ?? 0) ? seq : 0;
  }

  // ---- composer ------------------------------------------------------------------------

  /**
   * @param {boolean} on
   * @param {boolean} [focus]
   */
  function setNote(on, focus = true) {
    note = on;
    if (note) stopTyping();
    noteToggle.setAttribute('aria-pressed', String(note));
    modeReply.setAttribute('aria-pressed', String(!note));
    form.classList.toggle('composer--note', note);
    input.placeholder = note ? 'Write a private note (never shown to the visitor)…' : 'Write a reply…';
    inputLabel.textContent = note ? 'Private note' : 'Reply to the visitor';
    modeLabel.textContent = note ? 'Note: visible to your team only' : '';
    if (focus) input.focus();
  }

  /** @param {string} text */
  function useSuggestion(text) {
    setNote(false, false);
    input.value = text;
    input.focus();
    input.setSelectionRange(text.length, text.length);
    onInput();
  }

  function send() {
    const conv = store.openId;
    const text = input.value.trim();
    if (!conv || !text) return;
    const kind = note ? 'note' : 'text';
    stopTyping();
    if (app.client) {
      try {
        const id = app.client.send(conv, text, kind);
        if (typeof id === 'string') store.addPending({ id, conv, kind, text, ts: Date.now() });
      } catch (e) {
        toast(`Could not send: ${messageOf(e)}`, 'error');
        return;
      }
    } else {
      void restSend(conv, text, kind);
    }
    input.value = '';
    drafts.delete(conv);
    stickToBottom = true;
    store.changed();
  }

  /**
   * Without the client library: the REST fallback with an idempotency key.
   * @param {string} conv
   * @param {string} text
   * @param {string} kind
   */
  async function restSend(conv, text, kind) {
    const id = app.lib?.newClientId?.() ?? `c-${crypto.randomUUID()}`;
    store.addPending({ id, conv, kind, text, ts: Date.now() });
    try {
      const res = await fetch(`${location.origin}/v1/conversations/${conv}/messages`, {
        method: 'POST',
        headers: {
          'Content-Type': 'application/json',
          Authorization: `Bearer ${app.session.token}`,
          'Idempotency-Key': id,
        },
        body: JSON.stringify({ kind, body: { text } }),
      });
      const data = await res.json().catch(() => null);
      if (!res.ok) {
        store.failed({ id, conv, code: data?.error?.code ?? String(res.status), message: data?.error?.message ?? '' });
        return;
      }
      store.accepted({ ...data, id, conv });
    } catch (e) {
      store.failed({ id, conv, code: 'unavailable', message: messageOf(e) });
    }
  }

  function onInput() {
    const conv = store.openId;
    if (!conv) return;
    drafts.set(conv, { text: input.value, note });
    if (note || !app.client) return;
    if (!input.value.trim()) {
      stopTyping();
      return;
    }
    const now = Date.now();
    if (!typingOut.on || typingOut.conv !== conv || now - typingOut.at > TYPING_RESEND_MS) {
      if (typingOut.on && typingOut.conv !== conv) stopTyping();
      try {
        app.client.typing(conv, true);
        typingOut.conv = conv;
        typingOut.on = true;
        typingOut.at = now;
      } catch {
        /* best effort */
      }
    }
    clearTimeout(typingIdle);
    typingIdle = setTimeout(stopTyping, TYPING_IDLE_MS);
  }

  function stopTyping() {
    clearTimeout(typingIdle);
    if (typingOut.on && typingOut.conv && app.client) {
      try {
        app.client.typing(typingOut.conv, false);
      } catch {
        /* best effort */
      }
    }
    typingOut.on = false;
  }

  input.addEventListener('keydown', (e) => {
    if (e.key !== 'Enter' || e.isComposing) return;
    if (e.ctrlKey || e.metaKey) return; // Ctrl+Enter: the resolve dialog (global shortcut)
    if (e.shiftKey || e.altKey) return; // a new line
    e.preventDefault();
    send();
  });
  input.addEventListener('input', onInput);
  input.addEventListener('blur', () => stopTyping());
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    send();
    input.focus();
  });
  noteToggle.addEventListener('click', () => {
    setNote(!note);
    if (store.openId) drafts.set(store.openId, { text: input.value, note });
  });
  modeReply.addEventListener('click', () => {
    setNote(false);
    if (store.openId) drafts.set(store.openId, { text: input.value, note });
  });
  list.addEventListener('scroll', () => {
    stickToBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 60;
  });

  // ---- actions and dialogs -------------------------------------------------------------

  takeBtn.addEventListener('click', () => {
    if (store.openId) void app.take(store.openId);
  });
  joinBtn.addEventListener('click', async () => {
    const id = store.openId;
    if (!id) return;
    try {
      const res = await app.call('POST', `/v1/conversations/${id}/participants`, {});
      if (res?.conversation) app.applyConversation(res.conversation);
      toast('You joined the conversation', 'success');
    } catch (e) {
      toast(`Could not join: ${messageOf(e)}`, 'error');
    }
  });
  reopenBtn.addEventListener('click', async () => {
    const id = store.openId;
    if (!id) return;
    try {
      const res = await app.call('POST', `/v1/conversations/${id}/reopen`);
      if (res?.conversation) app.applyConversation(res.conversation);
      toast('Conversation reopened', 'success');
    } catch (e) {
      toast(`Could not reopen: ${messageOf(e)}`, 'error');
    }
  });

  // Resolve
  const resolveDialog = byId('resolve-dialog', HTMLDialogElement);
  const resolveForm = byId('resolve-form', HTMLFormElement);
  const resolveReason = byId('resolve-reason', HTMLSelectElement);
  const resolveError = byId('resolve-error');
  resolveBtn.addEventListener('click', () => openResolve());

  function openResolve() {
    const id = store.openId;
    if (!id) return;
    const c = store.convs.get(id);
    if (c?.status === 'resolved') {
      toast('This conversation is already resolved');
      return;
    }
    const st = c?.support_type ? store.supportTypes.get(c.support_type) : undefined;
    const reasons = st?.resolution_reasons?.length ? st.resolution_reasons : ['solved'];
    resolveReason.replaceChildren(...reasons.map((r) => h('option', { value: r }, humanize(r))));
    resolveError.hidden = true;
    showDialog(resolveDialog);
    resolveReason.focus();
  }

  resolveForm.addEventListener('submit', async (e) => {
    e.preventDefault();
    const id = store.openId;
    if (!id) return;
    const submit = /** @type {HTMLButtonElement} */ (resolveForm.querySelector('[type=submit]'));
    submit.disabled = true;
    try {
      const res = await app.call('POST', `/v1/conversations/${id}/resolve`, { reason: resolveReason.value });
      if (res?.conversation) app.applyConversation(res.conversation);
      else app.applyConversation({ id, status: 'resolved', resolution_reason: resolveReason.value });
      resolveDialog.close();
      toast('Conversation resolved', 'success');
    } catch (err) {
      resolveError.textContent = messageOf(err);
      resolveError.hidden = false;
    } finally {
      submit.disabled = false;
    }
  });

  // Transfer
  const transferDialog = byId('transfer-dialog', HTMLDialogElement);
  const transferForm = byId('transfer-form', HTMLFormElement);
  const transferSelectField = byId('transfer-select-field');
  const transferSelect = byId('transfer-agent', HTMLSelectElement);
  const transferIdField = byId('transfer-id-field');
  const transferId = byId('transfer-agent-id', HTMLInputElement);
  const transferReason = byId('transfer-reason', HTMLTextAreaElement);
  const transferError = byId('transfer-error');
  transferBtn.addEventListener('click', async () => {
    if (!store.openId) return;
    transferError.hidden = true;
    transferReason.value = '';
    transferId.value = '';
    if (store.agentsAllowed !== false && store.isSupervisor) {
      try {
        await app.refreshAgents();
      } catch {
        /* the list held (if any) is used */
      }
    }
    const assignee = store.convs.get(store.openId)?.assignee;
    const agents = Array.from(store.agents.values())
      .filter((a) => a.id !== store.me.id && a.id !== assignee && a.kind !== 'bot')
      .sort((a, b) => statusRank(a.status) - statusRank(b.status) || a.name.localeCompare(b.name));
    const useList = store.agentsAllowed === true && agents.length > 0;
    transferSelectField.hidden = !useList;
    transferIdField.hidden = useList;
    if (useList) {
      transferSelect.replaceChildren(
        ...agents.map((a) =>
          h('option', { value: a.id },
            `${a.name} — ${a.status ?? 'offline'}, ${a.open_conversations ?? 0}/${a.max_concurrent ?? '?'}`)),
      );
    }
    showDialog(transferDialog);
    (useList ? transferSelect : transferId).focus();
  });
  transferForm.addEventListener('submit', async (e) => {
    e.preventDefault();
    const id = store.openId;
    if (!id) return;
    const agentId = transferSelectField.hidden ? transferId.value.trim() : transferSelect.value;
    if (!agentId) {
      transferError.textContent = 'Choose an agent.';
      transferError.hidden = false;
      return;
    }
    /** @type {Record<string, string>} */
    const body = { agent_id: agentId };
    if (transferReason.value.trim()) body.reason = transferReason.value.trim();
    const submit = /** @type {HTMLButtonElement} */ (transferForm.querySelector('[type=submit]'));
    submit.disabled = true;
    try {
      const res = await app.call('POST', `/v1/conversations/${id}/transfer`, body);
      if (res?.conversation) app.applyConversation(res.conversation);
      transferDialog.close();
      toast(`Transferred to ${store.nameOf(agentId)}`, 'success');
      app.afterHandover(id);
    } catch (err) {
      transferError.textContent = messageOf(err);
      transferError.hidden = false;
    } finally {
      submit.disabled = false;
    }
  });

  // Escalate
  const escalateDialog = byId('escalate-dialog', HTMLDialogElement);
  const escalateForm = byId('escalate-form', HTMLFormElement);
  const escalateType = byId('escalate-type', HTMLSelectElement);
  const escalateReason = byId('escalate-reason', HTMLTextAreaElement);
  const escalateError = byId('escalate-error');
  escalateBtn.addEventListener('click', () => {
    const id = store.openId;
    if (!id) return;
    const c = store.convs.get(id);
    const current = c?.support_type ? store.supportTypes.get(c.support_type) : undefined;
    const options = [];
    if (current?.escalation_target) {
      const t = store.supportTypes.get(current.escalation_target);
      options.push(h('option', { value: '' }, `Default: ${t?.name ?? current.escalation_target}`));
    }
    for (const st of store.supportTypes.values()) {
      if (st.key === c?.support_type) continue;
      options.push(h('option', { value: st.key }, st.name && st.name !== st.key ? `${st.name} (${st.key})` : st.key));
    }
    if (options.length === 0) options.push(h('option', { value: '' }, 'Default escalation target'));
    escalateType.replaceChildren(...options);
    escalateReason.value = '';
    escalateError.hidden = true;
    showDialog(escalateDialog);
    escalateType.focus();
  });
  escalateForm.addEventListener('submit', async (e) => {
    e.preventDefault();
    const id = store.openId;
    if (!id) return;
    const reason = escalateReason.value.trim();
    if (!reason) {
      escalateError.textContent = 'A reason is required.';
      escalateError.hidden = false;
      escalateReason.focus();
      return;
    }
    /** @type {Record<string, string>} */
    const body = { reason };
    if (escalateType.value) body.support_type = escalateType.value;
    const submit = /** @type {HTMLButtonElement} */ (escalateForm.querySelector('[type=submit]'));
    submit.disabled = true;
    try {
      const res = await app.call('POST', `/v1/conversations/${id}/escalate`, body);
      if (res?.conversation) app.applyConversation(res.conversation);
      escalateDialog.close();
      toast('Conversation escalated', 'success');
      app.afterHandover(id);
    } catch (err) {
      escalateError.textContent = messageOf(err);
      escalateError.hidden = false;
    } finally {
      submit.disabled = false;
    }
  });

  for (const d of [resolveDialog, transferDialog, escalateDialog]) {
    for (const b of d.querySelectorAll('[data-close]')) b.addEventListener('click', () => d.close());
    d.addEventListener('close', () => {
      if (store.openId) input.focus();
    });
  }

  return {
    open,
    render,
    renderTyping,
    openResolve,
    focusComposer: () => input.focus(),
    /** A conversation this console follows became mine: keep its subscription. @param {string} id */
    keep: (/** @type {string} */ id) => previews.delete(id),
  };
}

/**
 * @param {HTMLDialogElement} d
 */
export function showDialog(d) {
  for (const other of document.querySelectorAll('dialog[open]')) {
    if (other !== d) /** @type {HTMLDialogElement} */ (other).close();
  }
  if (!d.open) d.showModal();
}

/** @param {string | undefined} s */
function statusRank(s) {
  return s === 'online' ? 0 : s === 'away' ? 1 : 2;
}

/** @param {string} role */
function roleLabel(role) {
  if (role === 'visitor') return 'Visitor';
  if (role === 'bot') return 'Bot';
  return role ? humanize(role) : 'Unknown';
}

/**
 * @template T
 * @param {() => T[] | undefined | null} f
 * @returns {T[]}
 */
function safeArray(f) {
  try {
    const v = f();
    return Array.isArray(v) ? v : [];
  } catch {
    return [];
  }
}

/**
 * The title of a conversation: its subject, else who it is with.
 * @param {Conversation} c
 */
export function conversationTitle(c) {
  if (c.subject) return c.subject;
  if (c.visitor_name) return c.visitor_name;
  return c.visitor_id ? `Visitor ${shortId(c.visitor_id)}` : `Conversation ${shortId(c.id)}`;
}
