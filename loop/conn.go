package loop

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
	"github.com/panjf2000/gnet/v2"

	"github.com/chatgg/chatgg/codec"
)

// Connection states.
const (
	stHandshake uint8 = iota // waiting for the HTTP upgrade request
	stProxy                  // waiting for the PROXY protocol header
	stOpen                   // WebSocket open
	stClosing                // our close frame sent; waiting for the client's
	stClosed                 // gone
)

// Connection modes, chosen by the upgrade path.
const (
	modeEcho uint8 = iota // /echo: every message back to its sender
	modeJSON              // /ws: the JSON protocol (docs/protocol.md)
	modeRaw               // /raw/{topic} and every other path: frames verbatim
)

// JSON error codes (docs/protocol.md).
const (
	codeBadRequest   = 400 // malformed JSON, missing or mistyped field
	codeUnauthorized = 401 // auth op with a token that does not verify
	codeForbidden    = 403 // topic limit reached, topic not granted, another subject
	codeUnknownOp    = 405
	codeTooLarge     = 413
	codeBadTopic     = 422 // invalid topic name or idempotency key
	codeRateLimited  = 429
	codeUnavailable  = 503 // pub/sub or queue unreachable
)

// conn is one connection's state, kept small: edge nodes hold 100k+ idle
// connections. Loop goroutine only.
type conn struct {
	gc       gnet.Conn
	ls       *loopState
	rd       codec.Reader
	subs     []subRef
	pend     [][]byte       // frames queued during one inbox drain
	recov    []recovery     // subs with "after" waiting for their replay
	peer     netip.AddrPort // the client; from the PROXY header behind a balancer
	auth     *Identity      // what the connection's token grants; nil: anonymous
	topic    string         // raw mode: the connection's topic
	opened   int64          // unix ns
	lastRead int64          // unix ns of the last bytes received
	closing  int64          // unix ns our close frame was sent
	tokens   float64        // publish token bucket
	tokensAt int64          // unix ns of the last refill
	// unanswered counts publishes handed to the Publisher whose answer the
	// loop has not handled yet; shutdown waits for them before closing.
	unanswered atomic.Int32
	// quiescing: shutdown's moment for this connection has come while
	// publishes were unanswered. Data frames are ignored from then on, as
	// after a close frame, and the close is sent with the last answer.
	quiescing bool
	idx       int32 // position in ls.conns
	scan      int32 // bytes of the upgrade request already scanned
	state     uint8
	mode      uint8
	pinged    bool
	ipCounted bool // counted in the engine's per-address connections
	overIP    bool // past MaxConnsPerIP: the upgrade is answered 429
}

// subRef points at the subset a connection is in and its place there.
type subRef struct {
	s   *subset
	idx int32
}

// traffic handles inbound bytes on the loop goroutine.
func (ls *loopState) traffic(c *conn) gnet.Action {
	ls.now = time.Now()
	c.lastRead = ls.now.UnixNano()
	c.pinged = false
	buf, _ := c.gc.Peek(-1)
	off := 0
	ls.out = ls.out[:0]
	action := gnet.None
	if c.state == stProxy {
		var h codec.ProxyHeader
		n, err := codec.ParseProxy(buf, &h)
		switch {
		case err == nil:
			if h.Src.IsValid() {
				c.peer = h.Src
			}
			c.state, off = stHandshake, n
			if !ls.countPeer(c) {
				return gnet.Close
			}
		case errors.Is(err, codec.ErrIncomplete):
			return gnet.None
		default:
			ls.e.stats.reject(0)
			ls.e.rejected(rsnProxyHeader, c.peer, 0, ls.now)
			return gnet.Close
		}
	}
	if c.state == stHandshake {
		var n int
		n, action = ls.upgrade(c, buf[off:])
		off += n
	}
	for action == gnet.None && off < len(buf) && c.state >= stOpen {
		m, n, err := c.rd.Next(buf[off:])
		off += n
		if err != nil {
			action = ls.fail(c, err)
			break
		}
		if m.Op == 0 {
			break
		}
		if c.quiescing && !m.Op.IsControl() {
			continue // closing: as if our close frame had been sent
		}
		action = ls.message(c, m)
	}
	// Every message read is handled: a large assembly buffer goes back to
	// the pool rather than idling with the connection.
	c.rd.Trim()
	if len(ls.out) > 0 {
		_, _ = c.gc.Write(ls.out)
		ls.out = ls.out[:0]
		ls.checkBackpressure(c)
	}
	if off > 0 {
		// Not Discard(0): gnet reads n <= 0 as "everything", which would
		// drop an unfinished request or frame header.
		_, _ = c.gc.Discard(off)
	}
	return action
}

// fail answers a protocol violation with its close code and drops the
// connection (RFC 6455 §7.1.7: _Fail the WebSocket Connection_).
func (ls *loopState) fail(c *conn, err error) gnet.Action {
	code := codec.CloseCode(err)
	ls.e.stats.close(uint16(code))
	if ls.e.log.Enabled(context.Background(), slog.LevelDebug) {
		ls.e.log.LogAttrs(context.Background(), slog.LevelDebug, "protocol error",
			slog.String("conn", addrString(c.gc.RemoteAddr())), slog.Any("err", err))
	}
	ls.out = codec.AppendClose(ls.out, code, err.Error())
	c.state = stClosing
	return gnet.Close
}

// upgrade parses the HTTP upgrade request; on success it answers 101 and
// sets the connection's mode.
func (ls *loopState) upgrade(c *conn, buf []byte) (int, gnet.Action) {
	// Scan only the bytes that arrived since the last call: a request
	// trickling in byte by byte costs O(n), not O(n²).
	_, next, err := codec.UpgradeHeadLen(buf, int(c.scan), ls.e.cfg.MaxHeaderBytes)
	if errors.Is(err, codec.ErrIncomplete) {
		c.scan = int32(next)
		return 0, gnet.None
	}
	var req codec.UpgradeRequest
	n := 0
	if err == nil {
		n, err = codec.ParseUpgrade(buf, &req, ls.e.cfg.MaxHeaderBytes)
	}
	if err != nil {
		status := codec.UpgradeStatus(err)
		r := rsnBadRequest
		if status == 431 {
			r = rsnHeaderTooLarge
		}
		return len(buf), ls.reject(c, r, status, err.Error())
	}
	// Admission, cheapest checks first; the token's signature last but one.
	e := ls.e
	cfg := &e.cfg
	if !e.origins.allowed(req.Origin) {
		return len(buf), ls.reject(c, rsnOrigin, 403, "origin not allowed")
	}
	path := req.Path
	switch {
	case bytes.Equal(path, []byte("/echo")):
		c.mode = modeEcho
		c.rd.MaxMessageBytes = cfg.EchoMaxMessageBytes
	case bytes.Equal(path, []byte("/ws")):
		c.mode = modeJSON
		c.rd.MaxMessageBytes = cfg.MaxFrameBytes
	case bytes.HasPrefix(path, []byte("/raw/")):
		t := path[len("/raw/"):]
		if !codec.ValidTopic(t) {
			return len(buf), ls.reject(c, rsnBadRequest, 400, "invalid topic name")
		}
		c.mode = modeRaw
		c.topic = string(t)
		c.rd.MaxMessageBytes = cfg.MaxMessageBytes
	default:
		c.mode = modeRaw
		c.topic = cfg.DefaultTopic
		c.rd.MaxMessageBytes = cfg.MaxMessageBytes
	}
	if !e.lim.allowUpgrade(c.peer.Addr(), ls.now.UnixNano()) {
		return len(buf), ls.reject(c, rsnUpgradeRate, 429, "too many upgrades from your address")
	}
	if cfg.MaxConns > 0 && e.stats.conns.Load() > int64(cfg.MaxConns) {
		return len(buf), ls.reject(c, rsnNodeFull, 503, "server full")
	}
	if c.overIP {
		return len(buf), ls.reject(c, rsnIPConns, 429, "too many connections from your address")
	}
	token, proto := ls.connectToken(&req)
	id, r, status, msg := ls.authenticate(token)
	if status != 0 {
		return len(buf), ls.reject(c, r, status, msg)
	}
	c.auth = id
	if c.mode == modeRaw {
		// Raw clients both read and write their topic.
		t := []byte(c.topic)
		if !ls.maySub(c, t) || !ls.mayPub(c, t) {
			c.auth = nil
			return len(buf), ls.reject(c, rsnTopicForbidden, 403, "topic not allowed")
		}
	}
	ls.out = codec.AppendUpgradeResponse(ls.out, req.Key, proto)
	c.state = stOpen
	c.tokens = cfg.PublishBurst
	c.tokensAt = ls.now.UnixNano()
	e.stats.upgraded.Add(1)
	if c.mode == modeRaw {
		ls.subscribe(c, c.topic, nil)
	}
	return n, gnet.None
}

// reject answers a refused upgrade with an HTTP error, counts it by
// status and reason, and closes.
func (ls *loopState) reject(c *conn, r reason, status int, msg string) gnet.Action {
	ls.e.stats.reject(status)
	ls.e.rejected(r, c.peer, status, ls.now)
	ls.out = appendReject(ls.out, status, msg)
	return gnet.Close
}

// message handles one complete message or control frame.
func (ls *loopState) message(c *conn, m codec.Msg) gnet.Action {
	switch m.Op {
	case ws.OpPing:
		ls.out = codec.AppendFrame(ls.out, ws.OpPong, true, m.Payload)
		return gnet.None
	case ws.OpPong:
		return gnet.None
	case ws.OpClose:
		// Answer with the same code (RFC 6455 §5.5.1), then end the TCP
		// connection: the server closes first (§7.1.1).
		if c.state == stOpen {
			code, _ := codec.CheckClosePayload(m.Payload)
			if code == 0 {
				ls.out = codec.AppendFrame(ls.out, ws.OpClose, true, nil)
			} else {
				ls.out = codec.AppendClose(ls.out, code, "")
			}
		}
		c.state = stClosing
		return gnet.Close
	}
	if c.state != stOpen {
		return gnet.None // closing: the client's data is no longer read
	}
	ls.e.stats.msgIn.Add(1)
	switch c.mode {
	case modeEcho:
		ls.out = codec.AppendFrame(ls.out, m.Op, true, m.Payload)
	case modeRaw:
		return ls.publishRaw(c, m)
	case modeJSON:
		ls.request(c, m.Payload)
	}
	return gnet.None
}

// allow takes a token from c's publish bucket.
func (ls *loopState) allow(c *conn) bool {
	cfg := &ls.e.cfg
	now := ls.now.UnixNano()
	c.tokens += float64(now-c.tokensAt) * cfg.PublishRate / float64(time.Second)
	if c.tokens > cfg.PublishBurst {
		c.tokens = cfg.PublishBurst
	}
	c.tokensAt = now
	if c.tokens < 1 {
		return false
	}
	c.tokens--
	return true
}

// publishRaw publishes a raw-mode frame verbatim to the connection's topic.
// Raw clients cannot read error ops, so a refused publish closes the
// connection with a reason.
func (ls *loopState) publishRaw(c *conn, m codec.Msg) gnet.Action {
	if !ls.allow(c) {
		ls.closeConn(c, codec.ClosePolicy, "publish rate exceeded")
		return gnet.None
	}
	kind := codec.KindText
	if m.Op == ws.OpBinary {
		kind = codec.KindBinary
	}
	ls.publish(c, c.topic, kind, m.Payload, "", "", false)
	return gnet.None
}

// publish builds the message (its id is assigned here, once) and hands it
// to the Publisher. The payload is copied: it aliases the read buffer.
func (ls *loopState) publish(c *conn, topic string, kind codec.Kind, data []byte, key, ref string, stored bool) {
	cfg := &ls.e.cfg
	nowMs := ls.now.UnixMilli()
	msg := &codec.Message{
		ID:    cfg.IDs.Next(nowMs),
		Topic: topic,
		TS:    nowMs,
		Kind:  kind,
		Key:   key,
		Data:  bytes.Clone(data),
	}
	if c.auth != nil {
		msg.From = c.auth.Subject // set here only: clients cannot choose it
	}
	if cfg.Publisher == nil {
		if c.mode == modeJSON {
			ls.out = appendErrorFrame(ls.out, ref, codeUnavailable, "publishing is disabled on this node")
		}
		return
	}
	wantAck := c.mode == modeJSON && ref != ""
	c.unanswered.Add(1)
	cfg.Publisher.Publish(msg, func(id string, err error) {
		if err == nil && stored {
			// A second answer once the message is in the store.
			cfg.StoreWatcher.WatchStored(topic, id, func(err error) {
				ls.post(event{kind: evStored, c: c, ref: ref, id: id, err: err})
			})
		}
		if err == nil && !wantAck {
			c.unanswered.Add(-1)
			return
		}
		ls.post(event{kind: evAck, c: c, ref: ref, id: id, err: err})
	})
}

// appendErrorFrame appends an error op as one text frame.
func appendErrorFrame(dst []byte, ref string, code int, msg string) []byte {
	var body [256]byte
	b := codec.AppendError(body[:0], refBytes(ref), code, msg)
	return codec.AppendFrame(dst, ws.OpText, true, b)
}

// appendAckFrame appends an ack op as one text frame.
func appendAckFrame(dst []byte, ref string) []byte {
	var body [160]byte
	b := codec.AppendAck(body[:0], refBytes(ref), "", 0)
	return codec.AppendFrame(dst, ws.OpText, true, b)
}

// request handles one /ws JSON request. Errors are answered with an error
// op; they never close the connection.
func (ls *loopState) request(c *conn, p []byte) {
	var req codec.Request
	if err := codec.ParseRequest(p, &req); err != nil {
		code := codeBadRequest
		switch {
		case errors.Is(err, codec.ErrUnknownOp):
			code = codeUnknownOp
		case errors.Is(err, codec.ErrKeyTooLong), errors.Is(err, codec.ErrBadTopic):
			code = codeBadTopic
		}
		ls.out = appendErrorFrame(ls.out, string(req.Ref), code, err.Error())
		return
	}
	ref := ""
	if req.HasRef {
		ref = string(req.Ref)
	}
	if req.Op == codec.OpAuth {
		ls.authOp(c, req.Token, ref)
		return
	}
	if !codec.ValidTopic(req.Topic) {
		ls.out = appendErrorFrame(ls.out, ref, codeBadTopic, "invalid topic name: 1 to 128 bytes of [A-Za-z0-9_.:@/-]")
		return
	}
	cfg := &ls.e.cfg
	switch req.Op {
	case codec.OpSub:
		if c.subscribedTo(req.Topic) < 0 {
			if !ls.maySub(c, req.Topic) {
				ls.e.rejected(rsnSubDenied, c.peer, codeForbidden, ls.now)
				ls.out = appendErrorFrame(ls.out, ref, codeForbidden, "not allowed to subscribe to this topic")
				return
			}
			if len(c.subs) >= cfg.MaxTopicsPerConn {
				ls.out = appendErrorFrame(ls.out, ref, codeForbidden, "topic limit reached")
				return
			}
			if req.HasAfter && len(req.After) > 0 && !codec.ValidID(string(req.After)) {
				ls.out = appendErrorFrame(ls.out, ref, codeBadRequest, "after must be a message id")
				return
			}
			topic := string(req.Topic)
			var r *recovery
			if req.HasAfter {
				if cfg.Recoverer == nil {
					ls.out = appendErrorFrame(ls.out, ref, codeUnavailable, "recovery is not available on this node")
					return
				}
				c.recov = append(c.recov, recovery{topic: topic, after: string(req.After), ref: ref})
				r = &c.recov[len(c.recov)-1]
			}
			waiter := func(err error) { ls.post(event{kind: evSubAck, c: c, ref: ref, id: topic, err: err}) }
			if !ls.subscribe(c, topic, waiter) {
				return // answered by subAck once the bus confirms
			}
			if r != nil {
				ls.askRecoverer(c, r) // answered by recovered
				return
			}
		}
		if ref != "" {
			ls.out = appendAckFrame(ls.out, ref)
		}
	case codec.OpUnsub:
		if i := c.subscribedTo(req.Topic); i >= 0 {
			ls.unsubscribe(c, i)
		}
		if ref != "" {
			ls.out = appendAckFrame(ls.out, ref)
		}
	case codec.OpPub:
		if !ls.mayPub(c, req.Topic) {
			ls.e.rejected(rsnPubDenied, c.peer, codeForbidden, ls.now)
			ls.out = appendErrorFrame(ls.out, ref, codeForbidden, "not allowed to publish to this topic")
			return
		}
		if len(req.Data) > cfg.MaxMessageBytes {
			ls.out = appendErrorFrame(ls.out, ref, codeTooLarge, "message data too large")
			return
		}
		if !ls.allow(c) {
			ls.out = appendErrorFrame(ls.out, ref, codeRateLimited, "publish rate exceeded")
			return
		}
		key := ""
		if req.HasKey {
			key = string(req.Key)
		}
		if req.Stored && (ref == "" || cfg.StoreWatcher == nil) {
			msg := "stored needs a ref"
			if ref != "" {
				msg = "storage notices are not available on this node"
			}
			ls.out = appendErrorFrame(ls.out, ref, codeBadRequest, msg)
			return
		}
		ls.publish(c, string(req.Topic), codec.KindJSON, req.Data, key, ref, req.Stored)
	default:
		ls.out = appendErrorFrame(ls.out, ref, codeUnknownOp, "unknown op")
	}
}

// subscribedTo returns the index of topic in c.subs, or -1.
func (c *conn) subscribedTo(topic []byte) int {
	for i, r := range c.subs {
		if r.s.topic == string(topic) {
			return i
		}
	}
	return -1
}
