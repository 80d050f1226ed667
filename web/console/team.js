// @ts-check
/**
 * Supervisors' and admins' "Team" view: every agent's status and load, the queue depth and
 * longest wait per support type, and every waiting and in-progress conversation (any of
 * which they can open). Refreshed on `presence` frames, on conversation events and every
 * 10 s by the console.
 */

import { h, byId, reconcile, duration, ago, humanize } from './dom.js';
import { conversationTitle } from './pane.js';

/**
 * @typedef {import('./console.js').App} App
 * @typedef {import('./store.js').TeamAgent} TeamAgent
 * @typedef {import('./store.js').Conversation} Conversation
 * @typedef {import('./store.js').QueueStat} QueueStat
 */

/** @param {App} app */
export function createTeam(app) {
  const { store } = app;
  const agentsBody = byId('team-agents');
  const queuesBody = byId('team-queues');
  const queuedList = byId('team-queued');
  const assignedList = byId('team-assigned');
  const queuedCount = byId('team-queued-count');
  const assignedCount = byId('team-assigned-count');
  const updated = byId('team-updated');
  /** @type {number | null} */
  let refreshedAt = null;

  function render() {
    const agents = Array.from(store.agents.values()).sort(
      (a, b) => rank(a.status) - rank(b.status) || a.name.localeCompare(b.name),
    );
    reconcile(agentsBody, agents, (a) => a.id, agentRow,
      (a) => `${a.name}|${a.role}|${a.kind}|${a.status}|${a.open_conversations}|${a.max_concurrent}`);
    if (agents.length === 0) {
      agentsBody.append(h('tr', { 'data-key': '' }, h('td', { colspan: '4', class: 'muted' },
        store.agentsAllowed === false ? 'The agent list is not available to you.' : 'Loading…')));
    }

    /** @type {QueueStat[]} */
    const stats = [...store.queueStats].sort((a, b) => b.depth - a.depth || a.key.localeCompare(b.key));
    const waitBucket = (/** @type {QueueStat} */ q) => Math.floor(q.oldest_wait_ms / 10_000);
    reconcile(queuesBody, stats, (q) => q.key, queueRow, (q) => `${q.depth}|${waitBucket(q)}|${supportName(q.key)}`);

    queuedCount.textContent = String(store.teamQueued.length);
    assignedCount.textContent = String(store.teamAssigned.length);
    renderConversations(queuedList, store.teamQueued, 'Nobody is waiting.');
    renderConversations(assignedList, store.teamAssigned, 'No conversation in progress.');
    updated.textContent = refreshedAt ? `Updated ${ago(refreshedAt)}` : '';
  }

  /** @param {TeamAgent} a */
  function agentRow(a) {
    const max = a.max_concurrent ?? 0;
    const load = a.open_conversations ?? 0;
    const pct = max > 0 ? Math.min(100, Math.round((load / max) * 100)) : load > 0 ? 100 : 0;
    const status = a.status ?? 'offline';
    return h('tr', { 'data-testid': 'team-agent', 'data-agent': a.id, 'data-status': status },
      h('td', null,
        h('span', { class: 'me__name' }, a.name),
        a.id === store.me.id ? h('span', { class: 'muted' }, ' (you)') : null,
        a.kind === 'bot' ? h('span', { class: 'badge', style: 'margin-left:6px' }, 'Bot') : null),
      h('td', null, humanize(a.role ?? 'agent')),
      h('td', null, h('span', { class: `badge badge--${status}` }, humanize(status))),
      h('td', null,
        h('div', { class: 'load', title: `${load} open of ${max}` },
          h('div', { class: 'load__bar', role: 'meter', 'aria-valuemin': '0', 'aria-valuemax': String(max), 'aria-valuenow': String(load), 'aria-label': `Load of ${a.name}` },
            h('div', { class: `load__fill${max > 0 && load >= max ? ' load__fill--full' : ''}`, style: `width:${pct}%` })),
          h('span', { class: 'load__text' }, `${load}/${max}`))));
  }

  /** @param {QueueStat} q */
  function queueRow(q) {
    return h('tr', { 'data-testid': 'team-queue', 'data-support-type': q.key },
      h('td', null, supportName(q.key)),
      h('td', { class: 'num' }, String(q.depth)),
      h('td', { class: 'num' }, q.depth > 0 ? duration(q.oldest_wait_ms) : '—'));
  }

  /** @param {string} key */
  function supportName(key) {
    return store.supportTypes.get(key)?.name || key;
  }

  /**
   * @param {HTMLElement} container
   * @param {Conversation[]} list
   * @param {string} emptyText
   */
  function renderConversations(container, list, emptyText) {
    reconcile(
      container,
      list,
      (c) => c.id,
      (c) =>
        h('li', null,
          h('button', {
            type: 'button', class: 'team-list__item', 'data-testid': 'team-conversation-item', 'data-conv': c.id,
            onclick: () => {
              app.setView('inbox');
              app.open(c.id);
            },
          },
          h('span', { class: `badge badge--${c.status}` }, humanize(c.status ?? '')),
          h('span', { class: 'team-list__title' }, conversationTitle(c)),
          h('span', { class: 'team-list__meta' },
            [c.support_type ? supportName(c.support_type) : null,
             c.status === 'queued'
               ? `waiting ${duration(Date.now() - (c.queued_at ?? c.created_at ?? Date.now()))}`
               : c.assignee ? store.nameOf(c.assignee) : null,
             c.updated_at ? ago(c.updated_at) : null].filter(Boolean).join(' · ')))),
      (c) => `${c.status}|${c.subject}|${c.visitor_name}|${c.assignee}|${store.nameOf(c.assignee)}|${c.support_type}|${Math.floor(Date.now() / 30_000)}`,
    );
    if (list.length === 0) container.append(h('li', { class: 'empty', 'data-key': '' }, emptyText));
  }

  /** Reads the agents, the queue statistics and every open conversation. */
  async function refresh() {
    const [, queued, assigned] = await Promise.allSettled([
      app.refreshAgents(),
      app.call('GET', '/v1/conversations?status=queued&limit=100'),
      app.call('GET', '/v1/conversations?status=assigned&limit=100'),
      app.refreshQueue(),
    ]);
    if (queued.status === 'fulfilled') {
      store.teamQueued = (queued.value?.conversations ?? []).map((/** @type {Conversation} */ c) => mergeName(c));
    }
    if (assigned.status === 'fulfilled') {
      store.teamAssigned = (assigned.value?.conversations ?? []).map((/** @type {Conversation} */ c) => mergeName(c));
    }
    refreshedAt = Date.now();
    store.changed();
  }

  /**
   * Keeps the visitor's name learnt elsewhere.
   * @param {Conversation} c
   */
  function mergeName(c) {
    const known = store.convs.get(c.id);
    const name = known?.visitor_name ?? (c.visitor_id ? store.names.get(c.visitor_id) : undefined);
    return name ? { ...c, visitor_name: name } : c;
  }

  return { render, refresh };
}

/** @param {string | undefined} s */
function rank(s) {
  return s === 'online' ? 0 : s === 'away' ? 1 : 2;
}

