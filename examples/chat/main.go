// Command chat is a tiny terminal chat client for chatgg: every line you type
// is published to a room, and every message of the room is printed.
//
//	go run ./examples/chat -name alice -room lobby
//
// It speaks the JSON protocol of /ws (docs/protocol.md).
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/gorilla/websocket"
)

type chatLine struct {
	Name string `json:"name"`
	Text string `json:"text"`
}

type serverMsg struct {
	Op      string          `json:"op"`
	Topic   string          `json:"topic"`
	ID      string          `json:"id"`
	TS      int64           `json:"ts"`
	Data    json.RawMessage `json:"data"`
	Code    int             `json:"code"`
	Message string          `json:"message"`
}

func main() {
	server := flag.String("server", "ws://127.0.0.1:9001/ws", "chatgg WebSocket URL")
	name := flag.String("name", os.Getenv("USER"), "your name")
	room := flag.String("room", "lobby", "room (topic) to join")
	flag.Parse()

	conn, _, err := websocket.DefaultDialer.Dial(*server, nil)
	if err != nil {
		log.Fatalf("connect to %s: %v", *server, err)
	}
	defer conn.Close()
	if err := conn.WriteJSON(map[string]any{"op": "sub", "topic": *room}); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("joined %q as %s; type a line and press Enter (Ctrl-D to leave)\n", *room, *name)

	go func() {
		for {
			var m serverMsg
			if err := conn.ReadJSON(&m); err != nil {
				log.Fatalf("connection closed: %v", err)
			}
			switch m.Op {
			case "msg":
				var line chatLine
				if json.Unmarshal(m.Data, &line) != nil || line.Name == "" {
					line = chatLine{Name: "?", Text: string(m.Data)}
				}
				fmt.Printf("%s <%s> %s\n", time.UnixMilli(m.TS).Format("15:04:05"), line.Name, line.Text)
			case "error":
				fmt.Printf("! error %d: %s\n", m.Code, m.Message)
			}
		}
	}()

	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		if in.Text() == "" {
			continue
		}
		pub := map[string]any{"op": "pub", "topic": *room, "data": chatLine{Name: *name, Text: in.Text()}}
		if err := conn.WriteJSON(pub); err != nil {
			log.Fatal(err)
		}
	}
	_ = conn.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "bye"))
}
