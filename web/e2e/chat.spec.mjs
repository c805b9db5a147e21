// chat.spec.mjs drives chatgg's chat page in headless Chromium. It is run by
// TestChatPageInBrowser (web/e2e_test.go), which starts chatgg and passes:
//
//   CHATGG_HTTP        http://127.0.0.1:PORT, the REST port serving the page
//   CHATGG_WS_PORT     the WebSocket port (page A connects directly)
//   CHATGG_PROXY_PORT  a proxy to the WebSocket port that the test can cut (page B)
//   CHATGG_CTRL        the test's control endpoint: POST /proxy/{down,up}, /server/{stop,start}
//   CHATGG_ROOM        a room name no other run uses
//   CHATGG_ARTIFACTS   where screenshots go
//   PLAYWRIGHT_CORE    tools/node/node_modules/playwright-core
//   CHROMIUM           /usr/bin/chromium
//
// It exits non-zero on the first failed check, after screenshots of every
// page as it was then.

import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import path from 'node:path';

function env(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set; run this through go test ./web`);
  return v;
}

const HTTP = env('CHATGG_HTTP');
const WS_PORT = env('CHATGG_WS_PORT');
const PROXY_PORT = env('CHATGG_PROXY_PORT');
const CTRL = env('CHATGG_CTRL');
const ROOM = env('CHATGG_ROOM');
const ARTIFACTS = env('CHATGG_ARTIFACTS');
const require = createRequire(path.join(env('PLAYWRIGHT_CORE'), 'package.json'));
const { chromium } = require(env('PLAYWRIGHT_CORE'));

const WAIT = 15000; // per expectation; reconnects back off for a few seconds
const t0 = Date.now();
const log = (...a) => console.log(`[${((Date.now() - t0) / 1000).toFixed(1)}s]`, ...a);

// ---- helpers --------------------------------------------------------------

async function ctrl(action) {
  const r = await fetch(`${CTRL}/${action}`, { method: 'POST' });
  assert.equal(r.status, 204, `control ${action}: HTTP ${r.status}`);
}

async function publish(name, text) {
  const r = await fetch(`${HTTP}/v1/topics/${ROOM}/messages`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ name, text }),
  });
  assert.equal(r.status, 202, `REST publish: HTTP ${r.status} ${await r.text()}`);
}

/** shown returns the page's rendered messages in page order. */
function shown(page) {
  return page.$$eval('#messages > li.msg', (els) => els.map((e) => ({
    id: e.dataset.id,
    author: e.querySelector('.author').textContent,
    text: e.querySelector('.body').textContent,
  })));
}

function waitState(page, state, timeout = WAIT) {
  return page.waitForSelector(`#conn[data-state="${state}"]`, { timeout });
}

/** waitTexts waits until every text is rendered as a delivered message. */
async function waitTexts(page, texts, timeout = WAIT) {
  try {
    await page.waitForFunction((want) => {
      const got = new Set([...document.querySelectorAll('#messages > li.msg .body')].map((e) => e.textContent));
      return want.every((t) => got.has(t));
    }, texts, { timeout, polling: 100 });
  } catch (e) {
    const got = (await shown(page)).map((m) => m.text);
    throw new Error(`${page.label}: waiting for ${JSON.stringify(texts.filter((t) => !got.includes(t)))}; shown: ${JSON.stringify(got)}`);
  }
}

/**
 * exactlyOnce checks that each text is shown once, that no id repeats, that
 * the page order is id order, and that nothing is left in the outbox.
 */
async function exactlyOnce(page, texts) {
  const msgs = await shown(page);
  for (const t of texts) {
    const n = msgs.filter((m) => m.text === t).length;
    assert.equal(n, 1, `${page.label}: ${JSON.stringify(t)} shown ${n} times`);
  }
  const ids = msgs.map((m) => m.id);
  assert.equal(new Set(ids).size, ids.length, `${page.label}: an id is shown twice`);
  assert.deepEqual(ids, [...ids].sort(), `${page.label}: messages not in id order`);
  const pending = await page.$$eval('#outbox > li', (els) => els.length);
  assert.equal(pending, 0, `${page.label}: ${pending} messages still pending`);
}

async function say(page, text) {
  await page.locator('#text').fill(text);
  await page.locator('#text').press('Enter');
}

async function shot(page, name) {
  const file = path.join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path: file, fullPage: false });
  log('screenshot', file);
}

// Console errors that faults cause on purpose: the browser logs failed
// WebSocket handshakes and fetches while the server is away.
const EXPECTED_CONSOLE = [
  /WebSocket connection to .* failed/,
  /Failed to load resource: net::ERR_CONNECTION_REFUSED/,
  /Failed to load resource: net::ERR_EMPTY_RESPONSE/,
  /Failed to load resource: the server responded with a status of 503/,
];

async function newPage(browser, label, options) {
  const context = await browser.newContext(options);
  const page = await context.newPage();
  page.label = label;
  page.problems = [];
  page.on('console', (m) => {
    if (m.type() === 'error' && !EXPECTED_CONSOLE.some((re) => re.test(m.text()))) {
      page.problems.push(`console error: ${m.text()}`);
    }
  });
  page.on('pageerror', (e) => page.problems.push(`uncaught: ${e.message}`));
  return page;
}

// ---- the scenario ---------------------------------------------------------

const browser = await chromium.launch({
  executablePath: env('CHROMIUM'),
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
    '--disable-sync', '--no-first-run'],
});
const pages = [];
let failed = false;
try {
  // A: a desktop window in the light scheme. B: a phone in the dark scheme,
  // through the cuttable proxy.
  const A = await newPage(browser, 'A', { viewport: { width: 1180, height: 760 }, colorScheme: 'light' });
  const B = await newPage(browser, 'B', { viewport: { width: 400, height: 820 }, colorScheme: 'dark', deviceScaleFactor: 1 });
  pages.push(A, B);

  // History written before anyone joins, including markup that must stay text.
  const xss = '<img src=x onerror="document.title=\'pwned\'"> <b>bold?</b>';
  const early = ['welcome to the room', xss];
  await publish('ci-bot', early[0]);
  await publish('<script>alert(1)</script>', early[1]);

  // ---- 0. the page's helpers, in the browser ----
  log('helpers');
  await A.goto(`${HTTP}/?ws=${WS_PORT}`);
  const unit = await A.evaluate(async () => {
    const m = await import(document.querySelector('script[type="module"]').src);
    const buckets = [
      { le: 0.001, count: 50 }, { le: 0.002, count: 90 }, { le: 0.005, count: 99 },
      { le: 0.01, count: 100 }, { le: Infinity, count: 100 },
    ];
    const text = [
      '# HELP chatgg_messages_out_total x', '# TYPE chatgg_messages_out_total counter',
      'chatgg_messages_out_total 42',
      'chatgg_delivery_latency_seconds_bucket{le="0.001"} 3',
      'chatgg_delivery_latency_seconds_bucket{le="+Inf"} 4',
      'chatgg_delivery_latency_seconds_sum 0.01', 'chatgg_delivery_latency_seconds_count 4',
      'chatgg_http_requests_total{route="/v1/x",status="200"} 7',
      'chatgg_http_requests_total{route="a \\"quoted\\" one",status="404"} 1',
    ].join('\n');
    const samples = m.parseMetrics(text);
    const h = m.histogram(samples, 'chatgg_delivery_latency_seconds');
    const delays = Array.from({ length: 8 }, (_, i) => [m.backoffDelay(i, () => 0), m.backoffDelay(i, () => 1)]);
    return {
      p50: m.histogramQuantile(0.5, buckets),
      p99: m.histogramQuantile(0.99, buckets),
      pInf: m.histogramQuantile(0.99, [{ le: 0.001, count: 1 }, { le: Infinity, count: 10 }]),
      pNone: m.histogramQuantile(0.5, [{ le: 0.001, count: 0 }, { le: Infinity, count: 0 }]),
      out: m.metricSum(samples, 'chatgg_messages_out_total'),
      requests: m.metricSum(samples, 'chatgg_http_requests_total'),
      quoted: samples.find((s) => s.labels.status === '404')?.labels.route,
      hist: h && { n: h.buckets.length, count: h.count, top: h.buckets.at(-1).le === Infinity },
      rewind: m.rewindCursor('019a0000271000010000ff', 10000),
      rewindNone: m.rewindCursor('', 5000),
      idTime: m.idTime('019a0000271000010000ff'),
      delays,
      lines: [m.chatLine({ data: 'raw text' }), m.chatLine({ data: [1, 2] }), m.chatLine({ data: { text: 't' } })],
      index: m.sortedIndex(['a', 'c', 'e'], 'd'),
    };
  });
  assert.equal(unit.p50, 0.001);
  assert.ok(Math.abs(unit.p99 - 0.005) < 1e-9, `p99 ${unit.p99}`);
  assert.equal(unit.pInf, 0.001);
  assert.equal(unit.pNone, null);
  assert.equal(unit.out, 42);
  assert.equal(unit.requests, 8);
  assert.equal(unit.quoted, 'a "quoted" one');
  assert.deepEqual(unit.hist, { n: 2, count: 4, top: true });
  assert.equal(unit.idTime, 0x019a00002710);
  assert.equal(unit.rewind, (0x019a00002710 - 10000 - 1).toString(16).padStart(12, '0') + '0000000000');
  assert.equal(unit.rewindNone, '');
  for (const [i, [lo, hi]] of unit.delays.entries()) {
    const d = Math.min(15000, 500 * 2 ** i);
    assert.ok(lo === d / 2 && hi === d, `backoff ${i}: ${lo}..${hi}, want ${d / 2}..${d}`);
  }
  assert.deepEqual(unit.lines, [{ name: '(raw)', text: 'raw text' }, { name: '(data)', text: '[1,2]' }, { name: '(anonymous)', text: 't' }]);
  assert.equal(unit.index, 2);

  // ---- 1. join: A by keyboard only, B with the mouse ----
  log('join');
  await shot(A, '00-join-A');
  assert.equal(await A.evaluate(() => document.activeElement?.id), 'name', 'A: the name field has focus');
  await A.keyboard.type('alice');
  await A.keyboard.press('Tab');
  assert.equal(await A.evaluate(() => document.activeElement?.id), 'room', 'A: Tab moves to the room field');
  await A.keyboard.press('ControlOrMeta+A');
  await A.keyboard.type(ROOM);
  await A.keyboard.press('Enter');
  await waitState(A, 'live');
  assert.equal(await A.evaluate(() => document.activeElement?.id), 'text', 'A: joining focuses the message box');

  await B.goto(`${HTTP}/?ws=${PROXY_PORT}`);
  await B.getByRole('textbox', { name: 'Your name' }).fill('bob');
  await B.getByRole('textbox', { name: 'Room' }).fill(ROOM);
  await B.getByRole('button', { name: 'Join' }).click();
  await waitState(B, 'live');

  await waitTexts(A, early);
  await waitTexts(B, early);
  for (const p of pages) {
    assert.equal(await p.locator('#messages img, #messages b, #messages script').count(), 0, `${p.label}: markup in a message was rendered`);
    assert.notEqual(await p.title(), 'pwned');
  }
  const firstAuthors = (await shown(B)).map((m) => m.author);
  assert.deepEqual(firstAuthors, ['ci-bot', '<script>alert(1)</script>']);

  // ---- 2. both ways ----
  log('chat both ways');
  await say(A, 'hello from alice');
  await waitTexts(B, ['hello from alice']);
  await say(B, 'hi alice, bob here');
  await waitTexts(A, ['hi alice, bob here']);
  await say(A, 'a longer line to see wrapping: the quick brown fox jumps over the lazy dog, twice over, and then once more');
  const round1 = [...early, 'hello from alice', 'hi alice, bob here',
    'a longer line to see wrapping: the quick brown fox jumps over the lazy dog, twice over, and then once more'];
  await waitTexts(B, round1);
  await waitTexts(A, round1);
  for (const p of pages) await exactlyOnce(p, round1);
  assert.equal(await A.locator('#messages > li.mine').count(), 2, 'A: its own messages are marked');
  await shot(A, '01-chat-A');
  await shot(B, '01-chat-B');

  // ---- 3. a reload shows the history ----
  log('reload');
  await B.reload();
  await waitState(B, 'live');
  await waitTexts(B, round1);
  await exactlyOnce(B, round1);
  await shot(B, '02-reload-B');

  // ---- 4. B's connection is dropped; what is sent meanwhile arrives once ----
  log('drop B');
  // Let the join's second history sweep (SETTLE_MS) pass first, so what B
  // shows after the drop can only come from the reconnect's catch-up.
  await B.waitForTimeout(2000);
  await ctrl('proxy/down');
  await waitState(B, 'reconnecting');
  assert.match(await B.locator('#conn').innerText(), /Reconnecting\s+in \d+ s/);
  const away = ['while bob is away 1', 'while bob is away 2'];
  for (const t of away) await say(A, t);
  await publish('ci-bot', 'REST while bob is away');
  away.push('REST while bob is away');
  await say(B, 'bob typed this offline');
  await B.waitForSelector('#outbox > li[data-state="queued"]');
  await waitTexts(A, away);
  await shot(B, '03-B-offline');
  await ctrl('proxy/up');
  await waitState(B, 'live', 30000);
  const round2 = [...round1, ...away, 'bob typed this offline'];
  await waitTexts(B, round2);
  await waitTexts(A, ['bob typed this offline']);
  // The second catch-up sweep runs SETTLE_MS after the first: let it, then
  // check again that it added nothing twice.
  await B.waitForTimeout(2000);
  for (const p of pages) await exactlyOnce(p, round2);
  await shot(B, '04-B-caught-up');

  // ---- 5. the server restarts; a message written meanwhile is sent once ----
  log('restart server');
  await ctrl('server/stop');
  await waitState(A, 'reconnecting');
  await waitState(B, 'reconnecting');
  await say(A, 'alice wrote this while the server was down');
  await A.waitForSelector('#outbox > li[data-state="queued"]');
  await shot(A, '05-A-server-down');
  await ctrl('server/start');
  await waitState(A, 'live', 30000);
  await waitState(B, 'live', 30000);
  await publish('ci-bot', 'after the restart');
  const round3 = [...round2, 'alice wrote this while the server was down', 'after the restart'];
  await waitTexts(A, round3);
  await waitTexts(B, round3);
  await A.reload();
  await waitState(A, 'live');
  await waitTexts(A, round3);
  await A.waitForTimeout(2000);
  for (const p of pages) await exactlyOnce(p, round3);
  // Its own messages are still its own after the reload.
  assert.equal(await A.locator('#messages > li.mine').count(), 5, 'A: own messages marked after reload');

  // ---- 6. presence, the live region and the metrics panel ----
  log('presence and metrics');
  await A.waitForFunction(() => document.getElementById('presence').textContent.startsWith('2 connections'), null, { timeout: 8000 });
  // A little conversation, so the panel has deliveries in its windows.
  const round4 = ['how do the numbers look?', 'numbers look fine from here', 'p99 under a millisecond', 'nice'];
  for (const [i, t] of round4.entries()) {
    await say(i % 2 ? B : A, t);
    await waitTexts(i % 2 ? A : B, [t]);
    await A.waitForTimeout(400);
  }
  assert.equal(await A.locator('#announce').textContent(), 'bob: nice', 'A: the live region announces the latest message from others');
  await A.waitForFunction(() => /\d/.test(document.getElementById('rate').textContent) &&
    /\d/.test(document.getElementById('p50').textContent) &&
    document.querySelector('#chart-rate path.line-rate')?.getAttribute('d') !== 'M0 0', null, { timeout: 10000 });
  for (const p of pages) await exactlyOnce(p, [...round3, ...round4]);
  await shot(A, '06-final-A');
  await shot(B, '06-final-B');

  // ---- 7. a long room: the page reads history to the newest, keeps the last 500 ----
  log('long history');
  const big = `${ROOM}-big`;
  for (let from = 1; from <= 1250; from += 625) {
    const batch = Array.from({ length: 625 }, (_, i) => ({ topic: big, data: { name: 'loader', text: `big ${from + i}` } }));
    const r = await fetch(`${HTTP}/v1/messages`, {
      method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(batch),
    });
    assert.equal(r.status, 202, `batch publish: HTTP ${r.status}`);
  }
  const C = await A.context().newPage();
  C.label = 'C';
  C.problems = [];
  pages.push(C);
  await C.goto(`${HTTP}/?ws=${WS_PORT}&room=${big}`); // A's context knows the name: it joins at once
  await waitState(C, 'live');
  await waitTexts(C, ['big 1250']);
  const long = await shown(C);
  assert.equal(long.length, 500, 'C: keeps the newest 500');
  assert.equal(long[0].text, 'big 751');
  assert.equal(long.at(-1).text, 'big 1250');
  await exactlyOnce(C, ['big 751', 'big 1000', 'big 1250']);

  for (const p of pages) assert.deepEqual(p.problems, [], `${p.label}: console problems`);
  log('ok');
} catch (e) {
  failed = true;
  console.error(e);
  for (const p of pages) {
    try {
      await shot(p, `failure-${p.label}`);
      console.error(`${p.label}: state=${await p.getAttribute('#conn', 'data-state')} problems=${JSON.stringify(p.problems)}`);
    } catch {
      // The page may be gone; the error above is what matters.
    }
  }
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
