package loop

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"github.com/gobwas/ws"
)

// These tests hold /echo to RFC 6455 the way Autobahn|Testsuite's fuzzing
// client does (the suite itself cannot run here); cases are grouped by its
// category numbers. Each case runs on a fresh connection; after it, a client
// that was connected all along on the same server must still echo.

// stayOpen as a case's close says the connection must stay open: the test
// then checks it with an echo and a clean closing handshake.
const stayOpen = -1

// confCase is one conformance case.
type confCase struct {
	name   string
	frames []frame       // sent masked, in one TCP write
	raw    []byte        // sent after frames, as is: e.g. a lone header
	chop   int           // write in chunks of chop bytes (0: one write)
	want   []frame       // the server's frames, in order
	close  int           // the close code that ends the case, 0 for an empty close payload, or stayOpen
	within time.Duration // the close must arrive this soon: the server must not wait for more input
}

func text(s string) frame               { return frame{fin: true, op: ws.OpText, payload: []byte(s)} }
func bin(b []byte) frame                { return frame{fin: true, op: ws.OpBinary, payload: b} }
func ping(b []byte) frame               { return frame{fin: true, op: ws.OpPing, payload: b} }
func pong(b []byte) frame               { return frame{fin: true, op: ws.OpPong, payload: b} }
func frag(op ws.OpCode, s string) frame { return frame{op: op, payload: []byte(s)} }
func cont(fin bool, s string) frame {
	return frame{fin: fin, op: ws.OpContinuation, payload: []byte(s)}
}

// textPayload is n bytes of ASCII text.
func textPayload(n int) []byte {
	return repeatTo("abcdefghijklmnopqrstuvwxyz0123456789", n)
}

// binPayload is n bytes covering every byte value.
func binPayload(n int) []byte {
	var pat [251]byte // prime: the pattern does not line up with powers of two
	for i := range pat {
		pat[i] = byte(i * 37)
	}
	return repeatTo(string(pat[:]), n)
}

// repeatTo repeats pat to n bytes (memmove, fast under -race too).
func repeatTo(pat string, n int) []byte {
	b := bytes.Repeat([]byte(pat), n/len(pat)+1)
	return b[:n:n]
}

// fragments splits a message into frames of at most size bytes of payload.
func fragments(op ws.OpCode, p []byte, size int) []frame {
	var fs []frame
	for first := true; first || len(p) > 0; first = false {
		n := min(size, len(p))
		f := frame{op: ws.OpContinuation, payload: p[:n]}
		if first {
			f.op = op
		}
		p = p[n:]
		f.fin = len(p) == 0
		fs = append(fs, f)
	}
	return fs
}

// echoed is the message the server sends back for a message of op and p.
func echoed(op ws.OpCode, p []byte) frame { return frame{fin: true, op: op, payload: p} }

// header returns a lone masked header announcing length bytes.
func header(fin bool, op ws.OpCode, length int64) []byte {
	return appendClientHeader(nil, fin, 0, op, length, maskFor(7))
}

func framingCases() []confCase {
	var cs []confCase
	sizes := []int{0, 125, 126, 127, 128, 65535, 65536}
	for _, op := range []ws.OpCode{ws.OpText, ws.OpBinary} {
		name, gen := "text", textPayload
		if op == ws.OpBinary {
			name, gen = "binary", binPayload
		}
		for _, n := range sizes {
			p := gen(n)
			f := frame{fin: true, op: op, payload: p}
			cs = append(cs, confCase{name: fmt.Sprintf("%s-%d", name, n),
				frames: []frame{f}, want: []frame{f}, close: stayOpen})
			if n <= 128 || n == 65536 {
				cs = append(cs, confCase{name: fmt.Sprintf("%s-%d-1-byte-writes", name, n),
					frames: []frame{f}, chop: 1, want: []frame{f}, close: stayOpen})
			}
		}
	}
	two := []frame{text("first"), bin([]byte{0, 1, 2})}
	cs = append(cs,
		confCase{name: "two-frames-one-write", frames: two, want: two, close: stayOpen},
		confCase{name: "two-frames-1-byte-writes", frames: two, chop: 1, want: two, close: stayOpen},
		confCase{name: "unmasked-frame", raw: []byte{0x81, 0x02, 'h', 'i'}, close: 1002},
		confCase{name: "64-bit-length-with-msb-set",
			raw: []byte{0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 4}, close: 1002},
	)
	return cs
}

func pingCases() []confCase {
	pings := make([]frame, 10)
	pongs := make([]frame, 10)
	for i := range pings {
		p := []byte(fmt.Sprintf("ping-%d", i))
		pings[i], pongs[i] = ping(p), pong(p)
	}
	return []confCase{
		{name: "ping-empty", frames: []frame{ping(nil)}, want: []frame{pong(nil)}, close: stayOpen},
		{name: "ping-text-payload", frames: []frame{ping([]byte("hello"))}, want: []frame{pong([]byte("hello"))}, close: stayOpen},
		{name: "ping-binary-125", frames: []frame{ping(binPayload(125))}, want: []frame{pong(binPayload(125))}, close: stayOpen},
		{name: "ping-126-bytes", frames: []frame{ping(binPayload(126))}, close: 1002},
		{name: "ping-1-byte-writes", frames: []frame{ping([]byte("chopped"))}, chop: 1, want: []frame{pong([]byte("chopped"))}, close: stayOpen},
		{name: "unsolicited-pong-ignored", frames: []frame{pong([]byte("unsolicited"))}, close: stayOpen},
		{name: "unsolicited-empty-pong-ignored", frames: []frame{pong(nil)}, close: stayOpen},
		{name: "unsolicited-pong-then-ping", frames: []frame{pong([]byte("u")), ping([]byte("p"))}, want: []frame{pong([]byte("p"))}, close: stayOpen},
		{name: "10-pings-answered-in-order", frames: pings, want: pongs, close: stayOpen},
		{name: "10-pings-1-byte-writes", frames: pings, chop: 1, want: pongs, close: stayOpen},
	}
}

func reservedBitsCases() []confCase {
	hello := text("hello")
	withRsv := func(f frame, rsv byte) frame { f.rsv = rsv; return f }
	return []confCase{
		{name: "rsv1-text", frames: []frame{withRsv(text("hello"), 4)}, close: 1002},
		{name: "rsv2-after-valid-text", frames: []frame{hello, withRsv(hello, 2), ping(nil)}, want: []frame{hello}, close: 1002},
		{name: "rsv3-with-valid-text", frames: []frame{hello, withRsv(hello, 1), ping(nil)}, want: []frame{hello}, close: 1002},
		{name: "rsv2-rsv3-1-byte-writes", frames: []frame{hello, withRsv(hello, 3), ping(nil)}, chop: 1, want: []frame{hello}, close: 1002},
		{name: "rsv1-rsv3-binary", frames: []frame{withRsv(bin([]byte{0xff}), 5)}, close: 1002},
		{name: "rsv1-rsv2-ping", frames: []frame{withRsv(ping([]byte("p")), 6)}, close: 1002},
		{name: "all-rsv-close", frames: []frame{withRsv(closeFrame(1000, ""), 7)}, close: 1002},
	}
}

func opcodeCases() []confCase {
	var cs []confCase
	hello := text("hello")
	for _, op := range []ws.OpCode{3, 4, 5, 6, 7, 11, 12, 13, 14, 15} {
		cs = append(cs,
			confCase{name: fmt.Sprintf("opcode-%d", op),
				frames: []frame{{fin: true, op: op}}, close: 1002},
			confCase{name: fmt.Sprintf("opcode-%d-after-valid-text", op),
				frames: []frame{hello, {fin: true, op: op, payload: []byte("reserved")}, ping(nil)},
				want:   []frame{hello}, close: 1002},
		)
	}
	return cs
}

func fragmentationCases() []confCase {
	p := []byte("p")
	return []confCase{
		{name: "text-2-fragments", frames: []frame{frag(ws.OpText, "frag"), cont(true, "ment")},
			want: []frame{text("fragment")}, close: stayOpen},
		{name: "binary-3-fragments", frames: []frame{frag(ws.OpBinary, "\x00\x01"), cont(false, "\x02"), cont(true, "\xff")},
			want: []frame{bin([]byte("\x00\x01\x02\xff"))}, close: stayOpen},
		{name: "text-1-byte-fragments", frames: fragments(ws.OpText, []byte("hello"), 1),
			want: []frame{text("hello")}, close: stayOpen},
		{name: "text-fragments-1-byte-writes", frames: fragments(ws.OpText, []byte("hello world"), 3), chop: 1,
			want: []frame{text("hello world")}, close: stayOpen},
		{name: "empty-fragments", frames: []frame{frag(ws.OpText, ""), cont(false, ""), cont(true, "")},
			want: []frame{text("")}, close: stayOpen},
		{name: "ping-between-fragments", frames: []frame{frag(ws.OpText, "frag"), ping(p), cont(true, "ment")},
			want: []frame{pong(p), text("fragment")}, close: stayOpen},
		{name: "pings-between-fragments-1-byte-writes",
			frames: []frame{frag(ws.OpBinary, "a"), ping(p), cont(false, "b"), ping(p), cont(true, "c")}, chop: 1,
			want: []frame{pong(p), pong(p), bin([]byte("abc"))}, close: stayOpen},
		{name: "pong-between-fragments-ignored", frames: []frame{frag(ws.OpText, "a"), pong(p), cont(true, "b")},
			want: []frame{text("ab")}, close: stayOpen},
		{name: "continuation-without-start", frames: []frame{cont(true, "orphan")}, close: 1002},
		{name: "unfinished-continuation-without-start", frames: []frame{cont(false, "orphan")}, close: 1002},
		{name: "continuation-after-finished-message", frames: []frame{text("done"), cont(true, "late")},
			want: []frame{text("done")}, close: 1002},
		{name: "text-during-fragmented-text", frames: []frame{frag(ws.OpText, "a"), text("b")}, close: 1002},
		{name: "binary-during-fragmented-text", frames: []frame{frag(ws.OpText, "a"), bin([]byte("b")), cont(true, "c")}, close: 1002},
		{name: "fragmented-ping", frames: []frame{frag(ws.OpPing, "a"), cont(true, "b")}, close: 1002},
		{name: "fragmented-pong", frames: []frame{frag(ws.OpPong, "a"), cont(true, "b")}, close: 1002},
		{name: "fragmented-close", frames: []frame{{op: ws.OpClose, payload: []byte{3, 0xe8}}, cont(true, "")}, close: 1002},
		{name: "close-during-fragmented-message", frames: []frame{frag(ws.OpText, "a"), closeFrame(1000, "")}, close: 1000},
	}
}

func utf8Cases() []confCase {
	valid := []struct{ name, s string }{
		{"empty", ""},
		{"ascii-and-latin", "Hello-µ@ßöäüàá-UTF-8!!"},
		{"greek-kosme", "κόσμε"},
		{"first-2-byte", "\u0080"},
		{"last-2-byte", "\u07ff"},
		{"first-3-byte", "\u0800"},
		{"last-before-surrogates", "\ud7ff"},
		{"first-after-surrogates", "\ue000"},
		{"last-3-byte", "\uffff"},
		{"first-4-byte", "\U00010000"},
		{"last-code-point", "\U0010ffff"},
		{"replacement-char", "\ufffd"},
	}
	invalid := []struct{ name, s string }{
		{"overlong-slash-2", "\xc0\xaf"},
		{"overlong-slash-3", "\xe0\x80\xaf"},
		{"overlong-slash-4", "\xf0\x80\x80\xaf"},
		{"surrogate-high", "\xed\xa0\x80"},
		{"surrogate-low", "\xed\xbf\xbf"},
		{"above-max-code-point", "\xf4\x90\x80\x80"},
		{"lone-continuation", "\x80"},
		{"byte-fe", "\xfe"},
		{"byte-ff", "\xff"},
		{"kosme-then-surrogate", "κόσμε\xed\xa0\x80edited"},
		{"truncated-2-byte-at-end", "ab\xce"},
		{"truncated-3-byte-at-end", "ab\xe2\x82"},
	}
	var cs []confCase
	for _, v := range valid {
		p := []byte(v.s)
		cs = append(cs,
			confCase{name: "valid-" + v.name, frames: []frame{text(v.s)}, want: []frame{text(v.s)}, close: stayOpen},
			confCase{name: "valid-" + v.name + "-1-byte-fragments", frames: fragments(ws.OpText, p, 1),
				want: []frame{text(v.s)}, close: stayOpen},
		)
	}
	for _, v := range invalid {
		p := []byte(v.s)
		cs = append(cs,
			confCase{name: "invalid-" + v.name, frames: []frame{text(v.s)}, close: 1007},
			confCase{name: "invalid-" + v.name + "-1-byte-fragments", frames: fragments(ws.OpText, p, 1), close: 1007},
		)
	}
	kosme := []byte("κόσμε")
	cs = append(cs,
		confCase{name: "code-point-split-across-fragments",
			frames: []frame{{op: ws.OpText, payload: kosme[:1]}, {fin: true, op: ws.OpContinuation, payload: kosme[1:]}},
			want:   []frame{text("κόσμε")}, close: stayOpen},
		confCase{name: "code-point-split-across-fragments-1-byte-writes",
			frames: fragments(ws.OpText, kosme, 3), chop: 1, want: []frame{text("κόσμε")}, close: stayOpen},
		confCase{name: "invalid-bytes-in-binary-are-fine", frames: []frame{bin([]byte("\xc0\xaf\xff"))},
			want: []frame{bin([]byte("\xc0\xaf\xff"))}, close: stayOpen},
		// Fail fast (RFC 6455 §8.1): the rest of the message never comes,
		// so a server waiting for it would not answer.
		confCase{name: "fail-fast-invalid-first-fragment",
			frames: []frame{frag(ws.OpText, "κόσμε\xed\xa0\x80")}, close: 1007, within: 3 * time.Second},
		confCase{name: "fail-fast-invalid-start-of-frame",
			raw:   partialFrame(ws.OpText, []byte("ok\xc0\xafmore"), 1000),
			close: 1007, within: 3 * time.Second},
	)
	return cs
}

// partialFrame is the start of a masked, final frame announcing length bytes
// of which only head is sent.
func partialFrame(op ws.OpCode, head []byte, length int64) []byte {
	mask := maskFor(11)
	b := appendClientHeader(nil, true, 0, op, length, mask)
	start := len(b)
	b = append(b, head...)
	ws.Cipher(b[start:], mask, 0)
	return b
}

func closeCases() []confCase {
	cs := []confCase{
		{name: "close-1000-with-reason", frames: []frame{closeFrame(1000, "bye")}, close: 1000},
		{name: "close-empty-payload", frames: []frame{{fin: true, op: ws.OpClose}}, close: 0},
		{name: "close-1-byte-payload", frames: []frame{{fin: true, op: ws.OpClose, payload: []byte{3}}}, close: 1002},
		{name: "close-reason-123-bytes", frames: []frame{closeFrame(1000, string(textPayload(123)))}, close: 1000},
		{name: "close-payload-126-bytes", frames: []frame{closeFrame(1000, string(textPayload(124)))}, close: 1002},
		{name: "close-reason-invalid-utf8",
			frames: []frame{closeFrame(1000, "κόσμε\xed\xa0\x80edited")}, close: 1002},
		{name: "close-1-byte-writes", frames: []frame{closeFrame(1001, "going")}, chop: 1, close: 1001},
		{name: "data-after-close-ignored", frames: []frame{closeFrame(1000, ""), text("ignored")}, close: 1000},
		{name: "ping-after-close-ignored", frames: []frame{closeFrame(1000, ""), ping([]byte("p"))}, close: 1000},
		{name: "message-then-close", frames: []frame{text("last"), closeFrame(1000, "")}, want: []frame{text("last")}, close: 1000},
	}
	for _, code := range []int{0, 999, 1004, 1005, 1006, 1015, 2000, 2999, 5000} {
		cs = append(cs, confCase{name: fmt.Sprintf("invalid-code-%d", code),
			frames: []frame{closeFrame(code, "")}, close: 1002})
	}
	for _, code := range []int{1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 4999} {
		cs = append(cs, confCase{name: fmt.Sprintf("valid-code-%d", code),
			frames: []frame{closeFrame(code, "reason")}, close: code})
	}
	return cs
}

func limitCases() []confCase {
	var cs []confCase
	for _, n := range []int{64 << 10, 1 << 20, 4 << 20, 16 << 20} {
		for _, op := range []ws.OpCode{ws.OpText, ws.OpBinary} {
			name, p := "text", textPayload(n)
			if op == ws.OpBinary {
				name, p = "binary", binPayload(n)
			}
			f := frame{fin: true, op: op, payload: p}
			cs = append(cs, confCase{name: fmt.Sprintf("%s-%dKiB", name, n>>10), frames: []frame{f}, want: []frame{f}, close: stayOpen})
		}
	}
	small := make([]frame, 1000)
	for i := range small {
		small[i] = text(fmt.Sprintf("message %04d", i))
	}
	cs = append(cs,
		confCase{name: "over-16MiB-announced-by-header", raw: header(true, ws.OpBinary, 16<<20+1),
			close: 1009, within: 3 * time.Second},
		confCase{name: "over-16MiB-announced-by-continuation",
			frames: []frame{{op: ws.OpBinary, payload: binPayload(8 << 20)}},
			raw:    header(true, ws.OpContinuation, 8<<20+1), close: 1009, within: 3 * time.Second},
		confCase{name: "1000-small-messages-one-write", frames: small, want: small, close: stayOpen},
		confCase{name: "1000-small-messages-100-byte-writes", frames: small, chop: 100, want: small, close: stayOpen},
	)
	return cs
}

func autoFragmentationCases() []confCase {
	big := binPayload(1 << 20)
	txt := textPayload(64 << 10)
	max := textPayload(16 << 20)
	return []confCase{
		{name: "binary-1MiB-in-1KiB-fragments", frames: fragments(ws.OpBinary, big, 1<<10),
			want: []frame{echoed(ws.OpBinary, big)}, close: stayOpen},
		{name: "text-64KiB-in-64-fragments", frames: fragments(ws.OpText, txt, 1<<10),
			want: []frame{echoed(ws.OpText, txt)}, close: stayOpen},
		{name: "text-4KiB-in-64B-fragments-1-byte-writes", frames: fragments(ws.OpText, txt[:4<<10], 64), chop: 1,
			want: []frame{echoed(ws.OpText, txt[:4<<10])}, close: stayOpen},
		{name: "text-16MiB-in-64KiB-fragments", frames: fragments(ws.OpText, max, 64<<10),
			want: []frame{echoed(ws.OpText, max)}, close: stayOpen},
		{name: "ping-between-many-fragments",
			frames: append(append(fragments(ws.OpBinary, big[:8<<10], 1<<10)[:4:4], ping([]byte("mid"))),
				fragments(ws.OpContinuation, big[4<<10:8<<10], 1<<10)...),
			want: []frame{pong([]byte("mid")), echoed(ws.OpBinary, big[:8<<10])}, close: stayOpen},
	}
}

// TestConformance runs the cases against /echo, grouped by Autobahn
// category.
func TestConformance(t *testing.T) {
	e := startEngine(t, Config{})
	healthy := dialWS(t, e, "/echo")
	categories := []struct {
		name  string
		cases func() []confCase
	}{
		{"1-framing", framingCases},
		{"2-ping-pong", pingCases},
		{"3-reserved-bits", reservedBitsCases},
		{"4-opcodes", opcodeCases},
		{"5-fragmentation", fragmentationCases},
		{"6-utf8", utf8Cases},
		{"7-close", closeCases},
		{"9-limits", limitCases},
		{"10-auto-fragmentation", autoFragmentationCases},
	}
	for _, cat := range categories {
		t.Run(cat.name, func(t *testing.T) {
			for _, tc := range cat.cases() {
				t.Run(tc.name, func(t *testing.T) {
					runConfCase(t, e, tc)
					// The bad client must not have disturbed its neighbour.
					healthy.tb = t
					healthy.echo(ws.OpText, []byte("healthy after "+tc.name))
				})
			}
		})
	}
	healthy.tb = t
	healthy.closeHandshake()
	st := e.Stats()
	t.Logf("upgraded %d, messages in %d, closes by code %v", st.Upgraded, st.MessagesIn, st.Closed)
}

func runConfCase(t *testing.T, e *Engine, tc confCase) {
	c := dialWS(t, e, "/echo")
	b := append(c.encode(tc.frames...), tc.raw...)
	// A server failing the connection may close it while a chopped write
	// is still sending: the write may fail, and bytes arriving after the
	// close make the end of the stream a reset rather than EOF.
	werr := c.writeRaw(b, tc.chop)
	if werr != nil && (tc.close == stayOpen || !isClosedErr(werr)) {
		t.Fatalf("write: %v", werr)
	}
	for _, w := range tc.want {
		c.expectFrame(w)
	}
	if tc.close == stayOpen {
		c.echo(ws.OpText, []byte("still open"))
		c.closeHandshake()
		return
	}
	d := ioTimeout
	if tc.within > 0 {
		d = tc.within
	}
	f, err := c.readFrameTimeout(d)
	if err != nil {
		t.Fatalf("want close %d: %v", tc.close, err)
	}
	c.checkClose(f, tc.close)
	if tc.chop > 0 {
		c.expectEnd()
		return
	}
	c.expectEOF()
}

// The table's own helpers are checked too: a case is only as good as the
// frames it sends.
func TestFragmentsReassemble(t *testing.T) {
	p := binPayload(1000)
	fs := fragments(ws.OpBinary, p, 64)
	var got []byte
	for i, f := range fs {
		if (i == 0) != (f.op == ws.OpBinary) || f.fin != (i == len(fs)-1) {
			t.Fatalf("fragment %d: %v", i, f)
		}
		got = append(got, f.payload...)
	}
	if !bytes.Equal(got, p) || len(fs) != 16 {
		t.Fatalf("got %d fragments, %d bytes", len(fs), len(got))
	}
}
