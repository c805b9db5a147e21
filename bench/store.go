package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"github.com/chatgg/chatgg/codec"
)

// The store mode measures a CouchDB-compatible store alone, as the
// reference for e2e (issue 5: chatgg may add at most 10% over its own
// store). It writes documents shaped like chatgg's stored messages
// (storage/couch.go, couchDoc: _id "m!" + topic + "!" + id, id a chatgg
// message id, topic, ts,
// kind "json", data the run's payload as a JSON string, as /ws publishes
// it) with _bulk_docs straight over HTTP: --batch documents per request,
// --inflight requests at once, one goroutine each, as chatgg's workers do,
// until --messages are written or --duration has passed.
//
// It is one request per batch, not per message: net/http and a reused body
// per goroutine are lean enough.

// Bounds of the store mode's flags.
const (
	maxStoreBatch    = 10_000
	maxStoreInflight = 64
	maxStoreMessages = 10_000_000
	// storeRespLimit bounds a _bulk_docs answer: about 100 bytes a document.
	storeRespLimit = 64 << 20
)

// storeOptions are the store mode's flags.
type storeOptions struct {
	couchURL    string
	batch       int
	inflight    int
	messages    int
	duration    time.Duration
	size        int
	topics      int
	topicPrefix string
	timeout     time.Duration
	pid         int
	jsonOut     bool
	progress    string
}

// storeResult is the store mode's part of a result.
type storeResult struct {
	Batch     int `json:"batch"`
	Inflight  int `json:"inflight"`
	Requested int `json:"requested"`
	// Written documents were new; Conflicts were already stored (as
	// chatgg's store counts them: stored); Rejected got another error or
	// no answer, Failed were in requests that failed as a whole.
	Written       uint64   `json:"written"`
	Conflicts     uint64   `json:"conflicts"`
	Rejected      uint64   `json:"rejected"`
	Failed        uint64   `json:"failed"`
	Batches       uint64   `json:"batches"`
	FailedBatches uint64   `json:"failed_batches"`
	DocsPerSec    float64  `json:"docs_per_sec"`
	BatchLatency  *latency `json:"batch_latency_ms"`
	// Complete is false when --duration (or a signal) ended the run
	// before --messages were sent.
	Complete bool `json:"complete"`
}

// runStore is `bench store`: it parses its own flags, writes, and reports.
func runStore(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var o storeOptions
	fs := flag.NewFlagSet("bench store", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.couchURL, "couch-url", "http://127.0.0.1:5984/bench", "database URL, http://[user:password@]host:port/db; created when missing")
	fs.IntVar(&o.batch, "batch", 500, "documents per _bulk_docs request (chatgg's --batch-size)")
	fs.IntVar(&o.inflight, "inflight", 2, "requests in flight, one goroutine each (chatgg's worker count)")
	fs.IntVar(&o.messages, "messages", 100_000, "documents to write")
	fs.DurationVar(&o.duration, "duration", time.Minute, "longest run; it stops early when --messages are written")
	fs.IntVar(&o.size, "size", 64, "payload bytes per document (38 to 65536), as e2e's --size")
	fs.IntVar(&o.topics, "topics", 1, "topics; document i is on topic i mod topics")
	fs.StringVar(&o.topicPrefix, "topic-prefix", "", "topic names are <prefix>.<i> (default bench-<random>)")
	fs.DurationVar(&o.timeout, "request-timeout", 10*time.Second, "bound on one request (chatgg's store uses 10s)")
	fs.IntVar(&o.pid, "pid", 0, "the store's pid: report its CPU over the run")
	fs.BoolVar(&o.jsonOut, "json", false, "print the result as JSON instead of a table")
	fs.StringVar(&o.progress, "progress", "auto", "progress bar on stderr: auto, on, off")
	if err := fs.Parse(args); err != nil {
		return exitSetup
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "bench: unexpected arguments %q\n", fs.Args())
		return exitSetup
	}
	if err := o.check(); err != nil {
		fmt.Fprintln(stderr, err)
		return exitSetup
	}
	res, err := storeRun(ctx, &o)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return exitSetup
	}
	if o.jsonOut {
		if err := printJSON(stdout, res); err != nil {
			fmt.Fprintln(stderr, err)
			return exitSetup
		}
	} else {
		printStoreTable(stdout, res)
	}
	if !res.OK {
		return exitIssues
	}
	return exitOK
}

// check validates the flags and fills the topic prefix.
func (o *storeOptions) check() error {
	u, err := url.Parse(o.couchURL)
	switch {
	case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
		return errors.New("bench: --couch-url must be http[s]://host:port/db")
	case strings.Trim(u.Path, "/") == "" || strings.Contains(strings.Trim(u.Path, "/"), "/"):
		return errors.New("bench: --couch-url must name one database: http://host:port/db")
	case o.batch < 1 || o.batch > maxStoreBatch:
		return fmt.Errorf("bench: --batch must be 1 to %d", maxStoreBatch)
	case o.inflight < 1 || o.inflight > maxStoreInflight:
		return fmt.Errorf("bench: --inflight must be 1 to %d", maxStoreInflight)
	case o.messages < 1 || o.messages > maxStoreMessages:
		return fmt.Errorf("bench: --messages must be 1 to %d", maxStoreMessages)
	case o.duration <= 0 || o.duration > maxDuration:
		return fmt.Errorf("bench: --duration must be in (0, %v]", maxDuration)
	case o.size < minPayloadSize || o.size > maxPayloadSize:
		return fmt.Errorf("bench: --size must be %d to %d bytes", minPayloadSize, maxPayloadSize)
	case o.topics < 1 || o.topics > maxTopics:
		return fmt.Errorf("bench: --topics must be 1 to %d", maxTopics)
	case o.timeout <= 0:
		return errors.New("bench: --request-timeout must be positive")
	case o.progress != "auto" && o.progress != "on" && o.progress != "off":
		return errors.New("bench: --progress must be auto, on or off")
	}
	if o.topicPrefix == "" {
		m := newMask()
		o.topicPrefix = fmt.Sprintf("bench-%x", m[:3])
	}
	return nil
}

// storeRun creates the database when missing, runs the writers and fills
// a result. An error means the run could not be set up.
func storeRun(ctx context.Context, o *storeOptions) (*result, error) {
	dbURL := strings.TrimRight(o.couchURL, "/")
	shown := dbURL
	if u, err := url.Parse(dbURL); err == nil {
		shown = u.Redacted()
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxIdleConnsPerHost = o.inflight // one kept-alive connection per writer
	client := &http.Client{Transport: transport, Timeout: o.timeout}
	defer transport.CloseIdleConnections()
	if err := ensureDB(ctx, client, dbURL); err != nil {
		return nil, err
	}

	topics := make([][]byte, o.topics)
	for i := range topics {
		topics[i], _ = json.Marshal(fmt.Sprintf("%s.%d", o.topicPrefix, i))
	}
	sh := &storeShared{batch: o.batch, total: int64(o.messages), deadline: time.Now().Add(o.duration)}
	ws := make([]*storeWriter, o.inflight)
	for i := range ws {
		ws[i] = &storeWriter{
			sh: sh, node: uint16(i), client: client, url: dbURL + "/_bulk_docs",
			topics: topics, size: o.size, hist: hdrhistogram.New(histMinMicros, histMaxMicros, histDigits),
		}
	}

	b := newBar(o.progress, o.duration, "store")
	a := sampleCPU(o.pid)
	start := time.Now()
	var wg sync.WaitGroup
	for _, w := range ws {
		wg.Go(func() { w.run(ctx) })
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	t := time.NewTicker(200 * time.Millisecond)
wait:
	for {
		select {
		case <-done:
			break wait
		case <-t.C:
			b.set(time.Since(start), fmt.Sprintf("stored %d/%d", sh.stored.Load(), o.messages))
		}
	}
	t.Stop()
	b.done()
	c := sampleCPU(o.pid)

	res := &result{
		Mode: "store", Proto: "couch", URL: shown,
		Started: start.UTC().Format(time.RFC3339), GoMaxProcs: runtime.GOMAXPROCS(0),
		Config: config{
			DurationS: o.duration.Seconds(), Topics: o.topics, Publishers: o.inflight,
			SizeBytes: o.size, Inflight: o.inflight,
		},
		PerSubscriber: []subIssues{},
	}
	sr := &storeResult{Batch: o.batch, Inflight: o.inflight, Requested: o.messages}
	hist := hdrhistogram.New(histMinMicros, histMaxMicros, histDigits)
	var last int64
	for _, w := range ws {
		hist.Merge(w.hist)
		sr.Written += w.written
		sr.Conflicts += w.conflicts
		sr.Rejected += w.rejected
		sr.Failed += w.failed
		sr.Batches += w.batches
		sr.FailedBatches += w.failedBatches
		last = max(last, w.lastDone)
		if w.firstErr != "" {
			if res.Errors == nil {
				res.Errors = map[string]uint64{}
			}
			res.Errors[w.firstErr] += w.failedBatches
		}
	}
	sr.BatchLatency = latencyOf(hist)
	stored := sr.Written + sr.Conflicts
	sr.Complete = stored == uint64(o.messages)
	// The window ends with the last answer, not when the goroutines were
	// seen to finish (up to one progress tick later).
	if last > 0 {
		res.WindowS = time.Duration(last - start.UnixNano()).Seconds()
	}
	if res.WindowS > 0 {
		sr.DocsPerSec = float64(stored) / res.WindowS
	}
	res.Store = sr
	res.ClientCPU, res.Server = between(a, c, o.pid)
	res.OK = true
	switch {
	case sr.Rejected+sr.Failed > 0:
		res.OK, res.Failure = false, fmt.Sprintf("%d documents rejected, %d in failed requests", sr.Rejected, sr.Failed)
	case stored == 0:
		res.OK, res.Failure = false, "nothing stored"
	}
	return res, nil
}

// ensureDB creates the database unless it exists.
func ensureDB(ctx context.Context, client *http.Client, dbURL string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, dbURL, nil)
	if err != nil {
		return fmt.Errorf("bench: --couch-url: %w", err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("bench: create database: %w", err)
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusCreated, http.StatusAccepted, http.StatusPreconditionFailed: // 412: it exists
		return nil
	}
	return fmt.Errorf("bench: create database: %s: %s", resp.Status, bytes.TrimSpace(body))
}

// storeShared is what the writers of a run share.
type storeShared struct {
	batch    int
	total    int64
	deadline time.Time
	claimed  atomic.Int64  // documents handed out to writers
	stored   atomic.Uint64 // documents answered ok or conflict, for the bar
}

// claim hands out the next batch: how many documents and the index of the
// first, or 0 when all are handed out.
func (sh *storeShared) claim() (n int, first int64) {
	end := sh.claimed.Add(int64(sh.batch))
	first = end - int64(sh.batch)
	if first >= sh.total {
		return 0, first
	}
	return int(min(end, sh.total) - first), first
}

// storeWriter is one writer goroutine: its fields are its own until run
// returns, except sh.
type storeWriter struct {
	sh     *storeShared
	node   uint16 // the node digits of its ids: ids of writers never collide
	client *http.Client
	url    string
	topics [][]byte // JSON strings
	size   int

	ms  int64  // time part of the last id
	seq uint32 // sequence part of the last id
	pay uint64 // payload sequence

	body  []byte       // the request, reused
	resp  bytes.Buffer // the answer, reused
	parse []bulkResult // reused

	hist                           *hdrhistogram.Histogram // batch latency, µs
	written, conflicts, rejected   uint64
	failed, batches, failedBatches uint64
	lastDone                       int64 // UnixNano of the last answer
	firstErr                       string
}

// run writes batches until none is left, the deadline passes or ctx ends.
func (w *storeWriter) run(ctx context.Context) {
	for ctx.Err() == nil && time.Now().Before(w.sh.deadline) {
		n, first := w.sh.claim()
		if n == 0 {
			return
		}
		w.body = w.appendBatch(w.body[:0], n, first, time.Now().UnixMilli())
		t0 := time.Now()
		err := w.post(ctx, n)
		t1 := time.Now()
		w.lastDone = t1.UnixNano()
		w.batches++
		_ = w.hist.RecordValue(max(t1.Sub(t0).Microseconds(), histMinMicros))
		if err != nil {
			w.failedBatches++
			w.failed += uint64(n)
			if w.firstErr == "" {
				w.firstErr = err.Error()
			}
		}
	}
}

// post sends w.body and accounts for the answer about its n documents.
func (w *storeWriter) post(ctx context.Context, n int) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.url, bytes.NewReader(w.body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	resp, err := w.client.Do(req)
	if err != nil {
		return fmt.Errorf("bench: _bulk_docs: %w", err)
	}
	w.resp.Reset()
	_, err = io.Copy(&w.resp, io.LimitReader(resp.Body, storeRespLimit))
	resp.Body.Close()
	if err != nil {
		return fmt.Errorf("bench: _bulk_docs: %w", err)
	}
	// 417: a validation function rejected documents; the answer still
	// lists each.
	if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusExpectationFailed {
		return fmt.Errorf("bench: _bulk_docs: %s", resp.Status)
	}
	ok, conflicts, rejected, err := countBulk(w.resp.Bytes(), n, &w.parse)
	if err != nil {
		return err
	}
	w.written += uint64(ok)
	w.conflicts += uint64(conflicts)
	w.rejected += uint64(rejected)
	w.sh.stored.Add(uint64(ok + conflicts))
	return nil
}

// bulkResult is one document's answer from _bulk_docs.
type bulkResult struct {
	OK    bool   `json:"ok"`
	Error string `json:"error"`
}

// countBulk reads a _bulk_docs answer about n documents: how many were
// written, how many conflicted (already stored) and how many were rejected
// otherwise or not answered. scratch is reused between calls.
func countBulk(b []byte, n int, scratch *[]bulkResult) (ok, conflicts, rejected int, err error) {
	// Unmarshal decodes into the elements it reuses without zeroing them
	// first: an error of the last batch would stick.
	rs := (*scratch)[:cap(*scratch)]
	clear(rs)
	rs = rs[:0]
	if err := json.Unmarshal(b, &rs); err != nil {
		return 0, 0, 0, fmt.Errorf("bench: _bulk_docs answer: %w", err)
	}
	*scratch = rs
	for _, r := range rs {
		switch {
		case r.Error == "conflict":
			conflicts++
		case r.Error != "" || !r.OK:
			rejected++
		default:
			ok++
		}
	}
	if len(rs) < n {
		rejected += n - len(rs)
	}
	if len(rs) > n {
		return ok, conflicts, rejected, fmt.Errorf("bench: _bulk_docs answered %d results for %d documents", len(rs), n)
	}
	return ok, conflicts, rejected, nil
}

// appendBatch appends the _bulk_docs body of n documents, the first being
// document number first of the run, accepted at Unix millisecond ms. Each
// is what storage.Couch writes for a /ws publish of the run's payload:
//
//	{"_id":"m!T!ID","topic":"T","id":ID,"ts":MS,"kind":"json","data":"cg…"}
func (w *storeWriter) appendBatch(dst []byte, n int, first, ms int64) []byte {
	dst = append(dst, `{"docs":[`...)
	for i := range n {
		if i > 0 {
			dst = append(dst, ',')
		}
		var id [codec.IDLen]byte
		w.nextID(id[:0], ms)
		w.pay++
		topic := w.topics[(first+int64(i))%int64(len(w.topics))]
		// topic is a JSON string of topic bytes only: no escapes inside.
		dst = append(dst, `{"_id":"m!`...)
		dst = append(dst, topic[1:len(topic)-1]...)
		dst = append(dst, '!')
		dst = append(dst, id[:]...)
		dst = append(dst, `","topic":`...)
		dst = append(dst, topic...)
		dst = append(dst, `,"id":"`...)
		dst = append(dst, id[:]...)
		dst = append(dst, `","ts":`...)
		dst = strconv.AppendInt(dst, ms, 10)
		dst = append(dst, `,"kind":"json","data":"`...)
		dst = appendPayload(dst, stamp{pub: uint32(w.node), seq: w.pay, sent: now()}, w.size)
		dst = append(dst, `"}`...)
	}
	return append(dst, `]}`...)
}

// nextID appends the writer's next id at Unix millisecond ms to dst, which
// has room for codec.IDLen bytes: ids of one writer strictly increase, as
// codec.IDGen's do, with the writer's index as the node.
func (w *storeWriter) nextID(dst []byte, ms int64) []byte {
	const maxSeq = 1<<24 - 1
	switch {
	case ms > w.ms:
		w.ms, w.seq = ms, 0
	case w.seq < maxSeq:
		w.seq++
	default:
		w.ms, w.seq = w.ms+1, 0
	}
	return codec.AppendID(dst, w.ms, w.node, w.seq)
}

// printStoreTable writes the human summary of a store run.
func printStoreTable(w io.Writer, r *result) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(k, v string, a ...any) { fmt.Fprintf(tw, "%s\t"+v+"\n", append([]any{k}, a...)...) }
	s, c := r.Store, r.Config
	row("mode", "store (_bulk_docs) %s", r.URL)
	row("setup", "batches of %d, %d in flight, %d topic(s), %d B payloads", s.Batch, s.Inflight, c.Topics, c.SizeBytes)
	stop := ""
	if !s.Complete {
		stop = fmt.Sprintf(" (stopped before %d: --duration %.0fs)", s.Requested, c.DurationS)
	}
	row("documents", "%d written, %d conflicts, %d rejected, %d in failed requests%s", s.Written, s.Conflicts, s.Rejected, s.Failed, stop)
	row("batches", "%d in %.2fs, %d failed", s.Batches, r.WindowS, s.FailedBatches)
	row("docs/s", "%s", num(s.DocsPerSec))
	if l := s.BatchLatency; l != nil && l.Count > 0 {
		row("batch latency ms", "p50 %.1f  p90 %.1f  p99 %.1f  max %.1f  (n=%d)", l.P50, l.P90, l.P99, l.Max, l.Count)
	}
	row("client CPU", "%.1f%% of a core (user %.2fs, sys %.2fs)", r.ClientCPU.Percent, r.ClientCPU.UserS, r.ClientCPU.SysS)
	if sv := r.Server; sv != nil {
		row("store CPU", "%.1f%% of a core (user %.2fs, sys %.2fs), RSS %s, pid %d", sv.Percent, sv.UserS, sv.SysS, mib(sv.RSSBytes), sv.PID)
	}
	if len(r.Errors) > 0 {
		row("errors", "%s", kv(r.Errors))
	}
	if r.OK {
		row("result", "OK")
	} else {
		row("result", "FAIL: %s", r.Failure)
	}
	tw.Flush()
}
