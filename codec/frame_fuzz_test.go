package codec

import (
	"bytes"
	"encoding/binary"
	"reflect"
	"testing"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

// fuzzMaxMessageBytes is the small limit FuzzReader decodes under besides
// the default, so that ErrMessageTooLarge is within the fuzzer's reach.
const fuzzMaxMessageBytes = 100

// FuzzReader feeds arbitrary bytes to a Reader in one piece and cut at two
// points: it must not panic, and the pieces must give the same messages and
// the same error as the whole. Seeds: the reader tables and
// testdata/fuzz/FuzzReader.
func FuzzReader(f *testing.F) {
	rng := newTestRand(40)
	for _, tc := range readerErrorCases() {
		f.Add(encodeFrames(rng, tc.frames...), uint(rng.Uint32()))
	}
	for range 20 {
		frames, _ := randomStream(rng)
		f.Add(encodeFrames(rng, frames...), uint(rng.Uint32()))
	}
	for _, tc := range utf8Cases {
		f.Add(encodeFrames(rng, splitFragments(ws.OpText, tc.in)...), uint(rng.Uint32()))
	}
	f.Fuzz(func(t *testing.T, data []byte, split uint) {
		for _, limit := range []int{0, fuzzMaxMessageBytes} {
			whole := decodeChunks(t, limit, data)
			checkFuzzMessages(t, limit, whole)
			i, j := int(split%uint(len(data)+1)), int((split>>16)%uint(len(data)+1))
			if i > j {
				i, j = j, i
			}
			for _, chunks := range [][][]byte{
				{data[:i], data[i:]},
				{data[:j], data[j:]},
				{data[:i], data[i:j], data[j:]},
			} {
				if got := decodeChunks(t, limit, chunks...); !reflect.DeepEqual(got, whole) {
					t.Fatalf("limit %d, cut at %d, %d:\n got %v\nwant %v", limit, i, j, got, whole)
				}
			}
		}
	})
}

// checkFuzzMessages checks what a Reader let through against the protocol.
func checkFuzzMessages(t *testing.T, limit int, res decodeResult) {
	t.Helper()
	if limit <= 0 {
		limit = DefaultMaxMessageBytes
	}
	for _, m := range res.Msgs {
		p := []byte(m.Payload)
		switch m.Op {
		case ws.OpText:
			if !utf8.Valid(p) {
				t.Fatalf("text message is not UTF-8: %v", m)
			}
			fallthrough
		case ws.OpBinary:
			if len(p) > limit {
				t.Fatalf("message of %d bytes over the limit of %d", len(p), limit)
			}
		case ws.OpClose:
			if _, err := CheckClosePayload(p); err != nil {
				t.Fatalf("close frame let through: %v", err)
			}
			fallthrough
		case ws.OpPing, ws.OpPong:
			if len(p) > ws.MaxControlFramePayloadSize {
				t.Fatalf("control frame of %d bytes", len(p))
			}
		default:
			t.Fatalf("message with opcode %d", m.Op)
		}
	}
	switch res.Err {
	case nil, ErrUnmasked, ErrReservedBits, ErrReservedOpcode, ErrControlTooLong, ErrControlFragmented,
		ErrUnexpectedCont, ErrExpectedCont, ErrBadLength, ErrBadClosePayload, ErrBadCloseCode,
		ErrInvalidUTF8, ErrMessageTooLarge:
	default:
		t.Fatalf("error is not one of the sentinels: %v", res.Err)
	}
}

// FuzzUTF8 checks UTF8 against utf8.Valid with the input cut anywhere, and
// that it fails as soon as the text so far cannot be valid. Seeds:
// utf8Cases and testdata/fuzz/FuzzUTF8.
func FuzzUTF8(f *testing.F) {
	for i, tc := range utf8Cases {
		f.Add([]byte(tc.in), uint(i))
	}
	f.Fuzz(func(t *testing.T, data []byte, split uint) {
		i := int(split % uint(len(data)+1))
		checkUTF8Chunks(t, data[:i], data[i:])
		if ValidUTF8(data) != utf8.Valid(data) {
			t.Fatalf("ValidUTF8(% x) = %t", data, !utf8.Valid(data))
		}
	})
}

// FuzzFrameRoundTrip checks decode(encode(x)) == x: payload sent by a
// client as a message of one to four fragments, with a ping in between,
// read back cut at one point; and AppendFrame read back by ParseHeader.
func FuzzFrameRoundTrip(f *testing.F) {
	f.Add([]byte(""), uint32(0), uint8(0), uint(0))
	f.Add([]byte("hello"), uint32(0x01020304), uint8(1), uint(3))
	f.Add(bytes.Repeat([]byte("κόσμε"), 30), uint32(0xdeadbeef), uint8(3), uint(100))
	f.Add(bytes.Repeat([]byte{0xff}, 70000), uint32(0xffffffff), uint8(2), uint(65540))
	f.Fuzz(func(t *testing.T, payload []byte, mask uint32, frags uint8, split uint) {
		op := ws.OpBinary
		if utf8.Valid(payload) {
			op = ws.OpText
		}
		n := 1 + int(frags%4)
		var stream []byte
		for k := range n {
			part := payload[k*len(payload)/n : (k+1)*len(payload)/n]
			fop := ws.OpContinuation
			if k == 0 {
				fop = op
			}
			h := ws.Header{Fin: k == n-1, OpCode: fop, Masked: true, Length: int64(len(part))}
			binary.LittleEndian.PutUint32(h.Mask[:], mask+uint32(k))
			stream = appendTestFrame(stream, h, part)
			if k < n-1 && frags&0x80 != 0 {
				stream = appendTestFrame(stream, ws.Header{Fin: true, OpCode: ws.OpPing, Masked: true, Mask: h.Mask}, nil)
			}
		}
		i := int(split % uint(len(stream)+1))
		res := decodeChunks(t, 0, stream[:i], stream[i:])
		if res.Err != nil || len(res.Msgs) == 0 {
			t.Fatalf("decode: %v", res)
		}
		last := res.Msgs[len(res.Msgs)-1]
		if last.Op != op || last.Payload != string(payload) {
			t.Fatalf("decoded %v, sent %d bytes as %s", last, len(payload), opName(op))
		}

		b := AppendFrame(nil, op, true, payload)
		h, hn, err := ParseHeader(b)
		if err != nil || hn == 0 || h.OpCode != op || !h.Fin || h.Length != int64(len(payload)) || !bytes.Equal(b[hn:], payload) {
			t.Fatalf("AppendFrame read back as %+v, %d, %v", h, hn, err)
		}
		if len(b) != FrameSize(len(payload)) {
			t.Fatalf("AppendFrame wrote %d bytes, FrameSize says %d", len(b), FrameSize(len(payload)))
		}
	})
}
