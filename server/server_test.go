package server

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/chatgg/chatgg/mq"
)

func TestSubPubUnsub(t *testing.T) {
	s := testServer(t, nil)
	a := dial(t, s, "/ws")
	b := dial(t, s, "/ws")

	a.send(`{"op":"sub","topic":"room.1","ref":"s1"}`)
	a.expect("ack", "s1")

	b.send(`{"op":"pub","topic":"room.1","data":{"text":"hi"},"ref":"p1"}`)
	ack := b.expect("ack", "p1")
	if len(ack.ID) != 22 || ack.TS == 0 {
		t.Fatalf("pub ack without id/ts: %+v", ack)
	}
	msg := a.expect("msg", "")
	if msg.Topic != "room.1" || msg.ID != ack.ID || msg.TS != ack.TS || string(msg.Data) != `{"text":"hi"}` {
		t.Fatalf("got %+v, want the message acked as %+v", msg, ack)
	}

	a.send(`{"op":"unsub","topic":"room.1","ref":"u1"}`)
	a.expect("ack", "u1")
	a.send(`{"op":"sub","topic":"room.2"}`) // no ref: no ack
	b.send(`{"op":"pub","topic":"room.1","data":1}`)
	b.send(`{"op":"pub","topic":"room.2","data":2,"ref":"p2"}`)
	b.expect("ack", "p2")
	// room.2's message arrives; room.1's, published first, never did.
	if m := a.expect("msg", ""); m.Topic != "room.2" || string(m.Data) != "2" {
		t.Fatalf("after unsub got %+v, want room.2's message", m)
	}
}

func TestPublisherReceivesOwnMessage(t *testing.T) {
	s := testServer(t, nil)
	a := dial(t, s, "/ws")
	a.send(`{"op":"sub","topic":"self","ref":"s"}`)
	a.expect("ack", "s")
	a.send(`{"op":"pub","topic":"self","data":"me"}`)
	if m := a.expect("msg", ""); string(m.Data) != `"me"` {
		t.Fatalf("got %+v", m)
	}
}

func TestRawModeAndJSONInterwork(t *testing.T) {
	s := testServer(t, nil)
	raw := dial(t, s, "/raw/lobby")
	j := dial(t, s, "/ws")
	j.send(`{"op":"sub","topic":"lobby","ref":"s"}`)
	j.expect("ack", "s")
	eventually(t, 2*time.Second, "raw subscription", func() bool { return s.engine.Topics()["lobby"] == 2 })

	raw.send("plain text")
	if m := j.expect("msg", ""); string(m.Data) != `"plain text"` {
		t.Fatalf("raw text reached /ws as %s", m.Data)
	}
	typ, got := raw.read() // raw publishers receive their own message too
	if typ != websocket.TextMessage || string(got) != "plain text" {
		t.Fatalf("raw echo %d %q", typ, got)
	}

	raw.sendBinary([]byte{0, 1, 2, 255})
	m := j.expect("msg", "")
	var b64 string
	_ = json.Unmarshal(m.Data, &b64)
	if dec, _ := base64.StdEncoding.DecodeString(b64); m.Enc != "base64" || !bytes.Equal(dec, []byte{0, 1, 2, 255}) {
		t.Fatalf("binary reached /ws as %+v", m)
	}
	if typ, got := raw.read(); typ != websocket.BinaryMessage || !bytes.Equal(got, []byte{0, 1, 2, 255}) {
		t.Fatalf("raw binary echo %d %v", typ, got)
	}

	j.send(`{"op":"pub","topic":"lobby","data":{"x":1}}`)
	j.expect("msg", "")
	if typ, got := raw.read(); typ != websocket.TextMessage || string(got) != `{"x":1}` {
		t.Fatalf("JSON reached raw as %d %q", typ, got)
	}
}

func TestDefaultTopicForOtherPaths(t *testing.T) {
	s := testServer(t, func(c *Config) { c.DefaultTopic = "CHAT" })
	a := dial(t, s, "/")
	b := dial(t, s, "/anything/else")
	eventually(t, 2*time.Second, "both subscribed", func() bool { return s.engine.Topics()["CHAT"] == 2 })
	a.send("hello from a")
	for _, c := range []*client{a, b} {
		if _, got := c.read(); string(got) != "hello from a" {
			t.Fatalf("got %q", got)
		}
	}
	st, body, _ := httpDo(t, "GET", "http://"+s.HTTPAddr()+"/v1/topics", "", "")
	if st != 200 || !strings.Contains(string(body), `{"topic":"CHAT","subscribers":2}`) {
		t.Fatalf("/v1/topics: %d %s", st, body)
	}
}

func TestRESTPublishReachesSubscribers(t *testing.T) {
	s := testServer(t, nil)
	j := dial(t, s, "/ws")
	j.send(`{"op":"sub","topic":"news","ref":"s"}`)
	j.expect("ack", "s")
	raw := dial(t, s, "/raw/news")
	eventually(t, 2*time.Second, "raw subscription", func() bool { return s.engine.Topics()["news"] == 2 })
	base := "http://" + s.HTTPAddr()

	st, body, _ := httpDo(t, "POST", base+"/v1/topics/news/messages", "application/json", `{"headline":"chatgg"}`)
	if st != 202 {
		t.Fatalf("publish: %d %s", st, body)
	}
	var acc struct {
		ID string `json:"id"`
		TS int64  `json:"ts"`
	}
	if err := json.Unmarshal(body, &acc); err != nil || len(acc.ID) != 22 || acc.TS == 0 {
		t.Fatalf("publish answer %s: %v", body, err)
	}
	if m := j.expect("msg", ""); m.ID != acc.ID || string(m.Data) != `{"headline":"chatgg"}` {
		t.Fatalf("got %+v", m)
	}
	if typ, got := raw.read(); typ != websocket.TextMessage || string(got) != `{"headline":"chatgg"}` {
		t.Fatalf("raw got %d %q", typ, got)
	}

	st, body, _ = httpDo(t, "POST", base+"/v1/topics/news/messages", "application/octet-stream", "\x00bin")
	if st != 202 {
		t.Fatalf("binary publish: %d %s", st, body)
	}
	if m := j.expect("msg", ""); m.Enc != "base64" || string(m.Data) != `"`+base64.StdEncoding.EncodeToString([]byte("\x00bin"))+`"` {
		t.Fatalf("got %+v", m)
	}
	if typ, got := raw.read(); typ != websocket.BinaryMessage || string(got) != "\x00bin" {
		t.Fatalf("raw got %d %q", typ, got)
	}

	st, body, _ = httpDo(t, "POST", base+"/v1/messages", "application/json",
		`[{"topic":"news","data":1},{"topic":"bad topic!","data":2},{"topic":"news","data":3}]`)
	if st != 207 {
		t.Fatalf("batch: %d %s", st, body)
	}
	var res struct {
		Results []struct {
			ID    string `json:"id"`
			Error *struct {
				Code int `json:"code"`
			} `json:"error"`
		} `json:"results"`
	}
	if err := json.Unmarshal(body, &res); err != nil || len(res.Results) != 3 ||
		res.Results[0].ID == "" || res.Results[1].Error == nil || res.Results[1].Error.Code != 400 || res.Results[2].ID == "" {
		t.Fatalf("batch results %s", body)
	}
	for _, want := range []string{"1", "3"} {
		if m := j.expect("msg", ""); string(m.Data) != want {
			t.Fatalf("batch message %s, want %s", m.Data, want)
		}
	}
}

func TestIdempotencyKeys(t *testing.T) {
	s := testServer(t, nil)
	sub := dial(t, s, "/ws")
	sub.send(`{"op":"sub","topic":"orders","ref":"s"}`)
	sub.expect("ack", "s")
	pub := dial(t, s, "/ws")

	pub.send(`{"op":"pub","topic":"orders","data":"first","key":"k1","ref":"a"}`)
	first := pub.expect("ack", "a")
	pub.send(`{"op":"pub","topic":"orders","data":"retry","key":"k1","ref":"b"}`)
	retry := pub.expect("ack", "b")
	if retry.ID != first.ID {
		t.Fatalf("retry acked as %s, want the original %s", retry.ID, first.ID)
	}
	pub.send(`{"op":"pub","topic":"other","data":"x","key":"k1","ref":"c"}`)
	if other := pub.expect("ack", "c"); other.ID == first.ID {
		t.Fatal("the same key on another topic must be a new message")
	}

	base := "http://" + s.HTTPAddr()
	_, b1, _ := httpDo(t, "POST", base+"/v1/topics/orders/messages", "application/json", `"rest"`, "Idempotency-Key", "k2")
	_, b2, _ := httpDo(t, "POST", base+"/v1/topics/orders/messages", "application/json", `"rest again"`, "Idempotency-Key", "k2")
	if string(b1) != string(b2) {
		t.Fatalf("REST retry answered %s, first %s", b2, b1)
	}
	pub.send(`{"op":"pub","topic":"orders","data":"end","ref":"e"}`)
	pub.expect("ack", "e")

	var got []string
	for len(got) < 3 {
		got = append(got, string(sub.expect("msg", "").Data))
	}
	if want := []string{`"first"`, `"rest"`, `"end"`}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("subscriber got %v, want %v (each key once)", got, want)
	}
}

func TestHistorySurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	mod := func(c *Config) { c.DataDir = dir }
	s := testServer(t, mod)
	base := "http://" + s.HTTPAddr()
	var ids []string
	for i := 0; i < 25; i++ {
		st, body, _ := httpDo(t, "POST", base+"/v1/topics/log/messages", "application/json", fmt.Sprint(i))
		if st != 202 {
			t.Fatalf("publish %d: %d %s", i, st, body)
		}
		var acc struct{ ID string }
		_ = json.Unmarshal(body, &acc)
		ids = append(ids, acc.ID)
	}
	// Shutdown drains the queue into the store.
	stopServer(t, s)

	s2 := testServer(t, mod)
	base = "http://" + s2.HTTPAddr()
	var seen []string
	after := ""
	for page := 0; page < 10; page++ {
		st, body, _ := httpDo(t, "GET", base+"/v1/topics/log/messages?limit=10&after="+after, "", "")
		if st != 200 {
			t.Fatalf("history: %d %s", st, body)
		}
		var p struct {
			Messages []frame `json:"messages"`
			Next     *string `json:"next"`
		}
		if err := json.Unmarshal(body, &p); err != nil {
			t.Fatal(err)
		}
		for _, m := range p.Messages {
			seen = append(seen, m.ID)
		}
		if p.Next == nil {
			break
		}
		after = *p.Next
	}
	if fmt.Sprint(seen) != fmt.Sprint(ids) {
		t.Fatalf("history after restart:\n got %v\nwant %v", seen, ids)
	}
}

func TestWebSocketErrorsKeepTheConnection(t *testing.T) {
	s := testServer(t, func(c *Config) {
		c.MaxMessageBytes = 1024
		c.PublishRate = 1
		c.PublishBurst = 2
		c.MaxTopicsPerConn = 2
	})
	c := dial(t, s, "/ws")
	cases := []struct {
		name, req string
		code      int
	}{
		{"bad JSON", `{"op":`, 400},
		{"not an object", `[1,2]`, 400},
		{"missing op", `{"topic":"a","ref":"r"}`, 400},
		{"unknown op", `{"op":"dance","topic":"a","ref":"r"}`, 405},
		{"bad topic", `{"op":"sub","topic":"no spaces","ref":"r"}`, 422},
		{"topic wrong type", `{"op":"sub","topic":7,"ref":"r"}`, 400},
		{"pub without data", `{"op":"pub","topic":"a","ref":"r"}`, 400},
		{"key too long", `{"op":"pub","topic":"a","data":1,"key":"` + strings.Repeat("k", 65) + `","ref":"r"}`, 422},
		{"oversized", `{"op":"pub","topic":"a","data":"` + strings.Repeat("x", 2000) + `","ref":"r"}`, 413},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c.t = t
			c.send(tc.req)
			f := c.expect("error", "")
			if f.Code != tc.code || f.Message == "" {
				t.Fatalf("got %+v, want code %d", f, tc.code)
			}
		})
	}
	c.t = t
	c.send(`{"op":"sub","topic":"t1","ref":"1"}`)
	c.expect("ack", "1")
	c.send(`{"op":"sub","topic":"t2","ref":"2"}`)
	c.expect("ack", "2")
	c.send(`{"op":"sub","topic":"t3","ref":"3"}`)
	if f := c.expect("error", "3"); f.Code != 403 {
		t.Fatalf("topic limit: %+v", f)
	}
	// Burst 2, then the bucket is empty.
	for i := 0; i < 3; i++ {
		c.send(fmt.Sprintf(`{"op":"pub","topic":"t1","data":%d,"ref":"p%d"}`, i, i))
	}
	var codes []string
	for len(codes) < 5 { // 2 acks, 2 msgs, 1 error, in some order
		f := c.readJSON()
		codes = append(codes, f.Op)
		if f.Op == "error" && f.Code != 429 {
			t.Fatalf("rate limit: %+v", f)
		}
	}
	if strings.Count(strings.Join(codes, ","), "error") != 1 {
		t.Fatalf("want exactly one rate-limit error, got %v", codes)
	}
	// The connection still works.
	c.send(`{"op":"unsub","topic":"t2","ref":"u"}`)
	c.expect("ack", "u")
}

func TestRESTErrors(t *testing.T) {
	s := testServer(t, func(c *Config) { c.MaxMessageBytes = 100 })
	base := "http://" + s.HTTPAddr()
	cases := []struct {
		name, method, path, ctype, body string
		status                          int
	}{
		{"unknown route", "GET", "/nope", "", "", 404},
		{"wrong method", "DELETE", "/v1/topics/a/messages", "", "", 405},
		{"wrong method on fixed route", "GET", "/v1/messages", "", "", 405},
		{"bad topic", "POST", "/v1/topics/bad%20topic/messages", "application/json", "1", 400},
		{"invalid JSON", "POST", "/v1/topics/a/messages", "application/json", "{nope", 400},
		{"too large", "POST", "/v1/topics/a/messages", "application/json", `"` + strings.Repeat("x", 200) + `"`, 413},
		{"batch not JSON", "POST", "/v1/messages", "text/plain", "[]", 415},
		{"batch malformed", "POST", "/v1/messages", "application/json", "{}", 400},
		{"batch empty", "POST", "/v1/messages", "application/json", "[]", 400},
		{"bad after", "GET", "/v1/topics/a/messages?after=zzz", "", "", 400},
		{"bad limit", "GET", "/v1/topics/a/messages?limit=5000", "", "", 400},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st, body, _ := httpDo(t, tc.method, base+tc.path, tc.ctype, tc.body)
			var e struct {
				Error struct {
					Code    int    `json:"code"`
					Message string `json:"message"`
				} `json:"error"`
			}
			if st != tc.status || json.Unmarshal(body, &e) != nil || e.Error.Code != tc.status || e.Error.Message == "" {
				t.Fatalf("got %d %s, want %d with a JSON error", st, body, tc.status)
			}
		})
	}
	st, _, _ := httpDo(t, "GET", base+"/healthz", "", "")
	if st != 200 {
		t.Fatalf("server unhealthy after errors: %d", st)
	}
}

func TestOpenAPIAndMetrics(t *testing.T) {
	s := testServer(t, nil)
	base := "http://" + s.HTTPAddr()
	st, body, _ := httpDo(t, "GET", base+"/v1/openapi.json", "", "")
	var doc struct {
		OpenAPI string         `json:"openapi"`
		Paths   map[string]any `json:"paths"`
	}
	if st != 200 || json.Unmarshal(body, &doc) != nil || !strings.HasPrefix(doc.OpenAPI, "3.") || doc.Paths["/v1/topics/{topic}/messages"] == nil {
		t.Fatalf("openapi: %d %.200s", st, body)
	}
	httpDo(t, "POST", base+"/v1/topics/m/messages", "application/json", "1")
	st, body, _ = httpDo(t, "GET", base+"/metrics", "", "")
	for _, name := range []string{"chatgg_connections", "chatgg_messages_published_total 1", "chatgg_delivery_latency_seconds_bucket", "chatgg_queue_messages"} {
		if st != 200 || !strings.Contains(string(body), name) {
			t.Fatalf("metrics lack %q: %d", name, st)
		}
	}
	st, body, _ = httpDo(t, "GET", base+"/readyz", "", "")
	if st != 200 || !strings.Contains(string(body), `"ready"`) {
		t.Fatalf("readyz: %d %s", st, body)
	}
}

// TestFanOutThousandConnections spreads 1000 subscribers over every loop;
// each must receive every message exactly once and in order.
func TestFanOutThousandConnections(t *testing.T) {
	if testing.Short() {
		t.Skip("1000 connections")
	}
	const subs, msgs = 1000, 50
	s := testServer(t, func(c *Config) { c.Loops = 4 })
	clients := make([]*client, subs)
	for i := range clients {
		clients[i] = dial(t, s, "/ws")
		clients[i].send(`{"op":"sub","topic":"big"}`)
	}
	eventually(t, 10*time.Second, "1000 subscriptions", func() bool { return s.engine.Topics()["big"] == subs })
	if n := s.engine.Stats().Loops; n != 4 {
		t.Fatalf("connections landed on %d loops, want 4", n)
	}
	pub := dial(t, s, "/ws")
	for i := 0; i < msgs; i++ {
		pub.send(fmt.Sprintf(`{"op":"pub","topic":"big","data":%d}`, i))
	}
	var wg sync.WaitGroup
	errs := make(chan error, subs)
	for _, c := range clients {
		wg.Add(1)
		go func(c *client) {
			defer wg.Done()
			for i := 0; i < msgs; i++ {
				_ = c.ws.SetReadDeadline(time.Now().Add(10 * time.Second))
				_, b, err := c.ws.ReadMessage()
				if err != nil {
					errs <- err
					return
				}
				var f frame
				if err := json.Unmarshal(b, &f); err != nil || string(f.Data) != fmt.Sprint(i) {
					errs <- fmt.Errorf("message %d: got %s", i, b)
					return
				}
			}
			_ = c.ws.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			if _, b, err := c.ws.ReadMessage(); err == nil {
				errs <- fmt.Errorf("extra message %s", b)
			}
		}(c)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// TestShutdownDrainsThenCloses: on shutdown the node turns not-ready but
// keeps serving for the drain period, then closes clients with 1001.
func TestShutdownDrainsThenCloses(t *testing.T) {
	s := testServer(t, func(c *Config) { c.DrainPeriod = time.Second })
	c := dial(t, s, "/ws")
	c.send(`{"op":"sub","topic":"d","ref":"s"}`)
	c.expect("ack", "s")
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		done <- s.Shutdown(ctx)
	}()
	base := "http://" + s.HTTPAddr()
	eventually(t, 2*time.Second, "not ready", func() bool {
		st, _, _ := httpDo(t, "GET", base+"/readyz", "", "")
		return st == 503
	})
	// Still serving while draining.
	c.send(`{"op":"pub","topic":"d","data":"during drain","ref":"p"}`)
	// The ack and the delivery travel separately: either may come first.
	got := map[string]bool{}
	for i := 0; i < 2; i++ {
		got[c.readJSON().Op] = true
	}
	if !got["ack"] || !got["msg"] {
		t.Fatalf("while draining want an ack and the message, got %v", got)
	}
	_ = c.ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _, err := c.ws.ReadMessage()
	if ce, ok := err.(*websocket.CloseError); !ok || ce.Code != 1001 {
		t.Fatalf("want close 1001 after the drain, got %v", err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestPprofAddr: --pprof-addr serves net/http/pprof on its own port, and
// nothing of it on the REST port.
func TestPprofAddr(t *testing.T) {
	s := testServer(t, func(c *Config) { c.PprofAddr = "127.0.0.1:0" })
	addr := s.PprofAddr()
	if addr == "" {
		t.Fatal("no pprof address")
	}
	st, body, _ := httpDo(t, "GET", "http://"+addr+"/debug/pprof/cmdline", "", "")
	if st != 200 || len(body) == 0 {
		t.Fatalf("GET /debug/pprof/cmdline: %d %q", st, body)
	}
	st, body, _ = httpDo(t, "GET", "http://"+addr+"/debug/pprof/goroutine?debug=1", "", "")
	if st != 200 || !strings.Contains(string(body), "goroutine profile:") {
		t.Fatalf("GET goroutine profile: %d %.80q", st, body)
	}
	if st, _, _ := httpDo(t, "GET", "http://"+s.HTTPAddr()+"/debug/pprof/", "", ""); st != 404 {
		t.Errorf("REST port answers /debug/pprof/ with %d, want 404", st)
	}
	stopServer(t, s)
	if _, err := net.Dial("tcp", addr); err == nil {
		t.Errorf("pprof still listens on %s after shutdown", addr)
	}
	if off := testServer(t, nil); off.PprofAddr() != "" {
		t.Errorf("pprof on %s without --pprof-addr", off.PprofAddr())
	}
}

// TestQueueJournalFlag: the embedded queue journals to the data directory
// by default, and not with --queue-journal=false.
func TestQueueJournalFlag(t *testing.T) {
	for _, on := range []bool{true, false} {
		dir := t.TempDir()
		s := testServer(t, func(c *Config) { c.DataDir = dir; c.QueueJournal = on })
		_, err := os.Stat(filepath.Join(dir, mq.DefaultJournalFile))
		if exists := err == nil; exists != on || (s.journal != nil) != on {
			t.Errorf("--queue-journal=%v: journal file exists %v, open %v", on, exists, s.journal != nil)
		}
		stopServer(t, s)
	}
}
