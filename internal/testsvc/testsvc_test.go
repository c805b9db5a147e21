package testsvc

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestMain(m *testing.M) { Main(m) }

func redisAddr(t *testing.T, raw string) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	if u.Scheme != "redis" || u.Path != "/0" {
		t.Fatalf("Redis URL %q: want redis://host:port/0", raw)
	}
	return u.Host
}

func TestRedisAnswersRawPing(t *testing.T) {
	addr := redisAddr(t, Redis(t))
	if err := redisPing(addr); err != nil {
		t.Fatalf("PING %s: %v", addr, err)
	}
}

func TestRedisIsSharedWithinBinary(t *testing.T) {
	if a, b := Redis(t), Redis(t); a != b {
		t.Fatalf("Redis returned %q then %q; want one shared server", a, b)
	}
}

func TestNewRedisRestartsOnSamePort(t *testing.T) {
	p := NewRedis(t)
	url, pid := p.URL(), p.PID()
	if err := redisPing(p.Addr()); err != nil {
		t.Fatalf("PING: %v", err)
	}

	p.Stop()
	if p.Running() || p.PID() != 0 || redisPing(p.Addr()) == nil {
		t.Fatalf("server still running after Stop")
	}
	p.Start()
	if p.URL() != url {
		t.Fatalf("URL after Start = %q, want %q", p.URL(), url)
	}
	if p.PID() == pid {
		t.Fatalf("PID unchanged after Stop/Start")
	}
	if err := redisPing(p.Addr()); err != nil {
		t.Fatalf("PING after Start: %v", err)
	}

	p.Kill()
	if err := redisPing(p.Addr()); err == nil {
		t.Fatalf("server answers after Kill")
	}
	p.Start()
	if p.URL() != url {
		t.Fatalf("URL after Kill/Start = %q, want %q", p.URL(), url)
	}
	if err := redisPing(p.Addr()); err != nil {
		t.Fatalf("PING after Kill/Start: %v", err)
	}
}

// couchDo sends a JSON request and decodes the JSON answer into out.
func couchDo(t *testing.T, method, url string, body any, out any) {
	t.Helper()
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, url, r)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode >= 300 {
		t.Fatalf("%s %s: %s: %s", method, url, resp.Status, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %v in %s", method, url, err, b)
		}
	}
}

func TestCouchWelcomesWithJSON(t *testing.T) {
	var welcome map[string]any
	couchDo(t, http.MethodGet, Couch(t)+"/", nil, &welcome)
	if welcome["version"] == nil {
		t.Fatalf("GET / = %v, want a version", welcome)
	}
}

// TestCouchSupportsBulkDocsAndAllDocsRanges checks what storage's CouchDB
// backend relies on: _bulk_docs, and _all_docs sorted by raw _id (not by
// CouchDB's ICU collation, where "a-b" and "ab" interleave) between a
// startkey and an endkey, with include_docs.
func TestCouchSupportsBulkDocsAndAllDocsRanges(t *testing.T) {
	db := Couch(t) + "/" + UniqueName(t, "msgs")
	couchDo(t, http.MethodPut, db, nil, nil)
	t.Cleanup(func() {
		req, _ := http.NewRequest(http.MethodDelete, db, nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	})

	ids := []string{"m!a!2", "m!ab!1", "m!a-b!1", "m!a!0", "m!A!1", "m!a!1", "m!a.b!0"}
	var docs []map[string]any
	for _, id := range ids {
		docs = append(docs, map[string]any{"_id": id, "n": id})
	}
	var saved []struct {
		OK bool   `json:"ok"`
		ID string `json:"id"`
	}
	couchDo(t, http.MethodPost, db+"/_bulk_docs", map[string]any{"docs": docs}, &saved)
	if len(saved) != len(docs) {
		t.Fatalf("_bulk_docs saved %d docs, want %d", len(saved), len(docs))
	}
	for _, s := range saved {
		if !s.OK {
			t.Fatalf("_bulk_docs: %+v", saved)
		}
	}

	var all struct {
		Rows []struct {
			ID  string `json:"id"`
			Doc struct {
				N string `json:"n"`
			} `json:"doc"`
		} `json:"rows"`
	}
	q := url.Values{"include_docs": {"true"}, "startkey": {`"m!a!1"`}, "endkey": {`"m!a!~"`}}
	couchDo(t, http.MethodGet, db+"/_all_docs?"+q.Encode(), nil, &all)
	var got []string
	for _, r := range all.Rows {
		if r.Doc.N != r.ID {
			t.Errorf("row %s: doc %q, want its body", r.ID, r.Doc.N)
		}
		got = append(got, r.ID)
	}
	if fmt.Sprint(got) != "[m!a!1 m!a!2]" {
		t.Fatalf("_all_docs range = %v, want [m!a!1 m!a!2]", got)
	}
}

func TestNewCouchRestartsOnSamePort(t *testing.T) {
	p := NewCouch(t)
	url := p.URL()
	db := url + "/" + UniqueName(t, "restart")
	couchDo(t, http.MethodPut, db, nil, nil)

	p.Kill()
	if err := couchWelcome(url); err == nil {
		t.Fatalf("server answers after Kill")
	}
	p.Start()
	if p.URL() != url {
		t.Fatalf("URL after Start = %q, want %q", p.URL(), url)
	}
	if err := couchWelcome(url); err != nil {
		t.Fatalf("GET / after Start: %v", err)
	}
	// In memory: the database did not survive, so it can be made again.
	couchDo(t, http.MethodPut, db, nil, nil)

	p.Stop()
	if p.Running() {
		t.Fatalf("Running after Stop")
	}
}

func TestHAProxyForwardsTCP(t *testing.T) {
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { echo.Close() })
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()

	front := FreePort(t)
	p := HAProxy(t, fmt.Sprintf(`
global
    maxconn 100

defaults
    mode tcp
    timeout connect 2s
    timeout client 10s
    timeout server 10s

frontend front
    bind 127.0.0.1:%d
    default_backend echo

backend echo
    server s1 %s
`, front, echo.Addr()))
	if p.Port() != front || p.URL() != fmt.Sprintf("tcp://127.0.0.1:%d", front) {
		t.Fatalf("Port %d URL %q, want the bind port %d", p.Port(), p.URL(), front)
	}

	c, err := net.DialTimeout("tcp", p.Addr(), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	msg := "hello through haproxy\n"
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read echo: %v\n%s", err, p.LogTail())
	}
	if string(got) != msg {
		t.Fatalf("echo = %q, want %q", got, msg)
	}
}

func TestHAProxyBadConfigFailsWithLog(t *testing.T) {
	// Run the failing start in a throwaway TB so the failure is inspected,
	// not reported.
	ft := &fatalTB{TB: t}
	cfg := fmt.Sprintf("frontend f\n    bind 127.0.0.1:%d\n    this-is-not-a-keyword\n", FreePort(t))
	done := make(chan struct{})
	go func() {
		defer close(done)
		HAProxy(ft, cfg)
	}()
	<-done
	ft.runCleanups()
	if !strings.Contains(ft.msg, "haproxy") || !strings.Contains(ft.msg, "last output") {
		t.Fatalf("failure message lacks the log tail:\n%s", ft.msg)
	}
}

func TestUniqueNameIsValidCouchDBName(t *testing.T) {
	valid := regexp.MustCompile(`^[a-z][a-z0-9_$()+/-]*$`)
	seen := map[string]bool{}
	for _, prefix := range []string{"", "msgs", "Room-1", "9lives", "_x", "a/b c", "ÜBER"} {
		for range 3 {
			name := UniqueName(t, prefix)
			if !valid.MatchString(name) || len(name) > 238 {
				t.Errorf("UniqueName(%q) = %q, not a valid CouchDB name", prefix, name)
			}
			if seen[name] {
				t.Errorf("UniqueName(%q) = %q twice", prefix, name)
			}
			seen[name] = true
		}
	}
}

func TestFreePortIsBindableAndNotRepeated(t *testing.T) {
	seen := map[int]bool{}
	for range 20 {
		port := FreePort(t)
		if seen[port] {
			t.Fatalf("FreePort returned %d twice", port)
		}
		seen[port] = true
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			t.Fatalf("FreePort %d not bindable: %v", port, err)
		}
		l.Close()
	}
}

func TestMissingBinaryNamesMakeServices(t *testing.T) {
	_, err := lookBinary("testsvc-no-such-binary", "/nonexistent/testsvc")
	if err == nil || !strings.Contains(err.Error(), "make services") {
		t.Fatalf("lookBinary error = %v, want a hint to run make services", err)
	}
}

func TestBindPorts(t *testing.T) {
	cfg := "frontend a\n  bind 127.0.0.1:1234\n  bind :5678 ssl crt x\n  # bind 127.0.0.1:9\nbackend b\n  server s 127.0.0.1:42\n"
	if got := fmt.Sprint(bindPorts(cfg)); got != "[1234 5678]" {
		t.Fatalf("bindPorts = %s, want [1234 5678]", got)
	}
}

// fatalTB records Fatalf instead of failing the real test, and collects
// cleanups so the test can run them itself.
type fatalTB struct {
	testing.TB
	msg      string
	cleanups []func()
}

func (f *fatalTB) Helper() {}

func (f *fatalTB) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func (f *fatalTB) Cleanup(fn func()) { f.cleanups = append(f.cleanups, fn) }

func (f *fatalTB) runCleanups() {
	for i := len(f.cleanups) - 1; i >= 0; i-- {
		f.cleanups[i]()
	}
}

// redisCmd sends one inline command and returns the first line of the reply.
func redisCmd(t *testing.T, addr, cmd string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, cmd+"\r\n"); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
	return strings.TrimRight(line, "\r\n")
}

func TestNewRedisWithAppendOnlyKeepsWritesAcrossRestart(t *testing.T) {
	p := NewRedisWith(t, "--appendonly", "yes", "--appendfsync", "always")
	if got := redisCmd(t, p.Addr(), "CONFIG GET appendonly"); got != "*2" {
		t.Fatalf("CONFIG GET appendonly: %q", got)
	}
	if got := redisCmd(t, p.Addr(), "RPUSH kept a"); got != ":1" {
		t.Fatalf("RPUSH: %q", got)
	}
	p.Stop()
	p.Start()
	if got := redisCmd(t, p.Addr(), "LLEN kept"); got != ":1" {
		t.Fatalf("LLEN after Stop and Start = %q, want :1", got)
	}
	p.Kill()
	p.Start()
	if got := redisCmd(t, p.Addr(), "LLEN kept"); got != ":1" {
		t.Fatalf("LLEN after Kill and Start = %q, want :1", got)
	}
}

func TestHAProxyFileTakesAddressesFromEnv(t *testing.T) {
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { echo.Close() })
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	cfg := filepath.Join(t.TempDir(), "haproxy.cfg")
	text := "defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 10s\n    timeout server 10s\n" +
		"frontend front\n    bind \"${FRONT}\"\n    default_backend echo\n" +
		"backend echo\n    server s1 \"${BACK}\"\n"
	if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	front := FreePort(t)
	p := HAProxyFile(t, cfg, []string{fmt.Sprintf("FRONT=127.0.0.1:%d", front), "BACK=" + echo.Addr().String()}, front)
	if p.Port() != front {
		t.Fatalf("Port %d, want %d", p.Port(), front)
	}
	c, err := net.DialTimeout("tcp", p.Addr(), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	msg := "through ${FRONT}\n"
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != msg {
		t.Fatalf("echo = %q, %v; want %q\n%s", got, err, msg, p.LogTail())
	}
}

// procState returns the state letter of a process from /proc (R, S, T, ...).
func procState(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// pid (comm) state ...; comm may hold spaces, so cut after the last ')'.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	return f[0]
}

func TestStartProcFreezesAndStopsFrozen(t *testing.T) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep binary")
	}
	p := StartProc(t, ProcSpec{Name: "sleep", Bin: sleep, Args: []string{"600"}})
	pid := p.PID()
	if !p.Running() || pid == 0 {
		t.Fatalf("not running after StartProc")
	}
	if err := p.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for procState(t, pid) != "T" {
		if time.Now().After(deadline) {
			t.Fatalf("state %s after SIGSTOP, want T", procState(t, pid))
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Stop thaws a frozen process, so SIGTERM acts at once rather than
	// after the grace period's SIGKILL.
	start := time.Now()
	p.Stop()
	if p.Running() {
		t.Fatal("running after Stop")
	}
	if d := time.Since(start); d >= stopGrace {
		t.Fatalf("Stop of a frozen process took %v", d)
	}
	if err := p.Signal(syscall.SIGCONT); err == nil {
		t.Fatal("Signal on a stopped process succeeded")
	}
	if !strings.Contains(p.LogTail(), "sleep") {
		t.Fatalf("log lacks the command line:\n%s", p.LogTail())
	}
}
