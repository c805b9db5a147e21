package mq

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/chatgg/chatgg/codec"
	"github.com/chatgg/chatgg/internal/testsvc"
)

func TestMain(m *testing.M) { testsvc.Main(m) }

var (
	errSinkDown   = errors.New("test sink: down")
	errSinkFailed = errors.New("test sink: failed")
	errPoison     = errors.New("test sink: poison message")
)

// recSink is an in-memory Sink that records what it stored. Like the real
// stores it is idempotent by ID, but it also counts how often each ID was
// part of a successful Store, so tests can assert exactly-once delivery.
// It can be told to fail.
type recSink struct {
	mu       sync.Mutex
	order    []string       // ids in the order first stored
	stored   map[string]int // id → successful Stores that contained it
	batches  []int          // sizes of the successful Stores
	calls    int            // every Store call
	failNext int            // fail this many upcoming calls
	down     bool           // fail every call; Ping fails too
	poison   map[string]bool
}

func newRecSink() *recSink {
	return &recSink{stored: map[string]int{}, poison: map[string]bool{}}
}

func (s *recSink) Store(ctx context.Context, batch []*codec.Message) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	if s.down {
		return errSinkDown
	}
	if s.failNext > 0 {
		s.failNext--
		return errSinkFailed
	}
	for _, m := range batch {
		if s.poison[m.ID] {
			return errPoison
		}
	}
	for _, m := range batch {
		if s.stored[m.ID] == 0 {
			s.order = append(s.order, m.ID)
		}
		s.stored[m.ID]++
	}
	s.batches = append(s.batches, len(batch))
	return nil
}

func (s *recSink) Ping(context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.down {
		return errSinkDown
	}
	return nil
}

func (s *recSink) setDown(down bool) {
	s.mu.Lock()
	s.down = down
	s.mu.Unlock()
}

func (s *recSink) setPoison(id string, on bool) {
	s.mu.Lock()
	s.poison[id] = on
	s.mu.Unlock()
}

func (s *recSink) failNextCalls(n int) {
	s.mu.Lock()
	s.failNext = n
	s.mu.Unlock()
}

// count returns how many distinct ids were stored.
func (s *recSink) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.order)
}

func (s *recSink) numCalls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

func (s *recSink) storedOrder() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.order)
}

func (s *recSink) batchSizes() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.batches)
}

// assertOnce fails unless every message in want was stored exactly once and
// nothing else was stored.
func (s *recSink) assertOnce(t *testing.T, want []*codec.Message) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, m := range want {
		if n := s.stored[m.ID]; n != 1 {
			t.Errorf("message %s stored %d times, want 1", m.ID, n)
		}
	}
	if len(s.stored) != len(want) {
		t.Errorf("stored %d distinct messages, want %d", len(s.stored), len(want))
	}
}

// noPingSink hides recSink's Ping: a Sink that cannot say whether it is up.
type noPingSink struct{ s *recSink }

func (n noPingSink) Store(ctx context.Context, batch []*codec.Message) error {
	return n.s.Store(ctx, batch)
}

// msgs returns n messages with distinct, increasing ids.
func msgs(t testing.TB, n int) []*codec.Message {
	t.Helper()
	gen := codec.NewIDGen(7)
	now := time.Now().UnixMilli()
	out := make([]*codec.Message, n)
	for i := range out {
		out[i] = &codec.Message{
			ID:    gen.Next(now),
			Topic: "room",
			TS:    now,
			Kind:  codec.KindText,
			Data:  fmt.Appendf(nil, "message %d", i),
		}
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

// eventually polls cond every 10 ms until it holds or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond) // poll interval, not an assertion
	}
}

// runWorker runs fn on a goroutine and returns a function that cancels it
// and returns its error. The worker is also stopped in t.Cleanup.
func runWorker(t *testing.T, fn func(ctx context.Context) error) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fn(ctx) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(30 * time.Second):
				err = errors.New("worker did not stop within 30s")
			}
		})
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

// fastRetry is a WorkerConfig that retries quickly, for tests.
func fastRetry(cfg WorkerConfig) WorkerConfig {
	if cfg.RetryBase == 0 {
		cfg.RetryBase = time.Millisecond
	}
	if cfg.RetryMax == 0 {
		cfg.RetryMax = 20 * time.Millisecond
	}
	if cfg.BlockTimeout == 0 {
		cfg.BlockTimeout = 100 * time.Millisecond // quick stops
	}
	if cfg.MaxWait == 0 {
		cfg.MaxWait = 5 * time.Millisecond
	}
	return cfg
}
