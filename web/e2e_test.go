package web

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chatgg/chatgg/internal/testsvc"
)

func TestMain(m *testing.M) { testsvc.Main(m) }

// What the browser test needs from `make services`.
const (
	chromiumPath   = "/usr/bin/chromium"
	playwrightPath = "tools/node/node_modules/playwright-core"
	specPath       = "web/e2e/chat.spec.mjs"
	artifactsDir   = "artifacts/web"
	// browserBudget bounds the Node script; the whole test stays under a
	// minute on a warm build cache.
	browserBudget = 50 * time.Second
)

// TestChatPageInBrowser runs web/e2e/chat.spec.mjs in headless Chromium
// against a real chatgg: two pages chat both ways, a reload shows the
// history, a page whose connection the server side drops catches up without
// losing or doubling a message, and a full server restart (same ports, same
// data directory) loses nothing written meanwhile. The script drives the
// faults through a small control endpoint served here; screenshots go to
// artifacts/web.
//
// Page B reaches the WebSocket port through dropProxy, so the test can cut
// B's connection while the server and page A carry on: the messages sent
// meanwhile reach B only through the history catch-up.
func TestChatPageInBrowser(t *testing.T) {
	root := repoRoot(t)
	node := needBrowserTools(t, root)
	bin := buildChatgg(t, root)

	wsPort, httpPort := testsvc.FreePort(t), testsvc.FreePort(t)
	httpAddr := "127.0.0.1:" + strconv.Itoa(httpPort)
	dataDir := t.TempDir()
	srv := testsvc.StartProc(t, testsvc.ProcSpec{
		Name: "chatgg",
		Bin:  bin,
		Args: []string{
			"--ws-addr", "127.0.0.1:" + strconv.Itoa(wsPort),
			"--http-addr", httpAddr,
			"--data-dir", dataDir,
			"--shutdown-timeout", "5s",
		},
		// No drain period on SIGTERM: no balancer here to move clients
		// away, and the restart step should not wait for one. An
		// environment variable, not a flag, so a server without the
		// setting ignores it.
		Env:          []string{"GORACE=halt_on_error=0", "CHATGG_DRAIN_PERIOD=0s"},
		Port:         httpPort,
		Ready:        func() error { return ready("http://" + httpAddr) },
		ReadyTimeout: 30 * time.Second,
	})
	t.Cleanup(func() { checkServerLog(t, srv) })

	proxy := newDropProxy(t, "127.0.0.1:"+strconv.Itoa(wsPort))
	ctrl := newControl(t, proxy)

	artifacts := filepath.Join(root, artifactsDir)
	if err := os.MkdirAll(artifacts, 0o755); err != nil {
		t.Fatal(err)
	}
	// Screenshots of an earlier run would pass for this one's.
	old, _ := filepath.Glob(filepath.Join(artifacts, "*.png"))
	for _, f := range old {
		os.Remove(f)
	}

	ctx, cancel := context.WithTimeout(context.Background(), browserBudget)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, filepath.Join(root, specPath))
	cmd.Dir = root
	cmd.Env = append(os.Environ(),
		"CHATGG_HTTP=http://"+httpAddr,
		"CHATGG_WS_PORT="+strconv.Itoa(wsPort),
		"CHATGG_PROXY_PORT="+strconv.Itoa(proxy.port()),
		"CHATGG_CTRL="+ctrl.url,
		"CHATGG_ROOM="+testsvc.UniqueName(t, "room"),
		"CHATGG_ARTIFACTS="+artifacts,
		"PLAYWRIGHT_CORE="+filepath.Join(root, playwrightPath),
		"CHROMIUM="+chromiumPath,
	)
	// Its own process group, so a timeout takes Chromium down with Node.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var out syncBuffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start node: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()

	// The server is stopped and started from this goroutine: Proc.Start
	// reports failure with t.Fatalf, which only the test goroutine may call.
	var err error
loop:
	for {
		select {
		case err = <-done:
			break loop
		case req := <-ctrl.server:
			switch req.action {
			case "stop":
				srv.Stop()
			case "start":
				srv.Start()
			}
			close(req.done)
		}
	}
	t.Logf("browser script output:\n%s", out.String())
	if ctx.Err() != nil {
		t.Fatalf("browser script did not finish within %v", browserBudget)
	}
	if err != nil {
		t.Fatalf("browser script failed: %v (screenshots in %s)", err, artifacts)
	}
}

// needBrowserTools fails, naming the fix, when Chromium, Node or
// playwright-core is missing, and returns Node's path. Not a skip: the
// browser test is part of make test, which installs them.
func needBrowserTools(t *testing.T, root string) string {
	t.Helper()
	const fix = "run `make services` (scripts/services.sh install and install-browser)"
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Fatalf("chromium not found at %s: %s", chromiumPath, fix)
	}
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("node not found in PATH: %s", fix)
	}
	if _, err := os.Stat(filepath.Join(root, playwrightPath, "package.json")); err != nil {
		t.Fatalf("playwright-core not found in %s: %s", playwrightPath, fix)
	}
	return node
}

// buildChatgg builds cmd/chatgg into a temporary directory. Under -race the
// server is race-built too, so a data race the browser provokes fails the
// test (checkServerLog); it also reuses the packages go test just compiled.
func buildChatgg(t *testing.T, root string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "chatgg")
	args := []string{"build", "-o", bin}
	if raceEnabled {
		args = append(args, "-race")
	}
	args = append(args, "./cmd/chatgg")
	cmd := exec.Command("go", args...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return bin
}

func ready(base string) error {
	resp, err := http.Get(base + "/readyz")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET /readyz: %d %s", resp.StatusCode, b)
	}
	return nil
}

// checkServerLog stops the server, fails on a data race report in its log
// and shows the log's tail when the test failed.
func checkServerLog(t *testing.T, p *testsvc.Proc) {
	p.Stop()
	b, err := os.ReadFile(p.LogPath())
	if err != nil {
		t.Errorf("read %s: %v", p.LogPath(), err)
		return
	}
	if i := bytes.Index(b, []byte("WARNING: DATA RACE")); i >= 0 {
		t.Errorf("data race in chatgg:\n%s", b[i:min(len(b), i+8<<10)])
	}
	if t.Failed() {
		t.Logf("%s", p.LogTail())
	}
}

// dropProxy forwards TCP connections to the WebSocket port and can drop
// them: down closes every connection it carries (the page sees the server
// hang up) and refuses new ones until up.
type dropProxy struct {
	ln       net.Listener
	upstream string

	mu    sync.Mutex // guards the fields below
	down  bool
	conns map[net.Conn]struct{}
}

func newDropProxy(t *testing.T, upstream string) *dropProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &dropProxy{ln: ln, upstream: upstream, conns: make(map[net.Conn]struct{})}
	var wg sync.WaitGroup
	wg.Go(p.accept)
	t.Cleanup(func() {
		ln.Close()
		p.setDown(true)
		wg.Wait()
	})
	return p
}

func (p *dropProxy) port() int { return p.ln.Addr().(*net.TCPAddr).Port }

func (p *dropProxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return // closed by cleanup
		}
		p.mu.Lock()
		down := p.down
		p.mu.Unlock()
		if down {
			c.Close()
			continue
		}
		go p.forward(c)
	}
}

func (p *dropProxy) forward(c net.Conn) {
	u, err := net.DialTimeout("tcp", p.upstream, 5*time.Second)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	if p.down {
		p.mu.Unlock()
		c.Close()
		u.Close()
		return
	}
	p.conns[c], p.conns[u] = struct{}{}, struct{}{}
	p.mu.Unlock()
	var wg sync.WaitGroup
	pipe := func(dst, src net.Conn) {
		defer wg.Done()
		_, _ = io.Copy(dst, src)
		// One side ended: end both, as a dropped connection would.
		dst.Close()
		src.Close()
	}
	wg.Add(2)
	go pipe(u, c)
	go pipe(c, u)
	wg.Wait()
	p.mu.Lock()
	delete(p.conns, c)
	delete(p.conns, u)
	p.mu.Unlock()
}

// setDown drops every carried connection and refuses new ones (true), or
// accepts again (false).
func (p *dropProxy) setDown(down bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = down
	if down {
		for c := range p.conns {
			c.Close()
		}
	}
}

// control is the HTTP endpoint the browser script drives the faults with:
// POST /proxy/down, /proxy/up, /server/stop, /server/start.
type control struct {
	url    string
	server chan serverReq // to the test goroutine
}

type serverReq struct {
	action string // stop or start
	done   chan struct{}
}

func newControl(t *testing.T, proxy *dropProxy) *control {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &control{url: "http://" + ln.Addr().String(), server: make(chan serverReq)}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /proxy/{action}", func(w http.ResponseWriter, r *http.Request) {
		switch r.PathValue("action") {
		case "down":
			proxy.setDown(true)
		case "up":
			proxy.setDown(false)
		default:
			http.NotFound(w, r)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /server/{action}", func(w http.ResponseWriter, r *http.Request) {
		a := r.PathValue("action")
		if a != "stop" && a != "start" {
			http.NotFound(w, r)
			return
		}
		req := serverReq{action: a, done: make(chan struct{})}
		select {
		case c.server <- req:
		case <-r.Context().Done():
			return
		}
		select {
		case <-req.done:
			w.WriteHeader(http.StatusNoContent)
		case <-r.Context().Done():
		}
	})
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("control server: %v", err)
		}
	}()
	t.Cleanup(func() { hs.Close() })
	return c
}

// syncBuffer is a bytes.Buffer safe for the two copy goroutines of
// exec.Cmd (stdout and stderr) and a reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
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
