package pubsub

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/chatgg/chatgg/codec"
	"github.com/chatgg/chatgg/internal/testsvc"
)

// recentBus is what both buses offer for catching up.
type recentBus interface {
	Publish(ctx context.Context, batch []*codec.Message) error
	Recent(ctx context.Context, topic, after string) ([]*codec.Message, bool, error)
}

func hotMessages(topic string, n int) []*codec.Message {
	g := codec.NewIDGen(1)
	out := make([]*codec.Message, n)
	for i := range out {
		out[i] = &codec.Message{ID: g.Next(time.Now().UnixMilli()), Topic: topic, TS: time.Now().UnixMilli(), Kind: codec.KindJSON, Data: []byte(fmt.Sprint(i))}
	}
	return out
}

func ids(ms []*codec.Message) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.ID
	}
	return out
}

// testHotWindow runs the same cases on a bus whose window holds 10 messages.
func testHotWindow(t *testing.T, newBus func(t *testing.T) recentBus) {
	ctx := context.Background()
	t.Run("after a message in the window", func(t *testing.T) {
		b := newBus(t)
		ms := hotMessages("hw.a", 8)
		if err := b.Publish(ctx, ms); err != nil {
			t.Fatal(err)
		}
		got, found, err := b.Recent(ctx, "hw.a", ms[4].ID)
		if err != nil || !found || fmt.Sprint(ids(got)) != fmt.Sprint(ids(ms[5:])) {
			t.Fatalf("Recent = %v %v %v, want %v found", ids(got), found, err, ids(ms[5:]))
		}
		got, found, _ = b.Recent(ctx, "hw.a", ms[7].ID)
		if !found || len(got) != 0 {
			t.Fatalf("after the newest: %v %v", ids(got), found)
		}
	})
	t.Run("after a message trimmed from the window", func(t *testing.T) {
		b := newBus(t)
		ms := hotMessages("hw.b", 15)
		for _, m := range ms { // one at a time, as publishers do
			if err := b.Publish(ctx, []*codec.Message{m}); err != nil {
				t.Fatal(err)
			}
		}
		got, found, err := b.Recent(ctx, "hw.b", ms[2].ID)
		if err != nil || found || fmt.Sprint(ids(got)) != fmt.Sprint(ids(ms[5:])) {
			t.Fatalf("Recent = %v %v %v, want the last 10 and not found", ids(got), found, err)
		}
	})
	t.Run("whole window and empty topic", func(t *testing.T) {
		b := newBus(t)
		ms := hotMessages("hw.c", 3)
		_ = b.Publish(ctx, ms)
		got, found, _ := b.Recent(ctx, "hw.c", "")
		if found || fmt.Sprint(ids(got)) != fmt.Sprint(ids(ms)) {
			t.Fatalf("whole window %v %v", ids(got), found)
		}
		if got, found, err := b.Recent(ctx, "hw.none", ms[0].ID); err != nil || found || len(got) != 0 {
			t.Fatalf("empty topic %v %v %v", ids(got), found, err)
		}
	})
}

func TestLocalHotWindow(t *testing.T) {
	testHotWindow(t, func(t *testing.T) recentBus {
		return NewLocal(LocalConfig{Deliverer: newRecorder(), HotWindow: HotWindow{Len: 10}})
	})
}

func TestRedisHotWindow(t *testing.T) {
	url := testsvc.Redis(t)
	testHotWindow(t, func(t *testing.T) recentBus {
		bus, err := NewRedis(RedisConfig{URL: url, ChannelPrefix: testsvc.UniqueName(t, "hw") + ":", Deliverer: newRecorder(), HotWindow: HotWindow{Len: 10}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { bus.Close() })
		return bus
	})
}

func TestLocalHotWindowForgetsIdleTopics(t *testing.T) {
	b := NewLocal(LocalConfig{Deliverer: newRecorder(), HotWindow: HotWindow{Len: 10, Age: time.Minute}})
	m := hotMessages("idle", 1)[0]
	b.hot.add(m, time.Now().Add(-2*time.Minute))
	if got, _, _ := b.Recent(context.Background(), "idle", ""); len(got) != 0 {
		t.Fatalf("an idle topic's window must be forgotten, got %d", len(got))
	}
}
