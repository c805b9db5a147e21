package codec

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

// testFrame describes one frame of a test stream. encodeFrames masks it
// with a random key, as a client does, unless unmasked is set.
type testFrame struct {
	op       ws.OpCode
	fin      bool
	rsv      byte
	unmasked bool
	payload  string
	// raw, when set, is written as is instead of a frame.
	raw []byte
}

// frameFin is a final frame; frameMore a frame with more to come.
func frameFin(op ws.OpCode, payload string) testFrame {
	return testFrame{op: op, fin: true, payload: payload}
}

func frameMore(op ws.OpCode, payload string) testFrame {
	return testFrame{op: op, payload: payload}
}

// encodeFrames returns the wire form of frames, each masked with a key
// from rng.
func encodeFrames(rng *rand.Rand, frames ...testFrame) []byte {
	var b []byte
	for _, f := range frames {
		if f.raw != nil {
			b = append(b, f.raw...)
			continue
		}
		h := ws.Header{Fin: f.fin, Rsv: f.rsv, OpCode: f.op, Masked: !f.unmasked, Length: int64(len(f.payload))}
		if h.Masked {
			binary.LittleEndian.PutUint32(h.Mask[:], rng.Uint32())
		}
		b = appendTestFrame(b, h, []byte(f.payload))
	}
	return b
}

// appendTestFrame appends h and payload, masked with h.Mask when h.Masked.
// h.Length is written as is, so it may disagree with len(payload).
func appendTestFrame(dst []byte, h ws.Header, payload []byte) []byte {
	dst = AppendHeader(dst, h)
	n := len(dst)
	dst = append(dst, payload...)
	if h.Masked {
		ws.Cipher(dst[n:], h.Mask, 0)
	}
	return dst
}

// maskedFrame is one client frame masked with a key from rng.
func maskedFrame(rng *rand.Rand, op ws.OpCode, fin bool, payload []byte) []byte {
	h := ws.Header{Fin: fin, OpCode: op, Masked: true, Length: int64(len(payload))}
	binary.LittleEndian.PutUint32(h.Mask[:], rng.Uint32())
	return appendTestFrame(nil, h, payload)
}

// newTestRand returns a generator with a fixed seed, so that failures
// reproduce.
func newTestRand(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, 0x63686174)) }

// decodedMsg is a message copied out of a Reader.
type decodedMsg struct {
	Op      ws.OpCode
	Payload string
}

func (m decodedMsg) String() string {
	p := m.Payload
	if len(p) > 40 {
		p = fmt.Sprintf("%s…(%d bytes)", p[:40], len(m.Payload))
	}
	return fmt.Sprintf("%s %q", opName(m.Op), p)
}

// decodeResult is what a Reader made of a whole input.
type decodeResult struct {
	Msgs []decodedMsg
	Err  error
}

func (d decodeResult) String() string { return fmt.Sprintf("%v, err %v", d.Msgs, d.Err) }

// decodeChunks feeds chunks to a new Reader one after another, the way
// package loop does: drop the n bytes Next consumed; after m.Op == 0 keep
// the unconsumed tail and present it again with the next chunk appended.
// Payloads are copied at once, since they are valid only until the next
// call. Each chunk goes into a fresh buffer, as a socket read would, so the
// Reader cannot rely on consumed bytes staying put, and the input is never
// modified (Next unmasks in place).
func decodeChunks(t testing.TB, maxMsg int, chunks ...[]byte) decodeResult {
	t.Helper()
	r := Reader{MaxMessageBytes: maxMsg}
	var res decodeResult
	var tail []byte
	for _, c := range chunks {
		in := make([]byte, 0, len(tail)+len(c))
		in = append(append(in, tail...), c...)
		for {
			m, n, err := r.Next(in)
			if n < 0 || n > len(in) {
				t.Fatalf("Next consumed %d of %d bytes", n, len(in))
			}
			in = in[n:]
			if err != nil {
				if m.Op != 0 {
					t.Fatalf("Next returned %v with error %v", m.Op, err)
				}
				res.Err = err
				return res
			}
			if m.Op == 0 {
				break
			}
			if n == 0 {
				t.Fatalf("Next returned %v without consuming input", m.Op)
			}
			res.Msgs = append(res.Msgs, decodedMsg{Op: m.Op, Payload: string(m.Payload)})
		}
		// Everything usable was consumed: what is left is part of a header.
		if _, hn, err := ParseHeader(in); hn != 0 || err != nil || len(in) >= ws.MaxHeaderSize {
			t.Fatalf("Next left %d bytes (% x) with m.Op == 0", len(in), in)
		}
		tail = in
	}
	return res
}

// checkSplits checks that stream decodes to want in one piece, split in
// two at every byte and byte by byte (streams up to 8 KiB), and cut at
// random points.
func checkSplits(t *testing.T, rng *rand.Rand, maxMsg int, stream []byte, want decodeResult) {
	t.Helper()
	check := func(how string, chunks ...[]byte) {
		t.Helper()
		if got := decodeChunks(t, maxMsg, chunks...); !reflect.DeepEqual(got, want) {
			t.Fatalf("%s:\n got %v\nwant %v", how, got, want)
		}
	}
	check("one piece", stream)
	if len(stream) <= 8<<10 {
		for i := range len(stream) + 1 {
			check(fmt.Sprintf("split at %d", i), stream[:i], stream[i:])
		}
	}
	if len(stream) <= 8<<10 {
		var bytewise [][]byte
		for i := range stream {
			bytewise = append(bytewise, stream[i:i+1])
		}
		check("byte by byte", bytewise...)
	}
	trials := 50
	if len(stream) > 64<<10 {
		trials = 5
	}
	for range trials {
		cuts := []int{0, len(stream)}
		for range 1 + rng.IntN(8) {
			cuts = append(cuts, rng.IntN(len(stream)+1))
		}
		slices.Sort(cuts)
		var chunks [][]byte
		for i := 1; i < len(cuts); i++ {
			chunks = append(chunks, stream[cuts[i-1]:cuts[i]])
		}
		check(fmt.Sprintf("cut at %v", cuts[1:len(cuts)-1]), chunks...)
	}
}

// textOf returns size bytes of valid UTF-8 mixing one- to four-byte runes.
func textOf(rng *rand.Rand, size int) []byte {
	runes := []rune{'a', 'z', ' ', '~', 0x7f, 0x80, 'é', 0x7ff, 0x800, 'κ', '€', '中', 0xd7ff, 0xe000, 0xffff, 0x10000, '𝄞', '😀', 0x10ffff}
	b := make([]byte, 0, size)
	for len(b) < size {
		r := runes[rng.IntN(len(runes))]
		if len(b)+utf8.RuneLen(r) > size {
			r = 'x'
		}
		b = utf8.AppendRune(b, r)
	}
	return b
}

// randomBytes returns size random bytes.
func randomBytes(rng *rand.Rand, size int) []byte {
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

func TestReaderSingleFrames(t *testing.T) {
	rng := newTestRand(1)
	for _, op := range []ws.OpCode{ws.OpText, ws.OpBinary} {
		for _, size := range headerLengths {
			t.Run(fmt.Sprintf("%s/%d", opName(op), size), func(t *testing.T) {
				payload := randomBytes(rng, int(size))
				if op == ws.OpText {
					payload = textOf(rng, int(size))
				}
				frame := maskedFrame(rng, op, true, payload)
				in := bytes.Clone(frame)
				var r Reader
				m, n, err := r.Next(in)
				if err != nil || n != len(in) || m.Op != op || !bytes.Equal(m.Payload, payload) {
					t.Fatalf("Next = %v, %d bytes, %d, %v; want %v, %d bytes, %d", m.Op, len(m.Payload), n, err, op, size, len(in))
				}
				// A whole frame is unmasked in place and returned as is.
				if size > 0 && &m.Payload[0] != &in[n-len(payload)] {
					t.Fatalf("payload of a whole frame was copied")
				}
				checkSplits(t, rng, 0, frame, decodeResult{Msgs: []decodedMsg{{Op: op, Payload: string(payload)}}})
			})
		}
	}
}

func TestReaderFragmented(t *testing.T) {
	const euro, clef = "\xe2\x82\xac", "\xf0\x9d\x84\x9e" // € and 𝄞
	many := make([]testFrame, 0, 101)
	many = append(many, frameMore(ws.OpText, "κ"))
	for range 99 {
		many = append(many, frameMore(ws.OpContinuation, "ό"))
	}
	many = append(many, frameFin(ws.OpContinuation, "!"))
	for _, tc := range []struct {
		name   string
		frames []testFrame
		want   []decodedMsg
	}{
		{
			name:   "text in two",
			frames: []testFrame{frameMore(ws.OpText, "hel"), frameFin(ws.OpContinuation, "lo")},
			want:   []decodedMsg{{ws.OpText, "hello"}},
		},
		{
			name: "binary in five",
			frames: []testFrame{
				frameMore(ws.OpBinary, "\x00\x01"), frameMore(ws.OpContinuation, "\xff"), frameMore(ws.OpContinuation, "\xfe\xfd"),
				frameMore(ws.OpContinuation, "\x80"), frameFin(ws.OpContinuation, "\xc0"),
			},
			want: []decodedMsg{{ws.OpBinary, "\x00\x01\xff\xfe\xfd\x80\xc0"}},
		},
		{
			name:   "empty first fragment",
			frames: []testFrame{frameMore(ws.OpText, ""), frameFin(ws.OpContinuation, "abc")},
			want:   []decodedMsg{{ws.OpText, "abc"}},
		},
		{
			name:   "empty last fragment",
			frames: []testFrame{frameMore(ws.OpBinary, "abc"), frameFin(ws.OpContinuation, "")},
			want:   []decodedMsg{{ws.OpBinary, "abc"}},
		},
		{
			name:   "empty middle fragments",
			frames: []testFrame{frameMore(ws.OpText, "a"), frameMore(ws.OpContinuation, ""), frameMore(ws.OpContinuation, ""), frameFin(ws.OpContinuation, "b")},
			want:   []decodedMsg{{ws.OpText, "ab"}},
		},
		{
			name:   "all fragments empty",
			frames: []testFrame{frameMore(ws.OpText, ""), frameMore(ws.OpContinuation, ""), frameFin(ws.OpContinuation, "")},
			want:   []decodedMsg{{ws.OpText, ""}},
		},
		{
			name: "code points split across fragments",
			frames: []testFrame{
				frameMore(ws.OpText, "a"+euro[:1]), frameMore(ws.OpContinuation, euro[1:2]), frameMore(ws.OpContinuation, euro[2:]+clef[:2]),
				frameMore(ws.OpContinuation, ""), frameFin(ws.OpContinuation, clef[2:]+"z"),
			},
			want: []decodedMsg{{ws.OpText, "a" + euro + clef + "z"}},
		},
		{
			name:   "one hundred and one fragments",
			frames: many,
			want:   []decodedMsg{{ws.OpText, "κ" + strings.Repeat("ό", 99) + "!"}},
		},
		{
			name: "fragments with 16-bit lengths",
			frames: []testFrame{
				frameMore(ws.OpBinary, strings.Repeat("a", 126)), frameMore(ws.OpContinuation, strings.Repeat("b", 300)),
				frameFin(ws.OpContinuation, strings.Repeat("c", 1000)),
			},
			want: []decodedMsg{{ws.OpBinary, strings.Repeat("a", 126) + strings.Repeat("b", 300) + strings.Repeat("c", 1000)}},
		},
		{
			name: "messages back to back",
			frames: []testFrame{
				frameMore(ws.OpText, "one "), frameFin(ws.OpContinuation, "two"), frameFin(ws.OpBinary, "three"),
				frameMore(ws.OpBinary, "fo"), frameFin(ws.OpContinuation, "ur"), frameFin(ws.OpText, ""),
			},
			want: []decodedMsg{{ws.OpText, "one two"}, {ws.OpBinary, "three"}, {ws.OpBinary, "four"}, {ws.OpText, ""}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rng := newTestRand(2)
			checkSplits(t, rng, 0, encodeFrames(rng, tc.frames...), decodeResult{Msgs: tc.want})
		})
	}
}

func TestReaderControlFramesBetweenFragments(t *testing.T) {
	closeBye := "\x03\xe8bye"
	for _, tc := range []struct {
		name   string
		frames []testFrame
		want   []decodedMsg
	}{
		{
			name:   "ping",
			frames: []testFrame{frameMore(ws.OpText, "he"), frameFin(ws.OpPing, "p"), frameFin(ws.OpContinuation, "y")},
			want:   []decodedMsg{{ws.OpPing, "p"}, {ws.OpText, "hey"}},
		},
		{
			name:   "empty pong",
			frames: []testFrame{frameMore(ws.OpBinary, "he"), frameFin(ws.OpPong, ""), frameFin(ws.OpContinuation, "y")},
			want:   []decodedMsg{{ws.OpPong, ""}, {ws.OpBinary, "hey"}},
		},
		{
			name:   "close",
			frames: []testFrame{frameMore(ws.OpText, "he"), frameFin(ws.OpClose, closeBye), frameFin(ws.OpContinuation, "y")},
			want:   []decodedMsg{{ws.OpClose, closeBye}, {ws.OpText, "hey"}},
		},
		{
			name:   "empty close",
			frames: []testFrame{frameMore(ws.OpText, "he"), frameFin(ws.OpClose, "")},
			want:   []decodedMsg{{ws.OpClose, ""}},
		},
		{
			name: "one between each fragment",
			frames: []testFrame{
				frameMore(ws.OpText, "a"), frameFin(ws.OpPing, strings.Repeat("p", 125)), frameMore(ws.OpContinuation, "\xc3"),
				frameFin(ws.OpPong, "q"), frameFin(ws.OpPing, ""), frameMore(ws.OpContinuation, "\xa9"), frameFin(ws.OpClose, "\x0f\xa0"),
				frameFin(ws.OpContinuation, "z"),
			},
			want: []decodedMsg{
				{ws.OpPing, strings.Repeat("p", 125)}, {ws.OpPong, "q"}, {ws.OpPing, ""}, {ws.OpClose, "\x0f\xa0"}, {ws.OpText, "aéz"},
			},
		},
		{
			name: "control frames outside messages",
			frames: []testFrame{
				frameFin(ws.OpPing, "1"), frameFin(ws.OpText, "t"), frameFin(ws.OpPong, "2"), frameFin(ws.OpClose, "\x03\xe9"),
			},
			want: []decodedMsg{{ws.OpPing, "1"}, {ws.OpText, "t"}, {ws.OpPong, "2"}, {ws.OpClose, "\x03\xe9"}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rng := newTestRand(3)
			checkSplits(t, rng, 0, encodeFrames(rng, tc.frames...), decodeResult{Msgs: tc.want})
		})
	}
}

func TestReaderAcceptsValidCloseCodes(t *testing.T) {
	rng := newTestRand(12)
	for _, c := range []uint16{1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999} {
		t.Run(fmt.Sprint(c), func(t *testing.T) {
			for _, reason := range []string{"", "bye", "κόσμε", strings.Repeat("r", 123)} {
				p := string([]byte{byte(c >> 8), byte(c)}) + reason
				checkSplits(t, rng, 0, encodeFrames(rng, frameFin(ws.OpClose, p)), decodeResult{Msgs: []decodedMsg{{ws.OpClose, p}}})
			}
		})
	}
}

// readerErrorCase is a stream that must fail; msgs are the messages it
// yields before the error.
type readerErrorCase struct {
	name   string
	frames []testFrame
	maxMsg int
	msgs   []decodedMsg
	err    error
	code   ws.StatusCode
}

func readerErrorCases() []readerErrorCase {
	cases := []readerErrorCase{
		{
			name:   "unmasked text",
			frames: []testFrame{{op: ws.OpText, fin: true, unmasked: true, payload: "hi"}},
			err:    ErrUnmasked,
			code:   1002,
		},
		{
			name:   "unmasked ping after a message",
			frames: []testFrame{frameFin(ws.OpText, "ok"), {op: ws.OpPing, fin: true, unmasked: true}},
			msgs:   []decodedMsg{{ws.OpText, "ok"}},
			err:    ErrUnmasked,
			code:   1002,
		},
		{
			name:   "unmasked continuation",
			frames: []testFrame{frameMore(ws.OpBinary, "a"), {op: ws.OpContinuation, fin: true, unmasked: true, payload: "b"}},
			err:    ErrUnmasked,
			code:   1002,
		},
		{
			name:   "fragmented ping",
			frames: []testFrame{frameMore(ws.OpPing, "p")},
			err:    ErrControlFragmented,
			code:   1002,
		},
		{
			name:   "fragmented close",
			frames: []testFrame{frameMore(ws.OpClose, "")},
			err:    ErrControlFragmented,
			code:   1002,
		},
		{
			name:   "fragmented pong inside a message",
			frames: []testFrame{frameMore(ws.OpText, "a"), frameMore(ws.OpPong, "p"), frameFin(ws.OpContinuation, "b")},
			err:    ErrControlFragmented,
			code:   1002,
		},
		{
			name:   "continuation without a message",
			frames: []testFrame{frameFin(ws.OpContinuation, "x")},
			err:    ErrUnexpectedCont,
			code:   1002,
		},
		{
			name:   "non-final continuation without a message",
			frames: []testFrame{frameMore(ws.OpContinuation, "")},
			err:    ErrUnexpectedCont,
			code:   1002,
		},
		{
			name:   "continuation after a finished message",
			frames: []testFrame{frameMore(ws.OpText, "a"), frameFin(ws.OpContinuation, "b"), frameFin(ws.OpContinuation, "c")},
			msgs:   []decodedMsg{{ws.OpText, "ab"}},
			err:    ErrUnexpectedCont,
			code:   1002,
		},
		{
			name:   "text during a text message",
			frames: []testFrame{frameMore(ws.OpText, "a"), frameFin(ws.OpText, "b")},
			err:    ErrExpectedCont,
			code:   1002,
		},
		{
			name:   "binary during a text message",
			frames: []testFrame{frameMore(ws.OpText, "a"), frameMore(ws.OpBinary, "b")},
			err:    ErrExpectedCont,
			code:   1002,
		},
		{
			name:   "text during a binary message after a ping",
			frames: []testFrame{frameMore(ws.OpBinary, "a"), frameFin(ws.OpPing, ""), frameFin(ws.OpText, "b")},
			msgs:   []decodedMsg{{ws.OpPing, ""}},
			err:    ErrExpectedCont,
			code:   1002,
		},
		{
			name:   "ping of 126 bytes",
			frames: []testFrame{frameFin(ws.OpPing, strings.Repeat("p", 126))},
			err:    ErrControlTooLong,
			code:   1002,
		},
		{
			name:   "pong of 65536 bytes",
			frames: []testFrame{frameFin(ws.OpPong, strings.Repeat("p", 65536))},
			err:    ErrControlTooLong,
			code:   1002,
		},
		{
			name:   "close of 126 bytes",
			frames: []testFrame{frameFin(ws.OpClose, "\x03\xe8"+strings.Repeat("r", 124))},
			err:    ErrControlTooLong,
			code:   1002,
		},
		{
			name:   "length with the most significant bit set",
			frames: []testFrame{{raw: []byte{0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 4}}},
			err:    ErrBadLength,
			code:   1002,
		},
		{
			name:   "close payload of one byte",
			frames: []testFrame{frameFin(ws.OpClose, "\x03")},
			err:    ErrBadClosePayload,
			code:   1002,
		},
		{
			name:   "close reason not UTF-8",
			frames: []testFrame{frameFin(ws.OpClose, "\x03\xe8\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited")},
			err:    ErrBadClosePayload,
			code:   1002,
		},
		{
			name:   "close reason truncated UTF-8",
			frames: []testFrame{frameFin(ws.OpClose, "\x03\xe8\xe2\x82")},
			err:    ErrBadClosePayload,
			code:   1002,
		},
		{
			name:   "message over the limit",
			frames: []testFrame{frameFin(ws.OpBinary, strings.Repeat("b", 101))},
			maxMsg: 100,
			err:    ErrMessageTooLarge,
			code:   1009,
		},
		{
			name:   "fragments over the limit together",
			frames: []testFrame{frameMore(ws.OpText, strings.Repeat("a", 60)), frameFin(ws.OpPing, "p"), frameFin(ws.OpContinuation, strings.Repeat("b", 41))},
			maxMsg: 100,
			msgs:   []decodedMsg{{ws.OpPing, "p"}},
			err:    ErrMessageTooLarge,
			code:   1009,
		},
		{
			name:   "empty fragment after reaching the limit is fine, one more byte is not",
			frames: []testFrame{frameMore(ws.OpBinary, strings.Repeat("a", 100)), frameMore(ws.OpContinuation, ""), frameFin(ws.OpContinuation, "b")},
			maxMsg: 100,
			err:    ErrMessageTooLarge,
			code:   1009,
		},
		{
			name:   "invalid UTF-8 in the second fragment",
			frames: []testFrame{frameMore(ws.OpText, "ok"), frameFin(ws.OpContinuation, "\xff")},
			err:    ErrInvalidUTF8,
			code:   1007,
		},
		{
			name:   "invalid UTF-8 after a valid message",
			frames: []testFrame{frameFin(ws.OpText, "ok"), frameFin(ws.OpText, "\xc0\xaf")},
			msgs:   []decodedMsg{{ws.OpText, "ok"}},
			err:    ErrInvalidUTF8,
			code:   1007,
		},
		{
			name:   "code point cut by the end of the message",
			frames: []testFrame{frameMore(ws.OpText, "a\xe2"), frameFin(ws.OpContinuation, "\x82")},
			err:    ErrInvalidUTF8,
			code:   1007,
		},
		{
			name:   "code point split by a ping stays checked",
			frames: []testFrame{frameMore(ws.OpText, "a\xe2"), frameFin(ws.OpPing, "\xac"), frameFin(ws.OpContinuation, "\x82")},
			msgs:   []decodedMsg{{ws.OpPing, "\xac"}},
			err:    ErrInvalidUTF8,
			code:   1007,
		},
	}
	for _, rsv := range []byte{1, 2, 4, 7} {
		for _, op := range []ws.OpCode{ws.OpText, ws.OpPing, ws.OpContinuation} {
			tc := readerErrorCase{
				name:   fmt.Sprintf("rsv %03b on %s", rsv, opName(op)),
				frames: []testFrame{{op: op, fin: true, rsv: rsv, payload: "x"}},
				err:    ErrReservedBits,
				code:   1002,
			}
			if op == ws.OpContinuation {
				tc.frames = append([]testFrame{frameMore(ws.OpBinary, "a")}, tc.frames...)
			}
			cases = append(cases, tc)
		}
	}
	for op := ws.OpCode(3); op <= 15; op++ {
		if op >= 8 && op <= 10 {
			continue
		}
		cases = append(cases, readerErrorCase{
			name:   fmt.Sprintf("reserved opcode %d", op),
			frames: []testFrame{frameFin(ws.OpPing, ""), frameFin(op, "x")},
			msgs:   []decodedMsg{{ws.OpPing, ""}},
			err:    ErrReservedOpcode,
			code:   1002,
		})
	}
	for _, c := range []uint16{0, 999, 1004, 1005, 1006, 1012, 1013, 1014, 1015, 1016, 2000, 2999, 5000, 65535} {
		cases = append(cases, readerErrorCase{
			name:   fmt.Sprintf("close code %d", c),
			frames: []testFrame{frameFin(ws.OpClose, string([]byte{byte(c >> 8), byte(c)}))},
			err:    ErrBadCloseCode,
			code:   1002,
		})
	}
	for _, tc := range utf8Cases {
		if tc.valid {
			continue
		}
		cases = append(cases, readerErrorCase{
			name:   "text frame " + tc.name,
			frames: []testFrame{frameFin(ws.OpText, tc.in)},
			err:    ErrInvalidUTF8,
			code:   1007,
		})
		cases = append(cases, readerErrorCase{
			name:   "fragmented text " + tc.name,
			frames: splitFragments(ws.OpText, tc.in),
			err:    ErrInvalidUTF8,
			code:   1007,
		})
	}
	return cases
}

// splitFragments cuts s into one-byte fragments of a message of type op.
func splitFragments(op ws.OpCode, s string) []testFrame {
	if len(s) == 0 {
		return []testFrame{frameFin(op, "")}
	}
	var frames []testFrame
	for i := range len(s) {
		f := frameMore(ws.OpContinuation, s[i:i+1])
		if i == 0 {
			f.op = op
		}
		f.fin = i == len(s)-1
		frames = append(frames, f)
	}
	return frames
}

func TestReaderProtocolErrors(t *testing.T) {
	for _, tc := range readerErrorCases() {
		t.Run(tc.name, func(t *testing.T) {
			rng := newTestRand(4)
			want := decodeResult{Msgs: tc.msgs, Err: tc.err}
			checkSplits(t, rng, tc.maxMsg, encodeFrames(rng, tc.frames...), want)
			if got := CloseCode(tc.err); got != tc.code {
				t.Fatalf("CloseCode(%v) = %d, want %d", tc.err, got, tc.code)
			}
		})
	}
}

func TestReaderUTF8(t *testing.T) {
	for _, tc := range utf8Cases {
		if !tc.valid {
			continue // TestReaderProtocolErrors has them
		}
		t.Run(tc.name, func(t *testing.T) {
			rng := newTestRand(5)
			want := decodeResult{Msgs: []decodedMsg{{ws.OpText, tc.in}}}
			checkSplits(t, rng, 0, encodeFrames(rng, frameFin(ws.OpText, tc.in)), want)
			checkSplits(t, rng, 0, encodeFrames(rng, splitFragments(ws.OpText, tc.in)...), want)
			// Binary messages are not checked.
			want.Msgs[0].Op = ws.OpBinary
			checkSplits(t, rng, 0, encodeFrames(rng, frameFin(ws.OpBinary, tc.in)), want)
		})
	}
}

func TestReaderFailsFastOnInvalidUTF8(t *testing.T) {
	rng := newTestRand(6)
	for _, tc := range []struct {
		name   string
		frames []byte
		fed    int // bytes given to Next
	}{
		{
			name:   "first chunk of a frame",
			frames: maskedFrame(rng, ws.OpText, true, []byte("hello \xed\xa0\x80"+strings.Repeat("x", 1000))),
			fed:    4 + 4 + 9,
		},
		{
			name:   "non-final fragment",
			frames: maskedFrame(rng, ws.OpText, false, []byte("hello \xf4\x90\x80\x80")),
			fed:    2 + 4 + 10,
		},
		{
			name:   "continuation, before its end",
			frames: append(maskedFrame(rng, ws.OpText, false, []byte("ok")), maskedFrame(rng, ws.OpContinuation, true, []byte("\xc0\x80"+strings.Repeat("y", 200)))...),
			fed:    2 + 4 + 2 + 4 + 4 + 1,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var r Reader
			in := bytes.Clone(tc.frames[:tc.fed])
			off := 0
			for {
				m, n, err := r.Next(in[off:])
				off += n
				if err == ErrInvalidUTF8 {
					return
				}
				if err != nil || m.Op != 0 || off != len(in) {
					t.Fatalf("Next = %v, %d, %v after %d of %d bytes; want ErrInvalidUTF8", m.Op, n, err, off, len(in))
				}
				if n == 0 {
					t.Fatalf("no ErrInvalidUTF8 after %d of %d bytes of the stream", len(in), len(tc.frames))
				}
			}
		})
	}
}

func TestReaderMessageLimit(t *testing.T) {
	rng := newTestRand(7)
	header := func(op ws.OpCode, fin bool, length int64) []byte {
		h := ws.Header{Fin: fin, OpCode: op, Masked: true, Length: length}
		binary.LittleEndian.PutUint32(h.Mask[:], rng.Uint32())
		return AppendHeader(nil, h)
	}
	t.Run("checked at header time", func(t *testing.T) {
		for _, tc := range []struct {
			name   string
			maxMsg int
			length int64
			err    error
		}{
			{
				name:   "at the limit",
				maxMsg: 1000,
				length: 1000,
				err:    nil,
			},
			{
				name:   "one over",
				maxMsg: 1000,
				length: 1001,
				err:    ErrMessageTooLarge,
			},
			{
				name:   "default limit",
				maxMsg: 0,
				length: DefaultMaxMessageBytes,
				err:    nil,
			},
			{
				name:   "over the default limit",
				maxMsg: 0,
				length: DefaultMaxMessageBytes + 1,
				err:    ErrMessageTooLarge,
			},
			{
				name:   "negative means default",
				maxMsg: -1,
				length: DefaultMaxMessageBytes + 1,
				err:    ErrMessageTooLarge,
			},
			{
				name:   "largest length",
				maxMsg: 1 << 40,
				length: 1<<63 - 1,
				err:    ErrMessageTooLarge,
			},
		} {
			t.Run(tc.name, func(t *testing.T) {
				for _, op := range []ws.OpCode{ws.OpText, ws.OpBinary} {
					r := Reader{MaxMessageBytes: tc.maxMsg}
					h := header(op, true, tc.length)
					if _, _, err := r.Next(h); err != tc.err {
						t.Fatalf("%s: Next(header only) = %v, want %v", opName(op), err, tc.err)
					}
				}
			})
		}
	})
	t.Run("cumulative over fragments", func(t *testing.T) {
		for _, tc := range []struct {
			name  string
			sizes []int
			err   error
		}{
			{
				name:  "sum at the limit",
				sizes: []int{400, 0, 300, 300},
				err:   nil,
			},
			{
				name:  "sum one over",
				sizes: []int{400, 300, 301},
				err:   ErrMessageTooLarge,
			},
			{
				name:  "first fragment over",
				sizes: []int{1001, 1},
				err:   ErrMessageTooLarge,
			},
		} {
			t.Run(tc.name, func(t *testing.T) {
				r := Reader{MaxMessageBytes: 1000}
				var stream []byte
				for i, size := range tc.sizes {
					op := ws.OpContinuation
					if i == 0 {
						op = ws.OpBinary
					}
					fin := i == len(tc.sizes)-1
					stream = append(stream, maskedFrame(rng, ws.OpPing, true, []byte("p"))...)
					if fin && tc.err != nil {
						// The header alone must fail: the payload is not needed.
						stream = append(stream, header(op, fin, int64(size))...)
						break
					}
					stream = append(stream, maskedFrame(rng, op, fin, bytes.Repeat([]byte{'m'}, size))...)
				}
				var err error
				var msgs int
				for off := 0; off < len(stream) && err == nil; {
					var m Msg
					var n int
					m, n, err = r.Next(stream[off:])
					off += n
					if m.Op == 0 && err == nil {
						break
					}
					if m.Op == ws.OpBinary {
						msgs++
					}
				}
				if err != tc.err || tc.err == nil && msgs != 1 {
					t.Fatalf("err = %v, messages %d; want %v", err, msgs, tc.err)
				}
			})
		}
	})
	t.Run("control frames do not count", func(t *testing.T) {
		stream := encodeFrames(rng, frameMore(ws.OpText, strings.Repeat("a", 10)), frameFin(ws.OpPing, strings.Repeat("p", 125)),
			frameFin(ws.OpClose, "\x03\xe8"+strings.Repeat("r", 100)), frameFin(ws.OpContinuation, ""))
		want := decodeResult{Msgs: []decodedMsg{{ws.OpPing, strings.Repeat("p", 125)}, {ws.OpClose, "\x03\xe8" + strings.Repeat("r", 100)}, {ws.OpText, strings.Repeat("a", 10)}}}
		checkSplits(t, rng, 10, stream, want)
	})
}

// TestReaderSplitAnywhere is the incremental property: the same messages
// and error come out whatever the chunks the stream arrives in.
func TestReaderSplitAnywhere(t *testing.T) {
	rng := newTestRand(8)
	text := string(textOf(rng, 700))
	bin := string(randomBytes(rng, 300))
	cut := 341
	for utf8.RuneStart(text[cut]) { // the middle of a multibyte rune
		cut++
	}
	// A text frame with a 16-bit length: the longest valid prefix of 126 bytes.
	t126 := text[:126]
	for !utf8.ValidString(t126) {
		t126 = t126[:len(t126)-1]
	}
	frames := []testFrame{
		frameFin(ws.OpText, "hello"),
		frameFin(ws.OpBinary, ""),
		frameMore(ws.OpText, text[:cut]),
		frameFin(ws.OpPing, "are you there"),
		frameMore(ws.OpContinuation, ""),
		frameFin(ws.OpPong, ""),
		frameFin(ws.OpContinuation, text[cut:]),
		frameFin(ws.OpBinary, bin),
		frameMore(ws.OpBinary, bin[:5]),
		frameFin(ws.OpPing, strings.Repeat("x", 125)),
		frameFin(ws.OpContinuation, bin[5:200]),
		frameFin(ws.OpText, t126),
		frameFin(ws.OpText, ""),
		frameFin(ws.OpClose, "\x03\xe8κόσμε"),
	}
	want := []decodedMsg{
		{ws.OpText, "hello"},
		{ws.OpBinary, ""},
		{ws.OpPing, "are you there"},
		{ws.OpPong, ""},
		{ws.OpText, text},
		{ws.OpBinary, bin},
		{ws.OpPing, strings.Repeat("x", 125)},
		{ws.OpBinary, bin[:200]},
		{ws.OpText, t126},
		{ws.OpText, ""},
		{ws.OpClose, "\x03\xe8κόσμε"},
	}

	t.Run("valid stream", func(t *testing.T) {
		checkSplits(t, rng, 0, encodeFrames(rng, frames...), decodeResult{Msgs: want})
	})
	t.Run("stream ending in an error", func(t *testing.T) {
		bad := append(frames[:len(frames)-1:len(frames)-1], frameMore(ws.OpText, "ok \xf0\x9f"), frameFin(ws.OpPing, ""), frameFin(ws.OpContinuation, "\x98"), frameFin(ws.OpContinuation, "x"))
		errWant := decodeResult{Msgs: append(want[:len(want)-1:len(want)-1], decodedMsg{ws.OpPing, ""}), Err: ErrInvalidUTF8}
		checkSplits(t, rng, 0, encodeFrames(rng, bad...), errWant)
	})
	t.Run("stream ending inside a frame", func(t *testing.T) {
		stream := encodeFrames(rng, frames...)
		for _, drop := range []int{1, 2, 3, 5, 8, 13} {
			// The last frame is lost; everything before it still comes out.
			checkSplits(t, rng, 0, stream[:len(stream)-drop], decodeResult{Msgs: want[:len(want)-1]})
		}
	})
	t.Run("random streams", func(t *testing.T) {
		for i := range 30 {
			frames, want := randomStream(rng)
			stream := encodeFrames(rng, frames...)
			t.Run(fmt.Sprint(i), func(t *testing.T) {
				checkSplits(t, rng, 0, stream, decodeResult{Msgs: want})
			})
		}
	})
}

// randomStream returns a valid stream of a few messages, some fragmented,
// with control frames between them and their fragments, and the messages
// it decodes to.
func randomStream(rng *rand.Rand) ([]testFrame, []decodedMsg) {
	var frames []testFrame
	var msgs []decodedMsg
	control := func() {
		if rng.IntN(3) != 0 {
			return
		}
		ops := []ws.OpCode{ws.OpPing, ws.OpPong, ws.OpClose}
		op := ops[rng.IntN(len(ops))]
		p := string(randomBytes(rng, rng.IntN(126)))
		if op == ws.OpClose {
			p = "\x0b\xb8" + string(textOf(rng, rng.IntN(100)))
		}
		frames = append(frames, frameFin(op, p))
		msgs = append(msgs, decodedMsg{op, p})
	}
	sizes := []int{0, 1, 2, 7, 125, 126, 127, 300}
	for range 1 + rng.IntN(6) {
		control()
		op := ws.OpText
		var p []byte
		size := sizes[rng.IntN(len(sizes))]
		if rng.IntN(2) == 0 {
			op, p = ws.OpBinary, randomBytes(rng, size)
		} else {
			p = textOf(rng, size)
		}
		// Cut anywhere, also inside a rune.
		nfrag := 1 + rng.IntN(4)
		cuts := []int{0, len(p)}
		for range nfrag - 1 {
			cuts = append(cuts, rng.IntN(len(p)+1))
		}
		slices.Sort(cuts)
		for i := 1; i < len(cuts); i++ {
			f := frameMore(ws.OpContinuation, string(p[cuts[i-1]:cuts[i]]))
			if i == 1 {
				f.op = op
			}
			f.fin = i == len(cuts)-1
			frames = append(frames, f)
			if !f.fin {
				control()
			}
		}
		msgs = append(msgs, decodedMsg{op, string(p)})
	}
	// Control frames between fragments come out before their message.
	return frames, reorderControl(frames, msgs)
}

// reorderControl lists msgs in the order a Reader yields them: each
// control frame when it arrives, each data message at its final frame.
func reorderControl(frames []testFrame, msgs []decodedMsg) []decodedMsg {
	var data, out []decodedMsg
	for _, m := range msgs {
		if !m.Op.IsControl() {
			data = append(data, m)
		}
	}
	for _, f := range frames {
		switch {
		case f.op.IsControl():
			out = append(out, decodedMsg{f.op, f.payload})
		case f.fin:
			out = append(out, data[0])
			data = data[1:]
		}
	}
	return out
}

func TestReaderKeepsSmallBuffer(t *testing.T) {
	rng := newTestRand(9)
	var r Reader
	feed := func(stream []byte) {
		t.Helper()
		for off := 0; off < len(stream); {
			m, n, err := r.Next(stream[off:])
			off += n
			if err != nil || m.Op == 0 && off < len(stream) {
				t.Fatalf("Next = %v, %d, %v", m.Op, n, err)
			}
		}
	}
	big := bytes.Repeat([]byte("b"), 4*keepBufBytes)
	feed(encodeFrames(rng, frameMore(ws.OpBinary, string(big[:10])), frameFin(ws.OpContinuation, string(big[10:]))))
	feed(encodeFrames(rng, frameMore(ws.OpBinary, "a"), frameFin(ws.OpContinuation, "b")))
	if cap(r.buf) > keepBufBytes {
		t.Fatalf("Reader kept a %d-byte buffer after a small message", cap(r.buf))
	}
	// A message of keepBufBytes assembled from fragments leaves a buffer
	// the next message reuses.
	fill := string(big[:keepBufBytes])
	feed(encodeFrames(rng, frameMore(ws.OpBinary, fill[:1000]), frameMore(ws.OpContinuation, fill[1000:3000]), frameFin(ws.OpContinuation, fill[3000:])))
	if cap(r.buf) > keepBufBytes {
		t.Fatalf("a %d-byte message left a %d-byte buffer, over keepBufBytes", keepBufBytes, cap(r.buf))
	}
	kept := &r.buf[:1][0]
	feed(encodeFrames(rng, frameMore(ws.OpBinary, fill[:2000]), frameFin(ws.OpContinuation, fill[2000:])))
	if &r.buf[0] != kept {
		t.Fatalf("the next message did not reuse the buffer")
	}
	// Release in the middle of a message keeps what the message needs.
	feed(encodeFrames(rng, frameMore(ws.OpText, "abc")))
	r.Release()
	feed(encodeFrames(rng, frameFin(ws.OpContinuation, "def")))
	if string(r.buf) != "abcdef" {
		t.Fatalf("buffer %q after Release mid-message", r.buf)
	}
	r.Release()
	if r.buf != nil || r.ctl != nil {
		t.Fatalf("Release kept buffers")
	}
}

func BenchmarkReaderNext(b *testing.B) {
	rng := newTestRand(10)
	for _, op := range []ws.OpCode{ws.OpText, ws.OpBinary} {
		for _, size := range benchSizes {
			payload := bytes.Repeat([]byte("chat "), size/5+1)[:size]
			if op == ws.OpBinary {
				payload = randomBytes(rng, size)
			}
			frame := maskedFrame(rng, op, true, payload)
			in := make([]byte, len(frame))
			b.Run(fmt.Sprintf("%s/%d", opName(op), size), func(b *testing.B) {
				b.ReportAllocs()
				b.SetBytes(int64(size))
				var r Reader
				for b.Loop() {
					// Next unmasks in place: restore the masked frame, as a
					// read from the socket would.
					copy(in, frame)
					if m, _, err := r.Next(in); err != nil || m.Op != op {
						b.Fatal(m.Op, err)
					}
				}
			})
		}
	}
}

func BenchmarkReaderNextFragmented(b *testing.B) {
	rng := newTestRand(11)
	for _, size := range benchSizes {
		payload := bytes.Repeat([]byte("chat "), size/5+1)[:size]
		stream := encodeFrames(rng, frameMore(ws.OpText, string(payload[:size/2])), frameFin(ws.OpContinuation, string(payload[size/2:])))
		in := make([]byte, len(stream))
		b.Run(fmt.Sprintf("text/%d", size), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(size))
			var r Reader
			for b.Loop() {
				copy(in, stream)
				if m, _, err := r.Next(in); err != nil || m.Op != ws.OpText {
					b.Fatal(m.Op, err)
				}
			}
		})
	}
}

// TestReaderTrimReturnsLargeBuffersOnlyBetweenMessages: a message over
// keepBufBytes that spans calls is assembled in a borrowed buffer, which
// Trim gives back once the message is done, and not while it is assembled.
func TestReaderTrimReturnsLargeBuffersOnlyBetweenMessages(t *testing.T) {
	rng := newTestRand(40)
	payload := textOf(rng, 20<<10)
	frame := maskedFrame(rng, ws.OpText, true, payload)
	var r Reader
	cut := 12 << 10
	if m, n, err := r.Next(frame[:cut]); err != nil || m.Op != 0 || n != cut {
		t.Fatalf("Next(first part) = %v, %d, %v", m.Op, n, err)
	}
	r.Trim()
	if r.big == nil || len(r.buf) == 0 {
		t.Fatal("Trim gave back the buffer of a message in progress")
	}
	m, _, err := r.Next(frame[cut:])
	if err != nil || m.Op != ws.OpText || !bytes.Equal(m.Payload, payload) {
		t.Fatalf("Next(rest) = %v, %v", m.Op, err)
	}
	if cap(r.buf) < len(payload) || cap(r.buf) > 32<<10 {
		t.Fatalf("assembly buffer cap %d for a %d-byte message: want one size class", cap(r.buf), len(payload))
	}
	r.Trim()
	if r.big != nil || r.buf != nil {
		t.Fatal("Trim kept the large buffer after the message")
	}
	// The Reader goes on: a small fragmented message after it.
	small := encodeFrames(rng, frameMore(ws.OpText, "he"), frameFin(ws.OpContinuation, "llo"))
	if m, _, err := r.Next(small); err != nil || string(m.Payload) != "hello" {
		t.Fatalf("next message: %q, %v", m.Payload, err)
	}
}
