package main

import (
	"bytes"
	"errors"
)

// The payload every message of a run carries. It is ASCII (lower-case hex
// digits behind a two-byte magic, padded with dots), so the same bytes travel
// unchanged as a raw text frame, a binary frame, a JSON string in /ws and
// REST, and a stored message in the history API, and it can be located and
// decoded in place without allocating:
//
//	offset  0  2         10            22                38       size
//	        cg pppppppp  ssssssssssss  tttttttttttttttt  ........
//	        |  publisher sequence      send time, ns     padding
//
// The publisher id is 32 bits, the sequence 48 bits (starting at 1) and the
// send time 64 bits of nanoseconds on the tool's monotonic clock (see now).
const (
	payloadMagic   = "cg"
	offPublisher   = 2
	offSeq         = offPublisher + 8
	offSent        = offSeq + 12
	minPayloadSize = offSent + 16 // 38

	// maxPayloadSize bounds --size: chatgg's default message limit.
	maxPayloadSize = 64 << 10
)

// errPayload is returned for bytes that are not a payload of this tool.
var errPayload = errors.New("bench: not a bench payload")

// stamp is what a payload carries.
type stamp struct {
	pub  uint32
	seq  uint64 // 1, 2, ... per publisher
	sent int64  // now() when the message was written
}

// appendPayload appends the payload for s, padded to size bytes (at least
// minPayloadSize), to dst.
func appendPayload(dst []byte, s stamp, size int) []byte {
	dst = append(dst, payloadMagic...)
	dst = appendHex(dst, uint64(s.pub), 8)
	dst = appendHex(dst, s.seq, 12)
	dst = appendHex(dst, uint64(s.sent), 16)
	for i := minPayloadSize; i < size; i++ {
		dst = append(dst, '.')
	}
	return dst
}

// putPayload writes the payload for s into p, which is exactly the payload's
// size; it is appendPayload for a frame whose room is already reserved.
func putPayload(p []byte, s stamp) {
	copy(p, payloadMagic)
	putHex(p[offPublisher:offSeq], uint64(s.pub))
	putHex(p[offSeq:offSent], s.seq)
	putHex(p[offSent:minPayloadSize], uint64(s.sent))
	for i := minPayloadSize; i < len(p); i++ {
		p[i] = '.'
	}
}

// parsePayload decodes the stamp at the start of p. The padding is not
// checked: a server may not change it, but reading it costs time per message
// and a changed byte there would not change the accounting.
func parsePayload(p []byte) (stamp, error) {
	if len(p) < minPayloadSize || p[0] != payloadMagic[0] || p[1] != payloadMagic[1] {
		return stamp{}, errPayload
	}
	pub, ok1 := parseHex(p[offPublisher:offSeq])
	seq, ok2 := parseHex(p[offSeq:offSent])
	sent, ok3 := parseHex(p[offSent:minPayloadSize])
	if !ok1 || !ok2 || !ok3 || seq == 0 {
		return stamp{}, errPayload
	}
	return stamp{pub: uint32(pub), seq: seq, sent: int64(sent)}, nil
}

// findPayload returns the payload inside a delivered message body: the body
// itself (raw frames), the body without the quotes of a JSON string (a REST
// JSON publish delivered to a raw subscriber), or the "data" string of a /ws
// msg object. ok is false when there is none.
func findPayload(b []byte) (p []byte, ok bool) {
	if len(b) >= 2 && b[0] == payloadMagic[0] && b[1] == payloadMagic[1] {
		return b, true
	}
	if len(b) > 0 && b[0] == '"' {
		return b[1:], true
	}
	if i := indexData(b); i >= 0 {
		return b[i:], true
	}
	return nil, false
}

// indexData returns the offset just past `"data":"` in a /ws msg object, or
// -1. The fields before data (op, topic, id, ts) cannot contain that text:
// topic names have no quotes.
func indexData(b []byte) int {
	const key = `"data":"`
	if i := bytes.Index(b, []byte(key)); i >= 0 {
		return i + len(key)
	}
	return -1
}

func appendHex(dst []byte, v uint64, digits int) []byte {
	for i := digits - 1; i >= 0; i-- {
		dst = append(dst, hexDigit(byte(v>>(4*uint(i)))&0xf))
	}
	return dst
}

func putHex(p []byte, v uint64) {
	for i := len(p) - 1; i >= 0; i-- {
		p[i] = hexDigit(byte(v) & 0xf)
		v >>= 4
	}
}

func hexDigit(n byte) byte {
	if n < 10 {
		return '0' + n
	}
	return 'a' + n - 10
}

func parseHex(p []byte) (uint64, bool) {
	var v uint64
	for _, c := range p {
		switch {
		case c >= '0' && c <= '9':
			v = v<<4 | uint64(c-'0')
		case c >= 'a' && c <= 'f':
			v = v<<4 | uint64(c-'a'+10)
		default:
			return 0, false
		}
	}
	return v, true
}
