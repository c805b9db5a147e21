package codec

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"
)

// utf8Cases are the edges of UTF-8 (RFC 3629 §4) and the Autobahn 6.x
// sequences. The reader and fuzz tests use them too.
var utf8Cases = []struct {
	name  string
	in    string
	valid bool
}{
	{name: "empty", in: "", valid: true},
	{name: "ascii", in: "Hello-UTF-8!!", valid: true},
	{name: "autobahn 6.1", in: "Hello-µ@ßöäüàá-UTF-8!!", valid: true},
	{name: "kosme", in: "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5", valid: true},
	{name: "U+0000", in: "\x00", valid: true},
	{name: "U+007F", in: "\x7f", valid: true},
	{name: "U+0080", in: "\xc2\x80", valid: true},
	{name: "U+07FF", in: "\xdf\xbf", valid: true},
	{name: "U+0800", in: "\xe0\xa0\x80", valid: true},
	{name: "U+D7FF", in: "\xed\x9f\xbf", valid: true},
	{name: "U+E000", in: "\xee\x80\x80", valid: true},
	{name: "U+FFFD", in: "\xef\xbf\xbd", valid: true},
	{name: "U+FFFF", in: "\xef\xbf\xbf", valid: true},
	{name: "U+10000", in: "\xf0\x90\x80\x80", valid: true},
	{name: "U+10FFFF", in: "\xf4\x8f\xbf\xbf", valid: true},
	{name: "multibyte around eight-byte ascii runs", in: "abcdefgh\xe2\x82\xacabcdefghijklmnop\xf0\x9d\x84\x9eabcdefg\xc3\xa9", valid: true},
	{name: "lone continuation 0x80", in: "\x80", valid: false},
	{name: "lone continuation 0xbf", in: "a\xbf", valid: false},
	{name: "overlong NUL", in: "\xc0\x80", valid: false},
	{name: "overlong two bytes", in: "\xc1\xbf", valid: false},
	{name: "overlong three bytes", in: "\xe0\x80\x80", valid: false},
	{name: "overlong three bytes, largest", in: "\xe0\x9f\xbf", valid: false},
	{name: "overlong four bytes", in: "\xf0\x80\x80\x80", valid: false},
	{name: "overlong four bytes, largest", in: "\xf0\x8f\xbf\xbf", valid: false},
	{name: "surrogate U+D800", in: "\xed\xa0\x80", valid: false},
	{name: "surrogate U+DFFF", in: "\xed\xbf\xbf", valid: false},
	{name: "surrogate pair", in: "\xed\xa0\x80\xed\xb0\x80", valid: false},
	{name: "U+110000", in: "\xf4\x90\x80\x80", valid: false},
	{name: "lead 0xf5", in: "\xf5\x80\x80\x80", valid: false},
	{name: "lead 0xf7", in: "\xf7\xbf\xbf\xbf", valid: false},
	{name: "five bytes", in: "\xf8\x88\x80\x80\x80", valid: false},
	{name: "six bytes", in: "\xfc\x84\x80\x80\x80\x80", valid: false},
	{name: "0xfe", in: "\xfe", valid: false},
	{name: "0xff", in: "ab\xff", valid: false},
	{name: "truncated two bytes", in: "\xc3", valid: false},
	{name: "truncated three bytes", in: "a\xe2\x82", valid: false},
	{name: "truncated four bytes", in: "\xf0\x9d\x84", valid: false},
	{name: "lead after lead", in: "\xc3\xc3\xa9", valid: false},
	{name: "ascii where a continuation belongs", in: "\xe2\x28\xa1", valid: false},
	{name: "invalid after an ascii run", in: "helloworld\xc0\xafworld", valid: false},
	{name: "autobahn 6.3.1", in: "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\x65\x64\x69\x74\x65\x64", valid: false},
}

// utf8Completions finish any valid but incomplete sequence: each second
// byte range of RFC 3629 holds 0x80, 0x90 or 0xa0, later bytes 0x80.
var utf8Completions = func() [][]byte {
	var out [][]byte
	cont := []byte{0x80, 0x90, 0xa0}
	for _, a := range cont {
		out = append(out, []byte{a})
		for _, b := range cont {
			out = append(out, []byte{a, b})
			for _, c := range cont {
				out = append(out, []byte{a, b, c})
			}
		}
	}
	return out
}()

// utf8ValidPrefix reports whether p can be continued into valid UTF-8:
// the reference for UTF8.Write failing fast. Only the rune p ends in can be
// incomplete, so it tries completions of the last one to three bytes.
func utf8ValidPrefix(p []byte) bool {
	if utf8.Valid(p) {
		return true
	}
	for k := 1; k <= 3 && k <= len(p); k++ {
		tail := p[len(p)-k:]
		if !utf8.RuneStart(tail[0]) || !utf8.Valid(p[:len(p)-k]) {
			continue
		}
		for _, c := range utf8Completions {
			if utf8.Valid(append(tail[:k:k], c...)) {
				return true
			}
		}
	}
	return false
}

// checkUTF8Chunks writes chunks to a UTF8 and checks each answer against
// the reference, and Done against utf8.Valid of the whole.
func checkUTF8Chunks(t testing.TB, chunks ...[]byte) {
	t.Helper()
	var u UTF8
	var all []byte
	ok := true
	for _, c := range chunks {
		all = append(all, c...)
		got := u.Write(c)
		want := ok && utf8ValidPrefix(all)
		if got != want {
			t.Fatalf("Write after % x = %t, want %t (chunks % x)", all, got, want, chunks)
		}
		ok = got
	}
	if got, want := u.Done(), utf8.Valid(all); got != want {
		t.Fatalf("Done after % x = %t, utf8.Valid = %t (chunks % x)", all, got, want, chunks)
	}
}

func TestUTF8Cases(t *testing.T) {
	for _, tc := range utf8Cases {
		t.Run(tc.name, func(t *testing.T) {
			in := []byte(tc.in)
			if utf8.Valid(in) != tc.valid {
				t.Fatalf("table says valid = %t, utf8.Valid disagrees", tc.valid)
			}
			if ValidUTF8(in) != tc.valid {
				t.Fatalf("ValidUTF8 = %t, want %t", !tc.valid, tc.valid)
			}
			checkUTF8Chunks(t, in)
			for i := range len(in) + 1 {
				checkUTF8Chunks(t, in[:i], in[i:])
			}
			var bytewise [][]byte
			for i := range in {
				bytewise = append(bytewise, in[i:i+1])
			}
			checkUTF8Chunks(t, bytewise...)
			// Behind an ASCII run the fast path reaches the sequence.
			pre := []byte(strings.Repeat("a", 13))
			checkUTF8Chunks(t, pre, in, pre)
			checkUTF8Chunks(t, append(append(pre, in...), pre...))
		})
	}
}

func TestUTF8FailsFast(t *testing.T) {
	var u UTF8
	if !u.Write([]byte("ok \xe2")) {
		t.Fatal("Write of a valid prefix = false")
	}
	if u.Done() {
		t.Fatal("Done inside a code point")
	}
	if u.Write([]byte{0x28}) {
		t.Fatal("Write accepted ASCII inside a code point")
	}
	if u.Write([]byte("valid again")) || u.Done() {
		t.Fatal("UTF8 recovered from an error")
	}
	u.Reset()
	if !u.Write([]byte("€")) || !u.Done() {
		t.Fatal("Reset did not clear the error")
	}
}

func TestUTF8MatchesStdlib(t *testing.T) {
	rng := newTestRand(20)
	// Bytes that matter to the decoder: every lead and continuation range
	// edge, mixed with ASCII so that the eight-byte fast path kicks in.
	edges := []byte{0x00, 'a', 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xc1, 0xc2, 0xdf, 0xe0, 0xe1, 0xec, 0xed, 0xee, 0xef, 0xf0, 0xf1, 0xf3, 0xf4, 0xf5, 0xff}
	gens := map[string]func(n int) []byte{
		"random bytes": func(n int) []byte { return randomBytes(rng, n) },
		"valid text":   func(n int) []byte { return textOf(rng, n) },
		"edge bytes": func(n int) []byte {
			b := make([]byte, n)
			for i := range b {
				b[i] = edges[rng.IntN(len(edges))]
			}
			return b
		},
		"text with one flipped byte": func(n int) []byte {
			b := textOf(rng, n+1)
			b[rng.IntN(len(b))] = edges[rng.IntN(len(edges))]
			return b
		},
		"text with ascii runs": func(n int) []byte {
			var b []byte
			for len(b) < n {
				b = append(b, strings.Repeat("x", rng.IntN(20))...)
				b = append(b, textOf(rng, 1+rng.IntN(4))...)
			}
			return b
		},
	}
	for name, gen := range gens {
		t.Run(name, func(t *testing.T) {
			for range 2000 {
				in := gen(rng.IntN(40))
				cuts := []int{0}
				for range rng.IntN(4) {
					cuts = append(cuts, rng.IntN(len(in)+1))
				}
				cuts = append(cuts, len(in))
				slices.Sort(cuts)
				var chunks [][]byte
				for i := 1; i < len(cuts); i++ {
					chunks = append(chunks, in[cuts[i-1]:cuts[i]])
				}
				checkUTF8Chunks(t, chunks...)
			}
		})
	}
}

// TestUTF8AllShortSequences checks every two-byte sequence, and every
// sequence of three and four bytes that starts with a non-ASCII lead byte
// and continues with any second byte and edge bytes after it.
func TestUTF8AllShortSequences(t *testing.T) {
	edges := []byte{0x00, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xff}
	check := func(p []byte) {
		var u UTF8
		if got, want := u.Write(p) && u.Done(), utf8.Valid(p); got != want {
			t.Fatalf("% x: UTF8 = %t, utf8.Valid = %t", p, got, want)
		}
	}
	for x := range 1 << 16 {
		check([]byte{byte(x >> 8), byte(x)})
	}
	for lead := 0xc0; lead <= 0xff; lead++ {
		for second := range 256 {
			for _, c := range edges {
				check([]byte{byte(lead), byte(second), c})
				for _, d := range edges {
					check([]byte{byte(lead), byte(second), c, d})
				}
			}
		}
	}
}

// benchTexts are chat-like ASCII (JSON) and multibyte text of 64 KiB or more.
var benchTexts = map[string][]byte{
	"ascii": bytes.Repeat([]byte(`{"op":"pub","topic":"room.general","data":"hello, world"} `), 1200),
	"mixed": bytes.Repeat([]byte("Hello κόσμε, こんにちは世界 😀 ça va? "), 2000),
}

func BenchmarkUTF8Write(b *testing.B) {
	for _, name := range []string{"ascii", "mixed"} {
		for _, size := range benchSizes {
			p := benchTexts[name][:size]
			for !utf8.Valid(p) {
				p = p[:len(p)-1]
			}
			b.Run(fmt.Sprintf("%s/%d", name, size), func(b *testing.B) {
				b.ReportAllocs()
				b.SetBytes(int64(len(p)))
				var u UTF8
				for b.Loop() {
					u.Reset()
					if !u.Write(p) || !u.Done() {
						b.Fatal("invalid")
					}
				}
			})
		}
	}
}

// BenchmarkValidUTF8 is the standard library on the same texts, for
// comparison with BenchmarkUTF8Write.
func BenchmarkValidUTF8(b *testing.B) {
	for _, name := range []string{"ascii", "mixed"} {
		for _, size := range benchSizes {
			p := benchTexts[name][:size]
			for !utf8.Valid(p) {
				p = p[:len(p)-1]
			}
			b.Run(fmt.Sprintf("%s/%d", name, size), func(b *testing.B) {
				b.ReportAllocs()
				b.SetBytes(int64(len(p)))
				for b.Loop() {
					if !ValidUTF8(p) {
						b.Fatal("invalid")
					}
				}
			})
		}
	}
}
