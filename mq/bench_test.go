package mq

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chatgg/chatgg/codec"
	"github.com/chatgg/chatgg/internal/testsvc"
)

// benchMsgs returns n messages with a payload of size bytes.
func benchMsgs(b *testing.B, n, size int) []*codec.Message {
	ms := msgs(b, n)
	data := bytes.Repeat([]byte("x"), size)
	for _, m := range ms {
		m.Data = data
	}
	return ms
}

// countSink stores nothing and counts messages.
type countSink struct{ n atomic.Int64 }

func (s *countSink) Store(_ context.Context, batch []*codec.Message) error {
	s.n.Add(int64(len(batch)))
	return nil
}

func reportRate(b *testing.B, msgsPerOp int) {
	if s := b.Elapsed().Seconds(); s > 0 {
		b.ReportMetric(float64(b.N*msgsPerOp)/s, "msgs/s")
	}
}

func BenchmarkLocalEnqueue(b *testing.B) {
	for _, size := range []int{1, 100} {
		b.Run(fmt.Sprintf("batch=%d", size), func(b *testing.B) {
			const capacity = 1 << 20
			q := NewLocal(LocalConfig{Capacity: capacity})
			batch := benchMsgs(b, size, 100)
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				err := q.Enqueue(ctx, batch)
				if errors.Is(err, ErrFull) {
					b.StopTimer()
					q.mu.Lock()
					clear(q.ring)
					q.head, q.n = 0, 0
					q.mu.Unlock()
					b.StartTimer()
					err = q.Enqueue(ctx, batch)
				}
				if err != nil {
					b.Fatal(err)
				}
			}
			reportRate(b, size)
		})
	}
}

// BenchmarkLocalThroughput measures enqueue-to-Store: one producer, one
// worker, a Sink that does nothing.
func BenchmarkLocalThroughput(b *testing.B) {
	q := NewLocal(LocalConfig{})
	sink := &countSink{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- q.RunWorker(ctx, sink, WorkerConfig{}) }()
	batch := benchMsgs(b, 100, 100)
	b.ReportAllocs()
	for b.Loop() {
		for {
			err := q.Enqueue(context.Background(), batch)
			if err == nil {
				break
			}
			if !errors.Is(err, ErrFull) {
				b.Fatal(err)
			}
			time.Sleep(10 * time.Microsecond) // let the worker catch up
		}
	}
	for sink.n.Load() < int64(b.N*len(batch)) {
		time.Sleep(100 * time.Microsecond)
	}
	reportRate(b, len(batch))
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}

func benchRedis(b *testing.B) (*Redis, func()) {
	url := testsvc.Redis(b)
	r, err := NewRedis(RedisConfig{URL: url, Queue: testsvc.UniqueName(b, "mqbench")})
	if err != nil {
		b.Fatal(err)
	}
	reset := func() {
		c := r.client
		keys, err := c.Do(context.Background(), c.B().Keys().Pattern(r.queue+"*").Build()).AsStrSlice()
		if err != nil {
			b.Fatal(err)
		}
		if len(keys) > 0 {
			if err := c.Do(context.Background(), c.B().Del().Key(keys...).Build()).Error(); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Cleanup(func() { reset(); r.Close() })
	return r, reset
}

func BenchmarkRedisEnqueue(b *testing.B) {
	for _, size := range []int{1, 100} {
		b.Run(fmt.Sprintf("batch=%d", size), func(b *testing.B) {
			r, reset := benchRedis(b)
			batch := benchMsgs(b, size, 100)
			ctx := context.Background()
			i := 0
			b.ReportAllocs()
			for b.Loop() {
				if err := r.Enqueue(ctx, batch); err != nil {
					b.Fatal(err)
				}
				if i++; i%1000 == 0 { // keep Redis's memory small
					b.StopTimer()
					reset()
					b.StartTimer()
				}
			}
			reportRate(b, size)
		})
	}
}

// BenchmarkRedisEnqueueParallel is BenchmarkRedisEnqueue with 100-message
// batches from GOMAXPROCS goroutines, which rueidis pipelines together.
func BenchmarkRedisEnqueueParallel(b *testing.B) {
	r, _ := benchRedis(b)
	batch := benchMsgs(b, 100, 100)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := r.Enqueue(context.Background(), batch); err != nil {
				b.Error(err)
				return
			}
		}
	})
	reportRate(b, len(batch))
}

// BenchmarkRedisWorker measures one worker draining a filled queue into a
// Sink that does nothing; an op is a 100-message batch.
func BenchmarkRedisWorker(b *testing.B) {
	r, _ := benchRedis(b)
	batch := benchMsgs(b, 100, 100)
	for range b.N {
		if err := r.Enqueue(context.Background(), batch); err != nil {
			b.Fatal(err)
		}
	}
	sink := &countSink{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	b.ReportAllocs()
	b.ResetTimer()
	go func() { done <- r.RunWorker(ctx, sink, WorkerConfig{BlockTimeout: 100 * time.Millisecond}) }()
	for sink.n.Load() < int64(b.N*len(batch)) {
		time.Sleep(100 * time.Microsecond)
	}
	b.StopTimer()
	reportRate(b, len(batch))
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}
