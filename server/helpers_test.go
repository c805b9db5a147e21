package server

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// testServer starts a chatgg server on loopback ports with cfg's overrides
// applied to the defaults, and stops it when the test ends.
func testServer(t testing.TB, mod func(*Config)) *Server {
	t.Helper()
	cfg, err := Load(nil, func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	cfg.WSAddr = "127.0.0.1:0"
	cfg.HTTPAddr = "127.0.0.1:0"
	cfg.DataDir = t.TempDir()
	cfg.Loops = 2
	cfg.DrainPeriod = 0
	cfg.CloseWindow = 0
	if mod != nil {
		mod(&cfg)
	}
	return startServer(t, cfg)
}

func startServer(t testing.TB, cfg Config) *Server {
	t.Helper()
	level := slog.LevelWarn
	if os.Getenv("CHATGG_TEST_LOG") != "" {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	s, err := New(context.Background(), cfg, logger)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopServer(t, s) })
	return s
}

func stopServer(t testing.TB, s *Server) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Errorf("shutdown: %v", err)
	}
}

// client is a test WebSocket client.
type client struct {
	t  testing.TB
	ws *websocket.Conn
}

func dial(t testing.TB, s *Server, path string) *client {
	t.Helper()
	ws, _, err := websocket.DefaultDialer.Dial("ws://"+s.WSAddr()+path, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", path, err)
	}
	t.Cleanup(func() { ws.Close() })
	return &client{t: t, ws: ws}
}

func (c *client) send(v string) {
	c.t.Helper()
	if err := c.ws.WriteMessage(websocket.TextMessage, []byte(v)); err != nil {
		c.t.Fatalf("send: %v", err)
	}
}

func (c *client) sendBinary(b []byte) {
	c.t.Helper()
	if err := c.ws.WriteMessage(websocket.BinaryMessage, b); err != nil {
		c.t.Fatalf("send: %v", err)
	}
}

// read returns the next message within 5 s.
func (c *client) read() (int, []byte) {
	c.t.Helper()
	_ = c.ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	typ, b, err := c.ws.ReadMessage()
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	return typ, b
}

// frame is a decoded server JSON message.
type frame struct {
	Op      string          `json:"op"`
	Topic   string          `json:"topic"`
	ID      string          `json:"id"`
	TS      int64           `json:"ts"`
	Data    json.RawMessage `json:"data"`
	Enc     string          `json:"enc"`
	Ref     string          `json:"ref"`
	Code    int             `json:"code"`
	Message string          `json:"message"`
}

func (c *client) readJSON() frame {
	c.t.Helper()
	_, b := c.read()
	var f frame
	if err := json.Unmarshal(b, &f); err != nil {
		c.t.Fatalf("server sent invalid JSON %q: %v", b, err)
	}
	return f
}

// expect reads the next JSON message and checks its op (and ref, if set).
func (c *client) expect(op, ref string) frame {
	c.t.Helper()
	f := c.readJSON()
	if f.Op != op || (ref != "" && f.Ref != ref) {
		c.t.Fatalf("got %+v, want op %q ref %q", f, op, ref)
	}
	return f
}

// expectSilence checks that nothing arrives for d.
func (c *client) expectSilence(d time.Duration) {
	c.t.Helper()
	_ = c.ws.SetReadDeadline(time.Now().Add(d))
	_, b, err := c.ws.ReadMessage()
	if err == nil {
		c.t.Fatalf("unexpected message %q", b)
	}
	// A read deadline poisons a gorilla connection; callers use a fresh one after.
}

func httpDo(t testing.TB, method, url, contentType, body string, header ...string) (int, []byte, http.Header) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b, resp.Header
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
