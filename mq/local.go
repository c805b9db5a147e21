package mq

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/chatgg/chatgg/codec"
)

// DefaultCapacity is LocalConfig.Capacity's default, in messages.
const DefaultCapacity = 100_000

// LocalConfig configures the in-process queue.
type LocalConfig struct {
	// Capacity bounds the messages the queue holds, queued and in flight
	// together. Default DefaultCapacity (100000).
	Capacity int
	// Logger receives Store failures (rate-limited). Nil discards.
	Logger *slog.Logger
	// Journal, when set, makes the queue durable: every batch is written
	// to it before Enqueue returns, and removed once stored; Recover puts
	// back what an earlier process left. Nil: memory only.
	Journal *Journal
}

// Local is the in-process queue: a bounded FIFO in memory drained by any
// number of RunWorker goroutines. Without a Journal everything it holds is
// lost if the process dies; a graceful stop drains it (see RunWorker). With
// one, what it accepted survives a crash and comes back with Recover. All
// methods are safe for concurrent use.
type Local struct {
	capacity int
	log      *slog.Logger
	lim      logLimiter
	jlim     logLimiter // journal removal failures
	journal  *Journal

	// notify holds a token when messages may be waiting: Enqueue puts one,
	// and a worker that leaves messages behind puts it back for the next.
	notify chan struct{}

	mu       sync.Mutex // guards the fields below
	ring     []*codec.Message
	head     int // index of the oldest queued message in ring
	n        int // queued messages
	inflight int // taken by workers, not yet stored
	reserved int // room held by Enqueue calls writing to the journal
	closed   bool
}

// NewLocal returns an empty in-process queue.
func NewLocal(cfg LocalConfig) *Local {
	if cfg.Capacity <= 0 {
		cfg.Capacity = DefaultCapacity
	}
	return &Local{
		capacity: cfg.Capacity,
		log:      discardLogger(cfg.Logger).With("component", "mq"),
		lim:      logLimiter{Every: logEvery},
		jlim:     logLimiter{Every: logEvery},
		journal:  cfg.Journal,
		notify:   make(chan struct{}, 1),
	}
}

// Recover queues what the journal holds (what an earlier process accepted
// and did not store), in id order, and returns those messages (read-only:
// the queue holds them). Call it once, before the first Enqueue. Without a
// journal it does nothing.
func (q *Local) Recover() ([]*codec.Message, error) {
	if q.journal == nil {
		return nil, nil
	}
	msgs, err := q.journal.load()
	if err != nil {
		return nil, fmt.Errorf("mq: recover from journal: %w", err)
	}
	q.mu.Lock()
	q.growLocked(q.n + len(msgs))
	for _, m := range msgs {
		q.ring[(q.head+q.n)&(len(q.ring)-1)] = m
		q.n++
	}
	q.mu.Unlock()
	if len(msgs) > 0 {
		q.log.Info("recovered accepted messages from the journal", "messages", len(msgs))
		q.wake()
	}
	return msgs, nil
}

// Enqueue appends batch, in order, to the queue. It never blocks: when the
// whole batch does not fit it queues nothing and returns ErrFull. ctx is not
// used. The queue keeps the *codec.Message pointers, so the messages must not
// change afterwards (they are read-only across packages anyway).
func (q *Local) Enqueue(_ context.Context, batch []*codec.Message) error {
	if len(batch) == 0 {
		return nil
	}
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return ErrClosed
	}
	if q.n+q.inflight+q.reserved+len(batch) > q.capacity {
		q.mu.Unlock()
		return ErrFull
	}
	if q.journal != nil {
		// Durable first, without holding the lock through the fsync.
		q.reserved += len(batch)
		q.mu.Unlock()
		err := q.journal.append(batch)
		q.mu.Lock()
		q.reserved -= len(batch)
		if err != nil {
			q.mu.Unlock()
			return fmt.Errorf("%w: journal: %w", ErrNotQueued, err)
		}
	}
	q.growLocked(q.n + len(batch))
	for _, m := range batch {
		q.ring[(q.head+q.n)&(len(q.ring)-1)] = m
		q.n++
	}
	q.mu.Unlock()
	q.wake()
	return nil
}

// growLocked makes the ring hold at least need messages. The ring starts
// small and doubles, so an idle queue with a large Capacity costs little.
func (q *Local) growLocked(need int) {
	if need <= len(q.ring) {
		return
	}
	size := max(len(q.ring), 64)
	for size < need {
		size *= 2
	}
	ring := make([]*codec.Message, size)
	for i := range q.n {
		ring[i] = q.ring[(q.head+i)&(len(q.ring)-1)]
	}
	q.ring, q.head = ring, 0
}

// wake hands a worker the token, if none is pending.
func (q *Local) wake() {
	select {
	case q.notify <- struct{}{}:
	default:
	}
}

// popLocked moves up to max queued messages onto dst, oldest first, and
// counts them in flight.
func (q *Local) popLocked(dst []*codec.Message, limit int) []*codec.Message {
	for q.n > 0 && len(dst) < limit {
		i := q.head & (len(q.ring) - 1)
		dst = append(dst, q.ring[i])
		q.ring[i] = nil // let the message go once stored
		q.head = (q.head + 1) & (len(q.ring) - 1)
		q.n--
		q.inflight++
	}
	return dst
}

// pop takes up to limit messages onto dst without waiting and passes the
// token on if it leaves messages behind.
func (q *Local) pop(dst []*codec.Message, limit int) []*codec.Message {
	q.mu.Lock()
	dst = q.popLocked(dst, limit)
	more := q.n > 0
	q.mu.Unlock()
	if more {
		q.wake()
	}
	return dst
}

// take waits until at least one message is queued, then gathers up to limit
// messages, waiting at most maxWait after the first for more. It returns
// with what it has (possibly nothing) when ctx is done.
func (q *Local) take(ctx context.Context, dst []*codec.Message, limit int, maxWait time.Duration) []*codec.Message {
	for len(dst) == 0 {
		if dst = q.pop(dst, limit); len(dst) > 0 {
			break
		}
		select {
		case <-q.notify:
		case <-ctx.Done():
			return dst
		}
	}
	if len(dst) >= limit {
		return dst
	}
	timer := time.NewTimer(maxWait)
	defer timer.Stop()
	for len(dst) < limit {
		select {
		case <-q.notify:
			dst = q.pop(dst, limit)
		case <-timer.C:
			return dst
		case <-ctx.Done():
			return dst
		}
	}
	return dst
}

// done forgets n stored in-flight messages.
func (q *Local) done(n int) {
	q.mu.Lock()
	q.inflight -= n
	q.mu.Unlock()
}

// giveBack puts an unstored batch back at the head of the queue, in order.
func (q *Local) giveBack(batch []*codec.Message) {
	if len(batch) == 0 {
		return
	}
	q.mu.Lock()
	q.inflight -= len(batch)
	q.growLocked(q.n + len(batch))
	for i := len(batch) - 1; i >= 0; i-- {
		q.head = (q.head - 1) & (len(q.ring) - 1)
		q.ring[q.head] = batch[i]
		q.n++
	}
	q.mu.Unlock()
	q.wake()
}

// RunWorker drains the queue into sink until ctx is done. It takes batches
// of up to cfg.BatchSize messages, waiting at most cfg.MaxWait after the
// first for the batch to fill, and calls sink.Store. A failed Store is
// retried with the same batch, after an exponential backoff with jitter,
// until it succeeds; messages leave the queue only then.
//
// When ctx is done the worker stops waiting for new messages and drains:
// within cfg.DrainTimeout it stores the batch it holds and then whatever is
// still queued. It returns nil when the queue is empty, or an error if the
// grace period ran out; unstored messages are then back in the queue.
// Several workers may run at once; each message goes to one of them.
func (q *Local) RunWorker(ctx context.Context, sink Sink, cfg WorkerConfig) error {
	cfg = cfg.withDefaults()
	batch := make([]*codec.Message, 0, cfg.BatchSize)
	for ctx.Err() == nil {
		batch = q.take(ctx, batch, cfg.BatchSize, cfg.MaxWait)
		if len(batch) == 0 {
			continue
		}
		if q.store(ctx, sink, batch, cfg) != nil {
			break // ctx done; the batch is still ours to drain
		}
		clear(batch)
		batch = batch[:0]
	}

	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.DrainTimeout)
	defer cancel()
	for {
		if len(batch) == 0 {
			if batch = q.pop(batch, cfg.BatchSize); len(batch) == 0 {
				return nil
			}
		}
		if err := q.store(dctx, sink, batch, cfg); err != nil {
			q.giveBack(batch)
			left, _ := q.Stats(dctx)
			return fmt.Errorf("mq: drain: %d messages left queued: %w", left.Depth, err)
		}
		clear(batch)
		batch = batch[:0]
	}
}

// store calls sink.Store until it succeeds, backing off between attempts,
// and then forgets the batch. It returns the last Store error if ctx is done
// first; the batch stays in flight.
func (q *Local) store(ctx context.Context, sink Sink, batch []*codec.Message, cfg WorkerConfig) error {
	for attempt := 0; ; attempt++ {
		err := sink.Store(ctx, batch)
		if err == nil {
			q.done(len(batch))
			if q.journal != nil {
				// Left in the journal, the batch would be stored again
				// after a restart: harmless, so a failure only warns.
				if err := q.journal.remove(batch); err != nil {
					warn(q.log, &q.jlim, "mq: journal removal failed", err, slog.Int("batch", len(batch)))
				}
			}
			return nil
		}
		if ctx.Err() != nil {
			return err
		}
		warn(q.log, &q.lim, "mq: store failed, retrying", err,
			slog.Int("batch", len(batch)), slog.Int("attempt", attempt+1))
		if !sleep(ctx, backoff(attempt, cfg.RetryBase, cfg.RetryMax)) {
			return err
		}
	}
}

// Stats reports the queued and in-flight messages; Dead is always 0.
func (q *Local) Stats(context.Context) (Stats, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return Stats{Depth: int64(q.n), Processing: int64(q.inflight)}, nil
}

// Ping reports nil: the in-process queue is always reachable.
func (q *Local) Ping(context.Context) error { return nil }

// Close makes further Enqueue calls fail with ErrClosed. Workers keep
// running until their ctx is done, so what is queued can still be drained.
func (q *Local) Close() error {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	return nil
}
