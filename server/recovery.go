package server

import (
	"context"
	"time"

	"github.com/chatgg/chatgg/codec"
)

// Recovery limits.
const (
	// maxRecover bounds the messages replayed to one sub with "after"; a
	// client further behind gets "recovered":false and pages through the
	// history API.
	maxRecover     = 10000
	recoverTimeout = 10 * time.Second
	recoverPage    = 1000
	// overlapWait bounds the wait for storage to catch up with the start
	// of a full hot window.
	overlapWait = 5 * time.Second
)

// recentReader is a bus's window of recent messages (pubsub.Local, pubsub.Redis).
type recentReader interface {
	Recent(ctx context.Context, topic, after string) (msgs []*codec.Message, found bool, err error)
}

// recoverer implements loop.Recoverer: the messages of a topic after a
// client's last id, from the bus's hot window (messages not yet stored are
// there) and, for older ones, from the store.
type recoverer struct {
	hot    recentReader
	hotLen int // the window's length: a window this full may have lost its start
	store  storeBackend
}

// Recover looks the messages up on its own goroutine: the loop must not wait.
func (r recoverer) Recover(topic, after string, done func(msgs []*codec.Message, recovered bool, err error)) {
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), recoverTimeout)
		defer cancel()
		done(r.recover(ctx, topic, after))
	}()
}

// recover returns the messages of topic after the one with id after, oldest
// first, each once. recovered is true when continuity is certain: after is
// in the hot window (whose order is publish order), or the store reaches
// back to it. An empty after asks for everything.
func (r recoverer) recover(ctx context.Context, topic, after string) ([]*codec.Message, bool, error) {
	hot, found, err := r.hot.Recent(ctx, topic, after)
	if err != nil {
		return nil, false, err
	}
	if found {
		return capRecover(hot)
	}
	// after is older than the window: the store has what came before the
	// window, the window what may not be stored yet. A full window has
	// dropped its oldest messages; they are safe only once the store
	// reaches the window, so wait for it to hold the window's first.
	overlap := true
	if len(hot) > 0 && len(hot) >= r.hotLen {
		overlap = r.waitStored(ctx, topic, hot[0].ID)
	}
	oldest, ok, err := r.store.Oldest(ctx, topic)
	if err != nil {
		return nil, false, err
	}
	recovered := overlap && (after == "" || (ok && oldest <= after))
	inHot := make(map[string]struct{}, len(hot))
	for _, m := range hot {
		inHot[m.ID] = struct{}{}
	}
	// Storage up to where the window starts (anything stored after that is
	// in the window or arrives live), then the window.
	var out []*codec.Message
	cursor := after
pages:
	for len(out) <= maxRecover {
		page, err := r.store.History(ctx, topic, cursor, recoverPage)
		if err != nil {
			return nil, false, err
		}
		for _, m := range page {
			if _, inWindow := inHot[m.ID]; inWindow {
				break pages
			}
			out = append(out, m)
		}
		if len(page) < recoverPage {
			break
		}
		cursor = page[len(page)-1].ID
	}
	out = append(out, hot...)
	msgs, complete, _ := capRecover(out)
	return msgs, recovered && complete, nil
}

// waitStored polls the store until it holds id, for at most overlapWait.
func (r recoverer) waitStored(ctx context.Context, topic, id string) bool {
	deadline := time.Now().Add(overlapWait)
	for {
		if ok, err := storeHas(ctx, r.store, topic, id); err == nil && ok {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// capRecover bounds a replay to maxRecover messages, keeping the oldest.
func capRecover(msgs []*codec.Message) ([]*codec.Message, bool, error) {
	if len(msgs) > maxRecover {
		return msgs[:maxRecover], false, nil
	}
	return msgs, true, nil
}
