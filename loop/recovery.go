package loop

import (
	"github.com/gobwas/ws"

	"github.com/chatgg/chatgg/codec"
)

// recovery is a sub with "after" in progress: the connection is subscribed,
// and live messages of the topic are held back until the missed ones have
// been replayed, so the seam has no gap and no duplicate.
//
// Order of events: the node's bus subscription is confirmed first; only then
// is the Recoverer asked (so every message is either in what it finds or in
// what arrives live); the live messages that arrived meanwhile are written
// after the replay, less those the replay already held.
type recovery struct {
	topic   string
	after   string
	ref     string
	held    []*delivery // live messages that arrived during the lookup
	heldLen int         // their bytes, bounded by MaxOutboundBytes
	asked   bool        // the Recoverer was asked
}

// recovering returns c's recovery of topic, or nil. Loop goroutine only.
func (c *conn) recovering(topic string) *recovery {
	for i := range c.recov {
		if c.recov[i].topic == topic {
			return &c.recov[i]
		}
	}
	return nil
}

// dropRecovery forgets c's recovery of topic.
func (c *conn) dropRecovery(topic string) {
	for i := range c.recov {
		if c.recov[i].topic == topic {
			c.recov = append(c.recov[:i], c.recov[i+1:]...)
			if len(c.recov) == 0 {
				c.recov = nil
			}
			return
		}
	}
}

// hold keeps a live delivery back during c's recovery of its topic. A
// client whose held messages pass MaxOutboundBytes is a slow consumer.
func (ls *loopState) hold(c *conn, r *recovery, d *delivery) {
	r.held = append(r.held, d)
	r.heldLen += len(d.json)
	if r.heldLen > ls.e.cfg.MaxOutboundBytes {
		ls.e.stats.slow.Add(1)
		ls.closeConn(c, codec.CloseSlowConsumer, "slow consumer")
	}
}

// askRecoverer starts the lookup once the subscription is confirmed.
func (ls *loopState) askRecoverer(c *conn, r *recovery) {
	r.asked = true
	topic := r.topic
	ls.e.cfg.Recoverer.Recover(topic, r.after, func(msgs []*codec.Message, recovered bool, err error) {
		ls.post(event{kind: evRecovered, c: c, id: topic, msgs: msgs, recovered: recovered && err == nil, err: err})
	})
}

// recovered writes the sub's ack, the replay and the held live messages.
func (ls *loopState) recovered(ev *event) {
	c := ev.c
	r := c.recovering(ev.id)
	if c.state != stOpen || r == nil {
		return
	}
	if ev.err != nil {
		ls.e.log.Warn("recovery failed", "topic", ev.id, "err", ev.err)
	}
	if r.ref != "" {
		ls.out = codec.AppendSubAck(ls.out[:0], refBytes(r.ref), ev.recovered)
		ls.writeNow(c)
	}
	var replayed map[string]struct{}
	if len(r.held) > 0 {
		replayed = make(map[string]struct{}, len(ev.msgs))
		for _, m := range ev.msgs {
			replayed[m.ID] = struct{}{}
		}
	}
	buf := ls.out[:0]
	var body []byte
	for _, m := range ev.msgs {
		body = codec.AppendMsgJSON(body[:0], m)
		buf = codec.AppendFrame(buf, ws.OpText, true, body)
	}
	for _, d := range r.held {
		if _, dup := replayed[d.m.ID]; !dup {
			buf = append(buf, d.json...)
		}
	}
	c.dropRecovery(ev.id)
	if len(buf) > 0 {
		_, _ = c.gc.Write(buf)
		ls.e.stats.msgOut.Add(int64(len(ev.msgs)))
	}
	ls.out = buf[:0]
	ls.checkBackpressure(c)
}
