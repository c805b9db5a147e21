package mq

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/chatgg/chatgg/codec"
)

func localStats(t *testing.T, q *Local) Stats {
	t.Helper()
	s, err := q.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestLocalStoresInFIFOOrder(t *testing.T) {
	q := NewLocal(LocalConfig{})
	sink := newRecSink()
	runWorker(t, func(ctx context.Context) error {
		return q.RunWorker(ctx, sink, fastRetry(WorkerConfig{BatchSize: 7}))
	})
	all := msgs(t, 1000)
	for b := range slices.Chunk(all, 10) {
		if err := q.Enqueue(context.Background(), b); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 20*time.Second, "all stored", func() bool { return sink.count() == len(all) })
	if got := sink.storedOrder(); !slices.Equal(got, ids(all)) {
		t.Fatalf("stored out of order")
	}
	sink.assertOnce(t, all)
	if s := localStats(t, q); s != (Stats{}) {
		t.Fatalf("stats after draining = %+v, want zero", s)
	}
}

func TestLocalEnqueueIsAllOrNothing(t *testing.T) {
	ctx := context.Background()
	q := NewLocal(LocalConfig{Capacity: 10})
	all := msgs(t, 20)
	tests := []struct {
		name  string
		batch []*codec.Message
		err   error
		depth int64
	}{
		{"empty batch", nil, nil, 0},
		{"fits", all[0:8], nil, 8},
		{"one too many", all[8:11], ErrFull, 8},
		{"fills exactly", all[8:10], nil, 10},
		{"full", all[10:11], ErrFull, 10},
		{"larger than capacity", all[:11], ErrFull, 10},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := q.Enqueue(ctx, tc.batch); !errors.Is(err, tc.err) {
				t.Fatalf("Enqueue = %v, want %v", err, tc.err)
			}
			if s := localStats(t, q); s.Depth != tc.depth {
				t.Fatalf("Depth = %d, want %d", s.Depth, tc.depth)
			}
		})
	}
}

func TestLocalInFlightMessagesCountTowardsCapacity(t *testing.T) {
	q := NewLocal(LocalConfig{Capacity: 10})
	sink := newRecSink()
	sink.setDown(true)
	runWorker(t, func(ctx context.Context) error {
		return q.RunWorker(ctx, sink, fastRetry(WorkerConfig{DrainTimeout: time.Millisecond}))
	})
	all := msgs(t, 11)
	if err := q.Enqueue(context.Background(), all[:10]); err != nil {
		t.Fatal(err)
	}
	eventually(t, 15*time.Second, "worker holds the batch", func() bool {
		return localStats(t, q).Processing == 10
	})
	if err := q.Enqueue(context.Background(), all[10:]); !errors.Is(err, ErrFull) {
		t.Fatalf("Enqueue with 10 in flight = %v, want ErrFull", err)
	}
	sink.setDown(false)
	eventually(t, 15*time.Second, "stored", func() bool { return sink.count() == 10 })
	eventually(t, 15*time.Second, "in-flight count released", func() bool {
		return localStats(t, q) == Stats{}
	})
	if err := q.Enqueue(context.Background(), all[10:]); err != nil {
		t.Fatalf("Enqueue after draining = %v", err)
	}
}

func TestLocalBatchesUpToBatchSize(t *testing.T) {
	q := NewLocal(LocalConfig{})
	all := msgs(t, 25)
	if err := q.Enqueue(context.Background(), all); err != nil {
		t.Fatal(err)
	}
	sink := newRecSink()
	runWorker(t, func(ctx context.Context) error {
		return q.RunWorker(ctx, sink, fastRetry(WorkerConfig{BatchSize: 10}))
	})
	eventually(t, 15*time.Second, "all stored", func() bool { return sink.count() == 25 })
	if got, want := sink.batchSizes(), []int{10, 10, 5}; !slices.Equal(got, want) {
		t.Fatalf("batch sizes = %v, want %v", got, want)
	}
}

func TestLocalWaitsMaxWaitForBatchToFill(t *testing.T) {
	q := NewLocal(LocalConfig{})
	sink := newRecSink()
	// A MaxWait far above the time this test needs between its two
	// enqueues: the second message must join the first one's batch.
	runWorker(t, func(ctx context.Context) error {
		return q.RunWorker(ctx, sink, WorkerConfig{BatchSize: 10, MaxWait: 2 * time.Second})
	})
	all := msgs(t, 2)
	if err := q.Enqueue(context.Background(), all[:1]); err != nil {
		t.Fatal(err)
	}
	eventually(t, 15*time.Second, "worker took the first message", func() bool {
		return localStats(t, q).Processing == 1
	})
	if err := q.Enqueue(context.Background(), all[1:]); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "partial batch stored after MaxWait", func() bool { return sink.count() == 2 })
	if got := sink.batchSizes(); !slices.Equal(got, []int{2}) {
		t.Fatalf("batch sizes = %v, want [2]", got)
	}
}

func TestLocalRetriesFailedStore(t *testing.T) {
	q := NewLocal(LocalConfig{})
	sink := newRecSink()
	sink.failNextCalls(3)
	all := msgs(t, 10)
	if err := q.Enqueue(context.Background(), all); err != nil {
		t.Fatal(err)
	}
	runWorker(t, func(ctx context.Context) error {
		return q.RunWorker(ctx, sink, fastRetry(WorkerConfig{}))
	})
	eventually(t, 15*time.Second, "stored after retries", func() bool { return sink.count() == 10 })
	sink.assertOnce(t, all)
	if n := sink.numCalls(); n != 4 {
		t.Fatalf("Store called %d times, want 4 (3 failures, then the same batch)", n)
	}
	if got := sink.batchSizes(); !slices.Equal(got, []int{10}) {
		t.Fatalf("batch sizes = %v, want [10]", got)
	}
}

func TestLocalDrainsQueueOnCancel(t *testing.T) {
	q := NewLocal(LocalConfig{})
	all := msgs(t, 1234)
	if err := q.Enqueue(context.Background(), all); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // stop requested before the worker even started
	sink := newRecSink()
	if err := q.RunWorker(ctx, sink, WorkerConfig{BatchSize: 100}); err != nil {
		t.Fatalf("RunWorker = %v, want nil after draining", err)
	}
	sink.assertOnce(t, all)
	if !slices.Equal(sink.storedOrder(), ids(all)) {
		t.Fatal("drained out of order")
	}
}

func TestLocalDrainTimeoutLeavesMessagesQueued(t *testing.T) {
	q := NewLocal(LocalConfig{})
	sink := newRecSink()
	sink.setDown(true)
	stop := runWorker(t, func(ctx context.Context) error {
		return q.RunWorker(ctx, sink, fastRetry(WorkerConfig{BatchSize: 4, DrainTimeout: 50 * time.Millisecond}))
	})
	all := msgs(t, 10)
	if err := q.Enqueue(context.Background(), all); err != nil {
		t.Fatal(err)
	}
	eventually(t, 15*time.Second, "worker holds a batch", func() bool {
		return localStats(t, q).Processing == 4
	})
	if err := stop(); err == nil {
		t.Fatal("RunWorker = nil, want an error: the sink never recovered")
	}
	if s := localStats(t, q); s != (Stats{Depth: 10}) {
		t.Fatalf("stats after failed drain = %+v, want all 10 queued", s)
	}
	// The batch went back to the head: a new worker stores in order.
	sink.setDown(false)
	runWorker(t, func(ctx context.Context) error {
		return q.RunWorker(ctx, sink, fastRetry(WorkerConfig{}))
	})
	eventually(t, 15*time.Second, "stored", func() bool { return sink.count() == 10 })
	if !slices.Equal(sink.storedOrder(), ids(all)) {
		t.Fatal("stored out of order after the batch was given back")
	}
}

func TestLocalCloseRejectsEnqueue(t *testing.T) {
	q := NewLocal(LocalConfig{})
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	if err := q.Enqueue(context.Background(), msgs(t, 1)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Enqueue after Close = %v, want ErrClosed", err)
	}
	if err := q.Ping(context.Background()); err != nil {
		t.Fatalf("Ping = %v", err)
	}
}

func TestLocalManyProducersAndWorkersStoreEachMessageOnce(t *testing.T) {
	q := NewLocal(LocalConfig{Capacity: 1000})
	sink := newRecSink()
	var stops []func() error
	for range 4 {
		stops = append(stops, runWorker(t, func(ctx context.Context) error {
			return q.RunWorker(ctx, sink, fastRetry(WorkerConfig{BatchSize: 50}))
		}))
	}
	all := msgs(t, 20000)
	var wg sync.WaitGroup
	for p := range 4 {
		wg.Go(func() {
			mine := all[p*5000 : (p+1)*5000]
			for b := range slices.Chunk(mine, 25) {
				for {
					err := q.Enqueue(context.Background(), b)
					if err == nil {
						break
					}
					if !errors.Is(err, ErrFull) {
						t.Error(err)
						return
					}
					time.Sleep(time.Millisecond) // back off while the workers catch up
				}
			}
		})
	}
	wg.Wait()
	for _, stop := range stops {
		if err := stop(); err != nil {
			t.Fatal(err)
		}
	}
	sink.assertOnce(t, all)
}
