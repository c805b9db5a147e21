package loop

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	coder "github.com/coder/websocket"
	"github.com/gorilla/websocket"

	"github.com/chatgg/chatgg/internal/testsvc"
)

// Interop: real clients against /echo. Sizes cross the 7-, 16- and 64-bit
// length encodings and the socket buffer sizes.
var interopSizes = []int{0, 1, 125, 126, 127, 65535, 65536, 1 << 20, 4 << 20}

func TestInteropGorilla(t *testing.T) {
	e := startEngine(t, Config{})
	d := websocket.Dialer{HandshakeTimeout: ioTimeout}
	c, resp, err := d.Dial("ws://"+e.Addr().String()+"/echo", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	defer c.Close()
	c.SetReadLimit(32 << 20)
	c.SetReadDeadline(time.Now().Add(2 * ioTimeout))
	for _, typ := range []int{websocket.TextMessage, websocket.BinaryMessage} {
		for _, n := range interopSizes {
			p := textPayload(n)
			if typ == websocket.BinaryMessage {
				p = binPayload(n)
			}
			if err := c.WriteMessage(typ, p); err != nil {
				t.Fatalf("write %d bytes: %v", n, err)
			}
			gotTyp, got, err := c.ReadMessage()
			if err != nil || gotTyp != typ || !bytes.Equal(got, p) {
				t.Fatalf("type %d, %d bytes: got type %d, %d bytes, %v", typ, n, gotTyp, len(got), err)
			}
		}
	}

	pongs := make(chan string, 1)
	c.SetPongHandler(func(s string) error { pongs <- s; return nil })
	if err := c.WriteControl(websocket.PingMessage, []byte("gorilla"), time.Now().Add(ioTimeout)); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteMessage(websocket.TextMessage, []byte("after ping")); err != nil {
		t.Fatal(err)
	}
	if _, got, err := c.ReadMessage(); err != nil || string(got) != "after ping" {
		t.Fatalf("got %q, %v", got, err)
	}
	select {
	case s := <-pongs:
		if s != "gorilla" {
			t.Errorf("pong %q", s)
		}
	default:
		t.Error("no pong before the echo that followed the ping")
	}

	msg := websocket.FormatCloseMessage(websocket.CloseNormalClosure, "done")
	if err := c.WriteControl(websocket.CloseMessage, msg, time.Now().Add(ioTimeout)); err != nil {
		t.Fatal(err)
	}
	_, _, err = c.ReadMessage()
	if !websocket.IsCloseError(err, websocket.CloseNormalClosure) {
		t.Fatalf("want close 1000, got %v", err)
	}
}

func TestInteropCoder(t *testing.T) {
	e := startEngine(t, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*ioTimeout)
	defer cancel()
	c, _, err := coder.Dial(ctx, "ws://"+e.Addr().String()+"/echo", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	c.SetReadLimit(32 << 20)
	for _, typ := range []coder.MessageType{coder.MessageText, coder.MessageBinary} {
		for _, n := range interopSizes {
			p := textPayload(n)
			if typ == coder.MessageBinary {
				p = binPayload(n)
			}
			if err := c.Write(ctx, typ, p); err != nil {
				t.Fatalf("write %d bytes: %v", n, err)
			}
			gotTyp, got, err := c.Read(ctx)
			if err != nil || gotTyp != typ || !bytes.Equal(got, p) {
				t.Fatalf("type %v, %d bytes: got type %v, %d bytes, %v", typ, n, gotTyp, len(got), err)
			}
		}
	}
	// Ping needs a reader running to see the pong.
	readErr := make(chan error, 1)
	rctx, rcancel := context.WithCancel(ctx)
	go func() {
		_, _, err := c.Read(rctx)
		readErr <- err
	}()
	if err := c.Ping(ctx); err != nil {
		t.Fatalf("ping: %v", err)
	}
	rcancel()
	<-readErr
	c2, _, err := coder.Dial(ctx, "ws://"+e.Addr().String()+"/echo", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c2.Write(ctx, coder.MessageText, []byte("bye")); err != nil {
		t.Fatal(err)
	}
	if _, got, err := c2.Read(ctx); err != nil || string(got) != "bye" {
		t.Fatalf("got %q, %v", got, err)
	}
	if err := c2.Close(coder.StatusNormalClosure, "done"); err != nil {
		t.Fatalf("close handshake: %v", err)
	}
}

// TestInteropNodeWS runs testdata/ws_client.js with the Node ws package
// that scripts/services.sh installs under tools/node.
func TestInteropNodeWS(t *testing.T) {
	root := repoRoot(t)
	mod := filepath.Join(root, "tools", "node", "node_modules", "ws", "package.json")
	if _, err := os.Stat(mod); err != nil {
		t.Fatalf("node ws package missing (%v): run make services", err)
	}
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("node not found (%v): run make services", err)
	}
	e := startEngine(t, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, filepath.Join("testdata", "ws_client.js"), root, "ws://"+e.Addr().String()+"/echo")
	out, err := cmd.CombinedOutput()
	t.Logf("node ws_client.js:\n%s", out)
	if err != nil {
		t.Fatalf("node client failed: %v", err)
	}
	if !strings.Contains(string(out), "close 1000") {
		t.Fatal("node client did not finish")
	}
}

// repoRoot is the module root, for paths to tools/ and cmd/.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := testsvc.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	return root
}
