package pubsub

import (
	"context"
	"errors"
	"testing"
)

func TestLocalPublishDeliversInOrderSynchronously(t *testing.T) {
	rec := newRecorder()
	l := NewLocal(LocalConfig{Deliverer: rec})
	defer l.Close()

	l.Subscribe("room") // no-op, must not be needed
	want := batchOf("room", 0, 10)
	want = append(want, msg("other", 10))
	if err := l.Publish(context.Background(), want); err != nil {
		t.Fatal(err)
	}
	// No waiting: Publish returns after delivery.
	got := rec.all()
	if len(got) != len(want) {
		t.Fatalf("delivered %d messages, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] { // the same pointer: no copy on the local bus
			t.Fatalf("message %d: got %s, want %s", i, got[i].ID, want[i].ID)
		}
	}
	l.Unsubscribe("room") // no-op: the Deliverer filters
	if err := l.Publish(context.Background(), batchOf("room", 20, 21)); err != nil {
		t.Fatal(err)
	}
	if n := len(rec.all()); n != len(want)+1 {
		t.Fatalf("after Unsubscribe delivered %d, want %d", n, len(want)+1)
	}
}

func TestLocalPublishEmptyBatch(t *testing.T) {
	rec := newRecorder()
	l := NewLocal(LocalConfig{Deliverer: rec})
	if err := l.Publish(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	if n := len(rec.all()); n != 0 {
		t.Fatalf("delivered %d", n)
	}
}

func TestLocalPublishHonoursDoneContext(t *testing.T) {
	rec := newRecorder()
	l := NewLocal(LocalConfig{Deliverer: rec})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := l.Publish(ctx, batchOf("room", 0, 3)); !errors.Is(err, context.Canceled) {
		t.Fatalf("Publish with cancelled ctx = %v, want context.Canceled", err)
	}
	if n := len(rec.all()); n != 0 {
		t.Fatalf("delivered %d after cancel", n)
	}
}

func TestLocalClosedRejectsPublishAndPing(t *testing.T) {
	l := NewLocal(LocalConfig{Deliverer: newRecorder()})
	if err := l.Ping(context.Background()); err != nil {
		t.Fatalf("Ping = %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close = %v", err)
	}
	if err := l.Publish(context.Background(), batchOf("room", 0, 1)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Publish after Close = %v, want ErrClosed", err)
	}
	if err := l.Ping(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Ping after Close = %v, want ErrClosed", err)
	}
}

func TestNewLocalPanicsWithoutDeliverer(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("NewLocal with nil Deliverer did not panic")
		}
	}()
	NewLocal(LocalConfig{})
}
