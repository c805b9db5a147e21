package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/chatgg/chatgg/internal/testsvc"
)

// Set by TestMain.
var (
	repoRoot  string // the directory holding go.mod
	chatggBin string // cmd/chatgg built for this test binary
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	root, err := testsvc.RepoRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	dir, err := os.MkdirTemp("", "chatgg-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "chatgg")
	// Under -race the nodes are race-built too: a data race in a node is
	// then a failure of the test that ran it (see checkRaces).
	args := []string{"build", "-o", bin}
	if raceEnabled {
		args = append(args, "-race")
	}
	args = append(args, "./cmd/chatgg")
	cmd := exec.Command("go", args...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: go %s: %v\n%s", strings.Join(args, " "), err, out)
		return 1
	}
	repoRoot, chatggBin = root, bin
	return testsvc.Run(m)
}

// haproxyCfg is the deployment's balancer configuration, which the tests run
// as it is.
func haproxyCfg() string { return filepath.Join(repoRoot, "deploy", "haproxy", "haproxy.cfg") }

// clusterConfig says what startCluster starts. Zero fields take defaults.
type clusterConfig struct {
	Nodes   int    // chatgg serve nodes behind the balancer: 3 (the config file names three)
	Workers int    // chatgg worker processes: 2
	Couch   string // CouchDB server URL, http://host:port; default the shared testsvc.Couch
	// ServeArgs and WorkerArgs are added to every serve and worker command
	// line (flags given twice: the last wins).
	ServeArgs  []string
	WorkerArgs []string
	// CheckInter is the balancer's health check interval (LB_CHECK_INTER;
	// whole milliseconds); default 300ms. A node is DOWN after two failed
	// checks and UP after two good ones (haproxy.cfg).
	CheckInter time.Duration
	// ExitStatus runs every serve node under a minimal init (testInit in
	// rolling_test.go) that records how the node's process exited; read it
	// with node.exitStatus.
	ExitStatus bool
}

// cluster is one chatgg deployment on loopback ports: Redis, a CouchDB
// database, serve nodes, workers and HAProxy in front of the nodes.
type cluster struct {
	t       testing.TB
	redis   *testsvc.Proc
	couch   string // server URL
	db      string // database name
	dbURL   string // couch + "/" + db, what the nodes are given
	prefix  string // --redis-prefix
	queue   string // --queue
	nodes   []*node
	workers []*node
	lb      *testsvc.Proc
	lbWS    string // host:port of the balancer's WebSocket frontend
	lbHTTP  string // host:port of its REST frontend
	lbStats string // host:port of its stats page

	checkInter time.Duration // the balancer's check interval
	exitStatus bool          // serve nodes run under testInit

	rdb rueidis.Client // for looking into the queue
}

// node is one chatgg process.
type node struct {
	name string
	role string // serve or worker
	proc *testsvc.Proc
	ws   string // WebSocket host:port ("" for a worker)
	http string // REST host:port

	statusFile string // where testInit records each exit ("" without clusterConfig.ExitStatus)
}

// httpURL returns the node's REST URL for path.
func (n *node) httpURL(path string) string { return "http://" + n.http + path }

func startCluster(t testing.TB, cfg clusterConfig) *cluster {
	t.Helper()
	if cfg.Nodes == 0 {
		cfg.Nodes = 3
	}
	if cfg.Workers == 0 {
		cfg.Workers = 2
	}
	if cfg.Couch == "" {
		cfg.Couch = testsvc.Couch(t)
	}
	if cfg.CheckInter == 0 {
		cfg.CheckInter = 300 * time.Millisecond
	}
	c := &cluster{
		t:          t,
		couch:      cfg.Couch,
		db:         testsvc.UniqueName(t, "e2e"),
		prefix:     testsvc.UniqueName(t, "chan") + ":",
		queue:      testsvc.UniqueName(t, "queue"),
		checkInter: cfg.CheckInter,
		exitStatus: cfg.ExitStatus,
	}
	c.dbURL = c.couch + "/" + c.db
	t.Cleanup(func() { couchDeleteDB(c.dbURL) })

	// Append-only, fsync on every write: an acknowledged LPUSH survives
	// Stop (SIGTERM) and Start.
	c.redis = testsvc.NewRedisWith(t, "--appendonly", "yes", "--appendfsync", "always")
	rdb, err := rueidis.NewClient(rueidis.ClientOption{
		InitAddress:  []string{c.redis.Addr()},
		DisableCache: true,
	})
	if err != nil {
		t.Fatalf("redis client: %v", err)
	}
	c.rdb = rdb
	t.Cleanup(rdb.Close)

	common := []string{
		"--redis-url", c.redis.URL(),
		"--couchdb-url", c.dbURL,
		"--redis-prefix", c.prefix,
		"--queue", c.queue,
		"--log-level", "info",
	}
	for i := 1; i <= cfg.Nodes; i++ {
		ws, http := testsvc.FreePort(t), testsvc.FreePort(t)
		args := append([]string{"serve",
			"--node", strconv.Itoa(i),
			"--ws-addr", "127.0.0.1:" + strconv.Itoa(ws),
			"--http-addr", "127.0.0.1:" + strconv.Itoa(http),
			"--loops", "2",
			// Behind the balancer, which sends the PROXY protocol.
			"--proxy-protocol", "true",
			// Shutdown is not under test here: no drain period and no
			// spreading of the closes, so that a test ends quickly.
			"--drain-period", "0s",
			"--close-window", "0s",
		}, common...)
		args = append(args, cfg.ServeArgs...)
		c.nodes = append(c.nodes, c.startNode(fmt.Sprintf("chatgg-serve-%d", i), "serve", args, ws, http))
	}
	for i := 1; i <= cfg.Workers; i++ {
		http := testsvc.FreePort(t)
		args := append([]string{"worker",
			"--node", strconv.Itoa(100 + i),
			"--http-addr", "127.0.0.1:" + strconv.Itoa(http),
			"--worker-heartbeat", "2s",
			"--recover-interval", "1s",
		}, common...)
		args = append(args, cfg.WorkerArgs...)
		c.workers = append(c.workers, c.startNode(fmt.Sprintf("chatgg-worker-%d", i), "worker", args, 0, http))
	}
	c.startBalancer()
	// One cleanup that stops everything at once, registered last so that
	// it runs before each process's own: stopped one by one, nodes would
	// take their graceful shutdowns in turn.
	t.Cleanup(func() {
		c.lb.Stop()
		var wg sync.WaitGroup
		for _, n := range c.all() {
			wg.Go(n.proc.Stop)
		}
		wg.Wait()
	})
	return c
}

// startNode starts one chatgg process and waits until its /readyz says 200.
// Its log is checked for data races when the test ends and shown if the
// test failed.
func (c *cluster) startNode(name, role string, args []string, ws, http int) *node {
	t := c.t
	t.Helper()
	n := &node{name: name, role: role, http: "127.0.0.1:" + strconv.Itoa(http)}
	if ws != 0 {
		n.ws = "127.0.0.1:" + strconv.Itoa(ws)
	}
	if slices.Contains(args, "--proxy-protocol") {
		proxied.Store(n.http, true)
	}
	const gorace = "halt_on_error=0"
	bin, env := chatggBin, []string{"GORACE=" + gorace}
	if c.exitStatus && role == "serve" {
		n.statusFile = filepath.Join(t.TempDir(), name+".exit")
		bin, args = testInitBin(t), append([]string{chatggBin}, args...)
		// testInit hands chatgg its GORACE; its own skips the race
		// runtime's 1 s wait at exit (atexit_sleep_ms), which would
		// delay every exit the test waits for.
		env = []string{
			testInitEnv + "=" + n.statusFile,
			testInitGORACEEnv + "=" + gorace,
			"GORACE=" + gorace + " atexit_sleep_ms=0",
		}
	}
	n.proc = testsvc.StartProc(t, testsvc.ProcSpec{
		Name:  name,
		Bin:   bin,
		Args:  args,
		Env:   env,
		Port:  http,
		Ready: func() error { return wantStatus(n.httpURL("/readyz"), http200) },
		// Race-built nodes on two cores start slowly.
		ReadyTimeout: 60 * time.Second,
	})
	c.watch(n.proc)
	return n
}

const http200 = http.StatusOK

// watch registers, after p's own cleanup so that it runs first, a check of
// p's log: stop p, fail on a data race report, and show the log's tail if
// the test failed (or always, with CHATGG_E2E_LOGS set).
func (c *cluster) watch(p *testsvc.Proc) {
	t := c.t
	t.Cleanup(func() {
		p.Stop()
		b, err := os.ReadFile(p.LogPath())
		if err != nil {
			t.Errorf("read %s: %v", p.LogPath(), err)
			return
		}
		if i := bytes.Index(b, []byte("WARNING: DATA RACE")); i >= 0 {
			t.Errorf("data race in %s:\n%s", p.LogPath(), b[i:min(len(b), i+8<<10)])
		}
		if t.Failed() || os.Getenv("CHATGG_E2E_LOGS") != "" {
			t.Logf("%s", p.LogTail())
		}
	})
}

// startBalancer checks deploy/haproxy/haproxy.cfg with this cluster's
// variables and starts HAProxy on it.
func (c *cluster) startBalancer() {
	t := c.t
	t.Helper()
	ws, http, stats := testsvc.FreePort(t), testsvc.FreePort(t), testsvc.FreePort(t)
	c.lbWS = "127.0.0.1:" + strconv.Itoa(ws)
	c.lbHTTP = "127.0.0.1:" + strconv.Itoa(http)
	c.lbStats = "127.0.0.1:" + strconv.Itoa(stats)
	env := []string{
		"LB_WS_BIND=" + c.lbWS,
		"LB_HTTP_BIND=" + c.lbHTTP,
		"LB_STATS_BIND=" + c.lbStats,
		// Fast checks, so that faults show in seconds; production keeps
		// the file's default.
		fmt.Sprintf("LB_CHECK_INTER=%dms", c.checkInter.Milliseconds()),
	}
	if len(c.nodes) != 3 {
		t.Fatalf("haproxy.cfg names 3 brokers, the cluster has %d nodes", len(c.nodes))
	}
	for i, n := range c.nodes {
		_, httpPort, _ := strings.Cut(n.http, ":")
		env = append(env,
			fmt.Sprintf("BROKER%d_WS=%s", i+1, n.ws),
			fmt.Sprintf("BROKER%d_HTTP=%s", i+1, n.http),
			fmt.Sprintf("BROKER%d_CHECK_PORT=%s", i+1, httpPort))
	}
	if out, err := haproxyCheck(env); err != nil {
		t.Fatalf("haproxy -c -f %s: %v\n%s", haproxyCfg(), err, out)
	}
	c.lb = testsvc.HAProxyFile(t, haproxyCfg(), env, ws, http, stats)
	c.watch(c.lb)
	// Servers start UP; wait until the balancer has checked them all.
	c.waitBalancer(20*time.Second, "UP")
}

// haproxyCheck runs haproxy -c on the deployment's file with env.
func haproxyCheck(env []string) ([]byte, error) {
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		bin = "/usr/sbin/haproxy"
	}
	cmd := exec.Command(bin, "-c", "-f", haproxyCfg())
	cmd.Env = append(os.Environ(), env...)
	return cmd.CombinedOutput()
}

// balancerStatus returns the status HAProxy gives each broker of backend
// ("http" or "ws"): "UP", "DOWN", "UP 1/2", ...
func (c *cluster) balancerStatus(backend string) (map[string]string, error) {
	body, err := get("http://" + c.lbStats + "/stats;csv")
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	lines := strings.Split(string(body), "\n")
	if len(lines) == 0 {
		return nil, errors.New("empty stats")
	}
	header := strings.Split(strings.TrimPrefix(lines[0], "# "), ",")
	col := map[string]int{}
	for i, h := range header {
		col[h] = i
	}
	for _, l := range lines[1:] {
		f := strings.Split(l, ",")
		if len(f) <= col["status"] || f[col["pxname"]] != backend || !strings.HasPrefix(f[col["svname"]], "broker") {
			continue
		}
		out[f[col["svname"]]] = f[col["status"]]
	}
	return out, nil
}

// waitBalancer waits until HAProxy reports every broker with status want
// ("UP" or "DOWN") on both backends.
func (c *cluster) waitBalancer(d time.Duration, want string) {
	c.t.Helper()
	eventually(c.t, d, "balancer reports every broker "+want, func() error {
		for _, be := range []string{"http", "ws"} {
			st, err := c.balancerStatus(be)
			if err != nil {
				return err
			}
			if len(st) != len(c.nodes) {
				return fmt.Errorf("backend %s lists %v", be, st)
			}
			for s, v := range st {
				if v != want {
					return fmt.Errorf("%s/%s is %s", be, s, v)
				}
			}
		}
		return nil
	})
}

// all returns the serve nodes and the workers.
func (c *cluster) all() []*node { return append(append([]*node{}, c.nodes...), c.workers...) }

// waitReady waits until every node's /readyz answers status.
func (c *cluster) waitReady(d time.Duration, status int) {
	c.t.Helper()
	for _, n := range c.all() {
		eventually(c.t, d, n.name+" /readyz "+strconv.Itoa(status), func() error {
			return wantStatus(n.httpURL("/readyz"), status)
		})
	}
}

// processingKey returns the Redis list of a worker's in-flight batch.
func (c *cluster) processingKey(workerID string) string {
	return c.queue + ":processing:" + workerID
}

// workerID returns the queue's id of worker n: chatgg's default,
// HOSTNAME-PID-RANDOM, found in the registered workers by its PID.
func (c *cluster) workerID(n *node) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	ids, err := c.rdb.Do(ctx, c.rdb.B().Smembers().Key(c.queue+":workers").Build()).AsStrSlice()
	if err != nil {
		return "", err
	}
	want := "-" + strconv.Itoa(n.proc.PID()) + "-"
	for _, id := range ids {
		if strings.Contains(id, want) {
			return id, nil
		}
	}
	return "", fmt.Errorf("no worker with pid %d among %v", n.proc.PID(), ids)
}

// redisInt runs a command that answers an integer.
func (c *cluster) redisInt(cmd func(b rueidis.Builder) rueidis.Completed) (int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return c.rdb.Do(ctx, cmd(c.rdb.B())).AsInt64()
}

// eventually polls cond every 20 ms until it returns nil, failing the test
// with cond's last error once d has passed.
func eventually(t testing.TB, d time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s: %v", d, what, err)
		}
		time.Sleep(20 * time.Millisecond) // poll interval, not a wait for an outcome
	}
}
