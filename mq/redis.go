package mq

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/redis/rueidis"

	"github.com/chatgg/chatgg/codec"
)

// Redis defaults; see RedisConfig.
const (
	DefaultQueue           = "chatgg:queue"
	DefaultHeartbeatTTL    = 10 * time.Second
	DefaultRecoverInterval = 5 * time.Second
)

// RedisConfig configures the Redis queue.
type RedisConfig struct {
	// Client is the Redis connection to use; Close leaves it open. When
	// nil, NewRedis connects to URL and Close closes that connection.
	Client rueidis.Client
	// URL is a redis:// URL (rueidis.ParseURL syntax), used when Client is
	// nil.
	URL string
	// Queue names the queue; the other keys are named after it (see
	// Redis). Default DefaultQueue ("chatgg:queue"). On Redis Cluster put
	// the name in braces ("{chatgg:queue}") so that all keys share a slot:
	// the scripts touch several of them at once.
	Queue string
	// WorkerID names this process's worker in Redis. It must be unique
	// among running workers; a worker restarted under the same id takes
	// back what its previous run left in flight. Default
	// "HOSTNAME-PID-RANDOM".
	WorkerID string
	// HeartbeatTTL is how long a worker counts as alive after its last
	// heartbeat; the worker refreshes it every HeartbeatTTL/3. A dead
	// worker's batch goes back to the queue between HeartbeatTTL and
	// HeartbeatTTL+RecoverInterval after it died. Default
	// DefaultHeartbeatTTL (10 s).
	HeartbeatTTL time.Duration
	// RecoverInterval is how often a running worker looks for dead ones.
	// Default DefaultRecoverInterval (5 s).
	RecoverInterval time.Duration
	// Logger receives Redis and Store failures (rate-limited) and dead
	// letters. Nil discards.
	Logger *slog.Logger
}

// Redis is the reliable queue on Redis lists, both producer (Enqueue) and
// worker (RunWorker). Keys, for Queue q and worker id w:
//
//	q                 list: the queue; Enqueue pushes on the left, workers take from the right
//	q:processing:w    list: worker w's in-flight batch
//	q:dead            list: dead letters, newest on the left
//	q:attempts        hash: message id → failed Store attempts
//	q:worker:w        string with TTL: w's heartbeat
//	q:workers         set: registered worker ids
//
// A message moves atomically from q to its worker's processing list and is
// removed from there only once stored (or dead-lettered), so it is in
// exactly one of the lists at any time. All methods are safe for concurrent
// use; RunWorker runs once at a time per Redis.
type Redis struct {
	client    rueidis.Client
	ownClient bool
	log       *slog.Logger
	id        string
	ttl       time.Duration
	every     time.Duration

	queue, processing, dead, attempts, heartbeat, workers string
	processingPrefix, heartbeatPrefix                     string

	moveScript, ackScript, buryScript, recoverScript, replayScript *rueidis.Lua

	running atomic.Bool
	closed  atomic.Bool
}

// NewRedis returns a Redis queue on cfg.Client, or on a new connection to
// cfg.URL.
func NewRedis(cfg RedisConfig) (*Redis, error) {
	r := &Redis{
		client: cfg.Client,
		log:    discardLogger(cfg.Logger).With("component", "mq"),
		id:     cfg.WorkerID,
		ttl:    cfg.HeartbeatTTL,
		every:  cfg.RecoverInterval,
	}
	if r.client == nil {
		if cfg.URL == "" {
			return nil, errors.New("mq: RedisConfig needs Client or URL")
		}
		opt, err := rueidis.ParseURL(cfg.URL)
		if err != nil {
			return nil, fmt.Errorf("mq: redis url: %w", err)
		}
		if r.client, err = rueidis.NewClient(opt); err != nil {
			return nil, fmt.Errorf("mq: connect redis: %w", err)
		}
		r.ownClient = true
	}
	if r.id == "" {
		r.id = defaultWorkerID()
	}
	if r.ttl <= 0 {
		r.ttl = DefaultHeartbeatTTL
	}
	r.ttl = max(r.ttl, 3*time.Millisecond) // refreshed every ttl/3
	if r.every <= 0 {
		r.every = DefaultRecoverInterval
	}
	q := cfg.Queue
	if q == "" {
		q = DefaultQueue
	}
	r.queue = q
	r.dead = q + ":dead"
	r.attempts = q + ":attempts"
	r.workers = q + ":workers"
	r.processingPrefix = q + ":processing:"
	r.heartbeatPrefix = q + ":worker:"
	r.processing = r.processingPrefix + r.id
	r.heartbeat = r.heartbeatPrefix + r.id
	r.log = r.log.With("worker", r.id)

	r.moveScript = rueidis.NewLuaScript(moveLua)
	r.ackScript = rueidis.NewLuaScript(ackLua)
	r.buryScript = rueidis.NewLuaScript(buryLua)
	r.recoverScript = rueidis.NewLuaScript(recoverLua)
	r.replayScript = rueidis.NewLuaScript(replayLua)
	return r, nil
}

func defaultWorkerID() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "host"
	}
	var rnd [4]byte
	_, _ = rand.Read(rnd[:]) // never fails (crypto/rand panics instead)
	return host + "-" + strconv.Itoa(os.Getpid()) + "-" + hex.EncodeToString(rnd[:])
}

// WorkerID returns the id this Redis's worker registers under.
func (r *Redis) WorkerID() string { return r.id }

// The scripts. Each runs atomically, which is what keeps a message in
// exactly one list: no reader sees it in two, and no crash leaves it in none.
const (
	// moveLua takes up to ARGV[1] messages from the queue's consumer end
	// (KEYS[1], right) onto the processing list (KEYS[2], left) and returns
	// them, oldest first. A loop of LMOVE rather than one per round trip.
	moveLua = `
local out = {}
for i = 1, tonumber(ARGV[1]) do
  local v = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT')
  if not v then break end
  out[i] = v
end
return out`

	// ackLua removes stored messages from the processing list (KEYS[1]) by
	// value and clears their attempt counts (KEYS[2]). ARGV: count n, the n
	// encoded messages, then their n ids. By value, not by position:
	// after a lost reply the list may hold a message this worker does not
	// know it took, and that one is not stored yet. Each LREM scans from the
	// tail, where the oldest messages (acknowledged first) are.
	ackLua = `
local n = tonumber(ARGV[1])
for i = 2, n + 1 do
  redis.call('LREM', KEYS[1], -1, ARGV[i])
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  for i = n + 2, #ARGV do
    redis.call('HDEL', KEYS[2], ARGV[i])
  end
end
return n`

	// buryLua moves one message (ARGV[1]) from the processing list
	// (KEYS[1]) to the dead-letter list (KEYS[2]) and clears its attempt
	// count (KEYS[3], field ARGV[2] unless empty). If the message is no
	// longer in the processing list (a recoverer gave it back to the queue
	// meanwhile) it is not dead-lettered: its copy in the queue lives on.
	buryLua = `
local n = redis.call('LREM', KEYS[1], -1, ARGV[1])
if n > 0 then
  redis.call('LPUSH', KEYS[2], ARGV[1])
end
if ARGV[2] ~= '' then
  redis.call('HDEL', KEYS[3], ARGV[2])
end
return n`

	// recoverLua gives a worker's processing list (KEYS[2]) back to the
	// queue's consumer end (KEYS[3]), so those messages are taken next and
	// in their original order: the list's newest (left) goes first to the
	// queue's right, the oldest ends up rightmost. KEYS[1] is the worker's
	// heartbeat, KEYS[4] the worker set, ARGV[1] the worker id. ARGV[2]:
	//   other    only if the heartbeat is gone; then unregister the worker
	//   own      unconditionally, keep the registration (a worker on itself)
	//   release  unconditionally, then unregister (a worker stopping)
	// Returns the number of messages moved, or -1 if the worker is alive.
	recoverLua = `
if ARGV[2] == 'other' and redis.call('EXISTS', KEYS[1]) == 1 then
  return -1
end
local n = 0
while redis.call('LMOVE', KEYS[2], KEYS[3], 'LEFT', 'RIGHT') do
  n = n + 1
end
if ARGV[2] ~= 'own' then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[4], ARGV[1])
end
return n`

	// replayLua moves up to ARGV[1] dead letters (KEYS[1]) back to the
	// queue's producer end (KEYS[2]), oldest first, as if enqueued anew.
	replayLua = `
local n = 0
for i = 1, tonumber(ARGV[1]) do
  if not redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT') then break end
  n = n + 1
end
return n`
)

// Enqueue pushes batch onto the queue in one LPUSH, so the batch is queued
// whole or not at all, in order. Any Redis error is returned; nothing is
// retried here, the caller decides.
func (r *Redis) Enqueue(ctx context.Context, batch []*codec.Message) error {
	if len(batch) == 0 {
		return nil
	}
	if r.closed.Load() {
		return ErrClosed
	}
	size := 0
	for _, m := range batch {
		size += codec.WireLen(m)
	}
	// One buffer for the whole batch, and strings that point into it
	// rather than copies: the buffer is never written again once encoded,
	// and it stays alive as long as rueidis holds the strings, even past a
	// cancelled Do.
	buf := make([]byte, 0, size)
	vals := make([]string, len(batch))
	for i, m := range batch {
		start := len(buf)
		buf = codec.AppendMessage(buf, m)
		vals[i] = unsafe.String(&buf[start], len(buf)-start)
	}
	if len(buf) != size {
		panic("mq: codec.WireLen disagrees with codec.AppendMessage")
	}
	err := r.client.Do(ctx, r.client.B().Lpush().Key(r.queue).Element(vals...).Build()).Error()
	if err != nil {
		return fmt.Errorf("mq: enqueue %d messages: %w", len(batch), err)
	}
	return nil
}

// Stats reports the queue's length, the messages in the processing lists of
// registered workers, and the dead letters.
func (r *Redis) Stats(ctx context.Context) (Stats, error) {
	c := r.client
	res := c.DoMulti(ctx,
		c.B().Llen().Key(r.queue).Build(),
		c.B().Llen().Key(r.dead).Build(),
		c.B().Smembers().Key(r.workers).Build())
	var s Stats
	var err error
	if s.Depth, err = res[0].AsInt64(); err != nil {
		return Stats{}, fmt.Errorf("mq: stats: %w", err)
	}
	if s.Dead, err = res[1].AsInt64(); err != nil {
		return Stats{}, fmt.Errorf("mq: stats: %w", err)
	}
	ids, err := res[2].AsStrSlice()
	if err != nil {
		return Stats{}, fmt.Errorf("mq: stats: %w", err)
	}
	if len(ids) == 0 {
		return s, nil
	}
	cmds := make(rueidis.Commands, len(ids))
	for i, id := range ids {
		cmds[i] = c.B().Llen().Key(r.processingPrefix + id).Build()
	}
	for _, res := range c.DoMulti(ctx, cmds...) {
		n, err := res.AsInt64()
		if err != nil {
			return Stats{}, fmt.Errorf("mq: stats: %w", err)
		}
		s.Processing += n
	}
	return s, nil
}

// replayChunk bounds how many dead letters one script call moves, so a
// large replay does not stall Redis.
const replayChunk = 1000

// ReplayDead moves every dead letter back to the queue's producer end,
// oldest first, and returns how many it moved. Their attempt counts were
// cleared when they were dead-lettered, so they get MaxAttempts again.
// On error, n says how many were moved before it.
func (r *Redis) ReplayDead(ctx context.Context) (n int, err error) {
	keys := []string{r.dead, r.queue}
	args := []string{strconv.Itoa(replayChunk)}
	for {
		moved, err := r.replayScript.Exec(ctx, r.client, keys, args).AsInt64()
		if err != nil {
			return n, fmt.Errorf("mq: replay dead letters: %w", err)
		}
		n += int(moved)
		if moved < replayChunk {
			return n, nil
		}
	}
}

// Ping checks that Redis answers.
func (r *Redis) Ping(ctx context.Context) error {
	if err := r.client.Do(ctx, r.client.B().Ping().Build()).Error(); err != nil {
		return fmt.Errorf("mq: redis ping: %w", err)
	}
	return nil
}

// Close makes further Enqueue calls fail with ErrClosed and closes the
// connection if NewRedis opened it. Stop the worker (cancel its ctx and
// wait for RunWorker) first: a worker whose connection is closed under it
// returns ErrClosed at once and leaves its batch in flight, for another
// worker to recover once the heartbeat expires, as if it had crashed.
func (r *Redis) Close() error {
	if r.closed.Swap(true) {
		return nil
	}
	if r.ownClient {
		r.client.Close()
	}
	return nil
}
