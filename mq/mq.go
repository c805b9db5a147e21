// Package mq owns the queue between accepting a message and storing it: an
// in-process queue (Local, the embedded default) and a reliable Redis-list
// queue (Redis), and the workers that drain either into a Sink in batches.
// Storing is the Sink's job (met by the storage stores); what goes into the
// queue and when is the server's.
//
// Local and Redis share one method set, which server declares as the
// interfaces it needs:
//
//	Enqueue(ctx context.Context, batch []*codec.Message) error // in order
//	RunWorker(ctx context.Context, sink Sink, cfg WorkerConfig) error
//	Stats(ctx context.Context) (Stats, error)
//	Ping(ctx context.Context) error
//	Close() error
//
// Delivery is at least once: a message leaves the queue only after the Sink
// stored it, so a crash between Store and the acknowledgement stores it again
// and the Sink's idempotency (by ID) makes that harmless. Order: a single
// worker stores messages in queue order; several workers, a dead worker's
// batch given back, a replayed dead letter, or the Redis worker's splitting
// of a failed batch (see Redis.RunWorker) may store them out of order.
//
// Durability differs. The embedded queue lives in memory; with a Journal
// (as chatgg runs it) every batch is also written to a bbolt file before
// Enqueue returns, so what was accepted survives a crash and Recover queues
// it again. Without one a crash loses what is queued but not yet stored. A
// graceful stop (cancel the worker's context) drains it into the Sink
// first, within WorkerConfig.DrainTimeout. The Redis queue survives worker crashes: each
// worker holds its in-flight batches (the one being stored and the next,
// taken meanwhile) in its own processing list, and any
// worker gives a dead worker's batches back to the queue once its heartbeat
// expires. What survives a Redis restart is Redis's persistence setting.
package mq

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/chatgg/chatgg/codec"
	"github.com/chatgg/chatgg/internal/ratelog"
)

// Sink is where workers hand batches (met by the storage stores).
type Sink interface {
	// Store durably stores the batch. Storing a message whose ID is already
	// stored is a success (idempotent), so retried batches store each
	// message exactly once. The batch and its messages are read-only and
	// valid until Store returns.
	Store(ctx context.Context, batch []*codec.Message) error
}

// pinger is what a Sink may also implement. The Redis worker asks it, after
// a failed Store from which it cannot tell a broken message from a broken
// store, whether the store is up: a failure while the store answers Ping
// counts against the messages (and may dead-letter them), a failure while it
// does not is an outage and only waits.
type pinger interface {
	Ping(ctx context.Context) error
}

// Errors returned by the queues.
var (
	// ErrFull is returned by Local.Enqueue when the whole batch does not fit.
	ErrFull = errors.New("mq: queue full")
	// ErrNotQueued is wrapped by an Enqueue error that says for certain
	// that nothing of the batch was queued (Local's journal refused it).
	ErrNotQueued = errors.New("mq: not queued")
	// ErrClosed is returned by a queue used after Close.
	ErrClosed = errors.New("mq: closed")
	// ErrWorkerRunning is returned by Redis.RunWorker while another
	// RunWorker on the same Redis (the same worker id) has not returned.
	ErrWorkerRunning = errors.New("mq: worker already running")
)

// Stats is a snapshot of a queue's size, in messages.
type Stats struct {
	// Depth is the number of messages waiting to be taken by a worker.
	Depth int64
	// Processing is the number of messages workers hold in flight (taken,
	// not yet stored).
	Processing int64
	// Dead is the number of dead letters (Redis only; 0 for Local).
	Dead int64
}

// Worker defaults; see WorkerConfig.
const (
	DefaultBatchSize    = 500
	DefaultMaxWait      = 50 * time.Millisecond
	DefaultRetryBase    = 100 * time.Millisecond
	DefaultRetryMax     = 5 * time.Second
	DefaultDrainTimeout = 5 * time.Second
	DefaultMaxAttempts  = 5
	DefaultBlockTimeout = time.Second
)

// WorkerConfig configures RunWorker. Zero fields take the defaults.
type WorkerConfig struct {
	// BatchSize is the most messages handed to one Store call. Default
	// DefaultBatchSize (500).
	BatchSize int
	// MaxWait is how long a worker waits, after the first message of a
	// batch arrived, for the batch to fill before it stores what it has.
	// Default DefaultMaxWait (50 ms).
	MaxWait time.Duration
	// RetryBase is the first delay after a failed Store or a failed Redis
	// call; the delay doubles with each further failure, with jitter.
	// Default DefaultRetryBase (100 ms).
	RetryBase time.Duration
	// RetryMax caps the retry delay. Default DefaultRetryMax (5 s).
	RetryMax time.Duration
	// DrainTimeout bounds the graceful stop after ctx is cancelled: Local
	// stores what is still queued, Redis stores the batch it holds (and
	// then has another DrainTimeout, at least 1 s, to give back what it
	// could not store). Default DefaultDrainTimeout (5 s).
	DrainTimeout time.Duration
	// MaxAttempts is how many failed Stores (counted as described on
	// Redis.RunWorker) move a message to the dead-letter list. Redis only.
	// Default DefaultMaxAttempts (5).
	MaxAttempts int
	// BlockTimeout is how long one blocking wait on an empty Redis queue
	// lasts; it also bounds how long a cancelled worker takes to notice.
	// Redis only; at least 1 ms. Default DefaultBlockTimeout (1 s).
	BlockTimeout time.Duration
}

func (c WorkerConfig) withDefaults() WorkerConfig {
	if c.BatchSize <= 0 {
		c.BatchSize = DefaultBatchSize
	}
	if c.MaxWait <= 0 {
		c.MaxWait = DefaultMaxWait
	}
	if c.RetryBase <= 0 {
		c.RetryBase = DefaultRetryBase
	}
	if c.RetryMax <= 0 {
		c.RetryMax = DefaultRetryMax
	}
	if c.RetryMax < c.RetryBase {
		c.RetryMax = c.RetryBase
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = DefaultDrainTimeout
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = DefaultMaxAttempts
	}
	if c.BlockTimeout <= 0 {
		c.BlockTimeout = DefaultBlockTimeout
	}
	c.BlockTimeout = max(c.BlockTimeout, time.Millisecond)
	return c
}

// backoff returns the delay before retry number n (0 for the first retry):
// base·2ⁿ capped at max, then drawn uniformly from its upper half so that
// workers failing together do not retry in lock step.
func backoff(n int, base, maxDelay time.Duration) time.Duration {
	d := maxDelay
	if n < 30 && base<<n < maxDelay && base<<n > 0 {
		d = base << n
	}
	half := d / 2
	return half + rand.N(d-half+1)
}

// sleep waits for d or until ctx is done, and reports whether the full
// delay passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// discardLogger returns l, or a logger that drops everything when l is nil.
func discardLogger(l *slog.Logger) *slog.Logger {
	if l != nil {
		return l
	}
	return slog.New(slog.DiscardHandler)
}

// logEvery is how often a repeated warning (Sink or Redis down) is logged.
const logEvery = 10 * time.Second

// logLimiter is the shared rate limit on repeated log lines.
type logLimiter = ratelog.Limiter

// warn logs msg at Warn through lim.
func warn(log *slog.Logger, lim *logLimiter, msg string, err error, attrs ...slog.Attr) {
	ok, suppressed := lim.Allow(time.Now())
	if !ok {
		return
	}
	attrs = append(attrs, slog.Any("err", err))
	if suppressed > 0 {
		attrs = append(attrs, slog.Int("suppressed", suppressed))
	}
	log.LogAttrs(context.Background(), slog.LevelWarn, msg, attrs...)
}
