package pubsub

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/chatgg/chatgg/codec"
	"github.com/chatgg/chatgg/internal/testsvc"
)

func TestMain(m *testing.M) { testsvc.Main(m) }

// waitFor is how long a test waits for something that should happen soon.
const waitFor = 10 * time.Second

// recorder is a thread-safe Deliverer that keeps what it is given.
type recorder struct {
	mu     sync.Mutex
	msgs   []*codec.Message
	notify chan struct{} // capacity 1: something was delivered
}

func newRecorder() *recorder { return &recorder{notify: make(chan struct{}, 1)} }

func (r *recorder) Deliver(m *codec.Message) {
	r.mu.Lock()
	r.msgs = append(r.msgs, m)
	r.mu.Unlock()
	select {
	case r.notify <- struct{}{}:
	default:
	}
}

// all returns a copy of what was delivered so far.
func (r *recorder) all() []*codec.Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*codec.Message(nil), r.msgs...)
}

// topic returns the delivered messages of topic.
func (r *recorder) topic(topic string) []*codec.Message {
	var out []*codec.Message
	for _, m := range r.all() {
		if m.Topic == topic {
			out = append(out, m)
		}
	}
	return out
}

// waitID waits until a message with the given id has been delivered and
// returns everything delivered so far.
func (r *recorder) waitID(t *testing.T, id string) []*codec.Message {
	t.Helper()
	deadline := time.NewTimer(waitFor)
	defer deadline.Stop()
	for {
		msgs := r.all()
		for _, m := range msgs {
			if m.ID == id {
				return msgs
			}
		}
		select {
		case <-r.notify:
		case <-deadline.C:
			t.Fatalf("message %s not delivered within %v (got %d messages)", id, waitFor, len(msgs))
		}
	}
}

// waitCount waits until n messages of topic have been delivered.
func (r *recorder) waitCount(t *testing.T, topic string, n int) []*codec.Message {
	t.Helper()
	deadline := time.NewTimer(waitFor)
	defer deadline.Stop()
	for {
		msgs := r.topic(topic)
		if len(msgs) >= n {
			return msgs
		}
		select {
		case <-r.notify:
		case <-deadline.C:
			t.Fatalf("topic %s: %d of %d messages delivered within %v", topic, len(msgs), n, waitFor)
		}
	}
}

// msg returns a message of topic numbered n.
func msg(topic string, n int) *codec.Message {
	return &codec.Message{
		ID:    fmt.Sprintf("%s-%06d", topic, n),
		Topic: topic,
		TS:    int64(1_700_000_000_000 + n),
		Kind:  codec.KindJSON,
		Key:   fmt.Sprintf("k%d", n),
		From:  "alice",
		Data:  fmt.Appendf(nil, `{"n":%d}`, n),
	}
}

// batchOf returns messages from..to-1 of topic.
func batchOf(topic string, from, to int) []*codec.Message {
	b := make([]*codec.Message, 0, to-from)
	for i := from; i < to; i++ {
		b = append(b, msg(topic, i))
	}
	return b
}

// sameMessage reports how got differs from want, or "".
func sameMessage(got, want *codec.Message) string {
	if got.ID != want.ID || got.Topic != want.Topic || got.TS != want.TS || got.Kind != want.Kind ||
		got.Key != want.Key || got.From != want.From || string(got.Data) != string(want.Data) {
		return fmt.Sprintf("got %+v (data %q), want %+v (data %q)", got, got.Data, want, want.Data)
	}
	return ""
}

// eventually polls cond until it holds or waitFor passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, waitFor)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
