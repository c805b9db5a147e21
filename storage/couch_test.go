package storage

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chatgg/chatgg/codec"
	"github.com/chatgg/chatgg/internal/testsvc"
)

// couchDBURL returns the URL of a new database name on server, deleted in
// t.Cleanup (after the stores of the test are closed).
func couchDBURL(t testing.TB, server string) string {
	t.Helper()
	name := testsvc.UniqueName(t, "storage")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodDelete, server+"/"+name, nil)
		if err != nil {
			t.Error(err)
			return
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Logf("delete database %s: %v", name, err) // the server may be gone
			return
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusNotFound {
			t.Errorf("delete database %s: %s", name, resp.Status)
		}
	})
	return server + "/" + name
}

func newCouch(t testing.TB, cfg CouchConfig) *Couch {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := NewCouch(ctx, cfg)
	if err != nil {
		t.Fatalf("NewCouch(%s): %v", cfg.URL, err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Error(err)
		}
	})
	return c
}

func openCouch(t *testing.T) Store {
	t.Helper()
	return newCouch(t, CouchConfig{URL: couchDBURL(t, testsvc.Couch(t))})
}

func TestCouchConformance(t *testing.T) { testConformance(t, openCouch) }

func TestSplitCouchURL(t *testing.T) {
	for _, tc := range []struct {
		in, base, name, user string
		wantErr              bool
	}{
		{in: "http://admin:admin@127.0.0.1:5984/chatgg", base: "http://127.0.0.1:5984", name: "chatgg", user: "admin"},
		{in: "http://127.0.0.1:5984", base: "http://127.0.0.1:5984", name: DefaultCouchDB},
		{in: "http://127.0.0.1:5984/", base: "http://127.0.0.1:5984", name: DefaultCouchDB},
		{in: "https://h:6984/msgs/", base: "https://h:6984", name: "msgs"},
		{in: "http://h/couch/prefix/db1", base: "http://h/couch/prefix", name: "db1"},
		{in: "http://h/a%2Fb", base: "http://h", name: "a/b"},
		{in: "http://u:p%40ss@h/db?x=1", base: "http://h", name: "db", user: "u"},
		{in: "ftp://h/db", wantErr: true},
		{in: "127.0.0.1:5984/db", wantErr: true},
		{in: "http://h/%zz", wantErr: true},
	} {
		t.Run(tc.in, func(t *testing.T) {
			base, user, name, err := splitCouchURL(tc.in)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("splitCouchURL(%q) = %q, %q, want an error", tc.in, base, name)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			gotUser := ""
			if user != nil {
				gotUser = user.Username()
			}
			if base != tc.base || name != tc.name || gotUser != tc.user {
				t.Errorf("splitCouchURL(%q) = %q, user %q, %q; want %q, user %q, %q",
					tc.in, base, gotUser, name, tc.base, tc.user, tc.name)
			}
		})
	}
}

func TestNewCouchIsIdempotent(t *testing.T) {
	url := couchDBURL(t, testsvc.Couch(t))
	a := newCouch(t, CouchConfig{URL: url})
	store(t, a, msgs("room", 0, 3))
	// A second node starting on the same database finds it and its index.
	b := newCouch(t, CouchConfig{URL: url})
	sameIDs(t, "History through the second store", history(t, b, "room", "", 10), ids(msgs("room", 0, 3)))
}

func TestNewCouchFailsWhenUnreachable(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	url := "http://127.0.0.1:" + strconv.Itoa(testsvc.FreePort(t)) + "/chatgg"
	c, err := NewCouch(ctx, CouchConfig{URL: url, RequestTimeout: 2 * time.Second})
	if err == nil {
		c.Close()
		t.Fatal("NewCouch of a port nobody listens on succeeded")
	}
}

// TestCouchStoresJSONCompactly checks the document as CouchDB holds it: the
// message's JSON value itself, without the publisher's whitespace.
func TestCouchStoresJSONCompactly(t *testing.T) {
	url := couchDBURL(t, testsvc.Couch(t))
	c := newCouch(t, CouchConfig{URL: url})
	m := &codec.Message{ID: testID(0), Topic: "room", TS: baseMs, Kind: codec.KindJSON,
		Data: []byte("{ \"text\" : \"hi\",\n  \"list\": [ 1, 2 ] }")}
	store(t, c, []*codec.Message{m})

	// The document's _id is "m!" + topic + "!" + ID (see couchDocID).
	resp, err := http.Get(url + "/m!room!" + m.ID)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET document: %s", resp.Status)
	}
	var doc map[string]json.RawMessage
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil {
		t.Fatal(err)
	}
	const compact = `{"text":"hi","list":[1,2]}`
	if got := string(doc["data"]); got != compact {
		t.Errorf("stored data = %s, want %s", got, compact)
	}
	for field, want := range map[string]string{"topic": `"room"`, "id": strconv.Quote(m.ID), "kind": `"json"`, "ts": strconv.FormatInt(baseMs, 10)} {
		if got := string(doc[field]); got != want {
			t.Errorf("stored %s = %s, want %s", field, got, want)
		}
	}
	got := history(t, c, "room", "", 1)
	if len(got) != 1 || string(got[0].Data) != compact {
		t.Errorf("History data = %q, want %s", ids(got), compact)
	} else {
		t.Logf("JSON data comes back as %s", got[0].Data)
	}
}

func TestCouchRejectsInvalidJSONData(t *testing.T) {
	c := openCouch(t)
	bad := &codec.Message{ID: testID(9), Topic: "room", Kind: codec.KindJSON, Data: []byte(`{"open":`)}
	empty := &codec.Message{ID: testID(10), Topic: "room", Kind: codec.KindJSON}
	err := c.Store(testCtx(t), append(msgs("room", 0, 2), bad, empty))
	if !errors.Is(err, ErrBadMessage) {
		t.Fatalf("Store = %v, want ErrBadMessage", err)
	}
	sameIDs(t, "History", history(t, c, "room", "", 10), ids(msgs("room", 0, 2)))
}

// TestCouchStoreFailsWhileServerIsDown stops the server under a store: Store
// must fail (the worker retries) rather than report success. Once a server
// is back, the retried batch is stored once.
func TestCouchStoreFailsWhileServerIsDown(t *testing.T) {
	p := testsvc.NewCouch(t)
	url := couchDBURL(t, p.URL())
	c := newCouch(t, CouchConfig{URL: url, RequestTimeout: 3 * time.Second})
	store(t, c, msgs("room", 0, 5))

	p.Stop()
	ctx := testCtx(t)
	batch := msgs("room", 5, 10)
	if err := c.Store(ctx, batch); err == nil {
		t.Fatal("Store with the server stopped = nil, want an error")
	} else {
		t.Logf("Store with the server stopped: %v", err)
	}
	if err := c.Ping(ctx); err == nil {
		t.Error("Ping with the server stopped = nil, want an error")
	}
	if _, err := c.History(ctx, "room", "", 10); err == nil {
		t.Error("History with the server stopped = nil error, want one")
	}

	p.Start()
	// The dedicated server is in memory: it comes back empty. A restarted
	// node recreates the database; the old store then works again.
	newCouch(t, CouchConfig{URL: url})
	// The worker retries the failed batch, maybe more than once.
	store(t, c, batch)
	store(t, c, batch)
	sameIDs(t, "History after restart", history(t, c, "room", "", 100), ids(batch))
}

// faultProxy sits between a store and CouchDB and breaks _bulk_docs
// responses on demand.
type faultProxy struct {
	// dropBulk is how many _bulk_docs responses to replace with a 502 after
	// CouchDB has processed the request: the write happened, the caller
	// cannot know.
	dropBulk atomic.Int32
	// rejectBulk is how many _bulk_docs responses to rewrite so that every
	// successful document appears rejected with a non-conflict error.
	rejectBulk atomic.Int32
	// bulkCalls counts _bulk_docs requests.
	bulkCalls atomic.Int32
	srv       *httptest.Server
}

func newFaultProxy(t *testing.T, target string) *faultProxy {
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	fp := &faultProxy{}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.ModifyResponse = func(resp *http.Response) error {
		if !strings.HasSuffix(resp.Request.URL.Path, "/_bulk_docs") {
			return nil
		}
		fp.bulkCalls.Add(1)
		if fp.dropBulk.Add(-1) >= 0 {
			return errors.New("injected: response lost")
		}
		if fp.rejectBulk.Add(-1) >= 0 {
			var results []map[string]any
			if err := json.NewDecoder(resp.Body).Decode(&results); err != nil {
				return err
			}
			resp.Body.Close()
			for _, r := range results {
				if r["error"] == nil {
					delete(r, "ok")
					delete(r, "rev")
					r["error"], r["reason"] = "unknown_error", "injected"
				}
			}
			b, _ := json.Marshal(results)
			resp.Body = io.NopCloser(bytes.NewReader(b))
			resp.ContentLength = int64(len(b))
			resp.Header.Set("Content-Length", strconv.Itoa(len(b)))
		}
		return nil
	}
	rp.ErrorHandler = func(w http.ResponseWriter, _ *http.Request, err error) {
		http.Error(w, err.Error(), http.StatusBadGateway)
	}
	fp.srv = httptest.NewServer(rp)
	t.Cleanup(fp.srv.Close)
	return fp
}

// TestCouchLostResponseIsRetriedWithoutDuplicates: CouchDB stored the
// batch but the response was lost. Store fails; the retry sees conflicts,
// which count as stored, so each message is there once.
func TestCouchLostResponseIsRetriedWithoutDuplicates(t *testing.T) {
	server := testsvc.Couch(t)
	fp := newFaultProxy(t, server)
	name := strings.TrimPrefix(couchDBURL(t, server), server)
	c := newCouch(t, CouchConfig{URL: fp.srv.URL + name})

	batch := msgs("room", 0, 20)
	fp.dropBulk.Store(1)
	if err := c.Store(testCtx(t), batch); err == nil {
		t.Fatal("Store with a lost response = nil, want an error")
	}
	// The next batch overlaps the lost one, as a retry plus new messages.
	store(t, c, msgs("room", 10, 30))
	store(t, c, batch)
	sameIDs(t, "History", history(t, c, "room", "", 100), ids(msgs("room", 0, 30)))
	assertDocCount(t, server+name, 30)
}

// TestCouchRejectedDocsAreRetried: documents rejected with an error other
// than conflict are written again within the same Store call.
func TestCouchRejectedDocsAreRetried(t *testing.T) {
	server := testsvc.Couch(t)
	fp := newFaultProxy(t, server)
	name := strings.TrimPrefix(couchDBURL(t, server), server)
	c := newCouch(t, CouchConfig{URL: fp.srv.URL + name})

	// The first response reports every document rejected, although
	// CouchDB stored them: the second attempt gets conflicts.
	fp.rejectBulk.Store(1)
	batch := msgs("room", 0, 10)
	store(t, c, batch)
	if n := fp.bulkCalls.Load(); n != 2 {
		t.Errorf("_bulk_docs requests = %d, want 2", n)
	}
	sameIDs(t, "History", history(t, c, "room", "", 100), ids(batch))
	assertDocCount(t, server+name, 10)
}

// TestCouchPersistentRejectionIsReported: documents a validation function
// refuses are tried couchDocAttempts times, then named in a *BulkError; the
// rest of the batch is stored.
func TestCouchPersistentRejectionIsReported(t *testing.T) {
	server := testsvc.Couch(t)
	fp := newFaultProxy(t, server)
	dbURL := couchDBURL(t, server)
	c := newCouch(t, CouchConfig{URL: fp.srv.URL + strings.TrimPrefix(dbURL, server)})
	ddoc := `{"validate_doc_update":"function(doc){ if (doc.topic === 'closed') { throw({forbidden: 'closed topic'}); } }"}`
	req, _ := http.NewRequest(http.MethodPut, dbURL+"/_design/reject", strings.NewReader(ddoc))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("PUT validation design doc: %s", resp.Status)
	}

	closed := msgs("closed", 100, 102)
	batch := append(msgs("room", 0, 3), closed...)
	err = c.Store(testCtx(t), batch)
	var be *BulkError
	if !errors.As(err, &be) {
		t.Fatalf("Store = %v, want a *BulkError", err)
	}
	if fmt.Sprint(be.Failed) != fmt.Sprint(ids(closed)) {
		t.Errorf("BulkError.Failed = %v, want %v", be.Failed, ids(closed))
	}
	if !strings.HasPrefix(err.Error(), "storage: bulk write ") || !strings.Contains(err.Error(), "closed topic") {
		t.Errorf("error text %q", err)
	}
	if n := fp.bulkCalls.Load(); n != couchDocAttempts {
		t.Errorf("_bulk_docs requests = %d, want %d", n, couchDocAttempts)
	}
	sameIDs(t, "History", history(t, c, "room", "", 100), ids(msgs("room", 0, 3)))
}

// assertDocCount checks the number of message documents in the database
// (design documents excluded), which catches duplicates under other _ids.
func assertDocCount(t *testing.T, dbURL string, want int) {
	t.Helper()
	resp, err := http.Get(dbURL + "/_all_docs")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var all struct {
		Rows []struct {
			ID string `json:"id"`
		} `json:"rows"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&all); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, r := range all.Rows {
		if !strings.HasPrefix(r.ID, "_design/") {
			n++
		}
	}
	if n != want {
		t.Errorf("documents = %d, want %d", n, want)
	}
}

// TestNewCouchSendsURLCredentialsAsBasicAuth uses a fake server: PouchDB
// Server runs without users and refuses any credentials.
func TestNewCouchSendsURLCredentialsAsBasicAuth(t *testing.T) {
	var requests atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		if u, p, ok := r.BasicAuth(); !ok || u != "admin" || p != "s3cret" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		switch {
		case r.Method == http.MethodHead && r.URL.Path == "/msgs":
			w.WriteHeader(http.StatusOK)
		default:
			http.Error(w, `{"error":"not_found"}`, http.StatusNotFound)
		}
	}))
	defer srv.Close()
	u, _ := url.Parse(srv.URL + "/msgs")
	u.User = url.UserPassword("admin", "s3cret")
	c := newCouch(t, CouchConfig{URL: u.String()})
	if n := requests.Load(); n != 1 {
		t.Errorf("requests = %d, want 1 (HEAD database)", n)
	}
	err := c.Ping(t.Context()) // the fake has no GET /msgs
	if err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("Ping = %v, want an error without the password", err)
	}
}
