package codec

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

// headerLengths are the payload lengths around each boundary of the three
// length encodings (RFC 6455 §5.2).
var headerLengths = []int64{0, 1, 125, 126, 127, 65535, 65536, 1 << 20}

func TestHeaderRoundTrip(t *testing.T) {
	for _, length := range headerLengths {
		for _, masked := range []bool{false, true} {
			h := ws.Header{
				Fin:    length%2 == 0,
				Rsv:    byte(length % 8),
				OpCode: ws.OpBinary,
				Masked: masked,
				Length: length,
			}
			if masked {
				h.Mask = [4]byte{0xde, 0xad, 0xbe, byte(length)}
			}
			t.Run(fmt.Sprintf("len=%d/masked=%t", length, masked), func(t *testing.T) {
				b := AppendHeader([]byte("prefix"), h)
				if !bytes.HasPrefix(b, []byte("prefix")) {
					t.Fatalf("AppendHeader overwrote dst: %q", b)
				}
				b = b[len("prefix"):]
				if len(b) != ws.HeaderSize(h) {
					t.Fatalf("header is %d bytes, want %d", len(b), ws.HeaderSize(h))
				}
				// gobwas/ws is the reference encoder.
				var ref bytes.Buffer
				if err := ws.WriteHeader(&ref, h); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(b, ref.Bytes()) {
					t.Fatalf("AppendHeader = % x, ws.WriteHeader = % x", b, ref.Bytes())
				}
				got, n, err := ParseHeader(append(b, "payload"...))
				if err != nil || n != len(b) || got != h {
					t.Fatalf("ParseHeader = %+v, %d, %v; want %+v, %d, nil", got, n, err, h, len(b))
				}
				for i := range len(b) {
					if _, n, err := ParseHeader(b[:i]); n != 0 || err != nil {
						t.Fatalf("ParseHeader of %d of %d bytes = %d, %v; want 0, nil", i, len(b), n, err)
					}
				}
			})
		}
	}
}

func TestParseHeaderRejectsLengthWithMSBSet(t *testing.T) {
	for _, tc := range []struct {
		name string
		len8 []byte
	}{
		{
			name: "only MSB",
			len8: []byte{0x80, 0, 0, 0, 0, 0, 0, 0},
		},
		{
			name: "all ones",
			len8: []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
		},
		{
			name: "MSB and small",
			len8: []byte{0x80, 0, 0, 0, 0, 0, 0, 5},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, second := range []byte{127, 0x80 | 127} {
				b := append([]byte{0x82, second}, tc.len8...)
				b = append(b, 1, 2, 3, 4)
				if _, n, err := ParseHeader(b); err != ErrBadLength || n != 0 {
					t.Fatalf("ParseHeader(% x) = %d, %v; want 0, ErrBadLength", b, n, err)
				}
				// Fewer than the ten bytes that hold the length: just incomplete.
				for i := range 10 {
					if _, n, err := ParseHeader(b[:i]); n != 0 || err != nil {
						t.Fatalf("ParseHeader of %d bytes = %d, %v; want 0, nil", i, n, err)
					}
				}
			}
		})
	}
	if c := CloseCode(ErrBadLength); c != CloseProtocolError {
		t.Fatalf("CloseCode(ErrBadLength) = %d, want 1002", c)
	}
}

func TestParseHeaderLargestLength(t *testing.T) {
	b := []byte{0x82, 127, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	h, n, err := ParseHeader(b)
	if err != nil || n != 10 || h.Length != 1<<63-1 {
		t.Fatalf("ParseHeader = %+v, %d, %v", h, n, err)
	}
}

func TestParseHeaderBits(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []byte
		want ws.Header
	}{
		{
			name: "fin text",
			in:   []byte{0x81, 0},
			want: ws.Header{Fin: true, OpCode: ws.OpText},
		},
		{
			name: "continuation not fin",
			in:   []byte{0x00, 3},
			want: ws.Header{OpCode: ws.OpContinuation, Length: 3},
		},
		{
			name: "rsv1",
			in:   []byte{0xc1, 0},
			want: ws.Header{Fin: true, Rsv: ws.Rsv(true, false, false), OpCode: ws.OpText},
		},
		{
			name: "rsv2",
			in:   []byte{0xa1, 0},
			want: ws.Header{Fin: true, Rsv: ws.Rsv(false, true, false), OpCode: ws.OpText},
		},
		{
			name: "rsv3",
			in:   []byte{0x91, 0},
			want: ws.Header{Fin: true, Rsv: ws.Rsv(false, false, true), OpCode: ws.OpText},
		},
		{
			name: "opcode 15 masked",
			in:   []byte{0x8f, 0x85, 1, 2, 3, 4},
			want: ws.Header{Fin: true, OpCode: 15, Masked: true, Mask: [4]byte{1, 2, 3, 4}, Length: 5},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, n, err := ParseHeader(tc.in)
			if err != nil || n != len(tc.in) || h != tc.want {
				t.Fatalf("ParseHeader(% x) = %+v, %d, %v; want %+v, %d", tc.in, h, n, err, tc.want, len(tc.in))
			}
		})
	}
}

func TestAppendFrame(t *testing.T) {
	for _, size := range []int{0, 1, 125, 126, 127, 65535, 65536} {
		for _, tc := range []struct {
			op  ws.OpCode
			fin bool
		}{
			{
				op:  ws.OpText,
				fin: true,
			},
			{
				op:  ws.OpBinary,
				fin: false,
			},
			{
				op:  ws.OpContinuation,
				fin: true,
			},
		} {
			t.Run(fmt.Sprintf("%d/op=%d/fin=%t", size, tc.op, tc.fin), func(t *testing.T) {
				payload := bytes.Repeat([]byte("x"), size)
				b := AppendFrame([]byte("dst"), tc.op, tc.fin, payload)
				if string(b[:3]) != "dst" {
					t.Fatalf("AppendFrame overwrote dst")
				}
				b = b[3:]
				if len(b) != FrameSize(size) {
					t.Fatalf("frame is %d bytes, FrameSize(%d) = %d", len(b), size, FrameSize(size))
				}
				ref, err := ws.CompileFrame(ws.NewFrame(tc.op, tc.fin, payload))
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(b, ref) {
					t.Fatalf("AppendFrame differs from ws.CompileFrame")
				}
				h, n, err := ParseHeader(b)
				if err != nil || h.Masked || h.OpCode != tc.op || h.Fin != tc.fin || h.Length != int64(size) {
					t.Fatalf("ParseHeader = %+v, %d, %v", h, n, err)
				}
				if !bytes.Equal(b[n:], payload) {
					t.Fatalf("payload differs")
				}
			})
		}
	}
}

func TestAppendClose(t *testing.T) {
	long := strings.Repeat("r", 200)
	for _, tc := range []struct {
		name       string
		code       ws.StatusCode
		reason     string
		wantReason string
	}{
		{
			name:       "no reason",
			code:       CloseNormal,
			reason:     "",
			wantReason: "",
		},
		{
			name:       "ascii reason",
			code:       CloseProtocolError,
			reason:     "codec: reserved opcode",
			wantReason: "codec: reserved opcode",
		},
		{
			name:       "reason of 123 bytes kept",
			code:       CloseTooLarge,
			reason:     long[:123],
			wantReason: long[:123],
		},
		{
			name:       "reason of 124 bytes cut",
			code:       CloseTooLarge,
			reason:     long[:124],
			wantReason: long[:123],
		},
		{
			name:       "long reason cut",
			code:       CloseSlowConsumer,
			reason:     long,
			wantReason: long[:123],
		},
		{
			// 61 two-byte runes are 122 bytes; the 62nd would end at 124.
			name:       "cut before a two-byte rune",
			code:       ClosePolicy,
			reason:     strings.Repeat("é", 100),
			wantReason: strings.Repeat("é", 61),
		},
		{
			name:       "cut before a four-byte rune",
			code:       CloseGoingAway,
			reason:     strings.Repeat("a", 121) + "𝄞𝄞",
			wantReason: strings.Repeat("a", 121),
		},
		{
			name:       "cut before a three-byte rune",
			code:       CloseInternal,
			reason:     strings.Repeat("€", 50),
			wantReason: strings.Repeat("€", 41),
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := AppendClose(nil, tc.code, tc.reason)
			h, n, err := ParseHeader(b)
			if err != nil || n == 0 || !h.Fin || h.OpCode != ws.OpClose || h.Masked || h.Length != int64(len(b)-n) {
				t.Fatalf("ParseHeader = %+v, %d, %v for % x", h, n, err, b)
			}
			if h.Length > ws.MaxControlFramePayloadSize {
				t.Fatalf("close payload is %d bytes", h.Length)
			}
			code, err := CheckClosePayload(b[n:])
			if err != nil || code != tc.code {
				t.Fatalf("CheckClosePayload = %d, %v; want %d, nil", code, err, tc.code)
			}
			if got := string(b[n+2:]); got != tc.wantReason {
				t.Fatalf("reason = %q, want %q", got, tc.wantReason)
			}
		})
	}
}

func TestCheckClosePayload(t *testing.T) {
	type closeCase struct {
		name    string
		payload []byte
		code    ws.StatusCode
		err     error
	}
	withCode := func(c ws.StatusCode, reason string) []byte {
		return append([]byte{byte(c >> 8), byte(c)}, reason...)
	}
	cases := []closeCase{
		{
			name:    "empty",
			payload: nil,
			code:    0,
			err:     nil,
		},
		{
			name:    "one byte",
			payload: []byte{0x03},
			code:    0,
			err:     ErrBadClosePayload,
		},
		{
			name:    "valid reason",
			payload: withCode(1000, "bye κόσμε"),
			code:    1000,
			err:     nil,
		},
		{
			name:    "invalid UTF-8 reason",
			payload: withCode(1000, "bye \xed\xa0\x80"),
			code:    1000,
			err:     ErrBadClosePayload,
		},
		{
			name:    "truncated UTF-8 reason",
			payload: withCode(1001, "bye \xe2\x82"),
			code:    1001,
			err:     ErrBadClosePayload,
		},
	}
	// Follows Autobahn 7.7.x and 7.9.x: the codes an endpoint may send.
	for _, c := range []ws.StatusCode{1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999} {
		cases = append(cases, closeCase{
			name:    fmt.Sprintf("code %d", c),
			payload: withCode(c, ""),
			code:    c,
			err:     nil,
		})
	}
	for _, c := range []ws.StatusCode{0, 1, 999, 1004, 1005, 1006, 1012, 1013, 1014, 1015, 1016, 1100, 2000, 2999, 5000, 65535} {
		cases = append(cases, closeCase{
			name:    fmt.Sprintf("code %d", c),
			payload: withCode(c, "reason"),
			code:    c,
			err:     ErrBadCloseCode,
		})
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, err := CheckClosePayload(tc.payload)
			if code != tc.code || err != tc.err {
				t.Fatalf("CheckClosePayload(% x) = %d, %v; want %d, %v", tc.payload, code, err, tc.code, tc.err)
			}
			if err != nil && CloseCode(err) != CloseProtocolError {
				t.Fatalf("CloseCode(%v) = %d, want 1002", err, CloseCode(err))
			}
		})
	}
}

func TestCloseCode(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want ws.StatusCode
	}{
		{
			err:  ErrUnmasked,
			want: 1002,
		},
		{
			err:  ErrReservedBits,
			want: 1002,
		},
		{
			err:  ErrReservedOpcode,
			want: 1002,
		},
		{
			err:  ErrControlTooLong,
			want: 1002,
		},
		{
			err:  ErrControlFragmented,
			want: 1002,
		},
		{
			err:  ErrUnexpectedCont,
			want: 1002,
		},
		{
			err:  ErrExpectedCont,
			want: 1002,
		},
		{
			err:  ErrBadLength,
			want: 1002,
		},
		{
			err:  ErrBadClosePayload,
			want: 1002,
		},
		{
			err:  ErrBadCloseCode,
			want: 1002,
		},
		{
			err:  ErrInvalidUTF8,
			want: 1007,
		},
		{
			err:  ErrMessageTooLarge,
			want: 1009,
		},
		{
			err:  fmt.Errorf("loop: conn 7: %w", ErrMessageTooLarge),
			want: 1009,
		},
		{
			err:  fmt.Errorf("loop: conn 7: %w", ErrInvalidUTF8),
			want: 1007,
		},
		{
			err:  errors.New("something else"),
			want: 1002,
		},
	} {
		t.Run(tc.err.Error(), func(t *testing.T) {
			if got := CloseCode(tc.err); got != tc.want {
				t.Fatalf("CloseCode(%v) = %d, want %d", tc.err, got, tc.want)
			}
		})
	}
}

func TestMapHeaderError(t *testing.T) {
	for _, tc := range []struct {
		in   error
		want error
	}{
		{
			in:   nil,
			want: nil,
		},
		{
			in:   ws.ErrProtocolOpCodeReserved,
			want: ErrReservedOpcode,
		},
		{
			in:   ws.ErrProtocolControlPayloadOverflow,
			want: ErrControlTooLong,
		},
		{
			in:   ws.ErrProtocolControlNotFinal,
			want: ErrControlFragmented,
		},
		{
			in:   ws.ErrProtocolNonZeroRsv,
			want: ErrReservedBits,
		},
		{
			in:   ws.ErrProtocolMaskRequired,
			want: ErrUnmasked,
		},
		{
			in:   ws.ErrProtocolContinuationExpected,
			want: ErrExpectedCont,
		},
		{
			in:   ws.ErrProtocolContinuationUnexpected,
			want: ErrUnexpectedCont,
		},
	} {
		name := "nil"
		if tc.in != nil {
			name = tc.in.Error()
		}
		t.Run(name, func(t *testing.T) {
			if got := mapHeaderError(tc.in); got != tc.want {
				t.Fatalf("mapHeaderError(%v) = %v, want %v", tc.in, got, tc.want)
			}
		})
	}
}

func TestFrameSize(t *testing.T) {
	for _, n := range []int{0, 125, 126, 65535, 65536, 1 << 20} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			if got, want := FrameSize(n), len(AppendFrame(nil, ws.OpBinary, true, make([]byte, n))); got != want {
				t.Fatalf("FrameSize(%d) = %d, AppendFrame wrote %d", n, got, want)
			}
		})
	}
}

// benchSizes are the payload sizes the frame benchmarks sweep.
var benchSizes = []int{64, 1 << 10, 64 << 10}

func BenchmarkAppendFrame(b *testing.B) {
	for _, op := range []ws.OpCode{ws.OpText, ws.OpBinary} {
		for _, size := range benchSizes {
			payload := bytes.Repeat([]byte("chat "), size/5+1)[:size]
			if !utf8.Valid(payload) {
				b.Fatal("payload is not UTF-8")
			}
			dst := make([]byte, 0, FrameSize(size))
			b.Run(fmt.Sprintf("%s/%d", opName(op), size), func(b *testing.B) {
				b.ReportAllocs()
				b.SetBytes(int64(size))
				for b.Loop() {
					dst = AppendFrame(dst[:0], op, true, payload)
				}
			})
		}
	}
}

// opName names an opcode in test and benchmark names.
func opName(op ws.OpCode) string {
	switch op {
	case ws.OpContinuation:
		return "cont"
	case ws.OpText:
		return "text"
	case ws.OpBinary:
		return "binary"
	case ws.OpClose:
		return "close"
	case ws.OpPing:
		return "ping"
	case ws.OpPong:
		return "pong"
	}
	return fmt.Sprintf("op%d", op)
}
