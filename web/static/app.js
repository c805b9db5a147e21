// chatgg's chat page: a plain ES module, no build step, no dependencies.
//
// It is an ordinary client of chatgg: REST for history, presence and
// metrics (docs/rest.md), the JSON protocol on /ws for live messages
// (docs/protocol.md). Chat messages are {"name", "text"} objects.
//
// Every piece of user text reaches the page through textContent. The page's
// Content-Security-Policy enforces Trusted Types, so assigning a string to an
// HTML sink would throw rather than render (and web_test.go refuses the
// sinks' names in this file).
//
// The pure helpers are exported so the browser test can check them.

// Tuning.
const HISTORY_PAGE = 1000; // the API's largest page
const MAX_RENDERED = 500; // messages kept on the page; older ones drop off the top
const REWIND_MS = 5000; // catch-up re-reads this much before the newest id seen
const SETTLE_MS = 1500; // a second catch-up sweep, for messages stored late
const SUB_TIMEOUT_MS = 10000; // no sub ack by then: drop the socket and retry
const STABLE_MS = 5000; // a connection live this long resets the backoff
const BACKOFF_BASE_MS = 500;
const BACKOFF_MAX_MS = 15000;
const RETRY_PUB_MS = 2000; // resend after a 429 or 503
const PRESENCE_EVERY_MS = 5000;
const METRICS_EVERY_MS = 2000;
const CHART_POINTS = 60; // two minutes at METRICS_EVERY_MS
const MINE_KEPT = 300; // ids of our own messages remembered per room, to mark them after a reload
const DEFAULT_WS_PORT = 9001;
const TOPIC_RE = /^[A-Za-z0-9_.:@/-]{1,128}$/;
const ID_RE = /^[0-9a-f]{22}$/;

// ---- pure helpers ---------------------------------------------------------

/** idTime returns the Unix milliseconds in a message id, or -1. */
export function idTime(id) {
  return ID_RE.test(id) ? parseInt(id.slice(0, 12), 16) : -1;
}

/**
 * rewindCursor returns the `after` cursor for a catch-up: a synthetic id
 * `ms` milliseconds before `id`, or '' (from the start) when there is none.
 * Ids are assigned before a message is queued for fan-out, so around a
 * disconnect a message with a slightly older id can arrive after a newer
 * one; re-reading a few seconds and deduplicating by id closes that gap.
 */
export function rewindCursor(id, ms) {
  const t = idTime(id);
  if (t < 0) return '';
  const at = t - ms - 1; // -1: `after` is exclusive and a real id may carry node 0, seq 0
  if (at < 0) return '';
  return at.toString(16).padStart(12, '0') + '0'.repeat(10);
}

/** backoffDelay is the wait before reconnect attempt n (0-based): exponential, capped, with jitter in [d/2, d]. */
export function backoffDelay(n, rand = Math.random) {
  const d = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** Math.min(n, 20));
  return Math.round(d / 2 + rand() * (d / 2));
}

/** randomKey returns 32 hex digits: an idempotency key (crypto.randomUUID needs a secure context). */
export function randomKey() {
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

/** chatLine turns a message's data into {name, text}, whatever was published. */
export function chatLine(m) {
  const d = m.data;
  if (m.enc === 'base64') return { name: '(binary)', text: `${d.length} base64 characters` };
  if (d && typeof d === 'object' && !Array.isArray(d) && typeof d.text === 'string') {
    return { name: typeof d.name === 'string' && d.name ? d.name : '(anonymous)', text: d.text };
  }
  if (typeof d === 'string') return { name: '(raw)', text: d };
  return { name: '(data)', text: JSON.stringify(d) };
}

/**
 * parseMetrics reads the Prometheus text format into [{name, labels, value}].
 * Comments and malformed lines are skipped.
 */
export function parseMetrics(text) {
  const out = [];
  const lineRE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/;
  const labelRE = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
  for (const line of text.split('\n')) {
    if (line === '' || line[0] === '#') continue;
    const m = lineRE.exec(line);
    if (!m) continue;
    const labels = {};
    if (m[2]) for (const l of m[2].matchAll(labelRE)) labels[l[1]] = l[2].replace(/\\(.)/g, (_, c) => (c === 'n' ? '\n' : c));
    const value = m[3] === '+Inf' ? Infinity : m[3] === '-Inf' ? -Infinity : Number(m[3]);
    out.push({ name: m[1], labels, value });
  }
  return out;
}

/** metricSum adds up every sample of a metric (all label sets); null when absent. */
export function metricSum(samples, name) {
  let sum = null;
  for (const s of samples) if (s.name === name) sum = (sum ?? 0) + s.value;
  return sum;
}

/** histogram extracts a histogram: {buckets: [{le, count}] ascending (cumulative), sum, count}; null when absent. */
export function histogram(samples, name) {
  const buckets = [];
  let sum = null;
  let count = null;
  for (const s of samples) {
    if (s.name === name + '_bucket') {
      const le = s.labels.le === '+Inf' ? Infinity : Number(s.labels.le);
      if (!Number.isNaN(le)) buckets.push({ le, count: s.value });
    } else if (s.name === name + '_sum') sum = s.value;
    else if (s.name === name + '_count') count = s.value;
  }
  if (buckets.length === 0 || count === null) return null;
  buckets.sort((a, b) => a.le - b.le);
  return { buckets, sum, count };
}

/** histogramDelta is cur minus prev, bucket by bucket: the observations in between. Null after a reset. */
export function histogramDelta(cur, prev) {
  if (!cur || !prev || cur.buckets.length !== prev.buckets.length || cur.count < prev.count) return null;
  const buckets = cur.buckets.map((b, i) => ({ le: b.le, count: b.count - prev.buckets[i].count }));
  return { buckets, sum: cur.sum - prev.sum, count: cur.count - prev.count };
}

/**
 * histogramQuantile estimates quantile q from cumulative buckets the way
 * Prometheus does: find the bucket holding rank q*total and interpolate
 * linearly inside it. Null without observations; the highest finite bound
 * when the rank lands in +Inf.
 */
export function histogramQuantile(q, buckets) {
  if (!buckets || buckets.length === 0) return null;
  const total = buckets[buckets.length - 1].count;
  if (!(total > 0)) return null;
  const rank = q * total;
  let prevLe = 0;
  let prevCount = 0;
  for (const b of buckets) {
    if (b.count >= rank) {
      if (b.le === Infinity) return prevLe;
      const inBucket = b.count - prevCount;
      return inBucket > 0 ? prevLe + ((b.le - prevLe) * (rank - prevCount)) / inBucket : b.le;
    }
    if (b.le !== Infinity) prevLe = b.le;
    prevCount = b.count;
  }
  return prevLe;
}

/** sortedIndex returns where id goes in the ascending array ids. */
export function sortedIndex(ids, id) {
  let lo = 0;
  let hi = ids.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (ids[mid] < id) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// ---- the page -------------------------------------------------------------

const $ = (id) => document.getElementById(id);

function el(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
}

const timeFmt = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
const fullFmt = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'medium' });

function timeEl(ts) {
  const d = new Date(ts);
  const t = el('time', 'ts', timeFmt.format(d));
  t.dateTime = d.toISOString();
  t.title = fullFmt.format(d);
  return t;
}

/** wsURL is ws(s)://<page host>:<?ws= or 9001>/ws. */
// wsProtocols carries a JWT from the page's fragment (#token=...) as the
// "bearer.<token>" subprotocol (docs/security.md): the fragment never
// reaches a server log or a Referer header.
function wsProtocols() {
  const t = new URLSearchParams(location.hash.slice(1)).get('token');
  return t && /^[A-Za-z0-9._-]+$/.test(t) ? ['chatgg.v1', `bearer.${t}`] : undefined;
}

function wsURL() {
  const q = new URLSearchParams(location.search).get('ws');
  const port = q && /^\d{1,5}$/.test(q) ? q : String(DEFAULT_WS_PORT);
  return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.hostname}:${port}/ws`;
}

async function getJSON(url) {
  const r = await fetch(url, { cache: 'no-store', headers: { Accept: 'application/json' } });
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return r.json();
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Chat is one joined room: its messages, its socket and its outbox. A new
 * Chat is made per join; leave() stops everything it started, and its
 * callbacks check `this.closed` so late answers from a left room are dropped.
 */
class Chat {
  constructor(name, room) {
    this.name = name;
    this.room = room;
    this.closed = false;

    this.byId = new Map(); // id -> <li>, for every rendered message
    this.ids = []; // rendered ids, ascending; ids sort by time
    this.floor = ''; // ids at or below were trimmed off the top; ignore them
    this.newest = ''; // highest id seen, live or from history
    this.mineKey = `chatgg.mine.${room}`;
    this.mine = new Set(loadList(this.mineKey)); // ids of messages sent from this browser

    this.sock = null;
    this.live = false;
    this.liveSince = 0;
    this.attempt = 0; // reconnect attempts since the last stable connection
    this.refSeq = 0;
    this.timers = new Set();

    // Outbox: messages written but not yet acked, in the order written.
    // Persisted per room so a reload does not lose them; the idempotency key
    // makes a resend of something the server already took harmless.
    this.outbox = [];
    this.storeKey = `chatgg.outbox.${room}`;
    this.presenceTimer = null;
  }

  start() {
    for (const o of loadList(this.storeKey)) {
      if (o && typeof o.key === 'string' && typeof o.text === 'string') this.queue(o.text, o.key, false);
    }
    this.connect();
    this.presence();
  }

  leave() {
    this.closed = true;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    const s = this.sock;
    this.sock = null;
    if (s) s.close(1000, 'leaving');
  }

  later(fn, ms) {
    const t = setTimeout(() => {
      this.timers.delete(t);
      if (!this.closed) fn();
    }, ms);
    this.timers.add(t);
    return t;
  }

  cancel(t) {
    clearTimeout(t);
    this.timers.delete(t);
  }

  // ---- connection ----

  connect() {
    if (this.closed) return;
    this.cancel(this.retryTimer);
    ui.setConn('connecting', 'Connecting');
    let ws;
    try {
      ws = new WebSocket(wsURL(), wsProtocols());
    } catch (e) {
      this.reconnectLater(String(e));
      return;
    }
    this.sock = ws;
    const subRef = `sub-${++this.refSeq}`;
    ws.onopen = () => {
      if (this.sock !== ws) return;
      ws.send(JSON.stringify({ op: 'sub', topic: this.room, ref: subRef }));
      this.subTimer = this.later(() => {
        if (this.sock === ws && !this.live) ws.close(4000, 'no sub ack');
      }, SUB_TIMEOUT_MS);
    };
    ws.onmessage = (ev) => {
      if (this.sock !== ws) return;
      let f;
      try {
        f = JSON.parse(ev.data);
      } catch {
        return;
      }
      this.onFrame(f, subRef);
    };
    ws.onclose = (ev) => {
      if (this.sock !== ws) return;
      this.sock = null;
      this.cancel(this.subTimer);
      if (this.live && Date.now() - this.liveSince >= STABLE_MS) this.attempt = 0;
      this.live = false;
      ui.presence(''); // stale until we count again
      // Whatever was in flight is unacknowledged: it goes out again, with
      // its key, on the next connection.
      for (const o of this.outbox) if (o.state === 'sending') this.setOutboxState(o, 'queued');
      this.reconnectLater(ev.code ? `closed ${ev.code}${ev.reason ? ': ' + ev.reason : ''}` : '');
    };
  }

  reconnectLater(why) {
    if (this.closed) return;
    const delay = backoffDelay(this.attempt++);
    const at = Date.now() + delay;
    this.lastCloseReason = why;
    ui.setConn('reconnecting', 'Reconnecting', at);
    this.retryTimer = this.later(() => this.connect(), delay);
  }

  reconnectNow() {
    if (this.closed || this.sock) return;
    this.connect();
  }

  onFrame(f, subRef) {
    switch (f.op) {
      case 'msg':
        if (f.topic === this.room && ID_RE.test(f.id)) this.merge([f], true);
        return;
      case 'ack':
        if (f.ref === subRef) this.onSubscribed();
        else this.onPubAck(f);
        return;
      case 'error':
        if (f.ref === subRef) {
          ui.setConn('reconnecting', `Subscribe refused (${f.code})`);
          this.sock?.close(4000, 'sub refused');
        } else this.onPubError(f);
    }
  }

  onSubscribed() {
    this.cancel(this.subTimer);
    this.live = true;
    this.liveSince = Date.now();
    ui.setConn('live', 'Live');
    this.presence(); // we count now
    // The seam: the subscription is active now, so everything accepted from
    // here on arrives live. What was accepted before (while we were away, or
    // before the first join) comes from history. Both land in one id-keyed
    // list, so the overlap shows once.
    this.catchUp();
    this.flushOutbox();
  }

  // ---- history ----

  async catchUp() {
    const cursor = rewindCursor(this.newest, REWIND_MS);
    const first = this.ids.length === 0 && cursor === '';
    if (first) ui.historyState('Loading history…');
    const ok = await this.readHistory(cursor);
    if (this.closed) return;
    if (first) ui.historyState(ok ? (this.ids.length ? '' : 'No messages yet. Say hello!') : '');
    if (first && ok) ui.scrollToEnd(true);
    // The worker stores messages in batches shortly after they are published
    // (docs/rest.md), so a message accepted just before our subscription
    // may not be readable yet. A second sweep from the same cursor picks it
    // up; dedup by id makes the overlap harmless.
    this.later(() => this.readHistory(cursor), SETTLE_MS);
  }

  /** readHistory merges every stored message after cursor, page by page; false if it gave up. */
  async readHistory(cursor) {
    let after = cursor;
    for (let tries = 0; ; ) {
      const url = `/v1/topics/${encodeURIComponent(this.room).replace(/%2F/g, '/')}/messages?limit=${HISTORY_PAGE}` +
        (after ? `&after=${after}` : '');
      let page;
      try {
        page = await getJSON(url);
      } catch (e) {
        if (this.closed) return false;
        if (++tries >= 5) {
          ui.historyState('History is unavailable right now; live messages still arrive.');
          return false;
        }
        ui.historyState('History is unavailable; retrying…');
        await sleep(backoffDelay(tries));
        continue;
      }
      if (this.closed) return false;
      if (tries > 0) ui.historyState('');
      tries = 0;
      this.merge(page.messages || [], false);
      if (!page.next) return true;
      after = page.next;
    }
  }

  // ---- rendering ----

  /**
   * merge inserts messages by id, skipping ids already shown: the one place
   * where live frames, history pages and our own acks meet.
   */
  merge(msgs, isLive) {
    let fresh = msgs.filter((m) => m.id > this.floor && !this.byId.has(m.id));
    if (fresh.length === 0) return;
    fresh.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    fresh = fresh.filter((m, i) => i === 0 || m.id !== fresh[i - 1].id);
    const stick = ui.nearEnd();
    for (const m of fresh) {
      const at = sortedIndex(this.ids, m.id);
      const li = renderMessage(m, this.mine.has(m.id));
      ui.list.insertBefore(li, at < this.ids.length ? this.byId.get(this.ids[at]) : null);
      this.ids.splice(at, 0, m.id);
      this.byId.set(m.id, li);
      if (m.id > this.newest) this.newest = m.id;
      if (isLive && !this.mine.has(m.id)) {
        const { name, text } = chatLine(m);
        ui.announce(`${name}: ${text}`);
      }
    }
    // Keep the page small: the oldest messages drop off the top.
    while (this.ids.length > MAX_RENDERED) {
      const id = this.ids.shift();
      this.byId.get(id).remove();
      this.byId.delete(id);
      this.floor = id;
    }
    if (this.ids.length) ui.historyState('');
    ui.scrollToEnd(stick);
  }

  // ---- sending ----

  send(text) {
    this.queue(text, randomKey(), true);
    this.flushOutbox();
  }

  queue(text, key, persist) {
    const o = { key, ref: `pub-${key}`, text, state: 'queued', li: null };
    o.li = renderPending(this.name, o);
    this.outbox.push(o);
    ui.outbox.append(o.li);
    if (persist) this.saveOutbox();
    ui.scrollToEnd(true);
  }

  flushOutbox() {
    if (!this.live || !this.sock) return;
    for (const o of this.outbox) {
      if (o.state !== 'queued') continue;
      this.sock.send(JSON.stringify({
        op: 'pub', topic: this.room, ref: o.ref, key: o.key, data: { name: this.name, text: o.text },
      }));
      this.setOutboxState(o, 'sending');
    }
  }

  onPubAck(f) {
    const i = this.outbox.findIndex((o) => o.ref === f.ref);
    if (i < 0 || !ID_RE.test(f.id || '')) return;
    const [o] = this.outbox.splice(i, 1);
    o.li.remove();
    this.saveOutbox();
    this.mine.add(f.id);
    saveList(this.mineKey, [...this.mine].slice(-MINE_KEPT));
    const shown = this.byId.get(f.id);
    if (shown) shown.classList.add('mine');
    // Show it now; the live copy (we are subscribed) then dedupes against it.
    else this.merge([{ id: f.id, ts: f.ts || idTime(f.id), topic: this.room, data: { name: this.name, text: o.text } }], false);
  }

  onPubError(f) {
    const o = this.outbox.find((x) => x.ref === f.ref);
    if (!o) return;
    if (f.code === 429 || f.code === 503) {
      // Transient: keep it and try again shortly, with the same key.
      this.setOutboxState(o, 'queued');
      this.later(() => this.flushOutbox(), RETRY_PUB_MS);
      return;
    }
    this.setOutboxState(o, 'failed', `Not sent: ${f.message || 'error ' + f.code}`);
  }

  discard(o) {
    const i = this.outbox.indexOf(o);
    if (i >= 0) this.outbox.splice(i, 1);
    o.li.remove();
    this.saveOutbox();
  }

  setOutboxState(o, state, detail) {
    o.state = state;
    o.li.dataset.state = state;
    const badge = o.li.querySelector('.badge');
    badge.textContent = detail || { queued: 'Waiting for connection', sending: 'Sending…', failed: 'Not sent' }[state];
    const btn = o.li.querySelector('button');
    btn.hidden = state !== 'failed';
  }

  saveOutbox() {
    saveList(this.storeKey, this.outbox.filter((o) => o.state !== 'failed').map(({ key, text }) => ({ key, text })));
  }

  // ---- presence ----

  async presence() {
    this.cancel(this.presenceTimer);
    try {
      const r = await getJSON('/v1/topics');
      if (this.closed) return;
      const t = (r.topics || []).find((x) => x.topic === this.room);
      const n = t ? t.subscribers : 0;
      ui.presence(`${n} ${n === 1 ? 'connection' : 'connections'} here (this node)`);
    } catch {
      if (!this.closed) ui.presence('');
    }
    this.cancel(this.presenceTimer);
    this.presenceTimer = this.later(() => this.presence(), PRESENCE_EVERY_MS);
  }
}

// loadList and saveList keep a small JSON array in localStorage. Storage
// may be full or disabled; the page then works from memory alone.
function loadList(key) {
  try {
    const v = JSON.parse(localStorage.getItem(key) || '[]');
    return Array.isArray(v) ? v : [];
  } catch {
    return [];
  }
}

function saveList(key, list) {
  try {
    if (list.length) localStorage.setItem(key, JSON.stringify(list));
    else localStorage.removeItem(key);
  } catch {
    // See loadList.
  }
}

function renderMessage(m, mine) {
  const { name, text } = chatLine(m);
  const li = el('li', mine ? 'msg mine' : 'msg');
  li.dataset.id = m.id;
  const meta = el('div', 'meta');
  meta.append(el('span', 'author', name), timeEl(m.ts || idTime(m.id)));
  li.append(meta, el('p', 'body', text));
  return li;
}

function renderPending(name, o) {
  const li = el('li', 'msg mine pending');
  li.dataset.key = o.key;
  li.dataset.state = o.state;
  const meta = el('div', 'meta');
  meta.append(el('span', 'author', name), el('span', 'badge', 'Waiting for connection'));
  const btn = el('button', 'link', 'Remove');
  btn.type = 'button';
  btn.hidden = true;
  btn.addEventListener('click', () => chat?.discard(o));
  li.append(meta, el('p', 'body', o.text), btn);
  return li;
}

// ---- page-wide UI ---------------------------------------------------------

const ui = {
  init() {
    this.conn = $('conn');
    this.connLabel = $('conn-label');
    this.connDetail = $('conn-detail');
    this.retry = $('retry');
    this.list = $('messages');
    this.outbox = $('outbox');
    this.scroller = $('scroller');
    this.announcer = $('announce');
    this.countdown = null;
  },

  setConn(state, label, until) {
    this.conn.dataset.state = state;
    this.connLabel.textContent = label;
    clearInterval(this.countdown);
    this.connDetail.textContent = '';
    this.retry.hidden = state !== 'reconnecting';
    if (until) {
      const tick = () => {
        const s = Math.max(0, Math.ceil((until - Date.now()) / 1000));
        this.connDetail.textContent = ` in ${s} s`;
      };
      tick();
      this.countdown = setInterval(tick, 250);
    }
  },

  historyState(text) {
    $('history-state').textContent = text;
  },

  presence(text) {
    $('presence').textContent = text;
  },

  announce(text) {
    this.announcer.textContent = text.length > 200 ? text.slice(0, 200) + '…' : text;
  },

  nearEnd() {
    const s = this.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < 80;
  },

  scrollToEnd(force) {
    if (force) this.scroller.scrollTop = this.scroller.scrollHeight;
  },
};

let chat = null;

function join(name, room) {
  chat?.leave();
  ui.list.replaceChildren();
  ui.outbox.replaceChildren();
  ui.historyState('');
  ui.presence('');
  $('room-name').textContent = room;
  document.title = `${room} · chatgg`;
  $('join-panel').hidden = true;
  $('chat-panel').hidden = false;
  const u = new URL(location.href);
  u.searchParams.set('room', room);
  history.replaceState(null, '', u);
  chat = new Chat(name, room);
  chat.start();
  $('text').focus();
}

function leave() {
  chat?.leave();
  chat = null;
  ui.setConn('idle', 'Not connected');
  $('chat-panel').hidden = true;
  $('join-panel').hidden = false;
  document.title = 'chatgg';
  const u = new URL(location.href);
  u.searchParams.delete('room');
  history.replaceState(null, '', u);
  $('room').focus();
}

function setupJoin() {
  const form = $('join');
  const name = $('name');
  const room = $('room');
  const err = $('join-error');
  name.value = localStorage.getItem('chatgg.name') || '';
  const urlRoom = new URLSearchParams(location.search).get('room');
  room.value = urlRoom || localStorage.getItem('chatgg.room') || 'lobby';

  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const n = name.value.trim();
    const r = room.value.trim();
    name.removeAttribute('aria-invalid');
    room.removeAttribute('aria-invalid');
    err.textContent = '';
    if (!n) {
      name.setAttribute('aria-invalid', 'true');
      err.textContent = 'Please enter your name.';
      name.focus();
      return;
    }
    if (!TOPIC_RE.test(r)) {
      room.setAttribute('aria-invalid', 'true');
      err.textContent = 'Room names are 1 to 128 letters, digits or _ . : @ / -';
      room.focus();
      return;
    }
    try {
      localStorage.setItem('chatgg.name', n);
      localStorage.setItem('chatgg.room', r);
    } catch {
      // Not remembered; the page works without.
    }
    join(n, r);
  });

  // Coming back to a room (reload, shared link) with a known name joins it.
  if (urlRoom && TOPIC_RE.test(urlRoom) && name.value) join(name.value, urlRoom);
  else (name.value ? room : name).focus();
}

function setupComposer() {
  const form = $('composer');
  const text = $('text');
  text.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      form.requestSubmit();
    }
  });
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const t = text.value.trim();
    if (!t || !chat) return;
    chat.send(t);
    text.value = '';
    text.focus();
  });
  $('leave').addEventListener('click', leave);
  $('retry').addEventListener('click', () => chat?.reconnectNow());
  window.addEventListener('online', () => chat?.reconnectNow());
}

// ---- metrics panel --------------------------------------------------------

const SVG_NS = 'http://www.w3.org/2000/svg';

const stats = {
  prev: null,
  rate: [],
  p50: [],
  p99: [],

  async poll() {
    try {
      const r = await fetch('/metrics', { cache: 'no-store' });
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      this.update(parseMetrics(await r.text()), performance.now());
      $('stats-error').textContent = '';
    } catch (e) {
      this.prev = null;
      $('stats-error').textContent = 'Metrics unavailable.';
    }
    setTimeout(() => this.poll(), METRICS_EVERY_MS);
  },

  update(samples, now) {
    const cur = {
      t: now,
      out: metricSum(samples, 'chatgg_messages_out_total'),
      hist: histogram(samples, 'chatgg_delivery_latency_seconds'),
    };
    const prev = this.prev;
    this.prev = cur;
    if (!prev) return;
    const dt = (cur.t - prev.t) / 1000;
    let rate = null;
    if (cur.out !== null && prev.out !== null && cur.out >= prev.out && dt > 0) rate = (cur.out - prev.out) / dt;
    const d = histogramDelta(cur.hist, prev.hist);
    const q = (x) => (d && d.count > 0 ? histogramQuantile(x, d.buckets) * 1000 : null);
    push(this.rate, rate);
    push(this.p50, q(0.5));
    push(this.p99, q(0.99));
    $('rate').textContent = fmt(rate);
    $('p50').textContent = fmt(this.p50.at(-1));
    $('p99').textContent = fmt(this.p99.at(-1));
    drawChart($('chart-rate'), [{ data: this.rate, cls: 'line-rate' }], $('chart-rate-max'), 'msg/s');
    drawChart($('chart-lat'), [{ data: this.p99, cls: 'line-p99' }, { data: this.p50, cls: 'line-p50' }], $('chart-lat-max'), 'ms');
  },
};

function push(series, v) {
  series.push(v);
  if (series.length > CHART_POINTS) series.shift();
}

function fmt(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return '–';
  if (v >= 100) return String(Math.round(v));
  if (v >= 10) return v.toFixed(1);
  return v.toFixed(2);
}

/** niceMax rounds a chart's top up to 1, 2 or 5 times a power of ten. */
function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function drawChart(svg, lines, maxLabel, unit) {
  const W = 240;
  const H = 60;
  const pad = 3;
  let max = 0;
  for (const l of lines) for (const v of l.data) if (v !== null && v > max) max = v;
  max = niceMax(max);
  const nodes = [];
  for (const y of [0.5, 1]) {
    const g = document.createElementNS(SVG_NS, 'line');
    g.setAttribute('class', 'grid');
    g.setAttribute('x1', '0');
    g.setAttribute('x2', String(W));
    g.setAttribute('y1', String(pad + (H - 2 * pad) * (1 - y)));
    g.setAttribute('y2', String(pad + (H - 2 * pad) * (1 - y)));
    nodes.push(g);
  }
  for (const l of lines) {
    let d = '';
    let pen = false;
    // Oldest point on the left; the chart fills rightwards, then scrolls.
    l.data.forEach((v, i) => {
      if (v === null) {
        pen = false;
        return;
      }
      const x = pad + (i / (CHART_POINTS - 1)) * (W - 2 * pad);
      const y = pad + (H - 2 * pad) * (1 - v / max);
      const lone = !pen && (i + 1 >= l.data.length || l.data[i + 1] === null);
      // A point between gaps is a zero-length segment: round caps draw it as a dot.
      d += `${pen ? 'L' : 'M'}${x.toFixed(1)} ${y.toFixed(1)}${lone ? 'l0 0' : ''}`;
      pen = true;
    });
    const p = document.createElementNS(SVG_NS, 'path');
    p.setAttribute('class', l.cls);
    p.setAttribute('d', d || 'M0 0');
    nodes.push(p);
  }
  svg.replaceChildren(...nodes);
  maxLabel.textContent = ` (top of chart: ${fmt(max)} ${unit})`;
}

// ---- start ----------------------------------------------------------------

if (typeof document !== 'undefined' && document.getElementById('conn')) {
  ui.init();
  setupComposer();
  setupJoin();
  stats.poll();
}
