package loop

import (
	"bytes"
	"context"
	"log/slog"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/chatgg/chatgg/codec"
)

// This file holds the engine's admission limits (connections per node and
// per client address, upgrades per second per address, the origin
// allowlist), the rejection reasons every refusal is counted under, and the
// rate-limited log of rejections. docs/security.md lists them for operators.

// reason is why a connection, upgrade or request was refused. Each has a
// documented HTTP status or close code (docs/protocol.md) and a metrics
// label (chatgg_rejections_total{port="ws",reason}).
type reason uint8

const (
	rsnBadRequest       reason = iota // 400, 405, 426: malformed upgrade request
	rsnHeaderTooLarge                 // 431
	rsnProxyHeader                    // missing or invalid PROXY header: dropped
	rsnHandshakeTimeout               // upgrade not completed in time: dropped
	rsnOrigin                         // 403: Origin not in the allowlist
	rsnUpgradeRate                    // 429: upgrades per second per address
	rsnIPConns                        // 429: connections per address (dropped past the hard cap)
	rsnNodeFull                       // 503: connections per node (dropped past the hard cap)
	rsnNoToken                        // 401: auth required, no token sent
	rsnBadToken                       // 401: token did not verify
	rsnTokenExpired                   // 401: token expired at connect
	rsnTopicForbidden                 // 403: raw mode on a topic the token does not grant
	rsnSessionExpired                 // close 4001: token expired while connected
	rsnSubDenied                      // JSON error 403: sub outside sub_topics
	rsnPubDenied                      // JSON error 403: pub outside pub_topics
	rsnAuthRefused                    // JSON error 401/403: an auth op was refused
	numReasons
)

var reasonNames = [numReasons]string{
	rsnBadRequest:       "bad_request",
	rsnHeaderTooLarge:   "header_too_large",
	rsnProxyHeader:      "proxy_header",
	rsnHandshakeTimeout: "handshake_timeout",
	rsnOrigin:           "origin",
	rsnUpgradeRate:      "upgrade_rate",
	rsnIPConns:          "ip_conns",
	rsnNodeFull:         "node_full",
	rsnNoToken:          "no_token",
	rsnBadToken:         "bad_token",
	rsnTokenExpired:     "token_expired",
	rsnTopicForbidden:   "topic_forbidden",
	rsnSessionExpired:   "session_expired",
	rsnSubDenied:        "sub_denied",
	rsnPubDenied:        "pub_denied",
	rsnAuthRefused:      "auth_refused",
}

func (r reason) String() string { return reasonNames[r] }

// rejectLog logs each reason at most once per interval, with the running
// total, so a flood of bad clients cannot flood the log. Any goroutine.
type rejectLog struct {
	interval int64                    // ns
	last     [numReasons]atomic.Int64 // unix ns of the last line per reason
}

// rejected counts a refusal and logs it unless the reason was logged less
// than an interval ago. status is the HTTP status or close code answered
// (0: dropped without an answer). Never log tokens or keys here.
func (e *Engine) rejected(r reason, peer netip.AddrPort, status int, now time.Time) {
	total := e.stats.rejections[r].Add(1)
	ns := now.UnixNano()
	last := e.rejLog.last[r].Load()
	if last != 0 && ns-last < e.rejLog.interval {
		return
	}
	if !e.rejLog.last[r].CompareAndSwap(last, ns) {
		return // another loop logs this one
	}
	level := slog.LevelInfo
	if r == rsnNodeFull {
		level = slog.LevelWarn // capacity: the operator must know
	}
	if !e.log.Enabled(context.Background(), level) {
		return
	}
	e.log.LogAttrs(context.Background(), level, "refused",
		slog.String("reason", r.String()),
		slog.String("peer", peer.Addr().String()),
		slog.Int("status", status),
		slog.Int64("total", total),
		slog.Duration("quiet_for", time.Duration(e.rejLog.interval)))
}

// hardCap is how many connections past a limit are still accepted so they
// can be answered 429 or 503 once their request arrives; beyond it new TCP
// connections are dropped at once, so a flood of idle sockets cannot hold
// memory until the handshake timeout.
func hardCap(limit int) int64 { return int64(limit) + int64(limit/4) + 16 }

// ipKey is the address limits are kept by: an IPv4 address, or the /64 of
// an IPv6 address (one host usually holds a whole /64).
func ipKey(a netip.Addr) netip.Addr {
	a = a.Unmap()
	if a.Is6() {
		p, err := a.Prefix(64)
		if err == nil {
			return p.Addr()
		}
	}
	return a
}

// maxTrackedIPs bounds each generation of the upgrade-rate table.
const maxTrackedIPs = 1 << 16

// limiter holds the node-wide per-address state: open connections and
// upgrade token buckets. Its mutex is taken when a connection opens or
// closes and once per upgrade, never per frame.
type limiter struct {
	rate, burst float64 // upgrades per second per address, and the bucket size
	maxIP       int     // connections per address; 0: no limit
	genNs       int64   // age at which the upgrade table rotates

	mu    sync.Mutex
	conns map[netip.Addr]int32 // open connections by ipKey; entries at 0 are removed
	// Two generations of upgrade buckets: a lookup moves an entry into cur;
	// on rotation prev (entries untouched for a whole generation, so full
	// again) is dropped. Memory is bounded by 2*maxTrackedIPs entries.
	cur, prev map[netip.Addr]bucket
	rotatedAt int64
}

// bucket is one address's upgrade token bucket.
type bucket struct {
	tokens float64
	at     int64 // unix ns of the last refill
}

func newLimiter(cfg *Config) *limiter {
	l := &limiter{rate: cfg.UpgradesPerSecPerIP, maxIP: cfg.MaxConnsPerIP}
	if l.maxIP > 0 {
		l.conns = make(map[netip.Addr]int32)
	}
	if l.rate > 0 {
		l.burst = max(1, float64(int(l.rate+0.999)))
		// A bucket refills completely in burst/rate seconds; a generation
		// at least that long only drops full buckets.
		l.genNs = max(int64(10*time.Second), int64(l.burst/l.rate*float64(time.Second))+int64(time.Second))
		l.cur = make(map[netip.Addr]bucket)
		l.prev = make(map[netip.Addr]bucket)
	}
	return l
}

// allowUpgrade takes a token from the address's upgrade bucket.
func (l *limiter) allowUpgrade(a netip.Addr, now int64) bool {
	if l.rate <= 0 || !a.IsValid() {
		return true
	}
	k := ipKey(a)
	l.mu.Lock()
	defer l.mu.Unlock()
	if now-l.rotatedAt > l.genNs || len(l.cur) >= maxTrackedIPs {
		clear(l.prev)
		l.prev, l.cur = l.cur, l.prev
		l.rotatedAt = now
	}
	b, ok := l.cur[k]
	if !ok {
		if b, ok = l.prev[k]; ok {
			delete(l.prev, k)
		} else {
			b = bucket{tokens: l.burst, at: now}
		}
	}
	b.tokens = min(l.burst, b.tokens+float64(now-b.at)*l.rate/float64(time.Second))
	b.at = now
	allowed := b.tokens >= 1
	if allowed {
		b.tokens--
	}
	l.cur[k] = b
	return allowed
}

// tracked reports the number of addresses in the upgrade table (tests).
func (l *limiter) tracked() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.cur) + len(l.prev)
}

// acquire counts a connection from a and returns how many it has now.
func (l *limiter) acquire(a netip.Addr) int {
	k := ipKey(a)
	l.mu.Lock()
	n := l.conns[k] + 1
	l.conns[k] = n
	l.mu.Unlock()
	return int(n)
}

// release forgets a connection counted by acquire.
func (l *limiter) release(a netip.Addr) {
	k := ipKey(a)
	l.mu.Lock()
	if n := l.conns[k] - 1; n > 0 {
		l.conns[k] = n
	} else {
		delete(l.conns, k)
	}
	l.mu.Unlock()
}

// countPeer counts c against its address once the address is known (at
// open, or after the PROXY header). It reports false when c is past the
// hard cap and must be dropped at once.
func (ls *loopState) countPeer(c *conn) bool {
	lim := ls.e.lim
	if lim.maxIP <= 0 || !c.peer.IsValid() {
		return true
	}
	n := lim.acquire(c.peer.Addr())
	c.ipCounted = true
	if n > lim.maxIP {
		c.overIP = true
		if int64(n) > hardCap(lim.maxIP) {
			ls.e.rejected(rsnIPConns, c.peer, 0, ls.now)
			return false
		}
	}
	return true
}

// origins is the parsed origin allowlist.
type origins struct {
	all   bool
	exact [][]byte
	wild  []wildOrigin
}

// wildOrigin is "scheme://*.domain[:port]": any subdomain of domain.
type wildOrigin struct {
	scheme []byte // "https://"
	suffix []byte // ".example.com" or ".example.com:8443"
}

func newOrigins(list []string) origins {
	var o origins
	if len(list) == 0 {
		o.all = true
	}
	for _, s := range list {
		if s == "*" {
			o.all = true
			continue
		}
		if i := bytes.Index([]byte(s), []byte("://*.")); i > 0 {
			o.wild = append(o.wild, wildOrigin{scheme: []byte(s[:i+3]), suffix: []byte(s[i+4:])})
			continue
		}
		o.exact = append(o.exact, []byte(s))
	}
	return o
}

// allowed reports whether an upgrade with this Origin header may proceed.
// Requests without one come from non-browser clients, which could forge
// any origin anyway: the check protects browsers' users from other sites
// (cross-site WebSocket hijacking).
func (o *origins) allowed(origin []byte) bool {
	if o.all || origin == nil {
		return true
	}
	for _, e := range o.exact {
		if bytes.EqualFold(origin, e) {
			return true
		}
	}
	for _, w := range o.wild {
		if len(origin) <= len(w.scheme)+len(w.suffix) ||
			!bytes.EqualFold(origin[:len(w.scheme)], w.scheme) ||
			!bytes.EqualFold(origin[len(origin)-len(w.suffix):], w.suffix) {
			continue
		}
		if hostChars(origin[len(w.scheme) : len(origin)-len(w.suffix)]) {
			return true
		}
	}
	return false
}

// hostChars reports whether b holds only DNS name characters.
func hostChars(b []byte) bool {
	for _, c := range b {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '.':
		default:
			return false
		}
	}
	return true
}

// appendReject appends the HTTP answer to a refused upgrade: like
// codec.AppendHTTPError, with the reason phrases and headers of the
// admission statuses (401 asks for a bearer token; 429 and 503 say when to
// retry).
func appendReject(dst []byte, status int, msg string) []byte {
	var phrase, extra string
	switch status {
	case 401:
		phrase, extra = "Unauthorized", "WWW-Authenticate: Bearer realm=\"chatgg\"\r\n"
	case 403:
		phrase = "Forbidden"
	case 429:
		phrase, extra = "Too Many Requests", "Retry-After: 1\r\n"
	case 503:
		phrase, extra = "Service Unavailable", "Retry-After: 5\r\n"
	default:
		return codec.AppendHTTPError(dst, status, msg)
	}
	dst = append(dst, "HTTP/1.1 "...)
	dst = strconv.AppendInt(dst, int64(status), 10)
	dst = append(dst, ' ')
	dst = append(dst, phrase...)
	dst = append(dst, "\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: "...)
	dst = strconv.AppendInt(dst, int64(len(msg)+1), 10)
	dst = append(dst, "\r\nConnection: close\r\n"...)
	dst = append(dst, extra...)
	dst = append(dst, "\r\n"...)
	dst = append(dst, msg...)
	return append(dst, '\n')
}
