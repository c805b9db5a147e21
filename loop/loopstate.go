package loop

import (
	"context"
	"math/rand/v2"
	"net"
	"sync"
	"time"

	"github.com/gobwas/ws"
	"github.com/panjf2000/gnet/v2"

	"github.com/chatgg/chatgg/codec"
)

// eventKind says what an inbox event asks the loop to do.
type eventKind uint8

const (
	evDeliver   eventKind = iota + 1 // write d to the topic's local subscribers
	evAck                            // answer a publish: ack or error
	evClose                          // close c with code
	evSweep                          // check timers
	evShutdown                       // close every connection with 1001
	evSubAck                         // the node's subscription to a topic is confirmed or failed
	evRecovered                      // a sub with "after" has its missed messages
	evStored                         // a pub with "stored":true is in the store
)

// event is one unit of work posted to a loop from another goroutine.
type event struct {
	kind      eventKind
	d         *delivery
	c         *conn
	ref       string
	id        string
	err       error
	code      ws.StatusCode
	msgs      []*codec.Message // evRecovered
	recovered bool             // evRecovered
}

// subset is the local subscribers of one topic on one loop. A slice, not a
// map: it is walked on every delivery.
type subset struct {
	topic string
	conns []*conn
}

// loopState is one event loop's share of the engine: its connections, their
// subscriptions, its inbox and its scratch buffers. Fields below mu are
// touched only on the loop's goroutine.
type loopState struct {
	e   *Engine
	el  gnet.EventLoop
	idx int
	run gnet.RunnableFunc

	mu        sync.Mutex
	inbox     []event
	scheduled bool

	work    []event
	conns   []*conn
	subs    map[string]*subset
	touched []*conn
	sent    int64  // frames written by flush since the last flushTouched
	wbuf    []byte // scratch: small queued frames coalesced by flush
	out     []byte // scratch: frames written during one OnTraffic, JSON bodies
	frame   []byte // scratch: the frame around a JSON body in out
	tok     []byte // scratch: an unescaped ?token= query value
	now     time.Time

	shuttingDown bool // shutdown has drawn the connections' close moments
}

func newLoopState(e *Engine, el gnet.EventLoop, idx int) *loopState {
	ls := &loopState{e: e, el: el, idx: idx, subs: make(map[string]*subset)}
	ls.run = ls.drain
	return ls
}

// post queues ev for the loop and wakes it if it is not already due to
// drain its inbox. Safe from any goroutine; never blocks on I/O.
func (ls *loopState) post(ev event) {
	ls.mu.Lock()
	ls.inbox = append(ls.inbox, ev)
	wake := !ls.scheduled
	ls.scheduled = true
	ls.mu.Unlock()
	if wake {
		if err := ls.el.Execute(context.Background(), ls.run); err != nil {
			// The engine is shutting down; nothing will drain the inbox.
			ls.mu.Lock()
			ls.scheduled = false
			ls.inbox = ls.inbox[:0]
			ls.mu.Unlock()
		}
	}
}

// drain runs on the loop: it handles every queued event, then writes each
// touched connection once.
func (ls *loopState) drain(context.Context) error {
	ls.mu.Lock()
	ls.work, ls.inbox = ls.inbox, ls.work[:0]
	ls.scheduled = false
	ls.mu.Unlock()

	ls.now = time.Now()
	for i := range ls.work {
		ev := &ls.work[i]
		switch ev.kind {
		case evDeliver:
			ls.deliver(ev.d)
		case evAck:
			ls.ack(ev)
		case evClose:
			if ev.c.state == stOpen {
				ls.closeConn(ev.c, ev.code, ev.ref)
			}
		case evSweep:
			ls.sweep()
		case evShutdown:
			ls.shutdown()
		case evSubAck:
			ls.subAck(ev)
		case evRecovered:
			ls.recovered(ev)
		case evStored:
			ls.stored(ev)
		}
		*ev = event{} // drop references for the GC
	}
	ls.flushTouched()
	return nil
}

// Limits of the write batching in flush.
const (
	// maxPendFrames bounds the frames queued on one connection during one
	// drain; a connection that has that many is written at once. A burst of
	// deliveries so never asks writev for more than IOV_MAX (1024) buffers,
	// which fails with EINVAL and made gnet drop the connection, and pend
	// keeps its capacity between drains: fan-out allocates nothing per
	// subscriber.
	maxPendFrames = 64
	// coalesceBytes: queued frames up to this many bytes in all are copied
	// into one buffer and written with one write; copying a few KiB costs
	// less than writev walking one iovec per small frame.
	coalesceBytes = 16 << 10
	// writevFrames is the most buffers given to one writev: x/sys/unix
	// builds the iovec array on the stack up to 8 and allocates beyond.
	writevFrames = 8
)

// deliver queues d's frame on every local subscriber of its topic.
func (ls *loopState) deliver(d *delivery) {
	s := ls.subs[d.m.Topic]
	if s == nil {
		return
	}
	// Backwards: a failed write closes c, which moves the last subscriber,
	// already served, into c's place.
	for i := len(s.conns) - 1; i >= 0; i-- {
		c := s.conns[i]
		if c.state != stOpen {
			continue
		}
		if c.recov != nil {
			if r := c.recovering(d.m.Topic); r != nil {
				if r.doneAt == 0 {
					ls.hold(c, r, d)
					continue
				}
				if c.afterReplay(r, d) {
					continue
				}
			}
		}
		switch len(c.pend) {
		case 0:
			ls.touched = append(ls.touched, c)
		case maxPendFrames:
			ls.flush(c) // c stays in touched for what follows
			if c.state != stOpen {
				continue
			}
		}
		c.pend = append(c.pend, d.frame(c.mode))
	}
}

// flushTouched writes every touched connection's queued frames.
func (ls *loopState) flushTouched() {
	for i, c := range ls.touched {
		ls.touched[i] = nil
		ls.flush(c)
	}
	ls.touched = ls.touched[:0]
	if ls.sent > 0 {
		ls.e.stats.msgOut.Add(ls.sent)
		ls.sent = 0
	}
}

// flush writes c's queued frames with as few syscalls as allocation-free
// writes allow. Frames queued for a connection that has since started
// closing are dropped: nothing follows a close frame (RFC 6455 §5.5.1).
func (ls *loopState) flush(c *conn) {
	switch {
	case len(c.pend) == 0:
		return
	case c.state != stOpen:
	case len(c.pend) == 1:
		_, _ = c.gc.Write(c.pend[0])
		ls.sent++
	default:
		n := 0
		for _, f := range c.pend {
			n += len(f)
		}
		if n <= coalesceBytes {
			ls.wbuf = ls.wbuf[:0]
			for _, f := range c.pend {
				ls.wbuf = append(ls.wbuf, f...)
			}
			_, _ = c.gc.Write(ls.wbuf)
		} else {
			// A failed write closes c: stop there.
			for p := c.pend; len(p) > 0 && c.state == stOpen; {
				k := min(len(p), writevFrames)
				_, _ = c.gc.Writev(p[:k])
				p = p[k:]
			}
		}
		ls.sent += int64(len(c.pend))
	}
	clear(c.pend)
	c.pend = c.pend[:0]
	ls.checkBackpressure(c)
}

// checkBackpressure closes a connection whose unsent bytes passed the
// limit: a slow consumer is never left to grow (close code 4008).
func (ls *loopState) checkBackpressure(c *conn) {
	limit := ls.e.cfg.MaxOutboundBytes
	if c.mode == modeEcho {
		// An echo writes a whole message at once, up to EchoMaxMessageBytes:
		// more than a socket buffer takes. Allow one such message on top.
		limit += codec.FrameSize(ls.e.cfg.EchoMaxMessageBytes)
	}
	if c.state == stOpen && c.gc.OutboundBuffered() > limit {
		// Publish what this pass wrote first, so that a reader of the stats
		// never sees the slow consumer without the frames before it.
		if ls.sent > 0 {
			ls.e.stats.msgOut.Add(ls.sent)
			ls.sent = 0
		}
		ls.e.stats.slow.Add(1)
		ls.closeConn(c, codec.CloseSlowConsumer, "slow consumer")
	}
}

// ack answers a publish on the connection that made it.
func (ls *loopState) ack(ev *event) {
	c := ev.c
	c.unanswered.Add(-1)
	if c.state != stOpen {
		return
	}
	if ev.err != nil {
		if c.mode != modeJSON {
			ls.closeConn(c, codec.CloseInternal, "publish failed")
			return
		}
		ls.out = codec.AppendError(ls.out[:0], refBytes(ev.ref), codeUnavailable, "publish failed: "+ev.err.Error())
	} else {
		ls.out = codec.AppendAck(ls.out[:0], refBytes(ev.ref), ev.id, codec.IDTime(ev.id))
	}
	ls.writeNow(c)
	if c.quiescing && c.unanswered.Load() == 0 {
		ls.closeConn(c, codec.CloseGoingAway, "server shutting down")
	}
}

func refBytes(ref string) []byte {
	if ref == "" {
		return nil
	}
	return []byte(ref)
}

// writeNow frames ls.out as one text message and writes it to c.
func (ls *loopState) writeNow(c *conn) {
	ls.frame = codec.AppendFrame(ls.frame[:0], ws.OpText, true, ls.out)
	_, _ = c.gc.Write(ls.frame)
	ls.checkBackpressure(c)
}

// stored answers a pub with "stored":true a second time.
func (ls *loopState) stored(ev *event) {
	if ev.c.state != stOpen {
		return
	}
	if ev.err != nil {
		ls.out = codec.AppendError(ls.out[:0], refBytes(ev.ref), codeUnavailable, "storage not confirmed: "+ev.err.Error())
	} else {
		ls.out = codec.AppendStored(ls.out[:0], refBytes(ev.ref), ev.id)
	}
	ls.writeNow(ev.c)
}

// subAck answers a sub that waited for the bus: an ack, or an error after
// which the connection is not subscribed.
func (ls *loopState) subAck(ev *event) {
	c := ev.c
	if c.state != stOpen {
		return
	}
	if ev.err != nil {
		if i := c.subscribedTo([]byte(ev.id)); i >= 0 {
			ls.unsubscribe(c, i)
		}
		ls.out = codec.AppendError(ls.out[:0], refBytes(ev.ref), codeUnavailable, "subscribe failed: "+ev.err.Error())
	} else if r := c.recovering(ev.id); r != nil && r.doneAt == 0 {
		ls.askRecoverer(c, r)
		return
	} else if ev.ref != "" {
		ls.out = codec.AppendAck(ls.out[:0], refBytes(ev.ref), "", 0)
	} else {
		return
	}
	ls.writeNow(c)
}

// subscribe adds c to topic's local subscribers. It reports whether the
// node's subscription is confirmed; if not, waiter is called when it is.
func (ls *loopState) subscribe(c *conn, topic string, waiter func(error)) (ready bool) {
	s := ls.subs[topic]
	if s == nil {
		s = &subset{topic: topic}
		ls.subs[topic] = s
	}
	c.subs = append(c.subs, subRef{s: s, idx: int32(len(s.conns))})
	s.conns = append(s.conns, c)
	return ls.e.retain(topic, waiter)
}

// unsubscribe removes c's i-th subscription.
func (ls *loopState) unsubscribe(c *conn, i int) {
	r := c.subs[i]
	s := r.s
	if c.recov != nil {
		c.dropRecovery(s.topic)
	}
	last := len(s.conns) - 1
	if int(r.idx) != last {
		moved := s.conns[last]
		s.conns[r.idx] = moved
		for j := range moved.subs {
			if moved.subs[j].s == s {
				moved.subs[j].idx = r.idx
				break
			}
		}
	}
	s.conns[last] = nil
	s.conns = s.conns[:last]
	if len(s.conns) == 0 {
		delete(ls.subs, s.topic)
	}
	c.subs[i] = c.subs[len(c.subs)-1]
	c.subs = c.subs[:len(c.subs)-1]
	ls.e.release(s.topic)
}

// open registers a new TCP connection. It answers gnet.Close for one that
// is past the per-address hard cap.
func (ls *loopState) open(gc gnet.Conn) gnet.Action {
	ls.now = time.Now()
	c := &conn{gc: gc, ls: ls, idx: int32(len(ls.conns)), opened: ls.now.UnixNano()}
	c.lastRead = c.opened
	if a, ok := gc.RemoteAddr().(*net.TCPAddr); ok {
		c.peer = a.AddrPort()
	}
	ls.conns = append(ls.conns, c)
	gc.SetContext(c)
	ls.e.stats.conns.Add(1)
	if ls.e.cfg.ProxyProtocol {
		c.state = stProxy // the client's address comes with the header
		return gnet.None
	}
	if !ls.countPeer(c) {
		return gnet.Close
	}
	return gnet.None
}

// closed forgets a connection gnet has closed.
func (ls *loopState) closed(c *conn) {
	if c.state == stClosed {
		return
	}
	c.state = stClosed
	for len(c.subs) > 0 {
		ls.unsubscribe(c, len(c.subs)-1)
	}
	last := len(ls.conns) - 1
	if int(c.idx) != last {
		moved := ls.conns[last]
		ls.conns[c.idx] = moved
		moved.idx = c.idx
	}
	ls.conns[last] = nil
	ls.conns = ls.conns[:last]
	c.rd.Release()
	c.gc.SetContext(nil)
	if c.ipCounted {
		ls.e.lim.release(c.peer.Addr())
	}
	c.auth = nil
	ls.e.stats.conns.Add(-1)
}

// sweep enforces the handshake, idle and close timeouts.
func (ls *loopState) sweep() {
	cfg := &ls.e.cfg
	now := ls.now.UnixNano()
	// Backwards: closing c (el.Close, or a failed write) calls closed(),
	// which moves the last connection, already checked, into c's place.
	for i := len(ls.conns) - 1; i >= 0; i-- {
		c := ls.conns[i]
		switch c.state {
		case stHandshake, stProxy:
			if now-c.opened > int64(cfg.HandshakeTimeout) {
				ls.e.stats.handshakeTimeout.Add(1)
				ls.e.rejected(rsnHandshakeTimeout, c.peer, 0, ls.now)
				_ = ls.el.Close(c.gc)
			}
		case stOpen:
			if c.recov != nil {
				c.expireReplays(now)
			}
			idle := now - c.lastRead
			switch {
			case c.expired(ls.now):
				// Checked here, on the loop's sweep: no timer per connection.
				ls.e.rejected(rsnSessionExpired, c.peer, closeTokenExpired, ls.now)
				ls.closeConn(c, closeTokenExpired, "token expired")
			case idle > int64(cfg.IdleTimeout):
				ls.closeConn(c, codec.CloseGoingAway, "idle timeout")
			case idle > int64(cfg.IdleTimeout/2) && !c.pinged:
				c.pinged = true
				_, _ = c.gc.Write(codec.AppendFrame(ls.out[:0], ws.OpPing, true, nil))
			}
		case stClosing:
			if now-c.closing > int64(cfg.CloseTimeout) {
				_ = ls.el.Close(c.gc)
			}
		}
	}
}

// shutdownAnswerWait bounds how long shutdown holds a connection open past
// its moment for the answers to its publishes (the broker answers within
// its own timeout; this only covers the usual milliseconds).
const shutdownAnswerWait = time.Second

// shutdown closes the loop's connections with 1001, spread over
// CloseWindow: on the first call each open connection draws a random moment
// in the window (jitter, so clients reconnect elsewhere over the window
// rather than all at once); Engine.Shutdown posts shutdown repeatedly and
// each call closes the connections whose moment has come. Connections still
// upgrading are dropped at once. While stOpen, c.closing holds the moment.
func (ls *loopState) shutdown() {
	now := ls.now.UnixNano()
	if !ls.shuttingDown {
		ls.shuttingDown = true
		w := int64(ls.e.cfg.CloseWindow)
		for _, c := range ls.conns {
			c.closing = now
			if w > 0 {
				c.closing += rand.Int64N(w)
			}
		}
	}
	// Backwards, as in sweep.
	for i := len(ls.conns) - 1; i >= 0; i-- {
		c := ls.conns[i]
		switch c.state {
		case stOpen:
			// A connection opened since the first call has closing 0: due.
			// One with publishes still unanswered quiesces: it takes no new
			// ones and is closed with the last answer (see ack), or at most
			// shutdownAnswerWait past its moment. Closed first, its client
			// would resend them elsewhere while they are still being
			// queued here, and meet "still in flight".
			if c.closing > now {
				continue
			}
			if c.unanswered.Load() > 0 && now-c.closing < int64(shutdownAnswerWait) {
				c.quiescing = true
				continue
			}
			ls.closeConn(c, codec.CloseGoingAway, "server shutting down")
		case stHandshake, stProxy:
			_ = ls.el.Close(c.gc)
		}
	}
}

// closeConn starts the closing handshake: it sends a close frame and waits
// (at most CloseTimeout) for the client's answer before dropping the TCP
// connection. Frames for the connection stop being queued.
func (ls *loopState) closeConn(c *conn, code ws.StatusCode, reason string) {
	if c.state != stOpen {
		return
	}
	c.state = stClosing
	c.closing = ls.now.UnixNano()
	if c.closing == 0 {
		c.closing = time.Now().UnixNano()
	}
	ls.e.stats.close(uint16(code))
	_, _ = c.gc.Write(codec.AppendClose(nil, code, reason))
}
