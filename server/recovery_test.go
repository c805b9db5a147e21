package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/chatgg/chatgg/codec"
)

// postBatches publishes items (JSON batch entries) through s's REST batch
// endpoint, up to 250 a request, and returns their ids in order.
func postBatches(t *testing.T, s *Server, items []string) []string {
	t.Helper()
	var ids []string
	for len(items) > 0 {
		k := min(250, len(items))
		st, body, _ := httpDo(t, "POST", "http://"+s.HTTPAddr()+"/v1/messages", "application/json", "["+strings.Join(items[:k], ",")+"]")
		if st != 202 {
			t.Fatalf("batch publish: %d %s", st, body)
		}
		var res struct{ Results []struct{ ID string } }
		_ = json.Unmarshal(body, &res)
		for _, r := range res.Results {
			ids = append(ids, r.ID)
		}
		items = items[k:]
	}
	return ids
}

// publishN publishes n JSON numbers (from start on) to topic and returns
// their ids in order.
func publishN(t *testing.T, s *Server, topic string, start, n int) []string {
	t.Helper()
	items := make([]string, n)
	for i := range items {
		items[i] = fmt.Sprintf(`{"topic":%q,"data":%d}`, topic, start+i)
	}
	return postBatches(t, s, items)
}

// readData reads msg frames until want data values arrived and returns them.
func readData(t *testing.T, c *client, want int) []string {
	t.Helper()
	var got []string
	for len(got) < want {
		f := c.readJSON()
		if f.Op != "msg" {
			t.Fatalf("unexpected %+v after %d messages", f, len(got))
		}
		got = append(got, string(f.Data))
	}
	return got
}

func seq(from, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprint(from + i)
	}
	return out
}

// TestReconnectWithAfterRecoversEverything: a client away while 1000
// messages are published comes back with "after" and gets all of them once,
// in order, followed seamlessly by the live stream.
func TestReconnectWithAfterRecoversEverything(t *testing.T) {
	for _, tc := range []struct {
		name string
		hot  int
	}{
		{"from the hot window", 2000},
		{"window too short: from storage", 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := testServer(t, func(c *Config) { c.HotWindowLen = tc.hot })
			a := dial(t, s, "/ws")
			a.send(`{"op":"sub","topic":"r","ref":"s"}`)
			a.expect("ack", "s")
			first := publishN(t, s, "r", 0, 1)
			if m := a.expect("msg", ""); m.ID != first[0] {
				t.Fatalf("got %+v", m)
			}
			a.ws.Close()

			publishN(t, s, "r", 1, 1000)
			if tc.hot < 1000 { // the replay must come from storage: wait until it is there
				eventually(t, 10*time.Second, "1001 stored", func() bool {
					_, body, _ := httpDo(t, "GET", "http://"+s.HTTPAddr()+"/v1/topics/r/messages?limit=1000&after="+first[0], "", "")
					return strings.Count(string(body), `"op":"msg"`) == 1000
				})
			}
			// Live messages keep coming while the client catches up.
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 10; i++ {
					publishN(t, s, "r", 1001+i*10, 10)
				}
			}()
			b := dial(t, s, "/ws")
			b.send(`{"op":"sub","topic":"r","after":"` + first[0] + `","ref":"again"}`)
			if _, ack := b.read(); string(ack) != `{"op":"ack","ref":"again","recovered":true}` {
				t.Fatalf("want the sub ack first, got %s", ack)
			}
			wg.Wait()
			got := readData(t, b, 1100)
			if want := seq(1, 1100); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("after reconnect got %d messages, first differences: %v", len(got), firstDiff(got, want))
			}
			b.expectSilence(200 * time.Millisecond)
		})
	}
}

func firstDiff(got, want []string) string {
	for i := range want {
		if i >= len(got) || got[i] != want[i] {
			return fmt.Sprintf("at %d: got %v want %v", i, got[i:min(i+5, len(got))], want[i:min(i+5, len(want))])
		}
	}
	return "extra: " + fmt.Sprint(got[len(want):])
}

func TestSubAckSaysWhetherRecovered(t *testing.T) {
	s := testServer(t, func(c *Config) { c.HotWindowLen = 5 })
	ids := publishN(t, s, "rr", 0, 3)
	c := dial(t, s, "/ws")
	c.send(`{"op":"sub","topic":"rr","after":"` + ids[0] + `","ref":"1"}`)
	_, b := c.read()
	if string(b) != `{"op":"ack","ref":"1","recovered":true}` {
		t.Fatalf("sub ack %s", b)
	}
	readData(t, c, 2)
	// An id from a topic's unknown past: nothing stored reaches back to it.
	c2 := dial(t, s, "/ws")
	c2.send(`{"op":"sub","topic":"empty","after":"000000000001000000000000","ref":"2"}`)
	if f := c2.readJSON(); f.Op != "error" {
		t.Fatalf("a malformed id must be refused: %+v", f)
	}
	c2.send(`{"op":"sub","topic":"empty","after":"0000000000010000000000","ref":"3"}`)
	if _, b := c2.read(); string(b) != `{"op":"ack","ref":"3","recovered":false}` {
		t.Fatalf("sub ack %s", b)
	}
}

// TestSlowReaderClosedWith4008Recovers: a reader that stops reading is
// closed with 4008 and, reconnecting with after, gets everything.
func TestSlowReaderClosedWith4008Recovers(t *testing.T) {
	s := testServer(t, func(c *Config) { c.MaxOutboundBytes = 64 << 10; c.HotWindowLen = 5000 })
	slow := dial(t, s, "/ws")
	_ = slow.ws.UnderlyingConn().(*net.TCPConn).SetReadBuffer(64 << 10)
	slow.send(`{"op":"sub","topic":"firehose","ref":"s"}`)
	slow.expect("ack", "s")
	first := publishN(t, s, "firehose", 0, 1)
	slow.expect("msg", "")
	// The reader stops reading; the server must give up on it.
	payload := strings.Repeat("x", 1000)
	n := 1
	for ; n < 4000 && s.engine.Stats().SlowConsumers == 0; n += 100 {
		items := make([]string, 100)
		for i := range items {
			items[i] = fmt.Sprintf(`{"topic":"firehose","data":{"n":%d,"pad":%q}}`, n+i, payload)
		}
		httpDo(t, "POST", "http://"+s.HTTPAddr()+"/v1/messages", "application/json", "["+strings.Join(items, ",")+"]")
	}
	eventually(t, 5*time.Second, "slow consumer detected", func() bool { return s.engine.Stats().SlowConsumers == 1 })
	// Reading now, the client finds a 4008 close after what was queued.
	var code int
	for {
		_ = slow.ws.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, _, err := slow.ws.ReadMessage()
		if ce, ok := err.(*websocket.CloseError); ok {
			code = ce.Code
			break
		}
		if err != nil {
			t.Fatalf("want a close frame, got %v", err)
		}
	}
	if code != 4008 {
		t.Fatalf("closed with %d, want 4008", code)
	}
	b := dial(t, s, "/ws")
	b.send(`{"op":"sub","topic":"firehose","after":"` + first[0] + `","ref":"r"}`)
	b.expect("ack", "r")
	for i := 1; i < n; i++ {
		f := b.readJSON()
		var d struct{ N int }
		if err := json.Unmarshal(f.Data, &d); err != nil || d.N != i {
			t.Fatalf("message %d: %s", i, f.Data)
		}
	}
}

// TestStoredNotice: a pub asking "stored":true is acked when accepted and
// answered again once the message is in the store.
func TestStoredNotice(t *testing.T) {
	s := testServer(t, nil)
	c := dial(t, s, "/ws")
	c.send(`{"op":"pub","topic":"durable","data":1,"ref":"p","stored":true}`)
	ack := c.expect("ack", "p")
	st := c.expect("stored", "p")
	if st.ID != ack.ID {
		t.Fatalf("stored %+v for ack %+v", st, ack)
	}
	ok, err := storeHas(t.Context(), s.store, "durable", ack.ID)
	if err != nil || !ok {
		t.Fatalf("notice sent but the store has no %s: %v", ack.ID, err)
	}
	// A retry of a stored message's key is acked and confirmed at once.
	c.send(`{"op":"pub","topic":"durable","data":1,"ref":"k1","key":"K","stored":true}`)
	first := c.expect("ack", "k1")
	c.expect("stored", "k1")
	c.send(`{"op":"pub","topic":"durable","data":1,"ref":"k2","key":"K","stored":true}`)
	if again := c.expect("ack", "k2"); again.ID != first.ID {
		t.Fatalf("retry acked as %s, want %s", again.ID, first.ID)
	}
	if st := c.expect("stored", "k2"); st.ID != first.ID {
		t.Fatalf("retry stored notice %+v", st)
	}
	c.send(`{"op":"pub","topic":"durable","data":1,"stored":true}`)
	if f := c.expect("error", ""); f.Code != 400 {
		t.Fatalf("stored without ref: %+v", f)
	}
}

func TestPredecessor(t *testing.T) {
	for in, want := range map[string]string{"a0": "9f", "01": "00", "b": "a", "10": "0f", "f": "e"} {
		if got, ok := predecessor(in); !ok || got != want {
			t.Errorf("predecessor(%q) = %q, want %q", in, got, want)
		}
	}
	if _, ok := predecessor("000"); ok {
		t.Error("000 has no predecessor")
	}
}

func TestMergeRecent(t *testing.T) {
	m := func(id string) *codec.Message { return &codec.Message{ID: id} }
	ids := func(ms []*codec.Message) string {
		var s []string
		for _, x := range ms {
			s = append(s, x.ID)
		}
		return strings.Join(s, ",")
	}
	stored := []*codec.Message{m("02"), m("05")}
	hot := []*codec.Message{m("05"), m("03"), m("07"), m("01")}
	if got := ids(mergeRecent(stored, hot, "01", 10)); got != "02,03,05,07" {
		t.Fatalf("merged %s", got)
	}
	if got := ids(mergeRecent([]*codec.Message{m("02"), m("05")}, hot, "01", 3)); got != "02,03,05" {
		t.Fatalf("capped %s", got)
	}
}

// TestStoredWatchExpires: a watch whose notice never comes is answered with
// an error after the ttl, not left waiting.
func TestStoredWatchExpires(t *testing.T) {
	s := testServer(t, nil)
	w := newStoredWatcher(s.store, 100*time.Millisecond)
	defer w.Close()
	got := make(chan error, 1)
	w.WatchStored("never", "0000000000010000000001", func(err error) { got <- err })
	select {
	case err := <-got:
		if !errors.Is(err, errWatchExpired) {
			t.Fatalf("got %v, want errWatchExpired", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the watch never expired")
	}
}
