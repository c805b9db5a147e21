package storage

import (
	"bytes"
	"context"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/chatgg/chatgg/codec"
	"github.com/chatgg/chatgg/internal/testsvc"
)

// benchBatchSizes are the batch sizes the Store benchmarks sweep; 500 is the
// worker's batch.
var benchBatchSizes = []int{1, 50, 500}

// benchStore stores b.N batches of size new messages (64-byte text data) and
// reports msgs/s. Only Store is timed: building the next batch is not.
func benchStore(b *testing.B, s Store, size int) {
	ctx := context.Background()
	data := bytes.Repeat([]byte("x"), 64)
	batch := make([]*codec.Message, size)
	for i := range batch {
		batch[i] = &codec.Message{Topic: "bench", Kind: codec.KindText, Data: data}
	}
	var idBuf [codec.IDLen]byte
	seq := 0
	var stored time.Duration
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		for _, m := range batch {
			m.TS = baseMs + int64(seq>>10)
			m.ID = string(codec.AppendID(idBuf[:0], m.TS, 1, uint32(seq&1023)))
			seq++
		}
		b.StartTimer()
		start := time.Now()
		if err := s.Store(ctx, batch); err != nil {
			b.Fatal(err)
		}
		stored += time.Since(start)
	}
	b.ReportMetric(float64(seq)/stored.Seconds(), "msgs/s")
}

func BenchmarkBoltStore(b *testing.B) {
	for _, size := range benchBatchSizes {
		b.Run("batch="+strconv.Itoa(size), func(b *testing.B) {
			s, err := NewBolt(BoltConfig{Path: filepath.Join(b.TempDir(), "bench.db")})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			benchStore(b, s, size)
		})
	}
}

func BenchmarkCouchStore(b *testing.B) {
	for _, size := range benchBatchSizes {
		b.Run("batch="+strconv.Itoa(size), func(b *testing.B) {
			benchStore(b, newCouch(b, CouchConfig{URL: couchDBURL(b, testsvc.Couch(b))}), size)
		})
	}
}

// BenchmarkBoltHistory reads pages of 100 from a topic of 10,000 messages.
func BenchmarkBoltHistory(b *testing.B) {
	s, err := NewBolt(BoltConfig{Path: filepath.Join(b.TempDir(), "bench.db")})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	for i := 0; i < 10_000; i += 500 {
		if err := s.Store(ctx, msgs("bench", i, i+500)); err != nil {
			b.Fatal(err)
		}
	}
	after := ""
	b.ReportAllocs()
	for b.Loop() {
		page, err := s.History(ctx, "bench", after, 100)
		if err != nil {
			b.Fatal(err)
		}
		after = ""
		if len(page) == 100 {
			after = page[99].ID
		}
	}
}
