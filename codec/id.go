package codec

import "sync"

// IDLen is the length in bytes of every message id.
const IDLen = 22

// Layout of an id: 12 lower-case hex digits of Unix milliseconds (48 bits),
// 4 of the node index (16 bits), 6 of the per-millisecond sequence (24 bits).
// Fixed width and lower-case, so byte order is time order.
const (
	idMsDigits   = 12
	idNodeDigits = 4
	idSeqDigits  = 6

	maxIDMs  = 1<<48 - 1
	maxIDSeq = 1<<24 - 1
)

// IDGen generates message ids for one node. Its ids strictly increase, also
// across clock steps backwards; ids of different nodes differ in the node
// digits. Safe for concurrent use.
type IDGen struct {
	node uint16

	mu      sync.Mutex
	ms      int64  // ms component of the last id; guarded by mu
	seq     uint32 // sequence component of the last id; guarded by mu
	started bool   // whether an id was generated yet; guarded by mu
}

// NewIDGen returns a generator for node, the node's index in the cluster.
// Nodes sharing a store must use distinct indexes.
func NewIDGen(node uint16) *IDGen {
	return &IDGen{node: node}
}

// Next returns a new id for the current time nowMs, in Unix milliseconds.
// Within one millisecond the sequence counts up. When nowMs is not after the
// last id's time (same millisecond, or the clock stepped back), Next keeps
// the last time and counts the sequence on, so ids still increase and
// IDTime stays at most slightly ahead of the clock; when the sequence would
// overflow (16M ids in one millisecond), it advances the time by 1 ms
// instead. nowMs is clamped to [0, 2^48-1] (2^48 ms is the year 10889).
func (g *IDGen) Next(nowMs int64) (id string) {
	nowMs = min(max(nowMs, 0), maxIDMs)
	g.mu.Lock()
	switch {
	case !g.started || nowMs > g.ms:
		g.ms, g.seq, g.started = nowMs, 0, true
	case g.seq < maxIDSeq:
		g.seq++
	case g.ms < maxIDMs:
		g.ms, g.seq = g.ms+1, 0
	default:
		// The 48-bit time is exhausted; the ids repeat the last one.
		// Unreachable with a real clock.
	}
	ms, seq := g.ms, g.seq
	g.mu.Unlock()

	var buf [IDLen]byte
	return string(AppendID(buf[:0], ms, g.node, seq))
}

// AppendID appends the id made of ms (Unix milliseconds, low 48 bits), node
// and seq (low 24 bits) to dst and returns the extended buffer. It is the
// formatting half of IDGen.Next, and builds bounds for time-range queries:
// AppendID(dst, ms, 0, 0) is the smallest id of millisecond ms.
func AppendID(dst []byte, ms int64, node uint16, seq uint32) []byte {
	dst = appendHex(dst, uint64(ms)&maxIDMs, idMsDigits)
	dst = appendHex(dst, uint64(node), idNodeDigits)
	return appendHex(dst, uint64(seq)&maxIDSeq, idSeqDigits)
}

// appendHex appends the low n hex digits of v, zero-padded, lower-case.
func appendHex(dst []byte, v uint64, n int) []byte {
	const digits = "0123456789abcdef"
	for shift := 4 * (n - 1); shift >= 0; shift -= 4 {
		dst = append(dst, digits[v>>uint(shift)&0xf])
	}
	return dst
}

// ValidID reports whether s has the form of a message id: IDLen lower-case
// hex digits.
func ValidID(s string) bool {
	if len(s) != IDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// IDTime returns the time component of id in Unix milliseconds, or -1 when
// id is not valid (see ValidID).
func IDTime(id string) int64 {
	if !ValidID(id) {
		return -1
	}
	var ms int64
	for i := 0; i < idMsDigits; i++ {
		c := id[i]
		if c <= '9' {
			c -= '0'
		} else {
			c -= 'a' - 10
		}
		ms = ms<<4 | int64(c)
	}
	return ms
}
