package loop

import (
	"context"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

func TestSmokeEcho(t *testing.T) {
	e := New(Config{Addr: "127.0.0.1:0"})
	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := e.Shutdown(ctx); err != nil {
			t.Error(err)
		}
	}()
	ws, _, err := websocket.DefaultDialer.Dial("ws://"+e.Addr().String()+"/echo", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	for _, msg := range []string{"hello", string(make([]byte, 70000))} {
		if err := ws.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		typ, got, err := ws.ReadMessage()
		if err != nil || typ != websocket.TextMessage || string(got) != msg {
			t.Fatalf("got %v %d bytes %v", typ, len(got), err)
		}
	}
}
