package main

import (
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

// metricsPage is a worker's /metrics as chatgg's Prometheus registry
// writes it, trimmed.
const metricsPage = `# HELP chatgg_store_batch_seconds Duration of store batch writes.
# TYPE chatgg_store_batch_seconds histogram
chatgg_store_batch_seconds_bucket{le="0.001"} 0
chatgg_store_batch_seconds_bucket{le="+Inf"} 21
chatgg_store_batch_seconds_sum 3.5640376229999995
chatgg_store_batch_seconds_count 21
# HELP chatgg_store_batches_total Batches handed to the store by workers, by result.
# TYPE chatgg_store_batches_total counter
chatgg_store_batches_total{result="error"} 2
chatgg_store_batches_total{result="ok"} 21
# HELP chatgg_store_messages_total Messages stored by this node's worker.
# TYPE chatgg_store_messages_total counter
chatgg_store_messages_total 10055
go_goroutines 42
`

func TestParseStoreMetrics(t *testing.T) {
	cases := []struct {
		name string
		page string
		want storeMetrics
		err  error
	}{
		{"worker", metricsPage, storeMetrics{Messages: 10055, Batches: 23, Errors: 2, BatchSeconds: 3.5640376229999995}, nil},
		{"fresh worker", "chatgg_store_messages_total 0\n", storeMetrics{}, nil},
		{"with a timestamp", "chatgg_store_messages_total 7 1700000000000\n", storeMetrics{Messages: 7}, nil},
		{"scientific notation", "chatgg_store_messages_total 1.2e+06\n", storeMetrics{Messages: 1.2e6}, nil},
		{"no trailing newline", "chatgg_store_messages_total 5", storeMetrics{Messages: 5}, nil},
		{"not a worker", "go_goroutines 4\n", storeMetrics{}, errNoStoreMetrics},
		{"empty", "", storeMetrics{}, errNoStoreMetrics},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseStoreMetrics([]byte(tc.page))
			if !errors.Is(err, tc.err) || (err == nil && got != tc.want) {
				t.Fatalf("got %+v, %v; want %+v, %v", got, err, tc.want, tc.err)
			}
		})
	}
	if _, err := parseStoreMetrics([]byte("chatgg_store_messages_total x\n")); err == nil {
		t.Fatal("a malformed value was accepted")
	}
}

func TestSplitURLs(t *testing.T) {
	got := splitURLs(" http://a/metrics, ,http://b/metrics/,")
	if len(got) != 2 || got[0] != "http://a/metrics" || got[1] != "http://b/metrics" {
		t.Fatalf("%q", got)
	}
	if splitURLs("") != nil {
		t.Fatal("empty list")
	}
}

// fakeWorker serves /metrics with counters the test moves, and /v1/queue.
type fakeWorker struct {
	msgs, batches atomic.Int64
	depth         atomic.Int64
}

func (f *fakeWorker) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/metrics":
		n, b := f.msgs.Load(), f.batches.Load()
		fmt.Fprintf(w, "chatgg_store_batch_seconds_sum %g\nchatgg_store_batches_total{result=\"ok\"} %d\nchatgg_store_messages_total %d\n",
			0.1*float64(b), b, n)
	case "/v1/queue":
		fmt.Fprintf(w, `{"depth":%d,"processing":%d,"dead":0}`, f.depth.Load(), 2*f.depth.Load())
	default:
		http.NotFound(w, r)
	}
}

func TestWorkerWatchMeasuresTheWorkers(t *testing.T) {
	f1, f2 := &fakeWorker{}, &fakeWorker{}
	f1.msgs.Store(1000) // counted before the run: not this run's
	f1.batches.Store(2)
	s1, s2 := httptest.NewServer(f1), httptest.NewServer(f2)
	defer s1.Close()
	defer s2.Close()

	ww := newWorkerWatch([]string{s1.URL + "/metrics", s2.URL + "/metrics"}, s1.URL)
	start := now()
	ww.sample(start)
	f1.msgs.Add(500)
	f1.batches.Add(1)
	f2.msgs.Add(300)
	f2.batches.Add(1)
	f1.depth.Store(40)
	ww.sample(start + int64(2*time.Second))
	f1.depth.Store(0)
	ww.sample(start + int64(3*time.Second)) // nothing new: the window ends at 2 s

	st := ww.stats(start)
	if st.Stored != 800 || st.WindowS != 2 || st.PerSec != 400 {
		t.Fatalf("stored %v in %vs = %v/s; want 800 in 2s", st.Stored, st.WindowS, st.PerSec)
	}
	if st.QueueMaxDepth != 40 || st.QueueMaxProcessing != 80 || st.Samples != 3 || st.Errors+st.QueueErrors != 0 {
		t.Fatalf("%+v", st)
	}
	w1, w2 := st.Workers[0], st.Workers[1]
	if w1.Messages != 500 || w1.Batches != 1 || w1.PerBatch != 500 || w2.Messages != 300 {
		t.Fatalf("workers %+v %+v", w1, w2)
	}
	if math.Abs(w1.MeanBatchMs-100) > 1e-6 || math.Abs(w1.BusyPercent-5) > 1e-6 {
		t.Fatalf("worker 1: %.3f ms/batch, busy %.3f%%; want 100 and 5", w1.MeanBatchMs, w1.BusyPercent)
	}
}

func TestWorkerWatchCountsErrors(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "go_goroutines 3\n") // not a chatgg worker, no queue
	}))
	defer srv.Close()
	ww := newWorkerWatch([]string{srv.URL + "/metrics"}, srv.URL)
	ww.sample(now())
	st := ww.stats(now())
	if st.Errors != 1 || st.QueueErrors != 1 || st.FirstErr == "" || st.Stored != 0 || st.PerSec != 0 {
		t.Fatalf("%+v", st)
	}
}
