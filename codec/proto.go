package codec

import (
	"encoding/base64"
	"errors"
	"math/bits"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

// The client protocol of /ws: each text message is one JSON object with an
// "op" field.
//
//	{"op":"sub","topic":T}                subscribe; "after":ID replays history
//	                                      after ID first, "ref":R asks for an ack
//	{"op":"unsub","topic":T}              unsubscribe
//	{"op":"pub","topic":T,"data":V}       publish any JSON value V; optional
//	                                      "ref":R (ack), "key":K (idempotency
//	                                      key), "stored":true (report storage)
//	{"op":"auth","token":S}               authenticate
//
// The server answers with msg, ack, stored and error objects, built by the
// Append functions below.

// MaxKeyBytes is the longest idempotency key a client may send, in bytes.
const MaxKeyBytes = 64

// maxJSONDepth is the deepest nesting of arrays and objects accepted, the
// same limit as encoding/json, so that ValidJSON agrees with json.Valid.
const maxJSONDepth = 10000

// Request parsing errors. ParseRequest returns exactly these values.
var (
	// ErrBadJSON reports input that is not exactly one well-formed JSON
	// value (RFC 8259).
	ErrBadJSON = errors.New("codec: malformed JSON")
	// ErrNotObject reports a well-formed JSON value that is not an object.
	ErrNotObject = errors.New("codec: request is not a JSON object")
	// ErrMissingOp reports a request without "op".
	ErrMissingOp = errors.New("codec: request has no op")
	// ErrUnknownOp reports an op other than sub, unsub, pub and auth;
	// Request.OpName holds the op as sent.
	ErrUnknownOp = errors.New("codec: unknown op")
	// ErrMissingTopic reports a sub, unsub or pub without "topic".
	ErrMissingTopic = errors.New("codec: request has no topic")
	// ErrBadTopic reports a topic that is not a valid name (see ValidTopic).
	ErrBadTopic = errors.New("codec: invalid topic name")
	// ErrMissingData reports a pub without "data".
	ErrMissingData = errors.New("codec: pub has no data")
	// ErrMissingToken reports an auth without "token".
	ErrMissingToken = errors.New("codec: auth has no token")
	// ErrFieldType reports a known field with a value of the wrong JSON
	// type, such as a numeric topic.
	ErrFieldType = errors.New("codec: request field has the wrong type")
	// ErrKeyTooLong reports an idempotency key over MaxKeyBytes.
	ErrKeyTooLong = errors.New("codec: key longer than 64 bytes")
)

// Op is a request's operation.
type Op uint8

// Ops. OpUnknown, the zero value, stands for a missing or unknown op.
const (
	OpUnknown Op = iota
	OpSub
	OpUnsub
	OpPub
	OpAuth
)

// String returns the op's protocol name, or "unknown".
func (o Op) String() string {
	switch o {
	case OpSub:
		return "sub"
	case OpUnsub:
		return "unsub"
	case OpPub:
		return "pub"
	case OpAuth:
		return "auth"
	}
	return "unknown"
}

// Request is one parsed client frame. ParseRequest fills it without
// allocating: its byte slices alias the input, except for a string that
// contained escape sequences, which is unescaped into a scratch buffer the
// Request keeps and reuses. Either way they are valid until the input is
// modified or the Request is reused; copy what you keep.
//
// A field the client left out, or sent as null, is absent: nil, or false
// for the Has flags. "data":null is not absent: Data is then "null".
// Keys are matched exactly (case-sensitive); unknown keys are ignored; when
// a key repeats, the last value wins.
//
// A Request is not safe for concurrent use; keep one per loop.
type Request struct {
	// Op is the operation, OpUnknown when "op" is missing or unknown.
	Op Op
	// OpName is the op string as sent, for error messages.
	OpName []byte
	// Topic is the unescaped "topic" string.
	Topic []byte
	// Ref is the unescaped "ref" string, the client's handle for the
	// server's ack, stored or error reply.
	Ref    []byte
	HasRef bool
	// Key is the unescaped "key" string, the publisher's idempotency key
	// (at most MaxKeyBytes).
	Key    []byte
	HasKey bool
	// Data is the "data" value exactly as sent: any well-formed JSON value,
	// without the whitespace around it.
	Data []byte
	// After is the unescaped "after" string, the id a sub replays history
	// after.
	After    []byte
	HasAfter bool
	// Stored is "stored":true: the publisher wants a stored reply once the
	// message is in the store.
	Stored bool
	// Token is the unescaped "token" string of an auth.
	Token []byte

	scratch []byte // unescaped strings; reused across Resets
}

// Reset clears r for reuse, keeping its scratch buffer.
func (r *Request) Reset() {
	*r = Request{scratch: r.scratch[:0]}
}

// Request fields, as bits of the set of fields whose value had the wrong
// type.
const (
	fieldNone uint8 = iota
	fieldOp
	fieldTopic
	fieldRef
	fieldKey
	fieldData
	fieldAfter
	fieldStored
	fieldToken
)

func fieldOf(key []byte) uint8 {
	// A switch on string(key) compiles to comparisons, without allocating.
	switch string(key) {
	case "op":
		return fieldOp
	case "topic":
		return fieldTopic
	case "ref":
		return fieldRef
	case "key":
		return fieldKey
	case "data":
		return fieldData
	case "after":
		return fieldAfter
	case "stored":
		return fieldStored
	case "token":
		return fieldToken
	}
	return fieldNone
}

func opOf(name []byte) Op {
	switch string(name) {
	case "sub":
		return OpSub
	case "unsub":
		return OpUnsub
	case "pub":
		return OpPub
	case "auth":
		return OpAuth
	}
	return OpUnknown
}

// ParseRequest parses the client frame b, which must be exactly one JSON
// object (whitespace around it allowed) in valid UTF-8 (the frame layer
// checks it), into r. It resets r first and does not allocate, except to
// grow r's scratch buffer for escaped strings.
//
// Errors are checked in this order: ErrBadJSON or ErrNotObject; then
// ErrFieldType and ErrKeyTooLong; then ErrMissingOp, ErrUnknownOp; then the
// op's required fields (ErrMissingTopic, ErrBadTopic, ErrMissingData,
// ErrMissingToken). After any error but the first two, r holds what was
// parsed, notably Ref for the error reply.
func ParseRequest(b []byte, r *Request) error {
	r.Reset()
	i := skipSpace(b, 0)
	if i == len(b) {
		return ErrBadJSON
	}
	if b[i] != '{' {
		if end := skipValue(b, i, 0); end >= 0 && skipSpace(b, end) == len(b) {
			return ErrNotObject
		}
		return ErrBadJSON
	}

	// Type errors are recorded per field rather than returned at once, so
	// that a later value of the same key overrides them (last wins) and
	// malformed JSON further on is reported as such.
	var badType uint16
	keyTooLong := false

	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		i++
	} else {
		for {
			if i >= len(b) || b[i] != '"' {
				return ErrBadJSON
			}
			kEnd, kEsc := scanString(b, i)
			if kEnd < 0 {
				return ErrBadJSON
			}
			var field uint8
			if kEsc {
				// Rare ({"\u006fp":...}): unescape into scratch, then
				// give the space back.
				mark := len(r.scratch)
				r.scratch = appendUnescaped(r.scratch, b[i+1:kEnd-1])
				field = fieldOf(r.scratch[mark:])
				r.scratch = r.scratch[:mark]
			} else {
				field = fieldOf(b[i+1 : kEnd-1])
			}
			i = skipSpace(b, kEnd)
			if i >= len(b) || b[i] != ':' {
				return ErrBadJSON
			}
			i = skipSpace(b, i+1)
			if i >= len(b) {
				return ErrBadJSON
			}

			start := i
			var str []byte // the unescaped string, if the value is one
			isStr := b[i] == '"'
			if isStr {
				end, esc := scanString(b, i)
				if end < 0 {
					return ErrBadJSON
				}
				i = end
				if field != fieldNone && field != fieldData {
					str = r.unescape(b[start+1:end-1], esc)
				}
			} else if i = skipValue(b, i, 1); i < 0 {
				return ErrBadJSON
			}
			val := b[start:i]
			isNull := len(val) == 4 && string(val) == "null"

			bit := uint16(1) << field
			switch {
			case field == fieldNone:
			case field == fieldData:
				r.Data = val
			case isNull:
				badType &^= bit
				r.clear(field)
				if field == fieldKey {
					keyTooLong = false
				}
			case field == fieldStored:
				switch string(val) {
				case "true":
					r.Stored = true
					badType &^= bit
				case "false":
					r.Stored = false
					badType &^= bit
				default:
					r.Stored = false
					badType |= bit
				}
			case !isStr:
				badType |= bit
				r.clear(field)
				if field == fieldKey {
					keyTooLong = false
				}
			default:
				badType &^= bit
				switch field {
				case fieldOp:
					r.OpName, r.Op = str, opOf(str)
				case fieldTopic:
					r.Topic = str
				case fieldRef:
					r.Ref, r.HasRef = str, true
				case fieldKey:
					r.Key, r.HasKey = str, true
					keyTooLong = len(str) > MaxKeyBytes
				case fieldAfter:
					r.After, r.HasAfter = str, true
				case fieldToken:
					r.Token = str
				}
			}

			i = skipSpace(b, i)
			if i >= len(b) {
				return ErrBadJSON
			}
			if b[i] == '}' {
				i++
				break
			}
			if b[i] != ',' {
				return ErrBadJSON
			}
			i = skipSpace(b, i+1)
		}
	}
	if skipSpace(b, i) != len(b) {
		return ErrBadJSON
	}

	switch {
	case badType != 0:
		return ErrFieldType
	case keyTooLong:
		return ErrKeyTooLong
	case r.OpName == nil:
		return ErrMissingOp
	}
	switch r.Op {
	case OpSub, OpUnsub, OpPub:
		if r.Topic == nil {
			return ErrMissingTopic
		}
		if !ValidTopic(r.Topic) {
			return ErrBadTopic
		}
		if r.Op == OpPub && r.Data == nil {
			return ErrMissingData
		}
	case OpAuth:
		if r.Token == nil {
			return ErrMissingToken
		}
	default:
		return ErrUnknownOp
	}
	return nil
}

// unescape returns the contents s of a JSON string, unescaped into r's
// scratch buffer if esc says it has escape sequences, else s itself.
// The result is never nil: an empty string is present, not absent.
func (r *Request) unescape(s []byte, esc bool) []byte {
	if !esc {
		return s
	}
	// Earlier results may point into the old array if append moves it;
	// that is fine, they stay valid there.
	mark := len(r.scratch)
	r.scratch = appendUnescaped(r.scratch, s)
	return r.scratch[mark:len(r.scratch):len(r.scratch)]
}

// clear makes field absent.
func (r *Request) clear(field uint8) {
	switch field {
	case fieldOp:
		r.OpName, r.Op = nil, OpUnknown
	case fieldTopic:
		r.Topic = nil
	case fieldRef:
		r.Ref, r.HasRef = nil, false
	case fieldKey:
		r.Key, r.HasKey = nil, false
	case fieldAfter:
		r.After, r.HasAfter = nil, false
	case fieldStored:
		r.Stored = false
	case fieldToken:
		r.Token = nil
	}
}

// ValidJSON reports whether b is exactly one well-formed JSON value (RFC
// 8259), with optional whitespace around it, in valid UTF-8. It accepts what
// encoding/json.Valid accepts (including its nesting limit of 10000) for
// UTF-8 input, and rejects invalid UTF-8, which json.Valid lets through:
// JSON data is sent on to text frames, which must be UTF-8.
func ValidJSON(b []byte) bool {
	i := skipSpace(b, 0)
	if i == len(b) {
		return false
	}
	if i = skipValue(b, i, 0); i < 0 || skipSpace(b, i) != len(b) {
		return false
	}
	return utf8.Valid(b)
}

// skipSpace returns the index of the first non-whitespace byte at or after
// b[i], or len(b).
func skipSpace(b []byte, i int) int {
	for ; i < len(b); i++ {
		switch b[i] {
		case ' ', '\t', '\n', '\r':
		default:
			return i
		}
	}
	return i
}

// skipValue returns the index just after the JSON value that starts at
// b[i], or -1 if there is no well-formed value there. depth is the number of
// arrays and objects around the value, for the nesting limit.
//
// It is iterative, not recursive: nesting costs one bit per level, in an
// inline array for the first 256 levels (no allocation) and on the heap
// beyond.
func skipValue(b []byte, i, depth int) int {
	var inline [4]uint64
	isObj := inline[:] // bit n: container n (0 outermost) is an object
	n := 0             // open containers
	for {
		// Here a value must start at b[i].
		if i >= len(b) {
			return -1
		}
		switch c := b[i]; c {
		case '{', '[':
			if depth+n >= maxJSONDepth {
				return -1
			}
			if n/64 == len(isObj) {
				isObj = append(isObj, 0)
			}
			if c == '{' {
				isObj[n/64] |= 1 << (n % 64)
			} else {
				isObj[n/64] &^= 1 << (n % 64)
			}
			n++
			if i = skipSpace(b, i+1); i >= len(b) {
				return -1
			}
			if c == '{' && b[i] == '}' || c == '[' && b[i] == ']' {
				i++
				n--
				break // an empty container is a complete value
			}
			if c == '{' {
				if i = skipMember(b, i); i < 0 {
					return -1
				}
			}
			continue
		case '"':
			i, _ = scanString(b, i)
		case 't':
			i = skipLiteral(b, i, "true")
		case 'f':
			i = skipLiteral(b, i, "false")
		case 'n':
			i = skipLiteral(b, i, "null")
		default:
			i = skipNumber(b, i)
		}
		if i < 0 {
			return -1
		}

		// After a value: close containers until one has a next element.
		for {
			if n == 0 {
				return i
			}
			if i = skipSpace(b, i); i >= len(b) {
				return -1
			}
			obj := isObj[(n-1)/64]>>((n-1)%64)&1 != 0
			if b[i] == ',' {
				i = skipSpace(b, i+1)
				if obj {
					if i = skipMember(b, i); i < 0 {
						return -1
					}
				}
				break
			}
			if obj && b[i] == '}' || !obj && b[i] == ']' {
				i++
				n--
				continue
			}
			return -1
		}
	}
}

// skipMember skips an object member's name and colon at b[i] and returns
// the index of its value, or -1.
func skipMember(b []byte, i int) int {
	if i >= len(b) || b[i] != '"' {
		return -1
	}
	if i, _ = scanString(b, i); i < 0 {
		return -1
	}
	if i = skipSpace(b, i); i >= len(b) || b[i] != ':' {
		return -1
	}
	return skipSpace(b, i+1)
}

// skipLiteral returns the index after lit at b[i], or -1.
func skipLiteral(b []byte, i int, lit string) int {
	if len(b)-i < len(lit) || string(b[i:i+len(lit)]) != lit {
		return -1
	}
	return i + len(lit)
}

// skipNumber returns the index after the number at b[i], or -1. Grammar
// (RFC 8259 §6): -? (0 | [1-9][0-9]*) (\.[0-9]+)? ([eE][+-]?[0-9]+)?
func skipNumber(b []byte, i int) int {
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i >= len(b):
		return -1
	case b[i] == '0':
		i++
	case '1' <= b[i] && b[i] <= '9':
		i = skipDigits(b, i+1)
	default:
		return -1
	}
	if i < len(b) && b[i] == '.' {
		j := skipDigits(b, i+1)
		if j == i+1 {
			return -1
		}
		i = j
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		j := skipDigits(b, i)
		if j == i {
			return -1
		}
		i = j
	}
	return i
}

func skipDigits(b []byte, i int) int {
	for i < len(b) && '0' <= b[i] && b[i] <= '9' {
		i++
	}
	return i
}

// scanString returns the index after the JSON string that starts with the
// quote at b[i], and whether it contains escape sequences; end is -1 if the
// string is malformed: unterminated, a bad escape, or a raw control
// character (RFC 8259 §7). Bytes of 0x80 and above are not checked here.
func scanString(b []byte, i int) (end int, esc bool) {
	for j := i + 1; j < len(b); {
		if j+8 <= len(b) {
			m := stopMask(load64(b, j), false)
			if m == 0 {
				j += 8 // eight plain bytes
				continue
			}
			j += firstFlagged(m)
		}
		switch c := b[j]; {
		case c == '"':
			return j + 1, esc
		case c == '\\':
			esc = true
			if j+1 >= len(b) {
				return -1, false
			}
			switch b[j+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				j += 2
			case 'u':
				if j+6 > len(b) || hex4(b[j+2:j+6]) < 0 {
					return -1, false
				}
				j += 6
			default:
				return -1, false
			}
		case c < 0x20:
			return -1, false
		default:
			j++
		}
	}
	return -1, false
}

// hex4 returns the value of the four hex digits in h, or -1.
func hex4(h []byte) rune {
	var r rune
	for _, c := range h[:4] {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c -= 'a' - 10
		case 'A' <= c && c <= 'F':
			c -= 'A' - 10
		default:
			return -1
		}
		r = r<<4 | rune(c)
	}
	return r
}

// appendUnescaped appends the unescaped contents s of a JSON string that
// scanString accepted. Like encoding/json, a \u escape of a surrogate that
// is not half of a valid pair becomes U+FFFD.
func appendUnescaped(dst, s []byte) []byte {
	for i := 0; i < len(s); {
		if s[i] != '\\' {
			j := i + 1
			for j < len(s) && s[j] != '\\' {
				j++
			}
			dst = append(dst, s[i:j]...)
			i = j
			continue
		}
		c := s[i+1]
		i += 2
		switch c {
		case 'b':
			dst = append(dst, '\b')
		case 'f':
			dst = append(dst, '\f')
		case 'n':
			dst = append(dst, '\n')
		case 'r':
			dst = append(dst, '\r')
		case 't':
			dst = append(dst, '\t')
		case 'u':
			r := hex4(s[i : i+4])
			i += 4
			if utf16.IsSurrogate(r) {
				r2 := rune(-1)
				if i+6 <= len(s) && s[i] == '\\' && s[i+1] == 'u' {
					r2 = hex4(s[i+2 : i+6])
				}
				if d := utf16.DecodeRune(r, r2); d != utf8.RuneError {
					r = d
					i += 6
				} else {
					r = utf8.RuneError
				}
			}
			dst = utf8.AppendRune(dst, r)
		default: // '"', '\\', '/'
			dst = append(dst, c)
		}
	}
	return dst
}

// AppendJSONString appends s to dst as a JSON string and returns the
// extended buffer. It escapes '"', '\\' and control characters and keeps
// valid UTF-8 as is; each byte of invalid UTF-8 becomes \ufffd, so the output
// is always valid UTF-8 and valid JSON. HTML characters (<, >, &) are not
// escaped.
func AppendJSONString(dst []byte, s []byte) []byte {
	return appendJSONString(dst, s)
}

func appendJSONString[T string | []byte](dst []byte, s T) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	start := 0 // s[start:i] is pending, to be copied as is
	for i := 0; i < len(s); {
		if i+8 <= len(s) {
			m := stopMask(load64(s, i), true)
			if m == 0 {
				i += 8 // eight bytes to copy as they are
				continue
			}
			i += firstFlagged(m)
		}
		c := s[i]
		if c >= utf8.RuneSelf {
			if n := utf8Len(s, i); n > 0 {
				i += n
				continue
			}
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i++
			start = i
			continue
		}
		if c >= 0x20 && c != '"' && c != '\\' {
			i++
			continue
		}
		dst = append(dst, s[start:i]...)
		switch c {
		case '"', '\\':
			dst = append(dst, '\\', c)
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		default:
			dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		}
		i++
		start = i
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// Word-at-a-time scanning: strings are mostly bytes that need no attention,
// so look at eight at once and only go byte by byte near the others.
// The bit tricks are from "Bit Twiddling Hacks" (Sean Eron Anderson),
// "Determine if a word has a zero byte" and "has a byte less than n".
const (
	ones  = 0x0101010101010101
	highs = 0x8080808080808080
)

// load64 returns s[i:i+8] as a little-endian word. The compiler merges the
// byte loads into one for both strings and byte slices.
func load64[T string | []byte](s T, i int) uint64 {
	w := s[i : i+8]
	return uint64(w[0]) | uint64(w[1])<<8 | uint64(w[2])<<16 | uint64(w[3])<<24 |
		uint64(w[4])<<32 | uint64(w[5])<<40 | uint64(w[6])<<48 | uint64(w[7])<<56
}

// stopMask flags, in the high bit of each byte, the bytes of w that are '"',
// '\\' or a control character, or, if high, 0x80 or above; it is 0 if there
// are none. Each term flags exactly the matching bytes up to the first match
// (a borrow only starts at a matching byte and only moves up), so the lowest
// flag is exact even when higher ones are not: see firstFlagged.
//
// Callers branch on m == 0 before using firstFlagged, so the common path
// advances by a constant and the next load does not wait for this one.
func stopMask(w uint64, high bool) uint64 {
	quote := w ^ (ones * '"')
	backslash := w ^ (ones * '\\')
	t := (quote-ones)&^quote | (backslash-ones)&^backslash | (w-ones*0x20)&^w
	if high {
		t |= w
	}
	return t & highs
}

// firstFlagged returns the index (0 for the low byte) of the first byte
// flagged in a stopMask result, 8 if none is.
func firstFlagged(m uint64) int { return bits.TrailingZeros64(m) >> 3 }

// utf8Len returns the length of the valid UTF-8 sequence starting with the
// non-ASCII byte s[i], or 0 if there is none (the table in RFC 3629 §4).
// It works on strings and byte slices alike, where unicode/utf8 needs two
// functions.
func utf8Len[T string | []byte](s T, i int) int {
	c := s[i]
	var n int
	lo, hi := byte(0x80), byte(0xbf) // range of the second byte
	switch {
	case 0xc2 <= c && c <= 0xdf:
		n = 2
	case c == 0xe0:
		n, lo = 3, 0xa0
	case c == 0xed:
		n, hi = 3, 0x9f
	case 0xe1 <= c && c <= 0xef:
		n = 3
	case c == 0xf0:
		n, lo = 4, 0x90
	case 0xf1 <= c && c <= 0xf3:
		n = 4
	case c == 0xf4:
		n, hi = 4, 0x8f
	default:
		return 0
	}
	if len(s)-i < n || s[i+1] < lo || s[i+1] > hi {
		return 0
	}
	for j := i + 2; j < i+n; j++ {
		if s[j] < 0x80 || s[j] > 0xbf {
			return 0
		}
	}
	return n
}

// AppendMsgJSON appends m as the msg object /ws subscribers receive:
//
//	{"op":"msg","topic":T,"id":ID,"ts":TS,"data":DATA}
//
// with ,"from":F before the closing brace when m.From is set. DATA is m.Data
// as is for KindJSON (which must hold one valid JSON value; empty Data is
// written as null), a JSON string for KindText, and for KindBinary (and any
// unknown kind) a standard-base64 JSON string followed by ,"enc":"base64".
func AppendMsgJSON(dst []byte, m *Message) []byte {
	dst = append(dst, `{"op":"msg","topic":`...)
	dst = appendJSONString(dst, m.Topic)
	dst = append(dst, `,"id":`...)
	dst = appendJSONString(dst, m.ID)
	dst = append(dst, `,"ts":`...)
	dst = strconv.AppendInt(dst, m.TS, 10)
	dst = append(dst, `,"data":`...)
	switch m.Kind {
	case KindJSON:
		if len(m.Data) == 0 {
			dst = append(dst, "null"...)
		} else {
			dst = append(dst, m.Data...)
		}
	case KindText:
		dst = appendJSONString(dst, m.Data)
	default:
		dst = append(dst, '"')
		dst = base64.StdEncoding.AppendEncode(dst, m.Data)
		dst = append(dst, `","enc":"base64"`...)
	}
	if m.From != "" {
		dst = append(dst, `,"from":`...)
		dst = appendJSONString(dst, m.From)
	}
	return append(dst, '}')
}

// appendRef appends ,"ref":R, or nothing when ref is nil.
func appendRef(dst, ref []byte) []byte {
	if ref == nil {
		return dst
	}
	dst = append(dst, `,"ref":`...)
	return appendJSONString(dst, ref)
}

// AppendAck appends the reply to a request that carried a ref:
// {"op":"ack","ref":R}, and for a pub, whose message got id at time ts,
// {"op":"ack","ref":R,"id":ID,"ts":TS}. Pass id "" for no id. The ref
// member is left out when ref is nil.
func AppendAck(dst, ref []byte, id string, ts int64) []byte {
	dst = append(dst, `{"op":"ack"`...)
	dst = appendRef(dst, ref)
	if id != "" {
		dst = append(dst, `,"id":`...)
		dst = appendJSONString(dst, id)
		dst = append(dst, `,"ts":`...)
		dst = strconv.AppendInt(dst, ts, 10)
	}
	return append(dst, '}')
}

// AppendStored appends {"op":"stored","ref":R,"id":ID}, the reply to a pub
// with "stored":true once message id is in the store. The ref member is
// left out when ref is nil.
func AppendStored(dst, ref []byte, id string) []byte {
	dst = append(dst, `{"op":"stored"`...)
	dst = appendRef(dst, ref)
	dst = append(dst, `,"id":`...)
	dst = appendJSONString(dst, id)
	return append(dst, '}')
}

// AppendError appends {"op":"error","ref":R,"code":C,"message":M}. The ref
// member is left out when ref is nil.
func AppendError(dst, ref []byte, code int, msg string) []byte {
	dst = append(dst, `{"op":"error"`...)
	dst = appendRef(dst, ref)
	dst = append(dst, `,"code":`...)
	dst = strconv.AppendInt(dst, int64(code), 10)
	dst = append(dst, `,"message":`...)
	dst = appendJSONString(dst, msg)
	return append(dst, '}')
}

// AppendSubAck appends {"op":"ack","ref":R,"recovered":B}, the answer to a
// sub with "after": recovered is false when the server cannot vouch that
// every message after the client's id was replayed.
func AppendSubAck(dst, ref []byte, recovered bool) []byte {
	dst = append(dst, `{"op":"ack"`...)
	dst = appendRef(dst, ref)
	dst = append(dst, `,"recovered":`...)
	dst = strconv.AppendBool(dst, recovered)
	return append(dst, '}')
}
