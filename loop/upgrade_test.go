package loop

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/chatgg/chatgg/codec"
)

// request joins header lines into a request head.
func request(lines ...string) string {
	return strings.Join(lines, "\r\n") + "\r\n\r\n"
}

func TestUpgradeRejectsBadRequests(t *testing.T) {
	e := startEngine(t, Config{})
	const (
		get     = "GET /echo HTTP/1.1"
		host    = "Host: localhost"
		upgrade = "Upgrade: websocket"
		connUp  = "Connection: Upgrade"
		key     = "Sec-WebSocket-Key: " + testKey
		v13     = "Sec-WebSocket-Version: 13"
	)
	cases := []struct {
		name    string
		req     string
		status  int
		headers map[string]string // required response headers
	}{
		{"malformed-request-line", request("GARBAGE"), 400, nil},
		{"http-1.0", request("GET /echo HTTP/1.0", host, upgrade, connUp, key, v13), 400, nil},
		{"missing-key", request(get, host, upgrade, connUp, v13), 400, nil},
		{"key-of-10-bytes", request(get, host, upgrade, connUp, "Sec-WebSocket-Key: dGhlIHNhbXBsZQ==", v13), 400, nil},
		{"key-not-base64", request(get, host, upgrade, connUp, "Sec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!!!", v13), 400, nil},
		{"duplicate-key", request(get, host, upgrade, connUp, key, key, v13), 400, nil},
		{"missing-host", request(get, upgrade, connUp, key, v13), 400, nil},
		{"missing-upgrade", request(get, host, connUp, key, v13), 400, nil},
		{"missing-connection-upgrade", request(get, host, upgrade, "Connection: keep-alive", key, v13), 400, nil},
		{"header-line-without-colon", request(get, host, "Bogus", upgrade, connUp, key, v13), 400, nil},
		{"bare-lf-line-endings", strings.ReplaceAll(upgradeRequest("/echo"), "\r\n", "\n"), 400, nil},
		{"invalid-raw-topic", request("GET /raw/bad%20topic HTTP/1.1", host, upgrade, connUp, key, v13), 400, nil},
		{"post", request("POST /echo HTTP/1.1", host, upgrade, connUp, key, v13), 405,
			map[string]string{"Allow": "GET"}},
		{"version-12", request(get, host, upgrade, connUp, key, "Sec-WebSocket-Version: 12"), 426,
			map[string]string{"Sec-WebSocket-Version": "13"}},
		{"missing-version", request(get, host, upgrade, connUp, key), 426,
			map[string]string{"Sec-WebSocket-Version": "13"}},
		{"headers-over-8KiB", request(get, host, upgrade, connUp, key, v13, "X-Pad: "+strings.Repeat("p", 9<<10)), 431, nil},
		{"unfinished-head-over-8KiB", "GET /echo HTTP/1.1\r\nX-Pad: " + strings.Repeat("p", 9<<10), 431, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			nc := dialTCP(t, e)
			nc.SetDeadline(time.Now().Add(ioTimeout))
			if _, err := io.WriteString(nc, tc.req); err != nil {
				t.Fatal(err)
			}
			br := bufio.NewReader(nc)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("read response: %v", err)
			}
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatalf("read body: %v", err)
			}
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d (%s), want %d", resp.StatusCode, body, tc.status)
			}
			for k, v := range tc.headers {
				if got := resp.Header.Get(k); got != v {
					t.Errorf("%s: %q, want %q", k, got, v)
				}
			}
			// The server closes after an error response.
			if n, err := br.Read(make([]byte, 1)); n != 0 || !isClosedErr(err) {
				t.Fatalf("after the response: %d bytes, %v; want the connection closed", n, err)
			}
		})
	}
	if got := e.Stats().UpgradeRejected; got[400] == 0 || got[405] != 1 || got[426] != 2 || got[431] != 2 {
		t.Errorf("UpgradeRejected = %v", got)
	}
}

func TestUpgradeDeliveredOneByteAtATime(t *testing.T) {
	e := startEngine(t, Config{})
	nc := dialTCP(t, e)
	c := &wsClient{tb: t, nc: nc, br: bufio.NewReader(nc)}
	if err := c.writeRaw([]byte(upgradeRequest("/echo")), 1); err != nil {
		t.Fatal(err)
	}
	nc.SetReadDeadline(time.Now().Add(ioTimeout))
	if err := c.readUpgradeResponse(); err != nil {
		t.Fatal(err)
	}
	c.echo(ws.OpText, []byte("after a slow upgrade"))
	c.closeHandshake()
}

func TestUpgradeThenFramesInSameWrite(t *testing.T) {
	e := startEngine(t, Config{})
	nc := dialTCP(t, e)
	c := &wsClient{tb: t, nc: nc, br: bufio.NewReader(nc)}
	b := append([]byte(upgradeRequest("/echo")), c.encode(text("early"), ping([]byte("p")), bin([]byte{1, 2}))...)
	if err := c.writeRaw(b, 0); err != nil {
		t.Fatal(err)
	}
	nc.SetReadDeadline(time.Now().Add(ioTimeout))
	if err := c.readUpgradeResponse(); err != nil {
		t.Fatal(err)
	}
	c.expectFrame(text("early"))
	c.expectFrame(pong([]byte("p")))
	c.expectFrame(bin([]byte{1, 2}))
	c.closeHandshake()
}

func TestHandshakeTimeoutClosesSlowClients(t *testing.T) {
	e := startEngine(t, Config{HandshakeTimeout: 500 * time.Millisecond})
	t.Run("slowloris", func(t *testing.T) {
		t.Parallel()
		nc := dialTCP(t, e)
		start := time.Now()
		// A byte every 100ms, never finishing the head.
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			req := upgradeRequest("/echo")
			tick := time.NewTicker(100 * time.Millisecond)
			defer tick.Stop()
			for i := 0; i < len(req)-2; i++ {
				if _, err := nc.Write([]byte{req[i]}); err != nil {
					return
				}
				select {
				case <-tick.C:
				case <-stop:
					return
				}
			}
		}()
		expectDropped(t, nc, start, 500*time.Millisecond)
	})
	t.Run("silent", func(t *testing.T) {
		t.Parallel()
		nc := dialTCP(t, e)
		expectDropped(t, nc, time.Now(), 500*time.Millisecond)
	})
	t.Cleanup(func() {
		if got := e.Stats().HandshakeTimeout; got != 2 {
			t.Errorf("HandshakeTimeout = %d, want 2", got)
		}
	})
}

// expectDropped waits for the server to drop nc without answering, no
// sooner than after.
func expectDropped(t *testing.T, nc net.Conn, start time.Time, after time.Duration) {
	t.Helper()
	nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := nc.Read(make([]byte, 512))
	took := time.Since(start)
	if n > 0 || !isClosedErr(err) {
		t.Fatalf("got %d bytes, %v; want the connection dropped", n, err)
	}
	if took < after {
		t.Fatalf("dropped after %v, before the %v timeout", took, after)
	}
	t.Logf("dropped after %v", took)
}

func TestIdleTimeout(t *testing.T) {
	const idle = time.Second
	e := startEngine(t, Config{IdleTimeout: idle})
	t.Run("silent-client-is-pinged-then-closed-with-1001", func(t *testing.T) {
		t.Parallel()
		c := dialWS(t, e, "/echo")
		start := time.Now()
		f, err := c.readFrame()
		if err != nil || f.op != ws.OpPing {
			t.Fatalf("want a ping, got %v, %v", f, err)
		}
		if took := time.Since(start); took < idle/2-50*time.Millisecond || took > idle {
			t.Errorf("pinged after %v, want about %v", took, idle/2)
		}
		f, err = c.readFrame()
		if err != nil {
			t.Fatalf("want close 1001: %v", err)
		}
		c.checkClose(f, 1001)
		if took := time.Since(start); took < idle-50*time.Millisecond || took > 2*idle {
			t.Errorf("closed after %v, want about %v", took, idle)
		}
		c.send(closeFrame(1001, ""))
		c.expectEOF()
	})
	t.Run("client-answering-pings-stays-open", func(t *testing.T) {
		t.Parallel()
		c := dialWS(t, e, "/echo")
		pings := 0
		for end := time.Now().Add(5 * idle / 2); time.Now().Before(end); {
			f, err := c.readFrameTimeout(time.Until(end))
			if errors.Is(err, os.ErrDeadlineExceeded) {
				break
			}
			if err != nil || f.op != ws.OpPing {
				t.Fatalf("want a ping, got %v, %v", f, err)
			}
			pings++
			c.send(pong(f.payload))
		}
		if pings < 2 {
			t.Errorf("%d pings in %v, want at least 2", pings, 5*idle/2)
		}
		c.echo(ws.OpText, []byte("still here"))
		c.closeHandshake()
	})
	t.Run("busy-client-is-never-pinged", func(t *testing.T) {
		t.Parallel()
		c := dialWS(t, e, "/echo")
		for end := time.Now().Add(2 * idle); time.Now().Before(end); {
			c.echo(ws.OpText, []byte("busy")) // fails on a ping in place of the echo
			time.Sleep(idle / 5)
		}
		c.closeHandshake()
	})
}

func TestSlowConsumerIsClosedWith4008(t *testing.T) {
	const limit = 256 << 10
	e := startEngine(t, Config{MaxOutboundBytes: limit})
	// A small receive buffer so that the server's queue fills soon.
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) {
			syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 16<<10)
		})
	}}
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	nc, err := d.DialContext(ctx, "tcp", e.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	c := &wsClient{tb: t, nc: nc, br: bufio.NewReaderSize(nc, 64<<10)}
	nc.SetDeadline(time.Now().Add(ioTimeout))
	io.WriteString(nc, upgradeRequest("/raw/t"))
	if err := c.readUpgradeResponse(); err != nil {
		t.Fatal(err)
	}
	nc.SetDeadline(time.Time{})

	// Push messages without reading until the server gives up on us.
	data := binPayload(64 << 10)
	sent := int64(0)
	for e.Stats().SlowConsumers == 0 {
		if sent == 2000 {
			t.Fatalf("%d messages (%d MiB) queued and no slow consumer", sent, sent>>4)
		}
		e.Deliver(&codec.Message{Topic: "t", Kind: codec.KindBinary, Data: data})
		sent++
		want := sent
		if !waitFor(ioTimeout, func() bool {
			st := e.Stats()
			return st.MessagesOut >= want || st.SlowConsumers > 0
		}) {
			t.Fatal("delivery stalled")
		}
	}
	out := e.Stats().MessagesOut
	t.Logf("slow after %d messages, %d written", sent, out)

	// Everything queued before the close still arrives, then close 4008.
	var got int64
	for {
		f, err := c.readFrame()
		if err != nil {
			t.Fatalf("after %d messages: %v", got, err)
		}
		if f.op == ws.OpClose {
			c.checkClose(f, int(codec.CloseSlowConsumer))
			break
		}
		if f.op != ws.OpBinary || len(f.payload) != len(data) {
			t.Fatalf("message %d: %v", got, f)
		}
		got++
	}
	if got != out {
		t.Errorf("received %d messages before the close, server wrote %d", got, out)
	}
	c.send(closeFrame(4008, ""))
	c.expectEOF()
	if st := e.Stats(); st.SlowConsumers != 1 || st.Closed[4008] != 1 {
		t.Errorf("SlowConsumers %d, Closed %v", st.SlowConsumers, st.Closed)
	}
}

func TestShutdownClosesClientsWith1001(t *testing.T) {
	e := startEngine(t, Config{CloseTimeout: 300 * time.Millisecond})
	polite := dialWS(t, e, "/echo")   // answers our close
	rude := dialWS(t, e, "/raw/room") // never answers: dropped after CloseTimeout
	half := dialTCP(t, e)             // mid-handshake: dropped at once
	io.WriteString(half, "GET /echo HTTP/1.1\r\n")
	if !waitFor(ioTimeout, func() bool { return e.Stats().Conns == 3 }) {
		t.Fatalf("conns = %d, want 3", e.Stats().Conns)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- e.Shutdown(ctx) }()

	f, err := polite.readFrame()
	if err != nil {
		t.Fatal(err)
	}
	polite.checkClose(f, 1001)
	polite.send(closeFrame(1001, ""))
	polite.expectEOF()

	f, err = rude.readFrame()
	if err != nil {
		t.Fatal(err)
	}
	rude.checkClose(f, 1001)
	rude.expectEOF()

	half.SetReadDeadline(time.Now().Add(ioTimeout))
	if n, err := half.Read(make([]byte, 1)); n != 0 || !isClosedErr(err) {
		t.Errorf("half-open handshake: %d bytes, %v", n, err)
	}

	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("Shutdown did not return within its context")
	}
	t.Logf("shutdown took %v", time.Since(start))
	if n := e.Stats().Conns; n != 0 {
		t.Errorf("%d connections after shutdown", n)
	}
	if _, err := net.DialTimeout("tcp", e.Addr().String(), time.Second); err == nil {
		t.Error("still accepting connections after shutdown")
	}
}

// A burst of deliveries queued in one loop pass must arrive whole: more
// frames than writev takes at once (IOV_MAX, 1024) must not fail the
// connection.
func TestDeliverBurstArrivesWhole(t *testing.T) {
	e := startEngine(t, Config{})
	subs := []*wsClient{dialWS(t, e, "/raw/burst"), dialWS(t, e, "/raw/burst")}
	const n = 5000
	for i := range n {
		e.Deliver(&codec.Message{Topic: "burst", Kind: codec.KindText, Data: []byte(strconv.Itoa(i))})
	}
	for _, c := range subs {
		for i := range n {
			c.expectFrame(text(strconv.Itoa(i)))
		}
		c.closeHandshake()
	}
	if st := e.Stats(); len(st.Closed) != 0 || st.MessagesOut != 2*n {
		t.Errorf("stats: closed %v, messages out %d", st.Closed, st.MessagesOut)
	}
}

// gatedPublisher holds every publish until the test answers it.
type gatedPublisher struct {
	pending chan func(string, error)
}

func (p *gatedPublisher) Publish(m *codec.Message, done func(string, error)) {
	p.pending <- func(id string, err error) { done(m.ID, err) }
}

// TestShutdownAnswersPublishesBeforeClosing: a connection whose publish is
// still being queued is closed with 1001 only after its answer: closed
// first, its client would lose the ack and resend the publish elsewhere.
func TestShutdownAnswersPublishesBeforeClosing(t *testing.T) {
	pub := &gatedPublisher{pending: make(chan func(string, error), 1)}
	e := startEngine(t, Config{Publisher: pub, CloseTimeout: 300 * time.Millisecond})
	c := dialWS(t, e, "/ws")
	c.send(text(`{"op":"pub","topic":"t","data":1,"ref":"p1"}`))
	var answer func(string, error)
	select {
	case answer = <-pub.pending:
	case <-time.After(ioTimeout):
		t.Fatal("the publish did not reach the publisher")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- e.Shutdown(ctx) }()
	if f, err := c.readFrameTimeout(300 * time.Millisecond); err == nil {
		t.Fatalf("got %v while the publish was unanswered, want nothing yet", f)
	}
	answer("", nil)
	f, err := c.readFrame()
	if err != nil {
		t.Fatal(err)
	}
	if f.op != ws.OpText || !strings.Contains(string(f.payload), `"op":"ack","ref":"p1"`) {
		t.Fatalf("first frame %v %q, want the publish's ack", f.op, f.payload)
	}
	f, err = c.readFrame()
	if err != nil {
		t.Fatal(err)
	}
	c.checkClose(f, 1001)
	c.send(closeFrame(1001, ""))
	c.expectEOF()
	if err := <-done; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}
