package loop

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/chatgg/chatgg/codec"
)

// fakeAuth is an Authenticator over a table of tokens: the JWT verifier
// itself is the server's (and tested there); loop's part is finding the
// token, refusing, stamping and expiring.
type fakeAuth struct {
	mu     sync.Mutex
	tokens map[string]Identity
	calls  atomic.Int64
}

func newFakeAuth() *fakeAuth { return &fakeAuth{tokens: map[string]Identity{}} }

func (a *fakeAuth) add(token string, id Identity) {
	a.mu.Lock()
	a.tokens[token] = id
	a.mu.Unlock()
}

func (a *fakeAuth) Verify(token string) (*Identity, error) {
	a.calls.Add(1)
	a.mu.Lock()
	id, ok := a.tokens[token]
	a.mu.Unlock()
	switch {
	case !ok:
		return nil, errors.New("fake: unknown token")
	case !id.Expires.IsZero() && time.Now().After(id.Expires):
		return nil, fmt.Errorf("fake: %w", ErrTokenExpired)
	}
	return &id, nil
}

// loopback is a Publisher that delivers every message straight back to
// the engine, as the in-process bus does.
type loopback struct {
	e    atomic.Pointer[Engine]
	msgs chan *codec.Message
}

func newLoopback() *loopback { return &loopback{msgs: make(chan *codec.Message, 1024)} }

func (p *loopback) Publish(m *codec.Message, done func(string, error)) {
	go func() {
		select {
		case p.msgs <- m:
		default:
		}
		p.e.Load().Deliver(m)
		done(m.ID, nil)
	}()
}

// startAuthEngine starts an engine with cfg plus a fakeAuth and a
// loopback publisher.
func startAuthEngine(t *testing.T, cfg Config) (*Engine, *fakeAuth, *loopback) {
	t.Helper()
	a := newFakeAuth()
	if cfg.Auth == nil {
		cfg.Auth = a
	}
	pub := newLoopback()
	cfg.Publisher = pub
	e := startEngine(t, cfg)
	pub.e.Store(e)
	return e, a, pub
}

// upgradeResult is the server's answer to an upgrade request.
type upgradeResult struct {
	resp *http.Response
	body string
	c    *wsClient // set on 101
}

// tryUpgrade sends an upgrade request for path with extra header lines
// and reads the answer.
func tryUpgrade(t *testing.T, addr, path string, extra ...string) upgradeResult {
	t.Helper()
	return tryUpgradeRaw(t, addr, nil, path, extra...)
}

// tryUpgradeRaw is tryUpgrade with bytes (a PROXY header) sent first.
func tryUpgradeRaw(t *testing.T, addr string, prefix []byte, path string, extra ...string) upgradeResult {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(ioTimeout))
	if _, err := nc.Write(append(prefix, upgradeRequest(path, extra...)...)); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReaderSize(nc, 64<<10)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("read upgrade response: %v", err)
	}
	r := upgradeResult{resp: resp}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		nc.SetDeadline(time.Time{})
		r.c = &wsClient{tb: t, nc: nc, br: br}
		return r
	}
	b, _ := io.ReadAll(resp.Body)
	r.body = string(b)
	// The server closes after an error response.
	if n, err := br.Read(make([]byte, 1)); n != 0 || !isClosedErr(err) {
		t.Fatalf("after a %d: %d bytes, %v; want the connection closed", resp.StatusCode, n, err)
	}
	return r
}

func (r upgradeResult) expectStatus(t *testing.T, status int) {
	t.Helper()
	if r.resp.StatusCode != status {
		t.Fatalf("status %d %q, want %d", r.resp.StatusCode, r.body, status)
	}
}

// jsonOp is a decoded server JSON message.
type jsonOp struct {
	Op      string          `json:"op"`
	Ref     string          `json:"ref"`
	Code    int             `json:"code"`
	Message string          `json:"message"`
	Topic   string          `json:"topic"`
	From    string          `json:"from"`
	Data    json.RawMessage `json:"data"`
}

func (c *wsClient) request(s string) { c.tb.Helper(); c.send(text(s)) }

func (c *wsClient) readOp() jsonOp {
	c.tb.Helper()
	f, err := c.readFrame()
	if err != nil {
		c.tb.Fatalf("read: %v", err)
	}
	if f.op != ws.OpText {
		c.tb.Fatalf("got %v, want a text frame", f)
	}
	var o jsonOp
	if err := json.Unmarshal(f.payload, &o); err != nil {
		c.tb.Fatalf("bad JSON %q: %v", f.payload, err)
	}
	return o
}

func (c *wsClient) expectOp(op, ref string, code int) jsonOp {
	c.tb.Helper()
	o := c.readOp()
	if o.Op != op || o.Ref != ref || o.Code != code {
		c.tb.Fatalf("got %+v, want op %s ref %s code %d", o, op, ref, code)
	}
	return o
}

func TestMatchTopic(t *testing.T) {
	cases := []struct {
		pat, topic string
		want       bool
	}{
		{"*", "anything", true},
		{"*", "a/b.c", true},
		{"room.*", "room.1", true},
		{"room.*", "room.a/b", true},
		{"room.*", "room.", true},
		{"room.*", "room", false},
		{"room.*", "xroom.1", false},
		{"room.1", "room.1", true},
		{"room.1", "room.10", false},
		{"*.public", "eu.room.public", true},
		{"*.public", "public", false},
		{"a*b*c", "axxbyyc", true},
		{"a*b*c", "axxbyy", false},
		{"a**", "a", true},
		{"", "a", false},
		{"user/*/inbox", "user/42/inbox", true},
		{"user/*/inbox", "user/42/outbox", false},
	}
	for _, tc := range cases {
		if got := MatchTopic(tc.pat, []byte(tc.topic)); got != tc.want {
			t.Errorf("MatchTopic(%q, %q) = %v, want %v", tc.pat, tc.topic, got, tc.want)
		}
	}
}

func TestUpgradeRefusesMissingBadAndExpiredTokens(t *testing.T) {
	e, a, _ := startAuthEngine(t, Config{})
	a.add("good", Identity{Subject: "alice", SubTopics: []string{"*"}, PubTopics: []string{"*"}})
	a.add("stale", Identity{Subject: "alice", Expires: time.Now().Add(-time.Second)})
	addr := e.Addr().String()
	cases := []struct {
		name   string
		path   string
		extra  []string
		status int
	}{
		{"no-token", "/ws", nil, 401},
		{"unknown-token", "/ws", []string{"Authorization: Bearer nope"}, 401},
		{"expired-token", "/ws", []string{"Authorization: Bearer stale"}, 401},
		{"token-over-the-size-limit", "/ws", []string{"Authorization: Bearer " + strings.Repeat("x", 8<<10)}, 431},
		{"basic-auth-is-no-token", "/ws", []string{"Authorization: Basic Z29vZA=="}, 401},
		{"bad-token-in-query", "/ws?token=nope", nil, 401},
		{"bad-token-in-protocol", "/ws", []string{"Sec-WebSocket-Protocol: chatgg.v1, bearer.nope"}, 401},
		{"header-token", "/ws", []string{"Authorization: Bearer good"}, 101},
		{"header-token-any-case", "/ws", []string{"Authorization: bearer good"}, 101},
		{"query-token", "/ws?x=1&token=good", nil, 101},
		{"query-token-escaped", "/ws?token=go%6Fd", nil, 101},
		{"protocol-token", "/ws", []string{"Sec-WebSocket-Protocol: chatgg.v1, bearer.good"}, 101},
		{"echo-needs-a-token-too", "/echo", nil, 401},
		{"raw-needs-a-token-too", "/raw/room", nil, 401},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := tryUpgrade(t, addr, tc.path, tc.extra...)
			r.expectStatus(t, tc.status)
			if tc.status == 401 && !strings.HasPrefix(r.resp.Header.Get("WWW-Authenticate"), "Bearer") {
				t.Errorf("401 without WWW-Authenticate: Bearer: %v", r.resp.Header)
			}
			if r.c != nil {
				r.c.closeHandshake()
			}
		})
	}
	rej := e.Stats().Rejections
	if rej["no_token"] != 4 || rej["bad_token"] != 3 || rej["token_expired"] != 1 || rej["header_too_large"] != 1 {
		t.Errorf("Rejections = %v", rej)
	}
	if got := e.Stats().UpgradeRejected[401]; got != 8 {
		t.Errorf("UpgradeRejected[401] = %d, want 8", got)
	}
}

func TestSubprotocolIsEchoedWithoutTheToken(t *testing.T) {
	e, a, _ := startAuthEngine(t, Config{})
	a.add("good", Identity{Subject: "alice"})
	r := tryUpgrade(t, e.Addr().String(), "/ws", "Sec-WebSocket-Protocol: chatgg.v1, bearer.good")
	r.expectStatus(t, 101)
	if got := r.resp.Header.Values("Sec-WebSocket-Protocol"); len(got) != 1 || got[0] != "chatgg.v1" {
		t.Fatalf("Sec-WebSocket-Protocol %q, want chatgg.v1 alone", got)
	}
	r.c.closeHandshake()
}

func TestAnonymousConnections(t *testing.T) {
	e, _, _ := startAuthEngine(t, Config{
		AllowAnonymous:     true,
		AnonymousSubTopics: []string{"lobby", "news.*"},
		AnonymousPubTopics: []string{},
	})
	addr := e.Addr().String()
	r := tryUpgrade(t, addr, "/ws")
	r.expectStatus(t, 101)
	c := r.c
	c.request(`{"op":"sub","topic":"lobby","ref":"1"}`)
	c.expectOp("ack", "1", 0)
	c.request(`{"op":"sub","topic":"news.eu","ref":"2"}`)
	c.expectOp("ack", "2", 0)
	c.request(`{"op":"sub","topic":"private","ref":"3"}`)
	c.expectOp("error", "3", 403)
	c.request(`{"op":"pub","topic":"lobby","data":1,"ref":"4"}`)
	c.expectOp("error", "4", 403)
	c.closeHandshake()

	// Raw mode needs both: anonymous may read lobby but not write it.
	tryUpgrade(t, addr, "/raw/lobby").expectStatus(t, 403)
	if rej := e.Stats().Rejections; rej["sub_denied"] != 1 || rej["pub_denied"] != 1 || rej["topic_forbidden"] != 1 {
		t.Errorf("Rejections = %v", rej)
	}
}

func TestTokenTopicsAndFrom(t *testing.T) {
	e, a, pub := startAuthEngine(t, Config{})
	a.add("alice", Identity{Subject: "alice", SubTopics: []string{"room.*"}, PubTopics: []string{"room.1"}})
	a.add("reader", Identity{Subject: "bob", SubTopics: []string{"room.*"}})
	a.add("raw-ok", Identity{Subject: "carol", SubTopics: []string{"room.*"}, PubTopics: []string{"room.*"}})
	addr := e.Addr().String()

	r := tryUpgrade(t, addr, "/ws", "Authorization: Bearer alice")
	r.expectStatus(t, 101)
	c := r.c
	c.request(`{"op":"sub","topic":"room.1","ref":"s1"}`)
	c.expectOp("ack", "s1", 0)
	c.request(`{"op":"sub","topic":"lobby","ref":"s2"}`)
	if o := c.expectOp("error", "s2", 403); !strings.Contains(o.Message, "subscribe") {
		t.Errorf("message %q", o.Message)
	}
	c.request(`{"op":"pub","topic":"room.2","data":"x","ref":"p1"}`)
	c.expectOp("error", "p1", 403)
	// A client cannot set from: an unknown field is ignored, and the
	// message carries the token's sub.
	c.request(`{"op":"pub","topic":"room.1","data":"hi","from":"mallory","ref":"p2"}`)
	var gotAck, gotMsg bool
	for !gotAck || !gotMsg {
		o := c.readOp()
		switch o.Op {
		case "ack":
			gotAck = o.Ref == "p2"
		case "msg":
			if o.From != "alice" {
				t.Fatalf("msg from %q, want alice: %+v", o.From, o)
			}
			gotMsg = true
		default:
			t.Fatalf("unexpected %+v", o)
		}
	}
	if m := <-pub.msgs; m.From != "alice" {
		t.Fatalf("published message From = %q", m.From)
	}
	c.closeHandshake()

	// Raw mode: both permissions for the topic, else 403 at the upgrade.
	tryUpgrade(t, addr, "/raw/room.1", "Authorization: Bearer reader").expectStatus(t, 403)
	tryUpgrade(t, addr, "/", "Authorization: Bearer raw-ok").expectStatus(t, 403) // the default topic
	r = tryUpgrade(t, addr, "/raw/room.9", "Authorization: Bearer raw-ok")
	r.expectStatus(t, 101)
	r.c.send(text("raw hello"))
	r.c.expectFrame(text("raw hello"))
	if m := <-pub.msgs; m.From != "carol" {
		t.Fatalf("raw message From = %q", m.From)
	}
	r.c.closeHandshake()
}

func TestExpiredTokenClosesWith4001(t *testing.T) {
	e, a, _ := startAuthEngine(t, Config{})
	a.add("short", Identity{Subject: "alice", Expires: time.Now().Add(400 * time.Millisecond)})
	r := tryUpgrade(t, e.Addr().String(), "/ws", "Authorization: Bearer short")
	r.expectStatus(t, 101)
	start := time.Now()
	f, err := r.c.readFrame()
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	r.c.checkClose(f, 4001)
	if took > 2*time.Second {
		t.Errorf("closed %v after connecting, want about 400ms and the sweep (<= 1s)", took)
	}
	r.c.send(closeFrame(4001, ""))
	r.c.expectEOF()
	if rej := e.Stats().Rejections; rej["session_expired"] != 1 {
		t.Errorf("Rejections = %v", rej)
	}
	if e.Stats().Closed[4001] != 1 {
		t.Errorf("Closed = %v", e.Stats().Closed)
	}
}

func TestAuthOpRefreshesTheToken(t *testing.T) {
	e, a, _ := startAuthEngine(t, Config{AllowAnonymous: true, AnonymousSubTopics: []string{}, AnonymousPubTopics: []string{}})
	a.add("short", Identity{Subject: "alice", Expires: time.Now().Add(700 * time.Millisecond), SubTopics: []string{"*"}})
	a.add("long", Identity{Subject: "alice", Expires: time.Now().Add(time.Hour), SubTopics: []string{"a.*"}, PubTopics: []string{"a.*"}})
	a.add("bob", Identity{Subject: "bob", Expires: time.Now().Add(time.Hour), SubTopics: []string{"*"}})
	addr := e.Addr().String()

	r := tryUpgrade(t, addr, "/ws", "Authorization: Bearer short")
	r.expectStatus(t, 101)
	c := r.c
	c.request(`{"op":"sub","topic":"a.1","ref":"s1"}`)
	c.expectOp("ack", "s1", 0)
	c.request(`{"op":"sub","topic":"b.1","ref":"s2"}`)
	c.expectOp("ack", "s2", 0)
	c.request(`{"op":"auth","token":"nope","ref":"x"}`)
	c.expectOp("error", "x", 401)
	c.request(`{"op":"auth","token":"bob","ref":"y"}`)
	c.expectOp("error", "y", 403)
	c.request(`{"op":"auth","token":"long","ref":"z"}`)
	c.expectOp("ack", "z", 0)
	// The new token's topics apply: b.1 was dropped, a.1 kept.
	if got := e.Topics(); got["a.1"] != 1 || got["b.1"] != 0 {
		t.Fatalf("topics after refresh: %v", got)
	}
	c.request(`{"op":"pub","topic":"a.1","data":1,"ref":"p"}`)
	for range 2 { // the ack and the message, in either order
		if o := c.readOp(); o.Op != "msg" && (o.Op != "ack" || o.Ref != "p") {
			t.Fatalf("got %+v", o)
		}
	}
	// Past the first token's expiry the connection is still open.
	time.Sleep(time.Second)
	c.request(`{"op":"unsub","topic":"a.1","ref":"u"}`)
	c.expectOp("ack", "u", 0)
	c.closeHandshake()

	// An anonymous connection may sign in.
	r = tryUpgrade(t, addr, "/ws")
	r.expectStatus(t, 101)
	r.c.request(`{"op":"sub","topic":"a.1","ref":"1"}`)
	r.c.expectOp("error", "1", 403)
	r.c.request(`{"op":"auth","token":"long","ref":"2"}`)
	r.c.expectOp("ack", "2", 0)
	r.c.request(`{"op":"sub","topic":"a.1","ref":"3"}`)
	r.c.expectOp("ack", "3", 0)
	r.c.closeHandshake()
	if rej := e.Stats().Rejections; rej["auth_refused"] != 2 {
		t.Errorf("Rejections = %v", rej)
	}
}

func TestAuthOpWithoutAuthenticator(t *testing.T) {
	e := startEngine(t, Config{})
	c := dialWS(t, e, "/ws")
	c.request(`{"op":"auth","token":"x","ref":"1"}`)
	c.expectOp("error", "1", 400)
	c.closeHandshake()
}

func TestOriginAllowlist(t *testing.T) {
	e := startEngine(t, Config{AllowedOrigins: []string{"https://chat.example.com", "https://*.example.org", "http://localhost:8080"}})
	addr := e.Addr().String()
	cases := []struct {
		origin string
		status int
	}{
		{"", 101}, // not a browser
		{"https://chat.example.com", 101},
		{"HTTPS://CHAT.EXAMPLE.COM", 101},
		{"https://a.b.example.org", 101},
		{"http://localhost:8080", 101},
		{"https://evil.com", 403},
		{"http://chat.example.com", 403},
		{"https://chat.example.com:444", 403},
		{"https://example.org", 403},
		{"https://evil.com/.example.org", 403},
		{"null", 403},
	}
	for _, tc := range cases {
		t.Run(tc.origin, func(t *testing.T) {
			var extra []string
			if tc.origin != "" {
				extra = append(extra, "Origin: "+tc.origin)
			}
			r := tryUpgrade(t, addr, "/echo", extra...)
			r.expectStatus(t, tc.status)
			if r.c != nil {
				r.c.closeHandshake()
			}
		})
	}
	if rej := e.Stats().Rejections; rej["origin"] != 6 {
		t.Errorf("Rejections = %v", rej)
	}
}

func TestMaxConnsAnswers503(t *testing.T) {
	e := startEngine(t, Config{MaxConns: 2})
	addr := e.Addr().String()
	a := tryUpgrade(t, addr, "/echo")
	a.expectStatus(t, 101)
	b := tryUpgrade(t, addr, "/echo")
	b.expectStatus(t, 101)
	r := tryUpgrade(t, addr, "/echo")
	r.expectStatus(t, 503)
	if r.resp.Header.Get("Retry-After") == "" {
		t.Error("503 without Retry-After")
	}
	a.c.closeHandshake()
	if !waitFor(ioTimeout, func() bool { return e.Stats().Conns == 1 }) {
		t.Fatal("connection not released")
	}
	c := tryUpgrade(t, addr, "/echo")
	c.expectStatus(t, 101)
	b.c.closeHandshake()
	c.c.closeHandshake()
	if rej := e.Stats().Rejections; rej["node_full"] != 1 {
		t.Errorf("Rejections = %v", rej)
	}
}

func TestMaxConnsDropsPastTheHardCap(t *testing.T) {
	e := startEngine(t, Config{MaxConns: 1, HandshakeTimeout: 5 * time.Second})
	cap := int(hardCap(1))
	var conns []net.Conn
	for range cap {
		conns = append(conns, dialTCP(t, e))
	}
	if !waitFor(ioTimeout, func() bool { return e.Stats().Conns == int64(cap) }) {
		t.Fatalf("%d connections open, want %d", e.Stats().Conns, cap)
	}
	extra := dialTCP(t, e)
	expectDropped(t, extra, time.Now(), 0)
	if rej := e.Stats().Rejections; rej["node_full"] != 1 {
		t.Errorf("Rejections = %v", rej)
	}
	for _, c := range conns {
		c.Close()
	}
}

func TestMaxConnsPerIPAnswers429(t *testing.T) {
	e := startEngine(t, Config{MaxConnsPerIP: 2})
	addr := e.Addr().String()
	a := tryUpgrade(t, addr, "/echo")
	a.expectStatus(t, 101)
	b := tryUpgrade(t, addr, "/echo")
	b.expectStatus(t, 101)
	tryUpgrade(t, addr, "/echo").expectStatus(t, 429)
	a.c.closeHandshake()
	if !waitFor(ioTimeout, func() bool { return e.Stats().Conns == 1 }) {
		t.Fatal("connection not released")
	}
	c := tryUpgrade(t, addr, "/echo")
	c.expectStatus(t, 101)
	b.c.closeHandshake()
	c.c.closeHandshake()
	if rej := e.Stats().Rejections; rej["ip_conns"] != 1 {
		t.Errorf("Rejections = %v", rej)
	}
	if !waitFor(ioTimeout, func() bool { e.lim.mu.Lock(); defer e.lim.mu.Unlock(); return len(e.lim.conns) == 0 }) {
		t.Error("per-address table not emptied")
	}
}

func TestPerIPLimitsUseTheProxyAddress(t *testing.T) {
	e := startEngine(t, Config{ProxyProtocol: true, MaxConnsPerIP: 1})
	addr := e.Addr().String()
	hdr := func(src string) []byte {
		s := netip.MustParseAddrPort(src)
		dst := netip.MustParseAddrPort("10.0.0.1:9001")
		if s.Addr().Is6() {
			dst = netip.MustParseAddrPort("[2001:db8:ffff::1]:9001")
		}
		return codec.AppendProxyV1(nil, s, dst)
	}
	a := tryUpgradeRaw(t, addr, hdr("203.0.113.1:1000"), "/echo")
	a.expectStatus(t, 101)
	// Another client behind the same balancer: its own count.
	b := tryUpgradeRaw(t, addr, hdr("203.0.113.2:1000"), "/echo")
	b.expectStatus(t, 101)
	tryUpgradeRaw(t, addr, hdr("203.0.113.1:1001"), "/echo").expectStatus(t, 429)
	// One IPv6 /64 is one client.
	c := tryUpgradeRaw(t, addr, hdr("[2001:db8::1]:1000"), "/echo")
	c.expectStatus(t, 101)
	tryUpgradeRaw(t, addr, hdr("[2001:db8::2]:1000"), "/echo").expectStatus(t, 429)
	for _, r := range []upgradeResult{a, b, c} {
		r.c.closeHandshake()
	}
}

func TestUpgradeRatePerIPAnswers429(t *testing.T) {
	e := startEngine(t, Config{UpgradesPerSecPerIP: 3})
	addr := e.Addr().String()
	for range 3 {
		r := tryUpgrade(t, addr, "/echo")
		r.expectStatus(t, 101)
		r.c.closeHandshake()
	}
	r := tryUpgrade(t, addr, "/echo")
	r.expectStatus(t, 429)
	if r.resp.Header.Get("Retry-After") == "" {
		t.Error("429 without Retry-After")
	}
	// The bucket refills at 3 per second.
	time.Sleep(400 * time.Millisecond)
	r = tryUpgrade(t, addr, "/echo")
	r.expectStatus(t, 101)
	r.c.closeHandshake()
	if rej := e.Stats().Rejections; rej["upgrade_rate"] != 1 {
		t.Errorf("Rejections = %v", rej)
	}
}

func TestUpgradeRateTableIsBounded(t *testing.T) {
	l := newLimiter(&Config{UpgradesPerSecPerIP: 1})
	now := time.Now().UnixNano()
	for i := range 3 * maxTrackedIPs {
		a := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		if !l.allowUpgrade(a, now) {
			t.Fatalf("first upgrade of %v refused", a)
		}
	}
	if n := l.tracked(); n > 2*maxTrackedIPs {
		t.Fatalf("%d addresses tracked, want at most %d", n, 2*maxTrackedIPs)
	}
	// Idle entries go at the next rotation.
	a := netip.MustParseAddr("192.0.2.1")
	l.allowUpgrade(a, now)
	if l.allowUpgrade(a, now) {
		t.Fatal("second upgrade within the second allowed")
	}
	later := now + l.genNs + 1
	l.allowUpgrade(netip.MustParseAddr("192.0.2.2"), later)
	l.allowUpgrade(netip.MustParseAddr("192.0.2.3"), later+l.genNs+1)
	if n := l.tracked(); n > 2 {
		t.Fatalf("%d addresses tracked after two idle generations, want 2 at most", n)
	}
}

// logRecorder is a slog handler that keeps the records it is given.
type logRecorder struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (h *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (h *logRecorder) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	h.recs = append(h.recs, r.Clone())
	h.mu.Unlock()
	return nil
}
func (h *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *logRecorder) WithGroup(string) slog.Handler      { return h }

// refusals returns the "refused" records by reason.
func (h *logRecorder) refusals() map[string]int {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := map[string]int{}
	for _, r := range h.recs {
		if r.Message != "refused" {
			continue
		}
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "reason" {
				out[a.Value.String()]++
			}
			return true
		})
	}
	return out
}

func TestRefusalsAreLoggedOncePerInterval(t *testing.T) {
	rec := &logRecorder{}
	e, _, _ := startAuthEngine(t, Config{Logger: slog.New(rec), RejectLogInterval: time.Hour})
	addr := e.Addr().String()
	for range 20 {
		tryUpgrade(t, addr, "/ws", "Authorization: Bearer secret-token-value").expectStatus(t, 401)
		tryUpgrade(t, addr, "/ws").expectStatus(t, 401)
	}
	if got := rec.refusals(); got["bad_token"] != 1 || got["no_token"] != 1 {
		t.Fatalf("log lines by reason %v, want one each", got)
	}
	if rej := e.Stats().Rejections; rej["bad_token"] != 20 || rej["no_token"] != 20 {
		t.Fatalf("Rejections = %v", rej)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for _, r := range rec.recs {
		r.Attrs(func(a slog.Attr) bool {
			if strings.Contains(a.Value.String(), "secret-token-value") {
				t.Errorf("a log line holds the token: %v", r)
			}
			return true
		})
	}
}

// TestRejectedAttemptsLeaveMemoryFlat makes 10 000 upgrades with bad
// tokens and checks that the heap and the goroutines are back where they
// were: refusals keep nothing.
func TestRejectedAttemptsLeaveMemoryFlat(t *testing.T) {
	if testing.Short() {
		t.Skip("10 000 connections")
	}
	e, a, _ := startAuthEngine(t, Config{})
	addr := e.Addr().String()
	attempt := func(i int) error {
		nc, err := net.DialTimeout("tcp", addr, ioTimeout)
		if err != nil {
			return err
		}
		defer nc.Close()
		nc.SetDeadline(time.Now().Add(ioTimeout))
		tok := fmt.Sprintf("bad-%d-%s", i, strings.Repeat("t", 200))
		if _, err := io.WriteString(nc, upgradeRequest("/ws", "Authorization: Bearer "+tok)); err != nil {
			return err
		}
		resp, err := http.ReadResponse(bufio.NewReader(nc), nil)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 401 {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	}
	run := func(n int) {
		const workers = 8
		var wg sync.WaitGroup
		errs := make(chan error, workers)
		for w := range workers {
			wg.Go(func() {
				for i := w; i < n; i += workers {
					if err := attempt(i); err != nil {
						errs <- err
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		if !waitFor(ioTimeout, func() bool { return e.Stats().Conns == 0 }) {
			t.Fatalf("%d connections left", e.Stats().Conns)
		}
	}
	heap := func() uint64 {
		var m runtime.MemStats
		runtime.GC()
		runtime.GC()
		runtime.ReadMemStats(&m)
		return m.HeapInuse
	}
	run(500) // warm-up: loop buffers and maps reach their size
	h0, g0 := heap(), runtime.NumGoroutine()
	start := time.Now()
	run(10000)
	h1, g1 := heap(), runtime.NumGoroutine()
	t.Logf("10 000 refusals in %v: HeapInuse %d -> %d, goroutines %d -> %d", time.Since(start), h0, h1, g0, g1)
	if got := a.calls.Load(); got != 10500 {
		t.Errorf("%d verifications, want 10500", got)
	}
	if h1 > h0+8<<20 {
		t.Errorf("heap grew by %d bytes over 10 000 refusals", h1-h0)
	}
	if g1 > g0+5 {
		t.Errorf("goroutines grew from %d to %d", g0, g1)
	}
}
