// @ts-check
/**
 * The left column: the queue (with a Take button per conversation and the depth per
 * support type) and my conversations (with unread counts). Items carry the stable test
 * hooks `data-testid="conversation-item"` and `data-conv`.
 */

import { h, byId, reconcile, duration, ago, humanize } from './dom.js';
import { conversationTitle } from './pane.js';

/**
 * @typedef {import('./console.js').App} App
 * @typedef {import('./store.js').Conversation} Conversation
 */

/** @param {App} app */
export function createLists(app) {
  const { store } = app;
  const queueList = byId('queue-list');
  const mineList = byId('mine-list');
  const queueEmpty = byId('queue-empty');
  const mineEmpty = byId('mine-empty');
  const queueCount = byId('queue-count');
  const mineCount = byId('mine-count');
  const queueStats = byId('queue-stats');

  function render() {
    const minute = Math.floor(Date.now() / 30_000);
    const queue = store.queue.map((id) => store.convs.get(id) ?? { id });
    const mine = store.mine.map((id) => store.convs.get(id) ?? { id });

    reconcile(queueList, queue, (c) => c.id, (c) => item(c, 'queue'), (c) => signature(c, 'queue', minute));
    reconcile(mineList, mine, (c) => c.id, (c) => item(c, 'mine'), (c) => signature(c, 'mine', minute));
    queueEmpty.hidden = queue.length > 0;
    mineEmpty.hidden = mine.length > 0;
    queueCount.textContent = String(queue.length);
    mineCount.textContent = String(mine.length);

    const stats = store.queueStats.filter((q) => q.depth > 0);
    const statsSig = JSON.stringify(stats.map((q) => [q.key, q.depth, Math.floor(q.oldest_wait_ms / 60_000)]));
    if (queueStats.dataset.sig !== statsSig) {
      queueStats.dataset.sig = statsSig;
      queueStats.replaceChildren(
        ...stats.map((q) =>
          h('span', {
            class: `queue-stat${q.oldest_wait_ms > 120_000 ? ' queue-stat--hot' : ''}`,
            title: `${q.depth} waiting, longest ${duration(q.oldest_wait_ms)}`,
          }, `${store.supportTypes.get(q.key)?.name || q.key} ${q.depth} · ${duration(q.oldest_wait_ms)}`)),
      );
    }
  }

  /**
   * @param {Conversation} c
   * @param {'queue' | 'mine'} where
   * @param {number} minute
   */
  function signature(c, where, minute) {
    const typing = store.typers(c.id).length > 0;
    return [
      where, c.subject, c.visitor_name, c.status, c.support_type, c.priority, c.queued_at, c.updated_at,
      store.lastMessage(c.id)?.seq ?? 0,
      store.openId === c.id, where === 'mine' ? store.unreadCount(c.id) : 0, typing, minute,
      store.supportTypes.get(c.support_type ?? '')?.name,
    ].join('|');
  }

  /**
   * @param {Conversation} c
   * @param {'queue' | 'mine'} where
   */
  function item(c, where) {
    const open = store.openId === c.id;
    const unread = where === 'mine' ? store.unreadCount(c.id) : 0;
    const typing = store.typers(c.id).length > 0;
    const st = c.support_type ? store.supportTypes.get(c.support_type)?.name || c.support_type : '';
    const when = where === 'queue'
      ? `waiting ${duration(Date.now() - (c.queued_at ?? c.created_at ?? Date.now()))}`
      : ago(c.updated_at ?? c.created_at);
    const titleText = conversationTitle(c);
    const li = h('li', {
      class: `conv-item${unread ? ' conv-item--unread' : ''}`,
      'data-testid': 'conversation-item',
      'data-conv': c.id,
      'data-list': where,
      'aria-current': open ? 'true' : null,
    },
    h('button', {
      type: 'button',
      class: 'conv-item__open',
      'aria-label': `${titleText}${unread ? `, ${unread} unread` : ''}`,
      onclick: () => app.open(c.id),
    },
    h('span', { class: 'conv-item__row' },
      h('span', { class: 'conv-item__title' }, titleText),
      h('span', { class: 'conv-item__time' }, when)),
    h('span', { class: 'conv-item__meta' },
      typing ? h('span', { class: 'conv-item__typing' }, 'typing…') : preview(c.id) ?? (st ? h('span', null, st) : null),
      c.status === 'snoozed' ? h('span', { class: 'badge badge--snoozed' }, humanize(c.status)) : null,
      c.priority && c.priority > 0 ? h('span', { class: 'badge badge--priority' }, `P${c.priority}`) : null)),
    unread ? h('span', { class: 'unread', 'data-testid': 'unread-count', 'aria-hidden': 'true' }, String(unread)) : null,
    where === 'queue'
      ? h('button', {
          type: 'button',
          class: 'btn btn--small btn--primary conv-item__take',
          'data-testid': 'take-button',
          'aria-label': `Take ${titleText}`,
          onclick: (/** @type {Event} */ e) => {
            e.stopPropagation();
            void app.take(c.id);
          },
        }, 'Take')
      : null);
    return li;
  }

  /**
   * The last message, one line: "You: …", "Note: …" or the visitor's words.
   * @param {string} id
   */
  function preview(id) {
    const m = store.lastMessage(id);
    const text = m?.body?.text;
    if (!m || typeof text !== 'string' || m.kind === 'event') return null;
    const who = m.kind === 'note' ? 'Note: ' : m.kind === 'suggestion' ? 'Suggestion: '
      : m.from?.id === store.me.id ? 'You: ' : '';
    return h('span', { class: 'conv-item__preview', title: text }, who + text.replace(/\s+/g, ' '));
  }

  return { render };
}
