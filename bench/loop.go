package main

import (
	"bytes"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/gobwas/ws"
	"golang.org/x/sys/unix"

	"github.com/chatgg/chatgg/codec"
)

// The client side of a run: a few event loops on raw epoll, each owning its
// connections. No goroutine per connection, and nothing allocated per
// message: every connection's output buffer and frame tail are reused, a
// loop reads into one buffer it owns, payloads are parsed in place, and
// latencies go to a preallocated HDR histogram.
//
// A loop's state is touched by its own goroutine only. The main goroutine
// reads the atomic progress counters, and everything else through do, which
// runs a function on the loop between two polls.

// Histogram bounds, in microseconds: 1 µs to 60 s, three significant digits.
const (
	histMinMicros = 1
	histMaxMicros = 60_000_000
	histDigits    = 3
)

const (
	// readBufBytes is a loop's read buffer: a frame tail (at most one
	// frame) plus room for a large read.
	readBufBytes = maxServerFrameBytes + 256<<10
	// maxPendingOut bounds the unsent bytes a connection may queue. A
	// publisher over it skips its publish (counted as backlogged).
	maxPendingOut = 4 << 20
	// maxBurstPerTick bounds how many messages one publisher catches up
	// with in one tick, so a stalled loop does not flood the server.
	maxBurstPerTick = 1000
	// tickEvery paces publishers.
	tickEvery = time.Millisecond
)

// Connection states.
type connState uint8

const (
	stQueued      connState = iota // not dialled yet
	stConnecting                   // TCP connect in progress
	stHandshake                    // upgrade request sent, waiting for 101
	stSubscribing                  // /ws: sub sent, waiting for its ack
	stOpen                         // ready: counted in loop.ready
	stClosed
)

// Connection kinds.
type connKind uint8

const (
	kindWS   connKind = iota // a WebSocket client
	kindHTTP                 // a REST publisher (HTTP/1.1 keep-alive)
)

// errHandshakeTimeout fails a connection that did not open in time.
var errHandshakeTimeout = errors.New("bench: connection not open within --connect-timeout")

// conn is one client connection. Loop goroutine only.
type conn struct {
	l     *loop
	idx   int32 // index in l.conns, carried in epoll events
	fd    int
	kind  connKind
	state connState
	epOut bool // EPOLLOUT registered

	num   int // index among the run's connections of its kind
	topic int // topic index
	path  string
	key   string  // Sec-WebSocket-Key
	mask  [4]byte // one masking key per connection
	sub   bool    // sends a /ws sub and waits for the ack before open

	deadline int64 // now() by which it must be open

	hs  []byte // handshake response while in stHandshake
	fr  frameReader
	out []byte // bytes to write; out[outOff:] not written yet
	oo  int

	// Publishing. pub is the publisher id (-1: not a publisher).
	pub       int
	seq       uint64 // last sequence sent
	phaseSent uint64 // sent since the current phase started
	prefix    []byte // /ws: the pub request before data; REST: the request head
	pending   int    // REST: requests awaiting their response; echo: frames in flight
	accepted  uint64 // REST: publishes answered 2xx
	refused   uint64 // /ws: publishes answered with an error, so never accepted

	// Receiving. track is nil for connections that do not count.
	track *subTrack
}

// loop is one event loop.
type loop struct {
	r      *runner
	epfd   int
	wakefd int
	conns  []*conn
	events []unix.EpollEvent
	rbuf   []byte
	hist   *hdrhistogram.Histogram
	now    int64
	cmds   chan func(*loop)
	done   chan struct{}
	quit   bool

	dialq    []*conn // connections still to dial
	dialling int     // connections dialled and not open nor failed
	pubs     []*conn

	publishing bool
	echoing    bool
	pubStart   int64
	ratePer    float64 // messages/s per publisher

	// Progress, read by the main goroutine.
	ready     atomic.Int64
	failed    atomic.Int64
	delivered atomic.Uint64 // deliveries to counted connections, duplicates included
	distinct  atomic.Uint64 // distinct deliveries
	expect    atomic.Uint64 // deliveries expected from what was sent
	sentN     atomic.Uint64 // messages published
	lastRecv  atomic.Int64  // now() of the last counted delivery

	// Loop goroutine only; read through do.
	lc loopCounts
}

// loopCounts are a loop's event counts.
type loopCounts struct {
	backlogged  uint64         // publishes skipped: the connection's output was full
	serverErrs  uint64         // /ws error objects received
	httpErrs    uint64         // REST publishes answered other than 2xx
	disconnects uint64         // open connections lost during the run
	closeCodes  map[int]uint64 // close frames received, by code
	errs        map[string]uint64
	firstErr    string // the first /ws error object or HTTP error status line
}

func newLoop(r *runner) (*loop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("bench: epoll: %w", err)
	}
	wfd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("bench: eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: -1}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wfd, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(wfd)
		return nil, fmt.Errorf("bench: epoll add: %w", err)
	}
	l := &loop{
		r:      r,
		epfd:   epfd,
		wakefd: wfd,
		events: make([]unix.EpollEvent, 512),
		rbuf:   make([]byte, readBufBytes),
		hist:   hdrhistogram.New(histMinMicros, histMaxMicros, histDigits),
		cmds:   make(chan func(*loop), 16),
		done:   make(chan struct{}),
		lc:     loopCounts{closeCodes: map[int]uint64{}, errs: map[string]uint64{}},
	}
	return l, nil
}

// do runs f on the loop goroutine and waits for it.
func (l *loop) do(f func(*loop)) {
	ran := make(chan struct{})
	l.cmds <- func(l *loop) { f(l); close(ran) }
	l.wake()
	select {
	case <-ran:
	case <-l.done:
	}
}

func (l *loop) wake() {
	var one = [8]byte{1}
	_, _ = unix.Write(l.wakefd, one[:])
}

// run is the loop goroutine.
func (l *loop) run() {
	defer close(l.done)
	defer l.shutdown()
	var drain [8]byte
	nextTick := now()
	for !l.quit {
		timeout := 100 // ms: handshake deadlines need a look now and then
		if l.publishing {
			timeout = int((nextTick - now() + int64(time.Millisecond) - 1) / int64(time.Millisecond))
			timeout = max(timeout, 0)
		}
		n, err := unix.EpollWait(l.epfd, l.events, timeout)
		if err != nil && err != unix.EINTR {
			l.noteErr(fmt.Errorf("bench: epoll_wait: %w", err))
			return
		}
		l.now = now()
		for i := 0; i < n; i++ {
			ev := l.events[i]
			if ev.Fd < 0 {
				_, _ = unix.Read(l.wakefd, drain[:])
				continue
			}
			c := l.conns[ev.Fd]
			if c.state == stClosed {
				continue
			}
			l.event(c, ev.Events)
		}
		for more := true; more; {
			select {
			case f := <-l.cmds:
				f(l)
			default:
				more = false
			}
		}
		if l.publishing {
			if t := now(); t >= nextTick {
				l.now = t
				nextTick = max(l.tick(), t+int64(tickEvery))
			}
		}
		if l.dialling > 0 {
			l.checkDeadlines()
		}
	}
}

// shutdown closes every connection: the run is over.
func (l *loop) shutdown() {
	for _, c := range l.conns {
		if c.state != stClosed && c.state != stQueued {
			unix.Close(c.fd)
			c.state = stClosed
		}
	}
	unix.Close(l.epfd)
	unix.Close(l.wakefd)
}

// add registers c with the loop and queues it for dialling.
func (l *loop) add(c *conn) {
	c.l = l
	c.idx = int32(len(l.conns))
	c.fd = -1
	l.conns = append(l.conns, c)
	if c.pub >= 0 {
		l.pubs = append(l.pubs, c)
	}
	l.dialq = append(l.dialq, c)
}

// dialMore starts connections until limit are in progress.
func (l *loop) dialMore() {
	for l.dialling < l.r.p.connectConcurrency && len(l.dialq) > 0 {
		c := l.dialq[0]
		l.dialq = l.dialq[1:]
		l.dialling++
		if err := l.dial(c); err != nil {
			l.fail(c, err)
		}
	}
}

func (l *loop) dial(c *conn) error {
	p := l.r.p
	fd, err := unix.Socket(p.family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("bench: socket: %w", err)
	}
	c.fd = fd
	c.state = stConnecting
	c.deadline = l.now + int64(p.connectTimeout)
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	if sa := p.sourceAddr(int(c.num)); sa != nil {
		if err := unix.Bind(fd, sa); err != nil {
			return fmt.Errorf("bench: bind source address: %w", err)
		}
	}
	sa := p.wsAddr
	if c.kind == kindHTTP {
		sa = p.httpAddr
	}
	if err := unix.Connect(fd, sa); err != nil && err != unix.EINPROGRESS {
		return fmt.Errorf("bench: connect: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP, Fd: c.idx}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return fmt.Errorf("bench: epoll add: %w", err)
	}
	c.epOut = true
	return nil
}

// checkDeadlines fails connections that take too long to open.
func (l *loop) checkDeadlines() {
	for _, c := range l.conns {
		if c.state >= stConnecting && c.state < stOpen && l.now > c.deadline {
			l.fail(c, errHandshakeTimeout)
		}
	}
}

// opened marks c ready.
func (l *loop) opened(c *conn) {
	c.state = stOpen
	l.dialling--
	l.ready.Add(1)
	l.dialMore()
}

// fail closes c for err: before it opened, it counts as a failed
// connection; after, as a disconnect.
func (l *loop) fail(c *conn, err error) {
	if c.state == stClosed {
		return
	}
	if c.state == stOpen {
		l.lc.disconnects++
	} else {
		l.dialling--
		l.failed.Add(1)
	}
	l.noteErr(err)
	if c.fd >= 0 {
		unix.Close(c.fd)
	}
	c.state = stClosed
	c.hs, c.out, c.oo = nil, nil, 0
	l.dialMore()
}

func (l *loop) noteErr(err error) {
	if len(l.lc.errs) < 32 {
		l.lc.errs[err.Error()]++
	} else if _, ok := l.lc.errs[err.Error()]; ok {
		l.lc.errs[err.Error()]++
	}
}

// event handles the epoll events of one connection.
func (l *loop) event(c *conn, evs uint32) {
	if c.state == stConnecting {
		if evs&(unix.EPOLLOUT|unix.EPOLLERR|unix.EPOLLHUP) == 0 {
			return
		}
		if e, err := unix.GetsockoptInt(c.fd, unix.SOL_SOCKET, unix.SO_ERROR); err != nil || e != 0 {
			if err == nil {
				err = unix.Errno(e)
			}
			l.fail(c, fmt.Errorf("bench: connect: %w", err))
			return
		}
		l.connected(c)
		return
	}
	if evs&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		l.readable(c)
		if c.state == stClosed {
			return
		}
	}
	if evs&unix.EPOLLOUT != 0 || c.oo < len(c.out) {
		l.flush(c)
	}
}

// connected sends the opening request: a WebSocket upgrade, or nothing for
// an HTTP connection, which is open as soon as TCP is.
func (l *loop) connected(c *conn) {
	if c.kind == kindHTTP {
		l.opened(c)
		l.flush(c)
		return
	}
	p := l.r.p
	c.out = fmt.Appendf(c.out[:0], "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nUser-Agent: chatgg-bench\r\n\r\n", c.path, p.hostHeader, c.key)
	c.state = stHandshake
	l.flush(c)
}

// readable reads what c has and handles it.
func (l *loop) readable(c *conn) {
	k := c.fr.prepare(l.rbuf)
	n, err := unix.Read(c.fd, l.rbuf[k:])
	if err == unix.EAGAIN || err == unix.EINTR {
		return
	}
	if err != nil || n <= 0 {
		if err == nil {
			err = errEOF
		}
		l.fail(c, fmt.Errorf("bench: read: %w", err))
		return
	}
	l.now = now()
	b := l.rbuf[:k+n]
	switch {
	case c.state == stHandshake:
		l.handshake(c, b[k:])
	case c.kind == kindHTTP:
		err = c.consumeHTTP(b)
	default:
		err = c.fr.consume(b, c)
	}
	if err != nil {
		l.fail(c, err)
		return
	}
	if c.state != stClosed && c.oo < len(c.out) {
		l.flush(c)
	}
}

var errEOF = errors.New("connection closed by the server")

// handshake accumulates and checks the 101 response. Bytes after it are
// frames already.
func (l *loop) handshake(c *conn, b []byte) {
	c.hs = append(c.hs, b...)
	end := bytes.Index(c.hs, []byte("\r\n\r\n"))
	if end < 0 {
		if len(c.hs) > 16<<10 {
			l.fail(c, errors.New("bench: upgrade response head over 16 KiB"))
		}
		return
	}
	head := c.hs[:end+4]
	if err := checkUpgradeResponse(head, c.key); err != nil {
		l.fail(c, err)
		return
	}
	rest := c.hs[end+4:]
	c.hs = nil
	if c.sub {
		c.out = appendMasked(c.out, ws.OpText, fmt.Appendf(nil, `{"op":"sub","topic":%q,"ref":"s"}`, l.r.p.topics[c.topic]), c.mask)
		c.state = stSubscribing
	} else {
		l.opened(c)
	}
	if len(rest) > 0 {
		k := copy(l.rbuf, rest)
		if err := c.fr.consume(l.rbuf[:k], c); err != nil {
			l.fail(c, err)
		}
	}
}

// checkUpgradeResponse checks a server's answer to the upgrade request:
// status 101 and the accept key of RFC 6455 §4.2.2.
func checkUpgradeResponse(head []byte, key string) error {
	line, _, _ := bytes.Cut(head, []byte("\r\n"))
	if !bytes.HasPrefix(line, []byte("HTTP/1.1 101")) {
		return fmt.Errorf("bench: upgrade refused: %q", line)
	}
	want := codec.AcceptKey(nil, []byte(key))
	for _, h := range bytes.Split(head, []byte("\r\n")) {
		name, val, ok := bytes.Cut(h, []byte(":"))
		if ok && bytes.EqualFold(bytes.TrimSpace(name), []byte("Sec-WebSocket-Accept")) {
			if !bytes.Equal(bytes.TrimSpace(val), want) {
				return errors.New("bench: wrong Sec-WebSocket-Accept")
			}
			return nil
		}
	}
	return errors.New("bench: upgrade response without Sec-WebSocket-Accept")
}

// flush writes what c has queued.
func (l *loop) flush(c *conn) {
	for c.oo < len(c.out) {
		n, err := unix.Write(c.fd, c.out[c.oo:])
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN {
			l.wantOut(c, true)
			return
		}
		if err != nil {
			l.fail(c, fmt.Errorf("bench: write: %w", err))
			return
		}
		c.oo += n
	}
	c.out, c.oo = c.out[:0], 0
	l.wantOut(c, false)
}

// wantOut registers or drops interest in writability (level-triggered).
func (l *loop) wantOut(c *conn, on bool) {
	if c.epOut == on || c.state == stConnecting {
		return
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: c.idx}
	if on {
		ev.Events |= unix.EPOLLOUT
	}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_MOD, c.fd, &ev); err != nil {
		l.fail(c, fmt.Errorf("bench: epoll mod: %w", err))
		return
	}
	c.epOut = on
}

// onFrame handles one message or control frame from the server. It is the
// receive hot path: no allocation.
func (c *conn) onFrame(op ws.OpCode, p []byte) {
	l := c.l
	if c.state == stClosed {
		return
	}
	switch op {
	case ws.OpPing:
		c.out = appendMasked(c.out, ws.OpPong, p, c.mask)
		return
	case ws.OpPong:
		return
	case ws.OpClose:
		code := 1005
		if len(p) >= 2 {
			code = int(p[0])<<8 | int(p[1])
		}
		l.lc.closeCodes[code]++
		l.fail(c, fmt.Errorf("bench: server closed the connection with %d", code))
		return
	}
	if c.state == stClosed {
		return // frames behind a close frame in the same read
	}
	if l.r.p.proto == protoWS && len(p) > 0 && p[0] == '{' && !bytes.HasPrefix(p, []byte(`{"op":"msg"`)) {
		c.control(p)
		return
	}
	if c.track == nil {
		return
	}
	l.delivered.Add(1)
	l.lastRecv.Store(l.now)
	body, ok := findPayload(p)
	if !ok {
		c.track.malformed++
		return
	}
	s, err := parsePayload(body)
	if err != nil {
		c.track.malformed++
		return
	}
	l.record(l.now - s.sent)
	rank, ok := l.r.p.rank(c, s.pub)
	if !ok {
		c.track.foreign++
		return
	}
	if c.track.pubs[rank].observe(s.seq) != again {
		l.distinct.Add(1)
	}
	if l.r.p.mode == modeEcho {
		c.pending--
		if l.echoing {
			c.publish()
		}
	}
}

// control handles a /ws reply that is not a msg: the sub's ack, or an error.
func (c *conn) control(p []byte) {
	l := c.l
	switch {
	case bytes.HasPrefix(p, []byte(`{"op":"ack"`)):
		if c.state == stSubscribing {
			l.opened(c)
		}
	case bytes.HasPrefix(p, []byte(`{"op":"error"`)):
		l.lc.serverErrs++
		if l.lc.firstErr == "" {
			l.lc.firstErr = string(p)
		}
		if c.state == stSubscribing {
			l.fail(c, fmt.Errorf("bench: sub refused: %s", p))
			return
		}
		// A publisher's error refuses one of its publishes (they carry no
		// ref), except chatgg's "queued for storage but not delivered
		// live": that one was accepted. Refused, it is not expected
		// anywhere, so it does not count as lost.
		if c.pub >= 0 && !bytes.Contains(p, []byte("queued for storage")) {
			c.refused++
			if n := l.r.p.expectPer(c); n > 0 {
				l.expect.Add(^(n - 1)) // minus n: its deliveries are not expected
			}
		}
	}
}

// record adds a latency in nanoseconds to the histogram.
func (l *loop) record(ns int64) {
	us := ns / 1000
	us = min(max(us, 0), histMaxMicros)
	_ = l.hist.RecordValue(us)
}

// tick lets every publisher catch up with its schedule and returns when
// the next message falls due: the loop sleeps until then rather than
// waking every millisecond, which costs a low-rate run more CPU than its
// messages.
//
// Publishers are staggered: publisher j of P starts j/P of an interval
// late, so that together they send evenly spaced messages at the total
// rate. In step, P publishers would send P messages at once and a server
// that batches its writes per connection would do a tenth of the work at
// ten publishers: the measure would depend on --publishers.
func (l *loop) tick() (next int64) {
	next = l.now + int64(100*time.Millisecond)
	if l.r.p.mode == modeEcho || l.ratePer <= 0 {
		return next
	}
	el := float64(l.now-l.pubStart) / 1e9
	for _, c := range l.pubs {
		if c.state != stOpen {
			continue
		}
		phase := c.phase()
		owed := uint64(0)
		if x := el*l.ratePer - phase; x >= 0 {
			owed = uint64(x) + 1
		}
		due := owed - min(c.phaseSent, owed)
		due = min(due, maxBurstPerTick)
		if c.kind == kindHTTP {
			room := uint64(max(l.r.p.inflight-c.pending, 0))
			if due > room {
				due = room
				next = l.now // owed and waiting for answers: look again next tick
			}
		}
		for ; due > 0; due-- {
			if len(c.out)-c.oo > maxPendingOut {
				l.lc.backlogged++
				c.phaseSent++ // skipped, not owed: the schedule moves on
				continue
			}
			c.publish()
		}
		if c.oo < len(c.out) {
			l.flush(c)
		}
		at := l.pubStart + int64((float64(c.phaseSent)+phase)/l.ratePer*1e9)
		next = min(next, at)
	}
	return next
}

// phase is the publisher's offset in its schedule, in intervals: 0 to 1.
func (c *conn) phase() float64 {
	if n := c.l.r.p.pubs; n > 1 {
		return float64(c.pub) / float64(n)
	}
	return 0
}

// publish queues the next message of publisher c.
func (c *conn) publish() {
	l := c.l
	p := l.r.p
	c.seq++
	c.phaseSent++
	s := stamp{pub: uint32(c.pub), seq: c.seq, sent: now()}
	switch {
	case c.kind == kindHTTP:
		c.out = append(c.out, c.prefix...)
		c.out = append(c.out, '"')
		c.out = appendPayload(c.out, s, p.size)
		c.out = append(c.out, '"')
		c.pending++
		l.sentN.Add(1)
		return // expected deliveries are counted on the 2xx answer
	case p.proto == protoWS && p.mode != modeEcho:
		n := len(c.prefix) + p.size + 2
		c.out = growFrame(c.out, ws.OpText, n, c.mask)
		f := c.out[len(c.out)-n:]
		copy(f, c.prefix)
		putPayload(f[len(c.prefix):len(c.prefix)+p.size], s)
		f[n-2], f[n-1] = '"', '}'
		ws.Cipher(f, c.mask, 0)
	default:
		c.out = growFrame(c.out, ws.OpText, p.size, c.mask)
		f := c.out[len(c.out)-p.size:]
		putPayload(f, s)
		ws.Cipher(f, c.mask, 0)
	}
	if p.mode == modeEcho {
		c.pending++
	}
	l.sentN.Add(1)
	l.expect.Add(p.expectPer(c))
}

// consumeHTTP parses the responses in b (the tail plus new bytes) of a REST
// publisher and keeps the unfinished tail.
func (c *conn) consumeHTTP(b []byte) error {
	l := c.l
	for {
		end := bytes.Index(b, []byte("\r\n\r\n"))
		if end < 0 {
			if len(b) > 16<<10 {
				return errors.New("bench: HTTP response head over 16 KiB")
			}
			break
		}
		status, clen, err := parseResponseHead(b[:end+2])
		if err != nil {
			return err
		}
		total := end + 4 + clen
		if len(b) < total {
			break
		}
		c.pending--
		if status/100 == 2 {
			c.accepted++
			l.expect.Add(l.r.p.expectPer(c))
		} else {
			l.lc.httpErrs++
			if l.lc.firstErr == "" {
				l.lc.firstErr = string(b[:total])
			}
		}
		b = b[total:]
	}
	c.fr.tail = append(c.fr.tail[:0], b...)
	return nil
}

// parseResponseHead returns the status and Content-Length of an HTTP/1.1
// response head (status line and header lines, each ending in CRLF).
func parseResponseHead(h []byte) (status, clen int, err error) {
	if len(h) < 12 || !bytes.HasPrefix(h, []byte("HTTP/1.")) {
		return 0, 0, errors.New("bench: malformed HTTP response")
	}
	for _, d := range h[9:12] {
		if d < '0' || d > '9' {
			return 0, 0, errors.New("bench: malformed HTTP status")
		}
		status = status*10 + int(d-'0')
	}
	clen = -1
	for rest := h; len(rest) > 0; {
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			break
		}
		line := rest[:i]
		rest = rest[i+1:]
		const cl = "content-length:"
		if len(line) > len(cl) && asciiEqualFold(line[:len(cl)], cl) {
			n := 0
			for _, d := range bytes.TrimSpace(line[len(cl):]) {
				if d < '0' || d > '9' {
					return 0, 0, errors.New("bench: malformed Content-Length")
				}
				n = n*10 + int(d-'0')
			}
			clen = n
		}
		const te = "transfer-encoding:"
		if len(line) > len(te) && asciiEqualFold(line[:len(te)], te) {
			return 0, 0, errors.New("bench: chunked HTTP responses are not supported")
		}
	}
	if clen < 0 {
		return 0, 0, errors.New("bench: HTTP response without Content-Length")
	}
	return status, clen, nil
}

func asciiEqualFold(b []byte, lower string) bool {
	for i := range b {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}
