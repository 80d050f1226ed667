// @ts-check
// End-to-end: the agent console and the visitor widget in headless Chromium, against a
// real stack started by `cargo xtask test` (core-api and two edges as processes).
//
// The scenario: a visitor on the demo page writes; the logged-in agent gets the
// assignment live and replies; the visitor sees it; typing shows on both sides; the
// visitor's edge is killed (SIGKILL, by xtask) and the widget reconnects through the
// other edge without losing or duplicating what either side sent meanwhile; a private
// note never appears in the widget; resolve → the CSAT prompt → the score is stored.
// Screenshots of both go to $SCREENSHOTS for the README.
//
// Protocol with xtask: print `KILL <edge ws url>` on stdout, wait for `KILLED` on stdin.

import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const CORE = process.env.CORE_URL ?? '';
const SETUP = JSON.parse(process.env.SETUP ?? '{}');
const SHOTS = process.env.SCREENSHOTS ?? '.';
const TIMEOUT = 20_000;

const stdinLines = createInterface({ input: process.stdin });
/** @type {((line: string) => void)[]} */
const waiting = [];
stdinLines.on('line', (line) => waiting.shift()?.(line));

/** Asks xtask to SIGKILL the edge at `url` and waits until it is dead. */
async function killEdge(url) {
  const done = new Promise((resolve) => waiting.push(resolve));
  process.stdout.write(`KILL ${url}\n`);
  const answer = await done;
  assert.equal(answer.trim(), 'KILLED');
}

function log(step) {
  console.error(`e2e: ${step}`);
}

async function api(method, path, body) {
  const r = await fetch(CORE + path, {
    method,
    headers: { 'content-type': 'application/json', authorization: `Bearer ${SETUP.api_key}` },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  assert.ok(r.ok, `${method} ${path}: ${r.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

/** Texts of the elements matching `selector`, in document order. */
async function texts(page, selector) {
  return page.locator(selector).allTextContents();
}

/** The seqs (data-seq) of the elements matching `selector`, as numbers. */
async function seqs(page, selector) {
  const values = await page.locator(selector).evaluateAll((els) => els.map((e) => e.getAttribute('data-seq') ?? ''));
  return values.filter((v) => v !== '').map(Number);
}

async function main() {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  try {
    await scenario(browser);
  } finally {
    await browser.close();
  }
}

const AXE = createRequire(import.meta.url).resolve('axe-core/axe.min.js');

/**
 * WCAG 2 A/AA violations of serious or critical impact found by axe-core in `selector`
 * (open shadow roots included): none are allowed.
 * @param {import('playwright-core').Page} page
 */
async function accessibility(page, selector, what) {
  await page.addScriptTag({ path: AXE });
  const found = await page.evaluate(async (sel) => {
    // @ts-ignore: injected above
    const result = await window.axe.run(sel, { runOnly: ['wcag2a', 'wcag2aa'] });
    return result.violations
      .filter((v) => v.impact === 'serious' || v.impact === 'critical')
      .map((v) => `${v.id} (${v.impact}): ${v.help} — ${v.nodes.map((n) => n.target.join(' ')).join(', ')}`);
  }, selector);
  assert.deepEqual(found, [], `accessibility of the ${what}:\n${found.join("\n")}`);
}

/** @param {import('playwright-core').Browser} browser */
async function scenario(browser) {
  // ---- The agent logs in and goes online.
  const agentContext = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const agent = await agentContext.newPage();
  agent.setDefaultTimeout(TIMEOUT);
  agent.on('pageerror', (e) => log(`console page error: ${e.message}`));
  await agent.goto(`${CORE}/console?tenant=${SETUP.tenant_id}`);
  // Wrong passwords for an account until the server locks it out: the form says for how
  // long, from the answer's Retry-After.
  await agent.getByTestId('login-email').fill(`nobody-${Date.now()}@example.test`);
  await agent.getByTestId('login-password').fill('not the password');
  const loginError = agent.locator('#login-error');
  let refusal = '';
  for (let i = 0; i < 8 && !refusal.startsWith('Too many'); i++) {
    await agent.getByTestId('login-submit').click();
    await agent.locator('[data-testid="login-submit"]:not([disabled])').waitFor();
    refusal = (await loginError.textContent()) ?? '';
  }
  assert.match(refusal, /^Too many attempts, try again in \d+ s\.$/);
  log(`a locked-out login reads: ${refusal}`);
  await agent.getByTestId('login-email').fill(SETUP.agent_email);
  await agent.getByTestId('login-password').fill(SETUP.agent_password);
  await agent.getByTestId('login-submit').click();
  await agent.getByTestId('status-toggle').waitFor();
  await agent.getByTestId('status-toggle').selectOption('online');
  log('agent logged in and online');

  // ---- A visitor opens the demo page and writes.
  const visitorContext = await browser.newContext({ viewport: { width: 390, height: 760 } });
  const visitor = await visitorContext.newPage();
  visitor.setDefaultTimeout(TIMEOUT);
  visitor.on('pageerror', (e) => log(`widget page error: ${e.message}`));
  /** @type {string[]} every WebSocket the widget opened, in order */
  const sockets = [];
  /** @type {Set<string>} */
  const open = new Set();
  visitor.on('websocket', (ws) => {
    sockets.push(ws.url());
    open.add(ws.url());
    ws.on('close', () => open.delete(ws.url()));
  });
  await visitor.goto(`${CORE}/demo?site_key=${SETUP.site_key}`);
  await visitor.getByTestId('widget-bubble').click();
  await visitor.getByTestId('widget-input').fill('Hello, my order has not arrived');
  await visitor.getByTestId('widget-send').click();
  await visitor.locator('[data-testid="widget-message"][data-seq="1"]').waitFor();
  log('the visitor wrote; the message is accepted (seq 1)');

  // ---- The agent gets the assignment live, opens it, replies.
  const item = agent.getByTestId('conversation-item').first();
  await item.waitFor();
  const conv = await item.getAttribute('data-conv');
  assert.ok(conv, 'the conversation item names its conversation');
  await item.click();
  await agent.locator('[data-testid="message"][data-seq="1"]').waitFor();
  assert.match((await texts(agent, '[data-testid="message"]')).join('\n'), /order has not arrived/);

  // Typing shows on the visitor's side while the agent types…
  await agent.getByTestId('message-input').pressSequentially('Let me check', { delay: 30 });
  await visitor.getByTestId('widget-typing').waitFor({ state: 'visible' });
  await agent.getByTestId('send-button').click();
  await visitor.getByText('Let me check').waitFor();
  log('the agent replied; the visitor sees it');
  // …and on the agent's side while the visitor types.
  await visitor.getByTestId('widget-input').pressSequentially('Order 1234', { delay: 30 });
  await agent.getByTestId('typing-indicator').waitFor({ state: 'visible' });
  await visitor.getByTestId('widget-send').click();
  await agent.locator('[data-testid="message"]', { hasText: 'Order 1234' }).waitFor();
  log('typing shows on both sides');

  // ---- Kill the visitor's edge; both sides keep writing; nothing is lost or doubled.
  const current = [...open].pop();
  assert.ok(current, 'the widget has an open WebSocket');
  const before = sockets.length;
  await killEdge(current);
  log(`killed the visitor's edge ${current}`);
  await visitor.getByTestId('widget-input').fill('Sent while reconnecting 1');
  await visitor.getByTestId('widget-send').click();
  await visitor.getByTestId('widget-input').fill('Sent while reconnecting 2');
  await visitor.getByTestId('widget-send').click();
  await agent.getByTestId('message-input').fill('Found it: it ships today');
  await agent.getByTestId('send-button').click();
  // The widget reconnects through the other edge and everything arrives once.
  await visitor.getByText('Found it: it ships today').waitFor({ timeout: 45_000 });
  await visitor.locator('[data-testid="widget-message"]', { hasText: 'Sent while reconnecting 2' })
    .and(visitor.locator('[data-seq]:not([data-seq=""])')).waitFor({ timeout: 45_000 });
  assert.ok(sockets.length > before, 'the widget opened a new WebSocket');
  assert.notEqual(sockets[sockets.length - 1], current, 'through another edge');
  await agent.locator('[data-testid="message"]', { hasText: 'Sent while reconnecting 2' }).waitFor();
  const widgetSeqs = await seqs(visitor, '[data-testid="widget-message"]');
  assert.deepEqual(widgetSeqs, [...widgetSeqs].sort((a, b) => a - b), 'in order');
  assert.equal(new Set(widgetSeqs).size, widgetSeqs.length, `no duplicates in the widget: ${widgetSeqs}`);
  const agentSeqs = await seqs(agent, '[data-testid="message"]');
  assert.equal(new Set(agentSeqs).size, agentSeqs.length, `no duplicates in the console: ${agentSeqs}`);
  const stored = await api('GET', `/v1/conversations/${conv}/messages?limit=100`);
  const storedTexts = stored.messages.map((m) => m.body.text);
  for (const t of ['Sent while reconnecting 1', 'Sent while reconnecting 2', 'Found it: it ships today']) {
    assert.equal(storedTexts.filter((x) => x === t).length, 1, `"${t}" stored exactly once`);
  }
  const visible = stored.messages.filter((m) => m.kind === 'text').map((m) => m.seq);
  assert.deepEqual([...new Set(widgetSeqs)].sort((a, b) => a - b), visible, 'the widget holds every message');
  log('reconnected through the other edge: nothing lost, nothing doubled');

  // ---- A private note never reaches the widget.
  await agent.getByTestId('note-toggle').click();
  await agent.getByTestId('message-input').fill('Internal: customer is a VIP');
  await agent.getByTestId('send-button').click();
  await agent.locator('[data-testid="message"][data-kind="note"]').waitFor();
  await agent.getByTestId('note-toggle').click();
  await agent.getByTestId('message-input').fill('Anything else?');
  await agent.getByTestId('send-button').click();
  await visitor.getByText('Anything else?').waitFor();
  assert.equal(await visitor.getByText('customer is a VIP').count(), 0, 'the note is not in the widget');
  assert.equal(await visitor.locator('[data-testid="widget-message"][data-kind="note"]').count(), 0);
  log('the note stayed with the agents');

  // Accessible: no serious WCAG 2 A/AA violation in the open widget or the console.
  await accessibility(visitor, 'relaydesk-widget', 'widget');
  await accessibility(agent, 'body', 'console');
  log('axe-core finds no serious accessibility violation in either');

  // Screenshots while the conversation is live.
  await visitor.screenshot({ path: `${SHOTS}/widget.png` });
  await agent.screenshot({ path: `${SHOTS}/console.png` });

  // ---- Resolve; the visitor rates it; the score is stored.
  await agent.getByTestId('resolve-button').click();
  await agent.getByTestId('resolve-reason').selectOption('solved');
  await agent.getByTestId('resolve-confirm').click();
  await visitor.getByTestId('widget-csat').waitFor();
  await visitor.screenshot({ path: `${SHOTS}/widget-csat.png` });
  await visitor.getByTestId('widget-csat-5').click();
  let csat = null;
  for (let i = 0; i < 100 && !csat; i++) {
    const c = await api('GET', `/v1/conversations/${conv}`);
    csat = c.conversation.csat;
    if (!csat) await new Promise((r) => setTimeout(r, 100));
  }
  assert.equal(csat?.score, 5, 'the CSAT score is stored');
  log('resolved; the visitor rated it 5; stored');

  // ---- The widget survives a reload: same visitor, same conversation, same history.
  await visitor.reload();
  await visitor.getByTestId('widget-bubble').click();
  await visitor.getByText('Anything else?').waitFor();
  log('after a reload the widget shows the same conversation');

  // The widget on a desktop-sized host page, which it must not restyle.
  await visitor.setViewportSize({ width: 1280, height: 800 });
  await visitor.getByText('Anything else?').waitFor();
  await visitor.screenshot({ path: `${SHOTS}/widget-desktop.png` });
}

main().then(
  () => {
    log('all browser checks passed');
    process.exit(0);
  },
  (e) => {
    console.error(e);
    process.exit(1);
  },
);
