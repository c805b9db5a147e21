package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"golang.org/x/sys/unix"
)

type protocol uint8

const (
	protoWS  protocol = iota // /ws JSON: sub, then pub ops
	protoRaw                 // /raw/{topic}: frames verbatim
)

func (p protocol) String() string {
	if p == protoRaw {
		return "raw"
	}
	return "ws"
}

type mode uint8

const (
	modeFanout mode = iota
	modeEcho
	modeIdle
	modeRest
	modeE2E
	modeRamp
)

var modeNames = [...]string{"fanout", "echo", "idle", "rest", "e2e", "ramp"}

func (m mode) String() string { return modeNames[m] }

// plan is what a run's loops share, read-only once the run starts.
type plan struct {
	mode     mode
	proto    protocol
	family   int
	wsAddr   unix.Sockaddr
	httpAddr unix.Sockaddr
	// sources are local addresses to spread connections over (loopback
	// only), nil for the kernel's choice: one address has ~28k ports.
	sources    []unix.Sockaddr
	hostHeader string
	httpHost   string
	pathPrefix string // of the WebSocket URL, without a trailing slash
	httpPrefix string // of the REST URL

	topics []string
	conns  int // WebSocket connections
	subs   int // counted subscribers: connections 0..subs-1
	pubs   int // publishers: connections 0..pubs-1, or REST connections
	size   int
	// inflight is frames in flight per connection (echo) or requests in
	// flight per REST connection.
	inflight int

	connectConcurrency int
	connectTimeout     time.Duration
	loops              int

	subsOnTopic []uint64
}

// topicOf is the topic of WebSocket connection or publisher i.
func (p *plan) topicOf(i int) int { return i % len(p.topics) }

// pubsOnTopic is the number of publishers of topic t.
func (p *plan) pubsOnTopic(t int) int {
	n := len(p.topics)
	if p.pubs <= t {
		return 0
	}
	return (p.pubs - t + n - 1) / n
}

// rank maps a publisher id found in a payload to its index in c's track,
// or reports that c should not have received it.
func (p *plan) rank(c *conn, pub uint32) (int, bool) {
	if p.mode == modeEcho {
		return 0, int(pub) == c.num
	}
	if int(pub) >= p.pubs || p.topicOf(int(pub)) != c.topic {
		return 0, false
	}
	return int(pub) / len(p.topics), true
}

// expectPer is how many counted deliveries one message of publisher c
// makes.
func (p *plan) expectPer(c *conn) uint64 {
	if p.mode == modeEcho {
		return 1
	}
	return p.subsOnTopic[c.topic]
}

// sourceAddr is the local address of connection i, nil for any.
func (p *plan) sourceAddr(i int) unix.Sockaddr {
	if len(p.sources) == 0 {
		return nil
	}
	return p.sources[(i/20000)%len(p.sources)]
}

// runner drives the loops of a run.
type runner struct {
	p     *plan
	loops []*loop
	ws    []*conn // WebSocket connections, by number
	http  []*conn // REST publishers, by number
}

func newRunner(p *plan) (*runner, error) {
	r := &runner{p: p}
	p.subsOnTopic = make([]uint64, len(p.topics))
	for i := 0; i < p.subs; i++ {
		p.subsOnTopic[p.topicOf(i)]++
	}
	for i := 0; i < p.loops; i++ {
		l, err := newLoop(r)
		if err != nil {
			for _, l := range r.loops { // not running yet
				l.shutdown()
			}
			return nil, err
		}
		r.loops = append(r.loops, l)
	}
	for i := 0; i < p.conns; i++ {
		c := &conn{kind: kindWS, num: i, topic: p.topicOf(i), pub: -1}
		c.key = newKey()
		c.mask = newMask()
		switch {
		case p.mode == modeEcho:
			c.path = p.pathPrefix + "/echo"
			c.pub = i
			c.track = &subTrack{pubs: make([]pubTrack, 1)}
		case p.proto == protoRaw:
			c.path = p.pathPrefix + "/raw/" + p.topics[c.topic]
		default:
			c.path = p.pathPrefix + "/ws"
			c.prefix = fmt.Appendf(nil, `{"op":"pub","topic":%q,"data":"`, p.topics[c.topic])
		}
		if p.mode != modeEcho {
			if i < p.subs {
				c.track = &subTrack{pubs: make([]pubTrack, p.pubsOnTopic(c.topic))}
				c.sub = p.proto == protoWS
			}
			if i < p.pubs && p.mode != modeRest {
				c.pub = i
			}
			if p.mode == modeIdle && p.proto == protoWS {
				c.sub = true
			}
		}
		r.ws = append(r.ws, c)
		r.loops[i%len(r.loops)].add(c)
	}
	if p.mode == modeRest {
		for j := 0; j < p.pubs; j++ {
			c := &conn{kind: kindHTTP, num: j, topic: p.topicOf(j), pub: j}
			c.prefix = fmt.Appendf(nil, "POST %s/v1/topics/%s/messages HTTP/1.1\r\nHost: %s\r\n"+
				"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n",
				p.httpPrefix, p.topics[c.topic], p.httpHost, p.size+2)
			r.http = append(r.http, c)
			r.loops[j%len(r.loops)].add(c)
		}
	}
	for _, l := range r.loops {
		go l.run()
	}
	return r, nil
}

func newKey() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return base64.StdEncoding.EncodeToString(b[:])
}

func newMask() [4]byte {
	var m [4]byte
	_, _ = rand.Read(m[:])
	return m
}

// each runs f on every loop, one after the other.
func (r *runner) each(f func(*loop)) {
	for _, l := range r.loops {
		l.do(f)
	}
}

func (r *runner) total() int { return len(r.ws) + len(r.http) }

// ready and failed count connections that opened and that failed.
func (r *runner) counts() (ready, failed int) {
	for _, l := range r.loops {
		ready += int(l.ready.Load())
		failed += int(l.failed.Load())
	}
	return ready, failed
}

// errConnect is returned when connections could not be opened.
var errConnect = errors.New("bench: connections failed")

// connect opens every connection, at most --connect-concurrency at a time
// per loop, and waits until each is open or failed. tick is called every
// 100 ms with the counts so far.
func (r *runner) connect(ctx context.Context, tick func(ready, failed int)) error {
	r.each(func(l *loop) { l.dialMore() })
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	last := time.Now()
	for {
		ready, failed := r.counts()
		if time.Since(last) >= 100*time.Millisecond || ready+failed == r.total() {
			last = time.Now()
			if tick != nil {
				tick(ready, failed)
			}
		}
		if ready+failed == r.total() {
			if failed > 0 {
				return fmt.Errorf("%w: %d of %d (%s)", errConnect, failed, r.total(), r.firstError())
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: interrupted with %d of %d open", errConnect, ready, r.total())
		case <-t.C:
		}
	}
}

// firstError returns the most frequent error the loops noted.
func (r *runner) firstError() string {
	errs := map[string]uint64{}
	r.each(func(l *loop) {
		for k, v := range l.lc.errs {
			errs[k] += v
		}
	})
	best, n := "", uint64(0)
	for k, v := range errs {
		if v > n || (v == n && k < best) {
			best, n = k, v
		}
	}
	return best
}

// start makes the publishers send rate messages/s in total from now on
// (fan-out, rest, e2e, ramp), or starts the echo round trips.
func (r *runner) start(rate float64) {
	t0 := now()
	per := 0.0
	if r.p.pubs > 0 {
		per = rate / float64(r.p.pubs)
	}
	r.each(func(l *loop) {
		l.now = now()
		l.hist.Reset()
		if r.p.mode == modeEcho {
			l.echoing = true
			for _, c := range l.pubs {
				for c.state == stOpen && c.pending < r.p.inflight {
					c.publish()
				}
				if c.state == stOpen {
					l.flush(c)
				}
			}
			return
		}
		l.pubStart, l.ratePer = t0, per
		for _, c := range l.pubs {
			c.phaseSent = 0
		}
		l.publishing = true
	})
}

// stop ends publishing (and echo round trips).
func (r *runner) stop() {
	r.each(func(l *loop) { l.publishing, l.echoing = false, false })
}

// progress sums the loops' counters.
type progress struct {
	sent, delivered, distinct, expect uint64
	lastRecv                          int64
}

func (r *runner) progress() progress {
	var pr progress
	for _, l := range r.loops {
		pr.sent += l.sentN.Load()
		pr.delivered += l.delivered.Load()
		pr.distinct += l.distinct.Load()
		pr.expect += l.expect.Load()
		pr.lastRecv = max(pr.lastRecv, l.lastRecv.Load())
	}
	return pr
}

// drain waits until every expected delivery arrived (and, for REST, every
// request was answered), or until d passes. It reports whether all came.
func (r *runner) drain(ctx context.Context, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		pr := r.progress()
		if pr.distinct >= pr.expect && r.httpSettled() {
			return true
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// httpSettled reports whether no REST request waits for its answer.
func (r *runner) httpSettled() bool {
	if len(r.http) == 0 {
		return true
	}
	ok := true
	r.each(func(l *loop) {
		for _, c := range l.conns {
			if c.kind == kindHTTP && c.state == stOpen && c.pending > 0 {
				ok = false
			}
		}
	})
	return ok
}

// takeHist merges the loops' histograms into a new one and resets them.
func (r *runner) takeHist() *hdrhistogram.Histogram {
	h := hdrhistogram.New(histMinMicros, histMaxMicros, histDigits)
	r.each(func(l *loop) {
		h.Merge(l.hist)
		l.hist.Reset()
	})
	return h
}

// subIssues are one subscriber's counts.
type subIssues struct {
	Sub int `json:"sub"`
	issues
	Foreign   uint64 `json:"foreign,omitempty"`
	Malformed uint64 `json:"malformed,omitempty"`
}

// settled is the accounting of a run so far.
type settled struct {
	sent      uint64 // messages published (accepted, for REST)
	issues    issues
	foreign   uint64
	malformed uint64
	affected  int         // subscribers with any issue
	worst     []subIssues // subscribers with issues, most affected first, at most maxListed
	counts    loopCounts  // merged over loops
}

const maxListed = 100

// settle gathers what every publisher sent and has every subscriber work
// out its losses, duplicates and disorder.
func (r *runner) settle() settled {
	var s settled
	sent := r.sentPerPub()
	for _, n := range sent {
		s.sent += n
	}
	s.counts.closeCodes = map[int]uint64{}
	s.counts.errs = map[string]uint64{}
	var all []subIssues
	T := len(r.p.topics)
	r.each(func(l *loop) {
		mine := make([]uint64, 0, 64)
		for _, c := range l.conns {
			if c.track == nil {
				continue
			}
			mine = mine[:0]
			if r.p.mode == modeEcho {
				mine = append(mine, sent[c.pub])
			} else {
				for p := c.topic; p < r.p.pubs; p += T {
					mine = append(mine, sent[p])
				}
			}
			is := c.track.settle(mine)
			si := subIssues{Sub: c.num, issues: is, Foreign: c.track.foreign, Malformed: c.track.malformed}
			s.issues.add(is)
			s.foreign += c.track.foreign
			s.malformed += c.track.malformed
			if is.any() || si.Foreign != 0 || si.Malformed != 0 {
				all = append(all, si)
			}
		}
		lc := &l.lc
		s.counts.backlogged += lc.backlogged
		s.counts.serverErrs += lc.serverErrs
		s.counts.httpErrs += lc.httpErrs
		s.counts.disconnects += lc.disconnects
		for k, v := range lc.closeCodes {
			s.counts.closeCodes[k] += v
		}
		for k, v := range lc.errs {
			s.counts.errs[k] += v
		}
		if s.counts.firstErr == "" {
			s.counts.firstErr = lc.firstErr
		}
	})
	s.affected = len(all)
	sort.Slice(all, func(i, j int) bool {
		a, b := all[i], all[j]
		if ta, tb := a.Lost+a.Duplicated+a.OutOfOrder, b.Lost+b.Duplicated+b.OutOfOrder; ta != tb {
			return ta > tb
		}
		return a.Sub < b.Sub
	})
	if len(all) > maxListed {
		all = all[:maxListed]
	}
	s.worst = all
	return s
}

// sentPerPub returns what each publisher sent so far (for REST, what was
// accepted), by publisher id.
//
// What a publisher sent counts only when the server accepted it: a REST
// publish answered 2xx, a /ws publish not answered with an error.
func (r *runner) sentPerPub() []uint64 {
	sent := make([]uint64, r.p.pubs)
	if r.p.mode == modeEcho {
		sent = make([]uint64, len(r.ws))
	}
	r.each(func(l *loop) {
		for _, c := range l.pubs {
			n := c.seq - min(c.refused, c.seq)
			if c.kind == kindHTTP {
				n = c.accepted
			}
			sent[c.pub] = n
		}
	})
	return sent
}

// close stops the loops, which close their connections.
func (r *runner) close() {
	for _, l := range r.loops {
		l.do(func(l *loop) { l.quit = true })
		<-l.done
	}
}
