package ratelog

import (
	"testing"
	"time"
)

func TestLimiterLetsOneLinePerIntervalAndCountsTheRest(t *testing.T) {
	l := Limiter{Every: time.Second}
	t0 := time.Unix(1000, 0)
	steps := []struct {
		at         time.Duration
		ok         bool
		suppressed int
	}{
		{0, true, 0},
		{100 * time.Millisecond, false, 0},
		{900 * time.Millisecond, false, 0},
		{time.Second, true, 2},
		{1500 * time.Millisecond, false, 0},
		{3 * time.Second, true, 1},
	}
	for _, s := range steps {
		ok, n := l.Allow(t0.Add(s.at))
		if ok != s.ok || n != s.suppressed {
			t.Fatalf("at %v: Allow = %v, %d; want %v, %d", s.at, ok, n, s.ok, s.suppressed)
		}
	}
}

func TestKeyedLimitsEachKeyApart(t *testing.T) {
	k := Keyed{Every: time.Minute}
	now := time.Unix(1000, 0)
	if ok, _ := k.Allow("a", now); !ok {
		t.Fatal("first a refused")
	}
	if ok, _ := k.Allow("b", now); !ok {
		t.Fatal("first b refused: keys must not share a limiter")
	}
	if ok, _ := k.Allow("a", now.Add(time.Second)); ok {
		t.Fatal("second a within the interval let through")
	}
	if ok, n := k.Allow("a", now.Add(2*time.Minute)); !ok || n != 1 {
		t.Fatalf("a after the interval: %v, %d", ok, n)
	}
}
