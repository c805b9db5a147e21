package server

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatgg/chatgg/internal/testsvc"
)

// clusterNode starts one node of a Redis + CouchDB deployment in-process.
func clusterNode(t *testing.T, role string, node uint16, redisURL, couchURL, prefix string, mod func(*Config)) *Server {
	t.Helper()
	return testServer(t, func(c *Config) {
		c.Role = role
		c.Node = node
		c.RedisURL = redisURL
		c.CouchDBURL = couchURL
		c.ChannelPrefix = prefix + ":"
		c.QueueName = prefix + ":queue"
		c.WorkerHeartbeat = 2 * time.Second
		c.RecoverInterval = time.Second
		if mod != nil {
			mod(c)
		}
	})
}

type tagged struct {
	P string `json:"p"`
	N int    `json:"n"`
}

// publishTagged publishes n messages {"p":pub,"n":i} (i from from on) to
// topic through s and returns their ids.
func publishTagged(t *testing.T, s *Server, topic, pub string, from, n int) []string {
	t.Helper()
	items := make([]string, n)
	for i := range items {
		items[i] = fmt.Sprintf(`{"topic":%q,"data":{"p":%q,"n":%d}}`, topic, pub, from+i)
	}
	return postBatches(t, s, items)
}

// TestRecoverOnAnotherNode: a client away while 1000 messages are
// published reconnects to another node with after and receives all of them
// once, in order, while live messages keep arriving: with the worker
// running, with the worker stopped (nothing stored yet: the hot window
// answers), and with a hot window too short (storage answers).
func TestRecoverOnAnotherNode(t *testing.T) {
	if testing.Short() {
		t.Skip("needs redis-server and pouchdb-server")
	}
	redisURL := testsvc.Redis(t)
	couch := testsvc.Couch(t)
	cases := []struct {
		name        string
		hot         int
		stopWorker  bool
		waitStored  bool
		wantStoreOK bool
	}{
		{"hot window", 2000, false, false, true},
		{"worker stopped", 2000, true, false, false},
		{"hot window too short", 10, false, true, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			prefix := testsvc.UniqueName(t, "rec")
			couchURL := couch + "/" + prefix
			hot := func(c *Config) { c.HotWindowLen = tc.hot }
			worker := clusterNode(t, RoleWorker, 9, redisURL, couchURL, prefix, nil)
			a := clusterNode(t, RoleServe, 1, redisURL, couchURL, prefix, hot)
			b := clusterNode(t, RoleServe, 2, redisURL, couchURL, prefix, hot)

			c1 := dial(t, a, "/ws")
			c1.send(`{"op":"sub","topic":"room","ref":"s"}`)
			c1.expect("ack", "s")
			first := publishTagged(t, a, "room", "a", 0, 1)
			if m := c1.expect("msg", ""); m.ID != first[0] {
				t.Fatalf("got %+v", m)
			}
			c1.ws.Close()
			if tc.stopWorker {
				stopServer(t, worker)
			}

			publishTagged(t, b, "room", "b", 0, 1000)
			if tc.waitStored {
				eventually(t, 20*time.Second, "1000 messages stored", func() bool {
					n, after := 0, first[0]
					for {
						_, body, _ := httpDo(t, "GET", "http://"+a.HTTPAddr()+"/v1/topics/room/messages?limit=1000&after="+after, "", "")
						var p struct {
							Messages []frame
							Next     *string
						}
						_ = json.Unmarshal(body, &p)
						n += len(p.Messages)
						if p.Next == nil {
							return n == 1000
						}
						after = *p.Next
					}
				})
			}
			var wg sync.WaitGroup
			wg.Add(1)
			go func() { // live messages from node A while the client catches up on B
				defer wg.Done()
				for i := 0; i < 5; i++ {
					publishTagged(t, a, "room", "a", 1+i*20, 20)
				}
			}()
			c2 := dial(t, b, "/ws")
			c2.send(`{"op":"sub","topic":"room","after":"` + first[0] + `","ref":"again"}`)
			if _, ack := c2.read(); string(ack) != `{"op":"ack","ref":"again","recovered":true}` {
				t.Fatalf("sub ack %s", ack)
			}
			wg.Wait()
			next := map[string]int{"a": 1, "b": 0}
			for got := 0; got < 1100; got++ {
				f := c2.expect("msg", "")
				var d tagged
				if err := json.Unmarshal(f.Data, &d); err != nil {
					t.Fatal(err)
				}
				if d.N != next[d.P] {
					t.Fatalf("after %d messages: got %s, want %s's message %d", got, f.Data, d.P, next[d.P])
				}
				next[d.P]++
			}
			c2.expectSilence(300 * time.Millisecond)
		})
	}
}

// TestHistorySourceStore: history lists accepted messages at once (the hot
// window), and with source=store only once a worker has stored them.
func TestHistorySourceStore(t *testing.T) {
	if testing.Short() {
		t.Skip("needs redis-server and pouchdb-server")
	}
	prefix := testsvc.UniqueName(t, "src")
	redisURL, couchURL := testsvc.Redis(t), testsvc.Couch(t)+"/"+prefix
	a := clusterNode(t, RoleServe, 4, redisURL, couchURL, prefix, nil)
	base := "http://" + a.HTTPAddr() + "/v1/topics/room/messages"
	list := func(query string) []string {
		t.Helper()
		st, body, _ := httpDo(t, "GET", base+query, "", "")
		if st != 200 {
			t.Fatalf("GET %s: %d %s", query, st, body)
		}
		var p struct{ Messages []frame }
		if err := json.Unmarshal(body, &p); err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, m := range p.Messages {
			ids = append(ids, m.ID)
		}
		return ids
	}
	ids := publishTagged(t, a, "room", "a", 0, 3)
	// No worker yet: queued, not stored.
	if got := list(""); fmt.Sprint(got) != fmt.Sprint(ids) {
		t.Fatalf("history = %v, want %v from the hot window", got, ids)
	}
	if got := list("?source=all"); fmt.Sprint(got) != fmt.Sprint(ids) {
		t.Fatalf("history source=all = %v, want %v", got, ids)
	}
	if got := list("?source=store"); len(got) != 0 {
		t.Fatalf("history source=store = %v before any worker ran, want none", got)
	}
	if st, body, _ := httpDo(t, "GET", base+"?source=cache", "", ""); st != 400 || !strings.Contains(string(body), "source must be") {
		t.Fatalf("source=cache: %d %s, want 400", st, body)
	}
	clusterNode(t, RoleWorker, 5, redisURL, couchURL, prefix, nil)
	eventually(t, 20*time.Second, "stored", func() bool {
		return fmt.Sprint(list("?source=store&after="+ids[0])) == fmt.Sprint(ids[1:])
	})
}

// TestStoredNoticeThroughRedis: the worker is another node; its notice
// reaches the node the client published on.
func TestStoredNoticeThroughRedis(t *testing.T) {
	if testing.Short() {
		t.Skip("needs redis-server and pouchdb-server")
	}
	prefix := testsvc.UniqueName(t, "sto")
	redisURL, couchURL := testsvc.Redis(t), testsvc.Couch(t)+"/"+prefix
	clusterNode(t, RoleWorker, 7, redisURL, couchURL, prefix, nil)
	a := clusterNode(t, RoleServe, 3, redisURL, couchURL, prefix, nil)
	c := dial(t, a, "/ws")
	c.send(`{"op":"pub","topic":"durable","data":{"x":1},"ref":"p","stored":true}`)
	ack := c.expect("ack", "p")
	if st := c.expect("stored", "p"); st.ID != ack.ID {
		t.Fatalf("stored %+v, ack %+v", st, ack)
	}
}
