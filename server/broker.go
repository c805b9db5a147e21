package server

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/rueidis"

	"github.com/chatgg/chatgg/codec"
	"github.com/chatgg/chatgg/mq"
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

// ErrOutcomeUnknown marks a publish whose queue call failed without saying
// whether it queued the message (a connection lost mid-call): it may be
// stored. A retry with the same idempotency key is safe (see send).
var ErrOutcomeUnknown = errors.New("server: the queue did not answer, the message may be queued; retry with the same idempotency key")

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
	Commit(ctx context.Context, topic, key, pending, final string) (bool, error)
	Release(ctx context.Context, topic, key, id string) error
}

// pendingMark prefixes the id a key is claimed with until its message is
// queued: a retry that finds it knows the first attempt is still in flight
// and must not be acked yet (it may fail). The claim reads
// "~<id>@<hex ms>": the id and when the attempt claimed it (or took it
// over; see send).
const pendingMark = "~"

// parsePending splits a pending claim into the message id and the time
// (Unix ms) of the attempt that holds it; ok is false for anything else. A
// claim without a time (written by an older node) is as old as its id.
func parsePending(v string) (id string, ms int64, ok bool) {
	rest, found := strings.CutPrefix(v, pendingMark)
	if !found {
		return "", 0, false
	}
	id, at, took := strings.Cut(rest, "@")
	if !codec.ValidID(id) {
		return "", 0, false
	}
	if !took {
		return id, codec.IDTime(id), true
	}
	ms, err := strconv.ParseInt(at, 16, 64)
	return id, ms, err == nil
}

// pendingClaim is the claim value of an attempt to publish id, made (or
// taken over) at nowMs.
func pendingClaim(id string, nowMs int64) string {
	return pendingMark + id + "@" + strconv.FormatInt(nowMs, 16)
}

// queueRefused reports whether err means the queue did not take the batch:
// an error reply from Redis, a full or closed queue, a journal that refused
// it. Anything else (a lost connection, a timeout) leaves it unknown whether
// the batch was queued.
func queueRefused(err error) bool {
	if errors.Is(err, mq.ErrFull) || errors.Is(err, mq.ErrClosed) || errors.Is(err, mq.ErrNotQueued) {
		return true
	}
	var re *rueidis.RedisError
	return errors.As(err, &re)
}

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
	// pending is the value its idempotency key is claimed with ("" for a
	// publish without a key).
	pending string
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
//
// A key is claimed as pending (see pendingMark) until its message is queued, then
// committed to the id. A retry that finds it pending is refused with
// ErrKeyInFlight, unless the claim is older than staleAfter: then the first
// attempt has ended without committing (its node died, or its queue call
// failed with an unknown outcome), and the retry takes the claim over and
// publishes under the first attempt's id. If the first attempt did queue
// its message, storage keeps one copy (it is idempotent by id), so a key
// never stores two messages.
func (b *broker) send(batch []pubReq) {
	ctx, cancel := context.WithTimeout(context.Background(), b.cfg.Timeout)
	defer cancel()

	msgs := make([]*codec.Message, 0, len(batch))
	reqs := make([]pubReq, 0, len(batch))
	for _, r := range batch {
		if r.m.Key != "" && b.cfg.Dedup != nil {
			r.pending = pendingClaim(r.m.ID, time.Now().UnixMilli())
			orig, fresh, err := b.cfg.Dedup.Claim(ctx, r.m.Topic, r.m.Key, r.pending)
			if err != nil {
				b.fail(r, err)
				continue
			}
			if !fresh {
				if !strings.HasPrefix(orig, pendingMark) {
					r.done(orig, nil) // a retry: acked with the first id, not published again
					continue
				}
				took, err := b.takeOver(ctx, &r, orig)
				if err != nil {
					b.fail(r, err)
					continue
				}
				if !took {
					b.fail(r, ErrKeyInFlight)
					continue
				}
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
		// Refused: the keys are free for a retry. Unknown (the batch may
		// be queued): they stay pending, and a retry after staleAfter
		// takes them over under the same ids.
		refused := queueRefused(err)
		if !refused {
			err = fmt.Errorf("%w: %w", ErrOutcomeUnknown, err)
		}
		for _, r := range reqs {
			if refused && r.pending != "" {
				_ = b.cfg.Dedup.Release(context.Background(), r.m.Topic, r.m.Key, r.pending)
			}
			b.fail(r, err)
		}
		return
	}
	// Queued: the keys now name accepted messages.
	for _, r := range reqs {
		if r.pending != "" {
			if _, err := b.cfg.Dedup.Commit(ctx, r.m.Topic, r.m.Key, r.pending, r.m.ID); err != nil {
				b.cfg.Logger.Warn("idempotency key left pending", "topic", r.m.Topic, "err", err)
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

// staleAfter is how old a pending claim must be before a retry may take it
// over: twice the bound on one send, so its attempt has surely ended.
func (b *broker) staleAfter() time.Duration { return 2 * b.cfg.Timeout }

// takeOver tries to take the stale pending claim orig for r: on success r
// carries the first attempt's id (and its time) and the new claim value.
// It is false for a claim not stale yet, or taken over by another retry
// first. Staleness goes by the clocks of the nodes (the time in the claim):
// they must agree to well within staleAfter.
func (b *broker) takeOver(ctx context.Context, r *pubReq, orig string) (bool, error) {
	id, at, ok := parsePending(orig)
	now := time.Now().UnixMilli()
	if !ok || now-at < b.staleAfter().Milliseconds() {
		return false, nil
	}
	mark := pendingClaim(id, now)
	won, err := b.cfg.Dedup.Commit(ctx, r.m.Topic, r.m.Key, orig, mark)
	if err != nil || !won {
		return false, err
	}
	b.cfg.Logger.Info("idempotency key taken over from a stale attempt", "topic", r.m.Topic, "id", id)
	r.m.ID, r.m.TS, r.pending = id, codec.IDTime(id), mark
	return true, nil
}

func (b *broker) fail(r pubReq, err error) {
	if b.cfg.OnPublishErr != nil {
		b.cfg.OnPublishErr(err)
	}
	r.done("", err)
}
