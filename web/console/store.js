// @ts-check
/**
 * The console's state, without DOM: conversations and the two lists (queue, mine), the
 * messages held per conversation (merged by seq from the REST history and the client's
 * live frames), messages being sent, unread counts, typing and read receipts.
 *
 * Unread counting: for each conversation a `baseline` (its `last_seq` as last read from the
 * API) and the seqs of messages from others received live above it. Unread =
 * (baseline − last viewed seq) + live seqs above both. A replayed message is never counted
 * twice, and a reconnect that re-reads the lists only raises the baseline.
 */

/**
 * @typedef {import('./session.js').Agent} Agent
 * @typedef {{ id: string, role: string, name?: string | null }} Actor
 * @typedef {{ conv: string, seq: number, msg: string, from: Actor, kind: string,
 *             body: { text?: string } & Record<string, any>, ts: number,
 *             synthetic?: boolean }} Message
 * @typedef {{ id: string, status?: string, assignee?: string | null, support_type?: string,
 *             subject?: string | null, visitor_id?: string, last_seq?: number,
 *             created_at?: number, updated_at?: number, queued_at?: number | null,
 *             resolution_reason?: string | null, resolved_at?: number | null,
 *             csat?: { score: number, comment?: string | null } | null, tags?: string[],
 *             priority?: number, participants?: string[], first_response_at?: number | null,
 *             [k: string]: any }} Conversation
 * @typedef {{ id: string, conv: string, kind: string, text: string, ts: number,
 *             after?: number, failed?: { code: string, message: string } }} Pending
 * @typedef {{ key: string, name?: string, resolution_reasons?: string[],
 *             escalation_target?: string | null, [k: string]: any }} SupportType
 * @typedef {{ key: string, depth: number, oldest_wait_ms: number }} QueueStat
 * @typedef {{ id: string, name: string, role: string, kind?: string, status?: string,
 *             max_concurrent?: number, open_conversations?: number, email?: string }} TeamAgent
 */

const TYPING_TTL_MS = 8000;

export class Store {
  /** @param {Agent} me */
  constructor(me) {
    /** @type {Agent} */
    this.me = me;
    /** @type {Map<string, Conversation>} */
    this.convs = new Map();
    /** @type {string[]} */
    this.queue = [];
    /** @type {string[]} */
    this.mine = [];
    /** @type {string | null} */
    this.openId = null;
    /** @type {Map<string, Map<number, Message>>} */
    this.messages = new Map();
    /** @type {Map<string, Map<string, Pending>>} */
    this.pending = new Map();
    /** @type {Map<string, { baseline: number, live: Set<number> }>} */
    this.unread = new Map();
    /** @type {Record<string, number>} */
    this.viewed = loadViewed(me.id);
    /** @type {Map<string, number>} highest seq the visitor has read */
    this.visitorRead = new Map();
    /** @type {Map<string, Map<string, { name: string, role: string, until: number }>>} */
    this.typing = new Map();
    /** @type {Map<string, string>} names learnt from messages, typing and the agent list */
    this.names = new Map([[me.id, me.name]]);
    /** @type {Map<string, TeamAgent>} */
    this.agents = new Map();
    /** @type {boolean | null} whether `GET /v1/agents` is allowed (null: not tried) */
    this.agentsAllowed = null;
    /** @type {Map<string, SupportType>} */
    this.supportTypes = new Map();
    /** @type {QueueStat[]} */
    this.queueStats = [];
    /** @type {Conversation[]} supervisors: every assigned conversation */
    this.teamAssigned = [];
    /** @type {Conversation[]} supervisors: every queued conversation */
    this.teamQueued = [];
    /** @type {() => void} */
    this.onChange = () => {};
    this._scheduled = false;
  }

  /** Schedules one render for everything changed in this task. */
  changed() {
    if (this._scheduled) return;
    this._scheduled = true;
    setTimeout(() => {
      this._scheduled = false;
      this.onChange();
    }, 0);
  }

  get isSupervisor() {
    return this.me.role === 'supervisor' || this.me.role === 'admin';
  }

  /**
   * Merges what the API (or a frame) says about a conversation.
   * @param {Partial<Conversation> & { id: string }} c
   * @returns {Conversation}
   */
  upsert(c) {
    const prev = this.convs.get(c.id);
    /** @type {Conversation} */
    const next = prev ? { ...prev } : { id: c.id };
    for (const [k, v] of Object.entries(c)) {
      if (v !== undefined) next[k] = v;
    }
    this.convs.set(c.id, next);
    if (typeof c.last_seq === 'number') this.raiseBaseline(c.id, c.last_seq);
    this.changed();
    return next;
  }

  /**
   * Puts the conversation in the lists its state says: the queue while `queued`, mine
   * while assigned (or snoozed) to me. Returns whether it just became mine.
   * @param {string} id
   */
  place(id) {
    const c = this.convs.get(id);
    if (!c) return false;
    const inQueue = c.status === 'queued';
    const isMine =
      c.assignee === this.me.id && (c.status === 'assigned' || c.status === 'snoozed');
    const wasMine = this.mine.includes(id);
    if (inQueue && !this.queue.includes(id)) {
      this.queue.push(id);
      this.sortQueue();
    } else if (!inQueue && this.queue.includes(id)) {
      this.queue = this.queue.filter((x) => x !== id);
    }
    if (isMine && !wasMine) this.mine.unshift(id);
    else if (!isMine && wasMine) this.mine = this.mine.filter((x) => x !== id);
    this.changed();
    return isMine && !wasMine;
  }

  sortQueue() {
    const key = (/** @type {string} */ id) => {
      const c = this.convs.get(id);
      return [-(c?.priority ?? 0), c?.queued_at ?? c?.created_at ?? 0];
    };
    this.queue.sort((a, b) => {
      const [pa, ta] = key(a);
      const [pb, tb] = key(b);
      return pa - pb || ta - tb;
    });
  }

  /**
   * Replaces the queue with the API's answer (its order is the assignment order).
   * @param {Conversation[]} list
   */
  setQueue(list) {
    for (const c of list) this.upsert(c);
    this.queue = list.map((c) => c.id);
    this.mine = this.mine.filter((id) => !this.queue.includes(id));
    this.changed();
  }

  /**
   * Replaces my conversations with the API's answer, keeping the current order of those
   * that stay.
   * @param {Conversation[]} list
   */
  setMine(list) {
    for (const c of list) this.upsert(c);
    const ids = new Set(list.map((c) => c.id));
    const kept = this.mine.filter((id) => ids.has(id));
    const added = list.map((c) => c.id).filter((id) => !kept.includes(id));
    this.mine = [...kept, ...added];
    this.queue = this.queue.filter((id) => !ids.has(id));
    this.changed();
  }

  /** @param {string} conv */
  messageMap(conv) {
    let m = this.messages.get(conv);
    if (!m) {
      m = new Map();
      this.messages.set(conv, m);
    }
    return m;
  }

  /**
   * Adds a message (dedupes by seq). Returns whether it was new.
   * @param {Message} m
   * @param {{ countUnread?: boolean }} [opts]
   */
  addMessage(m, opts = {}) {
    if (!m || typeof m.seq !== 'number' || !m.conv) return false;
    const map = this.messageMap(m.conv);
    const had = map.get(m.seq);
    map.set(m.seq, m);
    if (m.from?.id && m.from.name) this.names.set(m.from.id, m.from.name);
    // A message from someone who was typing ends their typing.
    const typers = this.typing.get(m.conv);
    if (typers && m.from?.id) typers.delete(m.from.id);
    if (had && !had.synthetic) {
      this.changed();
      return false;
    }
    if (!had && opts.countUnread && m.from?.id !== this.me.id) {
      const u = this.unreadEntry(m.conv);
      if (m.seq > Math.max(u.baseline, this.viewed[m.conv] ?? 0)) u.live.add(m.seq);
    }
    this.changed();
    return !had;
  }

  /** @param {string} conv */
  unreadEntry(conv) {
    let u = this.unread.get(conv);
    if (!u) {
      u = { baseline: 0, live: new Set() };
      this.unread.set(conv, u);
    }
    return u;
  }

  /**
   * @param {string} conv
   * @param {number} seq
   */
  raiseBaseline(conv, seq) {
    const u = this.unreadEntry(conv);
    if (seq > u.baseline) u.baseline = seq;
  }

  /** @param {string} conv */
  unreadCount(conv) {
    const u = this.unread.get(conv);
    if (!u) return 0;
    const viewed = this.viewed[conv] ?? 0;
    const floor = Math.max(u.baseline, viewed);
    let n = Math.max(0, u.baseline - viewed);
    for (const s of u.live) if (s > floor) n++;
    return n;
  }

  totalUnread() {
    let n = 0;
    for (const id of this.mine) n += this.unreadCount(id);
    return n;
  }

  /**
   * The latest seq known for a conversation.
   * @param {string} conv
   */
  headSeq(conv) {
    let head = this.convs.get(conv)?.last_seq ?? 0;
    const map = this.messages.get(conv);
    if (map) for (const s of map.keys()) if (s > head) head = s;
    const u = this.unread.get(conv);
    if (u) {
      if (u.baseline > head) head = u.baseline;
      for (const s of u.live) if (s > head) head = s;
    }
    return head;
  }

  /**
   * The latest message held (for the list's preview).
   * @param {string} conv
   * @returns {Message | undefined}
   */
  lastMessage(conv) {
    const map = this.messages.get(conv);
    if (!map) return undefined;
    let best;
    for (const m of map.values()) if (!best || m.seq > best.seq) best = m;
    return best;
  }

  /**
   * The latest seq of a message actually held (what a read receipt may claim).
   * @param {string} conv
   */
  lastHeldSeq(conv) {
    let head = 0;
    const map = this.messages.get(conv);
    if (map) for (const [s, m] of map) if (s > head && !m.synthetic) head = s;
    return head;
  }

  /**
   * Marks everything up to the head as viewed.
   * @param {string} conv
   */
  markViewed(conv) {
    const head = this.headSeq(conv);
    let changed = false;
    if (head > (this.viewed[conv] ?? 0)) {
      this.viewed[conv] = head;
      saveViewed(this.me.id, this.viewed);
      changed = true;
    }
    const live = this.unread.get(conv)?.live;
    if (live && live.size) {
      live.clear();
      changed = true;
    }
    // Only a real change re-renders (rendering the open conversation marks it viewed).
    if (changed) this.changed();
  }

  /** @param {string} conv */
  pendingMap(conv) {
    let m = this.pending.get(conv);
    if (!m) {
      m = new Map();
      this.pending.set(conv, m);
    }
    return m;
  }

  /** @param {Pending} p */
  addPending(p) {
    if (p.after === undefined) p.after = this.headSeq(p.conv);
    this.pendingMap(p.conv).set(p.id, p);
    this.changed();
  }

  /**
   * A send was committed: the message takes its seq (a stand-in until its `msg` frame).
   * @param {{ id: string, conv: string, seq: number, msg: string, ts: number }} a
   */
  accepted(a) {
    const map = this.pending.get(a.conv);
    const p = map?.get(a.id);
    if (map) map.delete(a.id);
    if (p) {
      const held = this.messageMap(a.conv);
      if (!held.has(a.seq)) {
        held.set(a.seq, {
          conv: a.conv,
          seq: a.seq,
          msg: a.msg,
          from: { id: this.me.id, role: this.me.role, name: this.me.name },
          kind: p.kind,
          body: { text: p.text },
          ts: a.ts,
          synthetic: true, // a stand-in, replaced by the real frame
        });
      }
    }
    // My own message does not make the conversation unread.
    const u = this.unreadEntry(a.conv);
    u.live.delete(a.seq);
    if (this.openId === a.conv || (this.viewed[a.conv] ?? 0) >= a.seq - 1) {
      if (a.seq > (this.viewed[a.conv] ?? 0)) {
        this.viewed[a.conv] = a.seq;
        saveViewed(this.me.id, this.viewed);
      }
    }
    this.changed();
  }

  /**
   * @param {{ id: string, conv: string, code: string, message: string }} f
   */
  failed(f) {
    const p = this.pending.get(f.conv)?.get(f.id);
    if (p) p.failed = { code: f.code, message: f.message };
    this.changed();
  }

  /**
   * @param {string} conv
   * @param {Actor} by
   * @param {boolean} on
   */
  setTyping(conv, by, on) {
    if (!by?.id || by.id === this.me.id) return;
    let m = this.typing.get(conv);
    if (!m) {
      m = new Map();
      this.typing.set(conv, m);
    }
    if (on) {
      m.set(by.id, {
        name: by.name || (by.role === 'visitor' ? 'Visitor' : 'Someone'),
        role: by.role,
        until: Date.now() + TYPING_TTL_MS,
      });
    } else m.delete(by.id);
    this.changed();
  }

  /**
   * Who is typing in a conversation now.
   * @param {string} conv
   */
  typers(conv) {
    const m = this.typing.get(conv);
    if (!m) return [];
    const now = Date.now();
    for (const [id, t] of m) if (t.until < now) m.delete(id);
    return Array.from(m.values());
  }

  /** Forgets typing indicators past their time; re-renders if any went. */
  pruneTyping() {
    const now = Date.now();
    let gone = false;
    for (const [conv, m] of this.typing) {
      for (const [id, t] of m) {
        if (t.until < now) {
          m.delete(id);
          gone = true;
        }
      }
      if (m.size === 0) this.typing.delete(conv);
    }
    if (gone) this.changed();
  }

  /**
   * @param {string} conv
   * @param {Actor} by
   * @param {number} seq
   */
  setRead(conv, by, seq) {
    if (!by || by.id === this.me.id) return;
    if (by.role === 'visitor') {
      if (seq > (this.visitorRead.get(conv) ?? 0)) this.visitorRead.set(conv, seq);
      this.changed();
    }
  }

  /** @param {string | null | undefined} id */
  nameOf(id) {
    if (!id) return '';
    if (id === this.me.id) return 'You';
    return this.agents.get(id)?.name || this.names.get(id) || `Agent ${id.slice(0, 8)}`;
  }

  /** Every conversation of the left column, in display order. */
  navigationOrder() {
    return [...this.queue, ...this.mine];
  }
}

/** @param {string} agentId */
function viewedKey(agentId) {
  return `relaydesk.console.viewed.${agentId}`;
}

/**
 * @param {string} agentId
 * @returns {Record<string, number>}
 */
function loadViewed(agentId) {
  try {
    const v = JSON.parse(localStorage.getItem(viewedKey(agentId)) || '{}');
    return v && typeof v === 'object' ? v : {};
  } catch {
    return {};
  }
}

/**
 * @param {string} agentId
 * @param {Record<string, number>} viewed
 */
function saveViewed(agentId, viewed) {
  try {
    const entries = Object.entries(viewed);
    // Bounded: the most recently raised entries are kept (insertion order approximates it).
    const kept = entries.length > 1000 ? Object.fromEntries(entries.slice(-800)) : viewed;
    localStorage.setItem(viewedKey(agentId), JSON.stringify(kept));
  } catch {
    /* storage unavailable: counts reset on reload */
  }
}
