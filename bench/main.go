// Command bench is chatgg's load tool: `go run ./bench <mode> [flags]`.
//
// It talks to a server over the wire only (package codec is its one import
// from chatgg): WebSocket clients on a few epoll loops, with no goroutine per
// connection and no allocation per message, and, for REST and e2e, plain
// HTTP/1.1. Every message carries its publisher, sequence and send time, so
// each subscriber counts what it lost, got twice or got out of order, and
// latencies go to an HDR histogram. See bench/README.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/url"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Bounds on what one run may ask for.
const (
	maxConns    = 200_000
	maxPubs     = 10_000
	maxTopics   = 10_000
	maxDuration = time.Hour
	maxRate     = 10_000_000 // publishes/s
	maxLoops    = 64
	maxSteps    = 50
)

// Exit codes.
const (
	exitOK      = 0
	exitIssues  = 1 // lost, duplicated, out-of-order, foreign or malformed messages, or a failed check
	exitSetup   = 2 // bad flags, or the run could not be set up
	usageHeader = `usage: bench <mode> [flags]

modes:
  fanout   C subscribers on T topics, P publishers at a total rate for a duration
  echo     round trips on /echo with N connections
  idle     open N idle connections; with --pid, the server's RSS per connection
  rest     REST publishes at a rate, WebSocket subscribers receiving them
  e2e      publish, then poll history until every message is stored
  ramp     raise the fan-out rate step by step until p99 passes --max-p99 or a message is lost
  store    the store alone: _bulk_docs batches of chatgg-shaped documents (--couch-url, --batch, --inflight, --messages)
  compare  print the bench-compare table (or with --store the store-compare table) from a directory of --json results (--dir)

flags:
`
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// options are the parsed flags.
type options struct {
	mode         mode
	url, httpURL string
	proto        protocol
	duration     time.Duration
	size         int
	topics       int
	topicPrefix  string
	subs, pubs   int
	conns        int
	rate         float64
	deliveryRate float64
	inflight     int
	pid          int
	loops        int
	concurrency  int
	connTimeout  time.Duration
	drain        time.Duration
	warmup       time.Duration
	hold         time.Duration
	jsonOut      bool
	tolerate     bool
	progress     string
	sourceIPs    int

	stepDuration time.Duration
	factor       float64
	maxSteps     int
	retries      int
	maxP99       time.Duration

	poll          time.Duration
	storeTimeout  time.Duration
	workerMetrics string
	verifyAtEnd   bool
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		fmt.Fprint(stderr, usageHeader)
		newFlags(&options{}, stderr).PrintDefaults()
		return exitSetup
	}
	switch args[0] {
	case "compare":
		return runCompare(args[1:], stdout, stderr)
	case "store":
		return runStore(ctx, args[1:], stdout, stderr)
	}
	var o options
	found := false
	for i, n := range modeNames {
		if n == args[0] {
			o.mode, found = mode(i), true
		}
	}
	if !found {
		fmt.Fprintf(stderr, "bench: unknown mode %q\n\n%s", args[0], usageHeader)
		return exitSetup
	}
	fs := newFlags(&o, stderr)
	var proto string
	fs.StringVar(&proto, "proto", "ws", "ws (JSON /ws: sub, then pub ops) or raw (/raw/{topic}: frames verbatim)")
	if err := fs.Parse(args[1:]); err != nil {
		return exitSetup
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "bench: unexpected arguments %q\n", fs.Args())
		return exitSetup
	}
	switch proto {
	case "ws":
		o.proto = protoWS
	case "raw":
		o.proto = protoRaw
	default:
		fmt.Fprintf(stderr, "bench: --proto must be ws or raw, not %q\n", proto)
		return exitSetup
	}
	if err := o.defaults(fs); err != nil {
		fmt.Fprintln(stderr, err)
		return exitSetup
	}
	p, err := o.plan()
	if err != nil {
		fmt.Fprintln(stderr, err)
		return exitSetup
	}
	raiseFileLimit(p.conns + p.pubs + 256)

	res := &result{
		Mode: o.mode.String(), Proto: o.proto.String(), URL: o.url,
		Started: time.Now().UTC().Format(time.RFC3339), GoMaxProcs: runtime.GOMAXPROCS(0),
		Config: config{
			DurationS: o.duration.Seconds(), Topics: o.topics, Subscribers: p.subs, Publishers: p.pubs,
			Conns: p.conns, Rate: o.rate, DeliveryRate: o.rate * float64(p.subs) / float64(o.topics),
			SizeBytes: o.size, Loops: o.loops,
		},
		PerSubscriber: []subIssues{},
	}
	if o.mode == modeRest || o.mode == modeE2E {
		res.HTTPURL = o.httpURL
	}
	if o.mode == modeEcho || o.mode == modeRest {
		res.Config.Inflight = o.inflight
	}

	err = execute(ctx, &o, p, res, stderr)
	if err != nil && !errors.Is(err, errConnect) {
		fmt.Fprintln(stderr, err)
		return exitSetup
	}
	if err != nil {
		res.OK, res.Failure = false, err.Error()
	} else {
		judge(&o, res)
	}
	if o.jsonOut {
		if err := printJSON(stdout, res); err != nil {
			fmt.Fprintln(stderr, err)
			return exitSetup
		}
	} else {
		printTable(stdout, res)
	}
	switch {
	case errors.Is(err, errConnect):
		return exitSetup
	case !res.OK:
		return exitIssues
	}
	return exitOK
}

func newFlags(o *options, out io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() { fmt.Fprint(out, usageHeader); fs.PrintDefaults() }
	fs.StringVar(&o.url, "url", "ws://127.0.0.1:9001", "WebSocket base URL (ws://host:port[/prefix]); the mode adds /ws, /raw/{topic} or /echo")
	fs.StringVar(&o.httpURL, "http-url", "http://127.0.0.1:9002", "REST base URL (rest, e2e)")
	fs.DurationVar(&o.duration, "duration", 10*time.Second, "how long to publish (fanout, rest, e2e) or run round trips (echo)")
	fs.IntVar(&o.size, "size", 64, "payload bytes per message (38 to 65536)")
	fs.IntVar(&o.topics, "topics", 1, "topics; connection i is on topic i mod topics")
	fs.StringVar(&o.topicPrefix, "topic-prefix", "", "topic names are <prefix>.<i> (default bench-<random>, fresh each run)")
	fs.IntVar(&o.subs, "subscribers", -1, "subscribers (default 100; e2e 0)")
	fs.IntVar(&o.pubs, "publishers", -1, "publishers (default 1; ramp 10; rest 4): the first P subscriber connections also publish, or REST connections")
	fs.IntVar(&o.conns, "conns", -1, "connections (echo default 100, idle default 1000)")
	fs.Float64Var(&o.rate, "rate", 100, "publishes per second, all publishers together (ramp: the first step)")
	fs.Float64Var(&o.deliveryRate, "delivery-rate", 0, "deliveries per second instead of --rate: rate = delivery-rate / subscribers per topic")
	fs.IntVar(&o.inflight, "inflight", 1, "echo: frames in flight per connection; rest: requests in flight per connection")
	fs.IntVar(&o.pid, "pid", 0, "server pid: report its CPU (and for idle its RSS per connection) from /proc")
	fs.IntVar(&o.loops, "loops", 1, "client event loops (goroutines); connections are spread over them")
	fs.IntVar(&o.concurrency, "connect-concurrency", 256, "connections being opened at once, per loop")
	fs.DurationVar(&o.connTimeout, "connect-timeout", 10*time.Second, "time a connection has to open (and, /ws, to be subscribed)")
	fs.DurationVar(&o.drain, "drain", 2*time.Second, "longest wait for deliveries after publishing stops")
	fs.DurationVar(&o.warmup, "warmup", 0, "publish (echo: round trips) this long before measuring (ramp: at the first step's rate)")
	fs.DurationVar(&o.hold, "hold", 3*time.Second, "idle: how long connections are held before the server's RSS is read")
	fs.BoolVar(&o.jsonOut, "json", false, "print the result as JSON instead of a table")
	fs.BoolVar(&o.tolerate, "tolerate-loss", false, "exit 0 even when messages were lost, duplicated or out of order")
	fs.StringVar(&o.progress, "progress", "auto", "progress bar on stderr: auto (terminal and runs of 2s or more), on, off")
	fs.IntVar(&o.sourceIPs, "source-ips", 0, "loopback source addresses to spread connections over, 20 000 per address (0: enough for --conns)")
	fs.DurationVar(&o.stepDuration, "step-duration", 3*time.Second, "ramp: length of a step")
	fs.Float64Var(&o.factor, "factor", 1.5, "ramp: rate multiplier from one step to the next")
	fs.IntVar(&o.maxSteps, "max-steps", 12, "ramp: most steps")
	fs.IntVar(&o.retries, "retries", 1, "ramp: times a step that failed on p99 alone (nothing lost) is run again before the ramp ends")
	fs.DurationVar(&o.maxP99, "max-p99", 50*time.Millisecond, "ramp: a step passes while its p99 latency is at most this")
	fs.DurationVar(&o.poll, "poll", 50*time.Millisecond, "e2e: history poll interval")
	fs.DurationVar(&o.storeTimeout, "store-timeout", 30*time.Second, "e2e: longest wait for every message to be stored")
	fs.StringVar(&o.workerMetrics, "worker-metrics", "", "e2e: comma-separated /metrics URLs of chatgg's workers: also report their store rate, batches and busy time, and the queue depth (GET /v1/queue)")
	fs.BoolVar(&o.verifyAtEnd, "verify-at-end", false, "e2e: throughput without an observer: read history only once the workers' counters (--worker-metrics) account for every message, then check it all; stored/s is the workers', no publish-to-stored latency")
	return fs
}

// defaults fills the per-mode defaults and checks the bounds.
func (o *options) defaults(fs *flag.FlagSet) error {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	def := func(v *int, d int) {
		if *v < 0 {
			*v = d
		}
	}
	switch o.mode {
	case modeFanout, modeRamp:
		def(&o.subs, 100)
		def(&o.pubs, map[bool]int{true: 10, false: 1}[o.mode == modeRamp])
	case modeRest:
		def(&o.subs, 100)
		def(&o.pubs, 4)
	case modeE2E:
		def(&o.subs, 0)
		def(&o.pubs, 1)
	case modeEcho:
		def(&o.conns, 100)
	case modeIdle:
		def(&o.conns, 1000)
	}
	def(&o.subs, 0)
	def(&o.pubs, 0)
	def(&o.conns, 0)
	if o.mode == modeRamp && !set["drain"] {
		o.drain = max(o.maxP99*4, time.Second)
	}
	if o.topicPrefix == "" {
		m := newMask()
		o.topicPrefix = fmt.Sprintf("bench-%x", m[:3])
	}
	if o.deliveryRate > 0 {
		per := float64(o.subs) / float64(max(o.topics, 1))
		if per == 0 {
			return errors.New("bench: --delivery-rate needs subscribers")
		}
		o.rate = o.deliveryRate / per
	}
	switch {
	case o.duration <= 0 || o.duration > maxDuration:
		return fmt.Errorf("bench: --duration must be in (0, %v]", maxDuration)
	case o.size < minPayloadSize || o.size > maxPayloadSize:
		return fmt.Errorf("bench: --size must be %d to %d bytes", minPayloadSize, maxPayloadSize)
	case o.topics < 1 || o.topics > maxTopics:
		return fmt.Errorf("bench: --topics must be 1 to %d", maxTopics)
	case o.subs > maxConns || o.conns > maxConns:
		return fmt.Errorf("bench: at most %d connections", maxConns)
	case o.pubs > maxPubs:
		return fmt.Errorf("bench: at most %d publishers", maxPubs)
	case o.rate < 0 || o.rate > maxRate || math.IsNaN(o.rate):
		return fmt.Errorf("bench: --rate must be 0 to %d", maxRate)
	case o.loops < 1 || o.loops > maxLoops:
		return fmt.Errorf("bench: --loops must be 1 to %d", maxLoops)
	case o.inflight < 1 || o.inflight > 1024:
		return errors.New("bench: --inflight must be 1 to 1024")
	case o.concurrency < 1:
		return errors.New("bench: --connect-concurrency must be at least 1")
	case o.maxSteps < 1 || o.maxSteps > maxSteps:
		return fmt.Errorf("bench: --max-steps must be 1 to %d", maxSteps)
	case o.retries < 0 || o.retries > 5:
		return errors.New("bench: --retries must be 0 to 5")
	case o.factor <= 1:
		return errors.New("bench: --factor must be above 1")
	case o.stepDuration <= 0 || o.stepDuration > maxDuration:
		return errors.New("bench: --step-duration out of range")
	case o.warmup < 0 || o.warmup > time.Minute:
		return errors.New("bench: --warmup must be at most 1m")
	case o.drain < 0 || o.drain > 10*time.Minute || o.storeTimeout <= 0 || o.storeTimeout > 10*time.Minute:
		return errors.New("bench: --drain and --store-timeout must be at most 10m")
	case o.poll < time.Millisecond:
		return errors.New("bench: --poll must be at least 1ms")
	case o.progress != "auto" && o.progress != "on" && o.progress != "off":
		return errors.New("bench: --progress must be auto, on or off")
	}
	switch o.mode {
	case modeFanout, modeRamp, modeRest:
		if o.subs < 1 || o.pubs < 1 {
			return errors.New("bench: needs at least one subscriber and one publisher")
		}
		if o.mode != modeRest && o.pubs > o.subs {
			return errors.New("bench: publishers are the first subscriber connections: --publishers at most --subscribers")
		}
	case modeE2E:
		if o.pubs < 1 {
			return errors.New("bench: e2e needs a publisher")
		}
		if o.verifyAtEnd && len(splitURLs(o.workerMetrics)) == 0 {
			return errors.New("bench: --verify-at-end needs --worker-metrics")
		}
	case modeEcho, modeIdle:
		if o.conns < 1 {
			return errors.New("bench: --conns must be at least 1")
		}
	}
	return nil
}

// plan turns the options into what the loops share.
func (o *options) plan() (*plan, error) {
	u, err := url.Parse(o.url)
	if err != nil {
		return nil, fmt.Errorf("bench: --url: %w", err)
	}
	if u.Scheme != "ws" && u.Scheme != "http" {
		return nil, fmt.Errorf("bench: --url: scheme %q: only ws:// (no TLS)", u.Scheme)
	}
	p := &plan{
		mode: o.mode, proto: o.proto, size: o.size, inflight: o.inflight,
		connectConcurrency: o.concurrency, connectTimeout: o.connTimeout, loops: o.loops,
		hostHeader: u.Host, pathPrefix: strings.TrimSuffix(u.Path, "/"),
	}
	var ip net.IP
	p.wsAddr, ip, err = sockaddr(u)
	if err != nil {
		return nil, err
	}
	if ip.To4() == nil {
		p.family = unix.AF_INET6
	} else {
		p.family = unix.AF_INET
	}
	if o.mode == modeRest || o.mode == modeE2E {
		hu, err := url.Parse(o.httpURL)
		if err != nil || hu.Scheme != "http" {
			return nil, fmt.Errorf("bench: --http-url must be http://host:port (no TLS)")
		}
		var hip net.IP
		p.httpAddr, hip, err = sockaddr(hu)
		if err != nil {
			return nil, err
		}
		if (hip.To4() == nil) != (ip.To4() == nil) {
			return nil, errors.New("bench: --url and --http-url must be of the same address family")
		}
		p.httpHost, p.httpPrefix = hu.Host, strings.TrimSuffix(hu.Path, "/")
	}
	for i := 0; i < o.topics; i++ {
		p.topics = append(p.topics, fmt.Sprintf("%s.%d", o.topicPrefix, i))
	}
	switch o.mode {
	case modeEcho, modeIdle:
		p.conns = o.conns
	case modeRest:
		p.conns, p.subs, p.pubs = o.subs, o.subs, o.pubs
	default:
		p.conns, p.subs, p.pubs = max(o.subs, o.pubs), o.subs, o.pubs
	}
	if o.mode == modeEcho {
		p.pubs = 0 // echo connections publish to themselves: see plan.rank
	}
	if ip4 := ip.To4(); ip4 != nil && ip4[0] == 127 {
		n := o.sourceIPs
		if n == 0 {
			n = (p.conns + 19_999) / 20_000
		}
		if n > 1 {
			for i := 0; i < n && i < 250; i++ {
				p.sources = append(p.sources, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 1, byte(1 + i)}})
			}
		}
	}
	return p, nil
}

// sockaddr resolves the host of u.
func sockaddr(u *url.URL) (unix.Sockaddr, net.IP, error) {
	host, port := u.Hostname(), u.Port()
	if port == "" {
		port = "80"
	}
	pn, err := strconv.Atoi(port)
	if err != nil || pn < 1 || pn > 65535 {
		return nil, nil, fmt.Errorf("bench: bad port in %s", u)
	}
	ips, err := net.LookupIP(host)
	if err != nil || len(ips) == 0 {
		return nil, nil, fmt.Errorf("bench: resolve %s: %v", host, err)
	}
	ip := ips[0]
	for _, c := range ips {
		if c.To4() != nil {
			ip = c
			break
		}
	}
	if ip4 := ip.To4(); ip4 != nil {
		sa := &unix.SockaddrInet4{Port: pn}
		copy(sa.Addr[:], ip4)
		return sa, ip, nil
	}
	sa := &unix.SockaddrInet6{Port: pn}
	copy(sa.Addr[:], ip.To16())
	return sa, ip, nil
}

// raiseFileLimit lifts RLIMIT_NOFILE to n when it is lower (Go already
// raises the soft limit to the hard one; root may raise the hard one).
func raiseFileLimit(n int) {
	var lim unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &lim) != nil || lim.Cur >= uint64(n) {
		return
	}
	want := unix.Rlimit{Cur: uint64(n), Max: max(lim.Max, uint64(n))}
	if unix.Setrlimit(unix.RLIMIT_NOFILE, &want) != nil {
		want = unix.Rlimit{Cur: lim.Max, Max: lim.Max}
		_ = unix.Setrlimit(unix.RLIMIT_NOFILE, &want)
	}
}

// judge decides whether the run passed.
func judge(o *options, r *result) {
	r.OK = true
	var why []string
	if m := r.Messages; m != nil {
		if n := m.Lost + m.Duplicated + m.OutOfOrder + m.Foreign + m.Malformed; n != 0 {
			why = append(why, fmt.Sprintf("%d lost, %d duplicated, %d out of order, %d foreign, %d malformed",
				m.Lost, m.Duplicated, m.OutOfOrder, m.Foreign, m.Malformed))
		}
		// Refused publishes are not lost, but a run at a rate the server
		// refuses did not measure that rate. A ramp ends on such a step.
		if n := m.ServerErrors + m.HTTPErrors; n != 0 && r.Ramp == nil {
			why = append(why, fmt.Sprintf("%d errors from the server (%d /ws, %d HTTP)", n, m.ServerErrors, m.HTTPErrors))
		}
	}
	if s := r.Stored; s != nil && (s.Lost+s.Duplicated+s.OutOfOrder != 0 || !s.Complete) {
		why = append(why, fmt.Sprintf("store: %d lost, %d duplicated, %d out of order", s.Lost, s.Duplicated, s.OutOfOrder))
	}
	if rp := r.Ramp; rp != nil && rp.Best == nil {
		why = append(why, "ramp: no step passed")
	}
	if len(why) > 0 && !o.tolerate {
		r.OK, r.Failure = false, strings.Join(why, "; ")
	}
}
