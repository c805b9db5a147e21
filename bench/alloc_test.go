//go:build !race

package main

import (
	"fmt"
	"testing"

	"github.com/gobwas/ws"

	"github.com/chatgg/chatgg/codec"
)

// The client's per-message paths allocate nothing: decoding frames,
// finding and parsing payloads, accounting and recording latency (receive),
// building masked frames (publish), echo round trips and REST answers.
// Race builds allocate more, hence the build tag.

func TestReceivePathDoesNotAllocate(t *testing.T) {
	for _, proto := range []protocol{protoRaw, protoWS} {
		t.Run(proto.String(), func(t *testing.T) {
			c := newTestConn(t, modeFanout, proto)
			bufs := receiveBuffers(proto, 101, 20)
			i := 0
			allocs := testing.AllocsPerRun(100, func() {
				if err := c.fr.consume(bufs[i], c); err != nil {
					t.Fatal(err)
				}
				i++
			})
			if allocs != 0 {
				t.Fatalf("%v allocations per 20 messages, want 0", allocs)
			}
			if c.track.malformed != 0 || c.track.foreign != 0 {
				t.Fatalf("malformed %d, foreign %d", c.track.malformed, c.track.foreign)
			}
			if got := c.track.pubs[0].distinct(); got != 101*20 {
				t.Fatalf("distinct = %d, want %d", got, 101*20)
			}
		})
	}
}

func TestReceiveSplitFramesDoesNotAllocate(t *testing.T) {
	c := newTestConn(t, modeFanout, protoRaw)
	bufs := receiveBuffers(protoRaw, 101, 20)
	scratch := make([]byte, readBufBytes)
	i := 0
	allocs := testing.AllocsPerRun(100, func() {
		// Each buffer in two reads cut inside a frame: the tail is
		// copied into the connection's own buffer and back.
		b := bufs[i]
		for _, part := range [][]byte{b[:len(b)/2+3], b[len(b)/2+3:]} {
			k := c.fr.prepare(scratch)
			n := copy(scratch[k:], part)
			if err := c.fr.consume(scratch[:k+n], c); err != nil {
				t.Fatal(err)
			}
		}
		i++
	})
	if allocs != 0 {
		t.Fatalf("%v allocations, want 0", allocs)
	}
}

func TestPublishPathDoesNotAllocate(t *testing.T) {
	for _, proto := range []protocol{protoRaw, protoWS} {
		t.Run(proto.String(), func(t *testing.T) {
			c := newTestConn(t, modeFanout, proto)
			allocs := testing.AllocsPerRun(100, func() {
				c.out = c.out[:0]
				for range 20 {
					c.publish()
				}
			})
			if allocs != 0 {
				t.Fatalf("%v allocations per 20 publishes, want 0", allocs)
			}
		})
	}
}

func TestEchoRoundTripDoesNotAllocate(t *testing.T) {
	c := newTestConn(t, modeEcho, protoRaw)
	c.l.echoing = true
	f := serverFrame(ws.OpText, true, appendPayload(nil, stamp{pub: 0, seq: 1}, 64))
	allocs := testing.AllocsPerRun(100, func() {
		c.out = c.out[:0]
		if err := c.fr.consume(f, c); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per round trip, want 0", allocs)
	}
}

func TestRESTAnswersDoNotAllocate(t *testing.T) {
	c := newTestConn(t, modeRest, protoRaw)
	c.kind = kindHTTP
	var b []byte
	for range 10 {
		b = append(b, "HTTP/1.1 202 Accepted\r\nServer: x\r\nContent-Type: application/json\r\nContent-Length: 45\r\n\r\n{\"id\":\"01a228adfedb0000000000\",\"ts\":17959788}"...)
	}
	allocs := testing.AllocsPerRun(100, func() {
		c.pending = 10
		c.out = c.out[:0]
		if err := c.consumeHTTP(b); err != nil {
			t.Fatal(err)
		}
		c.publish()
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per 10 answers, want 0", allocs)
	}
	if c.accepted == 0 || c.l.lc.httpErrs != 0 {
		t.Fatalf("accepted %d, errors %d", c.accepted, c.l.lc.httpErrs)
	}
}

func BenchmarkReceive(b *testing.B) {
	for _, proto := range []protocol{protoRaw, protoWS} {
		for _, per := range []int{1, 100} {
			b.Run(fmt.Sprintf("%v/frames=%d", proto, per), func(b *testing.B) {
				c := newTestConn(b, modeFanout, proto)
				bufs := receiveBuffers(proto, 64, per)
				b.SetBytes(int64(len(bufs[0])))
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					if err := c.fr.consume(bufs[i%len(bufs)], c); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*per), "ns/msg")
			})
		}
	}
}

func BenchmarkPublish(b *testing.B) {
	for _, proto := range []protocol{protoRaw, protoWS} {
		b.Run(proto.String(), func(b *testing.B) {
			c := newTestConn(b, modeFanout, proto)
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				if i%100 == 0 {
					c.out = c.out[:0]
				}
				c.publish()
			}
		})
	}
}

// receiveBuffers builds n reads of per frames each, as the server sends
// them to a subscriber of publisher 0, with consecutive sequences.
func receiveBuffers(proto protocol, n, per int) [][]byte {
	bufs := make([][]byte, n)
	seq := uint64(0)
	for i := range bufs {
		var b []byte
		for range per {
			seq++
			p := appendPayload(nil, stamp{pub: 0, seq: seq, sent: now()}, 64)
			if proto == protoWS {
				m := codec.Message{ID: "01a228adfedb0000000000", Topic: "bench.0", TS: 1795978821339, Kind: codec.KindText, Data: p}
				p = codec.AppendMsgJSON(nil, &m)
			}
			b = codec.AppendFrame(b, ws.OpText, true, p)
		}
		bufs[i] = b
	}
	return bufs
}
