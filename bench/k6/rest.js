// k6 REST publishing against chatgg, with WebSocket subscribers receiving.
//
//   k6 run -e HTTP_URL=http://127.0.0.1:9002 -e WS_URL=ws://127.0.0.1:9001 \
//          -e RATE=200 -e DURATION=30s -e SUBSCRIBERS=50 bench/k6/rest.js
//
// A constant-arrival-rate scenario POSTs RATE messages per second to
// /v1/topics/{TOPIC}/messages as JSON (each with its sequence and send time);
// SUBSCRIBERS virtual users on /ws count deliveries, gaps and latency.
// Thresholds: every publish answered 202, p99 of the POST under
// POST_P99_MS, p99 publish-to-delivery under P99_MS, no WebSocket error.
// Publishes from many virtual users have no order to check; `go run ./bench
// rest` counts loss and order per publisher.

import http from 'k6/http';
import ws from 'k6/ws';
import { check } from 'k6';
import { Counter, Trend } from 'k6/metrics';

const HTTP_URL = __ENV.HTTP_URL || 'http://127.0.0.1:9002';
const WS_URL = __ENV.WS_URL || 'ws://127.0.0.1:9001';
const TOPIC = __ENV.TOPIC || `k6-rest-${Date.now()}`;
const RATE = parseInt(__ENV.RATE || '100', 10); // publishes/s
const DURATION = __ENV.DURATION || '20s';
const SUBSCRIBERS = parseInt(__ENV.SUBSCRIBERS || '20', 10);
const SETTLE_S = parseInt(__ENV.SETTLE_S || '3', 10);
const P99_MS = parseFloat(__ENV.P99_MS || '200');
const POST_P99_MS = parseFloat(__ENV.POST_P99_MS || '100');

const accepted = new Counter('chatgg_rest_accepted');
const deliveries = new Counter('chatgg_deliveries');
const wsErrors = new Counter('chatgg_ws_errors');
const latency = new Trend('chatgg_delivery_latency', true);

function seconds(d) {
  const m = /^(\d+)(s|m)?$/.exec(String(d).trim());
  if (!m) {
    throw new Error(`bad duration ${d}`);
  }
  return parseInt(m[1], 10) * (m[2] === 'm' ? 60 : 1);
}

export const options = {
  scenarios: {
    subscribers: {
      executor: 'per-vu-iterations',
      exec: 'subscriber',
      vus: SUBSCRIBERS,
      iterations: 1,
      maxDuration: `${SETTLE_S + seconds(DURATION) + 30}s`,
    },
    publish: {
      executor: 'constant-arrival-rate',
      exec: 'publish',
      rate: RATE,
      timeUnit: '1s',
      duration: DURATION,
      startTime: `${SETTLE_S}s`,
      preAllocatedVUs: Math.max(10, Math.ceil(RATE / 20)),
      maxVUs: Math.max(50, Math.ceil(RATE / 5)),
    },
  },
  thresholds: {
    'http_req_failed{scenario:publish}': ['rate==0'],
    'http_req_duration{scenario:publish}': [`p(99)<${POST_P99_MS}`],
    chatgg_delivery_latency: [`p(99)<${P99_MS}`],
    chatgg_ws_errors: ['count==0'],
    chatgg_deliveries: ['count>0'],
    checks: ['rate==1'],
  },
};

export function publish() {
  const body = JSON.stringify({ t: Date.now(), vu: __VU, iter: __ITER });
  const res = http.post(`${HTTP_URL}/v1/topics/${TOPIC}/messages`, body, {
    headers: { 'Content-Type': 'application/json' },
    tags: { name: 'POST /v1/topics/{topic}/messages' },
  });
  if (check(res, { 'publish accepted (202)': (r) => r.status === 202 })) {
    accepted.add(1);
  }
}

export function subscriber() {
  const res = ws.connect(`${WS_URL}/ws`, null, (socket) => {
    socket.on('open', () => socket.send(JSON.stringify({ op: 'sub', topic: TOPIC, ref: 'sub' })));
    socket.on('message', (raw) => {
      const m = JSON.parse(raw);
      if (m.op === 'error') {
        wsErrors.add(1);
      } else if (m.op === 'msg' && m.data && typeof m.data.t === 'number') {
        deliveries.add(1);
        latency.add(Date.now() - m.data.t);
      }
    });
    socket.on('error', () => wsErrors.add(1));
    socket.setTimeout(() => socket.close(), (SETTLE_S + seconds(DURATION) + 3) * 1000);
  });
  check(res, { 'upgraded (101)': (r) => r && r.status === 101 });
}
