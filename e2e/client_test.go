package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// wsClient is a /ws JSON protocol client. One goroutine reads; writes are
// serialised. Publishes are pipelined up to a window of unanswered ones and
// recorded in a ledger.
type wsClient struct {
	t    testing.TB
	name string
	conn *websocket.Conn
	led  *ledger

	wmu sync.Mutex // gorilla allows one writer at a time

	window chan struct{} // a slot per unanswered publish

	mu       sync.Mutex
	subs     map[string]chan error // sub ref → its answer
	pubs     map[string]payload    // pub ref → the publish
	msgs     []delivery
	readErr  error
	readDone chan struct{}
}

// delivery is one msg op a client received.
type delivery struct {
	topic string
	id    string
	key   payload
	at    time.Time
}

// serverFrame is any frame of the JSON protocol.
type serverFrame struct {
	Op      string          `json:"op"`
	Topic   string          `json:"topic"`
	ID      string          `json:"id"`
	Data    json.RawMessage `json:"data"`
	Ref     string          `json:"ref"`
	Code    int             `json:"code"`
	Message string          `json:"message"`
}

// dialWS connects to ws://addr/ws. The connection is closed when the test
// ends.
func dialWS(t testing.TB, addr, name string, led *ledger, window int) *wsClient {
	t.Helper()
	d := websocket.Dialer{HandshakeTimeout: 10 * time.Second}
	conn, _, err := d.Dial("ws://"+addr+"/ws", nil)
	if err != nil {
		t.Fatalf("%s: dial %s: %v", name, addr, err)
	}
	c := &wsClient{
		t:        t,
		name:     name,
		conn:     conn,
		led:      led,
		window:   make(chan struct{}, window),
		subs:     map[string]chan error{},
		pubs:     map[string]payload{},
		readDone: make(chan struct{}),
	}
	go c.read()
	t.Cleanup(func() {
		conn.Close()
		<-c.readDone
	})
	return c
}

func (c *wsClient) read() {
	defer close(c.readDone)
	for {
		_, b, err := c.conn.ReadMessage()
		if err != nil {
			c.mu.Lock()
			c.readErr = err
			// Unanswered publishes on a dead connection may or may not
			// have been accepted.
			for ref, k := range c.pubs {
				delete(c.pubs, ref)
				c.settle(k, unknown, "", 0)
				<-c.window
			}
			for ref, ch := range c.subs {
				delete(c.subs, ref)
				ch <- err
			}
			c.mu.Unlock()
			return
		}
		var f serverFrame
		if err := json.Unmarshal(b, &f); err != nil {
			c.t.Errorf("%s: server sent invalid JSON %q: %v", c.name, b, err)
			continue
		}
		switch f.Op {
		case "msg":
			p, err := parsePayload(f.Data)
			if err != nil {
				c.t.Errorf("%s: %v", c.name, err)
				continue
			}
			c.mu.Lock()
			c.msgs = append(c.msgs, delivery{topic: f.Topic, id: f.ID, key: p, at: time.Now()})
			c.mu.Unlock()
		case "ack", "error":
			c.answer(f)
		default:
			c.t.Errorf("%s: unexpected frame %s", c.name, b)
		}
	}
}

// answer resolves the request f answers.
func (c *wsClient) answer(f serverFrame) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ch, ok := c.subs[f.Ref]; ok {
		delete(c.subs, f.Ref)
		if f.Op == "error" {
			ch <- fmt.Errorf("sub refused: %d %s", f.Code, f.Message)
		} else {
			ch <- nil
		}
		return
	}
	k, ok := c.pubs[f.Ref]
	if !ok {
		c.t.Errorf("%s: answer to unknown ref: %+v", c.name, f)
		return
	}
	delete(c.pubs, f.Ref)
	if f.Op == "ack" {
		if f.ID == "" {
			c.t.Errorf("%s: pub ack without id: %+v", c.name, f)
		}
		c.settle(k, acked, f.ID, 0)
	} else {
		c.settle(k, refused, "", f.Code)
	}
	<-c.window
}

// settle records an outcome in the ledger.
func (c *wsClient) settle(k payload, state int, id string, code int) {
	if err := c.led.answer(k, state, id, code); err != nil {
		c.t.Errorf("%s: %v", c.name, err)
	}
}

func (c *wsClient) write(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	return c.conn.WriteMessage(websocket.TextMessage, b)
}

// subscribe subscribes to topic and waits for the ack, which means the
// node's Redis subscription is confirmed.
func (c *wsClient) subscribe(topic string) {
	c.t.Helper()
	ref := "sub-" + topic
	ch := make(chan error, 1)
	c.mu.Lock()
	c.subs[ref] = ch
	c.mu.Unlock()
	if err := c.write(map[string]any{"op": "sub", "topic": topic, "ref": ref}); err != nil {
		c.t.Fatalf("%s: sub: %v", c.name, err)
	}
	select {
	case err := <-ch:
		if err != nil {
			c.t.Fatalf("%s: sub %s: %v", c.name, topic, err)
		}
	case <-time.After(20 * time.Second):
		c.t.Fatalf("%s: sub %s: no answer", c.name, topic)
	}
}

// publish sends one pub with a ref once the window has room; the answer is
// recorded in the ledger. It returns false if the connection is gone or the
// window stayed full too long.
func (c *wsClient) publish(topic string, seq int) bool {
	select {
	case c.window <- struct{}{}:
	case <-time.After(30 * time.Second):
		c.t.Errorf("%s: 30 s without an answer to a full window of publishes", c.name)
		return false
	}
	k := payload{P: c.name, S: seq}
	ref := "pub-" + strconv.Itoa(seq)
	c.mu.Lock()
	if c.readErr != nil {
		c.mu.Unlock()
		<-c.window
		return false
	}
	c.led.sent(k)
	c.pubs[ref] = k
	c.mu.Unlock()
	if err := c.write(map[string]any{"op": "pub", "topic": topic, "data": k, "ref": ref}); err != nil {
		// The reader sees the broken connection too and settles the
		// record as unknown, unless an answer came first.
		return false
	}
	return true
}

// publishLoop publishes n messages (n <= 0: until stop is closed) with pause
// between them, numbered from 1. It returns when done, on stop, or when the
// connection fails.
func (c *wsClient) publishLoop(topic string, n int, pause time.Duration, stop <-chan struct{}) {
	for seq := 1; n <= 0 || seq <= n; seq++ {
		select {
		case <-stop:
			return
		default:
		}
		if !c.publish(topic, seq) {
			return
		}
		if pause > 0 {
			time.Sleep(pause) // pacing a steady stream, not waiting for an outcome
		}
	}
}

// received returns a copy of the messages received so far, in order.
func (c *wsClient) received() []delivery {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]delivery(nil), c.msgs...)
}

// err returns why the connection failed, or nil.
func (c *wsClient) err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.readErr
}

// restPublisher publishes over REST to base (the balancer or a node).
type restPublisher struct {
	name string
	base string
	led  *ledger
}

// settle records an outcome. Each REST message is answered once, here, so
// an error is a bug in this file.
func (p *restPublisher) settle(k payload, state int, id string, code int) {
	if err := p.led.answer(k, state, id, code); err != nil {
		panic(err)
	}
}

// publish POSTs one message to /v1/topics/{topic}/messages and records the
// outcome: 202 acked, another status refused with it, no answer unknown.
func (p *restPublisher) publish(topic string, seq int) (status int) {
	k := payload{P: p.name, S: seq}
	body, _ := json.Marshal(k)
	p.led.sent(k)
	status, b, err := do(http.MethodPost, p.base+"/v1/topics/"+topic+"/messages", "application/json", body)
	switch {
	case err != nil:
		p.settle(k, unknown, "", 0)
	case status == http.StatusAccepted:
		var v struct {
			ID string `json:"id"`
		}
		if json.Unmarshal(b, &v) != nil || v.ID == "" {
			p.settle(k, unknown, "", 0)
			return -1
		}
		p.settle(k, acked, v.ID, 0)
	default:
		p.settle(k, refused, "", status)
	}
	return status
}

// publishBatch POSTs seqs as one /v1/messages batch and records each
// result.
func (p *restPublisher) publishBatch(topic string, seqs []int) (int, error) {
	type item struct {
		Topic string  `json:"topic"`
		Data  payload `json:"data"`
	}
	items := make([]item, len(seqs))
	for i, s := range seqs {
		items[i] = item{Topic: topic, Data: payload{P: p.name, S: s}}
		p.led.sent(items[i].Data)
	}
	body, _ := json.Marshal(items)
	status, b, err := do(http.MethodPost, p.base+"/v1/messages", "application/json", body)
	var v struct {
		Results []struct {
			ID    string `json:"id"`
			Error *struct {
				Code int `json:"code"`
			} `json:"error"`
		} `json:"results"`
	}
	if err == nil && (status == http.StatusAccepted || status == http.StatusMultiStatus) {
		err = json.NewDecoder(bytes.NewReader(b)).Decode(&v)
		if err == nil && len(v.Results) != len(items) {
			err = fmt.Errorf("%d results for %d messages", len(v.Results), len(items))
		}
	}
	if err != nil || (status != http.StatusAccepted && status != http.StatusMultiStatus) {
		for _, it := range items {
			if err != nil {
				p.settle(it.Data, unknown, "", 0)
			} else {
				p.settle(it.Data, refused, "", status)
			}
		}
		if err == nil {
			err = fmt.Errorf("batch: %d %s", status, b)
		}
		return status, err
	}
	for i, r := range v.Results {
		if r.Error != nil {
			p.settle(items[i].Data, refused, "", r.Error.Code)
		} else {
			p.settle(items[i].Data, acked, r.ID, 0)
		}
	}
	return status, nil
}
