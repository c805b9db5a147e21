'use strict';
// A plain broadcast server on the Node `ws` package, for bench-compare:
// every message a client sends goes to every connected client (the sender
// too, as in chatgg's raw mode), with the frame type it came in, whatever
// the path. /echo answers each message to its sender only, like chatgg's
// /echo. No topics, no storage, no limits: the baseline a broker is judged
// against.
//
//   node bench/ws-server/server.js [port]     (or PORT=9003; default 9003)
//   HOST=127.0.0.1 by default.
//
// `ws` comes from tools/node (npm ci --prefix tools/node); NODE_PATH or a
// local install work too.

const path = require('path');

function loadWS() {
  try {
    return require('ws');
  } catch (e) {
    return require(path.join(__dirname, '..', '..', 'tools', 'node', 'node_modules', 'ws'));
  }
}

const { WebSocketServer, WebSocket } = loadWS();

const port = Number(process.argv[2] || process.env.PORT || 9003);
const host = process.env.HOST || '127.0.0.1';
if (!Number.isInteger(port) || port < 1 || port > 65535) {
  console.error(`ws-server: bad port ${process.argv[2] || process.env.PORT}`);
  process.exit(2);
}

// perMessageDeflate off (the ws default for servers), no payload limit
// beyond ws's 100 MiB default, no client tracking beyond wss.clients.
const wss = new WebSocketServer({ host, port, perMessageDeflate: false, clientTracking: true });

wss.on('connection', (socket, req) => {
  const echo = req.url === '/echo' || req.url.startsWith('/echo?');
  socket.on('error', () => socket.terminate());
  if (echo) {
    socket.on('message', (data, isBinary) => socket.send(data, { binary: isBinary }));
    return;
  }
  socket.on('message', (data, isBinary) => {
    for (const client of wss.clients) {
      if (client.readyState === WebSocket.OPEN) {
        client.send(data, { binary: isBinary });
      }
    }
  });
});

wss.on('listening', () => {
  console.log(`ws-server: listening on ${host}:${port} (pid ${process.pid})`);
});
wss.on('error', (err) => {
  console.error(`ws-server: ${err.message}`);
  process.exit(1);
});

for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    for (const client of wss.clients) client.terminate();
    wss.close(() => process.exit(0));
    setTimeout(() => process.exit(0), 1000).unref();
  });
}
