// ws_client.js: the Node `ws` package as an interop client for loop's
// /echo endpoint. Run by TestInteropNodeWS:
//
//   node ws_client.js <repo root> <ws://host:port/echo>
//
// It echoes text and binary messages of several sizes, pings, then closes
// with 1000 and expects the server to answer 1000. It prints one line per
// check and exits 0 on success, 1 with the reason on failure.
'use strict';

const path = require('path');
const [root, url] = process.argv.slice(2);
if (!root || !url) {
  console.error('usage: node ws_client.js <repo root> <url>');
  process.exit(2);
}
const WebSocket = require(path.join(root, 'tools', 'node', 'node_modules', 'ws'));

const sizes = [0, 1, 125, 126, 127, 65535, 65536, 1 << 20];

function fail(msg) {
  console.error('FAIL: ' + msg);
  process.exit(1);
}

setTimeout(() => fail('timed out'), 20000).unref();

function payload(n, binary) {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = binary ? (i * 31) & 0xff : 97 + (i % 26);
  return binary ? b : b.toString('latin1');
}

const ws = new WebSocket(url, { perMessageDeflate: false, maxPayload: 32 << 20 });
const waiters = [];
ws.on('message', (data, isBinary) => {
  const w = waiters.shift();
  if (!w) fail('unexpected message');
  w({ data, isBinary });
});
ws.on('error', (err) => fail('socket error: ' + err.message));

function next() {
  return new Promise((resolve) => waiters.push(resolve));
}

async function run() {
  await new Promise((resolve) => ws.once('open', resolve));
  console.log('open');
  for (const binary of [false, true]) {
    for (const n of sizes) {
      const p = payload(n, binary);
      const got = next();
      ws.send(p, { binary });
      const { data, isBinary } = await got;
      if (isBinary !== binary) fail(`size ${n}: binary=${isBinary}, want ${binary}`);
      const want = binary ? p : Buffer.from(p, 'latin1');
      if (!Buffer.isBuffer(data) || !data.equals(want)) fail(`size ${n}: payload differs (${data.length} bytes)`);
      console.log(`echo ${binary ? 'binary' : 'text'} ${n}`);
    }
  }
  const text = 'κόσμε 🙂';
  const got = next();
  ws.send(text);
  const { data } = await got;
  if (data.toString('utf8') !== text) fail('utf-8 text differs');
  console.log('echo utf-8');

  const pong = new Promise((resolve) => ws.once('pong', resolve));
  ws.ping(Buffer.from('are you there'));
  const pp = await pong;
  if (pp.toString() !== 'are you there') fail('pong payload ' + pp.toString());
  console.log('pong');

  const closed = new Promise((resolve) => ws.once('close', (code, reason) => resolve({ code, reason })));
  ws.close(1000, 'done');
  const { code } = await closed;
  if (code !== 1000) fail('close code ' + code);
  console.log('close 1000');
  process.exit(0);
}

run().catch((err) => fail(err.stack || String(err)));
