package codec

import (
	"sort"
	"strings"
	"sync"
	"testing"
)

func TestIDLayout(t *testing.T) {
	tests := []struct {
		name string
		ms   int64
		node uint16
		seq  uint32
		want string
	}{
		{"zero", 0, 0, 0, "0000000000000000000000"},
		{"typical", 1732900000123, 7, 42, "019378e3917b" + "0007" + "00002a"},
		{"max", 1<<48 - 1, 0xffff, 1<<24 - 1, "ffffffffffff" + "ffff" + "ffffff"},
		{"out of range bits dropped", 1 << 48, 1, 1 << 24, "000000000000" + "0001" + "000000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := string(AppendID([]byte("x"), tt.ms, tt.node, tt.seq))
			if got != "x"+tt.want {
				t.Fatalf("AppendID = %q, want %q", got, "x"+tt.want)
			}
			if !ValidID(tt.want) {
				t.Errorf("ValidID(%q) = false", tt.want)
			}
			if got, want := IDTime(tt.want), tt.ms&(1<<48-1); got != want {
				t.Errorf("IDTime = %d, want %d", got, want)
			}
		})
	}
}

func TestValidID(t *testing.T) {
	tests := []struct {
		name string
		id   string
		want bool
	}{
		{"valid", "0193790f6d7b000700002a", true},
		{"empty", "", false},
		{"short", "0193790f6d7b000700002", false},
		{"long", "0193790f6d7b000700002a0", false},
		{"upper case", "0193790F6D7B000700002A", false},
		{"non-hex", "0193790g6d7b000700002a", false},
		{"space", "0193790f6d7b00070000 a", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ValidID(tt.id); got != tt.want {
				t.Errorf("ValidID(%q) = %v, want %v", tt.id, got, tt.want)
			}
			if !tt.want && IDTime(tt.id) != -1 {
				t.Errorf("IDTime(%q) = %d, want -1", tt.id, IDTime(tt.id))
			}
		})
	}
}

func TestIDGenSequenceWithinMillisecond(t *testing.T) {
	g := NewIDGen(3)
	want := []string{
		"000000000064" + "0003" + "000000",
		"000000000064" + "0003" + "000001",
		"000000000064" + "0003" + "000002",
		"000000000065" + "0003" + "000000",
	}
	got := []string{g.Next(100), g.Next(100), g.Next(100), g.Next(101)}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("id %d = %s, want %s", i, got[i], want[i])
		}
	}
}

func TestIDGenFirstIDAtTimeZero(t *testing.T) {
	g := NewIDGen(0)
	if got, want := g.Next(0), strings.Repeat("0", IDLen); got != want {
		t.Errorf("first id = %s, want %s", got, want)
	}
}

func TestIDGenClockBackwardsKeepsIncreasing(t *testing.T) {
	g := NewIDGen(1)
	a := g.Next(5000)
	b := g.Next(4000) // clock stepped back
	c := g.Next(4999)
	d := g.Next(5001)
	if !(a < b && b < c && c < d) {
		t.Fatalf("ids not increasing: %s %s %s %s", a, b, c, d)
	}
	if IDTime(b) != 5000 || IDTime(c) != 5000 {
		t.Errorf("ids during the step back have times %d, %d; want the last time 5000", IDTime(b), IDTime(c))
	}
	if IDTime(d) != 5001 {
		t.Errorf("IDTime after catching up = %d, want 5001", IDTime(d))
	}
}

func TestIDGenSequenceOverflowAdvancesTime(t *testing.T) {
	g := NewIDGen(2)
	g.Next(7000)
	g.mu.Lock()
	g.seq = maxIDSeq - 1
	g.mu.Unlock()
	last := g.Next(7000)
	if want := "000000001b58" + "0002" + "ffffff"; last != want {
		t.Fatalf("last id of the ms = %s, want %s", last, want)
	}
	next := g.Next(7000)
	if want := "000000001b59" + "0002" + "000000"; next != want {
		t.Fatalf("id after overflow = %s, want %s", next, want)
	}
	// The real clock reaching the borrowed millisecond must not repeat it.
	if again := g.Next(7001); again <= next {
		t.Fatalf("id at 7001 = %s, not after %s", again, next)
	}
}

func TestIDGenClampsTime(t *testing.T) {
	g := NewIDGen(0)
	if got := IDTime(g.Next(-5)); got != 0 {
		t.Errorf("IDTime for negative now = %d, want 0", got)
	}
	if got := IDTime(g.Next(1 << 60)); got != maxIDMs {
		t.Errorf("IDTime for huge now = %d, want %d", got, int64(maxIDMs))
	}
}

func TestIDGenConcurrentIDsAreUniqueAndOrderedPerCaller(t *testing.T) {
	const workers, per = 8, 2000
	g := NewIDGen(9)
	out := make([][]string, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range per {
				out[w] = append(out[w], g.Next(int64(1000+i/100)))
			}
		})
	}
	wg.Wait()
	seen := make(map[string]bool, workers*per)
	for _, ids := range out {
		if !sort.StringsAreSorted(ids) {
			t.Fatal("one caller's ids are not increasing")
		}
		for _, id := range ids {
			if !ValidID(id) || seen[id] {
				t.Fatalf("bad or duplicate id %q", id)
			}
			seen[id] = true
		}
	}
}

func TestIDsOfDifferentNodesDiffer(t *testing.T) {
	a, b := NewIDGen(1).Next(42), NewIDGen(2).Next(42)
	if a == b || IDTime(a) != IDTime(b) {
		t.Errorf("ids %s and %s: want same time, different ids", a, b)
	}
}

func BenchmarkIDGenNext(b *testing.B) {
	g := NewIDGen(1)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		g.Next(int64(1_700_000_000_000 + i/1000))
	}
}
