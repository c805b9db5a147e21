package loop

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/chatgg/chatgg/codec"
)

// fixedRecoverer answers every lookup with the same messages.
type fixedRecoverer struct{ msgs []*codec.Message }

func (f fixedRecoverer) Recover(topic, after string, done func([]*codec.Message, bool, error)) {
	go done(f.msgs, true, nil)
}

// TestLateLiveCopyOfReplayedMessageIsDropped: a message can be in the
// replay and still be on its way live (the window and the stream come on
// different connections); the client must get it once.
func TestLateLiveCopyOfReplayedMessageIsDropped(t *testing.T) {
	m := func(id, data string) *codec.Message {
		return &codec.Message{ID: id, Topic: "t", TS: 1, Kind: codec.KindJSON, Data: []byte(data)}
	}
	m1, m2, m3 := m("0000000000010000000001", "1"), m("0000000000010000000002", "2"), m("0000000000010000000003", "3")
	e := startEngine(t, Config{Recoverer: fixedRecoverer{msgs: []*codec.Message{m1, m2}}})
	ws, _, err := websocket.DefaultDialer.Dial("ws://"+e.Addr().String()+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	if err := ws.WriteMessage(websocket.TextMessage, []byte(`{"op":"sub","topic":"t","after":"0000000000010000000000","ref":"r"}`)); err != nil {
		t.Fatal(err)
	}
	read := func() map[string]any {
		t.Helper()
		_ = ws.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, b, err := ws.ReadMessage()
		if err != nil {
			t.Fatal(err)
		}
		var v map[string]any
		_ = json.Unmarshal(b, &v)
		return v
	}
	if ack := read(); ack["op"] != "ack" || ack["recovered"] != true {
		t.Fatalf("sub ack %v", ack)
	}
	for _, want := range []string{m1.ID, m2.ID} {
		if v := read(); v["id"] != want {
			t.Fatalf("replay: got %v, want %s", v, want)
		}
	}
	// m2's live copy arrives after the replay, then a new message.
	e.Deliver(m2)
	e.Deliver(m3)
	if v := read(); v["id"] != m3.ID {
		t.Fatalf("after the replay got %v, want only %s (m2 was replayed already)", v, m3.ID)
	}
}
