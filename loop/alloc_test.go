//go:build !race

package loop

import (
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/chatgg/chatgg/codec"
)

// Allocation tests: race builds allocate more, hence the build tag. Client
// and server share the process, so the clients here allocate nothing in
// steady state (prebuilt frames, preallocated read buffers) and what the
// runtime counts is the server's.

// mallocsPer returns the heap allocations of the whole process per call of
// f, averaged over n calls.
func mallocsPer(n int, f func()) float64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range n {
		f()
	}
	runtime.ReadMemStats(&after)
	return float64(after.Mallocs-before.Mallocs) / float64(n)
}

func TestEchoDoesNotAllocate(t *testing.T) {
	e := startEngine(t, Config{})
	c := dialWS(t, e, "/echo")
	kosme := []byte("κόσμε")
	cases := []struct {
		name string
		send []frame
		want frame
	}{
		{"text-16B", []frame{text("sixteen bytes!!!")}, text("sixteen bytes!!!")},
		{"binary-4KiB", []frame{bin(binPayload(4 << 10))}, bin(binPayload(4 << 10))},
		{"text-1KiB-in-4-fragments", fragments(ws.OpText, textPayload(1<<10), 256), text(string(textPayload(1 << 10)))},
		{"code-point-split-across-fragments", fragments(ws.OpText, kosme, 3), text(string(kosme))},
		{"ping", []frame{ping([]byte("p"))}, pong([]byte("p"))},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req := c.encode(tc.send...)
			resp := make([]byte, codec.FrameSize(len(tc.want.payload)))
			c.nc.SetDeadline(time.Now().Add(30 * time.Second))
			echo := func() {
				if _, err := c.nc.Write(req); err != nil {
					t.Fatal(err)
				}
				if _, err := readFull(c, resp); err != nil {
					t.Fatal(err)
				}
			}
			for range 200 { // warm-up: buffers grow to their steady size
				echo()
			}
			if want := codec.AppendFrame(nil, tc.want.op, true, tc.want.payload); string(resp) != string(want) {
				t.Fatalf("echo differs: %d bytes, want %d", len(resp), len(want))
			}
			per := mallocsPer(1000, echo)
			t.Logf("%.3f allocations per echo", per)
			if per > 0.05 {
				t.Errorf("%.3f allocations per echoed message, want 0", per)
			}
		})
	}
	c.nc.SetDeadline(time.Time{})
	c.tb = t
	c.closeHandshake()
}

// readFull is io.ReadFull on the client's buffered reader, without the
// interface conversion.
func readFull(c *wsClient, p []byte) (int, error) {
	n := 0
	for n < len(p) {
		k, err := c.br.Read(p[n:])
		n += k
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// Fan-out encodes each message once and writes the same bytes to every
// subscriber: what it allocates per message must not grow with the
// subscribers.
func TestDeliverAllocatesPerMessageNotPerSubscriber(t *testing.T) {
	measure := func(t *testing.T, subs int) float64 {
		e := startEngine(t, Config{})
		var received atomic.Int64
		for range subs {
			c := dialWS(t, e, "/raw/fan")
			go func() {
				buf := make([]byte, 16<<10)
				for {
					n, err := c.br.Read(buf)
					received.Add(int64(n))
					if err != nil {
						return
					}
				}
			}()
		}
		if !waitFor(ioTimeout, func() bool { return e.Topics()["fan"] == subs }) {
			t.Fatalf("%d subscribers, want %d", e.Topics()["fan"], subs)
		}
		m := &codec.Message{Topic: "fan", Kind: codec.KindBinary, Data: binPayload(100)}
		frameBytes := int64(codec.FrameSize(len(m.Data)))
		var want int64
		burst := func() {
			// Bursts of 100 fill pend past maxPendFrames on some drains.
			for range 100 {
				e.Deliver(m)
			}
			want += 100 * int64(subs) * frameBytes
			for received.Load() < want {
				time.Sleep(time.Millisecond)
			}
		}
		for range 5 { // warm-up
			burst()
		}
		per := mallocsPer(20, burst) / 100
		t.Logf("%d subscribers: %.2f allocations per message", subs, per)
		return per
	}
	var one, many float64
	t.Run("subs=1", func(t *testing.T) { one = measure(t, 1) })
	t.Run("subs=300", func(t *testing.T) { many = measure(t, 300) })
	// newDelivery allocates a few objects per message and waking a loop a
	// couple more; none of it is per subscriber.
	if one > 8 {
		t.Errorf("%.2f allocations per message for one subscriber", one)
	}
	if many > one+0.5 {
		t.Errorf("%.2f allocations per message for 300 subscribers, %.2f for 1: fan-out allocates per subscriber", many, one)
	}
}
