// Package e2e proves issue 4 end to end: several chatgg nodes behind a TCP
// load balancer act as one chat server, and no accepted message is lost or
// stored twice.
//
// Its tests build cmd/chatgg once, then start per test a dedicated Redis
// (append-only file on, so a restart keeps the queue), PouchDB Server, three
// `chatgg serve` nodes, two `chatgg worker`s and HAProxy running the
// deployment's own deploy/haproxy/haproxy.cfg, all on loopback ports
// (internal/testsvc), and talk to them only over the wire: WebSocket and
// REST through the balancer, REST to single nodes, and Redis and CouchDB
// directly to look behind the scenes. The fault tests kill a worker, restart
// Redis and freeze the store while clients publish.
//
// The package has no code outside its tests.
package e2e
