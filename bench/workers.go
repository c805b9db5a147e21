package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// With --worker-metrics, e2e also watches chatgg's side of storing: the
// workers' /metrics (chatgg_store_messages_total, _batches_total,
// _batch_seconds) and the queue (GET /v1/queue on --http-url), sampled
// every --poll (at most workerWatchEvery). History shows a message only once the store has indexed
// it, which may lag the write; the workers' counters say when the writes
// were done, how full their batches were, how busy each worker was, and
// how deep the queue got. This is chatgg-specific, like the history API
// e2e polls anyway.

// workerWatchEvery is the longest interval between two samples of the
// workers and the queue (--poll when shorter): each is a request to every
// worker and one to the queue, cheap enough at 10 a second.
const workerWatchEvery = 100 * time.Millisecond

// storeMetrics are one worker's store counters.
type storeMetrics struct {
	Messages     float64 // chatgg_store_messages_total
	Batches      float64 // chatgg_store_batches_total, every result
	Errors       float64 // chatgg_store_batches_total{result="error"}
	BatchSeconds float64 // chatgg_store_batch_seconds_sum
}

func (a storeMetrics) sub(b storeMetrics) storeMetrics {
	return storeMetrics{a.Messages - b.Messages, a.Batches - b.Batches, a.Errors - b.Errors, a.BatchSeconds - b.BatchSeconds}
}

// errNoStoreMetrics is returned for a /metrics page without chatgg's store
// counters: not a chatgg worker.
var errNoStoreMetrics = errors.New("bench: no chatgg_store_messages_total in /metrics")

// parseStoreMetrics reads the store counters from a Prometheus text page.
func parseStoreMetrics(b []byte) (storeMetrics, error) {
	var m storeMetrics
	found := false
	for len(b) > 0 {
		var line []byte
		line, b, _ = bytes.Cut(b, []byte("\n"))
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		name, val, ok := bytes.Cut(line, []byte(" "))
		if !ok {
			continue
		}
		var dst *float64
		switch {
		case string(name) == "chatgg_store_messages_total":
			dst, found = &m.Messages, true
		case bytes.HasPrefix(name, []byte("chatgg_store_batches_total")):
			dst = &m.Batches
			if bytes.Contains(name, []byte(`result="error"`)) {
				v, err := strconv.ParseFloat(string(bytes.TrimSpace(val)), 64)
				if err != nil {
					return m, fmt.Errorf("bench: /metrics: %s: %w", name, err)
				}
				m.Errors += v
			}
		case string(name) == "chatgg_store_batch_seconds_sum":
			dst = &m.BatchSeconds
		default:
			continue
		}
		// A sample may carry a timestamp after the value.
		f, _, _ := bytes.Cut(bytes.TrimSpace(val), []byte(" "))
		v, err := strconv.ParseFloat(string(f), 64)
		if err != nil {
			return m, fmt.Errorf("bench: /metrics: %s: %w", name, err)
		}
		*dst += v
	}
	if !found {
		return m, errNoStoreMetrics
	}
	return m, nil
}

// workerStats is what --worker-metrics reports, in storedResult.
type workerStats struct {
	// Stored is how many messages the workers stored during the run, and
	// PerSec that over the time from the start of publishing to the last
	// sample in which the count grew (rounded up by up to one interval).
	Stored float64 `json:"stored"`
	PerSec float64 `json:"stored_per_sec"`
	// WindowS is that time, in seconds.
	WindowS float64 `json:"window_s"`
	// QueueMaxDepth is the deepest queue seen (GET /v1/queue: depth), and
	// QueueMaxProcessing the most messages held by workers at once.
	QueueMaxDepth      int64          `json:"queue_max_depth"`
	QueueMaxProcessing int64          `json:"queue_max_processing"`
	QueueErrors        int            `json:"queue_errors,omitempty"`
	Workers            []workerSample `json:"workers"`
	Samples            int            `json:"samples"`
	Errors             int            `json:"errors,omitempty"`
	FirstErr           string         `json:"first_error,omitempty"`
}

// workerSample is one worker's share of a run.
type workerSample struct {
	URL      string  `json:"url"`
	Messages float64 `json:"messages"`
	Batches  float64 `json:"batches"`
	Errors   float64 `json:"error_batches"`
	// PerBatch is Messages/Batches: how full the batches were.
	PerBatch float64 `json:"messages_per_batch"`
	// BatchSeconds is the time spent in store writes; MeanBatchMs per
	// batch; BusyPercent the share of WindowS spent writing.
	BatchSeconds float64 `json:"batch_seconds"`
	MeanBatchMs  float64 `json:"mean_batch_ms"`
	BusyPercent  float64 `json:"busy_percent"`
}

// workerWatch samples the workers' metrics and the queue. Its fields are
// its goroutine's until run returns, except lastGrowth and stored.
type workerWatch struct {
	urls     []string
	queueURL string
	client   *http.Client
	body     bytes.Buffer

	base, last []storeMetrics
	haveBase   []bool
	maxDepth   int64
	maxProc    int64
	samples    int
	errs       int
	qerrs      int
	firstErr   string

	stored     atomic.Int64 // messages stored since base, for the bar
	lastGrowth atomic.Int64 // now() of the sample in which stored last grew
}

// splitURLs splits a comma-separated list, dropping empty items.
func splitURLs(s string) []string {
	var out []string
	for _, u := range strings.Split(s, ",") {
		if u = strings.TrimSpace(u); u != "" {
			out = append(out, strings.TrimRight(u, "/"))
		}
	}
	return out
}

func newWorkerWatch(urls []string, httpBase string) *workerWatch {
	return &workerWatch{
		urls:     urls,
		queueURL: httpBase + "/v1/queue",
		client:   &http.Client{Timeout: 5 * time.Second},
		base:     make([]storeMetrics, len(urls)),
		last:     make([]storeMetrics, len(urls)),
		haveBase: make([]bool, len(urls)),
	}
}

// sample reads every worker and the queue once.
func (ww *workerWatch) sample(at int64) {
	ww.samples++
	var total float64
	for i, u := range ww.urls {
		m, err := ww.get(u)
		if err != nil {
			ww.errs++
			if ww.firstErr == "" {
				ww.firstErr = err.Error()
			}
			m = ww.last[i] // keep the last reading
		} else if !ww.haveBase[i] {
			ww.base[i], ww.haveBase[i] = m, true
		}
		ww.last[i] = m
		total += m.sub(ww.base[i]).Messages
	}
	if int64(total) > ww.stored.Load() {
		ww.stored.Store(int64(total))
		ww.lastGrowth.Store(at)
	}
	var q struct{ Depth, Processing int64 }
	if err := ww.getJSON(ww.queueURL, &q); err != nil {
		ww.qerrs++
		return
	}
	ww.maxDepth = max(ww.maxDepth, q.Depth)
	ww.maxProc = max(ww.maxProc, q.Processing)
}

func (ww *workerWatch) get(u string) (storeMetrics, error) {
	if err := ww.fetch(u); err != nil {
		return storeMetrics{}, err
	}
	m, err := parseStoreMetrics(ww.body.Bytes())
	if err != nil {
		return m, fmt.Errorf("%w (%s)", err, u)
	}
	return m, nil
}

func (ww *workerWatch) getJSON(u string, v any) error {
	if err := ww.fetch(u); err != nil {
		return err
	}
	return json.Unmarshal(ww.body.Bytes(), v)
}

// fetch GETs u into ww.body.
func (ww *workerWatch) fetch(u string) error {
	resp, err := ww.client.Get(u)
	if err != nil {
		return err
	}
	ww.body.Reset()
	_, err = io.Copy(&ww.body, io.LimitReader(resp.Body, 4<<20))
	resp.Body.Close()
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("bench: GET %s: %s", u, resp.Status)
	}
	return nil
}

// run samples every interval until stop is closed, then until the counters
// stop moving (a worker counts a batch just after the store has it, so the
// last batch may show in history a moment before it shows here), at most a
// second. The caller takes the first sample, before publishing starts.
func (ww *workerWatch) run(stop <-chan struct{}, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			for i := 0; i < 10; i++ {
				before := ww.stored.Load()
				ww.sample(now())
				if i > 0 && ww.stored.Load() == before {
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
			return
		case <-t.C:
			ww.sample(now())
		}
	}
}

// stats sums up the run that started publishing at start (now()).
func (ww *workerWatch) stats(start int64) *workerStats {
	st := &workerStats{
		Stored: float64(ww.stored.Load()), QueueMaxDepth: ww.maxDepth, QueueMaxProcessing: ww.maxProc,
		QueueErrors: ww.qerrs, Samples: ww.samples, Errors: ww.errs, FirstErr: ww.firstErr,
		Workers: []workerSample{},
	}
	if last := ww.lastGrowth.Load(); last > start {
		st.WindowS = float64(last-start) / 1e9
		st.PerSec = st.Stored / st.WindowS
	}
	for i, u := range ww.urls {
		d := ww.last[i].sub(ww.base[i])
		w := workerSample{URL: u, Messages: d.Messages, Batches: d.Batches, Errors: d.Errors, BatchSeconds: d.BatchSeconds}
		if d.Batches > 0 {
			w.PerBatch = d.Messages / d.Batches
			w.MeanBatchMs = 1000 * d.BatchSeconds / d.Batches
		}
		if st.WindowS > 0 {
			w.BusyPercent = 100 * d.BatchSeconds / st.WindowS
		}
		st.Workers = append(st.Workers, w)
	}
	return st
}
