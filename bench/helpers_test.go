package main

import (
	"testing"
)

// newTestConn returns an open connection on a loop that is not running,
// for driving the per-message paths without sockets: connection 0, topic
// bench.0, a subscriber and the topic's only publisher.
func newTestConn(tb testing.TB, m mode, proto protocol) *conn {
	tb.Helper()
	p := &plan{mode: m, proto: proto, topics: []string{"bench.0"}, conns: 1, subs: 1, pubs: 1, size: 64, inflight: 1,
		subsOnTopic: []uint64{1}, connectConcurrency: 1}
	r := &runner{p: p}
	l, err := newLoop(r)
	if err != nil {
		tb.Fatal(err)
	}
	r.loops = []*loop{l}
	c := &conn{kind: kindWS, pub: 0, track: &subTrack{pubs: make([]pubTrack, 1)}, mask: [4]byte{1, 2, 3, 4}}
	if proto == protoWS {
		c.prefix = []byte(`{"op":"pub","topic":"bench.0","data":"`)
	}
	l.add(c)
	l.dialq = nil
	c.state = stOpen
	c.out = make([]byte, 0, 64<<10)
	tb.Cleanup(func() {
		c.state = stClosed
		l.shutdown()
	})
	return c
}
