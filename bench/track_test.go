package main

import "testing"

func TestTrackCountsLossDuplicatesAndOrder(t *testing.T) {
	cases := []struct {
		name          string
		seqs          []uint64
		sent          uint64
		lost, dup, oo uint64
	}{
		{"nothing sent", nil, 0, 0, 0, 0},
		{"all in order", []uint64{1, 2, 3, 4}, 4, 0, 0, 0},
		{"nothing received", nil, 3, 3, 0, 0},
		{"tail lost", []uint64{1, 2}, 4, 2, 0, 0},
		{"head lost", []uint64{3, 4}, 4, 2, 0, 0},
		{"gap", []uint64{1, 2, 5, 6}, 6, 2, 0, 0},
		{"duplicate in order", []uint64{1, 2, 2, 3}, 3, 0, 1, 0},
		{"duplicate of the first", []uint64{1, 2, 3, 1}, 3, 0, 1, 0},
		{"swap", []uint64{1, 3, 2, 4}, 4, 0, 0, 1},
		{"late then duplicated", []uint64{1, 3, 2, 2}, 3, 0, 1, 1},
		{"reversed", []uint64{4, 3, 2, 1}, 4, 0, 0, 3},
		{"late beyond the window", []uint64{1, 100, 2}, 100, 97, 0, 1},
		{"duplicate beyond the window", append(seqRange(1, 100), 1), 100, 0, 1, 1},
		{"more distinct than sent", []uint64{1, 2, 3}, 2, 0, 1, 0},
		{"jump wider than the window", []uint64{1, 1000, 999}, 1000, 997, 0, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var tr pubTrack
			for _, s := range tc.seqs {
				tr.observe(s)
			}
			lost, dup, oo := tr.settle(tc.sent)
			if lost != tc.lost || dup != tc.dup || oo != tc.oo {
				t.Fatalf("lost, dup, ooo = %d, %d, %d; want %d, %d, %d", lost, dup, oo, tc.lost, tc.dup, tc.oo)
			}
		})
	}
}

func seqRange(from, to uint64) []uint64 {
	var s []uint64
	for i := from; i <= to; i++ {
		s = append(s, i)
	}
	return s
}

func TestObserveVerdicts(t *testing.T) {
	var tr pubTrack
	steps := []struct {
		seq  uint64
		want verdict
	}{{1, inOrder}, {3, inOrder}, {2, late}, {2, again}, {3, again}, {4, inOrder}, {1, again}}
	for i, s := range steps {
		if got := tr.observe(s.seq); got != s.want {
			t.Fatalf("step %d: observe(%d) = %v, want %v", i, s.seq, got, s.want)
		}
	}
	if tr.distinct() != 4 {
		t.Fatalf("distinct = %d, want 4", tr.distinct())
	}
}

func TestSubTrackSettlesEveryPublisher(t *testing.T) {
	s := subTrack{pubs: make([]pubTrack, 3)}
	s.pubs[0].observe(1)
	s.pubs[0].observe(2)
	s.pubs[1].observe(2)
	s.pubs[1].observe(1)
	s.pubs[2].observe(1)
	s.pubs[2].observe(1)
	got := s.settle([]uint64{3, 2, 1})
	want := issues{Lost: 1, Duplicated: 1, OutOfOrder: 1}
	if got != want {
		t.Fatalf("settle = %+v, want %+v", got, want)
	}
	if s.distinct() != 5 {
		t.Fatalf("distinct = %d, want 5", s.distinct())
	}
}

func TestHasTellsWhatWasReceived(t *testing.T) {
	var tr pubTrack
	for _, s := range []uint64{1, 2, 4, 100} {
		tr.observe(s)
	}
	for seq, want := range map[uint64]bool{0: false, 1: true, 3: true, 40: false, 99: false, 100: true, 101: false} {
		// 1 and 3 are behind the window: counted as received.
		if got := tr.has(seq); got != want {
			t.Errorf("has(%d) = %v, want %v", seq, got, want)
		}
	}
}
