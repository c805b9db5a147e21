package main

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"github.com/gobwas/ws"

	"github.com/chatgg/chatgg/codec"
)

// gotFrame is one decoded frame, copied.
type gotFrame struct {
	op ws.OpCode
	p  string
}

type collector struct{ frames []gotFrame }

func (c *collector) onFrame(op ws.OpCode, p []byte) {
	c.frames = append(c.frames, gotFrame{op, string(p)})
}

// feed runs chunks through r the way a loop does: each read lands behind
// the tail in a fresh buffer.
func feed(t testing.TB, r *frameReader, h frameHandler, chunks ...[]byte) error {
	t.Helper()
	for _, c := range chunks {
		buf := make([]byte, len(r.tail)+len(c)+4096)
		k := r.prepare(buf)
		n := copy(buf[k:], c)
		if n != len(c) {
			t.Fatalf("chunk of %d bytes does not fit", len(c))
		}
		if err := r.consume(buf[:k+n], h); err != nil {
			return err
		}
	}
	return nil
}

func serverFrame(op ws.OpCode, fin bool, p []byte) []byte {
	return codec.AppendFrame(nil, op, fin, p)
}

func payloadOf(n int) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte('a' + i%26)
	}
	return p
}

// stream is a mix of every frame shape the reader must handle, and what it
// must hand on.
func stream() ([]byte, []gotFrame) {
	var b []byte
	var want []gotFrame
	add := func(op ws.OpCode, p []byte) {
		b = append(b, serverFrame(op, true, p)...)
		want = append(want, gotFrame{op, string(p)})
	}
	for _, n := range []int{0, 1, 125, 126, 127, 300} {
		add(ws.OpText, payloadOf(n))
	}
	add(ws.OpBinary, payloadOf(64))
	add(ws.OpPing, []byte("ping"))
	// A fragmented text message with a pong between its fragments.
	b = append(b, serverFrame(ws.OpText, false, []byte("frag-"))...)
	b = append(b, serverFrame(ws.OpPong, true, []byte("pong"))...)
	want = append(want, gotFrame{ws.OpPong, "pong"})
	b = append(b, serverFrame(ws.OpContinuation, false, []byte("ment-"))...)
	b = append(b, serverFrame(ws.OpContinuation, true, []byte("ed"))...)
	want = append(want, gotFrame{ws.OpText, "frag-ment-ed"})
	add(ws.OpText, appendPayload(nil, stamp{pub: 1, seq: 2, sent: 3}, 64))
	add(ws.OpClose, []byte{0x03, 0xe8})
	return b, want
}

func TestFrameReaderSplitAtEveryByte(t *testing.T) {
	b, want := stream()
	for i := 0; i <= len(b); i++ {
		var r frameReader
		var c collector
		if err := feed(t, &r, &c, b[:i], b[i:]); err != nil {
			t.Fatalf("split at %d: %v", i, err)
		}
		if fmt.Sprint(c.frames) != fmt.Sprint(want) {
			t.Fatalf("split at %d: got %d frames %v\nwant %d %v", i, len(c.frames), c.frames, len(want), want)
		}
		if len(r.tail) != 0 {
			t.Fatalf("split at %d: %d bytes left in the tail", i, len(r.tail))
		}
	}
}

func TestFrameReaderByteByByte(t *testing.T) {
	b, want := stream()
	var r frameReader
	var c collector
	chunks := make([][]byte, len(b))
	for i := range b {
		chunks[i] = b[i : i+1]
	}
	if err := feed(t, &r, &c, chunks...); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(c.frames) != fmt.Sprint(want) {
		t.Fatalf("got %v\nwant %v", c.frames, want)
	}
}

func TestFrameReaderLengthEncodings(t *testing.T) {
	for _, n := range []int{0, 125, 126, 65535, 65536, maxServerFrameBytes} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			f := serverFrame(ws.OpBinary, true, payloadOf(n))
			hl := len(f) - n
			// Splits in and around the header, in the middle and at the end.
			for _, i := range []int{0, 1, 2, 3, hl - 1, hl, hl + 1, len(f) / 2, len(f) - 1, len(f)} {
				if i < 0 || i > len(f) {
					continue
				}
				var r frameReader
				var c collector
				if err := feed(t, &r, &c, f[:i], f[i:]); err != nil {
					t.Fatalf("split at %d: %v", i, err)
				}
				if len(c.frames) != 1 || len(c.frames[0].p) != n || c.frames[0].op != ws.OpBinary {
					t.Fatalf("split at %d: got %d frames", i, len(c.frames))
				}
			}
		})
	}
}

func TestFrameReaderRejectsProtocolErrors(t *testing.T) {
	masked := codec.AppendHeader(nil, ws.Header{Fin: true, OpCode: ws.OpText, Masked: true, Length: 2})
	masked = append(masked, 'h', 'i')
	cases := []struct {
		name string
		in   []byte
		want error
	}{
		{"masked server frame", masked, errMaskedFrame},
		{"reserved bits", append([]byte{0x80 | 0x40 | byte(ws.OpText), 0}, nil...), errReservedBits},
		{"reserved data opcode", []byte{0x80 | 0x3, 0}, errBadOpcode},
		{"reserved control opcode", []byte{0x80 | 0xb, 0}, errBadOpcode},
		{"fragmented control frame", serverFrame(ws.OpPing, false, nil), errBadControl},
		{"long control frame", serverFrame(ws.OpPing, true, payloadOf(126)), errBadControl},
		{"continuation without a message", serverFrame(ws.OpContinuation, true, []byte("x")), errBadContinue},
		{"new message inside a fragmented one", append(serverFrame(ws.OpText, false, []byte("a")), serverFrame(ws.OpText, true, []byte("b"))...), errBadContinue},
		{"frame over the limit", codec.AppendHeader(nil, ws.Header{Fin: true, OpCode: ws.OpBinary, Length: maxServerFrameBytes + 1}), errFrameTooLarge},
		{"64-bit length with the top bit", []byte{0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0}, codec.ErrBadLength},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var r frameReader
			var c collector
			err := feed(t, &r, &c, tc.in)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestAppendMaskedIsReadableByCodecReader(t *testing.T) {
	key := [4]byte{1, 2, 3, 4}
	for _, n := range []int{0, 125, 126, 65536} {
		p := payloadOf(n)
		f := appendMasked(nil, ws.OpBinary, p, key)
		var r codec.Reader
		m, used, err := r.Next(f)
		if err != nil || used != len(f) || m.Op != ws.OpBinary || !bytes.Equal(m.Payload, p) {
			t.Fatalf("n=%d: Next = %v, %d, %v", n, m.Op, used, err)
		}
	}
	g := growFrame(nil, ws.OpText, 3, key)
	copy(g[len(g)-3:], "abc")
	ws.Cipher(g[len(g)-3:], key, 0)
	var r codec.Reader
	m, _, err := r.Next(g)
	if err != nil || string(m.Payload) != "abc" {
		t.Fatalf("growFrame: %q, %v", m.Payload, err)
	}
}
