package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
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
)

// End-to-end: the real chatgg binary, built once and started on free
// loopback ports with its store in a temporary directory, driven by the
// tool's run function as `go run ./bench` would. bench does not import the
// server: it only talks to it over the wire.

var buildOnce struct {
	sync.Once
	path string
	err  error
}

// chatggBinary builds ./cmd/chatgg once per test process, or returns
// $CHATGG_BIN when set (a binary built elsewhere, e.g. by make build).
func chatggBinary(t *testing.T) string {
	t.Helper()
	if bin := os.Getenv("CHATGG_BIN"); bin != "" {
		return bin
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "chatgg-bench-test")
		if err != nil {
			buildOnce.err = err
			return
		}
		buildOnce.path = filepath.Join(dir, "chatgg")
		cmd := exec.Command("go", "build", "-o", buildOnce.path, "./cmd/chatgg")
		cmd.Dir = ".."
		if out, err := cmd.CombinedOutput(); err != nil {
			buildOnce.err = fmt.Errorf("go build ./cmd/chatgg: %v\n%s", err, out)
		}
	})
	if buildOnce.err != nil {
		t.Fatal(buildOnce.err)
	}
	return buildOnce.path
}

func TestMain(m *testing.M) {
	code := m.Run()
	if buildOnce.path != "" {
		os.RemoveAll(filepath.Dir(buildOnce.path))
	}
	os.Exit(code)
}

// freePort returns a loopback port nothing listens on right now.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

type server struct {
	ws, http string
	pid      int
}

// startChatgg runs the server, with extra flags, until the end of the test.
func startChatgg(t *testing.T, flags ...string) server {
	t.Helper()
	bin := chatggBinary(t)
	wsPort, httpPort := freePort(t), freePort(t)
	var logs bytes.Buffer
	args := append([]string{"--ws-addr", fmt.Sprintf("127.0.0.1:%d", wsPort), "--http-addr", fmt.Sprintf("127.0.0.1:%d", httpPort),
		"--data-dir", t.TempDir(), "--log-level", "warn"}, flags...)
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("chatgg log:\n%s", logs.String())
		}
	})
	s := server{ws: fmt.Sprintf("ws://127.0.0.1:%d", wsPort), http: fmt.Sprintf("http://127.0.0.1:%d", httpPort), pid: cmd.Process.Pid}
	waitHTTP(t, s.http+"/readyz", done)
	return s
}

// waitHTTP polls url until it answers 200.
func waitHTTP(t *testing.T, url string, died <-chan struct{}) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-died:
			t.Fatal("the server exited during start-up")
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready: %v", url, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// runTool runs the tool with args plus --json and decodes its result.
func runTool(t *testing.T, args ...string) (int, map[string]any, *result) {
	t.Helper()
	var out, errb bytes.Buffer
	args = append(args, "--json", "--progress", "off")
	code := run(context.Background(), args, &out, &errb)
	var m map[string]any
	var r result
	if err := json.Unmarshal(out.Bytes(), &m); err != nil {
		t.Fatalf("bench %v: exit %d, output is not JSON: %v\nstdout: %s\nstderr: %s", args, code, err, out.String(), errb.String())
	}
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatal(err)
	}
	if code != exitOK {
		t.Logf("bench %v: exit %d\n%s\n%s", args, code, out.String(), errb.String())
	}
	return code, m, &r
}

// hasPath checks that the JSON object m has every dotted path.
func hasPath(t *testing.T, m map[string]any, paths ...string) {
	t.Helper()
	for _, p := range paths {
		var cur any = m
		for _, k := range splitDots(p) {
			obj, ok := cur.(map[string]any)
			if !ok {
				t.Fatalf("JSON: %s: %q is not inside an object", p, k)
			}
			if cur, ok = obj[k]; !ok {
				t.Fatalf("JSON: no %s", p)
			}
		}
	}
}

func splitDots(p string) []string {
	var parts []string
	start := 0
	for i := 0; i < len(p); i++ {
		if p[i] == '.' {
			parts = append(parts, p[start:i])
			start = i + 1
		}
	}
	return append(parts, p[start:])
}

// TestRefusedPublishesAreNotLost: publishes the server refuses (here over
// the per-connection rate limit) are errors that fail the run, not losses.
func TestRefusedPublishesAreNotLost(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs chatgg")
	}
	s := startChatgg(t, "--publish-rate", "20", "--publish-burst", "5")
	code, _, r := runTool(t, "fanout", "--url", s.ws, "--proto", "ws", "--duration", "1s",
		"--subscribers", "5", "--publishers", "1", "--rate", "100")
	m := r.Messages
	if code != exitIssues || r.OK || !strings.Contains(r.Failure, "errors from the server") {
		t.Fatalf("exit %d, ok %v, failure %q: want a failed run for the refusals", code, r.OK, r.Failure)
	}
	if m.ServerErrors == 0 || m.Lost != 0 || m.Delivered == 0 || m.Delivered != m.Expected {
		t.Fatalf("server errors %d, lost %d, delivered %d of %d: want refusals, nothing lost", m.ServerErrors, m.Lost, m.Delivered, m.Expected)
	}
	// Sent counts what the server accepted: each reaches the 5 subscribers.
	if m.Expected != m.Sent*5 || m.Sent+m.ServerErrors < 90 {
		t.Fatalf("expected %d deliveries of %d accepted (%d refused) to 5 subscribers; want 5 each, about 100 publishes", m.Expected, m.Sent, m.ServerErrors)
	}
}

func checkClean(t *testing.T, r *result) {
	t.Helper()
	m := r.Messages
	if m == nil {
		t.Fatal("no messages in the result")
	}
	if m.Lost+m.Duplicated+m.OutOfOrder+m.Foreign+m.Malformed != 0 || !r.OK {
		t.Fatalf("lost %d, duplicated %d, out of order %d, foreign %d, malformed %d, ok %v: %s",
			m.Lost, m.Duplicated, m.OutOfOrder, m.Foreign, m.Malformed, r.OK, r.Failure)
	}
	if m.Delivered == 0 || m.Delivered != m.Expected {
		t.Fatalf("delivered %d, expected %d", m.Delivered, m.Expected)
	}
	if r.SubscribersAffected != 0 || len(r.PerSubscriber) != 0 {
		t.Fatalf("subscribers affected: %d %v", r.SubscribersAffected, r.PerSubscriber)
	}
}

func TestEndToEndAgainstChatgg(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the server")
	}
	s := startChatgg(t)
	pid := strconv.Itoa(s.pid)

	for _, proto := range []string{"raw", "ws"} {
		t.Run("fanout "+proto, func(t *testing.T) {
			code, m, r := runTool(t, "fanout", "--url", s.ws, "--proto", proto, "--duration", "2s",
				"--subscribers", "50", "--publishers", "2", "--topics", "2", "--rate", "100", "--pid", pid)
			if code != exitOK {
				t.Fatalf("exit %d", code)
			}
			checkClean(t, r)
			if r.Messages.Sent < 150 || r.Messages.Expected != r.Messages.Sent*25 {
				t.Fatalf("sent %d, expected %d: want about 200 and 25 deliveries each", r.Messages.Sent, r.Messages.Expected)
			}
			hasPath(t, m, "mode", "proto", "url", "started", "gomaxprocs", "config.subscribers", "config.rate",
				"connections.open", "connections.failed", "window_s",
				"messages.sent", "messages.expected", "messages.delivered", "messages.lost", "messages.duplicated",
				"messages.out_of_order", "deliveries_per_sec",
				"latency_ms.p50", "latency_ms.p90", "latency_ms.p99", "latency_ms.p999", "latency_ms.max",
				"client_cpu.user_s", "client_cpu.sys_s", "client_cpu.percent",
				"server.pid", "server.cpu_s", "server.cpu_percent",
				"subscribers_affected", "per_subscriber", "ok")
			if m["mode"] != "fanout" || m["proto"] != proto || m["ok"] != true {
				t.Fatalf("mode %v proto %v ok %v", m["mode"], m["proto"], m["ok"])
			}
			if r.Latency.Count != int64(r.Messages.Delivered) || r.Latency.P50 <= 0 || r.Latency.Max < r.Latency.P99 {
				t.Fatalf("latency %+v for %d deliveries", r.Latency, r.Messages.Delivered)
			}
			if r.Server == nil || r.Server.PID != s.pid {
				t.Fatalf("server use %+v", r.Server)
			}
		})
	}

	t.Run("echo", func(t *testing.T) {
		code, m, r := runTool(t, "echo", "--url", s.ws, "--duration", "1s", "--conns", "10", "--inflight", "2", "--size", "200")
		if code != exitOK {
			t.Fatalf("exit %d", code)
		}
		checkClean(t, r)
		hasPath(t, m, "round_trips_per_sec", "latency_ms.p99", "config.inflight")
		if r.RoundTripsPerSec <= 0 {
			t.Fatalf("round trips/s = %v", r.RoundTripsPerSec)
		}
	})

	t.Run("rest", func(t *testing.T) {
		code, _, r := runTool(t, "rest", "--url", s.ws, "--http-url", s.http, "--proto", "raw", "--duration", "1s",
			"--subscribers", "20", "--publishers", "2", "--rate", "100")
		if code != exitOK {
			t.Fatalf("exit %d", code)
		}
		checkClean(t, r)
		if r.Messages.HTTPErrors != 0 || r.Messages.Sent < 80 {
			t.Fatalf("http errors %d, accepted %d", r.Messages.HTTPErrors, r.Messages.Sent)
		}
	})

	t.Run("e2e", func(t *testing.T) {
		code, m, r := runTool(t, "e2e", "--url", s.ws, "--http-url", s.http, "--proto", "ws", "--duration", "1s",
			"--publishers", "2", "--topics", "2", "--rate", "200", "--poll", "20ms", "--store-timeout", "10s",
			"--worker-metrics", s.http+"/metrics")
		if code != exitOK {
			t.Fatalf("exit %d", code)
		}
		hasPath(t, m, "stored.stored", "stored.lost", "stored.stored_per_sec", "stored.latency_ms.p99", "stored.complete",
			"stored.workers.stored_per_sec", "stored.workers.queue_max_depth", "stored.workers.workers")
		if !r.Stored.Complete || r.Stored.Stored != r.Messages.Sent || r.Stored.Lost+r.Stored.Duplicated+r.Stored.OutOfOrder != 0 {
			t.Fatalf("stored %+v of %d sent", r.Stored, r.Messages.Sent)
		}
		// The all role runs the worker: its counters saw these messages
		// (and maybe the last few of the subtest before).
		ws := r.Stored.Workers
		if ws.Stored < float64(r.Messages.Sent) || ws.PerSec <= 0 || len(ws.Workers) != 1 || ws.Workers[0].Batches < 1 || ws.Errors != 0 {
			t.Fatalf("workers %+v of %d sent", ws, r.Messages.Sent)
		}
	})

	t.Run("e2e-verify-at-end", func(t *testing.T) {
		code, m, r := runTool(t, "e2e", "--url", s.ws, "--http-url", s.http, "--proto", "ws", "--duration", "1s",
			"--publishers", "2", "--topics", "2", "--rate", "200", "--poll", "20ms", "--store-timeout", "10s",
			"--worker-metrics", s.http+"/metrics", "--verify-at-end")
		if code != exitOK {
			t.Fatalf("exit %d", code)
		}
		hasPath(t, m, "stored.stored", "stored.complete", "stored.verified_at_end", "stored.workers.stored_per_sec")
		if !r.Stored.Complete || r.Stored.Stored != r.Messages.Sent || r.Stored.Lost+r.Stored.Duplicated+r.Stored.OutOfOrder != 0 {
			t.Fatalf("stored %+v of %d sent", r.Stored, r.Messages.Sent)
		}
		// The rate is the workers', and the poller saw nothing before
		// they had stored everything: no latency to report.
		if !r.Stored.VerifiedAtEnd || r.Stored.Latency != nil || r.Stored.PerSec != r.Stored.Workers.PerSec || r.Stored.PerSec <= 0 {
			t.Fatalf("stored %+v, workers %+v", r.Stored, r.Stored.Workers)
		}
		var out, errb bytes.Buffer
		code = run(context.Background(), []string{"e2e", "--url", s.ws, "--http-url", s.http, "--duration", "1s", "--verify-at-end"}, &out, &errb)
		if code != exitSetup || !strings.Contains(errb.String(), "--verify-at-end needs --worker-metrics") {
			t.Fatalf("--verify-at-end without --worker-metrics: exit %d, %q; want %d", code, errb.String(), exitSetup)
		}
	})

	t.Run("idle", func(t *testing.T) {
		code, m, r := runTool(t, "idle", "--url", s.ws, "--proto", "raw", "--conns", "300", "--hold", "300ms", "--pid", pid)
		if code != exitOK {
			t.Fatalf("exit %d", code)
		}
		hasPath(t, m, "idle.conns", "idle.rss_before_bytes", "idle.rss_after_bytes", "idle.bytes_per_conn")
		if r.Idle.Conns != 300 || r.Connections.Failed != 0 {
			t.Fatalf("idle %+v, connections %+v", r.Idle, r.Connections)
		}
	})

	t.Run("ramp", func(t *testing.T) {
		code, m, r := runTool(t, "ramp", "--url", s.ws, "--proto", "raw", "--subscribers", "20", "--publishers", "2",
			"--rate", "50", "--factor", "2", "--step-duration", "300ms", "--max-steps", "3", "--max-p99", "2s")
		if code != exitOK {
			t.Fatalf("exit %d", code)
		}
		hasPath(t, m, "ramp.steps", "ramp.best.deliveries_per_sec", "ramp.best.latency_ms.p99")
		passed := 0
		for _, s := range r.Ramp.Steps {
			if s.Pass {
				passed++
			}
		}
		if passed != 3 || r.Ramp.Best == nil || r.Ramp.Best.Rate != 200 {
			t.Fatalf("ramp %+v", r.Ramp)
		}
	})
}

// TestEndToEndAgainstNodeWS drives bench/ws-server, the plain broadcast
// server bench-compare measures chatgg against, in raw mode and on /echo.
func TestEndToEndAgainstNodeWS(t *testing.T) {
	if testing.Short() {
		t.Skip("runs node")
	}
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node is not installed")
	}
	if _, err := os.Stat("../tools/node/node_modules/ws/package.json"); err != nil {
		t.Skip("tools/node is not installed (make services)")
	}
	port := freePort(t)
	cmd := exec.Command(node, "ws-server/server.js", strconv.Itoa(port))
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("ws-server log:\n%s", logs.String())
		}
	})
	url := fmt.Sprintf("ws://127.0.0.1:%d", port)
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ws-server did not listen: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	code, _, r := runTool(t, "fanout", "--url", url, "--proto", "raw", "--duration", "1s", "--subscribers", "30", "--rate", "100",
		"--pid", strconv.Itoa(cmd.Process.Pid))
	if code != exitOK {
		t.Fatalf("fanout: exit %d", code)
	}
	checkClean(t, r)
	code, _, r = runTool(t, "echo", "--url", url, "--duration", "1s", "--conns", "5")
	if code != exitOK {
		t.Fatalf("echo: exit %d", code)
	}
	checkClean(t, r)
}

func TestRunRejectsBadSettings(t *testing.T) {
	cases := [][]string{
		{},
		{"nosuchmode"},
		{"fanout", "--size", "10"},
		{"fanout", "--proto", "mqtt"},
		{"fanout", "--url", "wss://127.0.0.1:1"},
		{"fanout", "--duration", "2h"},
		{"fanout", "--subscribers", "2", "--publishers", "3"},
		{"echo", "--conns", "300000"},
		{"ramp", "--factor", "1"},
	}
	for _, args := range cases {
		var out, errb bytes.Buffer
		if code := run(context.Background(), args, &out, &errb); code != exitSetup {
			t.Errorf("bench %v: exit %d, want %d", args, code, exitSetup)
		}
	}
}

func TestRunFailsOnRefusedConnections(t *testing.T) {
	port := freePort(t) // nothing listens there
	var out, errb bytes.Buffer
	code := run(context.Background(), []string{"fanout", "--url", fmt.Sprintf("ws://127.0.0.1:%d", port), "--subscribers", "3",
		"--duration", "1s", "--json", "--progress", "off"}, &out, &errb)
	if code != exitSetup {
		t.Fatalf("exit %d, want %d\n%s%s", code, exitSetup, out.String(), errb.String())
	}
	var r result
	if err := json.Unmarshal(out.Bytes(), &r); err != nil || r.OK || r.Connections.Failed != 3 {
		t.Fatalf("result %+v, %v", r, err)
	}
}

func TestJudgeFailsOnAnyIssueUnlessTolerated(t *testing.T) {
	cases := []struct {
		name     string
		m        messages
		tolerate bool
		ok       bool
	}{
		{"clean", messages{Sent: 10, Delivered: 10}, false, true},
		{"lost", messages{Lost: 1}, false, false},
		{"duplicated", messages{Duplicated: 1}, false, false},
		{"out of order", messages{OutOfOrder: 1}, false, false},
		{"malformed", messages{Malformed: 1}, false, false},
		{"lost, tolerated", messages{Lost: 5}, true, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := tc.m
			r := &result{Messages: &m}
			judge(&options{tolerate: tc.tolerate}, r)
			if r.OK != tc.ok {
				t.Fatalf("ok = %v (%s), want %v", r.OK, r.Failure, tc.ok)
			}
		})
	}
}
