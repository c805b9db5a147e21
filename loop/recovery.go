package loop

import (
	"time"

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

	// After the replay: the replayed ids whose live copy has not come yet.
	// The window is read on one Redis connection and the live stream comes
	// on another, so a message can be in the replay and still be on its
	// way live; it is dropped when it arrives. Forgotten after dedupGrace.
	doneAt   int64 // unix ns of the replay; 0 while the lookup runs
	replayed map[string]struct{}
}

// dedupGrace is how long replayed ids are kept to drop late live copies.
const dedupGrace = 5 * time.Second

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

// afterReplay reports whether d is a late live copy of a message c's
// finished recovery r already replayed, and forgets it if so.
func (c *conn) afterReplay(r *recovery, d *delivery) (dup bool) {
	if _, dup = r.replayed[d.m.ID]; dup {
		delete(r.replayed, d.m.ID)
		if len(r.replayed) == 0 {
			c.dropRecovery(r.topic)
		}
	}
	return dup
}

// expireReplays forgets finished recoveries older than dedupGrace.
func (c *conn) expireReplays(now int64) {
	for i := len(c.recov) - 1; i >= 0; i-- {
		if r := &c.recov[i]; r.doneAt != 0 && now-r.doneAt > int64(dedupGrace) {
			c.dropRecovery(r.topic)
		}
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
	if c.state != stOpen || r == nil || r.doneAt != 0 {
		return
	}
	if ev.err != nil {
		ls.e.log.Warn("recovery failed", "topic", ev.id, "err", ev.err)
	}
	if r.ref != "" {
		ls.out = codec.AppendSubAck(ls.out[:0], refBytes(r.ref), ev.recovered)
		ls.writeNow(c)
	}
	replayed := make(map[string]struct{}, len(ev.msgs))
	for _, m := range ev.msgs {
		replayed[m.ID] = struct{}{}
	}
	buf := ls.out[:0]
	var body []byte
	for _, m := range ev.msgs {
		body = codec.AppendMsgJSON(body[:0], m)
		buf = codec.AppendFrame(buf, ws.OpText, true, body)
	}
	for _, d := range r.held {
		if _, dup := replayed[d.m.ID]; dup {
			delete(replayed, d.m.ID) // its live copy came: nothing more to drop
			continue
		}
		buf = append(buf, d.json...)
	}
	if len(replayed) == 0 {
		c.dropRecovery(ev.id)
	} else {
		r.held, r.heldLen = nil, 0
		r.replayed, r.doneAt = replayed, ls.now.UnixNano()
	}
	if len(buf) > 0 {
		_, _ = c.gc.Write(buf)
		ls.e.stats.msgOut.Add(int64(len(ev.msgs)))
	}
	ls.out = buf[:0]
	ls.checkBackpressure(c)
}
