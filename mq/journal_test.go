package mq

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// TestJournalRecoversWhatWasNotStored: a journaled Local that dies holding
// accepted messages (no drain) gives them back to the next Local on the
// same journal; once stored they leave the journal.
func TestJournalRecoversWhatWasNotStored(t *testing.T) {
	path := filepath.Join(t.TempDir(), DefaultJournalFile)
	j, err := OpenJournal(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	q := NewLocal(LocalConfig{Journal: j})
	if got, err := q.Recover(); len(got) != 0 || err != nil {
		t.Fatalf("Recover on a new journal = %d, %v", len(got), err)
	}
	all := msgs(t, 30)
	for i := 0; i < len(all); i += 10 {
		if err := q.Enqueue(context.Background(), all[i:i+10]); err != nil {
			t.Fatal(err)
		}
	}
	// The process dies: no worker ran, nothing was drained.
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}

	j2, err := OpenJournal(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer j2.Close()
	q2 := NewLocal(LocalConfig{Journal: j2})
	if got, err := q2.Recover(); !slices.Equal(ids(got), ids(all)) || err != nil {
		t.Fatalf("Recover = %v, %v; want %v", ids(got), err, ids(all))
	}
	sink := newRecSink()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- q2.RunWorker(ctx, sink, WorkerConfig{BatchSize: 7, MaxWait: time.Millisecond}) }()
	eventually(t, 10*time.Second, "recovered messages stored", func() bool { return sink.count() == len(all) })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(sink.storedOrder(), ids(all)) {
		t.Fatalf("stored %v, want %v in order", sink.storedOrder(), ids(all))
	}
	left, err := j2.load()
	if err != nil || len(left) != 0 {
		t.Fatalf("journal after storing holds %d messages (%v), want none", len(left), err)
	}
}

// TestJournalFailureRefusesTheBatch: a batch the journal cannot take is
// refused, not accepted in memory only.
func TestJournalFailureRefusesTheBatch(t *testing.T) {
	j, err := OpenJournal(filepath.Join(t.TempDir(), DefaultJournalFile), nil)
	if err != nil {
		t.Fatal(err)
	}
	q := NewLocal(LocalConfig{Journal: j})
	_ = j.Close() // every write fails from now on
	if err := q.Enqueue(context.Background(), msgs(t, 3)); !errors.Is(err, ErrNotQueued) {
		t.Fatalf("Enqueue with a closed journal = %v, want ErrNotQueued", err)
	}
	if s, _ := q.Stats(context.Background()); s.Depth != 0 {
		t.Fatalf("depth %d after a refused batch, want 0", s.Depth)
	}
}
