// k6 WebSocket fan-out against chatgg's /ws JSON protocol.
//
//   k6 run -e WS_URL=ws://127.0.0.1:9001 -e SUBSCRIBERS=200 -e PUBLISHERS=2 \
//          -e RATE=100 -e DURATION=30s bench/k6/fanout.js
//
// SUBSCRIBERS virtual users subscribe to TOPIC; PUBLISHERS virtual users
// publish RATE messages per second between them for DURATION (after a
// SETTLE period that lets every subscriber subscribe). Each message carries
// its publisher, sequence and send time (Date.now(), so latencies are whole
// milliseconds); subscribers count deliveries, gaps (lost or late),
// repeats and latency. Thresholds fail the run on any gap or repeat, or a
// p99 over P99_MS. Only k6's documented APIs: k6/ws, check, Trend, Counter,
// scenarios and thresholds.

import ws from 'k6/ws';
import { check } from 'k6';
import { Counter, Trend } from 'k6/metrics';

const WS_URL = __ENV.WS_URL || 'ws://127.0.0.1:9001';
const TOPIC = __ENV.TOPIC || `k6-fanout-${Date.now()}`;
const SUBSCRIBERS = parseInt(__ENV.SUBSCRIBERS || '100', 10);
const PUBLISHERS = parseInt(__ENV.PUBLISHERS || '1', 10);
const RATE = parseFloat(__ENV.RATE || '50'); // messages/s, all publishers together
const DURATION_MS = parseDuration(__ENV.DURATION || '20s');
const SETTLE_MS = parseDuration(__ENV.SETTLE || '3s');
const DRAIN_MS = parseDuration(__ENV.DRAIN || '3s');
const P99_MS = parseFloat(__ENV.P99_MS || '100');
const SIZE = parseInt(__ENV.SIZE || '64', 10); // bytes of padding in each message

const deliveries = new Counter('chatgg_deliveries');
const published = new Counter('chatgg_published');
const gaps = new Counter('chatgg_gaps');
const repeats = new Counter('chatgg_repeats');
const wsErrors = new Counter('chatgg_ws_errors');
const latency = new Trend('chatgg_delivery_latency', true);

export const options = {
  scenarios: {
    subscribers: {
      executor: 'per-vu-iterations',
      exec: 'subscriber',
      vus: SUBSCRIBERS,
      iterations: 1,
      maxDuration: `${Math.ceil((SETTLE_MS + DURATION_MS + DRAIN_MS) / 1000) + 30}s`,
    },
    publishers: {
      executor: 'per-vu-iterations',
      exec: 'publisher',
      vus: PUBLISHERS,
      iterations: 1,
      startTime: `${SETTLE_MS}ms`,
      maxDuration: `${Math.ceil(DURATION_MS / 1000) + 30}s`,
    },
  },
  thresholds: {
    chatgg_delivery_latency: [`p(99)<${P99_MS}`],
    chatgg_gaps: ['count==0'],
    chatgg_repeats: ['count==0'],
    chatgg_ws_errors: ['count==0'],
    chatgg_deliveries: ['count>0'],
    checks: ['rate==1'],
  },
};

function parseDuration(s) {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(String(s).trim());
  if (!m) {
    throw new Error(`bad duration ${s}`);
  }
  const n = parseFloat(m[1]);
  const unit = m[2] || 's';
  return unit === 'ms' ? n : unit === 's' ? n * 1000 : n * 60000;
}

export function subscriber() {
  const next = {}; // publisher -> next expected sequence
  const res = ws.connect(`${WS_URL}/ws`, null, (socket) => {
    socket.on('open', () => {
      socket.send(JSON.stringify({ op: 'sub', topic: TOPIC, ref: 'sub' }));
    });
    socket.on('message', (raw) => {
      const m = JSON.parse(raw);
      if (m.op === 'ack') {
        check(m, { 'subscribed': (a) => a.ref === 'sub' });
        return;
      }
      if (m.op === 'error') {
        wsErrors.add(1);
        return;
      }
      if (m.op !== 'msg' || !m.data || typeof m.data.seq !== 'number') {
        return;
      }
      const d = m.data;
      deliveries.add(1);
      latency.add(Date.now() - d.t);
      const want = next[d.p] || 1;
      if (d.seq === want) {
        next[d.p] = want + 1;
      } else if (d.seq > want) {
        gaps.add(d.seq - want);
        next[d.p] = d.seq + 1;
      } else {
        repeats.add(1);
      }
    });
    socket.on('error', () => wsErrors.add(1));
    socket.setTimeout(() => socket.close(), SETTLE_MS + DURATION_MS + DRAIN_MS);
  });
  check(res, { 'upgraded (101)': (r) => r && r.status === 101 });
}

export function publisher() {
  const everyMs = Math.max(1, (1000 * PUBLISHERS) / RATE);
  const pad = 'x'.repeat(Math.max(0, SIZE));
  let seq = 0;
  const res = ws.connect(`${WS_URL}/ws`, null, (socket) => {
    socket.on('open', () => {
      socket.setInterval(() => {
        seq += 1;
        socket.send(JSON.stringify({ op: 'pub', topic: TOPIC, data: { p: __VU, seq, t: Date.now(), pad } }));
        published.add(1);
      }, everyMs);
      socket.setTimeout(() => socket.close(), DURATION_MS);
    });
    socket.on('message', (raw) => {
      if (JSON.parse(raw).op === 'error') {
        wsErrors.add(1);
      }
    });
    socket.on('error', () => wsErrors.add(1));
  });
  check(res, { 'upgraded (101)': (r) => r && r.status === 101 });
}
