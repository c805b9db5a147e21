package e2e

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// TestRollingRestartLosesNoAckedMessage restarts node 1 the way an
// orchestrator rolls a service (docs/deploy.md, "Rolling updates"), while
// WebSocket clients on every node and REST publishers publish through the
// balancer: SIGTERM, wait for the process to exit, start it again on the
// same ports with the same node index, wait until the balancer has it UP.
//
// Node 1 must turn not-ready and keep serving for its drain period (the
// balancer, checking every 500 ms, takes it out meanwhile), then close its
// clients with 1001 spread over the close window, and exit 0. Its clients
// reconnect through the balancer, land on the other nodes, resubscribe with
// "after" their last id (acked "recovered":true) and send again, with their
// idempotency keys, the publishes the old connection left unanswered.
//
// Then: every acked message is stored exactly once; every subscriber got
// every acked message exactly once and in each publisher's order across
// its reconnect; no node but the stopping one refused a publish; and the
// nodes saw the clients' own addresses, which only the PROXY header
// carries, while a connection without the header is refused.
func TestRollingRestartLosesNoAckedMessage(t *testing.T) {
	const (
		topic           = "room.rolling"
		drain           = 1500 * time.Millisecond
		closeWindow     = time.Second
		shutdownTimeout = 6 * time.Second // bounds the whole stop, drain included
		checkInter      = 500 * time.Millisecond
		perNode         = 4 // WebSocket clients per node: one of its two loops has two or more, so its closes spread
		wsPause         = 200 * time.Millisecond
		restPause       = 100 * time.Millisecond
		window          = 4 // unanswered publishes per WebSocket client
	)
	began := time.Now()
	c := startCluster(t, clusterConfig{
		CheckInter: checkInter,
		ExitStatus: true,
		ServeArgs: []string{
			"--drain-period", drain.String(),
			"--close-window", closeWindow.String(),
			"--shutdown-timeout", shutdownTimeout.String(),
		},
	})
	n1 := c.nodes[0]
	led := newLedger()

	// Connected one after another, leastconn puts perNode on each node.
	var clients []*rollClient
	for i := 1; i <= 3*perNode; i++ {
		clients = append(clients, dialRoll(t, c.lbWS, fmt.Sprintf("ws%d", i), topic, led, wsPause, window))
	}
	for _, n := range c.nodes {
		if k, err := n.subscribers(topic); err != nil || k != perNode {
			t.Fatalf("%s has %d subscribers (%v), want %d: the balancer should spread the clients", n.name, k, err, perNode)
		}
	}
	// REST publishers, each on its own keep-alive connection through the
	// balancer, which stays on one node: one per node.
	var rests []*restRoller
	restNodes := map[int]bool{}
	for i := 1; i <= 3; i++ {
		p := newRestRoller(fmt.Sprintf("rest%d", i), "http://"+c.lbHTTP, topic, led)
		if err := p.publish(1); err != nil {
			t.Fatalf("%s: %v", p.name, err)
		}
		rests = append(rests, p)
		restNodes[p.firstNode] = true
	}
	if len(restNodes) != 3 {
		t.Fatalf("REST publishers on nodes %v, want one on each", restNodes)
	}

	stopRest := make(chan struct{})
	var restWG sync.WaitGroup
	for _, p := range rests {
		restWG.Go(func() {
			if err := p.run(2, restPause, stopRest); err != nil {
				t.Errorf("%s: %v", p.name, err)
			}
		})
	}
	t.Cleanup(func() {
		select {
		case <-stopRest:
		default:
			close(stopRest)
		}
		restWG.Wait()
	})
	for _, cl := range clients {
		cl.start()
	}

	// A flowing stream, every client placed (by the node index in the id
	// of a publish it made) and holding a last id to resume from.
	eventually(t, 20*time.Second, "every client publishing and receiving", func() error {
		for _, cl := range clients {
			st := cl.state()
			if st.conns[0].node == 0 || st.received == 0 {
				return fmt.Errorf("%s: node %d, %d messages received", cl.name, st.conns[0].node, st.received)
			}
		}
		if n := led.counts()[acked]; n < 60 {
			return fmt.Errorf("%d acked", n)
		}
		return nil
	})
	onNode1 := map[string]bool{}
	for _, cl := range clients {
		if cl.state().conns[0].node == 1 {
			onNode1[cl.name] = true
		}
	}
	if len(onNode1) != perNode {
		t.Fatalf("%d clients publish through node 1, want %d", len(onNode1), perNode)
	}
	// Traffic through HAProxy carries the PROXY header: nothing refused
	// for the lack of one, on either port of any node, checks included.
	for _, n := range c.nodes {
		checkNoProxyRejections(t, n)
	}

	// The orchestrator's stop.
	sigterm := time.Now()
	if err := n1.proc.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM %s: %v", n1.name, err)
	}
	eventually(t, drain, n1.name+" not ready while it drains", func() error {
		return wantStatus(n1.httpURL("/readyz"), http.StatusServiceUnavailable)
	})
	var lbDown time.Time
	eventually(t, shutdownTimeout, "the balancer takes "+n1.name+" out", func() error {
		for _, be := range []string{"http", "ws"} {
			st, err := c.balancerStatus(be)
			if err != nil {
				return err
			}
			if !strings.HasPrefix(st["broker1"], "DOWN") {
				return fmt.Errorf("%s/broker1 is %q", be, st["broker1"])
			}
		}
		lbDown = time.Now()
		return nil
	})
	eventually(t, shutdownTimeout+2*time.Second, n1.name+" exits", func() error {
		if n1.proc.Running() {
			return errors.New("still running")
		}
		return nil
	})
	exited := time.Now()
	status, err := n1.exitStatus()
	if err != nil {
		t.Fatalf("%s: %v", n1.name, err)
	}
	if status != "exit 0" {
		t.Errorf("%s ended with %q after SIGTERM, want exit 0", n1.name, status)
	}

	// Node 1's clients reconnected through the balancer to the other nodes.
	eventually(t, 20*time.Second, "node 1's clients reconnected and placed", func() error {
		for _, cl := range clients {
			st := cl.state()
			if onNode1[cl.name] && (len(st.conns) < 2 || st.conns[len(st.conns)-1].node == 0) {
				return fmt.Errorf("%s: %d connections, last on node %d", cl.name, len(st.conns), st.conns[len(st.conns)-1].node)
			}
		}
		return nil
	})
	eventually(t, 10*time.Second, "every subscriber on nodes 2 and 3", func() error {
		total := 0
		for _, n := range c.nodes[1:] {
			k, err := n.subscribers(topic)
			if err != nil {
				return err
			}
			total += k
		}
		if total != len(clients) {
			return fmt.Errorf("%d subscribers on nodes 2 and 3, want %d", total, len(clients))
		}
		return nil
	})

	// The orchestrator's start: same ports, same node index.
	n1.proc.Start()
	restarted := time.Now()
	c.waitBalancer(20*time.Second, "UP")
	lbUp := time.Now()
	// A node that comes back gets the next connections (leastconn).
	late := dialRoll(t, c.lbWS, "late1", topic, led, wsPause, window)
	lateSub := late.state().conns[0].subAt
	late.start()
	eventually(t, 20*time.Second, "the late client placed", func() error {
		if n := late.state().conns[0].node; n == 0 {
			return errors.New("no fresh ack yet")
		}
		return nil
	})
	if n := late.state().conns[0].node; n != 1 {
		t.Errorf("a client connecting after the restart went to node %d, want the restarted node 1", n)
	}
	if k, err := n1.subscribers(topic); err != nil || k != 1 {
		t.Errorf("restarted %s has %d subscribers (%v), want 1 (the late client)", n1.name, k, err)
	}
	waitAcked(t, led, 60, 20*time.Second, "publishing after the restart", func(r pubRecord) bool { return r.sent.After(lateSub) })

	// Halt, and let every publisher settle what it has in flight.
	close(stopRest)
	restWG.Wait()
	for _, cl := range append(slices.Clone(clients), late) {
		cl.halt()
	}
	for _, cl := range append(slices.Clone(clients), late) {
		cl.wait(t, 30*time.Second)
	}
	led.waitAnswered(t, 10*time.Second)
	if n := led.counts(); n[refused] != 0 || n[unknown] != 0 {
		t.Errorf("outcomes %v (refused by code %v): want every publish acked in the end", n, led.codes())
	}

	// (1) Every acked message stored exactly once (history through the
	// balancer and CouchDB's _all_docs).
	stored := checkStored(t, c, "http://"+c.lbHTTP, topic, led, 60*time.Second)

	// (2) Every subscriber got every acked message once, in each
	// publisher's order, across its reconnect; the late one everything
	// sent after its sub.
	afterLate := func(r pubRecord) bool { return r.sent.After(lateSub) }
	for _, cl := range clients {
		waitRollDelivered(t, cl, led, always, 30*time.Second)
		checkDelivered(t, cl.view(), led, always)
		cl.explainDuplicates(t)
	}
	waitRollDelivered(t, late, led, afterLate, 30*time.Second)
	checkDelivered(t, late.view(), led, afterLate)

	var firstClose, lastClose time.Time
	var moves []string
	resent, probes := 0, 0
	for _, cl := range append(slices.Clone(clients), late) {
		st := cl.state()
		resent += st.resent
		for _, e := range st.errs {
			t.Errorf("%s: %s", cl.name, e)
		}
		for _, p := range st.probes {
			probes++
			if p.got != p.want {
				t.Errorf("%s: publish %d sent again with its key on connection %d answered %s %q, want an ack with the first id %s", cl.name, p.seq, p.gen, p.op, p.got, p.want)
			}
		}
		if cl == late || !onNode1[cl.name] {
			if len(st.conns) != 1 || !st.conns[0].closedAt.IsZero() {
				t.Errorf("%s (node %d) lost its connection (%d connections, close %d %v): only node 1 stopped", cl.name, st.conns[0].node, len(st.conns), st.conns[0].closeCode, st.conns[0].closeErr)
			}
			continue
		}
		if len(st.conns) != 2 {
			t.Errorf("%s: %d connections, want 2: one to node 1, one after its restart began", cl.name, len(st.conns))
		}
		old, cur := st.conns[0], st.conns[len(st.conns)-1]
		if old.closeCode != websocket.CloseGoingAway {
			t.Errorf("%s: node 1 ended the connection with %d (%v), want 1001", cl.name, old.closeCode, old.closeErr)
		}
		if old.closedAt.Before(sigterm.Add(drain)) {
			t.Errorf("%s: closed %v after SIGTERM, before the drain period (%v) was over", cl.name, old.closedAt.Sub(sigterm), drain)
		}
		if cur.node != 2 && cur.node != 3 {
			t.Errorf("%s reconnected to node %d, want 2 or 3", cl.name, cur.node)
		}
		if cur.after == "" || cur.recovered == nil || !*cur.recovered {
			t.Errorf("%s: resubscribed after %q, ack recovered=%v; want a last id and recovered:true", cl.name, cur.after, fmtBoolPtr(cur.recovered))
		}
		moves = append(moves, fmt.Sprintf("%s %d→%d", cl.name, old.node, cur.node))
		if firstClose.IsZero() || old.closedAt.Before(firstClose) {
			firstClose = old.closedAt
		}
		if old.closedAt.After(lastClose) {
			lastClose = old.closedAt
		}
	}
	// Spread over the window: each loop closes its share as the window
	// goes by, and node 1 has two clients per loop. Four moments drawn at
	// random fall within a quarter of the window 5 % of the time, within a
	// tenth 0.4 %: a tenth still tells a spread from closing all at once.
	if spread := lastClose.Sub(firstClose); spread < closeWindow/10 || lastClose.After(exited) {
		t.Errorf("node 1 closed its clients from %v to %v after SIGTERM (exit at %v): want them spread over the %v window before the exit",
			firstClose.Sub(sigterm), lastClose.Sub(sigterm), exited.Sub(sigterm), closeWindow)
	}

	// Node 1 kept serving while it drained.
	drained := 0
	for _, r := range led.ackedRecs() {
		if idNode(r.id) == 1 && r.sent.After(sigterm) && r.sent.Before(restarted) {
			drained++
		}
	}
	if drained == 0 {
		t.Errorf("node 1 acked no publish after SIGTERM: it should keep serving for the drain period")
	}

	// (3) Refusals: only 503 from the stopping node, and retried.
	var refusals []refusal
	for _, cl := range append(slices.Clone(clients), late) {
		refusals = append(refusals, cl.state().refusals...)
	}
	transportErrs := 0
	for _, p := range rests {
		r, e := p.outcomes()
		refusals = append(refusals, r...)
		transportErrs += e
	}
	for _, r := range refusals {
		if r.code != http.StatusServiceUnavailable || !strings.Contains(r.msg, "shutting down") || r.at.Before(sigterm) || r.at.After(exited) {
			t.Errorf("%s: publish %d refused %v after SIGTERM (node 1 exited at %v) with %d %q: only the stopping node may refuse, with 503",
				r.who, r.seq, r.at.Sub(sigterm), exited.Sub(sigterm), r.code, r.msg)
		}
	}
	for _, n := range c.nodes {
		text, err := n.metrics()
		if err != nil {
			t.Fatalf("%s: %v", n.name, err)
		}
		if v := metricSum(text, "chatgg_publish_errors_total"); v != 0 {
			t.Errorf("%s refused or failed %v publishes without stopping", n.name, v)
		}
	}

	// (4), node 1's exit 0, was checked when it exited.

	// PROXY protocol: still nothing refused for a missing header, then a
	// client's own address reaches the node through the balancer, and a
	// connection straight to a node without the header is dropped.
	for _, n := range c.nodes {
		checkNoProxyRejections(t, n)
	}
	checkClientAddressSeen(t, c, "127.0.0.23")
	checkHeaderRequired(t, c.nodes[1])

	byNode := map[int]int{}
	for _, r := range led.ackedRecs() {
		byNode[idNode(r.id)]++
	}
	t.Logf("%d messages acked and stored once each (accepted per node %v); %d publishes sent again after a reconnect, %d acked publishes sent again as lost acks, %d refusals by the stopping node, %d REST requests without an answer",
		stored, byNode, resent, probes, len(refusals), transportErrs)
	t.Logf("reconnected with after and recovered: %s", strings.Join(moves, ", "))
	t.Logf("node 1: SIGTERM, balancer DOWN after %v, clients closed with 1001 from %v to %v, exit 0 after %v; restarted in %v, balancer UP %v later; test took %v",
		lbDown.Sub(sigterm).Round(time.Millisecond), firstClose.Sub(sigterm).Round(time.Millisecond), lastClose.Sub(sigterm).Round(time.Millisecond),
		exited.Sub(sigterm).Round(time.Millisecond), restarted.Sub(exited).Round(time.Millisecond), lbUp.Sub(restarted).Round(time.Millisecond),
		time.Since(began).Round(time.Millisecond))
}

func fmtBoolPtr(b *bool) string {
	if b == nil {
		return "absent"
	}
	return strconv.FormatBool(*b)
}

// idNode returns the node index in a message id: 12 hex digits of
// milliseconds, 4 of the node, 6 of a sequence (docs/architecture.md).
func idNode(id string) int {
	if len(id) != 22 {
		return -1
	}
	n, err := strconv.ParseUint(id[12:16], 16, 16)
	if err != nil {
		return -1
	}
	return int(n)
}

// refusal is a publish answered with an error.
type refusal struct {
	who  string
	seq  int
	code int
	msg  string
	at   time.Time
}

// rollClient is a /ws JSON protocol client that outlives its node, as a
// well-behaved client does: when the connection ends it reconnects through
// the balancer, resubscribes with "after" the last id it received, and sends
// again, with their idempotency keys and in order, the publishes the old
// connection left unanswered. Each publish carries its payload's name as its
// key. It also sends its last acked publish again on each new connection, as
// a client whose ack was lost would, to see the key honoured on another node.
//
// One goroutine (run) dials and writes; one per connection reads. Publishes
// are recorded in the ledger: sent when first sent, answered once acked (or
// refused with a code other than 503, which is not retried).
type rollClient struct {
	t      testing.TB
	name   string
	addr   string // the balancer's WebSocket address
	topic  string
	led    *ledger
	pause  time.Duration // between new publishes
	window int           // unanswered publishes at most

	stop     chan struct{} // closed by halt: no new publishes
	haltOnce sync.Once
	kill     chan struct{} // closed when the test ends: give up
	done     chan struct{} // closed when run returns
	started  bool

	mu          sync.Mutex
	conns       []*rollConn // subscribed connections, oldest first
	msgs        []delivery
	msgConn     []int // the connection (gen) each of msgs came on
	lastID      string
	nextSeq     int
	outstanding map[int]bool   // sent, not acked yet
	retry       []int          // refused with 503: send again
	acked       map[int]string // seq → id
	lastAcked   int
	resent      int
	refusals    []refusal
	probes      []probe
	errs        []string
}

// rollConn is one connection of a rollClient.
type rollConn struct {
	ws       *websocket.Conn
	gen      int
	after    string // the sub's "after"
	subAck   chan subAnswer
	readDone chan struct{}
	wake     chan struct{} // an answer arrived

	// Guarded by the client's mu.
	refs      map[string]int // pub ref → seq
	firstSent map[int]bool   // seqs first sent here: their acks carry this node's ids
	node      int            // from such an ack; 0 until one came
	recovered *bool
	subAt     time.Time
	closedAt  time.Time
	closeCode int
	closeErr  error
}

type subAnswer struct {
	recovered *bool
	err       error
}

// probe is an acked publish sent again with its key on a new connection.
type probe struct {
	seq, gen  int
	want, got string
	op        string
}

// rollFrame is any server frame of the JSON protocol.
type rollFrame struct {
	Op        string          `json:"op"`
	Topic     string          `json:"topic"`
	ID        string          `json:"id"`
	Data      json.RawMessage `json:"data"`
	Ref       string          `json:"ref"`
	Code      int             `json:"code"`
	Message   string          `json:"message"`
	Recovered *bool           `json:"recovered"`
}

// dialRoll connects and subscribes a rollClient to topic through the
// balancer at addr; start makes it publish.
func dialRoll(t testing.TB, addr, name, topic string, led *ledger, pause time.Duration, window int) *rollClient {
	t.Helper()
	c := &rollClient{
		t: t, name: name, addr: addr, topic: topic, led: led, pause: pause, window: window,
		stop: make(chan struct{}), kill: make(chan struct{}), done: make(chan struct{}),
		outstanding: map[int]bool{}, acked: map[int]string{},
	}
	t.Cleanup(c.close)
	if _, err := c.connect(); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return c
}

// start makes the client publish, every pause, until halt.
func (c *rollClient) start() {
	c.started = true
	go c.run()
}

func (c *rollClient) halt() { c.haltOnce.Do(func() { close(c.stop) }) }

// wait waits until the client has every publish answered after halt.
func (c *rollClient) wait(t testing.TB, d time.Duration) {
	t.Helper()
	select {
	case <-c.done:
	case <-time.After(d):
		c.mu.Lock()
		defer c.mu.Unlock()
		t.Fatalf("%s: still %d publishes unanswered %v after halt", c.name, len(c.outstanding), d)
	}
}

// close ends everything when the test ends.
func (c *rollClient) close() {
	c.halt()
	close(c.kill)
	if c.started {
		<-c.done
	}
	c.mu.Lock()
	conns := slices.Clone(c.conns)
	c.mu.Unlock()
	for _, rc := range conns {
		rc.ws.Close()
		<-rc.readDone
	}
}

func (c *rollClient) run() {
	defer close(c.done)
	c.mu.Lock()
	rc := c.conns[0]
	c.mu.Unlock()
	for !c.serve(rc) {
		var err error
		if rc, err = c.connect(); err != nil {
			c.mu.Lock()
			c.errs = append(c.errs, err.Error())
			c.mu.Unlock()
			return
		}
	}
}

// connect dials through the balancer until a connection is subscribed,
// for at most 20 s. A node that is stopping drops new connections; the
// balancer sends the next attempt elsewhere once it has taken it out.
func (c *rollClient) connect() (*rollConn, error) {
	deadline := time.Now().Add(20 * time.Second)
	for {
		rc, err := c.dialOnce()
		if err == nil {
			return rc, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no connection for 20 s: %w", err)
		}
		select {
		case <-c.kill:
			return nil, errors.New("test over")
		case <-time.After(50 * time.Millisecond): // back-off between attempts
		}
	}
}

func (c *rollClient) dialOnce() (*rollConn, error) {
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
	ws, _, err := d.Dial("ws://"+c.addr+"/ws", nil)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	rc := &rollConn{
		ws: ws, gen: len(c.conns) + 1, after: c.lastID,
		subAck: make(chan subAnswer, 1), readDone: make(chan struct{}), wake: make(chan struct{}, 1),
		refs: map[string]int{}, firstSent: map[int]bool{},
	}
	c.mu.Unlock()
	go c.read(rc)
	fail := func(err error) (*rollConn, error) {
		ws.Close()
		<-rc.readDone
		return nil, err
	}
	sub := map[string]any{"op": "sub", "topic": c.topic, "ref": "sub"}
	if rc.after != "" {
		sub["after"] = rc.after
	}
	if err := c.write(rc, sub); err != nil {
		return fail(err)
	}
	select {
	case a := <-rc.subAck:
		if a.err != nil {
			c.mu.Lock()
			c.errs = append(c.errs, a.err.Error())
			c.mu.Unlock()
			return fail(a.err)
		}
		c.mu.Lock()
		rc.recovered, rc.subAt = a.recovered, time.Now()
		c.conns = append(c.conns, rc)
		c.mu.Unlock()
		return rc, nil
	case <-rc.readDone:
		return nil, errors.New("connection lost before the sub was acked")
	case <-c.kill:
		return fail(errors.New("test over"))
	case <-time.After(20 * time.Second):
		return fail(errors.New("sub not answered in 20 s"))
	}
}

func (c *rollClient) write(rc *rollConn, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_ = rc.ws.SetWriteDeadline(time.Now().Add(10 * time.Second))
	return rc.ws.WriteMessage(websocket.TextMessage, b)
}

// serve publishes on rc until it is halted with nothing unanswered (true)
// or the connection ends (false).
func (c *rollClient) serve(rc *rollConn) bool {
	c.mu.Lock()
	again := slices.Sorted(maps.Keys(c.outstanding))
	c.retry = nil
	probeSeq := 0
	if rc.gen > 1 {
		probeSeq = c.lastAcked
	}
	c.mu.Unlock()
	if probeSeq > 0 && c.send(rc, probeSeq, "probe") != nil {
		<-rc.readDone
		return false
	}
	for _, seq := range again {
		if c.send(rc, seq, "again") != nil {
			<-rc.readDone
			return false
		}
	}
	tick := time.NewTicker(c.pause)
	defer tick.Stop()
	stop := c.stop
	for {
		c.mu.Lock()
		idle := len(c.outstanding) == 0
		c.mu.Unlock()
		if stop == nil && idle {
			return true
		}
		select {
		case <-c.kill:
			return true
		case <-rc.readDone:
			return false
		case <-stop:
			stop = nil
		case <-rc.wake:
		case <-tick.C:
			c.mu.Lock()
			retry := c.retry
			c.retry = nil
			room := stop != nil && len(c.outstanding) < c.window
			if room {
				c.nextSeq++
			}
			seq := c.nextSeq
			c.mu.Unlock()
			for _, s := range retry {
				if c.send(rc, s, "retry") != nil {
					<-rc.readDone
					return false
				}
			}
			if room && c.send(rc, seq, "new") != nil {
				<-rc.readDone
				return false
			}
		}
	}
}

// send publishes seq on rc. how: "new" (first time), "again" (unanswered
// on an earlier connection), "retry" (refused with 503 here), "probe"
// (acked already).
func (c *rollClient) send(rc *rollConn, seq int, how string) error {
	k := payload{P: c.name, S: seq}
	c.mu.Lock()
	ref := fmt.Sprintf("%s-%d-%d", how, seq, len(rc.refs))
	rc.refs[ref] = seq
	switch how {
	case "new":
		c.led.sent(k)
		c.outstanding[seq] = true
		rc.firstSent[seq] = true
	case "again":
		c.resent++
	}
	c.mu.Unlock()
	return c.write(rc, map[string]any{"op": "pub", "topic": c.topic, "data": k, "key": k.String(), "ref": ref})
}

func (c *rollClient) read(rc *rollConn) {
	defer close(rc.readDone)
	for {
		_, b, err := rc.ws.ReadMessage()
		if err != nil {
			c.mu.Lock()
			rc.closedAt, rc.closeErr = time.Now(), err
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				rc.closeCode = ce.Code
			}
			c.mu.Unlock()
			return
		}
		var f rollFrame
		if err := json.Unmarshal(b, &f); err != nil {
			c.fault("server sent invalid JSON %q: %v", b, err)
			continue
		}
		switch {
		case f.Op == "msg":
			p, err := parsePayload(f.Data)
			if err != nil {
				c.fault("%v", err)
				continue
			}
			c.mu.Lock()
			c.msgs = append(c.msgs, delivery{topic: f.Topic, id: f.ID, key: p, at: time.Now()})
			c.msgConn = append(c.msgConn, rc.gen)
			c.lastID = f.ID
			c.mu.Unlock()
		case f.Ref == "sub" && (f.Op == "ack" || f.Op == "error"):
			a := subAnswer{recovered: f.Recovered}
			if f.Op == "error" {
				a.err = fmt.Errorf("sub refused: %d %s", f.Code, f.Message)
			}
			rc.subAck <- a
		case f.Op == "ack" || f.Op == "error":
			c.answer(rc, f)
			select {
			case rc.wake <- struct{}{}:
			default:
			}
		default:
			c.fault("unexpected frame %s", b)
		}
	}
}

// answer settles the publish f answers.
func (c *rollClient) answer(rc *rollConn, f rollFrame) {
	c.mu.Lock()
	defer c.mu.Unlock()
	seq, ok := rc.refs[f.Ref]
	if !ok {
		c.errs = append(c.errs, fmt.Sprintf("answer to unknown ref: %+v", f))
		return
	}
	delete(rc.refs, f.Ref)
	if strings.HasPrefix(f.Ref, "probe-") {
		got := f.ID
		if f.Op == "error" {
			got = fmt.Sprintf("%d %s", f.Code, f.Message)
		}
		c.probes = append(c.probes, probe{seq: seq, gen: rc.gen, want: c.acked[seq], got: got, op: f.Op})
		return
	}
	if !c.outstanding[seq] {
		c.errs = append(c.errs, fmt.Sprintf("second answer to publish %d: %+v", seq, f))
		return
	}
	k := payload{P: c.name, S: seq}
	if f.Op == "error" {
		c.refusals = append(c.refusals, refusal{who: c.name, seq: seq, code: f.Code, msg: f.Message, at: time.Now()})
		if f.Code == http.StatusServiceUnavailable {
			c.retry = append(c.retry, seq)
			return
		}
		delete(c.outstanding, seq)
		if err := c.led.answer(k, refused, "", f.Code); err != nil {
			c.errs = append(c.errs, err.Error())
		}
		return
	}
	delete(c.outstanding, seq)
	c.acked[seq] = f.ID
	c.lastAcked = max(c.lastAcked, seq)
	if rc.firstSent[seq] && rc.node == 0 {
		rc.node = idNode(f.ID)
	}
	if err := c.led.answer(k, acked, f.ID, 0); err != nil {
		c.errs = append(c.errs, err.Error())
	}
}

func (c *rollClient) fault(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.errs = append(c.errs, fmt.Sprintf(format, args...))
}

// rollState is a copy of what a rollClient saw.
type rollState struct {
	conns    []rollConnState
	received int
	resent   int
	refusals []refusal
	probes   []probe
	errs     []string
}

type rollConnState struct {
	node      int
	after     string
	recovered *bool
	subAt     time.Time
	closedAt  time.Time
	closeCode int
	closeErr  error
}

func (c *rollClient) state() rollState {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := rollState{
		received: len(c.msgs), resent: c.resent,
		refusals: slices.Clone(c.refusals), probes: slices.Clone(c.probes), errs: slices.Clone(c.errs),
	}
	for _, rc := range c.conns {
		st.conns = append(st.conns, rollConnState{
			node: rc.node, after: rc.after, recovered: rc.recovered, subAt: rc.subAt,
			closedAt: rc.closedAt, closeCode: rc.closeCode, closeErr: rc.closeErr,
		})
	}
	return st
}

func (c *rollClient) received() []delivery {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.msgs)
}

// view returns what the client received as a wsClient, for checkDelivered.
func (c *rollClient) view() *wsClient {
	return &wsClient{name: c.name, msgs: c.received()}
}

// explainDuplicates logs, for a message c received more than once, where
// each copy came: which connection, at which position, and what the
// connection resubscribed after. checkDelivered has failed the test.
func (c *rollClient) explainDuplicates(t testing.TB) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	at := map[payload][]int{}
	for i, m := range c.msgs {
		at[m.key] = append(at[m.key], i)
	}
	var lines []string
	for k, ix := range at {
		if len(ix) < 2 {
			continue
		}
		var copies []string
		for _, i := range ix {
			copies = append(copies, fmt.Sprintf("#%d on connection %d", i, c.msgConn[i]))
		}
		lines = append(lines, fmt.Sprintf("%v (%s): %s", k, c.msgs[ix[0]].id, strings.Join(copies, ", ")))
	}
	if len(lines) == 0 {
		return
	}
	slices.Sort(lines)
	var conns []string
	for _, rc := range c.conns {
		conns = append(conns, fmt.Sprintf("%d: node %d, sub after %q", rc.gen, rc.node, rc.after))
	}
	t.Logf("%s received %d messages more than once (connections %s):\n%s",
		c.name, len(lines), strings.Join(conns, "; "), strings.Join(lines[:min(len(lines), 10)], "\n"))
}

// waitRollDelivered waits until c received every acked publish that must
// be delivered.
func waitRollDelivered(t testing.TB, c *rollClient, l *ledger, must func(pubRecord) bool, d time.Duration) {
	t.Helper()
	eventually(t, d, c.name+" receives every acked message", func() error {
		seen := map[payload]bool{}
		for _, m := range c.received() {
			seen[m.key] = true
		}
		var missing []string
		for _, r := range l.ackedRecs() {
			if must(r) && !seen[r.key] {
				missing = append(missing, r.key.String()+" "+r.id)
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("%d acked messages not received: %s", len(missing), strings.Join(missing[:min(len(missing), 5)], ", "))
		}
		return nil
	})
}

// restRoller publishes over REST through the balancer on a keep-alive
// connection of its own, retrying each message with its Idempotency-Key
// until it is acked: after a 503 or a request that got no answer.
type restRoller struct {
	name   string
	base   string
	topic  string
	led    *ledger
	client *http.Client

	firstNode int // the node of its first ack

	mu            sync.Mutex
	refusals      []refusal
	transportErrs int
}

func newRestRoller(name, base, topic string, led *ledger) *restRoller {
	return &restRoller{
		name: name, base: base, topic: topic, led: led,
		client: &http.Client{
			Timeout:   10 * time.Second,
			Transport: &http.Transport{DialContext: dialREST, MaxIdleConnsPerHost: 1, MaxConnsPerHost: 1},
		},
	}
}

// run publishes from seq on, every pause, until stop is closed.
func (p *restRoller) run(seq int, pause time.Duration, stop <-chan struct{}) error {
	for ; ; seq++ {
		select {
		case <-stop:
			return nil
		default:
		}
		if err := p.publish(seq); err != nil {
			return err
		}
		time.Sleep(pause) // pacing a steady stream, not waiting for an outcome
	}
}

// publish sends message seq until it is acked, for at most 30 s.
func (p *restRoller) publish(seq int) error {
	k := payload{P: p.name, S: seq}
	body, _ := json.Marshal(k)
	p.led.sent(k)
	deadline := time.Now().Add(30 * time.Second)
	for attempt := 1; ; attempt++ {
		status, b, err := p.post(body, k.String())
		switch {
		case err != nil:
			p.mu.Lock()
			p.transportErrs++
			p.mu.Unlock()
		case status == http.StatusAccepted:
			var v struct {
				ID string `json:"id"`
			}
			if err := json.Unmarshal(b, &v); err != nil || v.ID == "" {
				_ = p.led.answer(k, unknown, "", 0)
				return fmt.Errorf("publish %d: 202 with %q", seq, b)
			}
			if p.firstNode == 0 {
				p.firstNode = idNode(v.ID)
			}
			return p.led.answer(k, acked, v.ID, 0)
		default:
			p.mu.Lock()
			p.refusals = append(p.refusals, refusal{who: p.name, seq: seq, code: status, msg: string(b), at: time.Now()})
			p.mu.Unlock()
			if status != http.StatusServiceUnavailable {
				_ = p.led.answer(k, refused, "", status)
				return fmt.Errorf("publish %d refused: %d %s", seq, status, b)
			}
		}
		if time.Now().After(deadline) {
			_ = p.led.answer(k, unknown, "", 0)
			return fmt.Errorf("publish %d not acked in 30 s (%d attempts): %v", seq, attempt, err)
		}
		time.Sleep(50 * time.Millisecond) // back-off before the retry
	}
}

func (p *restRoller) post(body []byte, key string) (int, []byte, error) {
	req, err := http.NewRequest(http.MethodPost, p.base+"/v1/topics/"+p.topic+"/messages", strings.NewReader(string(body)))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", key)
	resp, err := p.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

func (p *restRoller) outcomes() ([]refusal, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.refusals), p.transportErrs
}

// metrics returns the node's /metrics text.
func (n *node) metrics() (string, error) {
	b, err := get(n.httpURL("/metrics"))
	return string(b), err
}

// metricValue returns the value of series, a metric name with its labels
// as exposed (chatgg_x{a="b"}), in text; 0 if absent.
func metricValue(text, series string) float64 {
	for l := range strings.Lines(text) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), series+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}

// metricSum sums every series of family in text.
func metricSum(text, family string) float64 {
	sum := 0.0
	for l := range strings.Lines(text) {
		l = strings.TrimSpace(l)
		if !strings.HasPrefix(l, family+"{") && !strings.HasPrefix(l, family+" ") {
			continue
		}
		if i := strings.LastIndexByte(l, ' '); i > 0 {
			f, _ := strconv.ParseFloat(l[i+1:], 64)
			sum += f
		}
	}
	return sum
}

const (
	wsProxyRejections   = `chatgg_rejections_total{port="ws",reason="proxy_header"}`
	httpProxyRejections = `chatgg_rejections_total{port="http",reason="proxy_header"}`
)

// checkNoProxyRejections checks that n refused no connection for a missing
// PROXY header.
func checkNoProxyRejections(t testing.TB, n *node) {
	t.Helper()
	text, err := n.metrics()
	if err != nil {
		t.Fatalf("%s: %v", n.name, err)
	}
	for _, s := range []string{wsProxyRejections, httpProxyRejections} {
		if v := metricValue(text, s); v != 0 {
			t.Errorf("%s: %s %v, want 0: the balancer's connections carry the header", n.name, s, v)
		}
	}
}

// checkClientAddressSeen connects to the balancer's WebSocket port from
// another loopback address, ip, with a request that is not an upgrade. The
// node it reaches refuses it and logs the refusal with the peer address,
// which must be ip: HAProxy itself connects from 127.0.0.1, so only the
// PROXY header can have told the node.
func checkClientAddressSeen(t testing.TB, c *cluster, ip string) {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
	conn, err := d.Dial("tcp", c.lbWS)
	if err != nil {
		t.Fatalf("dial the balancer from %s: %v", ip, err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "GET /ws HTTP/1.1\r\nHost: chatgg\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if !strings.HasPrefix(line, "HTTP/1.1 4") {
		t.Errorf("a request that is not an upgrade, through the balancer: answered %q (%v), want a 4xx", line, err)
	}
	want := "peer=" + ip + " "
	eventually(t, 10*time.Second, "a node logging the refusal with the client's address "+ip, func() error {
		for _, n := range c.nodes {
			b, err := os.ReadFile(n.proc.LogPath())
			if err != nil {
				return err
			}
			for l := range strings.Lines(string(b)) {
				if strings.Contains(l, "reason=bad_request") && strings.Contains(l, want) {
					return nil
				}
			}
		}
		return errors.New("not logged")
	})
}

// checkHeaderRequired connects straight to n's WebSocket and REST ports
// without a PROXY header: each connection is dropped unanswered and counted.
func checkHeaderRequired(t testing.TB, n *node) {
	t.Helper()
	requests := map[string]string{
		n.ws: "GET /ws HTTP/1.1\r\nHost: chatgg\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
			"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
		n.http: "GET /readyz HTTP/1.1\r\nHost: chatgg\r\n\r\n",
	}
	for addr, req := range requests {
		conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatalf("dial %s: %v", addr, err)
		}
		if _, err := io.WriteString(conn, req); err != nil {
			t.Fatal(err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		b, err := io.ReadAll(conn)
		conn.Close()
		var ne net.Error
		if len(b) > 0 || (errors.As(err, &ne) && ne.Timeout()) {
			t.Errorf("%s without a PROXY header: read %q, %v; want the connection dropped unanswered", addr, b, err)
		}
	}
	eventually(t, 10*time.Second, n.name+" counting the connections without a header", func() error {
		text, err := n.metrics()
		if err != nil {
			return err
		}
		onWS, onHTTP := metricValue(text, wsProxyRejections), metricValue(text, httpProxyRejections)
		if onWS != 1 || onHTTP != 1 {
			return fmt.Errorf("%s %v, %s %v; want 1 each", wsProxyRejections, onWS, httpProxyRejections, onHTTP)
		}
		return nil
	})
}

// testInitEnv names the file testInit appends its child's exit status to,
// and testInitGORACEEnv holds the child's GORACE. Not CHATGG_*: chatgg
// reads those.
const (
	testInitEnv       = "E2E_TEST_INIT_STATUS"
	testInitGORACEEnv = "E2E_TEST_INIT_GORACE"
)

// The test binary doubles as testInit when started with testInitEnv set
// (clusterConfig.ExitStatus), before TestMain builds anything.
func init() {
	if f := os.Getenv(testInitEnv); f != "" {
		os.Exit(testInit(f, os.Args[1:]))
	}
}

// testInitBin is the program to run as testInit: this test binary.
func testInitBin(t testing.TB) string {
	t.Helper()
	bin, err := os.Executable()
	if err != nil {
		t.Fatalf("test binary: %v", err)
	}
	return bin
}

// testInit runs argv as its child the way a container's minimal init does
// (docker run --init, tini): SIGTERM and SIGINT are passed on, and the
// child's exit status becomes its own. It also appends "PID exit N" or
// "PID signal NAME" to statusFile, which the test reads: testsvc reaps its
// processes itself and keeps their status to itself.
func testInit(statusFile string, argv []string) int {
	// The child's parent-death signal follows the thread that forked it:
	// this one, locked, lives as long as the process.
	runtime.LockOSThread()
	if len(argv) == 0 {
		fmt.Fprintln(os.Stderr, "testInit: no command")
		return 127
	}
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.Env = slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, testInitEnv+"=") || strings.HasPrefix(kv, testInitGORACEEnv+"=") || strings.HasPrefix(kv, "GORACE=")
	})
	if v, ok := os.LookupEnv(testInitGORACEEnv); ok {
		cmd.Env = append(cmd.Env, "GORACE="+v)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "testInit:", err)
		return 127
	}
	go func() {
		for s := range sigs {
			_ = cmd.Process.Signal(s)
		}
	}()
	_ = cmd.Wait()
	ws := cmd.ProcessState.Sys().(syscall.WaitStatus)
	status, code := fmt.Sprintf("exit %d", ws.ExitStatus()), ws.ExitStatus()
	if ws.Signaled() {
		status, code = "signal "+ws.Signal().String(), 128+int(ws.Signal())
	}
	if f, err := os.OpenFile(statusFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err == nil {
		fmt.Fprintf(f, "%d %s\n", cmd.Process.Pid, status)
		f.Close()
	}
	return code
}

// exitStatus returns how the node's last run under testInit ended: "exit
// 0", "signal killed", ...
func (n *node) exitStatus() (string, error) {
	if n.statusFile == "" {
		return "", errors.New("not run under testInit (clusterConfig.ExitStatus)")
	}
	b, err := os.ReadFile(n.statusFile)
	if err != nil {
		return "", err
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	_, status, _ := strings.Cut(lines[len(lines)-1], " ")
	return status, nil
}
