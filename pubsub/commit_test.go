package pubsub

import (
	"context"
	"testing"
	"time"

	"github.com/chatgg/chatgg/internal/testsvc"
)

// committer is the claim life cycle both dedup windows offer.
type committer interface {
	Claim(ctx context.Context, topic, key, id string) (string, bool, error)
	Commit(ctx context.Context, topic, key, pending, final string) (bool, error)
	Release(ctx context.Context, topic, key, id string) error
}

func testCommit(t *testing.T, d committer) {
	ctx := context.Background()
	if _, fresh, err := d.Claim(ctx, "t", "k", "~1"); !fresh || err != nil {
		t.Fatalf("first claim: %v %v", fresh, err)
	}
	if won, err := d.Commit(ctx, "t", "k", "~other", "other"); won || err != nil {
		t.Fatalf("commit of another claim: %v %v, want false", won, err)
	}
	if v, fresh, _ := d.Claim(ctx, "t", "k", "~2"); fresh || v != "~1" {
		t.Fatalf("a commit for another claim changed it: %q %v", v, fresh)
	}
	// A swap between pending values (a retry taking a stale claim over):
	// one of two racing retries wins.
	if won, err := d.Commit(ctx, "t", "k", "~1", "~1@a"); !won || err != nil {
		t.Fatalf("take-over: %v %v, want true", won, err)
	}
	if won, _ := d.Commit(ctx, "t", "k", "~1", "~1@b"); won {
		t.Fatal("a second take-over of the same claim won too")
	}
	if won, err := d.Commit(ctx, "t", "k", "~1@a", "1"); !won || err != nil {
		t.Fatalf("commit: %v %v, want true", won, err)
	}
	if v, fresh, _ := d.Claim(ctx, "t", "k", "~3"); fresh || v != "1" {
		t.Fatalf("after commit the key reads %q %v, want 1", v, fresh)
	}
	// A committed key is not released by the pending id any more.
	_ = d.Release(ctx, "t", "k", "~1")
	if v, fresh, _ := d.Claim(ctx, "t", "k", "~4"); fresh || v != "1" {
		t.Fatalf("released a committed key: %q %v", v, fresh)
	}
}

func TestLocalDedupCommit(t *testing.T) { testCommit(t, NewLocalDedup(time.Minute)) }

func TestRedisDedupCommit(t *testing.T) {
	d, _ := newTestRedisDedup(t, testsvc.Redis(t), time.Minute)
	testCommit(t, d)
}
