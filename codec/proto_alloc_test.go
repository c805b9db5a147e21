//go:build !race

package codec

import (
	"bytes"
	"testing"
)

func TestCodecHotPathsDoNotAllocate(t *testing.T) {
	var (
		r       Request
		buf     = make([]byte, 0, 16<<10)
		data4K  = bytes.Repeat([]byte("x"), 4096)
		jsonMsg = &Message{ID: "0193790f6d7b000700002a", Topic: "room.general", TS: 1732900000123, Kind: KindJSON, From: "alice", Data: []byte(`{"text":"hi"}`)}
		textMsg = &Message{ID: "0193790f6d7b000700002a", Topic: "room.general", TS: 1732900000123, Kind: KindText, Data: data4K}
		binMsg  = &Message{ID: "0193790f6d7b000700002a", Topic: "room.general", TS: 1732900000123, Kind: KindBinary, Data: data4K}
		escaped = []byte(`{"op":"pub","topic":"r\u006fom","ref":"\ud83d\ude00","key":"\u006b","data":{"a":"\u00e9"}}`)
		emptyW  = AppendMessage(nil, &Message{Kind: KindBinary, Data: data4K})
		deep    = []byte(`{"op":"pub","topic":"t","data":` + string(bytes.Repeat([]byte("[{\"a\":"), 120)) + "[]" + string(bytes.Repeat([]byte("}]"), 120)) + `}`)
		noData  = []byte(`{"op":"pub","topic":"t","ref":"r"}`)
		m       Message
	)
	// Grow the scratch buffer once; later escaped parses reuse it.
	if err := ParseRequest(escaped, &r); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		f    func()
	}{
		{"ParseRequest pub", func() { _ = ParseRequest(typicalPub, &r) }},
		{"ParseRequest escaped, warm", func() { _ = ParseRequest(escaped, &r) }},
		{"ParseRequest error", func() { _ = ParseRequest(noData, &r) }},
		{"ValidJSON", func() { _ = ValidJSON(typicalPub) }},
		{"AppendMsgJSON json", func() { buf = AppendMsgJSON(buf[:0], jsonMsg) }},
		{"AppendMsgJSON text 4KiB", func() { buf = AppendMsgJSON(buf[:0], textMsg) }},
		{"AppendMsgJSON binary 4KiB", func() { buf = AppendMsgJSON(buf[:0], binMsg) }},
		{"AppendAck", func() { buf = AppendAck(buf[:0], []byte("r1"), jsonMsg.ID, jsonMsg.TS) }},
		{"AppendStored", func() { buf = AppendStored(buf[:0], []byte("r1"), jsonMsg.ID) }},
		{"AppendError", func() { buf = AppendError(buf[:0], []byte("r1"), 400, "codec: request has no topic") }},
		{"AppendJSONString", func() { buf = AppendJSONString(buf[:0], []byte("a \"quoted\"\n é \xff")) }},
		{"AppendMessage", func() { buf = AppendMessage(buf[:0], jsonMsg) }},
		{"DecodeMessage without strings", func() { _ = DecodeMessage(emptyW, &m) }},
		{"AppendID", func() { buf = AppendID(buf[:0], 1732900000123, 7, 42) }},
		{"ValidID", func() { _ = ValidID(jsonMsg.ID) }},
		{"ValidTopic", func() { _ = ValidTopic([]byte("room.general")) }},
		{"ParseRequest nested 241 deep", func() { _ = ParseRequest(deep, &r) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if n := testing.AllocsPerRun(100, tt.f); n != 0 {
				t.Errorf("%v allocations per run, want 0", n)
			}
		})
	}
}

func TestDecodeMessageAllocatesOnceForStrings(t *testing.T) {
	b := AppendMessage(nil, &Message{ID: "0193790f6d7b000700002a", Topic: "room.general", Key: "k", From: "alice", Data: []byte("{}")})
	var m Message
	if n := testing.AllocsPerRun(100, func() { _ = DecodeMessage(b, &m) }); n != 1 {
		t.Errorf("%v allocations per decode, want 1", n)
	}
}

func TestIDGenNextAllocatesOnlyTheString(t *testing.T) {
	g := NewIDGen(1)
	if n := testing.AllocsPerRun(100, func() { _ = g.Next(1732900000123) }); n != 1 {
		t.Errorf("%v allocations per id, want 1", n)
	}
}
