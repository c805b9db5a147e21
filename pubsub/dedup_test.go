package pubsub

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeClock is a settable clock for LocalDedup.
type fakeClock struct{ ns atomic.Int64 }

func (c *fakeClock) now() int64              { return c.ns.Load() }
func (c *fakeClock) advance(d time.Duration) { c.ns.Add(int64(d)) }

func newTestLocalDedup(window time.Duration, maxEntries int) (*LocalDedup, *fakeClock) {
	d := NewLocalDedupSize(window, maxEntries)
	c := new(fakeClock)
	c.ns.Store(time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	d.now = c.now
	return d, c
}

// claimer is what LocalDedup and RedisDedup have in common, so the
// semantics are tested once for both.
type claimer interface {
	Claim(ctx context.Context, topic, key, id string) (string, bool, error)
	Release(ctx context.Context, topic, key, id string) error
}

// checkClaim asserts the outcome of one Claim.
func checkClaim(t *testing.T, d claimer, topic, key, id, wantExisting string, wantFresh bool) {
	t.Helper()
	existing, fresh, err := d.Claim(context.Background(), topic, key, id)
	if err != nil {
		t.Fatalf("Claim(%s, %s, %s): %v", topic, key, id, err)
	}
	if existing != wantExisting || fresh != wantFresh {
		t.Fatalf("Claim(%s, %s, %s) = (%q, %v), want (%q, %v)",
			topic, key, id, existing, fresh, wantExisting, wantFresh)
	}
}

// testClaimSemantics covers Claim and Release without expiry.
func testClaimSemantics(t *testing.T, d claimer) {
	ctx := context.Background()
	t.Run("FirstClaimIsFresh", func(t *testing.T) {
		checkClaim(t, d, "room", "a", "id1", "", true)
	})
	t.Run("SecondClaimReturnsFirstID", func(t *testing.T) {
		checkClaim(t, d, "room", "a", "id2", "id1", false)
		checkClaim(t, d, "room", "a", "id1", "id1", false)
	})
	t.Run("SameKeyOtherTopicIsFresh", func(t *testing.T) {
		checkClaim(t, d, "room2", "a", "id3", "", true)
	})
	t.Run("ColonsDoNotCollide", func(t *testing.T) {
		// Topics may contain ':'; "x:y"+"z" must not meet "x"+"y:z".
		checkClaim(t, d, "x:y", "z", "id4", "", true)
		checkClaim(t, d, "x", "y:z", "id5", "", true)
		checkClaim(t, d, "x:y", "z", "id6", "id4", false)
	})
	t.Run("ReleaseByOtherIDKeepsClaim", func(t *testing.T) {
		if err := d.Release(ctx, "room", "a", "id2"); err != nil {
			t.Fatal(err)
		}
		checkClaim(t, d, "room", "a", "id7", "id1", false)
	})
	t.Run("ReleaseByOwnerFreesKey", func(t *testing.T) {
		if err := d.Release(ctx, "room", "a", "id1"); err != nil {
			t.Fatal(err)
		}
		checkClaim(t, d, "room", "a", "id8", "", true)
		checkClaim(t, d, "room", "a", "id9", "id8", false)
	})
	t.Run("ReleaseUnknownKeyIsNoop", func(t *testing.T) {
		if err := d.Release(ctx, "room", "never", "id"); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("EmptyKeyAndLongKey", func(t *testing.T) {
		checkClaim(t, d, "room", "", "e1", "", true)
		checkClaim(t, d, "room", "", "e2", "e1", false)
		long := fmt.Sprintf("%0500d", 7)
		checkClaim(t, d, "room", long, "l1", "", true)
		checkClaim(t, d, "room", long, "l2", "l1", false)
	})
}

// testConcurrentClaims has n goroutines claim one key at once: exactly one
// wins and the others all see the winner's id.
func testConcurrentClaims(t *testing.T, d claimer, topic string) {
	const n = 32
	var (
		wg     sync.WaitGroup
		start  = make(chan struct{})
		fresh  atomic.Int32
		winner atomic.Value
		seen   = make([]string, n)
	)
	for i := range n {
		wg.Go(func() {
			<-start
			id := fmt.Sprintf("id%d", i)
			existing, ok, err := d.Claim(context.Background(), topic, "same", id)
			if err != nil {
				t.Error(err)
				return
			}
			if ok {
				fresh.Add(1)
				winner.Store(id)
			} else {
				seen[i] = existing
			}
		})
	}
	close(start)
	wg.Wait()
	if f := fresh.Load(); f != 1 {
		t.Fatalf("%d claims were fresh, want exactly 1", f)
	}
	w := winner.Load().(string)
	for i, s := range seen {
		if s != "" && s != w {
			t.Fatalf("claim %d saw existing id %q, winner was %q", i, s, w)
		}
	}
}

func TestLocalDedupClaimAndRelease(t *testing.T) {
	d, _ := newTestLocalDedup(time.Minute, 0)
	testClaimSemantics(t, d)
}

func TestLocalDedupConcurrentClaimsExactlyOneFresh(t *testing.T) {
	for round := range 20 {
		d := NewLocalDedup(time.Minute)
		testConcurrentClaims(t, d, fmt.Sprintf("room%d", round))
	}
}

func TestLocalDedupExpiresAfterWindow(t *testing.T) {
	d, clock := newTestLocalDedup(time.Second, 0)
	checkClaim(t, d, "room", "a", "id1", "", true)
	clock.advance(999 * time.Millisecond)
	checkClaim(t, d, "room", "a", "id2", "id1", false)
	clock.advance(time.Millisecond)
	checkClaim(t, d, "room", "a", "id3", "", true)
	checkClaim(t, d, "room", "a", "id4", "id3", false)
	// The old claim's queue item must not expire the new claim early.
	clock.advance(500 * time.Millisecond)
	checkClaim(t, d, "room", "b", "x", "", true) // triggers pruning
	checkClaim(t, d, "room", "a", "id5", "id3", false)
}

func TestLocalDedupReleaseAfterReclaimKeepsNewClaim(t *testing.T) {
	d, clock := newTestLocalDedup(time.Second, 0)
	checkClaim(t, d, "room", "a", "old", "", true)
	clock.advance(2 * time.Second)
	checkClaim(t, d, "room", "a", "new", "", true)
	// The first publisher's late Release must not free the new claim.
	if err := d.Release(context.Background(), "room", "a", "old"); err != nil {
		t.Fatal(err)
	}
	checkClaim(t, d, "room", "a", "again", "new", false)
}

func TestLocalDedupPrunesExpiredIncrementally(t *testing.T) {
	d, clock := newTestLocalDedup(time.Second, 0)
	const n = 1000
	for i := range n {
		checkClaim(t, d, "room", fmt.Sprint(i), "id", "", true)
	}
	if d.Len() != n {
		t.Fatalf("Len = %d, want %d", d.Len(), n)
	}
	clock.advance(2 * time.Second)
	// Each Claim removes at most dedupPruneBatch expired entries.
	checkClaim(t, d, "room", "fresh0", "id", "", true)
	if got, want := d.Len(), n-dedupPruneBatch+1; got != want {
		t.Fatalf("after one Claim Len = %d, want %d", got, want)
	}
	for i := 1; d.Len() > i; i++ {
		if i > n {
			t.Fatalf("expired entries never pruned: Len = %d", d.Len())
		}
		checkClaim(t, d, "room", fmt.Sprint("fresh", i), "id", "", true)
	}
}

func TestLocalDedupEvictsOldestOverCap(t *testing.T) {
	d, clock := newTestLocalDedup(time.Hour, 3)
	for i, key := range []string{"a", "b", "c", "d"} {
		checkClaim(t, d, "room", key, fmt.Sprint("id", i), "", true)
		clock.advance(time.Millisecond)
	}
	if d.Len() != 3 {
		t.Fatalf("Len = %d, want 3", d.Len())
	}
	checkClaim(t, d, "room", "b", "x", "id1", false)
	checkClaim(t, d, "room", "c", "x", "id2", false)
	checkClaim(t, d, "room", "d", "x", "id3", false)
	// "a" was the oldest and went; claiming it again evicts "b".
	checkClaim(t, d, "room", "a", "id4", "", true)
	checkClaim(t, d, "room", "b", "id5", "", true)
}

func TestLocalDedupCapCountsReleasedClaims(t *testing.T) {
	// Claim and release in a loop: memory stays bounded by the cap.
	d, _ := newTestLocalDedup(time.Hour, 10)
	for i := range 1000 {
		checkClaim(t, d, "room", "k", fmt.Sprint(i), "", true)
		if err := d.Release(context.Background(), "room", "k", fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	d.mu.Lock()
	n := d.order.len()
	d.mu.Unlock()
	if n > 10 {
		t.Fatalf("claim queue holds %d items, cap is 10", n)
	}
}

func TestLocalDedupDefaults(t *testing.T) {
	d := NewLocalDedup(0)
	if d.window != int64(DefaultDedupWindow) || d.maxEntries != DefaultDedupMaxEntries {
		t.Fatalf("window %v, max %d; want defaults", time.Duration(d.window), d.maxEntries)
	}
}

func TestRingKeepsOrderThroughGrowAndShrink(t *testing.T) {
	var r ring
	next, want := 0, 0
	push := func(n int) {
		for range n {
			r.push(dedupItem{seq: uint64(next)})
			next++
		}
	}
	pop := func(n int) {
		for range n {
			if got := r.pop().seq; got != uint64(want) {
				t.Fatalf("popped %d, want %d", got, want)
			}
			want++
		}
	}
	push(10)
	pop(7)
	push(20) // wraps, then grows from a wrapped state
	pop(20)
	push(5000)
	pop(4990) // shrinks several times
	push(3)
	pop(r.len())
	if r.len() != 0 {
		t.Fatalf("len %d", r.len())
	}
}
