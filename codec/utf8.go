package codec

import (
	"encoding/binary"
	"unicode/utf8"
)

// UTF8 validates UTF-8 incrementally, for text messages that arrive in
// pieces: a code point may be split across frames or reads. It fails on the
// first byte that cannot start or continue a valid sequence (RFC 6455 §8.1
// asks endpoints to fail fast), not only at the end of the message.
// The zero value is ready to use.
type UTF8 struct {
	need   uint8 // continuation bytes still expected
	lo, hi uint8 // valid range of the next continuation byte
	bad    bool
}

// Reset prepares u for a new message.
func (u *UTF8) Reset() { *u = UTF8{} }

// Write checks the next bytes of the text. It returns false once the text
// so far cannot be valid UTF-8, whatever follows.
func (u *UTF8) Write(p []byte) bool {
	if u.bad {
		return false
	}
	need, lo, hi := u.need, u.lo, u.hi
	i := 0
	for i < len(p) {
		if need == 0 {
			// ASCII fast path, eight bytes at a time.
			for i+8 <= len(p) && binary.LittleEndian.Uint64(p[i:])&0x8080808080808080 == 0 {
				i += 8
			}
			if i >= len(p) {
				break
			}
			c := p[i]
			i++
			switch {
			case c < 0x80:
				continue
			case c >= 0xc2 && c <= 0xdf:
				need, lo, hi = 1, 0x80, 0xbf
			case c == 0xe0:
				need, lo, hi = 2, 0xa0, 0xbf // no overlong forms
			case c == 0xed:
				need, lo, hi = 2, 0x80, 0x9f // no surrogates
			case c >= 0xe1 && c <= 0xef:
				need, lo, hi = 2, 0x80, 0xbf
			case c == 0xf0:
				need, lo, hi = 3, 0x90, 0xbf // no overlong forms
			case c >= 0xf1 && c <= 0xf3:
				need, lo, hi = 3, 0x80, 0xbf
			case c == 0xf4:
				need, lo, hi = 3, 0x80, 0x8f // nothing above U+10FFFF
			default:
				u.bad = true
				return false
			}
			continue
		}
		c := p[i]
		i++
		if c < lo || c > hi {
			u.bad = true
			return false
		}
		need, lo, hi = need-1, 0x80, 0xbf
	}
	u.need, u.lo, u.hi = need, lo, hi
	return true
}

// Done reports whether everything written so far is complete, valid UTF-8.
func (u *UTF8) Done() bool { return !u.bad && u.need == 0 }

// ValidUTF8 reports whether p is entirely valid UTF-8.
func ValidUTF8(p []byte) bool { return utf8.Valid(p) }
