package server

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/chatgg/chatgg/codec"
)

// Storage notices: a pub with "stored":true is answered a second time once
// its message is in the store. The worker that stored a batch tells the
// nodes the messages came from (their index is part of the id) on an
// internal topic, "!stored.<node>"; clients cannot use topics starting with
// '!'. In one process without Redis the notice is a function call.

const (
	storedTopicPrefix = "!stored."
	// maxStoredWatches bounds the pubs waiting for their notice.
	maxStoredWatches = 100000
	// storedWatchTTL bounds how long a pub waits for its notice.
	storedWatchTTL = 10 * time.Minute
)

var (
	errTooManyWatches = errors.New("too many pubs waiting for storage")
	errWatchExpired   = errors.New("not stored in time")
)

func storedTopic(node uint16) string { return storedTopicPrefix + strconv.Itoa(int(node)) }

// storedWatcher implements loop.StoreWatcher.
type storedWatcher struct {
	store storeBackend
	ttl   time.Duration // storedWatchTTL; shorter in tests
	stop  chan struct{}
	once  sync.Once

	mu      sync.Mutex
	watches map[string][]storedWatch
}

type storedWatch struct {
	done  func(error)
	since time.Time
}

// newStoredWatcher returns a watcher whose janitor fails watches older than
// ttl (a notice can be lost; the client is then told, not left waiting).
// Close stops the janitor.
func newStoredWatcher(store storeBackend, ttl time.Duration) *storedWatcher {
	w := &storedWatcher{store: store, ttl: ttl, stop: make(chan struct{}), watches: make(map[string][]storedWatch)}
	go w.janitor()
	return w
}

func (w *storedWatcher) janitor() {
	t := time.NewTicker(w.ttl / 10)
	defer t.Stop()
	for {
		select {
		case <-w.stop:
			return
		case now := <-t.C:
			w.mu.Lock()
			w.expireLocked(now)
			w.mu.Unlock()
		}
	}
}

// Close stops the janitor.
func (w *storedWatcher) Close() error {
	w.once.Do(func() { close(w.stop) })
	return nil
}

// WatchStored registers done for id, then checks whether the message is
// stored already: the worker may have been faster than the ack, or id may
// be the original of a repeated idempotency key.
func (w *storedWatcher) WatchStored(topic, id string, done func(error)) {
	now := time.Now()
	w.mu.Lock()
	if len(w.watches) >= maxStoredWatches {
		w.expireLocked(now)
	}
	if len(w.watches) >= maxStoredWatches {
		w.mu.Unlock()
		done(errTooManyWatches)
		return
	}
	w.watches[id] = append(w.watches[id], storedWatch{done: done, since: now})
	w.mu.Unlock()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if ok, err := storeHas(ctx, w.store, topic, id); err == nil && ok {
			w.fire(id)
		}
	}()
}

// expireLocked fails the watches older than the watcher's ttl.
func (w *storedWatcher) expireLocked(now time.Time) {
	for id, ws := range w.watches {
		if now.Sub(ws[0].since) > w.ttl {
			delete(w.watches, id)
			for _, x := range ws {
				go x.done(errWatchExpired)
			}
		}
	}
}

// fire answers the watches of id.
func (w *storedWatcher) fire(id string) {
	w.mu.Lock()
	ws := w.watches[id]
	delete(w.watches, id)
	w.mu.Unlock()
	for _, x := range ws {
		x.done(nil)
	}
}

// notice handles a "!stored.<node>" message: ids of stored messages.
func (w *storedWatcher) notice(m *codec.Message) {
	for b := m.Data; len(b) >= codec.IDLen; b = b[codec.IDLen:] {
		w.fire(string(b[:codec.IDLen]))
	}
}

// storeHas reports whether id of topic is stored.
func storeHas(ctx context.Context, s storeBackend, topic, id string) (bool, error) {
	prev, ok := predecessor(id)
	if !ok {
		return false, nil
	}
	msgs, err := s.History(ctx, topic, prev, 1)
	if err != nil {
		return false, err
	}
	return len(msgs) == 1 && msgs[0].ID == id, nil
}

// predecessor returns the largest string below id of the same length in
// id's alphabet (lower-case hex), so History(after=predecessor) starts at id.
func predecessor(id string) (string, bool) {
	b := []byte(id)
	for i := len(b) - 1; i >= 0; i-- {
		switch {
		case b[i] == '0':
			b[i] = 'f'
			continue
		case b[i] == 'a':
			b[i] = '9'
		default:
			b[i]--
		}
		return string(b), true
	}
	return "", false
}

// storedNotices groups the ids of a stored batch by the node that accepted
// each message, as notices for those nodes.
func storedNotices(batch []*codec.Message) []*codec.Message {
	byNode := make(map[string][]byte)
	for _, m := range batch {
		if len(m.ID) != codec.IDLen {
			continue
		}
		node, err := strconv.ParseUint(m.ID[12:16], 16, 16)
		if err != nil {
			continue
		}
		t := storedTopic(uint16(node))
		byNode[t] = append(byNode[t], m.ID...)
	}
	out := make([]*codec.Message, 0, len(byNode))
	now := time.Now().UnixMilli()
	for t, ids := range byNode {
		out = append(out, &codec.Message{Topic: t, TS: now, Kind: codec.KindBinary, Data: ids})
	}
	return out
}
