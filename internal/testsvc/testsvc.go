// Package testsvc starts the real servers that integration tests talk to —
// redis-server, pouchdb-server (the CouchDB API, in memory) and haproxy — on
// free loopback ports, and stops them again. It is meant for _test.go files.
//
// Redis and Couch return a server shared by the whole test binary, started on
// first use; tests keep apart by naming keys and databases with UniqueName.
// NewRedis and NewCouch start a dedicated server that a fault test may stop,
// kill and restart on the same port. A package that uses any of them calls
// Main from TestMain:
//
//	func TestMain(m *testing.M) { testsvc.Main(m) }
//
// Every server is also started with a parent-death signal, so the kernel
// kills it if the test binary dies without cleaning up (a panic, -timeout);
// only its temporary directory is left behind then.
//
// The binaries come from `make services` (scripts/services.sh install). A
// missing binary fails the test with that hint rather than skipping it: these
// tests are part of make test.
//
// This package only manages processes; what the tests store in them is theirs
// to clean up.
package testsvc

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const (
	redisReadyTimeout   = 15 * time.Second
	couchReadyTimeout   = 60 * time.Second // node start-up under -race on 2 cores
	haproxyReadyTimeout = 15 * time.Second
)

// Main runs the tests, stops every process this package started (by PID,
// SIGTERM then SIGKILL), removes their directories and exits with the tests'
// code. Call it from TestMain in every package that uses testsvc.
func Main(m *testing.M) {
	os.Exit(Run(m))
}

// Run is Main without the exit: it runs the tests, stops every process this
// package started and returns the tests' code, for a TestMain that has
// cleaning up of its own to do before it calls os.Exit.
func Run(m *testing.M) int {
	code := m.Run()
	closeAll()
	return code
}

// Shared servers, one per test binary, started by the first test that asks.
// A failed start is remembered: later tests fail with the same error instead
// of paying for another attempt.
var (
	sharedRedis = sync.OnceValues(func() (*Proc, error) { return startRedis(nil) })
	sharedCouch = sync.OnceValues(func() (*Proc, error) { return startCouch(nil) })
)

// Redis returns the URL, redis://127.0.0.1:PORT/0, of a redis-server shared
// by the test binary. It runs without persistence; prefix keys with
// UniqueName.
func Redis(t testing.TB) string {
	t.Helper()
	return shared(t, sharedRedis)
}

// NewRedis starts a redis-server for this test alone, stopped and removed by
// t.Cleanup.
func NewRedis(t testing.TB) *Proc {
	t.Helper()
	p, err := startRedis(t)
	if err != nil {
		t.Fatalf("testsvc: %v", err)
	}
	return p
}

// NewRedisWith is NewRedis with extra redis-server arguments, which override
// the defaults (no persistence). With "--appendonly", "yes",
// "--appendfsync", "always" the server keeps every acknowledged write across
// Stop and Start (or Kill and Start): its append-only file stays in the
// Proc's directory until the test ends.
func NewRedisWith(t testing.TB, extraArgs ...string) *Proc {
	t.Helper()
	p, err := startRedis(t, extraArgs...)
	if err != nil {
		t.Fatalf("testsvc: %v", err)
	}
	return p
}

// Couch returns the URL, http://127.0.0.1:PORT, of a pouchdb-server
// --in-memory shared by the test binary. It speaks the CouchDB HTTP API
// including Mango (_index, _find); give databases UniqueName names.
func Couch(t testing.TB) string {
	t.Helper()
	return shared(t, sharedCouch)
}

// NewCouch starts a pouchdb-server --in-memory for this test alone, stopped
// and removed by t.Cleanup. Its data is lost on Stop or Kill.
func NewCouch(t testing.TB) *Proc {
	t.Helper()
	p, err := startCouch(t)
	if err != nil {
		t.Fatalf("testsvc: %v", err)
	}
	return p
}

// HAProxy starts `haproxy -f CFG -db` with the given configuration text,
// stopped and removed by t.Cleanup. The caller picks the ports (FreePort) and
// writes them into cfg. HAProxy waits until every `bind` port in cfg is
// listening; Port and URL report the first one.
func HAProxy(t testing.TB, cfg string) *Proc {
	t.Helper()
	path := filepath.Join(t.TempDir(), "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatalf("testsvc: %v", err)
	}
	return HAProxyFile(t, path, nil, bindPorts(cfg)...)
}

// HAProxyFile starts `haproxy -f PATH -db` on a configuration file that the
// caller does not write, such as the deployment's, with env ("NAME=value")
// added to the environment: HAProxy expands "${NAME}" in quoted strings, so
// the file takes its addresses from there. Stopped by t.Cleanup. It waits
// until every port in wait is listening (the file's bind lines name
// variables, not ports); Port and URL report the first.
func HAProxyFile(t testing.TB, path string, env []string, wait ...int) *Proc {
	t.Helper()
	bin, err := lookBinary("haproxy", "/usr/sbin/haproxy")
	if err != nil {
		t.Fatalf("testsvc: %v", err)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		t.Fatalf("testsvc: %v", err)
	}
	first := 0
	if len(wait) > 0 {
		first = wait[0]
	}
	p, err := newProc(t, "haproxy", bin, first)
	if err != nil {
		t.Fatalf("testsvc: %v", err)
	}
	p.env = append([]string{}, env...)
	p.args = func(int) []string { return []string{"-f", abs, "-db"} }
	p.url = func(port int) string { return "tcp://127.0.0.1:" + strconv.Itoa(port) }
	p.ready = func(p *Proc, deadline time.Time) error {
		return p.poll(deadline, func() error {
			for _, port := range wait {
				if !listening(port) {
					return fmt.Errorf("port %d not listening", port)
				}
			}
			return nil
		})
	}
	if err := p.startFresh(haproxyReadyTimeout, nil); err != nil {
		t.Fatalf("testsvc: %v", err)
	}
	return p
}

// ProcSpec describes a process for StartProc.
type ProcSpec struct {
	// Name is a short name for messages and the log's file name, such as
	// "chatgg-serve-1".
	Name string
	// Bin is the executable and Args its arguments.
	Bin  string
	Args []string
	// Env is added to the test binary's environment.
	Env []string
	// Port is what Port, Addr and URL (tcp://127.0.0.1:PORT) report; 0 if
	// the process has no port worth naming.
	Port int
	// Ready, when set, is polled every 50 ms after the start until it
	// returns nil; the start fails if it has not within ReadyTimeout or
	// the process exits first.
	Ready func() error
	// ReadyTimeout bounds the wait for Ready. Default 30 s.
	ReadyTimeout time.Duration
}

// StartProc starts a process of the test's own, such as the binary under
// test, with the same care as the servers above: stdout and stderr go to a
// log file (LogTail, LogPath), the kernel kills it if the test binary dies,
// and t.Cleanup stops it by PID (SIGTERM, then SIGKILL after a grace
// period). Stop, Kill, Signal and Start (same arguments) work as for the
// servers. A failed start calls t.Fatalf with the log's tail.
func StartProc(t testing.TB, spec ProcSpec) *Proc {
	t.Helper()
	if spec.ReadyTimeout <= 0 {
		spec.ReadyTimeout = 30 * time.Second
	}
	p, err := newProc(t, spec.Name, spec.Bin, spec.Port)
	if err != nil {
		t.Fatalf("testsvc: %v", err)
	}
	args := append([]string{}, spec.Args...)
	p.env = append([]string{}, spec.Env...)
	p.args = func(int) []string { return args }
	p.url = func(port int) string { return "tcp://127.0.0.1:" + strconv.Itoa(port) }
	p.ready = func(p *Proc, deadline time.Time) error {
		if spec.Ready == nil {
			return p.alive()
		}
		return p.poll(deadline, spec.Ready)
	}
	if err := p.startFresh(spec.ReadyTimeout, nil); err != nil {
		t.Fatalf("testsvc: %v", err)
	}
	return p
}

// FreePort returns a TCP port on 127.0.0.1 that nothing listens on and that
// this test binary has not handed out before. It picks from below the
// kernel's ephemeral range, so the port is not taken by some client's
// outgoing connection while a server restarts on it.
func FreePort(t testing.TB) int {
	t.Helper()
	port, err := freePort()
	if err != nil {
		t.Fatalf("testsvc: %v", err)
	}
	return port
}

// UniqueName returns a name that no other call in this or a concurrent test
// binary returns: the prefix, the test's name and a random suffix. It is
// lower case and a valid CouchDB database name (^[a-z][a-z0-9_$()+/-]*$;
// this one never contains '/'), so it also serves as a Redis key prefix.
func UniqueName(t testing.TB, prefix string) string {
	t.Helper()
	var rnd [4]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		t.Fatalf("testsvc: %v", err)
	}
	name := sanitize(prefix)
	if name == "" {
		name = "t"
	}
	if tn := sanitize(t.Name()); tn != "" {
		const maxTestName = 60 // CouchDB allows 238; keep names readable
		if len(tn) > maxTestName {
			tn = tn[:maxTestName]
		}
		name += "_" + tn
	}
	name += "_" + strconv.FormatInt(nameSeq.Add(1), 10) + "_" + hex.EncodeToString(rnd[:])
	if name[0] < 'a' || name[0] > 'z' {
		name = "t" + name
	}
	return name
}

var nameSeq atomic.Int64

// sanitize lower-cases s and replaces every character outside [a-z0-9_] with
// '_'. The wider CouchDB set ($()+-/) is left out so names work unescaped in
// URLs and Redis keys.
func sanitize(s string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(s) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '_':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	return b.String()
}

func shared(t testing.TB, get func() (*Proc, error)) string {
	t.Helper()
	p, err := get()
	if err != nil {
		t.Fatalf("testsvc: %v", err)
	}
	if err := p.alive(); err != nil {
		t.Fatalf("testsvc: shared %s on port %d died: %v\n%s", p.name, p.Port(), err, p.LogTail())
	}
	return p.URL()
}

func startRedis(t testing.TB, extraArgs ...string) (*Proc, error) {
	bin, err := lookBinary("redis-server", "/usr/bin/redis-server")
	if err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	p, err := newProc(t, "redis-server", bin, port)
	if err != nil {
		return nil, err
	}
	p.args = func(port int) []string {
		// Later arguments win, so extraArgs override the defaults.
		return append([]string{
			"--port", strconv.Itoa(port),
			"--bind", "127.0.0.1",
			"--save", "",
			"--appendonly", "no",
			"--dir", p.dir,
			"--daemonize", "no",
		}, extraArgs...)
	}
	p.url = func(port int) string { return "redis://127.0.0.1:" + strconv.Itoa(port) + "/0" }
	p.ready = func(p *Proc, deadline time.Time) error {
		return p.poll(deadline, func() error { return redisPing(p.Addr()) })
	}
	if err := p.startFresh(redisReadyTimeout, freePort); err != nil {
		p.close()
		return nil, err
	}
	return p, nil
}

// redisPing sends an inline PING and expects +PONG.
func redisPing(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.WriteString(c, "PING\r\n"); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" {
		return fmt.Errorf("PING answered %q", line)
	}
	return nil
}

func startCouch(t testing.TB) (*Proc, error) {
	root, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	bin := filepath.Join(root, "tools", "node", "node_modules", ".bin", "pouchdb-server")
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("pouchdb-server not found at %s; run `make services`", bin)
	}
	if _, err := lookBinary("node", ""); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	p, err := newProc(t, "pouchdb-server", bin, port)
	if err != nil {
		return nil, err
	}
	p.args = func(port int) []string {
		// The working directory is p.dir, where pouchdb-server writes
		// log.txt; --config and --dir keep its other files there too.
		return []string{
			"--in-memory",
			"--host", "127.0.0.1",
			"--port", strconv.Itoa(port),
			"--dir", p.dir,
			"--config", filepath.Join(p.dir, "config.json"),
			"--no-color",
		}
	}
	p.url = func(port int) string { return "http://127.0.0.1:" + strconv.Itoa(port) }
	p.ready = func(p *Proc, deadline time.Time) error {
		return p.poll(deadline, func() error { return couchWelcome(p.URL()) })
	}
	if err := p.startFresh(couchReadyTimeout, freePort); err != nil {
		p.close()
		return nil, err
	}
	return p, nil
}

// couchWelcome GETs / and expects CouchDB's welcome object.
func couchWelcome(url string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url+"/", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET /: %s", resp.Status)
	}
	var welcome struct {
		Version string `json:"version"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&welcome); err != nil {
		return fmt.Errorf("GET /: %w", err)
	}
	if welcome.Version == "" {
		return errors.New("GET /: no version in the welcome object")
	}
	return nil
}

// newProc makes a stopped Proc with its own temporary directory. With a
// non-nil t the Proc is dedicated to that test and closed by t.Cleanup.
func newProc(t testing.TB, name, bin string, port int) (*Proc, error) {
	dir, err := os.MkdirTemp("", "testsvc-"+name+"-")
	if err != nil {
		return nil, err
	}
	p := &Proc{
		t:    t,
		name: name,
		bin:  bin,
		dir:  dir,
		log:  filepath.Join(dir, name+".log"),
		port: port,
	}
	if t != nil {
		t.Cleanup(p.close)
	}
	return p, nil
}

// lookBinary finds name in PATH or, failing that, at fallback (root's PATH
// has /usr/sbin, a plain user's may not).
func lookBinary(name, fallback string) (string, error) {
	if path, err := exec.LookPath(name); err == nil {
		return path, nil
	}
	if fallback != "" {
		if _, err := os.Stat(fallback); err == nil {
			return fallback, nil
		}
	}
	return "", fmt.Errorf("%s not found in PATH; run `make services` (scripts/services.sh install)", name)
}

// RepoRoot walks up from the working directory, which go test sets to the
// package's directory, to the directory holding go.mod.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

// Ports handed out by this binary, never handed out twice: a dedicated
// server keeps its port while stopped, and nothing else may take it.
var portsGiven struct {
	sync.Mutex
	m map[int]bool
}

const (
	portLow  = 20000
	portHigh = 32000 // below Linux's default ephemeral range, 32768-60999
)

func freePort() (int, error) {
	lo, hi := portLow, portHigh
	if elo, _, ok := ephemeralRange(); ok && elo <= hi {
		hi = elo - 1
	}
	portsGiven.Lock()
	defer portsGiven.Unlock()
	if portsGiven.m == nil {
		portsGiven.m = make(map[int]bool)
	}
	for i := 0; i < 200 && hi-lo >= 1000; i++ {
		n, err := rand.Int(rand.Reader, big.NewInt(int64(hi-lo+1)))
		if err != nil {
			return 0, err
		}
		port := lo + int(n.Int64())
		if portsGiven.m[port] || !bindable(port) {
			continue
		}
		portsGiven.m[port] = true
		return port, nil
	}
	// Crowded or unusual range: let the kernel choose.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("free port: %w", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	portsGiven.m[port] = true
	return port, nil
}

func bindable(port int) bool {
	l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		return false
	}
	l.Close()
	return true
}

func ephemeralRange() (lo, hi int, ok bool) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0, 0, false
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0, 0, false
	}
	lo, err1 := strconv.Atoi(f[0])
	hi, err2 := strconv.Atoi(f[1])
	return lo, hi, err1 == nil && err2 == nil
}

// bindRE matches an HAProxy bind line's address, e.g. "bind 127.0.0.1:8080"
// or "bind :8080 ssl ...", capturing the port.
var bindRE = regexp.MustCompile(`(?m)^\s*bind\s+\S*:(\d+)\b`)

func bindPorts(cfg string) []int {
	var ports []int
	for _, m := range bindRE.FindAllStringSubmatch(cfg, -1) {
		if port, err := strconv.Atoi(m[1]); err == nil {
			ports = append(ports, port)
		}
	}
	return ports
}

// listening reports whether some socket listens on TCP port, from
// /proc/net/tcp{,6}. Connecting instead would send a stray connection
// through HAProxy to the caller's backend.
func listening(port int) bool {
	want := fmt.Sprintf(":%04X", port)
	for _, file := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(file)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(line)
			// f[1] is local address:port in hex, f[3] the state; 0A is LISTEN.
			if len(f) > 3 && f[3] == "0A" && strings.HasSuffix(f[1], want) {
				return true
			}
		}
	}
	return false
}
