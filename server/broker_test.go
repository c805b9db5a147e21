package server

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/chatgg/chatgg/codec"
	"github.com/chatgg/chatgg/pubsub"
)

// gatedQueue holds Enqueue until released, failing it if told to.
type gatedQueue struct {
	gate chan error
}

func (q gatedQueue) Enqueue(ctx context.Context, _ []*codec.Message) error { return <-q.gate }

type nopBus struct{}

func (nopBus) Publish(context.Context, []*codec.Message) error { return nil }

type answer struct {
	id  string
	err error
}

func publishAsync(b *broker, m *codec.Message) chan answer {
	ch := make(chan answer, 1)
	b.Publish(m, func(id string, err error) { ch <- answer{id, err} })
	return ch
}

// TestRetryOfAnInFlightKeyIsNotAcked: a retry that arrives while the first
// attempt with its key is still being queued must not be acked (the first
// may fail, and then nothing would be stored); once the first is queued the
// retry is acked with its id.
func TestRetryOfAnInFlightKeyIsNotAcked(t *testing.T) {
	for _, tc := range []struct {
		name      string
		firstErr  error
		wantFirst bool
	}{
		{"first attempt succeeds", nil, true},
		{"first attempt fails", errors.New("queue down"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := gatedQueue{gate: make(chan error, 4)}
			b := newBroker(brokerConfig{Bus: nopBus{}, Queue: q, Dedup: pubsub.NewLocalDedup(time.Minute), Shards: 1})
			defer b.Close()
			msg := func(id string) *codec.Message {
				return &codec.Message{ID: id, Topic: "t", Key: "k", Kind: codec.KindJSON, Data: []byte("1")}
			}
			first := publishAsync(b, msg("0000000000010000000001"))
			// A retry on another node meets the key while the first attempt
			// is being queued: it must find it pending, not acked.
			d := b.cfg.Dedup
			eventually(t, 5*time.Second, "the first attempt to claim its key", func() bool {
				orig, fresh, err := d.Claim(context.Background(), "t", "k", pendingMark+"probe")
				if fresh {
					_ = d.Release(context.Background(), "t", "k", pendingMark+"probe")
					return false
				}
				if err != nil || orig != pendingMark+"0000000000010000000001" {
					t.Fatalf("while the first is in flight the key reads %q, %v; want it pending", orig, err)
				}
				return true
			})
			q.gate <- tc.firstErr
			if a := <-first; (a.err == nil) != tc.wantFirst {
				t.Fatalf("first attempt: %+v", a)
			}
			q.gate <- nil // the retry's enqueue, if it needs one
			again := <-publishAsync(b, msg("0000000000010000000003"))
			switch {
			case tc.wantFirst && (again.err != nil || again.id != "0000000000010000000001"):
				t.Fatalf("retry after a queued first: %+v, want the first id", again)
			case !tc.wantFirst && (again.err != nil || again.id != "0000000000010000000003"):
				t.Fatalf("retry after a failed first: %+v, want a new publish", again)
			}
		})
	}
}

func TestPublishWhileKeyInFlightAnswersConflict(t *testing.T) {
	q := gatedQueue{gate: make(chan error, 1)}
	d := pubsub.NewLocalDedup(time.Minute)
	_, _, _ = d.Claim(context.Background(), "t", "k", pendingMark+"0000000000010000000001")
	b := newBroker(brokerConfig{Bus: nopBus{}, Queue: q, Dedup: d, Shards: 1})
	defer b.Close()
	a := <-publishAsync(b, &codec.Message{ID: "0000000000010000000002", Topic: "t", Key: "k", Data: []byte("1")})
	if !errors.Is(a.err, ErrKeyInFlight) || publishStatus(a.err) != 409 {
		t.Fatalf("got %+v, want ErrKeyInFlight (409)", a)
	}
}
