package pubsub

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/chatgg/chatgg/internal/testsvc"
)

func newTestRedisDedup(t *testing.T, url string, window time.Duration) (*RedisDedup, string) {
	t.Helper()
	prefix := testsvc.UniqueName(t, "dd") + ":"
	d, err := NewRedisDedup(RedisDedupConfig{URL: url, Prefix: prefix, Window: window})
	if err != nil {
		t.Fatalf("NewRedisDedup: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	return d, prefix
}

func TestRedisDedupClaimAndRelease(t *testing.T) {
	for _, legacy := range []bool{false, true} {
		t.Run(fmt.Sprintf("legacy=%v", legacy), func(t *testing.T) {
			d, _ := newTestRedisDedup(t, testsvc.Redis(t), time.Minute)
			d.legacy.Store(legacy) // true: the Lua path for Redis < 7
			testClaimSemantics(t, d)
		})
	}
}

func TestRedisDedupConcurrentClaimsExactlyOneFresh(t *testing.T) {
	for _, legacy := range []bool{false, true} {
		t.Run(fmt.Sprintf("legacy=%v", legacy), func(t *testing.T) {
			d, _ := newTestRedisDedup(t, testsvc.Redis(t), time.Minute)
			d.legacy.Store(legacy)
			for round := range 10 {
				testConcurrentClaims(t, d, fmt.Sprint("room", round))
			}
		})
	}
}

func TestRedisDedupStoresKeyWithWindowTTL(t *testing.T) {
	for _, legacy := range []bool{false, true} {
		t.Run(fmt.Sprintf("legacy=%v", legacy), func(t *testing.T) {
			d, prefix := newTestRedisDedup(t, testsvc.Redis(t), 30*time.Second)
			d.legacy.Store(legacy)
			checkClaim(t, d, "a:b", "k:1", "id1", "", true)
			c := d.client
			key := prefix + "dedup:{a:b}k:1"
			v, err := c.Do(context.Background(), c.B().Get().Key(key).Build()).ToString()
			if err != nil || v != "id1" {
				t.Fatalf("GET %s = %q, %v; want id1", key, v, err)
			}
			ttl, err := c.Do(context.Background(), c.B().Pttl().Key(key).Build()).AsInt64()
			if err != nil || ttl <= 0 || ttl > 30_000 {
				t.Fatalf("PTTL %s = %d, %v; want within the window", key, ttl, err)
			}
		})
	}
}

func TestRedisDedupExpiresAfterWindow(t *testing.T) {
	d, _ := newTestRedisDedup(t, testsvc.Redis(t), 200*time.Millisecond)
	start := time.Now()
	checkClaim(t, d, "room", "a", "id1", "", true)
	checkClaim(t, d, "room", "a", "id2", "id1", false)
	n := 0
	eventually(t, "claim expires", func() bool {
		n++
		existing, fresh, err := d.Claim(context.Background(), "room", "a", fmt.Sprint("late", n))
		if err != nil {
			t.Fatal(err)
		}
		if !fresh && existing != "id1" {
			t.Fatalf("existing id %q, want id1", existing)
		}
		return fresh
	})
	if el := time.Since(start); el < 200*time.Millisecond {
		t.Fatalf("claim expired after %v, window is 200ms", el)
	}
	checkClaim(t, d, "room", "a", "again", fmt.Sprint("late", n), false)
	// The first claimer's late Release must not free the new claim.
	if err := d.Release(context.Background(), "room", "a", "id1"); err != nil {
		t.Fatal(err)
	}
	checkClaim(t, d, "room", "a", "again", fmt.Sprint("late", n), false)
}

func TestRedisDedupFailsWhileRedisDown(t *testing.T) {
	srv := testsvc.NewRedis(t)
	d, _ := newTestRedisDedup(t, srv.URL(), time.Minute)
	checkClaim(t, d, "room", "a", "id1", "", true)
	srv.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, fresh, err := d.Claim(ctx, "room", "b", "id2"); err == nil || fresh {
		t.Fatalf("Claim with Redis down = fresh %v, err %v; want an error", fresh, err)
	}
	if err := d.Release(ctx, "room", "a", "id1"); err == nil {
		t.Fatal("Release with Redis down succeeded")
	}
	srv.Start()
	// No persistence in the test server: the restart forgot every claim.
	eventually(t, "claims work again", func() bool {
		_, fresh, err := d.Claim(context.Background(), "room", "c", "id3")
		return err == nil && fresh
	})
}

func TestRedisDedupSharesBusClient(t *testing.T) {
	url := testsvc.Redis(t)
	bus := newNode(t, url, testsvc.UniqueName(t, "ps")+":").bus
	d, err := NewRedisDedup(RedisDedupConfig{Client: bus.Client(), Prefix: testsvc.UniqueName(t, "dd") + ":"})
	if err != nil {
		t.Fatal(err)
	}
	checkClaim(t, d, "room", "a", "id1", "", true)
	d.Close()
	d.Close()
	// Closing the dedup left the bus's client open.
	eventually(t, "bus Ping", func() bool { return bus.Ping(context.Background()) == nil })
	if d.windowMs != DefaultDedupWindow.Milliseconds() {
		t.Fatalf("window %dms, want the default", d.windowMs)
	}
}

func TestNewRedisDedupNeedsURLOrClient(t *testing.T) {
	if _, err := NewRedisDedup(RedisDedupConfig{}); err == nil {
		t.Fatal("NewRedisDedup with no URL or client succeeded")
	}
}
