package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"github.com/chatgg/chatgg/codec"
	"github.com/chatgg/chatgg/internal/testsvc"
)

// storedDoc is a document as the store mode writes it, with the fields of
// storage/couch.go's couchDoc.
type storedDoc struct {
	DocID string          `json:"_id"`
	Topic string          `json:"topic"`
	ID    string          `json:"id"`
	TS    int64           `json:"ts"`
	Kind  string          `json:"kind"`
	Data  json.RawMessage `json:"data"`
}

func newTestWriter(node uint16, topics ...string) *storeWriter {
	w := &storeWriter{node: node, size: 64, hist: hdrhistogram.New(histMinMicros, histMaxMicros, histDigits)}
	for _, t := range topics {
		b, _ := json.Marshal(t)
		w.topics = append(w.topics, b)
	}
	return w
}

func TestAppendBatchWritesChatggDocuments(t *testing.T) {
	w := newTestWriter(3, "bench.0", "bench.1")
	const ms = 1_700_000_000_123
	body := w.appendBatch(nil, 5, 7, ms)
	var req struct {
		Docs []storedDoc `json:"docs"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		t.Fatalf("body is not JSON: %v\n%s", err, body)
	}
	if len(req.Docs) != 5 {
		t.Fatalf("%d docs, want 5", len(req.Docs))
	}
	prev := ""
	for i, d := range req.Docs {
		if !codec.ValidID(d.ID) || d.DocID != "m!"+d.Topic+"!"+d.ID || d.ID <= prev {
			t.Fatalf("doc %d: _id %q topic %q id %q after %q: want _id m!topic!id, id valid and increasing", i, d.DocID, d.Topic, d.ID, prev)
		}
		prev = d.ID
		if codec.IDTime(d.ID) != ms || d.TS != ms {
			t.Fatalf("doc %d: id time %d, ts %d; want %d", i, codec.IDTime(d.ID), d.TS, ms)
		}
		if want := fmt.Sprintf("bench.%d", (7+i)%2); d.Topic != want {
			t.Fatalf("doc %d: topic %q, want %q", i, d.Topic, want)
		}
		var data string
		if d.Kind != "json" || json.Unmarshal(d.Data, &data) != nil || len(data) != 64 {
			t.Fatalf("doc %d: kind %q data %s: want a 64-byte JSON string, as /ws publishes it", i, d.Kind, d.Data)
		}
		s, err := parsePayload([]byte(data))
		if err != nil || s.pub != 3 || s.seq != uint64(i+1) {
			t.Fatalf("doc %d: payload %+v, %v", i, s, err)
		}
	}
	// The body buffer is reused: a second batch replaces the first.
	body = w.appendBatch(body[:0], 1, 0, ms)
	if bytes.Count(body, []byte(`"_id"`)) != 1 {
		t.Fatalf("second batch: %s", body)
	}
}

func TestNextIDIncreasesLikeIDGen(t *testing.T) {
	w := newTestWriter(1)
	var buf [codec.IDLen]byte
	id := func(ms int64) string { return string(w.nextID(buf[:0], ms)) }
	a := id(1000)
	b := id(1000) // same millisecond: the sequence counts
	c := id(999)  // the clock stepped back: still after b
	d := id(1001) // a new millisecond: the sequence restarts
	if !(a < b && b < c && c < d) || codec.IDTime(c) != 1000 || codec.IDTime(d) != 1001 {
		t.Fatalf("ids %s %s %s %s", a, b, c, d)
	}
	w.seq = 1<<24 - 1 // sequence exhausted: the time moves on
	if e := id(1001); codec.IDTime(e) != 1002 || e <= d {
		t.Fatalf("after an exhausted sequence: %s", e)
	}
	other := newTestWriter(2)
	if x := string(other.nextID(buf[:0], 1000)); x == a {
		t.Fatalf("writers 1 and 2 made the same id %s", x)
	}
}

func TestCountBulk(t *testing.T) {
	cases := []struct {
		name                    string
		body                    string
		n                       int
		ok, conflicts, rejected int
		err                     bool
	}{
		{"all written", `[{"ok":true,"id":"a","rev":"1-x"},{"ok":true,"id":"b","rev":"1-y"}]`, 2, 2, 0, 0, false},
		{"spaces", `[ {"ok": true, "id": "a"} ]`, 1, 1, 0, 0, false},
		{"conflict is stored", `[{"id":"a","error":"conflict","reason":"Document update conflict"},{"ok":true,"id":"b"}]`, 2, 1, 1, 0, false},
		{"other error", `[{"id":"a","error":"forbidden","reason":"no"},{"ok":true,"id":"b"}]`, 2, 1, 0, 1, false},
		{"neither ok nor error", `[{"id":"a"}]`, 1, 0, 0, 1, false},
		{"missing answers", `[{"ok":true,"id":"a"}]`, 3, 1, 0, 2, false},
		{"too many answers", `[{"ok":true},{"ok":true}]`, 1, 2, 0, 0, true},
		{"not JSON", `<html>`, 1, 0, 0, 0, true},
		{"an object", `{"error":"bad_request"}`, 1, 0, 0, 0, true},
	}
	var scratch []bulkResult
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ok, c, r, err := countBulk([]byte(tc.body), tc.n, &scratch)
			if (err != nil) != tc.err {
				t.Fatalf("err %v, want error %v", err, tc.err)
			}
			if err == nil && (ok != tc.ok || c != tc.conflicts || r != tc.rejected) {
				t.Fatalf("ok %d conflicts %d rejected %d; want %d %d %d", ok, c, r, tc.ok, tc.conflicts, tc.rejected)
			}
		})
	}
}

// fakeCouch answers PUT /db and POST /db/_bulk_docs like CouchDB, keeping
// the ids it was sent.
type fakeCouch struct {
	mu       sync.Mutex
	ids      map[string]int
	batches  []int
	status   int           // of _bulk_docs answers; 0: 201
	conflict bool          // answer every document with a conflict
	delay    time.Duration // before each _bulk_docs answer
	inFlight int
	maxIn    int
}

func (f *fakeCouch) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.Method == http.MethodPut && r.URL.Path == "/db":
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, `{"ok":true}`)
	case r.Method == http.MethodPost && r.URL.Path == "/db/_bulk_docs":
		f.mu.Lock()
		f.inFlight++
		f.maxIn = max(f.maxIn, f.inFlight)
		f.mu.Unlock()
		defer func() { f.mu.Lock(); f.inFlight--; f.mu.Unlock() }()
		time.Sleep(f.delay)
		if r.Header.Get("Content-Type") != "application/json" {
			http.Error(w, "content type", http.StatusUnsupportedMediaType)
			return
		}
		var req struct {
			Docs []storedDoc `json:"docs"`
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if f.status != 0 {
			http.Error(w, `{"error":"boom"}`, f.status)
			return
		}
		f.mu.Lock()
		f.batches = append(f.batches, len(req.Docs))
		var b strings.Builder
		b.WriteByte('[')
		for i, d := range req.Docs {
			if i > 0 {
				b.WriteByte(',')
			}
			f.ids[d.DocID]++
			if f.conflict {
				fmt.Fprintf(&b, `{"id":%q,"error":"conflict","reason":"Document update conflict"}`, d.DocID)
			} else {
				fmt.Fprintf(&b, `{"ok":true,"id":%q,"rev":"1-abc"}`, d.DocID)
			}
		}
		b.WriteByte(']')
		f.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, b.String())
	default:
		http.NotFound(w, r)
	}
}

func startFakeCouch(t *testing.T, f *fakeCouch) string {
	t.Helper()
	f.ids = map[string]int{}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return srv.URL + "/db"
}

func TestStoreWritesEveryDocumentOnceInBatches(t *testing.T) {
	f := &fakeCouch{delay: 5 * time.Millisecond}
	u := startFakeCouch(t, f)
	code, m, r := runTool(t, "store", "--couch-url", u, "--batch", "100", "--inflight", "3", "--messages", "1050")
	if code != exitOK {
		t.Fatalf("exit %d", code)
	}
	hasPath(t, m, "mode", "url", "window_s", "store.batch", "store.inflight", "store.written", "store.docs_per_sec",
		"store.batch_latency_ms.p50", "store.batch_latency_ms.p99", "store.complete", "client_cpu.percent", "ok")
	s := r.Store
	if !s.Complete || s.Written != 1050 || s.Batches != 11 || s.Rejected+s.Failed+s.Conflicts != 0 || !r.OK {
		t.Fatalf("store result %+v", s)
	}
	if s.DocsPerSec <= 0 || s.BatchLatency.Count != 11 || s.BatchLatency.P50 < 5 {
		t.Fatalf("rate %v, latency %+v: want 11 batches of at least 5 ms", s.DocsPerSec, s.BatchLatency)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.ids) != 1050 {
		t.Fatalf("the store got %d distinct ids, want 1050", len(f.ids))
	}
	for id, n := range f.ids {
		if n != 1 {
			t.Fatalf("id %s written %d times", id, n)
		}
	}
	short := 0
	for _, n := range f.batches {
		if n != 100 {
			short++
			if n != 50 {
				t.Fatalf("a batch of %d", n)
			}
		}
	}
	if short != 1 || f.maxIn > 3 || f.maxIn < 2 {
		t.Fatalf("batches %v, at most %d in flight: want one of 50 and 2 to 3 in flight", f.batches, f.maxIn)
	}
}

func TestStoreCountsConflictsAsStored(t *testing.T) {
	u := startFakeCouch(t, &fakeCouch{conflict: true})
	code, _, r := runTool(t, "store", "--couch-url", u, "--batch", "10", "--messages", "30")
	if code != exitOK || r.Store.Conflicts != 30 || r.Store.Written != 0 || !r.Store.Complete {
		t.Fatalf("exit %d, %+v", code, r.Store)
	}
}

func TestStoreFailsOnFailedRequests(t *testing.T) {
	u := startFakeCouch(t, &fakeCouch{status: http.StatusInternalServerError})
	code, _, r := runTool(t, "store", "--couch-url", u, "--batch", "10", "--messages", "30")
	if code != exitIssues || r.OK || r.Store.Failed != 30 || r.Store.FailedBatches != 3 || len(r.Errors) == 0 {
		t.Fatalf("exit %d, ok %v, %+v, errors %v", code, r.OK, r.Store, r.Errors)
	}
}

func TestStoreStopsAtDuration(t *testing.T) {
	u := startFakeCouch(t, &fakeCouch{delay: 50 * time.Millisecond})
	start := time.Now()
	code, _, r := runTool(t, "store", "--couch-url", u, "--batch", "10", "--inflight", "2", "--messages", "1000000", "--duration", "200ms")
	if code != exitOK || r.Store.Complete || r.Store.Written == 0 || r.Store.Written > 200 {
		t.Fatalf("exit %d, %+v: want some written, not all", code, r.Store)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("took %v", d)
	}
}

func TestStoreRejectsBadSettings(t *testing.T) {
	for _, args := range [][]string{
		{"--couch-url", "http://127.0.0.1:1"},     // no database
		{"--couch-url", "http://127.0.0.1:1/a/b"}, // two path elements
		{"--couch-url", "ftp://127.0.0.1:1/db"},   // scheme
		{"--batch", "0"}, {"--batch", "10001"},    //
		{"--inflight", "0"}, {"--inflight", "65"}, //
		{"--messages", "0"}, {"--duration", "0s"}, //
		{"--size", "10"}, {"--topics", "0"}, //
		{"--progress", "maybe"}, {"--no-such-flag"}, //
		{"--couch-url", "http://127.0.0.1:1/db", "x"}, // an argument
	} {
		var out, errb bytes.Buffer
		if code := run(context.Background(), append([]string{"store"}, args...), &out, &errb); code != exitSetup {
			t.Errorf("store %v: exit %d, want %d", args, code, exitSetup)
		}
	}
	// Nothing listens: the database cannot be created.
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"store", "--couch-url", "http://127.0.0.1:1/db"}, &out, &errb); code != exitSetup {
		t.Errorf("unreachable store: exit %d", code)
	}
}

// TestStoreAgainstPouchDB writes to the CouchDB-compatible server chatgg's
// integration tests use, and reads the documents back.
func TestStoreAgainstPouchDB(t *testing.T) {
	if testing.Short() {
		t.Skip("starts pouchdb-server")
	}
	couch := testsvc.NewCouch(t)
	db := couch.URL() + "/" + strings.ToLower(testsvc.UniqueName(t, "store"))
	code, _, r := runTool(t, "store", "--couch-url", db, "--batch", "50", "--inflight", "2", "--messages", "120", "--topics", "2")
	if code != exitOK || r.Store.Written != 120 || !r.Store.Complete {
		t.Fatalf("exit %d, %+v", code, r.Store)
	}
	// Again into the same database: new ids, nothing conflicts.
	code, _, r = runTool(t, "store", "--couch-url", db, "--batch", "50", "--messages", "10")
	if code != exitOK || r.Store.Written != 10 || r.Store.Conflicts != 0 {
		t.Fatalf("second run: exit %d, %+v", code, r.Store)
	}
	resp, err := http.Get(db + "/_all_docs?include_docs=true&limit=1")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var all struct {
		Total int `json:"total_rows"`
		Rows  []struct {
			Doc storedDoc `json:"doc"`
		} `json:"rows"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&all); err != nil {
		t.Fatal(err)
	}
	if all.Total != 130 || len(all.Rows) != 1 {
		t.Fatalf("%d documents stored, want 130", all.Total)
	}
	d := all.Rows[0].Doc
	if d.DocID != "m!"+d.Topic+"!"+d.ID || !codec.ValidID(d.ID) || d.Kind != "json" || !strings.HasPrefix(d.Topic, "bench-") {
		t.Fatalf("stored %+v", d)
	}
}
