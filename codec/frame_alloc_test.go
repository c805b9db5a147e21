//go:build !race

package codec

import (
	"bytes"
	"testing"

	"github.com/gobwas/ws"
)

func TestFrameCodecDoesNotAllocate(t *testing.T) {
	rng := newTestRand(30)
	text64 := textOf(rng, 64)
	text4k := textOf(rng, 4<<10)
	frame64 := maskedFrame(rng, ws.OpText, true, text64)
	frame4k := maskedFrame(rng, ws.OpText, true, text4k)
	// A fragmented text message with a ping between its fragments: all of
	// it is copied into the Reader's buffer.
	fragmented := encodeFrames(rng,
		frameMore(ws.OpText, string(text4k[:1000])),
		frameFin(ws.OpPing, "ping"),
		frameMore(ws.OpContinuation, string(text4k[1000:3000])),
		frameFin(ws.OpContinuation, string(text4k[3000:])),
	)
	// Over keepBufBytes: assembled in a buffer borrowed from bigBufs.
	text64k := textOf(rng, 64<<10)
	frame64k := maskedFrame(rng, ws.OpText, true, text64k)
	fragmented64k := encodeFrames(rng,
		frameMore(ws.OpText, string(text64k[:20000])),
		frameFin(ws.OpContinuation, string(text64k[20000:])),
	)
	in := make([]byte, max(len(fragmented64k), len(frame64k)))
	var r Reader
	// next decodes whole from a fresh copy of src (Next unmasks in place)
	// and wants the messages ops, in order.
	next := func(t *testing.T, src []byte, ops ...ws.OpCode) {
		copy(in, src)
		b := in[:len(src)]
		for _, op := range ops {
			m, n, err := r.Next(b)
			if err != nil || m.Op != op {
				t.Fatalf("Next = %v, %v; want %v", m.Op, err, op)
			}
			b = b[n:]
		}
	}
	dst := make([]byte, 0, FrameSize(4<<10))
	var u UTF8
	for _, tc := range []struct {
		name string
		f    func(t *testing.T)
	}{
		{
			name: "Reader.Next whole 64 B text frame",
			f:    func(t *testing.T) { next(t, frame64, ws.OpText) },
		},
		{
			name: "Reader.Next whole 4 KiB text frame",
			f:    func(t *testing.T) { next(t, frame4k, ws.OpText) },
		},
		{
			name: "Reader.Next fragmented text message",
			f:    func(t *testing.T) { next(t, fragmented, ws.OpPing, ws.OpText) },
		},
		{
			name: "Reader.Next frame split across calls",
			f: func(t *testing.T) {
				copy(in, frame4k)
				cut := 2000
				m, n, err := r.Next(in[:cut])
				if err != nil || m.Op != 0 || n != cut {
					t.Fatalf("Next(first part) = %v, %d, %v", m.Op, n, err)
				}
				if m, _, err = r.Next(in[cut:len(frame4k)]); err != nil || m.Op != ws.OpText {
					t.Fatalf("Next(second part) = %v, %v", m.Op, err)
				}
			},
		},
		{
			name: "Reader.Next 64 KiB frame split across calls",
			f: func(t *testing.T) {
				copy(in, frame64k)
				for _, part := range [][2]int{{0, 16 << 10}, {16 << 10, 40 << 10}} {
					if m, n, err := r.Next(in[part[0]:part[1]]); err != nil || m.Op != 0 || n != part[1]-part[0] {
						t.Fatalf("Next(part %v) = %v, %d, %v", part, m.Op, n, err)
					}
				}
				if m, _, err := r.Next(in[40<<10 : len(frame64k)]); err != nil || m.Op != ws.OpText || !bytes.Equal(m.Payload, text64k) {
					t.Fatalf("Next(last part) = %v, %v", m.Op, err)
				}
			},
		},
		{
			name: "Reader.Next fragmented 64 KiB message",
			f:    func(t *testing.T) { next(t, fragmented64k, ws.OpText) },
		},
		{
			name: "AppendFrame",
			f:    func(t *testing.T) { dst = AppendFrame(dst[:0], ws.OpText, true, text4k) },
		},
		{
			name: "AppendClose",
			f:    func(t *testing.T) { dst = AppendClose(dst[:0], CloseTooLarge, "codec: message too large") },
		},
		{
			name: "ParseHeader",
			f: func(t *testing.T) {
				if _, n, err := ParseHeader(frame4k); n != 8 || err != nil {
					t.Fatal(n, err)
				}
			},
		},
		{
			name: "CheckClosePayload",
			f: func(t *testing.T) {
				if _, err := CheckClosePayload([]byte("\x03\xe8bye")); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name: "UTF8.Write",
			f: func(t *testing.T) {
				u.Reset()
				if !u.Write(text4k) || !u.Done() {
					t.Fatal("invalid")
				}
			},
		},
		{
			name: "CloseCode",
			f:    func(t *testing.T) { _ = CloseCode(ErrInvalidUTF8) },
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.f(t) // warm up: the Reader grows its buffer once
			if a := testing.AllocsPerRun(100, func() { tc.f(t) }); a != 0 {
				t.Fatalf("%v allocations per run, want 0", a)
			}
		})
	}
	if !bytes.Equal(dst[len(dst)-len("too large"):], []byte("too large")) {
		t.Fatal("AppendClose wrote something else")
	}
}
