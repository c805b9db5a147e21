package main

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chatgg/chatgg/codec"
)

// Tests of the history poller's accounting, on pages written by hand: no
// server.

// histMsg is one message of a history page: id number n, from publisher
// pub, sequence seq (seq 0: a message that is not the tool's).
type histMsg struct {
	n, pub int
	seq    uint64
}

func histID(n int) string { return string(codec.AppendID(nil, 1_700_000_000_000, 0, uint32(n))) }

// historyPage is a GET /v1/topics/{t}/messages answer holding msgs.
func historyPage(msgs ...histMsg) []byte {
	var b strings.Builder
	b.WriteString(`{"messages":[`)
	for i, m := range msgs {
		if i > 0 {
			b.WriteByte(',')
		}
		data := "not ours"
		if m.seq > 0 {
			data = string(appendPayload(nil, stamp{pub: uint32(m.pub), seq: m.seq, sent: now()}, 64))
		}
		fmt.Fprintf(&b, `{"op":"msg","topic":"t.0","id":%q,"ts":1,"data":%q}`, histID(m.n), data)
	}
	b.WriteString(`],"next":null}`)
	return []byte(b.String())
}

func newTestPoller(pubs int) *storePoller {
	return newStorePoller(&plan{topics: []string{"t.0"}, pubs: pubs}, "http://127.0.0.1:1")
}

// poll feeds one page to topic 0 as a poll at time at would.
func (sp *storePoller) poll(at time.Duration, msgs ...histMsg) {
	sp.passing = false
	sp.parsePage(0, historyPage(msgs...), int64(at))
}

func checkPoller(t *testing.T, sp *storePoller, sent []uint64, stored uint64, want issues) {
	t.Helper()
	if got := sp.stored.Load(); got != stored {
		t.Fatalf("stored %d, want %d", got, stored)
	}
	if got := sp.tracks[0].settle(sent); got != want {
		t.Fatalf("issues %+v, want %+v", got, want)
	}
}

func TestPollerReadsAgainForAMessageStoredLate(t *testing.T) {
	// Publisher 1's first message (id 2) is stored after the cursor passed
	// its place; its second shows the gap.
	sp := newTestPoller(2)
	sp.poll(0, histMsg{1, 0, 1}, histMsg{3, 0, 2})
	if sp.topics[0].cursor != histID(3) {
		t.Fatalf("cursor %s", sp.topics[0].cursor)
	}
	sp.poll(50*time.Millisecond, histMsg{4, 1, 2})
	if sp.topics[0].cursor != "" || sp.holes != 1 {
		t.Fatalf("at the gap: cursor %q, %d holes; want back to the start", sp.topics[0].cursor, sp.holes)
	}
	sp.poll(100*time.Millisecond, histMsg{1, 0, 1}, histMsg{2, 1, 1}, histMsg{3, 0, 2}, histMsg{4, 1, 2})
	checkPoller(t, sp, []uint64{2, 2}, 4, issues{})
	if sp.topics[0].cursor != histID(4) {
		t.Fatalf("cursor %s, want id 4", sp.topics[0].cursor)
	}
}

func TestPollerGoesBackToThePublishersLastMessage(t *testing.T) {
	sp := newTestPoller(2)
	sp.poll(0, histMsg{1, 1, 1}, histMsg{2, 0, 1}, histMsg{4, 0, 2}) // id 3, publisher 1's second, is late
	sp.poll(time.Millisecond, histMsg{5, 1, 3})
	if sp.topics[0].cursor != histID(1) {
		t.Fatalf("cursor %s, want publisher 1's last, id 1", sp.topics[0].cursor)
	}
	sp.poll(2*time.Millisecond, histMsg{2, 0, 1}, histMsg{3, 1, 2}, histMsg{4, 0, 2}, histMsg{5, 1, 3}, histMsg{6, 0, 3})
	checkPoller(t, sp, []uint64{3, 3}, 6, issues{})
}

func TestPollerWaitsAtAGapThenMovesOn(t *testing.T) {
	sp := newTestPoller(1)
	t0 := time.Hour
	sp.poll(t0, histMsg{1, 0, 1}, histMsg{3, 0, 3}, histMsg{4, 0, 4}) // sequence 2 was never stored
	sp.poll(t0+time.Second, histMsg{3, 0, 3}, histMsg{4, 0, 4})
	if sp.stored.Load() != 1 || sp.holes != 2 {
		t.Fatalf("stored %d, %d holes: want to wait", sp.stored.Load(), sp.holes)
	}
	sp.poll(t0+storeHoleWait, histMsg{3, 0, 3}, histMsg{4, 0, 4})
	checkPoller(t, sp, []uint64{4}, 3, issues{Lost: 1})
	// Each wait is a wait of its own.
	sp.poll(t0+storeHoleWait+time.Second, histMsg{6, 0, 6})
	if sp.stored.Load() != 3 {
		t.Fatalf("a new gap was passed at once")
	}
}

func TestPollerRewindsForTheLastMessagesOfARun(t *testing.T) {
	sp := newTestPoller(2)
	sp.poll(0, histMsg{1, 0, 1}, histMsg{2, 1, 1}, histMsg{4, 0, 2}) // id 3 is late, and publisher 1's last
	sp.rewindIncomplete(0, []uint64{2, 2})
	if sp.topics[0].cursor != histID(2) {
		t.Fatalf("cursor %s, want publisher 1's last, id 2", sp.topics[0].cursor)
	}
	sp.poll(time.Millisecond, histMsg{3, 1, 2}, histMsg{4, 0, 2})
	checkPoller(t, sp, []uint64{2, 2}, 4, issues{})
	sp.rewindIncomplete(0, []uint64{2, 2})
	if sp.topics[0].cursor != histID(4) {
		t.Fatalf("complete, yet the cursor moved to %s", sp.topics[0].cursor)
	}
}

func TestPollerCountsWhatItReadsAgainOnce(t *testing.T) {
	sp := newTestPoller(1)
	sp.poll(0, histMsg{1, 0, 1}, histMsg{2, 0, 0}, histMsg{3, 0, 2}, histMsg{4, 0, 2}) // not ours; a duplicate
	sp.topics[0].cursor = ""                                                           // read it all again
	sp.poll(time.Millisecond, histMsg{1, 0, 1}, histMsg{2, 0, 0}, histMsg{3, 0, 2}, histMsg{4, 0, 2}, histMsg{5, 0, 3})
	checkPoller(t, sp, []uint64{3}, 3, issues{Duplicated: 1})
	if sp.malformed != 1 {
		t.Fatalf("malformed %d, want 1", sp.malformed)
	}
}
