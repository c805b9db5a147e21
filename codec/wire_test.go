package codec

import (
	"bytes"
	"errors"
	"math"
	"strings"
	"testing"
)

func wireMessages() map[string]*Message {
	return map[string]*Message{
		"empty":        {},
		"json":         {ID: "0193790f6d7b000700002a", Topic: "room.1", TS: 1732900000123, Kind: KindJSON, Data: []byte(`{"text":"hi"}`)},
		"text":         {ID: "0193790f6d7b000700002b", Topic: "a", TS: 1, Kind: KindText, Key: "k-1", From: "alice", Data: []byte("héllo")},
		"binary":       {ID: "x", Topic: "b", Kind: KindBinary, Data: []byte{0, 1, 2, 0xff}},
		"negative ts":  {TS: -1, Data: []byte("1")},
		"min ts":       {TS: math.MinInt64},
		"max ts":       {TS: math.MaxInt64},
		"only from":    {From: "bob"},
		"big data":     {Topic: "t", Kind: KindBinary, Data: bytes.Repeat([]byte{0xab}, 70000)},
		"long strings": {ID: strings.Repeat("i", 200), Topic: strings.Repeat("t", 128), Key: strings.Repeat("k", 300), From: strings.Repeat("f", 129)},
	}
}

func equalMessage(a, b *Message) bool {
	return a.ID == b.ID && a.Topic == b.Topic && a.TS == b.TS && a.Kind == b.Kind &&
		a.Key == b.Key && a.From == b.From && bytes.Equal(a.Data, b.Data)
}

func TestMessageRoundTrip(t *testing.T) {
	for name, m := range wireMessages() {
		t.Run(name, func(t *testing.T) {
			b := AppendMessage([]byte("prefix"), m)
			if string(b[:6]) != "prefix" {
				t.Fatal("AppendMessage overwrote dst")
			}
			b = b[6:]
			if len(b) != WireLen(m) {
				t.Errorf("WireLen = %d, encoded %d bytes", WireLen(m), len(b))
			}
			if b[0] != WireVersion {
				t.Errorf("version byte = %d", b[0])
			}
			var got Message
			if err := DecodeMessage(b, &got); err != nil {
				t.Fatalf("DecodeMessage: %v", err)
			}
			if !equalMessage(&got, m) {
				t.Fatalf("round trip = %+v, want %+v", got, *m)
			}
		})
	}
}

func TestDecodeMessageOverwritesFields(t *testing.T) {
	m := Message{ID: "old", Topic: "old", TS: 9, Kind: KindBinary, Key: "old", From: "old", Data: []byte("old")}
	if err := DecodeMessage(AppendMessage(nil, &Message{}), &m); err != nil {
		t.Fatal(err)
	}
	if !equalMessage(&m, &Message{}) || m.Data != nil {
		t.Errorf("decoded over a used Message: %+v", m)
	}
}

func TestDecodeMessageDataAliasesInputWithLimitedCapacity(t *testing.T) {
	b := AppendMessage(nil, &Message{Topic: "t", Data: []byte("abc")})
	b = append(b, 0)[:len(b)] // spare capacity after the message
	var m Message
	if err := DecodeMessage(b, &m); err != nil {
		t.Fatal(err)
	}
	if &m.Data[0] != &b[len(b)-3] {
		t.Error("Data does not alias the input")
	}
	if cap(m.Data) != 3 {
		t.Errorf("cap(Data) = %d, want 3", cap(m.Data))
	}
}

func TestDecodeMessageErrors(t *testing.T) {
	good := AppendMessage(nil, wireMessages()["text"])
	tests := []struct {
		name string
		b    []byte
		want error
	}{
		{"nil", nil, ErrBadWire},
		{"only version", []byte{WireVersion}, ErrBadWire},
		{"version 0", append([]byte{0}, good[1:]...), ErrWireVersion},
		{"version 2", append([]byte{2}, good[1:]...), ErrWireVersion},
		{"unknown kind", append([]byte{WireVersion, 3}, good[2:]...), ErrBadWire},
		{"truncated ts", []byte{WireVersion, 0, 0x80}, ErrBadWire},
		{"overlong ts", append([]byte{WireVersion, 0}, bytes.Repeat([]byte{0xff}, 11)...), ErrBadWire},
		{"no fields", []byte{WireVersion, 0, 0}, ErrBadWire},
		{"length past end", []byte{WireVersion, 0, 0, 5, 'a'}, ErrBadWire},
		{"huge length", append([]byte{WireVersion, 0, 0}, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01), ErrBadWire},
		{"trailing byte", append(append([]byte(nil), good...), 0), ErrBadWire},
		{"missing data", []byte{WireVersion, 0, 0, 0, 0, 0, 0}, ErrBadWire},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var m Message
			if err := DecodeMessage(tt.b, &m); !errors.Is(err, tt.want) {
				t.Errorf("DecodeMessage(%x) = %v, want %v", tt.b, err, tt.want)
			}
		})
	}
}

func TestDecodeMessageRejectsEveryTruncation(t *testing.T) {
	for name, m := range wireMessages() {
		b := AppendMessage(nil, m)
		for n := range len(b) {
			var got Message
			if err := DecodeMessage(b[:n], &got); err == nil {
				t.Fatalf("%s: prefix of %d/%d bytes decoded", name, n, len(b))
			}
		}
	}
}

func TestMessageClone(t *testing.T) {
	m := wireMessages()["text"]
	c := m.Clone()
	if !equalMessage(c, m) {
		t.Fatalf("clone = %+v, want %+v", c, m)
	}
	c.Data[0] = 'X'
	if m.Data[0] == 'X' {
		t.Error("clone shares Data")
	}
	if (&Message{}).Clone().Data != nil {
		t.Error("clone of nil Data is not nil")
	}
	if (*Message)(nil).Clone() != nil {
		t.Error("clone of nil is not nil")
	}
}

func FuzzDecodeMessage(f *testing.F) {
	for _, m := range wireMessages() {
		if len(m.Data) < 1000 {
			f.Add(AppendMessage(nil, m), m.ID, m.Topic, m.Key, m.From, m.TS, uint8(m.Kind), m.Data)
		}
	}
	f.Fuzz(func(t *testing.T, raw []byte, id, topic, key, from string, ts int64, kind uint8, data []byte) {
		// Arbitrary input: no panic, and what decodes re-encodes to the
		// same message.
		var got Message
		if DecodeMessage(raw, &got) == nil {
			var again Message
			if err := DecodeMessage(AppendMessage(nil, &got), &again); err != nil {
				t.Fatalf("re-encoding of a decoded message fails: %v", err)
			}
			if !equalMessage(&again, &got) {
				t.Fatalf("re-encoded %+v decodes to %+v", got, again)
			}
		}

		// decode(encode(x)) == x, and every truncation fails.
		m := Message{ID: id, Topic: topic, Key: key, From: from, TS: ts, Kind: Kind(kind % 3), Data: data}
		b := AppendMessage(nil, &m)
		if len(b) != WireLen(&m) {
			t.Fatalf("WireLen = %d, encoded %d", WireLen(&m), len(b))
		}
		if err := DecodeMessage(b, &got); err != nil {
			t.Fatalf("DecodeMessage: %v", err)
		}
		if !equalMessage(&got, &m) {
			t.Fatalf("round trip = %+v, want %+v", got, m)
		}
		for n := range len(b) {
			if DecodeMessage(b[:n], &got) == nil {
				t.Fatalf("prefix of %d/%d bytes decoded", n, len(b))
			}
		}
	})
}

func BenchmarkAppendMessage(b *testing.B) {
	m := &Message{ID: "0193790f6d7b000700002a", Topic: "room.general", TS: 1732900000123, Data: bytes.Repeat([]byte("x"), 64)}
	buf := make([]byte, 0, 256)
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendMessage(buf[:0], m)
	}
}

func BenchmarkDecodeMessage(b *testing.B) {
	enc := AppendMessage(nil, &Message{ID: "0193790f6d7b000700002a", Topic: "room.general", TS: 1732900000123, Data: bytes.Repeat([]byte("x"), 64)})
	var m Message
	b.ReportAllocs()
	for b.Loop() {
		if err := DecodeMessage(enc, &m); err != nil {
			b.Fatal(err)
		}
	}
}
