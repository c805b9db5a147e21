package pubsub

import (
	"context"
	"sync"
	"time"
)

const (
	// DefaultDedupWindow is how long an idempotency key is remembered when
	// a window of zero is given.
	DefaultDedupWindow = 2 * time.Minute
	// DefaultDedupMaxEntries is LocalDedup's default bound on remembered
	// keys.
	DefaultDedupMaxEntries = 1_000_000
	// dedupPruneBatch bounds how many expired entries one Claim removes, so
	// a Claim after a quiet spell does not stall on a large backlog.
	dedupPruneBatch = 64
)

// dedupKey is a map key: a struct, not topic+":"+key, because topics may
// contain ':' and keys anything.
type dedupKey struct {
	topic, key string
}

type dedupEntry struct {
	id  string
	ts  int64  // Unix nanoseconds of the claim
	seq uint64 // matches the dedupItem that expires this entry
}

// dedupItem is one claim in claim order. Items whose seq no longer matches
// the map entry (released, or claimed again after expiry) are stale and are
// dropped when they reach the front.
type dedupItem struct {
	k   dedupKey
	ts  int64
	seq uint64
}

// LocalDedup is the in-memory idempotency-key window of a single-node
// deployment. It remembers, per topic and key, the id of the first message
// published with that key during the window. Memory is bounded: expired
// entries are pruned a few at a time on each Claim, and past the entry cap
// the oldest claims are forgotten first. Safe for concurrent use.
type LocalDedup struct {
	window     int64 // nanoseconds
	maxEntries int
	now        func() int64 // Unix nanoseconds; replaced in tests

	mu      sync.Mutex
	entries map[dedupKey]dedupEntry
	order   ring // claims oldest first; its length bounds memory
	seq     uint64
}

// NewLocalDedup returns a LocalDedup remembering keys for window (zero means
// DefaultDedupWindow) and at most DefaultDedupMaxEntries of them.
func NewLocalDedup(window time.Duration) *LocalDedup {
	return NewLocalDedupSize(window, 0)
}

// NewLocalDedupSize is NewLocalDedup with a bound of maxEntries remembered
// claims (zero means DefaultDedupMaxEntries).
func NewLocalDedupSize(window time.Duration, maxEntries int) *LocalDedup {
	if window <= 0 {
		window = DefaultDedupWindow
	}
	if maxEntries <= 0 {
		maxEntries = DefaultDedupMaxEntries
	}
	return &LocalDedup{
		window:     int64(window),
		maxEntries: maxEntries,
		now:        func() int64 { return time.Now().UnixNano() },
		entries:    make(map[dedupKey]dedupEntry),
	}
}

// Claim records id as the message published on topic with idempotency key
// key, unless the key was already claimed within the window. fresh is true
// when the caller now owns the key (existingID is then ""); otherwise
// existingID is the id recorded by the first claim and the caller should
// answer with it instead of publishing again. The error is always nil.
func (d *LocalDedup) Claim(ctx context.Context, topic, key, id string) (existingID string, fresh bool, err error) {
	now := d.now()
	k := dedupKey{topic, key}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.pruneLocked(now)
	if e, ok := d.entries[k]; ok && now-e.ts < d.window {
		return e.id, false, nil
	}
	d.seq++
	d.entries[k] = dedupEntry{id: id, ts: now, seq: d.seq}
	d.order.push(dedupItem{k: k, ts: now, seq: d.seq})
	// Bound on claims, not on live entries: stale items left by Release
	// count too, so the ring never outgrows the cap.
	for d.order.len() > d.maxEntries {
		d.dropFrontLocked()
	}
	return "", true, nil
}

// Commit replaces a claim's value pending with final, if the claim still
// holds pending, and reports whether it did: a publish claims its key with a
// pending marker and commits it once the message is accepted, so a retry can
// tell the two apart; a retry that takes over a stale pending claim swaps
// it the same way, and only one such retry wins. The error is always nil.
func (d *LocalDedup) Commit(ctx context.Context, topic, key, pending, final string) (bool, error) {
	k := dedupKey{topic, key}
	d.mu.Lock()
	defer d.mu.Unlock()
	if e, ok := d.entries[k]; ok && e.id == pending && d.now()-e.ts < d.window {
		e.id = final
		d.entries[k] = e
		return true, nil
	}
	return false, nil
}

// Release forgets the claim of key on topic if it is still held by id, so a
// retry can publish after the first attempt failed. Releasing a claim held by
// another id, or an expired one, does nothing. The error is always nil.
func (d *LocalDedup) Release(ctx context.Context, topic, key, id string) error {
	k := dedupKey{topic, key}
	d.mu.Lock()
	defer d.mu.Unlock()
	if e, ok := d.entries[k]; ok && e.id == id {
		delete(d.entries, k)
	}
	return nil
}

// Len returns the number of remembered keys, expired ones not yet pruned
// included.
func (d *LocalDedup) Len() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.entries)
}

// pruneLocked drops up to dedupPruneBatch expired claims from the front.
// Claims are in time order, so the first unexpired one ends the scan.
func (d *LocalDedup) pruneLocked(now int64) {
	for i := 0; i < dedupPruneBatch && d.order.len() > 0; i++ {
		if now-d.order.front().ts < d.window {
			return
		}
		d.dropFrontLocked()
	}
}

// dropFrontLocked removes the oldest claim, and its map entry unless the key
// has been claimed again since.
func (d *LocalDedup) dropFrontLocked() {
	it := d.order.pop()
	if e, ok := d.entries[it.k]; ok && e.seq == it.seq {
		delete(d.entries, it.k)
	}
}

// ring is a growable FIFO of dedupItems.
type ring struct {
	buf  []dedupItem
	head int
	n    int
}

func (r *ring) len() int { return r.n }

func (r *ring) front() *dedupItem { return &r.buf[r.head] }

func (r *ring) push(it dedupItem) {
	if r.n == len(r.buf) {
		r.resize(max(16, 2*len(r.buf)))
	}
	r.buf[(r.head+r.n)%len(r.buf)] = it
	r.n++
}

func (r *ring) pop() dedupItem {
	it := r.buf[r.head]
	r.buf[r.head] = dedupItem{} // drop the strings for the GC
	r.head = (r.head + 1) % len(r.buf)
	r.n--
	// Shrink after a burst so a quiet window gives the memory back.
	if len(r.buf) > 1024 && r.n < len(r.buf)/4 {
		r.resize(len(r.buf) / 2)
	}
	return it
}

// resize moves the items, oldest first, into a buffer of size slots.
func (r *ring) resize(size int) {
	nb := make([]dedupItem, size)
	if end := r.head + r.n; end <= len(r.buf) {
		copy(nb, r.buf[r.head:end])
	} else {
		m := copy(nb, r.buf[r.head:])
		copy(nb[m:], r.buf[:end-len(r.buf)])
	}
	r.buf, r.head = nb, 0
}
