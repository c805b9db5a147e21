package codec

// MaxTopicBytes is the longest topic name, in bytes.
const MaxTopicBytes = 128

// topicLo and topicHi are bitmaps of the bytes allowed in a topic name:
// bit c of topicLo for c < 64, bit c-64 of topicHi for 64 <= c < 128.
// Constants, not a [256]bool table, so there is no package-level state.
const (
	// '-' (45), '.' (46), '/' (47), '0'-'9' (48-57), ':' (58).
	topicLo = 1<<'-' | 1<<'.' | 1<<'/' | (1<<10-1)<<'0' | 1<<':'
	// '@' (64), 'A'-'Z' (65-90), '_' (95), 'a'-'z' (97-122).
	topicHi = 1<<('@'-64) | (1<<26-1)<<('A'-64) | 1<<('_'-64) | (1<<26-1)<<('a'-64)
)

// topicByte reports whether c may appear in a topic name.
func topicByte(c byte) bool {
	if c < 64 {
		return topicLo>>c&1 != 0
	}
	if c < 128 {
		return topicHi>>(c-64)&1 != 0
	}
	return false
}

// ValidTopic reports whether t is a valid topic name: 1 to MaxTopicBytes
// bytes, each one of A-Z a-z 0-9 _ . : @ / -. The restricted alphabet keeps
// topics safe as Redis channel names, storage keys and log values, and means
// a topic never needs escaping in JSON.
func ValidTopic(t []byte) bool {
	if len(t) == 0 || len(t) > MaxTopicBytes {
		return false
	}
	for _, c := range t {
		if !topicByte(c) {
			return false
		}
	}
	return true
}

// ValidTopicString is ValidTopic for a string.
func ValidTopicString(s string) bool {
	if len(s) == 0 || len(s) > MaxTopicBytes {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !topicByte(s[i]) {
			return false
		}
	}
	return true
}
