package mq

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/chatgg/chatgg/codec"
	"github.com/chatgg/chatgg/internal/testsvc"
)

// redisEnv is one test's queue on a Redis server, with a client of its own
// to look at the keys.
type redisEnv struct {
	t     *testing.T
	url   string
	queue string
	admin rueidis.Client
}

func newRedisEnv(t *testing.T, url string) *redisEnv {
	t.Helper()
	opt, err := rueidis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	admin, err := rueidis.NewClient(opt)
	if err != nil {
		t.Fatal(err)
	}
	e := &redisEnv{t: t, url: url, queue: testsvc.UniqueName(t, "mq"), admin: admin}
	t.Cleanup(func() {
		defer admin.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		keys, err := admin.Do(ctx, admin.B().Keys().Pattern(e.queue+"*").Build()).AsStrSlice()
		if err != nil || len(keys) == 0 {
			return // a dedicated server may be gone already
		}
		_ = admin.Do(ctx, admin.B().Del().Key(keys...).Build()).Error()
	})
	return e
}

// open returns a Redis on this env's queue, closed in t.Cleanup.
func (e *redisEnv) open(cfg RedisConfig) *Redis {
	e.t.Helper()
	if cfg.Client == nil && cfg.URL == "" {
		cfg.URL = e.url
	}
	cfg.Queue = e.queue
	r, err := NewRedis(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = r.Close() })
	return r
}

func (e *redisEnv) stats(r *Redis) Stats {
	e.t.Helper()
	s, err := r.Stats(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	return s
}

// list returns the decoded ids in a list, left to right.
func (e *redisEnv) list(key string) []string {
	e.t.Helper()
	raws, err := e.admin.Do(context.Background(), e.admin.B().Lrange().Key(key).Start(0).Stop(-1).Build()).AsStrSlice()
	if err != nil {
		e.t.Fatal(err)
	}
	out := make([]string, len(raws))
	for i, raw := range raws {
		var m codec.Message
		if err := codec.DecodeMessage([]byte(raw), &m); err != nil {
			out[i] = "undecodable"
			continue
		}
		out[i] = m.ID
	}
	return out
}

// lists returns the decoded ids in the lists at keys, read atomically so
// that a message moving between them is seen exactly once.
func (e *redisEnv) lists(keys ...string) []string {
	e.t.Helper()
	const script = `
local out = {}
for _, k in ipairs(KEYS) do
  for _, v in ipairs(redis.call('LRANGE', k, 0, -1)) do table.insert(out, v) end
end
return out`
	raws, err := rueidis.NewLuaScript(script).Exec(context.Background(), e.admin, keys, nil).AsStrSlice()
	if err != nil {
		e.t.Fatal(err)
	}
	out := make([]string, len(raws))
	for i, raw := range raws {
		var m codec.Message
		if err := codec.DecodeMessage([]byte(raw), &m); err != nil {
			e.t.Fatalf("undecodable message in %v", keys)
		}
		out[i] = m.ID
	}
	return out
}

func (e *redisEnv) exists(key string) bool {
	e.t.Helper()
	n, err := e.admin.Do(context.Background(), e.admin.B().Exists().Key(key).Build()).AsInt64()
	if err != nil {
		e.t.Fatal(err)
	}
	return n == 1
}

func (e *redisEnv) workers() []string {
	e.t.Helper()
	ids, err := e.admin.Do(context.Background(), e.admin.B().Smembers().Key(e.queue+":workers").Build()).AsStrSlice()
	if err != nil {
		e.t.Fatal(err)
	}
	slices.Sort(ids)
	return ids
}

func enqueueAll(t *testing.T, r *Redis, all []*codec.Message, batch int) {
	t.Helper()
	for b := range slices.Chunk(all, batch) {
		if err := r.Enqueue(context.Background(), b); err != nil {
			t.Fatal(err)
		}
	}
}

func TestRedisStoresInFIFOOrderForOneProducer(t *testing.T) {
	e := newRedisEnv(t, testsvc.Redis(t))
	r := e.open(RedisConfig{})
	sink := newRecSink()
	runWorker(t, func(ctx context.Context) error {
		return r.RunWorker(ctx, sink, fastRetry(WorkerConfig{BatchSize: 64}))
	})
	all := msgs(t, 1000)
	enqueueAll(t, r, all[:500], 100)
	enqueueAll(t, r, all[500:], 1)
	eventually(t, 20*time.Second, "all stored", func() bool { return sink.count() == len(all) })
	if !slices.Equal(sink.storedOrder(), ids(all)) {
		t.Fatal("stored out of order")
	}
	sink.assertOnce(t, all)
	eventually(t, 15*time.Second, "processing list empty", func() bool {
		return e.stats(r) == Stats{}
	})
}

func TestRedisBatchesUpToBatchSize(t *testing.T) {
	e := newRedisEnv(t, testsvc.Redis(t))
	r := e.open(RedisConfig{})
	all := msgs(t, 25)
	enqueueAll(t, r, all, 25)
	sink := newRecSink()
	runWorker(t, func(ctx context.Context) error {
		return r.RunWorker(ctx, sink, fastRetry(WorkerConfig{BatchSize: 10}))
	})
	eventually(t, 15*time.Second, "all stored", func() bool { return sink.count() == 25 })
	if got, want := sink.batchSizes(), []int{10, 10, 5}; !slices.Equal(got, want) {
		t.Fatalf("batch sizes = %v, want %v", got, want)
	}
}

func TestRedisWaitsMaxWaitForBatchToFill(t *testing.T) {
	e := newRedisEnv(t, testsvc.Redis(t))
	r := e.open(RedisConfig{})
	sink := newRecSink()
	runWorker(t, func(ctx context.Context) error {
		return r.RunWorker(ctx, sink, WorkerConfig{BatchSize: 10, MaxWait: 2 * time.Second})
	})
	all := msgs(t, 2)
	enqueueAll(t, r, all[:1], 1)
	eventually(t, 15*time.Second, "worker took the first message", func() bool {
		return e.stats(r).Processing == 1
	})
	enqueueAll(t, r, all[1:], 1)
	eventually(t, 20*time.Second, "partial batch stored after MaxWait", func() bool { return sink.count() == 2 })
	if got := sink.batchSizes(); !slices.Equal(got, []int{2}) {
		t.Fatalf("batch sizes = %v, want [2]", got)
	}
}

func TestRedisRetriesFailedStoreAndStoresEachMessageOnce(t *testing.T) {
	e := newRedisEnv(t, testsvc.Redis(t))
	r := e.open(RedisConfig{})
	sink := newRecSink()
	sink.failNextCalls(4)
	all := msgs(t, 40)
	enqueueAll(t, r, all, 40)
	runWorker(t, func(ctx context.Context) error {
		return r.RunWorker(ctx, sink, fastRetry(WorkerConfig{MaxAttempts: 2}))
	})
	eventually(t, 20*time.Second, "stored after retries", func() bool { return sink.count() == len(all) })
	sink.assertOnce(t, all)
	eventually(t, 15*time.Second, "queue empty", func() bool { return e.stats(r) == Stats{} })
	if e.exists(e.queue + ":attempts") {
		t.Fatal("attempt counts left behind after the messages were stored")
	}
}

func TestRedisSinkOutageDeadLettersNothing(t *testing.T) {
	e := newRedisEnv(t, testsvc.Redis(t))
	r := e.open(RedisConfig{})
	sink := newRecSink()
	sink.setDown(true)
	all := msgs(t, 5)
	enqueueAll(t, r, all, 5)
	runWorker(t, func(ctx context.Context) error {
		return r.RunWorker(ctx, sink, fastRetry(WorkerConfig{MaxAttempts: 2}))
	})
	eventually(t, 20*time.Second, "several failed attempts", func() bool { return sink.numCalls() >= 10 })
	if s := e.stats(r); s != (Stats{Processing: 5}) {
		t.Fatalf("stats during the outage = %+v, want all 5 in flight", s)
	}
	sink.setDown(false)
	eventually(t, 20*time.Second, "stored after the outage", func() bool { return sink.count() == len(all) })
	sink.assertOnce(t, all)
	eventually(t, 15*time.Second, "nothing dead, nothing left", func() bool { return e.stats(r) == Stats{} })
}

func TestRedisDeadLettersMessageThatFailsMaxAttemptsAndReplaysIt(t *testing.T) {
	for _, tc := range []struct {
		name string
		sink func(*recSink) Sink
	}{
		{"sink with Ping", func(s *recSink) Sink { return s }},
		{"sink without Ping", func(s *recSink) Sink { return noPingSink{s} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newRedisEnv(t, testsvc.Redis(t))
			r := e.open(RedisConfig{})
			rec := newRecSink()
			all := msgs(t, 20)
			bad := all[13]
			rec.setPoison(bad.ID, true)
			enqueueAll(t, r, all, 20)
			runWorker(t, func(ctx context.Context) error {
				return r.RunWorker(ctx, tc.sink(rec), fastRetry(WorkerConfig{MaxAttempts: 3}))
			})
			eventually(t, 20*time.Second, "poison message dead-lettered", func() bool {
				return e.stats(r) == Stats{Dead: 1}
			})
			if n := rec.count(); n != 19 {
				t.Fatalf("stored %d messages, want the 19 good ones", n)
			}
			if got := e.list(e.queue + ":dead"); !slices.Equal(got, []string{bad.ID}) {
				t.Fatalf("dead letters = %v, want [%s]", got, bad.ID)
			}
			if e.exists(e.queue + ":attempts") {
				t.Fatal("attempt count not cleared when dead-lettered")
			}

			rec.setPoison(bad.ID, false)
			n, err := r.ReplayDead(context.Background())
			if err != nil || n != 1 {
				t.Fatalf("ReplayDead = %d, %v; want 1, nil", n, err)
			}
			eventually(t, 20*time.Second, "replayed message stored", func() bool { return rec.count() == 20 })
			rec.assertOnce(t, all)
			eventually(t, 15*time.Second, "queue empty", func() bool { return e.stats(r) == Stats{} })
		})
	}
}

func TestRedisDeadLettersUndecodableMessage(t *testing.T) {
	e := newRedisEnv(t, testsvc.Redis(t))
	r := e.open(RedisConfig{})
	all := msgs(t, 4)
	enqueueAll(t, r, all[:2], 2)
	if err := e.admin.Do(context.Background(), e.admin.B().Lpush().Key(e.queue).Element("not a message").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	enqueueAll(t, r, all[2:], 2)
	sink := newRecSink()
	runWorker(t, func(ctx context.Context) error {
		return r.RunWorker(ctx, sink, fastRetry(WorkerConfig{}))
	})
	eventually(t, 15*time.Second, "good messages stored", func() bool { return sink.count() == 4 })
	if !slices.Equal(sink.storedOrder(), ids(all)) {
		t.Fatal("stored out of order")
	}
	eventually(t, 15*time.Second, "garbage dead-lettered", func() bool { return e.stats(r) == Stats{Dead: 1} })
	if got := e.list(e.queue + ":dead"); !slices.Equal(got, []string{"undecodable"}) {
		t.Fatalf("dead letters = %v", got)
	}
}

func TestRedisRecoversBatchOfKilledWorker(t *testing.T) {
	e := newRedisEnv(t, testsvc.Redis(t))
	const ttl = time.Second
	a := e.open(RedisConfig{WorkerID: "a", HeartbeatTTL: ttl, RecoverInterval: 100 * time.Millisecond})
	sink := newRecSink()
	sink.setDown(true)
	all := msgs(t, 20)
	enqueueAll(t, a, all[:15], 15)
	stopA := runWorker(t, func(ctx context.Context) error {
		return a.RunWorker(ctx, sink, fastRetry(WorkerConfig{}))
	})
	eventually(t, 15*time.Second, "worker a holds the batch", func() bool {
		return e.stats(a).Processing == 15 && sink.numCalls() > 0
	})
	// Queued behind a's batch, and taken by a as its next batch while it
	// retries the first.
	enqueueAll(t, a, all[15:], 5)
	eventually(t, 15*time.Second, "worker a holds the next batch too", func() bool {
		return e.stats(a).Processing == 20
	})

	// Kill a: its connection goes, so it can neither store, acknowledge nor
	// give anything back, and its heartbeat is left to expire.
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := stopA(); !errors.Is(err, ErrClosed) {
		t.Fatalf("killed worker returned %v, want ErrClosed", err)
	}
	if got := e.list(e.queue + ":processing:a"); len(got) != 20 {
		t.Fatalf("a's processing list holds %d messages after the kill, want 20", len(got))
	}
	if got := e.workers(); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("workers = %v, want [a]", got)
	}

	// b starts while a's heartbeat may still be alive; its recoverer must
	// wait for the heartbeat to expire and then give a's batch back once.
	b := e.open(RedisConfig{WorkerID: "b", HeartbeatTTL: ttl, RecoverInterval: 100 * time.Millisecond})
	runWorker(t, func(ctx context.Context) error {
		return b.RunWorker(ctx, sink, fastRetry(WorkerConfig{}))
	})
	eventually(t, 15*time.Second, "a's batch recovered and a unregistered", func() bool {
		return !e.exists(e.queue+":processing:a") && slices.Equal(e.workers(), []string{"b"})
	})
	// The sink is still down, so every message sits in the queue or in b's
	// processing list: each exactly once.
	held := e.lists(e.queue, e.queue+":processing:b")
	slices.Sort(held)
	if want := ids(all); !slices.Equal(held, want) {
		t.Fatalf("after recovery the lists hold %d ids, want each of the %d once: %v", len(held), len(want), held)
	}

	sink.setDown(false)
	eventually(t, 20*time.Second, "all stored", func() bool { return sink.count() == len(all) })
	// Order is not asserted: b may have taken what was queued behind a's
	// batch before a's heartbeat expired.
	sink.assertOnce(t, all)
	eventually(t, 15*time.Second, "queue empty", func() bool { return e.stats(b) == Stats{} })
}

func TestRedisLiveWorkerKeepsItsBatchPastHeartbeatTTL(t *testing.T) {
	e := newRedisEnv(t, testsvc.Redis(t))
	// Generous: the heartbeat must lapse only if the worker is dead, not
	// because a loaded CI machine starved it for a moment.
	const ttl = 3 * time.Second
	cfg := func(id string) RedisConfig {
		return RedisConfig{WorkerID: id, HeartbeatTTL: ttl, RecoverInterval: 50 * time.Millisecond}
	}
	a, b := e.open(cfg("a")), e.open(cfg("b"))
	sink := newRecSink()
	sink.setDown(true)
	all := msgs(t, 10)
	enqueueAll(t, a, all, 10)
	runWorker(t, func(ctx context.Context) error { return a.RunWorker(ctx, sink, fastRetry(WorkerConfig{})) })
	eventually(t, 15*time.Second, "a holds the batch", func() bool {
		return len(e.list(e.queue+":processing:a")) == 10
	})
	runWorker(t, func(ctx context.Context) error { return b.RunWorker(ctx, sink, fastRetry(WorkerConfig{})) })
	// A negative property needs a window: longer than the TTL, with a
	// retrying a failing Store and b's recoverer looking every 50 ms.
	for start := time.Now(); time.Since(start) < ttl+time.Second; time.Sleep(50 * time.Millisecond) {
		if n := len(e.list(e.queue + ":processing:a")); n != 10 {
			t.Fatalf("a's processing list holds %d messages while a is alive, want 10", n)
		}
	}
	sink.setDown(false)
	eventually(t, 15*time.Second, "stored", func() bool { return sink.count() == len(all) })
	sink.assertOnce(t, all)
}

func TestRedisGracefulStopGivesHeldBatchBack(t *testing.T) {
	e := newRedisEnv(t, testsvc.Redis(t))
	r := e.open(RedisConfig{WorkerID: "w"})
	sink := newRecSink()
	sink.setDown(true)
	all := msgs(t, 12)
	enqueueAll(t, r, all, 12)
	stop := runWorker(t, func(ctx context.Context) error {
		return r.RunWorker(ctx, sink, fastRetry(WorkerConfig{BatchSize: 5, DrainTimeout: 50 * time.Millisecond}))
	})
	// The batch it retries, and the next one, taken meanwhile.
	eventually(t, 15*time.Second, "worker holds two batches", func() bool { return e.stats(r).Processing == 10 })
	if err := stop(); err != nil {
		t.Fatalf("RunWorker = %v, want nil", err)
	}
	if s := e.stats(r); s != (Stats{Depth: 12}) {
		t.Fatalf("stats after stop = %+v, want all 12 queued", s)
	}
	if e.exists(e.queue+":worker:w") || len(e.workers()) != 0 {
		t.Fatal("stopped worker still registered")
	}
	if got, want := e.list(e.queue), ids(all); !slices.Equal(got, reversed(want)) {
		t.Fatalf("queue after stop = %v, want %v (newest first)", got, reversed(want))
	}

	// The same worker id starts again and stores everything, in order.
	sink.setDown(false)
	runWorker(t, func(ctx context.Context) error {
		return r.RunWorker(ctx, sink, fastRetry(WorkerConfig{BatchSize: 5}))
	})
	eventually(t, 15*time.Second, "stored", func() bool { return sink.count() == len(all) })
	if !slices.Equal(sink.storedOrder(), ids(all)) {
		t.Fatal("stored out of order after the batch was given back")
	}
	sink.assertOnce(t, all)
}

func reversed(s []string) []string {
	out := slices.Clone(s)
	slices.Reverse(out)
	return out
}

func TestRedisRestartedWorkerTakesBackItsOwnBatch(t *testing.T) {
	e := newRedisEnv(t, testsvc.Redis(t))
	all := msgs(t, 6)
	// What a crashed worker "w" leaves behind: its batch (all[0:3]) in its
	// processing list, newest on the left, a live heartbeat (restarted
	// within the TTL) and its registration; all[3:6] still queued.
	ctx := context.Background()
	var raws []string
	for _, m := range all {
		raws = append(raws, string(codec.AppendMessage(nil, m)))
	}
	b := e.admin.B()
	for _, res := range e.admin.DoMulti(ctx,
		b.Lpush().Key(e.queue+":processing:w").Element(raws[0:3]...).Build(),
		b.Lpush().Key(e.queue).Element(raws[3:6]...).Build(),
		b.Set().Key(e.queue+":worker:w").Value("1").ExSeconds(60).Build(),
		b.Sadd().Key(e.queue+":workers").Member("w").Build()) {
		if err := res.Error(); err != nil {
			t.Fatal(err)
		}
	}
	r := e.open(RedisConfig{WorkerID: "w"})
	sink := newRecSink()
	runWorker(t, func(ctx context.Context) error {
		return r.RunWorker(ctx, sink, fastRetry(WorkerConfig{}))
	})
	eventually(t, 15*time.Second, "stored", func() bool { return sink.count() == len(all) })
	sink.assertOnce(t, all)
	if !slices.Equal(sink.storedOrder(), ids(all)) {
		t.Fatalf("stored %v, want %v", sink.storedOrder(), ids(all))
	}
}

func TestRedisSecondRunWorkerIsRejected(t *testing.T) {
	e := newRedisEnv(t, testsvc.Redis(t))
	r := e.open(RedisConfig{})
	sink := newRecSink()
	runWorker(t, func(ctx context.Context) error { return r.RunWorker(ctx, sink, fastRetry(WorkerConfig{})) })
	eventually(t, 15*time.Second, "first worker registered", func() bool { return len(e.workers()) == 1 })
	if err := r.RunWorker(context.Background(), sink, WorkerConfig{}); !errors.Is(err, ErrWorkerRunning) {
		t.Fatalf("second RunWorker = %v, want ErrWorkerRunning", err)
	}
}

func TestRedisEnqueueAfterCloseFails(t *testing.T) {
	e := newRedisEnv(t, testsvc.Redis(t))
	r := e.open(RedisConfig{})
	if err := r.Ping(context.Background()); err != nil {
		t.Fatalf("Ping = %v", err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.Enqueue(context.Background(), msgs(t, 1)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Enqueue after Close = %v, want ErrClosed", err)
	}
}

func TestNewRedisNeedsClientOrURL(t *testing.T) {
	if _, err := NewRedis(RedisConfig{}); err == nil {
		t.Fatal("NewRedis without Client or URL succeeded")
	}
}

func TestRedisSurvivesRedisRestart(t *testing.T) {
	srv := testsvc.NewRedis(t)
	e := newRedisEnv(t, srv.URL())
	r := e.open(RedisConfig{})
	sink := newRecSink()
	stop := runWorker(t, func(ctx context.Context) error {
		return r.RunWorker(ctx, sink, WorkerConfig{RetryBase: 10 * time.Millisecond, RetryMax: 200 * time.Millisecond})
	})
	all := msgs(t, 300)
	enqueueAll(t, r, all[:100], 10)
	eventually(t, 20*time.Second, "first part stored", func() bool { return sink.count() == 100 })

	// Redis runs without persistence in tests, so it goes down with
	// nothing queued; what matters is that producers see the failure and
	// that the worker comes back by itself.
	srv.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	err := r.Enqueue(ctx, all[100:110])
	cancel()
	if err == nil {
		t.Fatal("Enqueue while Redis is down succeeded")
	}
	if err := r.Ping(context.Background()); err == nil {
		t.Fatal("Ping while Redis is down succeeded")
	}

	srv.Start()
	// The producer retries its failed batch, as the server's broker would.
	eventually(t, 20*time.Second, "Enqueue works again", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		return r.Enqueue(ctx, all[100:110]) == nil
	})
	enqueueAll(t, r, all[110:], 10)
	eventually(t, 20*time.Second, "everything stored", func() bool { return sink.count() == len(all) })
	sink.assertOnce(t, all)
	if !slices.Equal(sink.storedOrder(), ids(all)) {
		t.Fatal("stored out of order across the restart")
	}
	eventually(t, 20*time.Second, "worker registered again", func() bool {
		return len(e.workers()) == 1
	})
	if err := stop(); err != nil {
		t.Fatalf("RunWorker = %v, want nil", err)
	}
}
