package mq

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"

	"github.com/chatgg/chatgg/codec"
)

// entry is one message a worker holds: its encoded form, which is how the
// processing list knows it, and the decoded message for the Sink.
type entry struct {
	raw string
	m   *codec.Message
}

// worker is the state of one RunWorker call. collect runs on the RunWorker
// goroutine while process may run on another (see RunWorker), so each
// field belongs to one of them, or is immutable (r, sink, cfg) or safe for
// concurrent use (log, lim, slim, fatal). The maintenance goroutine uses
// only the latter.
type worker struct {
	r    *Redis
	sink Sink
	cfg  WorkerConfig
	log  *slog.Logger
	lim  logLimiter // Redis failures
	slim logLimiter // Store failures

	// dirty means a Redis call that takes messages failed without a reply,
	// so the processing list may hold messages this worker does not know
	// it took. Before the next batch they go back to the queue. collect's.
	dirty bool
	// fails counts consecutive failed Redis calls in collect, for backoff.
	fails int
	// fatal is set once the connection is closed under the worker: RunWorker
	// then returns ErrClosed.
	fatal atomic.Bool
	// msgs is scratch for the batch handed to Store. process's.
	msgs []*codec.Message
}

// RunWorker drains the queue into sink until ctx is done, using the reliable
// queue pattern. It
//
//   - registers the worker (heartbeat key with TTL, id in the worker set),
//     and gives back to the queue whatever a previous run under the same id
//     left in its processing list;
//   - waits (BLMOVE, cfg.BlockTimeout at a time) for a message and moves it
//     to its processing list, then moves more without blocking, up to
//     cfg.BatchSize or until cfg.MaxWait has passed since the first;
//   - decodes them (an undecodable one goes straight to the dead letters),
//     calls sink.Store, and only then removes them from the processing list;
//   - takes the next batch while the Store of the current one runs, and
//     acknowledges a stored batch while the next one is being stored, so
//     the Sink does not wait for Redis between batches. Batches are still
//     stored one at a time and in order: the next Store starts when the
//     current batch is stored (or dead-lettered). A worker therefore holds
//     up to two batches;
//   - every cfg.RecoverInterval, and at start, gives the processing list of
//     every registered worker whose heartbeat expired back to the queue.
//
// A failed Store is retried after an exponential backoff with jitter. When
// the Sink seems healthy (part of the batch was stored, or the Sink has a
// Ping method that answers nil), the failed part is split in halves on each
// retry so that a broken message ends up alone; a message that fails alone
// cfg.MaxAttempts times (counted in Redis, so across workers) moves to the
// dead-letter list. A Sink that fails everything is an outage: the worker
// keeps the batch and waits, dead-lettering nothing, provided the Sink has
// Ping; without Ping a lone message's failures count regardless.
// Redis errors are retried with backoff, logged once per interval; nothing
// is dropped.
//
// When ctx is done the worker stops taking messages, tries within
// cfg.DrainTimeout to store the batch it holds, gives back to the queue what
// it could not store, unregisters and returns nil. It returns ErrClosed if
// the Redis was closed under it, and ErrWorkerRunning if another RunWorker
// on r is running.
func (r *Redis) RunWorker(ctx context.Context, sink Sink, cfg WorkerConfig) error {
	if !r.running.CompareAndSwap(false, true) {
		return ErrWorkerRunning
	}
	defer r.running.Store(false)
	w := &worker{
		r:    r,
		sink: sink,
		cfg:  cfg.withDefaults(),
		log:  r.log,
		lim:  logLimiter{Every: logEvery},
		slim: logLimiter{Every: logEvery},
	}
	if err := w.redo(ctx, "join", w.join); err != nil {
		if w.fatal.Load() {
			return ErrClosed
		}
		return nil // ctx done before joining: nothing taken, nothing to give back
	}

	mctx, stopMaint := context.WithCancel(context.WithoutCancel(ctx))
	var maint sync.WaitGroup
	maint.Go(func() { w.maintain(mctx) })

	// held is the batch to store next, taken while the one before it was
	// being stored; next is the spare buffer the batch after it goes into.
	// acked is closed when the acknowledgement of the last stored batch,
	// which runs alongside the next Store, is done (nil: none running).
	var held, next []entry
	var acked chan struct{}
	waitAck := func() {
		if acked != nil {
			<-acked
			acked = nil
		}
	}
	for ctx.Err() == nil && !w.fatal.Load() && !r.closed.Load() {
		if len(held) == 0 {
			// Idle: collect may give the whole processing list back to
			// the queue (after a lost reply), so no acknowledgement may
			// still be on its way.
			waitAck()
			held = w.collect(ctx, held[:0], true)
			continue
		}
		done := make(chan processed, 1)
		go func(batch []entry) { done <- w.process(ctx, batch, true) }(held)
		next = w.collect(ctx, next[:0], false)
		res := <-done
		waitAck()
		if len(res.stored) > 0 {
			// A copy: held's buffer takes the batch after next meanwhile.
			acked = w.ackLater(ctx, append([]entry(nil), res.stored...))
		}
		if len(res.left) > 0 {
			// Stopping with left unstored: left is older than next.
			held = append(append(make([]entry, 0, len(res.left)+len(next)), res.left...), next...)
			break
		}
		clear(held) // drop the stored batch's messages
		held, next = next, held[:0]
	}
	waitAck()
	if r.closed.Load() {
		w.fatal.Store(true)
	}
	if w.fatal.Load() {
		stopMaint()
		maint.Wait()
		return ErrClosed // as a crash: the heartbeat expires, a recoverer takes over
	}

	// Graceful stop. Stop the heartbeat before unregistering, so that it
	// cannot register the worker again afterwards.
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), w.cfg.DrainTimeout)
	defer cancel()
	// held may be two batches: store them one batch at a time.
	for len(held) > 0 {
		n := min(len(held), w.cfg.BatchSize)
		if res := w.process(dctx, held[:n], false); len(res.left) > 0 {
			held = append(res.left, held[n:]...)
			break
		}
		held = held[n:]
	}
	stopMaint()
	maint.Wait()
	if w.fatal.Load() {
		return ErrClosed
	}
	// Giving back gets a grace period of its own, at least a second: the
	// drain may have used up the first on a Sink that is down.
	rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), max(w.cfg.DrainTimeout, time.Second))
	defer rcancel()
	if err := w.redo(rctx, "release", w.release); err != nil {
		if w.fatal.Load() {
			return ErrClosed
		}
		return fmt.Errorf("mq: worker %s: stop: %d messages left in flight for recovery: %w", r.id, len(held), err)
	}
	return nil
}

// redo calls fn until it succeeds, backing off between failures. It gives
// up when ctx is done, or when the connection is closed (setting w.fatal).
// Safe to call from process and collect at once.
func (w *worker) redo(ctx context.Context, what string, fn func(context.Context) error) error {
	for n := 0; ; n++ {
		err := fn(ctx)
		if err == nil {
			return nil
		}
		if errors.Is(err, rueidis.ErrClosing) {
			w.fatal.Store(true)
			return ErrClosed
		}
		if ctx.Err() != nil {
			return err
		}
		warn(w.log, &w.lim, "mq: redis failed, retrying", err, slog.String("op", what))
		if !sleep(ctx, backoff(n, w.cfg.RetryBase, w.cfg.RetryMax)) {
			return err
		}
	}
}

// join gives back what a previous run under this id left in flight,
// registers the worker and recovers dead workers.
func (w *worker) join(ctx context.Context) error {
	if err := w.recover(ctx, w.r.id, "own"); err != nil {
		return err
	}
	if err := w.beat(ctx); err != nil {
		return err
	}
	w.recoverDead(ctx)
	return nil
}

// release gives the processing list back to the queue and unregisters.
func (w *worker) release(ctx context.Context) error {
	return w.recover(ctx, w.r.id, "release")
}

// recover runs recoverLua on worker id's keys; see there for mode.
func (w *worker) recover(ctx context.Context, id, mode string) error {
	r := w.r
	n, err := r.recoverScript.Exec(ctx, r.client,
		[]string{r.heartbeatPrefix + id, r.processingPrefix + id, r.queue, r.workers},
		[]string{id, mode}).AsInt64()
	if err != nil {
		return err
	}
	if n > 0 {
		w.log.LogAttrs(ctx, slog.LevelInfo, "mq: gave in-flight messages back to the queue",
			slog.String("from", id), slog.String("mode", mode), slog.Int64("messages", n))
	}
	return nil
}

// beat refreshes the heartbeat and (re-)registers the worker: a recoverer
// that thought it dead has unregistered it.
func (w *worker) beat(ctx context.Context) error {
	r := w.r
	c := r.client
	for _, res := range c.DoMulti(ctx,
		c.B().Set().Key(r.heartbeat).Value(strconv.FormatInt(time.Now().UnixMilli(), 10)).
			PxMilliseconds(max(r.ttl.Milliseconds(), 1)).Build(),
		c.B().Sadd().Key(r.workers).Member(r.id).Build()) {
		if err := res.Error(); err != nil {
			return err
		}
	}
	return nil
}

// recoverDead gives the batches of registered workers whose heartbeat has
// expired back to the queue. Errors are logged; the next round retries.
func (w *worker) recoverDead(ctx context.Context) {
	r := w.r
	ids, err := r.client.Do(ctx, r.client.B().Smembers().Key(r.workers).Build()).AsStrSlice()
	if err != nil {
		w.maintErr(ctx, "recover", err)
		return
	}
	for _, id := range ids {
		if id == r.id {
			continue
		}
		if err := w.recover(ctx, id, "other"); err != nil {
			w.maintErr(ctx, "recover", err)
			return
		}
	}
}

func (w *worker) maintErr(ctx context.Context, op string, err error) {
	if ctx.Err() != nil || errors.Is(err, rueidis.ErrClosing) {
		return // stopping; not worth a warning
	}
	warn(w.log, &w.lim, "mq: redis failed, retrying", err, slog.String("op", op))
}

// maintain keeps the heartbeat fresh and recovers dead workers until ctx
// is done. It runs on its own goroutine so that a long Store or a blocking
// wait does not let the heartbeat lapse.
func (w *worker) maintain(ctx context.Context) {
	beat := time.NewTicker(w.r.ttl / 3)
	defer beat.Stop()
	rec := time.NewTicker(w.r.every)
	defer rec.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-beat.C:
			if err := w.beat(ctx); err != nil {
				w.maintErr(ctx, "heartbeat", err)
			}
		case <-rec.C:
			w.recoverDead(ctx)
		}
	}
}

// collect waits for the next batch and returns it in held, oldest first;
// it returns nothing when ctx is done, the block timed out or Redis failed.
// idle says the worker holds no other batch: only then may it give its
// processing list back to the queue after a lost reply (w.dirty); when not
// idle it takes nothing until then.
// Blocking calls run under a context that is not cancelled, bounded by
// BlockTimeout instead: a BLMOVE abandoned mid-wait could still move a
// message into the processing list after the worker stopped looking.
func (w *worker) collect(ctx context.Context, held []entry, idle bool) []entry {
	r := w.r
	c := r.client
	bctx := context.WithoutCancel(ctx)
	if w.dirty {
		if !idle {
			return held
		}
		// Nothing is held, so whatever the processing list holds is a
		// message moved by a call whose reply was lost: give it back.
		if err := w.recover(ctx, r.id, "own"); err != nil {
			w.collectErr(ctx, err)
			return held
		}
		w.dirty = false
	}
	raw, err := c.Do(bctx, c.B().Blmove().Source(r.queue).Destination(r.processing).
		Right().Left().Timeout(w.cfg.BlockTimeout.Seconds()).Build()).ToString()
	if rueidis.IsRedisNil(err) {
		w.fails = 0
		return held // timed out; the caller checks ctx
	}
	if err != nil {
		w.collectErr(ctx, err)
		return held
	}
	w.fails = 0
	held = w.add(ctx, held, raw)
	first := time.Now()
	for len(held) < w.cfg.BatchSize {
		more, err := r.moveScript.Exec(bctx, c, []string{r.queue, r.processing},
			[]string{strconv.Itoa(w.cfg.BatchSize - len(held))}).AsStrSlice()
		if err != nil {
			w.dirty = true // the script may have moved messages we never saw
			w.collectErr(ctx, err)
			break // store what we have
		}
		held = w.add(ctx, held, more...)
		wait := w.cfg.MaxWait - time.Since(first)
		if len(held) >= w.cfg.BatchSize || wait < time.Millisecond || ctx.Err() != nil {
			break
		}
		raw, err := c.Do(bctx, c.B().Blmove().Source(r.queue).Destination(r.processing).
			Right().Left().Timeout(min(wait, w.cfg.BlockTimeout).Seconds()).Build()).ToString()
		if rueidis.IsRedisNil(err) {
			break // MaxWait passed with nothing new
		}
		if err != nil {
			w.dirty = true
			w.collectErr(ctx, err)
			break
		}
		held = w.add(ctx, held, raw)
	}
	return held
}

// collectErr notes a failed call in collect and backs off.
func (w *worker) collectErr(ctx context.Context, err error) {
	if errors.Is(err, rueidis.ErrClosing) {
		w.fatal.Store(true)
		return
	}
	// A blocking call that failed without a reply may still have moved a
	// message: the processing list is no longer known.
	w.dirty = true
	warn(w.log, &w.lim, "mq: redis failed, retrying", err, slog.String("op", "take"))
	sleep(ctx, backoff(w.fails, w.cfg.RetryBase, w.cfg.RetryMax))
	w.fails++
}

// add decodes raws onto held; an undecodable message goes to the dead
// letters at once, since no retry will make it decode. The messages of one
// call share one allocation for the structs and one for the bytes.
func (w *worker) add(ctx context.Context, held []entry, raws ...string) []entry {
	size := 0
	for _, raw := range raws {
		size += len(raw)
	}
	// A copy, because m.Data aliases what it decodes and raw is a string.
	buf := make([]byte, 0, size)
	slab := make([]codec.Message, len(raws))
	for i, raw := range raws {
		start := len(buf)
		buf = append(buf, raw...)
		m := &slab[i]
		if err := codec.DecodeMessage(buf[start:len(buf):len(buf)], m); err != nil {
			w.log.LogAttrs(ctx, slog.LevelWarn, "mq: undecodable message dead-lettered",
				slog.Int("bytes", len(raw)), slog.Any("err", err))
			if err := w.bury(ctx, raw, ""); err != nil {
				// Left in the processing list: give it back with the rest.
				w.dirty = true
			}
			continue
		}
		held = append(held, entry{raw: raw, m: m})
	}
	return held
}

// bury moves raw from the processing list to the dead letters.
func (w *worker) bury(ctx context.Context, raw, id string) error {
	r := w.r
	return r.buryScript.Exec(context.WithoutCancel(ctx), r.client,
		[]string{r.processing, r.dead, r.attempts}, []string{raw, id}).Error()
}

// processed is what process did with a batch.
type processed struct {
	// left is what is not stored yet (ctx done), still in the processing
	// list.
	left []entry
	// stored is what is stored but not acknowledged yet: with ackLater, a
	// batch stored whole at the first attempt (the usual case). Everything
	// else process acknowledges itself.
	stored []entry
}

// process stores held, retrying as RunWorker describes, until every message
// is stored or dead-lettered or ctx is done. With ackLater a batch stored
// whole at the first attempt (the usual case) is left for the caller to
// acknowledge (see processed), so that the next Store need not wait for
// Redis; everything else process acknowledges itself.
func (w *worker) process(ctx context.Context, held []entry, ackLater bool) processed {
	pieces := [][]entry{held}
	for round, fails := 0, 0; ; round++ {
		var failed [][]entry
		var lastErr error
		progress := false
		for i, p := range pieces {
			if ctx.Err() != nil || w.fatal.Load() {
				failed = append(failed, pieces[i:]...)
				break
			}
			if err := w.store(ctx, p); err != nil {
				failed = append(failed, p)
				lastErr = err
				continue
			}
			progress = true
			if ackLater && round == 0 {
				return processed{stored: p} // p is held, the only piece
			}
			if err := w.redo(ctx, "ack", func(ctx context.Context) error { return w.ack(ctx, p) }); err != nil {
				// Stored but still in the processing list: it goes back to
				// the queue when the worker stops or is recovered, and is
				// stored again, which the Sink tolerates.
				failed = append(failed, pieces[i+1:]...)
				break
			}
		}
		if len(failed) == 0 {
			return processed{}
		}
		if ctx.Err() != nil || w.fatal.Load() {
			return processed{left: flatten(failed)}
		}
		if lastErr != nil {
			warn(w.log, &w.slim, "mq: store failed, retrying", lastErr,
				slog.Int("messages", countEntries(failed)))
		}
		if progress {
			fails = 0
		}
		if pieces = w.triage(ctx, failed, progress); len(pieces) == 0 {
			return processed{}
		}
		if !sleep(ctx, backoff(fails, w.cfg.RetryBase, w.cfg.RetryMax)) {
			return processed{left: flatten(pieces)}
		}
		fails++
	}
}

// ackLater acknowledges the stored p on its own goroutine, and closes the
// channel it returns when done. If that fails (ctx done, Redis closed), p
// stays in the processing list: it goes back to the queue when the worker
// stops or is recovered, and is stored again, which the Sink tolerates.
func (w *worker) ackLater(ctx context.Context, p []entry) chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = w.redo(ctx, "ack", func(ctx context.Context) error { return w.ack(ctx, p) })
	}()
	return done
}

// store hands p's messages to the Sink.
func (w *worker) store(ctx context.Context, p []entry) error {
	w.msgs = w.msgs[:0]
	for _, e := range p {
		w.msgs = append(w.msgs, e.m)
	}
	err := w.sink.Store(ctx, w.msgs)
	clear(w.msgs)
	return err
}

// ack removes the stored p from the processing list and clears their
// attempt counts.
func (w *worker) ack(ctx context.Context, p []entry) error {
	r := w.r
	args := make([]string, 0, 1+2*len(p))
	args = append(args, strconv.Itoa(len(p)))
	for _, e := range p {
		args = append(args, e.raw)
	}
	for _, e := range p {
		args = append(args, e.m.ID)
	}
	return r.ackScript.Exec(ctx, r.client, []string{r.processing, r.attempts}, args).Error()
}

// triage decides what to retry after the pieces in failed failed, and
// dead-letters messages that have failed too often. progress says whether
// another piece of the same round was stored.
func (w *worker) triage(ctx context.Context, failed [][]entry, progress bool) [][]entry {
	healthy, pinged := progress, false
	if !healthy {
		if p, ok := w.sink.(pinger); ok {
			pinged = true
			healthy = p.Ping(ctx) == nil
		}
	}
	switch {
	case healthy:
		// The Sink works, so the messages are at fault: narrow down.
		var next [][]entry
		var lone []entry
		for _, p := range failed {
			if len(p) == 1 {
				lone = append(lone, p[0])
				continue
			}
			h := len(p) / 2
			next = append(next, p[:h:h], p[h:])
		}
		for _, e := range w.countFailures(ctx, lone) {
			next = append(next, []entry{e})
		}
		return next
	case pinged:
		return failed // the Sink is down: wait, count nothing
	case len(failed) == 1 && len(failed[0]) == 1:
		// A lone message and a Sink that cannot tell us whether it is up:
		// count the failure, or a broken message would block forever.
		if left := w.countFailures(ctx, failed[0]); len(left) > 0 {
			return [][]entry{left}
		}
		return nil
	case len(failed) == 1:
		p := failed[0]
		h := len(p) / 2
		return [][]entry{p[:h:h], p[h:]}
	default:
		// Every piece failed: an outage, or broken messages in each piece.
		// Deal the lot into two new halves at random, so that broken
		// messages end up together in one half as often as not and the
		// other half can succeed; in an outage this keeps to two Stores a
		// round.
		all := flatten(failed)
		rand.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
		h := len(all) / 2
		return [][]entry{all[:h:h], all[h:]}
	}
}

// countFailures adds a failed attempt to each message in lone and
// dead-letters those that reached MaxAttempts. It returns the others. If
// Redis fails, nothing is counted this round.
func (w *worker) countFailures(ctx context.Context, lone []entry) []entry {
	if len(lone) == 0 {
		return nil
	}
	r := w.r
	c := r.client
	cmds := make(rueidis.Commands, len(lone))
	for i, e := range lone {
		cmds[i] = c.B().Hincrby().Key(r.attempts).Field(e.m.ID).Increment(1).Build()
	}
	left := lone[:0:0]
	for i, res := range c.DoMulti(ctx, cmds...) {
		e := lone[i]
		n, err := res.AsInt64()
		if err != nil {
			warn(w.log, &w.lim, "mq: redis failed, retrying", err, slog.String("op", "count"))
			left = append(left, e)
			continue
		}
		if n < int64(w.cfg.MaxAttempts) {
			left = append(left, e)
			continue
		}
		if err := w.bury(ctx, e.raw, e.m.ID); err != nil {
			warn(w.log, &w.lim, "mq: redis failed, retrying", err, slog.String("op", "bury"))
			left = append(left, e)
			continue
		}
		w.log.LogAttrs(ctx, slog.LevelWarn, "mq: message dead-lettered",
			slog.String("id", e.m.ID), slog.String("topic", e.m.Topic), slog.Int64("attempts", n))
	}
	return left
}

func flatten(pieces [][]entry) []entry {
	var all []entry
	for _, p := range pieces {
		all = append(all, p...)
	}
	return all
}

func countEntries(pieces [][]entry) int {
	n := 0
	for _, p := range pieces {
		n += len(p)
	}
	return n
}
