package loop

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"

	"github.com/chatgg/chatgg/codec"
)

// ErrStopped is returned by Start on an engine that was already stopped.
var ErrStopped = errors.New("loop: engine stopped")

// Engine is the WebSocket server: a gnet engine and the state of its loops.
type Engine struct {
	cfg Config
	log *slog.Logger

	eng      gnet.Engine
	addr     net.Addr
	booted   chan struct{}
	done     chan error
	stopping atomic.Bool

	// loopsMu guards loopsBy; loops is the copy-on-write list Deliver reads.
	loopsMu sync.Mutex
	loopsBy map[gnet.EventLoop]*loopState
	loops   atomic.Pointer[[]*loopState]

	// topicsMu guards topics: subscribers per topic on this node and whether
	// the bus confirmed the subscription. Taken on subscribe and unsubscribe
	// only, never on the delivery path.
	topicsMu sync.Mutex
	topics   map[string]*topicState

	stats stats

	lim              *limiter
	origins          origins
	anonSub, anonPub topicSet
	rejLog           rejectLog
}

// New returns an Engine for cfg; Start runs it.
func New(cfg Config) *Engine {
	cfg.setDefaults()
	e := &Engine{
		cfg:     cfg,
		log:     cfg.Logger.With("component", "loop"),
		booted:  make(chan struct{}),
		done:    make(chan error, 1),
		loopsBy: make(map[gnet.EventLoop]*loopState),
		topics:  make(map[string]*topicState),
		lim:     newLimiter(&cfg),
		origins: newOrigins(cfg.AllowedOrigins),
		anonSub: newTopicSet(cfg.AnonymousSubTopics),
		anonPub: newTopicSet(cfg.AnonymousPubTopics),
	}
	e.rejLog.interval = int64(cfg.RejectLogInterval)
	return e
}

// Start listens and runs the event loops in the background. It returns once
// the listener is bound (Addr is then valid) or binding failed.
func (e *Engine) Start() error {
	opts := []gnet.Option{
		gnet.WithMulticore(true),
		gnet.WithTicker(true),
		gnet.WithReuseAddr(true),
		gnet.WithTCPNoDelay(gnet.TCPNoDelay),
		gnet.WithLogger(gnetLogger{e.log}),
	}
	if e.cfg.Loops > 0 {
		opts = append(opts, gnet.WithNumEventLoop(e.cfg.Loops))
	}
	go func() {
		e.done <- gnet.Run(e, "tcp://"+e.cfg.Addr, opts...)
	}()
	select {
	case <-e.booted:
		return nil
	case err := <-e.done:
		if err == nil {
			err = ErrStopped
		}
		return fmt.Errorf("loop: listen on %s: %w", e.cfg.Addr, err)
	}
}

// Addr is the address the engine listens on.
func (e *Engine) Addr() net.Addr { return e.addr }

// Shutdown stops accepting, closes every connection with 1001, waits until
// the clients have gone or ctx ends, then stops the loops.
func (e *Engine) Shutdown(ctx context.Context) error {
	if e.stopping.Swap(true) {
		return nil
	}
	// Each loop closes its share of connections on every shutdown event
	// (see loopState.shutdown), until all are gone or ctx ends.
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		for _, ls := range e.loopList() {
			ls.post(event{kind: evShutdown})
		}
		if e.stats.conns.Load() == 0 {
			break
		}
		select {
		case <-ctx.Done():
			e.log.Warn("shutdown: closing remaining connections", "conns", e.stats.conns.Load())
			goto stop
		case <-tick.C:
		}
	}
stop:
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := e.eng.Stop(sctx); err != nil {
		return fmt.Errorf("loop: stop: %w", err)
	}
	return <-e.done
}

// Stopping reports whether Shutdown has begun.
func (e *Engine) Stopping() bool { return e.stopping.Load() }

// Deliver hands m to every local subscriber of m.Topic. The frames are
// encoded once here, on the caller's goroutine, and the same bytes are
// written by every loop to each of its subscribers. It does not block.
func (e *Engine) Deliver(m *codec.Message) {
	loops := e.loopList()
	if len(loops) == 0 {
		return
	}
	d := newDelivery(m)
	for _, ls := range loops {
		ls.post(event{kind: evDeliver, d: d})
	}
}

// Topics returns the topics with local subscribers and their counts.
func (e *Engine) Topics() map[string]int {
	e.topicsMu.Lock()
	defer e.topicsMu.Unlock()
	out := make(map[string]int, len(e.topics))
	for t, ts := range e.topics {
		out[t] = ts.n
	}
	return out
}

func (e *Engine) loopList() []*loopState {
	if p := e.loops.Load(); p != nil {
		return *p
	}
	return nil
}

// loopOf returns the state of c's event loop, creating it on the loop's
// first connection (gnet does not list its loops up front).
func (e *Engine) loopOf(c gnet.Conn) *loopState {
	el := c.EventLoop()
	e.loopsMu.Lock()
	defer e.loopsMu.Unlock()
	ls := e.loopsBy[el]
	if ls == nil {
		ls = newLoopState(e, el, len(e.loopsBy))
		e.loopsBy[el] = ls
		list := append(append([]*loopState(nil), e.loopList()...), ls)
		e.loops.Store(&list)
	}
	return ls
}

// topicState is one topic's node-wide subscription.
type topicState struct {
	n       int           // local subscribers
	ready   bool          // the bus confirmed the subscription
	pending bool          // Subscriber.Subscribe called, answer not yet in
	waiters []func(error) // subscribers waiting for the answer
}

// retain counts a new local subscriber of topic and tells the Subscriber
// when it is the first. It reports whether the subscription is already
// confirmed; if not, waiter (when not nil) is called once it is, or fails.
func (e *Engine) retain(topic string, waiter func(error)) (ready bool) {
	e.topicsMu.Lock()
	ts := e.topics[topic]
	if ts == nil {
		ts = &topicState{}
		e.topics[topic] = ts
	}
	ts.n++
	if ts.ready || e.cfg.Subscriber == nil {
		ts.ready = true
		e.topicsMu.Unlock()
		return true
	}
	if waiter != nil {
		ts.waiters = append(ts.waiters, waiter)
	}
	subscribe := !ts.pending
	ts.pending = true
	e.topicsMu.Unlock()
	if subscribe {
		e.cfg.Subscriber.Subscribe(topic, func(err error) { e.subscribed(ts, err) })
	}
	return false
}

// subscribed records the bus's answer for ts and wakes its waiters. After a
// failure the next subscriber asks the bus again.
func (e *Engine) subscribed(ts *topicState, err error) {
	e.topicsMu.Lock()
	ts.pending = false
	ts.ready = err == nil
	waiters := ts.waiters
	ts.waiters = nil
	e.topicsMu.Unlock()
	for _, w := range waiters {
		w(err)
	}
}

// release counts a local subscriber leaving and tells the Subscriber when
// it was the last.
func (e *Engine) release(topic string) {
	e.topicsMu.Lock()
	ts := e.topics[topic]
	last := ts != nil && ts.n <= 1
	if last {
		delete(e.topics, topic)
	} else if ts != nil {
		ts.n--
	}
	e.topicsMu.Unlock()
	if last && e.cfg.Subscriber != nil {
		e.cfg.Subscriber.Unsubscribe(topic)
	}
}

// OnBoot records the engine and the bound address.
func (e *Engine) OnBoot(eng gnet.Engine) gnet.Action {
	e.eng = eng
	e.addr = listenAddr(eng)
	close(e.booted)
	return gnet.None
}

// listenAddr finds the bound address (the port may have been 0).
func listenAddr(eng gnet.Engine) net.Addr {
	fd, err := eng.Dup()
	if err != nil {
		return nil
	}
	defer unix.Close(fd)
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return nil
	}
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return &net.TCPAddr{IP: net.IP(a.Addr[:]), Port: a.Port}
	case *unix.SockaddrInet6:
		return &net.TCPAddr{IP: net.IP(a.Addr[:]), Port: a.Port}
	}
	return nil
}

// OnShutdown is called once every loop has stopped.
func (e *Engine) OnShutdown(gnet.Engine) {}

// OnOpen registers a new TCP connection with its loop.
func (e *Engine) OnOpen(c gnet.Conn) ([]byte, gnet.Action) {
	if e.stopping.Load() {
		return nil, gnet.Close
	}
	if max := e.cfg.MaxConns; max > 0 && e.stats.conns.Load() >= hardCap(max) {
		// Far past the limit: no room even to answer 503.
		var peer netip.AddrPort
		if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
			peer = a.AddrPort()
		}
		e.rejected(rsnNodeFull, peer, 0, time.Now())
		return nil, gnet.Close
	}
	ls := e.loopOf(c)
	return nil, ls.open(c)
}

// OnClose drops the connection's state and subscriptions.
func (e *Engine) OnClose(c gnet.Conn, _ error) gnet.Action {
	if cn, ok := c.Context().(*conn); ok {
		cn.ls.closed(cn)
	}
	return gnet.None
}

// OnTraffic handles bytes from the connection: the upgrade, then frames.
func (e *Engine) OnTraffic(c gnet.Conn) gnet.Action {
	cn, ok := c.Context().(*conn)
	if !ok {
		return gnet.Close
	}
	return cn.ls.traffic(cn)
}

// OnTick asks every loop to check its connections' timers.
func (e *Engine) OnTick() (time.Duration, gnet.Action) {
	for _, ls := range e.loopList() {
		ls.post(event{kind: evSweep})
	}
	return sweepInterval(e.cfg), gnet.None
}

// sweepInterval is how often loops look for idle and stuck connections: a
// quarter of the shortest timeout, at most one second.
func sweepInterval(cfg Config) time.Duration {
	d := time.Second
	for _, t := range []time.Duration{cfg.HandshakeTimeout, cfg.IdleTimeout / 2, cfg.CloseTimeout} {
		if t/4 < d {
			d = t / 4
		}
	}
	if d < 10*time.Millisecond {
		d = 10 * time.Millisecond
	}
	return d
}

// gnetLogger sends gnet's own logs to slog.
type gnetLogger struct{ l *slog.Logger }

func (g gnetLogger) Debugf(format string, args ...any) {
	if g.l.Enabled(context.Background(), slog.LevelDebug) {
		g.l.Debug(fmt.Sprintf(format, args...))
	}
}
func (g gnetLogger) Infof(format string, args ...any) {
	if g.l.Enabled(context.Background(), slog.LevelDebug) {
		g.l.Debug(fmt.Sprintf(format, args...)) // gnet's start-up chatter is debug for us
	}
}
func (g gnetLogger) Warnf(format string, args ...any)  { g.l.Warn(fmt.Sprintf(format, args...)) }
func (g gnetLogger) Errorf(format string, args ...any) { g.l.Error(fmt.Sprintf(format, args...)) }
func (g gnetLogger) Fatalf(format string, args ...any) { g.l.Error(fmt.Sprintf(format, args...)) }

// Stats is a snapshot of the engine's counters.
type Stats struct {
	Conns            int64            // open TCP connections
	Upgraded         int64            // upgrades completed
	UpgradeRejected  map[int]int64    // upgrades refused, by HTTP status
	MessagesIn       int64            // data messages received
	MessagesOut      int64            // message frames written
	Closed           map[uint16]int64 // connections closed by the server, by close code
	SlowConsumers    int64            // connections closed for exceeding MaxOutboundBytes
	HandshakeTimeout int64            // connections closed before completing the upgrade
	Rejections       map[string]int64 // refusals by reason (docs/security.md); only reasons seen
	Loops            int
}

// stats holds the counters; all atomic, updated from loops.
type stats struct {
	conns, upgraded, msgIn, msgOut, slow, handshakeTimeout atomic.Int64

	rejections [numReasons]atomic.Int64

	mu       sync.Mutex
	rejected map[int]int64
	closed   map[uint16]int64
}

func (s *stats) reject(status int) {
	s.mu.Lock()
	if s.rejected == nil {
		s.rejected = make(map[int]int64)
	}
	s.rejected[status]++
	s.mu.Unlock()
}

func (s *stats) close(code uint16) {
	s.mu.Lock()
	if s.closed == nil {
		s.closed = make(map[uint16]int64)
	}
	s.closed[code]++
	s.mu.Unlock()
}

// Stats returns the engine's counters.
func (e *Engine) Stats() Stats {
	s := &e.stats
	out := Stats{
		Conns:            s.conns.Load(),
		Upgraded:         s.upgraded.Load(),
		MessagesIn:       s.msgIn.Load(),
		MessagesOut:      s.msgOut.Load(),
		SlowConsumers:    s.slow.Load(),
		HandshakeTimeout: s.handshakeTimeout.Load(),
		UpgradeRejected:  map[int]int64{},
		Closed:           map[uint16]int64{},
		Rejections:       map[string]int64{},
		Loops:            len(e.loopList()),
	}
	for r := range numReasons {
		if n := s.rejections[r].Load(); n > 0 {
			out.Rejections[r.String()] = n
		}
	}
	s.mu.Lock()
	for k, v := range s.rejected {
		out.UpgradeRejected[k] = v
	}
	for k, v := range s.closed {
		out.Closed[k] = v
	}
	s.mu.Unlock()
	return out
}

// String renders an address for logs.
func addrString(a net.Addr) string {
	if t, ok := a.(*net.TCPAddr); ok {
		return net.JoinHostPort(t.IP.String(), strconv.Itoa(t.Port))
	}
	if a == nil {
		return ""
	}
	return a.String()
}
