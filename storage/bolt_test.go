package storage

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func openBolt(t *testing.T) Store {
	t.Helper()
	b, err := NewBolt(BoltConfig{Path: filepath.Join(t.TempDir(), "test.db")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Error(err)
		}
	})
	return b
}

func TestBoltConformance(t *testing.T) { testConformance(t, openBolt) }

func TestBoltHistorySurvivesReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "chatgg.db")
	b, err := NewBolt(BoltConfig{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	all := msgs("room", 0, 10)
	store(t, b, all[:6])
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Ping(t.Context()); err == nil {
		t.Error("Ping after Close = nil, want an error")
	}

	b, err = NewBolt(BoltConfig{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	got := history(t, b, "room", "", 100)
	sameIDs(t, "History after reopen", got, ids(all[:6]))
	for i := range got {
		sameMessage(t, got[i], all[i])
	}
	// Re-storing after the reopen is still idempotent.
	store(t, b, all)
	sameIDs(t, "History", history(t, b, "room", "", 100), ids(all))
}

func TestNewBoltCreatesDirWithDefaultFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data", "nested")
	b, err := NewBolt(BoltConfig{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := os.Stat(filepath.Join(dir, DefaultBoltFile)); err != nil {
		t.Fatalf("store file: %v", err)
	}
}

func TestNewBoltTimesOutOnLockedFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "chatgg.db")
	b, err := NewBolt(BoltConfig{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	start := time.Now()
	if b2, err := NewBolt(BoltConfig{Path: path, OpenTimeout: 100 * time.Millisecond}); err == nil {
		b2.Close()
		t.Fatal("second NewBolt on an open file succeeded")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("second NewBolt took %v, want about its OpenTimeout", d)
	}
}

func TestBoltStoreHonoursCanceledContext(t *testing.T) {
	b := openBolt(t)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := b.Store(ctx, msgs("room", 0, 1)); err == nil {
		t.Fatal("Store with a canceled context = nil, want an error")
	}
	sameIDs(t, "History", history(t, b, "room", "", 10), nil)
}

// TestBoltHistoryCopiesData checks that returned messages own their Data:
// bbolt's memory is valid only inside the read transaction.
func TestBoltHistoryCopiesData(t *testing.T) {
	b := openBolt(t)
	store(t, b, msgs("room", 0, 3))
	first := history(t, b, "room", "", 3)
	// Writes after the read may remap and reuse the pages first came from.
	for i := range 20 {
		store(t, b, msgs("room", 3+i*200, 3+(i+1)*200))
	}
	want := msgs("room", 0, 3)
	for i, m := range first {
		sameMessage(t, m, want[i])
	}
}
