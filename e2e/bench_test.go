package e2e

import (
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// BenchmarkPublishToStored measures the whole path of issue 4: WebSocket
// publishes through the balancer to three nodes, Redis pub/sub and queue,
// two workers, PouchDB. One op is one message published with a ref. Once
// the loop ends it waits until every acked message is stored and reports:
//
//	msgs/s         messages stored per second, first publish to last stored
//	p50-ms, p99-ms publish-to-stored latency: from sending the pub to the
//	               document appearing in CouchDB's changes feed (polled)
//
// rate=max keeps a window of unanswered publishes per client, so the loop
// runs as fast as the cluster acks and the store falls behind: msgs/s is
// the store's throughput and the latency mostly queueing. rate=1000/s paces
// the publishes, so the latency is that of a cluster keeping up. The
// history API then confirms every message stored exactly once. Bounded by
// -benchtime (default 1s of publishing); e.g. -benchtime=5000x.
func BenchmarkPublishToStored(b *testing.B) {
	b.Run("rate=max", func(b *testing.B) { benchPublishToStored(b, 0) })
	b.Run("rate=1000/s", func(b *testing.B) { benchPublishToStored(b, time.Millisecond) })
}

// benchPublishToStored publishes one message per op, every interval (0:
// as fast as the window allows).
func benchPublishToStored(b *testing.B, interval time.Duration) {
	c := startCluster(b, clusterConfig{
		// The per-connection publish limit guards a real server from
		// one client; here four clients are the load.
		ServeArgs: []string{"--publish-rate", "1000000", "--publish-burst", "1000000"},
	})
	const (
		topic   = "room.bench"
		clients = 4
		window  = 64
	)
	feed := followChanges(b, c.dbURL)
	led := newLedger()
	var pubs []*wsClient
	for i := 1; i <= clients; i++ {
		pubs = append(pubs, dialWS(b, c.lbWS, fmt.Sprintf("pub%d", i), led, window))
	}

	seq := make([]int, clients)
	i := 0
	next := time.Now()
	for b.Loop() {
		if interval > 0 {
			next = next.Add(interval)
			if d := time.Until(next); d > 0 {
				time.Sleep(d) // pacing the load
			}
		}
		k := i % clients
		seq[k]++
		if !pubs[k].publish(topic, seq[k]) {
			b.Fatalf("%s: publish failed: %v", pubs[k].name, pubs[k].err())
		}
		i++
	}

	led.waitAnswered(b, 60*time.Second)
	recs := led.ackedRecs()
	if n := led.counts(); n[acked] != i {
		b.Fatalf("outcomes %v (refused by code %v): want all %d acked", n, led.codes(), i)
	}
	var stored map[string]time.Time
	deadline := time.Now().Add(60 * time.Second)
	for {
		stored = feed.snapshot()
		var missing []pubRecord
		for _, r := range recs {
			if _, ok := stored[r.id]; !ok {
				missing = append(missing, r)
			}
		}
		if len(missing) == 0 {
			break
		}
		if time.Now().After(deadline) {
			q, qerr := c.nodes[0].queue()
			msgs, herr := history("http://"+c.nodes[0].http, topic)
			have := map[string]bool{}
			for _, m := range msgs {
				have[m.ID] = true
			}
			inHist := 0
			for _, r := range missing {
				if have[r.id] {
					inHist++
				}
			}
			b.Fatalf("%d of %d acked not in the changes feed (%v); %d of those in the history (%d msgs, %v); queue %+v %v; first missing %v %s",
				len(missing), len(recs), feed.err(), inHist, len(msgs), herr, q, qerr, missing[0].key, missing[0].id)
		}
		time.Sleep(20 * time.Millisecond)
	}

	lat := make([]time.Duration, 0, len(recs))
	first, last := recs[0].sent, time.Time{}
	for _, r := range recs {
		at := stored[r.id]
		lat = append(lat, at.Sub(r.sent))
		if r.sent.Before(first) {
			first = r.sent
		}
		if at.After(last) {
			last = at
		}
	}
	slices.Sort(lat)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(float64(len(recs))/last.Sub(first).Seconds(), "msgs/s")
	b.ReportMetric(ms(lat[len(lat)/2]), "p50-ms")
	b.ReportMetric(ms(lat[len(lat)*99/100]), "p99-ms")

	if n := checkStored(b, c, "http://"+c.lbHTTP, topic, led, 60*time.Second); n != len(recs) {
		b.Fatalf("%d messages stored, want %d", n, len(recs))
	}
}

// changeFeed polls a database's _changes feed from "now" on, since after
// since, and notes when each document first appeared. Polling, not the
// continuous feed: PouchDB Server's continuous feed skips documents under
// concurrent bulk writes (seen here: 340 of 12778), its polled feed does
// not.
type changeFeed struct {
	mu      sync.Mutex
	seen    map[string]time.Time
	readErr error
}

func followChanges(t testing.TB, dbURL string) *changeFeed {
	t.Helper()
	f := &changeFeed{seen: map[string]time.Time{}}
	var head struct {
		LastSeq json.RawMessage `json:"last_seq"`
	}
	if err := getJSON(dbURL+"/_changes?descending=true&limit=1", &head); err != nil {
		t.Fatalf("changes feed: %v", err)
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		since := string(head.LastSeq)
		for {
			select {
			case <-stop:
				return
			default:
			}
			var page struct {
				Results []struct {
					ID string `json:"id"`
				} `json:"results"`
				LastSeq json.RawMessage `json:"last_seq"`
			}
			err := getJSON(dbURL+"/_changes?limit=10000&since="+url.QueryEscape(strings.Trim(since, `"`)), &page)
			if err != nil {
				f.fail(err)
				return
			}
			now := time.Now()
			f.mu.Lock()
			for _, r := range page.Results {
				if _, ok := f.seen[r.ID]; !ok {
					f.seen[r.ID] = now
				}
			}
			f.mu.Unlock()
			if len(page.LastSeq) > 0 {
				since = string(page.LastSeq)
			}
			if len(page.Results) == 0 {
				time.Sleep(5 * time.Millisecond) // poll interval
			}
		}
	}()
	t.Cleanup(func() {
		close(stop)
		<-done
	})
	return f
}

func (f *changeFeed) fail(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.readErr = err
}

func (f *changeFeed) err() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.readErr
}

func (f *changeFeed) snapshot() map[string]time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[string]time.Time, len(f.seen))
	for k, v := range f.seen {
		out[k] = v
	}
	return out
}
