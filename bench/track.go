package main

// Loss, duplicate and order accounting. Each subscriber keeps one pubTrack
// per publisher of its topic; publishers number their messages 1, 2, ...
// and chatgg promises per-publisher order, so a subscriber can tell on the
// fly what arrived twice or late, and at the end, knowing how many each
// publisher sent, what never arrived.

// windowBits is how far behind the highest sequence seen a late message can
// still be told apart from a duplicate. Further back, it counts as out of
// order; a duplicate there is caught at the end, when more distinct
// messages than were sent would have arrived.
const windowBits = 64

// pubTrack is what one subscriber saw of one publisher. The zero value
// has seen nothing.
type pubTrack struct {
	max    uint64 // highest sequence received
	window uint64 // bit i set: sequence max-i was received
	recv   uint64 // messages received, duplicates included
	dup    uint64 // received again
	ooo    uint64 // received after a higher sequence
}

// verdict is what observe made of one message.
type verdict uint8

const (
	inOrder verdict = iota
	late            // out of order: after a higher sequence
	again           // a duplicate
)

// observe accounts for the arrival of seq (1 or more).
func (t *pubTrack) observe(seq uint64) verdict {
	t.recv++
	switch {
	case seq > t.max:
		if d := seq - t.max; d >= windowBits {
			t.window = 1
		} else {
			t.window = t.window<<d | 1
		}
		t.max = seq
		return inOrder
	case t.max-seq < windowBits:
		bit := uint64(1) << (t.max - seq)
		if t.window&bit != 0 {
			t.dup++
			return again
		}
		t.window |= bit
		t.ooo++
		return late
	default:
		t.ooo++
		return late
	}
}

// has reports whether seq was received, as far as the window can tell:
// further back than the window, it counts as received.
func (t *pubTrack) has(seq uint64) bool {
	switch {
	case seq == 0 || seq > t.max:
		return false
	case t.max-seq < windowBits:
		return t.window&(1<<(t.max-seq)) != 0
	}
	return true
}

// distinct is the number of different messages received, as far as the
// window could tell.
func (t *pubTrack) distinct() uint64 { return t.recv - t.dup }

// settle returns the final counts once the publisher is known to have sent
// sent messages: those not received are lost; more distinct messages than
// were sent means duplicates the window missed.
func (t *pubTrack) settle(sent uint64) (lost, dup, ooo uint64) {
	d := t.distinct()
	dup, ooo = t.dup, t.ooo
	switch {
	case d < sent:
		lost = sent - d
	case d > sent:
		dup += d - sent
	}
	return lost, dup, ooo
}

// issues are the counts reported per subscriber.
type issues struct {
	Lost       uint64 `json:"lost"`
	Duplicated uint64 `json:"duplicated"`
	OutOfOrder uint64 `json:"out_of_order"`
}

func (is issues) any() bool { return is.Lost != 0 || is.Duplicated != 0 || is.OutOfOrder != 0 }

func (is *issues) add(o issues) {
	is.Lost += o.Lost
	is.Duplicated += o.Duplicated
	is.OutOfOrder += o.OutOfOrder
}

// subTrack is one subscriber's view of every publisher of its topic,
// indexed by the publisher's rank on the topic (see plan.rank).
type subTrack struct {
	pubs      []pubTrack
	foreign   uint64 // payloads from publishers not on this topic
	malformed uint64 // deliveries that carried no payload of ours
}

// settle totals the subscriber's issues; sent[i] is what the publisher of
// rank i sent.
func (s *subTrack) settle(sent []uint64) issues {
	var is issues
	for i := range s.pubs {
		l, d, o := s.pubs[i].settle(sent[i])
		is.add(issues{l, d, o})
	}
	return is
}

// distinct totals the distinct messages received.
func (s *subTrack) distinct() uint64 {
	var n uint64
	for i := range s.pubs {
		n += s.pubs[i].distinct()
	}
	return n
}
