package server

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/chatgg/chatgg/codec"
	"github.com/chatgg/chatgg/mq"
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
		{"first attempt refused by the queue", mq.ErrFull, false},
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
				if id, _, ok := parsePending(orig); err != nil || !ok || id != "0000000000010000000001" {
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
	ids := codec.NewIDGen(1)
	_, _, _ = d.Claim(context.Background(), "t", "k", pendingMark+ids.Next(time.Now().UnixMilli()))
	b := newBroker(brokerConfig{Bus: nopBus{}, Queue: q, Dedup: d, Shards: 1})
	defer b.Close()
	a := <-publishAsync(b, &codec.Message{ID: ids.Next(time.Now().UnixMilli()), Topic: "t", Key: "k", Data: []byte("1")})
	if !errors.Is(a.err, ErrKeyInFlight) || publishStatus(a.err) != 409 {
		t.Fatalf("got %+v, want ErrKeyInFlight (409)", a)
	}
}

// recordingQueue records every batch and answers each Enqueue from errs
// (nil once it is empty), as a queue whose reply may be lost after it took
// the batch.
type recordingQueue struct {
	mu      sync.Mutex
	errs    []error
	queued  []string // ids, in order, whatever the answer
	answers int
}

func (q *recordingQueue) Enqueue(_ context.Context, batch []*codec.Message) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, m := range batch {
		q.queued = append(q.queued, m.ID)
	}
	q.answers++
	if len(q.errs) == 0 {
		return nil
	}
	err := q.errs[0]
	q.errs = q.errs[1:]
	return err
}

func (q *recordingQueue) ids() []string {
	q.mu.Lock()
	defer q.mu.Unlock()
	return append([]string(nil), q.queued...)
}

// TestUnknownEnqueueOutcomeKeepsTheKey: when the queue call fails without
// saying whether it took the batch (a lost connection), the key stays
// pending: a retry soon after is told the first is in flight (409), and a
// retry once the claim is stale takes it over and publishes under the
// first attempt's id, so storage (idempotent by id) keeps one message
// whichever way the first attempt went. A refusal the queue did report
// frees the key at once.
func TestUnknownEnqueueOutcomeKeepsTheKey(t *testing.T) {
	q := &recordingQueue{errs: []error{errors.New("connection reset by peer")}}
	d := pubsub.NewLocalDedup(time.Minute)
	b := newBroker(brokerConfig{Bus: nopBus{}, Queue: q, Dedup: d, Shards: 1, Timeout: 50 * time.Millisecond})
	defer b.Close()
	ids := codec.NewIDGen(1)
	msg := func() *codec.Message {
		now := time.Now().UnixMilli()
		return &codec.Message{ID: ids.Next(now), TS: now, Topic: "t", Key: "k", Kind: codec.KindJSON, Data: []byte("1")}
	}
	first := msg()
	firstID := first.ID
	if a := <-publishAsync(b, first); !errors.Is(a.err, ErrOutcomeUnknown) || publishStatus(a.err) != 503 {
		t.Fatalf("first attempt: %+v, want ErrOutcomeUnknown (503)", a)
	}
	if a := <-publishAsync(b, msg()); !errors.Is(a.err, ErrKeyInFlight) {
		t.Fatalf("retry at once: %+v, want ErrKeyInFlight", a)
	}
	time.Sleep(b.staleAfter() + 20*time.Millisecond)
	retry := msg()
	a := <-publishAsync(b, retry)
	if a.err != nil || a.id != firstID || retry.ID != firstID || retry.TS != codec.IDTime(firstID) {
		t.Fatalf("retry of a stale claim: %+v (message id %s, ts %d), want the first id %s", a, retry.ID, retry.TS, firstID)
	}
	if got := q.ids(); len(got) != 2 || got[0] != firstID || got[1] != firstID {
		t.Fatalf("queued %v, want the first id twice (storage keeps one)", got)
	}
	if a := <-publishAsync(b, msg()); a.err != nil || a.id != firstID {
		t.Fatalf("later retry: %+v, want acked with %s", a, firstID)
	}

	// A refusal the queue reported frees the key: the retry is new.
	q.mu.Lock()
	q.errs = []error{mq.ErrFull}
	q.mu.Unlock()
	refusedFirst := msg()
	refusedFirst.Key = "k2"
	if a := <-publishAsync(b, refusedFirst); !errors.Is(a.err, mq.ErrFull) || errors.Is(a.err, ErrOutcomeUnknown) {
		t.Fatalf("refused first: %+v", a)
	}
	again := msg()
	again.Key = "k2"
	if a := <-publishAsync(b, again); a.err != nil || a.id != again.ID || a.id == refusedFirst.ID {
		t.Fatalf("retry after a refusal: %+v, want a new publish under %s", a, again.ID)
	}
}

func TestParsePending(t *testing.T) {
	const id = "01a2295000000001000000"
	for _, tc := range []struct {
		v      string
		ms     int64
		wantOK bool
	}{
		{pendingMark + id, codec.IDTime(id), true},
		{pendingClaim(id, 0x19a0), 0x19a0, true},
		{id, 0, false},                    // committed, not pending
		{pendingMark + "probe", 0, false}, // not an id
		{pendingMark + id + "@zz", 0, false},
	} {
		gotID, ms, ok := parsePending(tc.v)
		if ok != tc.wantOK || (ok && (gotID != id || ms != tc.ms)) {
			t.Errorf("parsePending(%q) = %q, %d, %v; want %v, %d", tc.v, gotID, ms, ok, tc.wantOK, tc.ms)
		}
	}
}
