package loop

import (
	"bufio"
	"io"
	"net/netip"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/chatgg/chatgg/codec"
)

func TestProxyProtocolOnTheWebSocketPort(t *testing.T) {
	e := startEngine(t, Config{ProxyProtocol: true})
	src, dst := netip.MustParseAddrPort("203.0.113.5:5555"), netip.MustParseAddrPort("10.1.1.1:9001")
	for name, hdr := range map[string][]byte{
		"v1":                      codec.AppendProxyV1(nil, src, dst),
		"v2":                      codec.AppendProxyV2(nil, src, dst),
		"v1 one byte at a time":   codec.AppendProxyV1(nil, src, dst),
		"v2 with upgrade at once": codec.AppendProxyV2(nil, src, dst),
	} {
		t.Run(name, func(t *testing.T) {
			nc := dialTCP(t, e)
			c := &wsClient{tb: t, nc: nc, br: bufio.NewReader(nc)}
			chop := 0
			if name == "v1 one byte at a time" {
				chop = 1
			}
			if err := c.writeRaw(append(hdr, upgradeRequest("/echo")...), chop); err != nil {
				t.Fatal(err)
			}
			nc.SetReadDeadline(time.Now().Add(ioTimeout))
			if err := c.readUpgradeResponse(); err != nil {
				t.Fatal(err)
			}
			c.echo(ws.OpText, []byte("through the balancer"))
			c.closeHandshake()
		})
	}
	t.Run("missing header is dropped", func(t *testing.T) {
		nc := dialTCP(t, e)
		_, _ = io.WriteString(nc, upgradeRequest("/echo"))
		nc.SetReadDeadline(time.Now().Add(ioTimeout))
		if b, err := io.ReadAll(nc); len(b) != 0 || err != nil {
			t.Fatalf("a connection without a PROXY header got %q, %v; want it dropped", b, err)
		}
	})
}

func TestShutdownSpreadsClosesOverTheWindow(t *testing.T) {
	const n, window = 20, time.Second
	e := New(Config{Addr: "127.0.0.1:0", CloseWindow: window})
	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	clients := make([]*wsClient, n)
	for i := range clients {
		clients[i] = dialWS(t, e, "/echo")
	}
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- e.Shutdown(t.Context()) }()
	arrived := make(chan time.Duration, n)
	for i, c := range clients {
		go func() {
			c.nc.SetReadDeadline(time.Now().Add(ioTimeout))
			f, err := c.readFrame()
			if err != nil || f.op != ws.OpClose || closeCode(f.payload) != 1001 {
				t.Errorf("client %d: %v %v", i, f, err)
				arrived <- 0
				return
			}
			arrived <- time.Since(start)
			c.send(closeFrame(1001, "")) // answer the server's close
		}()
	}
	first, last := time.Hour, time.Duration(0)
	for range clients {
		at := <-arrived
		first, last = min(first, at), max(last, at)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if last-first < window/2 {
		t.Fatalf("closes spread over %v, want about %v", last-first, window)
	}
}
