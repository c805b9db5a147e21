package testsvc

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	// stopGrace is how long Stop waits after SIGTERM before it sends SIGKILL.
	stopGrace = 10 * time.Second
	// tailBytes bounds the log excerpt put into failure messages.
	tailBytes = 4 << 10
	// startAttempts is how often a fresh server retries on a new port when its
	// first one was taken between FreePort and the server's bind.
	startAttempts = 3
)

// Proc is an external server process that this package started: a dedicated
// redis-server, pouchdb-server or haproxy. It keeps its port across Stop and
// Start, so fault tests can kill a server and bring it back at the same
// address. Its output goes to a log file whose tail appears in failure
// messages.
//
// Stop, Kill and Start may be called from any goroutine but not concurrently
// with each other. Start reports failure with t.Fatalf on the test that made
// the Proc, so call it from that test's goroutine.
type Proc struct {
	t     testing.TB // owner, for Start's failures; nil for shared servers
	name  string     // binary's short name, for messages
	bin   string
	args  func(port int) []string
	ready func(p *Proc, deadline time.Time) error
	url   func(port int) string
	dir   string   // working directory, removed when the Proc is closed
	log   string   // stdout and stderr of every run, appended
	env   []string // added to the test binary's environment; nil: inherit it as is

	mu      sync.Mutex // guards the fields below
	port    int
	cmd     *exec.Cmd
	exited  chan struct{} // closed when cmd has been waited for
	waitErr error         // set before exited is closed
	closed  bool
}

// URL returns the address clients use: redis://127.0.0.1:PORT/0 for Redis,
// http://127.0.0.1:PORT for pouchdb-server, tcp://127.0.0.1:PORT (the first
// bind) for HAProxy.
func (p *Proc) URL() string { return p.url(p.Port()) }

// Port returns the TCP port the server listens on. It does not change across
// Stop and Start.
func (p *Proc) Port() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.port
}

// Addr returns "127.0.0.1:PORT".
func (p *Proc) Addr() string { return "127.0.0.1:" + strconv.Itoa(p.Port()) }

// PID returns the process id of the running server, or 0 when it is stopped.
func (p *Proc) PID() int {
	if !p.Running() {
		return 0
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd.Process.Pid
}

// Running reports whether the server process is alive.
func (p *Proc) Running() bool {
	p.mu.Lock()
	exited := p.exited
	p.mu.Unlock()
	if exited == nil {
		return false
	}
	select {
	case <-exited:
		return false
	default:
		return true
	}
}

// LogTail returns the last few KiB the server printed, across restarts.
func (p *Proc) LogTail() string { return tail(p.log, tailBytes) }

// Stop sends SIGTERM and waits for the process to exit, escalating to SIGKILL
// after a grace period. It does nothing if the server is not running.
func (p *Proc) Stop() { p.signal(syscall.SIGTERM, stopGrace) }

// Kill sends SIGKILL and waits for the process to exit, as a crash would. It
// does nothing if the server is not running.
func (p *Proc) Kill() { p.signal(syscall.SIGKILL, stopGrace) }

// Signal sends sig to the running process without waiting for anything:
// SIGSTOP and SIGCONT freeze and thaw a server, which is how a test makes a
// server that keeps its data in memory unavailable for a while. It returns
// an error if the process is not running.
func (p *Proc) Signal(sig syscall.Signal) error {
	p.mu.Lock()
	cmd, exited := p.cmd, p.exited
	p.mu.Unlock()
	if cmd == nil {
		return fmt.Errorf("%s: not started", p.name)
	}
	select {
	case <-exited:
		return fmt.Errorf("%s: not running", p.name)
	default:
	}
	return cmd.Process.Signal(sig)
}

// LogPath returns the file that holds everything the process printed,
// across restarts, for tests that show more than LogTail.
func (p *Proc) LogPath() string { return p.log }

// Start starts the server again on the same port and waits until it is
// ready. The server must be stopped; failures call t.Fatalf on the test that
// created the Proc.
func (p *Proc) Start() {
	if p.t == nil {
		panic("testsvc: Start on a shared server")
	}
	p.t.Helper()
	if p.Running() {
		p.t.Fatalf("testsvc: %s on port %d: Start while running", p.name, p.Port())
	}
	// The port was ours a moment ago, but the kernel may need a few tries to
	// hand a listening port back after a SIGKILL, so retry within the deadline.
	deadline := time.Now().Add(20 * time.Second)
	var err error
	for {
		if err = p.startOnce(deadline); err == nil || !time.Now().Before(deadline) {
			break
		}
		if !errors.Is(err, errExitedEarly) {
			break
		}
		time.Sleep(100 * time.Millisecond) // backoff between bind attempts, not a readiness wait
	}
	if err != nil {
		p.t.Fatalf("testsvc: restart %s: %v", p.name, err)
	}
}

// errExitedEarly marks a process that died before it became ready, usually
// because its port was taken.
var errExitedEarly = errors.New("exited before it was ready")

// startFresh starts p for the first time. For servers whose port this package
// picked (freshPort), a failed start moves to a new free port and retries,
// since another process may have bound the port after FreePort released it.
func (p *Proc) startFresh(timeout time.Duration, freshPort func() (int, error)) error {
	var err error
	for attempt := 0; attempt < startAttempts; attempt++ {
		if attempt > 0 {
			if freshPort == nil || !errors.Is(err, errExitedEarly) {
				break
			}
			port, perr := freshPort()
			if perr != nil {
				return perr
			}
			p.mu.Lock()
			p.port = port
			p.mu.Unlock()
		}
		if err = p.startOnce(time.Now().Add(timeout)); err == nil {
			return nil
		}
	}
	return err
}

// startOnce launches the process and waits until ready reports success, the
// process exits, or the deadline passes. On failure the process is killed.
func (p *Proc) startOnce(deadline time.Time) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return fmt.Errorf("%s: already cleaned up", p.name)
	}
	port := p.port
	p.mu.Unlock()

	logf, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	args := p.args(port)
	fmt.Fprintf(logf, "=== testsvc %s: %s %q\n", time.Now().Format(time.RFC3339Nano), p.bin, args)
	cmd := exec.Command(p.bin, args...)
	cmd.Dir = p.dir
	if p.env != nil {
		cmd.Env = append(os.Environ(), p.env...)
	}
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// If the test binary dies without running Main's cleanup (a
		// panic, a -timeout, a SIGKILL), the kernel kills the server
		// too. The signal is tied to the thread that forked, which is
		// why spawn forks from a thread that never exits.
		Pdeathsig: syscall.SIGKILL,
	}
	err = spawn(cmd)
	logf.Close() // the child holds its own descriptor
	if err != nil {
		return fmt.Errorf("start %s: %w", p.bin, err)
	}
	exited := make(chan struct{})
	p.mu.Lock()
	p.cmd = cmd
	p.exited = exited
	p.waitErr = nil
	p.mu.Unlock()
	register(p)
	go func() {
		err := cmd.Wait()
		p.mu.Lock()
		p.waitErr = err
		p.mu.Unlock()
		close(exited)
	}()

	if err := p.ready(p, deadline); err != nil {
		p.Kill()
		return fmt.Errorf("%s on port %d: %w\n%s", p.name, port, err, p.LogTail())
	}
	return nil
}

// alive returns errExitedEarly (with the exit status) if the process has
// exited. Readiness probes call it between attempts.
func (p *Proc) alive() error {
	p.mu.Lock()
	exited := p.exited
	p.mu.Unlock()
	select {
	case <-exited:
		p.mu.Lock()
		werr := p.waitErr
		p.mu.Unlock()
		return fmt.Errorf("%w (%v)", errExitedEarly, werr)
	default:
		return nil
	}
}

// poll calls probe every 50ms until it succeeds, the process exits or the
// deadline passes.
func (p *Proc) poll(deadline time.Time, probe func() error) error {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		err := probe()
		if err == nil {
			return nil
		}
		if aerr := p.alive(); aerr != nil {
			return aerr
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready before the deadline: %w", err)
		}
		<-tick.C
	}
}

func (p *Proc) signal(sig syscall.Signal, grace time.Duration) {
	p.mu.Lock()
	cmd, exited := p.cmd, p.exited
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	select {
	case <-exited:
		return
	default:
	}
	// By PID, never by name: other tests' servers share the binary.
	_ = cmd.Process.Signal(sig)
	if sig != syscall.SIGKILL {
		// A process frozen with SIGSTOP (see Signal) would sit on the
		// signal until the grace period ran out.
		_ = cmd.Process.Signal(syscall.SIGCONT)
	}
	select {
	case <-exited:
		return
	case <-time.After(grace):
	}
	_ = cmd.Process.Kill()
	<-exited
}

// close stops the process and removes its directory. The Proc cannot be
// started again.
func (p *Proc) close() {
	p.Stop()
	p.mu.Lock()
	already := p.closed
	p.closed = true
	p.mu.Unlock()
	if !already {
		os.RemoveAll(p.dir)
	}
	unregister(p)
}

// tail returns the last n bytes of the file, starting at a line boundary.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	if len(b) > n {
		b = b[len(b)-n:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	return fmt.Sprintf("--- last output of %s ---\n%s--- end ---", path, b)
}

// The registry holds every Proc that has been started and not closed, so
// Main can stop them all when the tests finish. Package-level because the
// shared servers outlive any single test.
var registry struct {
	sync.Mutex
	procs map[*Proc]struct{}
}

func register(p *Proc) {
	registry.Lock()
	defer registry.Unlock()
	if registry.procs == nil {
		registry.procs = make(map[*Proc]struct{})
	}
	registry.procs[p] = struct{}{}
}

func unregister(p *Proc) {
	registry.Lock()
	defer registry.Unlock()
	delete(registry.procs, p)
}

// closeAll stops every registered process in parallel and removes their
// directories.
func closeAll() {
	registry.Lock()
	procs := make([]*Proc, 0, len(registry.procs))
	for p := range registry.procs {
		procs = append(procs, p)
	}
	registry.Unlock()
	var wg sync.WaitGroup
	for _, p := range procs {
		wg.Go(p.close)
	}
	wg.Wait()
}

// spawnReq asks the spawner thread to start a command.
type spawnReq struct {
	cmd  *exec.Cmd
	done chan error
}

var (
	spawnOnce sync.Once
	spawnCh   chan spawnReq
)

// spawn starts cmd from one OS thread that lives as long as the test binary.
// Pdeathsig fires when the forking thread exits, not the process, and the Go
// runtime may retire threads; a dedicated locked thread makes the signal
// mean "the test binary died".
func spawn(cmd *exec.Cmd) error {
	spawnOnce.Do(func() {
		spawnCh = make(chan spawnReq)
		started := make(chan struct{})
		go func() {
			// Never unlocked: the goroutine never returns, so the
			// thread is never handed back or destroyed.
			runtime.LockOSThread()
			close(started)
			for r := range spawnCh {
				r.done <- r.cmd.Start()
			}
		}()
		<-started
	})
	r := spawnReq{cmd: cmd, done: make(chan error, 1)}
	spawnCh <- r
	return <-r.done
}
