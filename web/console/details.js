// @ts-check
/**
 * The right column: the open conversation's details (status, assignee, support type,
 * priority, CSAT…), its tags (add with Enter, remove with ×), and the visitor's profile
 * (`GET /v1/visitors/{id}`: identity, attributes, pages, other conversations). The
 * profile is optional: a 404, a 403 or missing fields show what is there.
 */

import { h, byId, reconcile, dateTime, ago, humanize, shortId } from './dom.js';
import { toast } from './notify.js';
import { messageOf, statusOf } from './session.js';

/**
 * @typedef {import('./console.js').App} App
 * @typedef {import('./store.js').Conversation} Conversation
 * @typedef {{ state: 'loading' | 'ok' | 'missing' | 'error', visitor?: any, at: number, error?: string }} VisitorEntry
 */

const VISITOR_TTL_MS = 30_000;

/** @param {App} app */
export function createDetails(app) {
  const { store } = app;
  const aside = byId('details');
  const dl = byId('conv-details');
  const tagList = byId('tag-list');
  const tagInput = byId('tag-input', HTMLInputElement);
  const visitorBody = byId('visitor-body');
  const inbox = byId('inbox-view');

  /** @type {Map<string, VisitorEntry>} */
  const visitors = new Map();
  let detailsSig = '';
  let visitorSig = '';
  /** @type {string | null} */
  let renderedConv = null;

  function render() {
    const id = store.openId;
    aside.hidden = !id;
    inbox.classList.toggle('inbox--no-details', !id);
    if (!id) {
      detailsSig = '';
      visitorSig = '';
      renderedConv = null;
      return;
    }
    const c = store.convs.get(id) ?? { id };
    renderConversation(c);
    renderTags(c);
    renderVisitor(c);
  }

  /** @param {Conversation} c */
  function renderConversation(c) {
    const st = c.support_type ? store.supportTypes.get(c.support_type) : undefined;
    /** @type {[string, any][]} */
    const rows = [
      ['Status', c.status ? h('span', { class: `badge badge--${c.status}` }, humanize(c.status)) : '—'],
      ['Assignee', c.assignee ? store.nameOf(c.assignee) : 'Nobody'],
      ['Support type', c.support_type ? st?.name || c.support_type : '—'],
      ['Priority', String(c.priority ?? 0)],
    ];
    if (c.subject) rows.push(['Subject', c.subject]);
    rows.push(['Created', dateTime(c.created_at)]);
    if (c.status === 'queued' && c.queued_at) rows.push(['Waiting', ago(c.queued_at).replace(' ago', '')]);
    if (c.first_response_at) rows.push(['First reply', dateTime(c.first_response_at)]);
    if (c.status === 'resolved' || c.resolved_at) {
      rows.push(['Resolved', dateTime(c.resolved_at)]);
      if (c.resolution_reason) rows.push(['Reason', humanize(c.resolution_reason)]);
    }
    const csat = c.csat;
    rows.push([
      'CSAT',
      csat && typeof csat.score === 'number'
        ? h('span', null,
            h('span', { 'aria-label': `${csat.score} out of 5` }, '★'.repeat(csat.score) + '☆'.repeat(Math.max(0, 5 - csat.score))),
            csat.comment ? h('span', { class: 'muted' }, ` “${csat.comment}”`) : null)
        : 'Not rated',
    ]);
    const others = (c.participants ?? []).filter((p) => p !== c.assignee);
    if (others.length) rows.push(['Participants', others.map((p) => store.nameOf(p)).join(', ')]);
    const sig = JSON.stringify(rows.map(([k, v]) => [k, v instanceof Node ? v.textContent : v]));
    if (sig === detailsSig) return;
    detailsSig = sig;
    dl.replaceChildren(...rows.flatMap(([k, v]) => [h('dt', null, k), h('dd', null, v)]));
  }

  /** @param {Conversation} c */
  function renderTags(c) {
    const tags = c.tags ?? [];
    reconcile(
      tagList,
      tags,
      (t) => t,
      (t) =>
        h('li', { class: 'tag', 'data-testid': 'tag', 'data-tag': t },
          h('span', null, t),
          h('button', {
            type: 'button', class: 'tag__remove', 'aria-label': `Remove tag ${t}`, 'data-testid': 'tag-remove',
            onclick: () => void changeTags(c.id, [], [t]),
          }, '×')),
      (t) => t,
    );
  }

  /**
   * @param {string} id
   * @param {string[]} add
   * @param {string[]} remove
   */
  async function changeTags(id, add, remove) {
    try {
      const res = await app.call('POST', `/v1/conversations/${id}/tags`, { add, remove });
      if (Array.isArray(res?.tags)) store.upsert({ id, tags: res.tags });
      return true;
    } catch (e) {
      toast(`Could not change the tags: ${messageOf(e)}`, 'error');
      return false;
    }
  }

  tagInput.addEventListener('keydown', async (e) => {
    if (e.key !== 'Enter' || e.isComposing) return;
    e.preventDefault();
    const id = store.openId;
    const add = tagInput.value.split(',').map((t) => t.trim()).filter(Boolean);
    if (!id || add.length === 0) return;
    tagInput.disabled = true;
    const ok = await changeTags(id, add, []);
    tagInput.disabled = false;
    if (ok) tagInput.value = '';
    tagInput.focus();
  });

  /** @param {Conversation} c */
  function renderVisitor(c) {
    const vid = c.visitor_id;
    if (!vid) {
      if (visitorSig !== 'none') visitorBody.replaceChildren(h('p', { class: 'muted' }, 'Loading…'));
      visitorSig = 'none';
      return;
    }
    let entry = visitors.get(vid);
    // Fetched once, and again when a conversation of theirs is opened after a while.
    const justOpened = c.id !== renderedConv;
    renderedConv = c.id;
    const stale = entry && entry.state !== 'loading' && Date.now() - entry.at > VISITOR_TTL_MS;
    if (!entry || (justOpened && stale)) {
      entry = { state: 'loading', at: Date.now() };
      visitors.set(vid, entry);
      void fetchVisitor(vid);
    }
    const sig = `${vid}|${entry.state}|${entry.at}|${c.id}`;
    if (sig === visitorSig) return;
    visitorSig = sig;
    if (entry.state === 'loading') {
      visitorBody.replaceChildren(h('p', { class: 'muted' }, 'Loading the visitor…'));
      return;
    }
    if (entry.state !== 'ok' || !entry.visitor) {
      visitorBody.replaceChildren(
        h('div', { class: 'visitor-name' }, `Visitor ${shortId(vid)}`),
        h('p', { class: 'muted' },
          entry.state === 'missing' ? 'No visitor profile is available.' : `The profile could not be loaded${entry.error ? `: ${entry.error}` : ''}.`),
      );
      return;
    }
    visitorBody.replaceChildren(...visitorView(entry.visitor, c.id));
  }

  /** @param {string} vid */
  async function fetchVisitor(vid) {
    /** @type {VisitorEntry} */
    let entry;
    try {
      const res = await app.call('GET', `/v1/visitors/${vid}`);
      const v = res?.visitor ?? null;
      entry = v ? { state: 'ok', visitor: v, at: Date.now() } : { state: 'missing', at: Date.now() };
      if (v && (v.name || v.email)) {
        const label = v.name || v.email;
        store.names.set(vid, label);
        for (const conv of store.convs.values()) {
          if (conv.visitor_id === vid && conv.visitor_name !== label) store.upsert({ id: conv.id, visitor_name: label });
        }
      }
    } catch (e) {
      const s = statusOf(e);
      entry = s === 404 || s === 403 || s === 405
        ? { state: 'missing', at: Date.now() }
        : { state: 'error', at: Date.now(), error: messageOf(e) };
    }
    visitors.set(vid, entry);
    store.changed();
  }

  /**
   * @param {any} v
   * @param {string} currentConv
   * @returns {Node[]}
   */
  function visitorView(v, currentConv) {
    /** @type {Node[]} */
    const out = [];
    const name = v.name || v.email || v.external_id || `Visitor ${shortId(v.id)}`;
    out.push(
      h('div', { class: 'visitor-name' },
        h('span', { class: `online-dot${v.online ? ' online-dot--on' : ''}`, 'aria-hidden': 'true' }),
        h('span', null, name),
        v.verified ? h('span', { class: 'badge badge--online', title: 'Identity verified by the tenant' }, 'Verified') : null),
      h('div', { class: 'visitor-contact' },
        [v.email && v.email !== name ? v.email : null, v.online ? 'Online now' : v.last_seen_at ? `Last seen ${ago(v.last_seen_at)}` : null]
          .filter(Boolean).join(' · ')),
    );
    /** @type {[string, any][]} */
    const rows = [];
    if (v.current_page) {
      const link = safeLink(v.current_page);
      link.classList.add('truncate');
      link.title = v.current_page;
      rows.push(['Current page', link]);
    }
    if (v.external_id) rows.push(['External ID', v.external_id]);
    if (v.first_seen_at) rows.push(['First seen', dateTime(v.first_seen_at)]);
    if (v.user_agent) rows.push(['Browser', h('span', { title: v.user_agent }, shortAgent(v.user_agent))]);
    if (rows.length) out.push(h('dl', { class: 'kv kv--compact' }, rows.flatMap(([k, val]) => [h('dt', null, k), h('dd', null, val)])));

    const attrs = v.attributes && typeof v.attributes === 'object' ? Object.entries(v.attributes) : [];
    if (attrs.length) {
      out.push(
        h('h4', { class: 'sub-title' }, 'Attributes'),
        h('dl', { class: 'kv kv--compact' },
          attrs.flatMap(([k, val]) => [h('dt', null, k), h('dd', null, typeof val === 'string' ? val : JSON.stringify(val))])),
      );
    }
    const pages = Array.isArray(v.pages) ? v.pages.slice(0, 10) : [];
    if (pages.length) {
      out.push(
        h('h4', { class: 'sub-title' }, 'Recent pages'),
        h('ul', { class: 'plain-list' },
          pages.map((/** @type {any} */ p) =>
            h('li', null,
              h('span', { class: 'truncate', title: p.url }, safeLink(p.url, p.title || p.url)),
              h('span', { class: 'muted' }, ago(p.at))))),
      );
    }
    const convs = Array.isArray(v.conversations) ? v.conversations.filter((/** @type {any} */ x) => x.id !== currentConv) : [];
    if (convs.length) {
      out.push(
        h('h4', { class: 'sub-title' }, 'Other conversations'),
        h('ul', { class: 'plain-list' },
          convs.slice(0, 20).map((/** @type {any} */ x) => {
            const score = x.csat?.score ?? x.csat_score ?? x.csat;
            return h('li', null,
              h('button', { type: 'button', class: 'btn--link truncate', onclick: () => app.open(x.id) },
                x.subject || `Conversation ${shortId(x.id)}`),
              h('span', { class: 'muted' },
                [x.status ? humanize(x.status) : null, x.support_type, dateTime(x.created_at),
                 typeof score === 'number' ? `CSAT ${score}/5` : null].filter(Boolean).join(' · ')));
          })),
      );
    }
    return out;
  }

  /** Forgets cached profiles (e.g. after a reconnect). */
  function invalidate() {
    visitors.clear();
    visitorSig = '';
  }

  return { render, invalidate };
}

/**
 * A link for http(s) URLs only; anything else is shown as text.
 * @param {string} url
 * @param {string} [label]
 */
function safeLink(url, label) {
  try {
    const u = new URL(url);
    if (u.protocol === 'http:' || u.protocol === 'https:') {
      return h('a', { href: u.href, target: '_blank', rel: 'noopener noreferrer' }, label ?? url);
    }
  } catch {
    /* not a URL */
  }
  return h('span', null, label ?? url);
}

/**
 * A short description of a User-Agent string.
 * @param {string} ua
 */
function shortAgent(ua) {
  const browser = /Edg\//.test(ua) ? 'Edge' : /OPR\//.test(ua) ? 'Opera' : /Firefox\//.test(ua) ? 'Firefox'
    : /Chrome\//.test(ua) ? 'Chrome' : /Safari\//.test(ua) ? 'Safari' : '';
  const os = /Windows/.test(ua) ? 'Windows' : /Android/.test(ua) ? 'Android' : /iPhone|iPad/.test(ua) ? 'iOS'
    : /Mac OS X/.test(ua) ? 'macOS' : /Linux/.test(ua) ? 'Linux' : '';
  const s = [browser, os].filter(Boolean).join(' on ');
  return s || (ua.length > 40 ? `${ua.slice(0, 40)}…` : ua);
}
