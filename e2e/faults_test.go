package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/chatgg/chatgg/internal/testsvc"
)

// stream keeps publishers going until halted.
type stream struct {
	stop     chan struct{}
	wg       sync.WaitGroup
	haltOnce sync.Once
}

// startStream makes every client publish to topic, pause between
// publishes, until halt. The stream is halted when the test ends at the
// latest.
func startStream(t testing.TB, clients []*wsClient, topic string, pause time.Duration) *stream {
	s := &stream{stop: make(chan struct{})}
	for _, cl := range clients {
		s.wg.Go(func() { cl.publishLoop(topic, 0, pause, s.stop) })
	}
	t.Cleanup(s.halt)
	return s
}

// add runs fn as one more publisher of the stream; fn returns when stop is
// closed.
func (s *stream) add(fn func(stop <-chan struct{})) {
	s.wg.Go(func() { fn(s.stop) })
}

func (s *stream) halt() {
	s.haltOnce.Do(func() { close(s.stop) })
	s.wg.Wait()
}

// subscribers connects n clients named prefix1..n through the balancer and
// subscribes each to topic.
func subscribers(t testing.TB, c *cluster, led *ledger, prefix, topic string, n int) []*wsClient {
	t.Helper()
	var out []*wsClient
	for i := 1; i <= n; i++ {
		cl := dialWS(t, c.lbWS, fmt.Sprintf("%s%d", prefix, i), led, 32)
		cl.subscribe(topic)
		out = append(out, cl)
	}
	return out
}

// waitAcked waits until at least n publishes are acked; filter, when not
// nil, picks which ones count.
func waitAcked(t testing.TB, led *ledger, n int, d time.Duration, what string, filter func(pubRecord) bool) {
	t.Helper()
	eventually(t, d, what, func() error {
		got := 0
		for _, r := range led.ackedRecs() {
			if filter == nil || filter(r) {
				got++
			}
		}
		if got < n {
			return fmt.Errorf("%d of %d acked", got, n)
		}
		return nil
	})
}

// waitQueueEmpty waits until the queue holds nothing, waiting or in flight,
// and has no dead letters.
func waitQueueEmpty(t testing.TB, c *cluster, d time.Duration) {
	t.Helper()
	eventually(t, d, "an empty queue", func() error {
		q, err := c.nodes[0].queue()
		if err != nil {
			return err
		}
		if q != (queueStats{}) {
			return fmt.Errorf("queue %+v", q)
		}
		return nil
	})
}

// TestKilledWorkersBatchIsStoredOnce kills a worker with SIGKILL while it
// holds a batch taken from the queue and not yet acknowledged, during a
// steady stream of publishes. The other worker's recoverer gives the batch
// back once the dead worker's heartbeat expires, and every acked message
// ends up stored exactly once.
func TestKilledWorkersBatchIsStoredOnce(t *testing.T) {
	c := startCluster(t, clusterConfig{})
	const topic = "room.worker-kill"
	led := newLedger()
	clients := subscribers(t, c, led, "ws", topic, 4)
	st := startStream(t, clients, topic, 2*time.Millisecond)
	waitAcked(t, led, 200, 20*time.Second, "a flowing stream", nil)

	victim := c.workers[0]
	var id string
	eventually(t, 10*time.Second, victim.name+" registered", func() (err error) {
		id, err = c.workerID(victim)
		return err
	})
	key := c.processingKey(id)
	llen := func() (int64, error) {
		return c.redisInt(func(b rueidis.Builder) rueidis.Completed { return b.Llen().Key(key).Build() })
	}
	// Freeze the worker while its processing list is not empty, then look
	// again: a frozen worker cannot finish its batch, so a non-empty list
	// seen now is what the SIGKILL leaves behind. If the batch was done
	// just before the freeze, thaw and try again.
	var inflight int64
	eventually(t, 20*time.Second, victim.name+" frozen holding a batch", func() error {
		n, err := llen()
		if err != nil || n == 0 {
			return fmt.Errorf("processing list: %d, %v", n, err)
		}
		if err := victim.proc.Signal(syscall.SIGSTOP); err != nil {
			return err
		}
		if n, err = llen(); err == nil && n > 0 {
			inflight = n
			return nil
		}
		if err := victim.proc.Signal(syscall.SIGCONT); err != nil {
			return err
		}
		return fmt.Errorf("batch finished before the freeze (%v)", err)
	})
	victim.proc.Kill()
	t.Logf("killed %s (worker %s) holding %d messages", victim.name, id, inflight)

	acks := led.counts()[acked]
	waitAcked(t, led, acks+300, 20*time.Second, "publishing going on after the kill", nil)
	st.halt()
	led.waitAnswered(t, 20*time.Second)
	if n := led.counts(); n[refused] != 0 || n[unknown] != 0 {
		t.Fatalf("outcomes %v (refused by code %v): a worker crash must not refuse publishes", n, led.codes())
	}

	// The survivor's recoverer empties the dead worker's list into the
	// queue and unregisters it (heartbeat 2s, recovery every 1s).
	eventually(t, 20*time.Second, "the dead worker's batch given back", func() error {
		n, err := llen()
		if err != nil {
			return err
		}
		member, err := c.redisInt(func(b rueidis.Builder) rueidis.Completed {
			return b.Sismember().Key(c.queue + ":workers").Member(id).Build()
		})
		if err != nil {
			return err
		}
		if n != 0 || member != 0 {
			return fmt.Errorf("processing list %d messages, registered %d", n, member)
		}
		return nil
	})

	for _, s := range clients {
		waitDelivered(t, s, led, always, 30*time.Second)
		checkDelivered(t, s, led, always)
	}
	stored := checkStored(t, c, "http://"+c.lbHTTP, topic, led, 60*time.Second)
	waitQueueEmpty(t, c, 10*time.Second)
	t.Logf("%d messages acked and stored once each; %d were in the killed worker's batch", stored, inflight)
}

// TestRedisRestartLosesNoAckedMessage stops Redis (append-only file on)
// while clients publish over WebSocket and REST and starts it again on the
// same port. Publishes during the outage are refused visibly (error op 503,
// REST 503), the nodes turn not-ready and the balancer takes them out, then
// they reconnect and resubscribe, delivery resumes, and every acked message
// is stored exactly once.
func TestRedisRestartLosesNoAckedMessage(t *testing.T) {
	c := startCluster(t, clusterConfig{})
	const topic = "room.redis-restart"
	led := newLedger()
	clients := subscribers(t, c, led, "ws", topic, 4)
	st := startStream(t, clients, topic, 5*time.Millisecond)
	// REST straight to a node, which answers even while the balancer has
	// taken every node out.
	direct := &restPublisher{name: "rest", base: "http://" + c.nodes[0].http, led: led}
	st.add(func(stop <-chan struct{}) {
		for seq := 1; ; seq++ {
			select {
			case <-stop:
				return
			default:
			}
			direct.publish(topic, seq)
			time.Sleep(10 * time.Millisecond) // pacing
		}
	})
	waitAcked(t, led, 200, 20*time.Second, "a flowing stream", nil)

	c.redis.Stop()
	stopped := time.Now()
	c.waitReady(20*time.Second, http.StatusServiceUnavailable)
	// Refused, not lost: error ops and REST answers with 503.
	eventually(t, 20*time.Second, "publishes refused with 503 over WebSocket and REST", func() error {
		var ws, rest int
		for _, r := range led.snapshot() {
			if r.state != refused || r.code != http.StatusServiceUnavailable {
				continue
			}
			if strings.HasPrefix(r.key.P, "ws") {
				ws++
			} else {
				rest++
			}
		}
		if ws == 0 || rest == 0 {
			return fmt.Errorf("503s: %d over WebSocket, %d over REST", ws, rest)
		}
		return nil
	})
	c.waitBalancer(10*time.Second, "DOWN")

	c.redis.Start()
	c.waitReady(30*time.Second, http.StatusOK)
	recovered := time.Now()
	t.Logf("Redis down %v; every node ready again", recovered.Sub(stopped).Round(time.Millisecond))
	c.waitBalancer(10*time.Second, "UP")
	after := func(r pubRecord) bool { return r.sent.After(recovered) }
	waitAcked(t, led, 200, 20*time.Second, "publishing acked again after the restart", after)
	st.halt()
	led.waitAnswered(t, 20*time.Second)
	n, codes := led.counts(), led.codes()
	t.Logf("outcomes: %d acked, %d refused %v, %d unknown", n[acked], n[refused], codes, n[unknown])
	for code := range codes {
		if code != http.StatusServiceUnavailable {
			t.Errorf("publishes refused with %d; want only 503 during the outage", code)
		}
	}
	if n[unknown] != 0 {
		t.Errorf("%d publishes got no answer; want every one acked or refused", n[unknown])
	}

	// A message is delivered at most once and in order throughout; those
	// sent once every node was ready again reach every subscriber.
	for _, s := range clients {
		waitDelivered(t, s, led, after, 30*time.Second)
		checkDelivered(t, s, led, after)
	}
	stored := checkStored(t, c, "http://"+c.lbHTTP, topic, led, 60*time.Second)
	waitQueueEmpty(t, c, 10*time.Second)
	t.Logf("%d messages stored; every acked one exactly once", stored)
}

// TestFrozenStoreBacklogDrainsOnce freezes the CouchDB-compatible server
// (SIGSTOP; an in-memory PouchDB would lose its data on a restart, a freeze
// is the honest "unavailable for a while") while clients publish. Publishes
// are still acked, the queue holds the growing backlog, and after SIGCONT
// the backlog drains and every acked message is stored exactly once.
func TestFrozenStoreBacklogDrainsOnce(t *testing.T) {
	couch := testsvc.NewCouch(t)
	c := startCluster(t, clusterConfig{Couch: couch.URL()})
	t.Cleanup(func() { _ = couch.Signal(syscall.SIGCONT) })
	const topic = "room.store-freeze"
	led := newLedger()
	clients := subscribers(t, c, led, "ws", topic, 4)
	st := startStream(t, clients, topic, 3*time.Millisecond)
	waitAcked(t, led, 200, 20*time.Second, "a flowing stream", nil)
	eventually(t, 20*time.Second, "messages stored", func() error {
		msgs, err := history("http://"+c.nodes[0].http, topic)
		if err == nil && len(msgs) == 0 {
			err = errors.New("none yet")
		}
		return err
	})

	if err := couch.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	frozen := time.Now()
	acks := led.counts()[acked]
	q0, err := c.nodes[0].queue()
	if err != nil {
		t.Fatal(err)
	}
	var q queueStats
	eventually(t, 30*time.Second, "acks going on and the queue growing while the store is frozen", func() error {
		var err error
		if q, err = c.nodes[0].queue(); err != nil {
			return err
		}
		if got := led.counts()[acked]; got < acks+500 || q.Depth < q0.Depth+300 {
			return fmt.Errorf("%d acks since the freeze, queue %+v (was %+v)", got-acks, q, q0)
		}
		return nil
	})
	// What the nodes tell the balancer meanwhile (each answer takes the
	// store check's 2 s, so ask them all at once).
	ready := make([]string, len(c.all()))
	var wg sync.WaitGroup
	for i, n := range c.all() {
		wg.Go(func() {
			status, _, err := do(http.MethodGet, n.httpURL("/readyz"), "", nil)
			ready[i] = fmt.Sprintf("%s:%d%s", n.name, status, errString(err))
		})
	}
	wg.Wait()
	lb, _ := c.balancerStatus("http")
	t.Logf("store frozen %v: %d more acks, queue %+v (was %+v); /readyz %s; balancer %v",
		time.Since(frozen).Round(time.Millisecond), led.counts()[acked]-acks, q, q0, strings.Join(ready, " "), lb)
	if err := couch.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}

	st.halt()
	led.waitAnswered(t, 20*time.Second)
	if n := led.counts(); n[refused] != 0 || n[unknown] != 0 {
		t.Fatalf("outcomes %v (refused by code %v): a store outage must not refuse publishes", n, led.codes())
	}
	waitQueueEmpty(t, c, 60*time.Second)
	for _, s := range clients {
		waitDelivered(t, s, led, always, 30*time.Second)
		checkDelivered(t, s, led, always)
	}
	stored := checkStored(t, c, "http://"+c.lbHTTP, topic, led, 60*time.Second)
	t.Logf("%d messages acked and stored once each", stored)
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return " (" + err.Error() + ")"
}

// TestRefusedPublishIsStoredAtMostOnce takes away one half of a publish at
// a time with Redis ACLs, deterministically: first PUBLISH (the pub/sub
// half), then the queue's keys (the queue half). The queue is the commit
// point: a publish the queue refused is neither stored nor delivered; one
// queued but not published is answered 503 ("not delivered live"), stored,
// and its key stays claimed. A client that retries with its
// Idempotency-Key until acked, as the REST docs invite, ends up with each
// message stored exactly once and delivered at most once.
func TestRefusedPublishIsStoredAtMostOnce(t *testing.T) {
	c := startCluster(t, clusterConfig{})
	const topic = "room.half-publish"
	led := newLedger()
	sub := subscribers(t, c, led, "ws", topic, 1)[0]
	acl := func(args ...string) {
		t.Helper()
		cmd := c.rdb.B().Arbitrary("ACL", "SETUSER", "default").Args(args...).Build()
		if err := c.rdb.Do(context.Background(), cmd).Error(); err != nil {
			t.Fatalf("ACL SETUSER default %v: %v", args, err)
		}
	}
	restore := []string{"on", "nopass", "allkeys", "allchannels", "+@all"}
	t.Cleanup(func() { acl(restore...) })

	type attempt struct {
		key    string
		status int
		id     string
	}
	publish := func(seq int, key string) attempt {
		t.Helper()
		body, _ := json.Marshal(payload{P: "rest", S: seq})
		req, _ := http.NewRequest(http.MethodPost, "http://"+c.nodes[0].http+"/v1/topics/"+topic+"/messages", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Idempotency-Key", key)
		resp, err := httpc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var v struct {
			ID string `json:"id"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&v)
		return attempt{key: key, status: resp.StatusCode, id: v.ID}
	}
	var first []attempt
	// The pub/sub half denied.
	acl("-publish")
	first = append(first, publish(1, "k1"))
	acl(restore...)
	// The queue half denied: only the channel prefix's keys (the hot
	// window) stay writable.
	acl("resetkeys", "~"+c.prefix+"*")
	first = append(first, publish(2, "k2"))
	acl(restore...)
	t.Logf("first attempts: %+v", first)

	// Retries with the same key until acked.
	final := map[int]string{}
	for i, a := range first {
		seq := i + 1
		eventually(t, 20*time.Second, "an acked retry", func() error {
			r := publish(seq, a.key)
			if r.status != http.StatusAccepted {
				return fmt.Errorf("retry of %s: %d", a.key, r.status)
			}
			final[seq] = r.id
			return nil
		})
	}
	waitQueueEmpty(t, c, 20*time.Second)
	msgs, err := history("http://"+c.lbHTTP, topic)
	if err != nil {
		t.Fatal(err)
	}
	stored := map[int][]string{}
	for _, m := range msgs {
		p, err := parsePayload(m.Data)
		if err != nil {
			t.Fatal(err)
		}
		stored[p.S] = append(stored[p.S], m.ID)
	}
	// Both retries went through node 1 on one topic, so they are delivered
	// in order: once the last one has arrived, so has everything before it.
	delivered := map[int]int{}
	eventually(t, 10*time.Second, "the last retry delivered", func() error {
		clear(delivered)
		last := false
		for _, d := range sub.received() {
			delivered[d.key.S]++
			last = last || d.id == final[2]
		}
		if !last {
			return fmt.Errorf("%s not delivered; delivered %v", final[2], delivered)
		}
		return nil
	})
	for i, a := range first {
		seq := i + 1
		if a.status == http.StatusAccepted && a.id != final[seq] {
			t.Errorf("message %d: first acked as %s, retry acked as %s", seq, a.id, final[seq])
		}
		if len(stored[seq]) != 1 || stored[seq][0] != final[seq] {
			t.Errorf("message %d (first answer %d, retry acked %s): stored as %v, want once", seq, a.status, final[seq], stored[seq])
		}
		// Live delivery is at most once; a message accepted while pub/sub
		// failed is not delivered live at all (history has it).
		if delivered[seq] > 1 {
			t.Errorf("message %d (first answer %d): delivered %d times, want at most once", seq, a.status, delivered[seq])
		}
	}
}
