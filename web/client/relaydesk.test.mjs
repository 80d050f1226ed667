// Unit tests of the protocol v1 client: `node --test web/client/` (Node 20, no dependencies).
// A fake WebSocket class and a fake fetch stand in for the edge and core-api.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RelaydeskClient, api, newClientId, ApiError } from './relaydesk.js';

const CONV = '11111111-1111-4111-8111-111111111111';
const CONV2 = '22222222-2222-4222-8222-222222222222';

/** A WebSocket double: records what the client sends; the test plays the edge. */
class FakeWS {
  /** @type {FakeWS[]} */
  static all = [];
  constructor(url) {
    this.url = url;
    this.sent = [];
    this.readyState = 0;
    this.closedWith = null;
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
    FakeWS.all.push(this);
  }
  send(data) {
    if (this.readyState !== 1) throw new Error('not open');
    this.sent.push(JSON.parse(data));
  }
  close(code = 1000) {
    this.closedWith = code;
    this.readyState = 3;
  }
  // --- the edge's side ---
  open() {
    this.readyState = 1;
    this.onopen?.({});
  }
  frame(f) {
    this.onmessage?.({ data: JSON.stringify(f) });
  }
  welcome(role = 'visitor', principal = 'p1') {
    this.frame({ t: 'welcome', conn: 'c1', tenant: 't1', principal, role, heartbeat_ms: 25000, max_message: 65536 });
  }
  serverClose(code) {
    this.readyState = 3;
    this.onclose?.({ code, reason: '' });
  }
  framesOf(t) {
    return this.sent.filter((f) => f.t === t);
  }
}

/** In-memory Storage. */
class MemStorage {
  constructor() {
    this.m = new Map();
  }
  getItem(k) {
    return this.m.has(k) ? this.m.get(k) : null;
  }
  setItem(k, v) {
    this.m.set(k, String(v));
  }
  removeItem(k) {
    this.m.delete(k);
  }
}

const tick = (ms = 0) => new Promise((r) => setTimeout(r, ms));

/** Waits until `pred()` is truthy (polling), or fails. */
async function until(pred, what = 'condition', ms = 2000) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    const v = pred();
    if (v) return v;
    await tick(2);
  }
  assert.fail(`timed out waiting for ${what}`);
}

/** The next socket the client opens (after `n` existing ones), opened and welcomed. */
async function nextSocket(n, { role = 'visitor', welcome = true } = {}) {
  const ws = await until(() => FakeWS.all[n], `socket #${n + 1}`);
  ws.open();
  assert.equal(ws.sent[0].t, 'hello');
  if (welcome) ws.welcome(role);
  return ws;
}

function makeClient(extra = {}) {
  FakeWS.all = [];
  let tokens = 0;
  const connects = [];
  const client = new RelaydeskClient({
    apiBase: 'http://core.test',
    apiToken: 'api-token',
    connect: async () => {
      connects.push(++tokens);
      return { token: `tok${tokens}`, edgeUrls: ['ws://edge-a/v1/ws', 'ws://edge-b/v1/ws'] };
    },
    storage: new MemStorage(),
    WebSocketImpl: /** @type {any} */ (FakeWS),
    fetchImpl: /** @type {any} */ (async () => {
      throw new Error('no fetch expected');
    }),
    backoffBaseMs: 1,
    backoffCapMs: 5,
    ackDelayMs: 5,
    fallbackAfter: 100,
    ...extra,
  });
  const events = [];
  for (const t of ['state', 'welcome', 'message', 'accepted', 'failed', 'typing', 'read', 'conv', 'presence', 'error']) {
    client.addEventListener(t, (e) => events.push({ type: t, detail: /** @type {CustomEvent} */ (e).detail }));
  }
  return { client, events, connects };
}

const msg = (seq, extra = {}) => ({
  t: 'msg',
  conv: CONV,
  seq,
  msg: `m${seq}`,
  from: { id: 'a1', role: 'agent', name: 'Ann' },
  kind: 'text',
  body: { text: `hello ${seq}` },
  ts: 1700000000000 + seq,
  ...extra,
});

test('newClientId is a valid protocol id and unique', () => {
  const ids = new Set();
  for (let i = 0; i < 1000; i++) {
    const id = newClientId();
    assert.match(id, /^[A-Za-z0-9_-]{1,64}$/);
    ids.add(id);
  }
  assert.equal(ids.size, 1000);
});

test('api() sends JSON with the Bearer token and throws status and code', async () => {
  const calls = [];
  const fetchImpl = async (url, init) => {
    calls.push({ url, init });
    if (url.endsWith('/ok')) return new Response(JSON.stringify({ a: 1 }), { status: 200 });
    if (url.endsWith('/empty')) return new Response(null, { status: 204 });
    return new Response(JSON.stringify({ error: { code: 'not_found', message: 'conversation' } }), { status: 404 });
  };
  assert.deepEqual(await api('http://x/', 'tk', 'POST', '/ok', { b: 2 }, { fetchImpl }), { a: 1 });
  assert.equal(calls[0].url, 'http://x/ok');
  assert.equal(calls[0].init.headers.Authorization, 'Bearer tk');
  assert.equal(calls[0].init.headers['Content-Type'], 'application/json');
  assert.equal(calls[0].init.body, '{"b":2}');
  assert.equal(await api('http://x', null, 'GET', '/empty', undefined, { fetchImpl }), null);
  assert.equal(calls[1].init.headers.Authorization, undefined);
  await assert.rejects(api('http://x', 'tk', 'GET', '/missing', undefined, { fetchImpl }), (e) => {
    assert.ok(e instanceof ApiError);
    assert.equal(e.status, 404);
    assert.equal(e.code, 'not_found');
    assert.equal(e.message, 'conversation');
    return true;
  });
  await assert.rejects(
    api('http://x', 'tk', 'GET', '/net', undefined, { fetchImpl: async () => { throw new TypeError('down'); } }),
    (e) => e.status === 0 && e.code === 'unavailable',
  );
});

test('hello with a fresh token per attempt, welcome, principal and state', async () => {
  const { client, events, connects } = makeClient();
  assert.equal(client.state, 'closed');
  client.start();
  assert.equal(client.state, 'connecting');
  const ws = await nextSocket(0, { role: 'agent' });
  assert.deepEqual(ws.sent[0], { t: 'hello', token: 'tok1' });
  assert.equal(client.state, 'open');
  assert.deepEqual(client.principal, { id: 'p1', role: 'agent', tenant: 't1' });
  assert.ok(events.some((e) => e.type === 'welcome'));
  ws.serverClose(1012);
  const ws2 = await nextSocket(1, { role: 'agent' });
  assert.deepEqual(ws2.sent[0], { t: 'hello', token: 'tok2' });
  assert.deepEqual(connects, [1, 2]);
  assert.notEqual(ws2.url, ws.url, 'a different edge first after the connection ended');
  client.stop();
  assert.equal(client.state, 'closed');
});

test('an outbox entry is resent with the same id after every reconnect until accepted', async () => {
  const storage = new MemStorage();
  const { client, events } = makeClient({ storage, storageKey: 'k' });
  client.start();
  const ws1 = await nextSocket(0);
  const id = client.send(CONV, 'where is my order?');
  assert.match(id, /^[A-Za-z0-9_-]{1,64}$/);
  assert.deepEqual(ws1.framesOf('send'), [{ t: 'send', id, conv: CONV, kind: 'text', body: { text: 'where is my order?' } }]);
  assert.deepEqual(client.pending(CONV), [{ id, conv: CONV, text: 'where is my order?', kind: 'text' }]);
  assert.equal(JSON.parse(storage.getItem('k')).outbox[0].id, id, 'the outbox is persisted');

  // Connection lost before `accepted`: resent with the same id, twice.
  ws1.serverClose(1006);
  const ws2 = await nextSocket(1);
  assert.deepEqual(ws2.framesOf('send').map((f) => f.id), [id]);
  ws2.serverClose(4008);
  const ws3 = await nextSocket(2);
  assert.deepEqual(ws3.framesOf('send').map((f) => f.id), [id]);

  // A retryable refusal: sent again on the same connection, same id.
  ws3.frame({ t: 'error', id, code: 'unavailable', message: 'redis down', retry_after_ms: 5 });
  await until(() => ws3.framesOf('send').length === 2, 'resend after retry_after_ms');
  assert.equal(ws3.framesOf('send')[1].id, id);

  ws3.frame({ t: 'accepted', id, conv: CONV, seq: 7, msg: 'm7', ts: 1 });
  assert.deepEqual(client.pending(CONV), []);
  assert.deepEqual(JSON.parse(storage.getItem('k')).outbox, []);
  assert.deepEqual(events.filter((e) => e.type === 'accepted').map((e) => e.detail), [
    { id, conv: CONV, seq: 7, msg: 'm7', ts: 1 },
  ]);

  // Once accepted, never sent again.
  ws3.serverClose(1001);
  const ws4 = await nextSocket(3);
  assert.deepEqual(ws4.framesOf('send'), []);
  client.stop();
});

test('the outbox survives a page reload and is resent with the same ids', async () => {
  const storage = new MemStorage();
  const first = makeClient({ storage, storageKey: 'k' });
  const id = first.client.send(CONV, 'sent while offline'); // never started: offline
  first.client.stop();

  const second = makeClient({ storage, storageKey: 'k' });
  assert.deepEqual(second.client.pending(CONV).map((e) => e.id), [id]);
  second.client.start();
  const ws = await nextSocket(0);
  assert.deepEqual(ws.framesOf('send').map((f) => f.id), [id]);
  second.client.stop();
});

test('a non-retryable refusal drops the entry with a failed event', async () => {
  const { client, events } = makeClient();
  client.start();
  const ws = await nextSocket(0);
  const id = client.send(CONV, 'x');
  ws.frame({ t: 'error', id, code: 'forbidden', message: 'handed off' });
  assert.deepEqual(client.pending(CONV), []);
  assert.deepEqual(events.find((e) => e.type === 'failed').detail, { id, conv: CONV, code: 'forbidden', message: 'handed off' });
  // A message the edge would refuse by size fails at once instead of looping on 1009.
  const big = client.send(CONV, 'x'.repeat(70000));
  assert.equal(events.filter((e) => e.type === 'failed').at(-1).detail.id, big);
  assert.equal(ws.framesOf('send').length, 1);
  client.stop();
});

test('sub is re-sent after every reconnect from the last contiguous seq', async () => {
  const { client } = makeClient();
  client.subscribe(CONV);
  client.start();
  const ws1 = await nextSocket(0, { role: 'agent' });
  assert.deepEqual(ws1.framesOf('sub'), [{ t: 'sub', conv: CONV, after: 0 }]);
  ws1.frame({ t: 'subbed', conv: CONV, head: 2 });
  ws1.frame(msg(1));
  ws1.frame(msg(2));
  assert.equal(client.lastSeq(CONV), 2);
  ws1.serverClose(1012);
  const ws2 = await nextSocket(1, { role: 'agent' });
  assert.deepEqual(ws2.framesOf('sub'), [{ t: 'sub', conv: CONV, after: 2 }]);
  client.stop();
});

test('no duplicate message events when a replay overlaps live frames', async () => {
  const { client, events } = makeClient();
  client.start();
  const ws = await nextSocket(0, { role: 'visitor' });
  // Auto-subscribed: live frames arrive before our sub is answered…
  client.subscribe(CONV);
  ws.frame(msg(1));
  ws.frame(msg(2));
  ws.frame({ t: 'subbed', conv: CONV, head: 3 });
  // …and come again in the replay, then live ones (one of them twice).
  ws.frame(msg(1));
  ws.frame(msg(2));
  ws.frame(msg(3));
  ws.frame(msg(3));
  ws.frame(msg(4));
  const seqs = events.filter((e) => e.type === 'message').map((e) => e.detail.message.seq);
  assert.deepEqual(seqs, [1, 2, 3, 4]);
  assert.deepEqual(client.messages(CONV).map((m) => m.seq), [1, 2, 3, 4]);
  assert.equal(client.messages(CONV)[0].t, undefined, 'messages are stored without `t`');
  assert.equal(client.lastSeq(CONV), 4);
  // Cumulative ack, batched.
  await until(() => ws.framesOf('ack').length, 'ack');
  await tick(20);
  assert.deepEqual(ws.framesOf('ack').at(-1), { t: 'ack', conv: CONV, seq: 4 });
  assert.ok(ws.framesOf('ack').length <= 2, 'acks are batched');
  client.stop();
});

test('a gap makes the client re-subscribe from its last contiguous seq', async () => {
  const { client, events } = makeClient();
  client.subscribe(CONV);
  client.start();
  const ws = await nextSocket(0, { role: 'agent' });
  ws.frame({ t: 'subbed', conv: CONV, head: 1 });
  ws.frame(msg(1));
  ws.frame(msg(3)); // 2 is missing
  assert.deepEqual(ws.framesOf('sub'), [
    { t: 'sub', conv: CONV, after: 0 },
    { t: 'sub', conv: CONV, after: 1 },
  ]);
  ws.frame(msg(4)); // live, still before `subbed`: no second re-sub
  assert.equal(ws.framesOf('sub').length, 2);
  ws.frame({ t: 'subbed', conv: CONV, head: 4 });
  ws.frame(msg(2));
  ws.frame(msg(3));
  ws.frame(msg(4));
  assert.deepEqual(events.filter((e) => e.type === 'message').map((e) => e.detail.message.seq), [1, 2, 3, 4]);
  assert.equal(client.lastSeq(CONV), 4);
  client.stop();
});

test('a message of an unknown conversation is tracked and its history fetched with sub', async () => {
  const { client } = makeClient();
  client.start();
  const ws = await nextSocket(0, { role: 'visitor' });
  ws.frame(msg(5, { conv: CONV2 }));
  assert.deepEqual(ws.framesOf('sub'), [{ t: 'sub', conv: CONV2, after: 0 }]);
  ws.serverClose(1012);
  const ws2 = await nextSocket(1);
  assert.deepEqual(ws2.framesOf('sub'), [{ t: 'sub', conv: CONV2, after: 0 }], 'resumed after reconnect');
  client.stop();
});

test("a visitor's replay skips staff-only seqs without re-subscribing", async () => {
  const { client, events } = makeClient();
  client.subscribe(CONV);
  client.start();
  const ws = await nextSocket(0, { role: 'visitor' });
  ws.frame({ t: 'subbed', conv: CONV, head: 5 });
  for (const s of [1, 2, 4, 5]) ws.frame(msg(s)); // 3 was a note
  ws.frame(msg(7)); // 6 was a note too, after the head
  assert.equal(ws.framesOf('sub').length, 1);
  assert.deepEqual(events.filter((e) => e.type === 'message').map((e) => e.detail.message.seq), [1, 2, 4, 5, 7]);
  client.stop();
});

test('conv frames: a new conversation of a visitor is subscribed; queue frames do not subscribe agents', async () => {
  const v = makeClient();
  v.client.start();
  const ws = await nextSocket(0, { role: 'visitor' });
  ws.frame({ t: 'conv', conv: CONV, event: 'created', status: 'queued' });
  assert.deepEqual(ws.framesOf('sub'), [{ t: 'sub', conv: CONV, after: 0 }]);
  assert.equal(v.events.find((e) => e.type === 'conv').detail.frame.event, 'created');
  v.client.stop();

  const a = makeClient();
  a.client.start();
  const ws2 = await nextSocket(0, { role: 'agent' });
  ws2.frame({ t: 'conv', conv: CONV, event: 'queued', status: 'queued' });
  assert.deepEqual(ws2.framesOf('sub'), []);
  ws2.frame({ t: 'conv', conv: CONV2, event: 'assigned', status: 'assigned', assignee: 'p1' });
  assert.deepEqual(ws2.framesOf('sub'), [{ t: 'sub', conv: CONV2, after: 0 }]);
  a.client.stop();
});

test('typing is throttled, read receipts are sent, events carry the frames', async () => {
  const { client, events } = makeClient();
  client.start();
  const ws = await nextSocket(0);
  client.typing(CONV, true);
  client.typing(CONV, true);
  client.typing(CONV, false);
  client.typing(CONV, false);
  client.typing(CONV, true);
  assert.deepEqual(ws.framesOf('typing').map((f) => f.on), [true, false, true]);
  client.read(CONV, 3);
  client.read(CONV, 2);
  assert.deepEqual(ws.framesOf('read'), [{ t: 'read', conv: CONV, seq: 3 }]);
  ws.frame({ t: 'typing', conv: CONV, by: { id: 'a1', role: 'agent', name: 'Ann' }, on: true });
  ws.frame({ t: 'read', conv: CONV, by: { id: 'a1', role: 'agent' }, seq: 9 });
  ws.frame({ t: 'presence', agent: 'a1', status: 'away' });
  assert.deepEqual(events.find((e) => e.type === 'typing').detail, { conv: CONV, by: { id: 'a1', role: 'agent', name: 'Ann' }, on: true });
  assert.deepEqual(events.find((e) => e.type === 'read').detail, { conv: CONV, by: { id: 'a1', role: 'agent' }, seq: 9 });
  assert.equal(events.find((e) => e.type === 'presence').detail.frame.status, 'away');
  client.stop();
});

for (const code of [4500, 4503]) {
  test(`close code ${code} is terminal: state closed, no reconnect`, async () => {
    const { client, events, connects } = makeClient();
    client.start();
    const ws = await nextSocket(0);
    ws.serverClose(code);
    assert.equal(client.state, 'closed');
    assert.deepEqual(events.filter((e) => e.type === 'state').at(-1).detail, { state: 'closed', code });
    await tick(50);
    assert.equal(FakeWS.all.length, 1, 'no new socket');
    assert.equal(connects.length, 1, 'no new token');
    client.stop();
  });
}

test('close code 4501 gets a new token and reconnects; other codes reconnect', async () => {
  const { client, connects } = makeClient();
  client.start();
  const ws = await until(() => FakeWS.all[0]);
  ws.open();
  ws.serverClose(4501); // token refused before welcome
  const ws2 = await nextSocket(1);
  assert.deepEqual(ws2.sent[0], { t: 'hello', token: 'tok2' });
  assert.equal(connects.length, 2);
  for (const [i, code] of [1000, 1001, 1012, 4008, 4011, 4029].entries()) {
    FakeWS.all[i + 1].serverClose(code);
    await nextSocket(i + 2);
  }
  assert.equal(client.state, 'open');
  client.stop();
});

test('a missing pong closes the connection and reconnects', async () => {
  const { client } = makeClient({ pingIntervalMs: 10, pongTimeoutMs: 10 });
  client.start();
  const ws = await nextSocket(0);
  await until(() => ws.framesOf('ping').length, 'ping when idle');
  await until(() => ws.closedWith !== null, 'dead connection closed');
  await nextSocket(1);
  client.stop();
});

test('after failed attempts: REST fallback with long-poll and Idempotency-Key, WebSocket retried', async () => {
  const posts = [];
  const polls = [];
  let postCount = 0;
  let pollCount = 0;
  const fetchImpl = async (url, init) => {
    const u = new URL(url);
    if (init.method === 'POST') {
      postCount++;
      posts.push({ path: u.pathname, key: init.headers['Idempotency-Key'], body: JSON.parse(init.body), auth: init.headers.Authorization });
      if (postCount === 1) {
        return new Response(JSON.stringify({ error: { code: 'unavailable', message: 'try later' } }), {
          status: 503,
          headers: { 'Retry-After': '0' },
        });
      }
      const key = init.headers['Idempotency-Key'];
      return new Response(JSON.stringify({ id: key, conv: CONV, seq: 3, msg: 'm3', ts: 5 }), { status: 201 });
    }
    polls.push({ path: u.pathname, after: u.searchParams.get('after'), wait: u.searchParams.get('wait'), auth: init.headers.Authorization });
    pollCount++;
    if (pollCount === 1) {
      return new Response(JSON.stringify({ messages: [msg(1), msg(2), msg(3)].map(({ t, ...m }) => m) }), { status: 200 });
    }
    // Later polls hang until aborted (leaving the fallback).
    return new Promise((_, reject) => {
      init.signal?.addEventListener('abort', () => {
        const e = new Error('aborted');
        e.name = 'AbortError';
        reject(e);
      });
    });
  };
  const { client, events } = makeClient({ fetchImpl, fallbackAfter: 2, fallbackRetryMs: 80 });
  client.subscribe(CONV);
  const id = client.send(CONV, 'via REST');
  client.start();
  // Two attempts fail (the edge is unreachable).
  (await until(() => FakeWS.all[0])).serverClose(1006);
  (await until(() => FakeWS.all[1])).serverClose(1006);
  assert.equal(client.state, 'fallback');

  await until(() => events.some((e) => e.type === 'accepted'), 'accepted over REST');
  assert.equal(posts.length, 2, 'retried after 503');
  for (const p of posts) {
    assert.equal(p.path, `/v1/conversations/${CONV}/messages`);
    assert.equal(p.key, id, 'Idempotency-Key is the client id, the same on the retry');
    assert.deepEqual(p.body, { kind: 'text', body: { text: 'via REST' } });
    assert.equal(p.auth, 'Bearer api-token');
  }
  assert.deepEqual(events.find((e) => e.type === 'accepted').detail, { id, conv: CONV, seq: 3, msg: 'm3', ts: 5 });
  assert.deepEqual(client.pending(CONV), []);

  await until(() => client.lastSeq(CONV) === 3, 'long-poll messages');
  assert.deepEqual(polls[0], { path: `/v1/conversations/${CONV}/messages`, after: '0', wait: '25', auth: 'Bearer api-token' });
  await until(() => polls.length >= 2, 'next long-poll');
  assert.equal(polls[1].after, '3');
  assert.deepEqual(events.filter((e) => e.type === 'message').map((e) => e.detail.message.seq), [1, 2, 3]);

  // The WebSocket is retried in the background; once it works, the fallback ends.
  const ws = await until(() => FakeWS.all[2], 'background WebSocket retry');
  ws.open();
  ws.welcome();
  assert.equal(client.state, 'open');
  assert.deepEqual(ws.framesOf('sub'), [{ t: 'sub', conv: CONV, after: 3 }]);
  client.stop();
});

test('ingest() merges REST history without duplicate events', async () => {
  const { client, events } = makeClient();
  const page = [1, 2, 3].map((s) => {
    const { t, ...m } = msg(s);
    return m;
  });
  client.ingest(CONV, page, 0);
  client.ingest(CONV, page, 0);
  assert.deepEqual(events.filter((e) => e.type === 'message').map((e) => e.detail.message.seq), [1, 2, 3]);
  assert.equal(client.lastSeq(CONV), 3);
  client.stop();
});

test('stop() then start() resends the outbox and re-subscribes on the new connection', async () => {
  const { client } = makeClient();
  client.subscribe(CONV);
  client.start();
  const ws1 = await nextSocket(0);
  const id = client.send(CONV, 'x');
  assert.equal(ws1.framesOf('send').length, 1);
  client.stop();
  assert.equal(ws1.closedWith, 1000);
  client.start();
  const ws2 = await nextSocket(1);
  assert.deepEqual(ws2.framesOf('send').map((f) => f.id), [id]);
  assert.deepEqual(ws2.framesOf('sub'), [{ t: 'sub', conv: CONV, after: 0 }]);
  client.stop();
});
