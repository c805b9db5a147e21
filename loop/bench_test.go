package loop

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/chatgg/chatgg/codec"
)

// BenchmarkEcho measures one round trip over loopback: a raw client writes a
// masked frame and reads the echo. Client and server share the process, so
// allocs/op counts both (the client allocates nothing).
func BenchmarkEcho(b *testing.B) {
	e := startEngine(b, Config{})
	for _, n := range []int{64, 4 << 10} {
		c := dialWS(b, e, "/echo")
		req := appendClientFrame(nil, frame{fin: true, op: ws.OpBinary, payload: binPayload(n)}, maskFor(1))
		resp := make([]byte, codec.FrameSize(n))
		b.Run(sizeName(n), func(b *testing.B) {
			b.SetBytes(int64(n))
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				if _, err := c.nc.Write(req); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c.br, resp); err != nil {
					b.Fatal(err)
				}
			}
		})
		c.tb = b
		c.closeHandshake()
	}
}

func sizeName(n int) string {
	if n >= 1<<10 {
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return fmt.Sprintf("%dB", n)
}

// BenchmarkDeliver fans one topic's messages out to raw subscribers. The
// subscribers live in a child process (see TestHelperClients), which keeps
// 10k client sockets out of this process's file limit and its allocations
// out of allocs/op: what is left is the engine's cost per message, which
// must not grow with the number of subscribers.
func BenchmarkDeliver(b *testing.B) {
	const size = 64
	for _, subs := range []int{1, 100, 10000} {
		// Set up here, not in b.Run's function: that runs once per b.N tried.
		e := New(Config{Addr: "127.0.0.1:0"})
		if err := e.Start(); err != nil {
			b.Fatal(err)
		}
		cl := startClients(b, e.Addr().String(), "/raw/bench", subs)
		if !waitFor(ioTimeout, func() bool { return e.Topics()["bench"] == subs }) {
			b.Fatalf("%d subscribers, want %d", e.Topics()["bench"], subs)
		}
		m := &codec.Message{Topic: "bench", Kind: codec.KindBinary, Data: binPayload(size)}
		var total int64 // bytes the clients must have received
		b.Run(fmt.Sprintf("subs=%d", subs), func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				e.Deliver(m)
			}
			total += int64(b.N) * int64(subs) * int64(codec.FrameSize(size))
			cl.wait(b, total)
		})
		cl.stop()
		if st := e.Stats(); st.SlowConsumers != 0 || len(st.Closed) != 0 {
			b.Errorf("subs=%d: slow consumers %d, closed %v", subs, st.SlowConsumers, st.Closed)
		}
		shutdown(b, e)
	}
}

// TestIdleConnectionBytes measures the server's heap per idle upgraded
// connection. The clients live in a child process, so the heap delta is the
// server's alone.
func TestIdleConnectionBytes(t *testing.T) {
	const n = 2000
	e := startEngine(t, Config{})
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	cl := startClients(t, e.Addr().String(), "/echo", n)
	if !waitFor(ioTimeout, func() bool { return e.Stats().Upgraded == n }) {
		t.Fatalf("%d upgraded, want %d", e.Stats().Upgraded, n)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	per := (int64(after.HeapInuse) - int64(before.HeapInuse)) / n
	t.Logf("%d idle connections: %d bytes of heap each (HeapInuse %d -> %d)", n, per, before.HeapInuse, after.HeapInuse)
	if per > 4<<10 {
		t.Errorf("%d bytes per idle connection, want < 4 KiB", per)
	}
	cl.stop()
}

func shutdown(tb testing.TB, e *Engine) {
	tb.Helper()
	ctx, cancel := contextWithTimeout(10 * time.Second)
	defer cancel()
	if err := e.Shutdown(ctx); err != nil {
		tb.Error(err)
	}
}

// clientProc is a child process holding many client connections.
type clientProc struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Reader
}

// Environment of the helper process.
const (
	helperAddrEnv = "LOOP_TEST_HELPER_ADDR"
	helperPathEnv = "LOOP_TEST_HELPER_PATH"
	helperNEnv    = "LOOP_TEST_HELPER_N"
)

// startClients starts a child process that opens n upgraded connections to
// path, and waits until they are all open.
func startClients(tb testing.TB, addr, path string, n int) *clientProc {
	tb.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperClients$", "-test.count=1", "-test.timeout=10m")
	cmd.Env = append(os.Environ(), helperAddrEnv+"="+addr, helperPathEnv+"="+path, helperNEnv+"="+strconv.Itoa(n))
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	p := &clientProc{cmd: cmd, in: in, out: bufio.NewReader(out)}
	tb.Cleanup(p.stop)
	if line := p.line(tb); line != "ready" {
		tb.Fatalf("client process: %q, want ready", line)
	}
	return p
}

// line returns the child's next protocol line, skipping anything else the
// test framework prints.
func (p *clientProc) line(tb testing.TB) string {
	tb.Helper()
	for {
		s, err := p.out.ReadString('\n')
		if err != nil {
			tb.Fatalf("client process: %v", err)
		}
		if s, ok := strings.CutPrefix(s, "helper: "); ok {
			return strings.TrimSpace(s)
		}
	}
}

// wait returns once the clients have received total bytes in all.
func (p *clientProc) wait(tb testing.TB, total int64) {
	tb.Helper()
	fmt.Fprintf(p.in, "wait %d\n", total)
	if line := p.line(tb); line != "ok" {
		tb.Fatalf("client process: %s", line)
	}
}

// stop closes the child's connections and waits for it to exit.
func (p *clientProc) stop() {
	if p.in == nil {
		return
	}
	p.in.Close()
	p.in = nil
	done := make(chan struct{})
	go func() { p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(ioTimeout):
		p.cmd.Process.Kill()
		<-done
	}
}

// TestHelperClients is not a test: it is the client process of
// startClients, and skips unless started by it.
func TestHelperClients(t *testing.T) {
	addr := os.Getenv(helperAddrEnv)
	if addr == "" {
		t.Skip("client process for BenchmarkDeliver and TestIdleConnectionBytes")
	}
	n, _ := strconv.Atoi(os.Getenv(helperNEnv))
	if err := runClients(addr, os.Getenv(helperPathEnv), n); err != nil {
		fmt.Printf("helper: %v\n", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// runClients opens n connections, reports "ready", then counts the bytes
// they receive and answers "wait N" with "ok" once N bytes have arrived.
// It returns when stdin closes.
func runClients(addr, path string, n int) error {
	var (
		received atomic.Int64
		mu       sync.Mutex
		conns    []net.Conn
		firstErr error
		wg       sync.WaitGroup
	)
	next := make(chan struct{}, n)
	for range n {
		next <- struct{}{}
	}
	close(next)
	for range min(n, 64) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range next {
				nc, rest, err := helperDial(addr, path)
				mu.Lock()
				if err != nil {
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				}
				conns = append(conns, nc)
				mu.Unlock()
				received.Add(int64(len(rest)))
				go func() {
					buf := make([]byte, 2<<10)
					for {
						k, err := nc.Read(buf)
						received.Add(int64(k))
						if err != nil {
							return
						}
					}
				}()
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	fmt.Println("helper: ready")

	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		want, err := strconv.ParseInt(strings.TrimPrefix(in.Text(), "wait "), 10, 64)
		if err != nil {
			return err
		}
		if !waitFor(2*time.Minute, func() bool { return received.Load() >= want }) {
			return fmt.Errorf("received %d bytes, want %d", received.Load(), want)
		}
		if got := received.Load(); got != want {
			return fmt.Errorf("received %d bytes, want %d", got, want)
		}
		fmt.Println("helper: ok")
	}
	for _, nc := range conns {
		nc.Close()
	}
	return nil
}

// helperDial opens an upgraded connection and returns the bytes read past
// the 101 response.
func helperDial(addr, path string) (net.Conn, []byte, error) {
	nc, err := net.DialTimeout("tcp", addr, ioTimeout)
	if err != nil {
		return nil, nil, err
	}
	nc.SetDeadline(time.Now().Add(ioTimeout))
	if _, err := io.WriteString(nc, upgradeRequest(path)); err != nil {
		nc.Close()
		return nil, nil, err
	}
	var buf []byte
	tmp := make([]byte, 512)
	for {
		k, err := nc.Read(tmp)
		buf = append(buf, tmp[:k]...)
		if i := bytes.Index(buf, []byte("\r\n\r\n")); i >= 0 {
			if !bytes.HasPrefix(buf, []byte("HTTP/1.1 101 ")) {
				nc.Close()
				return nil, nil, fmt.Errorf("upgrade: %q", buf[:i])
			}
			nc.SetDeadline(time.Time{})
			return nc, buf[i+4:], nil
		}
		if err != nil {
			nc.Close()
			return nil, nil, err
		}
	}
}

func contextWithTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}
