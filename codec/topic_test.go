package codec

import (
	"strings"
	"testing"
)

func TestValidTopic(t *testing.T) {
	tests := []struct {
		name  string
		topic string
		want  bool
	}{
		{"empty", "", false},
		{"one byte", "a", true},
		{"all allowed punctuation", "room_1.general:en@eu/x-y", true},
		{"upper and digits", "ABCxyz0189", true},
		{"max length", strings.Repeat("a", MaxTopicBytes), true},
		{"over max length", strings.Repeat("a", MaxTopicBytes+1), false},
		{"space", "a b", false},
		{"quote", `a"b`, false},
		{"backslash", `a\b`, false},
		{"star", "news.*", false},
		{"hash", "a#b", false},
		{"comma", "a,b", false},
		{"nul", "a\x00", false},
		{"del", "a\x7f", false},
		{"non-ASCII", "caf\u00e9", false},
		{"high byte", "a\xff", false},
		{"byte before '-'", "a,", false},
		{"byte after ':'", "a;", false},
		{"byte before '@'", "a?", false},
		{"byte after 'Z'", "a[", false},
		{"byte before 'a'", "a`", false},
		{"byte after 'z'", "a{", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ValidTopic([]byte(tt.topic)); got != tt.want {
				t.Errorf("ValidTopic(%q) = %v, want %v", tt.topic, got, tt.want)
			}
			if got := ValidTopicString(tt.topic); got != tt.want {
				t.Errorf("ValidTopicString(%q) = %v, want %v", tt.topic, got, tt.want)
			}
		})
	}
}

func TestValidTopicAcceptsExactlyTheAlphabet(t *testing.T) {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:@/-"
	for c := 0; c < 256; c++ {
		want := strings.IndexByte(alphabet, byte(c)) >= 0
		if got := ValidTopic([]byte{byte(c)}); got != want {
			t.Errorf("ValidTopic(%q) = %v, want %v", byte(c), got, want)
		}
	}
}
