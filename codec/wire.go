package codec

import (
	"encoding/binary"
	"errors"
)

// WireVersion is the version byte that AppendMessage writes first.
const WireVersion = 1

// Wire decoding errors.
var (
	// ErrBadWire reports a truncated or otherwise malformed binary message.
	ErrBadWire = errors.New("codec: malformed message")
	// ErrWireVersion reports a binary message of a version this build does
	// not know (written by a newer node).
	ErrWireVersion = errors.New("codec: unsupported message version")
)

// AppendMessage appends the binary wire form of m to dst and returns the
// extended buffer. The wire form is what pub/sub, the queue and the embedded
// store carry:
//
//	version byte (WireVersion)
//	kind    byte
//	ts      varint (zig-zag)
//	ID, Topic, Key, From, Data: each a uvarint length, then the bytes
//
// It does not validate m: any Message round-trips through DecodeMessage as
// long as its Kind is a known one.
func AppendMessage(dst []byte, m *Message) []byte {
	dst = append(dst, WireVersion, byte(m.Kind))
	dst = binary.AppendVarint(dst, m.TS)
	dst = appendField(dst, m.ID)
	dst = appendField(dst, m.Topic)
	dst = appendField(dst, m.Key)
	dst = appendField(dst, m.From)
	dst = binary.AppendUvarint(dst, uint64(len(m.Data)))
	return append(dst, m.Data...)
}

func appendField(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

// WireLen returns len(AppendMessage(nil, m)), for sizing buffers and batches.
func WireLen(m *Message) int {
	return 2 + varintLen(zigzag(m.TS)) +
		varintLen(uint64(len(m.ID))) + len(m.ID) +
		varintLen(uint64(len(m.Topic))) + len(m.Topic) +
		varintLen(uint64(len(m.Key))) + len(m.Key) +
		varintLen(uint64(len(m.From))) + len(m.From) +
		varintLen(uint64(len(m.Data))) + len(m.Data)
}

func zigzag(v int64) uint64 { return uint64(v<<1) ^ uint64(v>>63) }

func varintLen(v uint64) int {
	n := 1
	for v >= 0x80 {
		v >>= 7
		n++
	}
	return n
}

// DecodeMessage decodes the binary wire form in b (exactly one message, as
// written by AppendMessage) into m, overwriting all of m's fields.
//
// m.Data aliases b (capacity-limited, so appending to it cannot overwrite b):
// it is valid only as long as b is, and callers that reuse b must Clone m
// first. The string fields are copied, in one allocation shared by all four
// (so keeping one keeps the others' bytes alive; they are small).
// On error m is left in an unspecified state.
func DecodeMessage(b []byte, m *Message) error {
	if len(b) < 2 {
		return ErrBadWire
	}
	if b[0] != WireVersion {
		return ErrWireVersion
	}
	kind := Kind(b[1])
	if kind > KindBinary {
		return ErrBadWire
	}
	ts, n := binary.Varint(b[2:])
	if n <= 0 {
		return ErrBadWire
	}
	i := 2 + n

	// The four strings sit back to back, separated by their lengths: find
	// their bounds first, then copy the whole span into one string and slice
	// it, so decoding costs one allocation rather than four.
	var bounds [4][2]int
	for f := range bounds {
		start, end, ok := wireField(b, i)
		if !ok {
			return ErrBadWire
		}
		bounds[f] = [2]int{start, end}
		i = end
	}
	start, end, ok := wireField(b, i)
	if !ok || end != len(b) {
		return ErrBadWire
	}

	var span string
	if first, last := bounds[0][0], bounds[3][1]; hasText(&bounds) {
		span = string(b[first:last])
	}
	str := func(f int) string {
		if bounds[f][0] == bounds[f][1] {
			return ""
		}
		return span[bounds[f][0]-bounds[0][0] : bounds[f][1]-bounds[0][0]]
	}
	m.Kind = kind
	m.TS = ts
	m.ID = str(0)
	m.Topic = str(1)
	m.Key = str(2)
	m.From = str(3)
	m.Data = nil
	if start < end {
		m.Data = b[start:end:end]
	}
	return nil
}

// hasText reports whether any of the string fields is non-empty.
func hasText(bounds *[4][2]int) bool {
	for _, f := range bounds {
		if f[0] != f[1] {
			return true
		}
	}
	return false
}

// wireField reads a uvarint length at b[i] and returns the bounds of the
// bytes that follow it.
func wireField(b []byte, i int) (start, end int, ok bool) {
	if i > len(b) {
		return 0, 0, false
	}
	l, n := binary.Uvarint(b[i:])
	if n <= 0 || l > uint64(len(b)-i-n) {
		return 0, 0, false
	}
	start = i + n
	return start, start + int(l), true
}

// Clone returns a deep copy of m: Data is copied (the strings are immutable
// and shared). Use it to keep a message whose Data aliases a buffer that will
// be reused (see DecodeMessage). Clone of nil is nil.
func (m *Message) Clone() *Message {
	if m == nil {
		return nil
	}
	c := *m
	if m.Data != nil {
		c.Data = append(make([]byte, 0, len(m.Data)), m.Data...)
	}
	return &c
}
