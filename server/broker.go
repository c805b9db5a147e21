package server

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/chatgg/chatgg/codec"
)

// ErrBusy is returned when a broker shard's queue is full: the node is
// overloaded and the publish is refused rather than buffered without bound.
var ErrBusy = errors.New("server: publish queue full")

// ErrKeyInFlight refuses a publish whose idempotency key belongs to a
// publish still in flight: it may yet fail, so the retry cannot be acked.
var ErrKeyInFlight = errors.New("server: a publish with this idempotency key is still in flight; retry shortly")

// ErrNotDelivered marks messages that were queued (and so will be stored)
// but could not be published for live delivery.
var ErrNotDelivered = errors.New("server: queued for storage but not delivered live")

// ErrStopping is returned for publishes after the broker began to stop.
var ErrStopping = errors.New("server: shutting down")

// bus is what the broker publishes to (pubsub.Local, pubsub.Redis).
type bus interface {
	Publish(ctx context.Context, batch []*codec.Message) error
}

// producer is the queue side (mq.Local, mq.Redis).
type producer interface {
	Enqueue(ctx context.Context, batch []*codec.Message) error
}

// deduper remembers idempotency keys (pubsub.LocalDedup, pubsub.RedisDedup).
type deduper interface {
	Claim(ctx context.Context, topic, key, id string) (existingID string, fresh bool, err error)
	Commit(ctx context.Context, topic, key, pending, final string) error
	Release(ctx context.Context, topic, key, id string) error
}

// pendingMark prefixes the id a key is claimed with until its message is
// queued: a retry that finds it knows the first attempt is still in flight
// and must not be acked yet (it may fail).
const pendingMark = "~"

// brokerConfig configures a broker.
type brokerConfig struct {
	Shards       int           // default 16
	QueueLen     int           // per shard, default 4096
	MaxBatch     int           // messages per round trip, default 256
	Timeout      time.Duration // per batch, default 5 s
	Bus          bus
	Queue        producer
	Dedup        deduper
	Logger       *slog.Logger
	OnPublished  func(n int)
	OnPublishErr func(err error)
}

// broker implements loop.Publisher and serves REST publishes: every message
// goes to the bus and to the queue (the original design), and is answered
// only once both accepted it.
//
// Order: publishes are sharded by topic onto a fixed set of goroutines; each
// shard hands ordered batches to the bus and the queue, so messages of one
// topic from one publisher keep their order everywhere.
type broker struct {
	cfg    brokerConfig
	shards []chan pubReq
	wg     sync.WaitGroup

	mu      sync.RWMutex // guards closed against sends on closed shards
	closed  bool
	stopped chan struct{}
}

type pubReq struct {
	m    *codec.Message
	done func(id string, err error)
}

func newBroker(cfg brokerConfig) *broker {
	if cfg.Shards <= 0 {
		cfg.Shards = 16
	}
	if cfg.QueueLen <= 0 {
		cfg.QueueLen = 4096
	}
	if cfg.MaxBatch <= 0 {
		cfg.MaxBatch = 256
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	b := &broker{cfg: cfg, stopped: make(chan struct{})}
	for i := 0; i < cfg.Shards; i++ {
		ch := make(chan pubReq, cfg.QueueLen)
		b.shards = append(b.shards, ch)
		b.wg.Add(1)
		go b.run(ch)
	}
	return b
}

// Publish queues m on its topic's shard. It never blocks: a full shard
// refuses with ErrBusy.
func (b *broker) Publish(m *codec.Message, done func(id string, err error)) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	if b.closed {
		done("", ErrStopping)
		return
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(m.Topic))
	select {
	case b.shards[h.Sum32()%uint32(len(b.shards))] <- pubReq{m: m, done: done}:
	default:
		done("", ErrBusy)
	}
}

// PublishWait publishes m and waits for the answer (REST handlers).
func (b *broker) PublishWait(ctx context.Context, m *codec.Message) (string, error) {
	type res struct {
		id  string
		err error
	}
	ch := make(chan res, 1)
	b.Publish(m, func(id string, err error) { ch <- res{id, err} })
	select {
	case r := <-ch:
		return r.id, r.err
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// Close stops taking publishes and waits for the queued ones to finish.
func (b *broker) Close() {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return
	}
	b.closed = true
	for _, ch := range b.shards {
		close(ch)
	}
	b.mu.Unlock()
	b.wg.Wait()
}

// run is one shard: it takes what is queued (up to MaxBatch) and sends it as
// one ordered batch.
func (b *broker) run(ch chan pubReq) {
	defer b.wg.Done()
	batch := make([]pubReq, 0, b.cfg.MaxBatch)
	for req := range ch {
		batch = append(batch[:0], req)
	more:
		for len(batch) < b.cfg.MaxBatch {
			select {
			case r, ok := <-ch:
				if !ok {
					break more
				}
				batch = append(batch, r)
			default:
				break more
			}
		}
		b.send(batch)
		clear(batch)
	}
}

// send publishes one batch: idempotency keys first, then the queue, then
// the bus; every request is answered.
func (b *broker) send(batch []pubReq) {
	ctx, cancel := context.WithTimeout(context.Background(), b.cfg.Timeout)
	defer cancel()

	msgs := make([]*codec.Message, 0, len(batch))
	reqs := make([]pubReq, 0, len(batch))
	for _, r := range batch {
		if r.m.Key != "" && b.cfg.Dedup != nil {
			orig, fresh, err := b.cfg.Dedup.Claim(ctx, r.m.Topic, r.m.Key, pendingMark+r.m.ID)
			if err != nil {
				b.fail(r, err)
				continue
			}
			if !fresh {
				if strings.HasPrefix(orig, pendingMark) {
					b.fail(r, ErrKeyInFlight)
					continue
				}
				r.done(orig, nil) // a retry: acked with the first id, not published again
				continue
			}
		}
		msgs = append(msgs, r.m)
		reqs = append(reqs, r)
	}
	if len(msgs) == 0 {
		return
	}

	// The queue is the commit point: once a message is queued it will be
	// stored. Publishing first or alongside would let a message refused
	// with an error be stored or delivered anyway, and its retry under the
	// same key twice.
	if err := b.cfg.Queue.Enqueue(ctx, msgs); err != nil {
		for _, r := range reqs {
			if r.m.Key != "" && b.cfg.Dedup != nil {
				_ = b.cfg.Dedup.Release(context.Background(), r.m.Topic, r.m.Key, pendingMark+r.m.ID)
			}
			b.fail(r, err)
		}
		return
	}
	// Queued: the keys now name accepted messages.
	if b.cfg.Dedup != nil {
		for _, r := range reqs {
			if r.m.Key != "" {
				if err := b.cfg.Dedup.Commit(ctx, r.m.Topic, r.m.Key, pendingMark+r.m.ID, r.m.ID); err != nil {
					b.cfg.Logger.Warn("idempotency key left pending", "topic", r.m.Topic, "err", err)
				}
			}
		}
	}
	if err := b.cfg.Bus.Publish(ctx, msgs); err != nil {
		// Queued, so it will be stored, but not delivered live: answered
		// with an error (acks mean both), and the idempotency key stays
		// claimed, so a retry with the same key is acked with this id
		// instead of storing the message twice.
		err = fmt.Errorf("%w: %w", ErrNotDelivered, err)
		for _, r := range reqs {
			b.fail(r, err)
		}
		return
	}
	if b.cfg.OnPublished != nil {
		b.cfg.OnPublished(len(reqs))
	}
	for _, r := range reqs {
		r.done(r.m.ID, nil)
	}
}

func (b *broker) fail(r pubReq, err error) {
	if b.cfg.OnPublishErr != nil {
		b.cfg.OnPublishErr(err)
	}
	r.done("", err)
}
