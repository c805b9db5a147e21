package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// execute runs the mode of o and fills res. An error wrapping errConnect
// means connections could not be opened (res still says how many); other
// errors mean the run could not be set up.
func execute(ctx context.Context, o *options, p *plan, res *result, stderr io.Writer) error {
	r, err := newRunner(p)
	if err != nil {
		return err
	}
	defer r.close()

	var rssBefore int64
	if o.mode == modeIdle && o.pid > 0 {
		if rssBefore, err = procRSS(o.pid); err != nil {
			return fmt.Errorf("bench: --pid %d: %w", o.pid, err)
		}
	}
	show := o.progress
	if show == "auto" && r.total() < 2000 {
		show = "off" // quick enough without a bar
	}
	cb := newBar(show, time.Hour, "")
	t0 := time.Now()
	c0 := sampleCPU(o.pid)
	err = r.connect(ctx, func(ready, failed int) {
		cb.set(time.Since(t0), fmt.Sprintf("connecting %d/%d, %d failed", ready, r.total(), failed))
	})
	cb.done()
	ready, failed := r.counts()
	res.Connections = connCounts{Requested: r.total(), Open: ready, Failed: failed, ConnectS: time.Since(t0).Seconds()}
	if err != nil {
		res.Errors = r.settle().counts.errs
		return err
	}

	switch o.mode {
	case modeIdle:
		return runIdle(ctx, o, r, res, rssBefore, c0)
	case modeRamp:
		return runRamp(ctx, o, r, res)
	case modeE2E:
		return runE2E(ctx, o, r, res, stderr)
	default:
		return runTimed(ctx, o, r, res)
	}
}

// publishFor runs the publishers (or echo round trips) at rate for d with
// a progress bar, then stops them and waits up to drain for stragglers.
// It returns the publishing start and stop times (now()) and whether every
// expected delivery arrived.
func publishFor(ctx context.Context, o *options, r *runner, rate float64, d time.Duration, label string) (start, stop int64, drained bool) {
	b := newBar(o.progress, d, label)
	start = now()
	r.start(rate)
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	begin := time.Now()
	var last progress
	lastAt := begin
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case at := <-t.C:
			if at.Sub(begin) >= d {
				break loop
			}
			pr := r.progress()
			rate := float64(pr.delivered-last.delivered) / at.Sub(lastAt).Seconds()
			last, lastAt = pr, at
			b.set(at.Sub(begin), fmt.Sprintf("%s %s deliveries/s", label, num(rate)))
		}
		if rem := d - time.Since(begin); rem < 200*time.Millisecond && rem > 0 {
			time.Sleep(rem)
			break
		}
	}
	r.stop()
	stop = now()
	b.done()
	drained = r.drain(ctx, o.drain)
	return start, stop, drained
}

// runTimed is fanout, rest and echo: publish for --duration, then count.
func runTimed(ctx context.Context, o *options, r *runner, res *result) error {
	pr0 := warmUp(ctx, o, r, o.rate)
	a := sampleCPU(o.pid)
	start, stop, drained := publishFor(ctx, o, r, o.rate, o.duration, o.mode.String())
	b := sampleCPU(o.pid)
	pr := r.progress()
	h := r.takeHist()
	st := r.settle()
	fill(res, r, pr, st, h, drained)
	window := float64(max(stop, pr.lastRecv)-start) / 1e9
	res.WindowS = window
	if window > 0 {
		res.DeliveriesPerSec = float64(pr.delivered-pr0.delivered) / window
		if o.mode == modeEcho {
			res.RoundTripsPerSec = float64(pr.distinct-pr0.distinct) / window
			res.DeliveriesPerSec = res.RoundTripsPerSec
		}
	}
	res.ClientCPU, res.Server = between(a, b, o.pid)
	return nil
}

// warmUp publishes at rate for --warmup, when set, and waits for the
// deliveries: connections, the server's caches and a JIT are warm before
// anything is measured. It returns the counts to subtract. Losses and
// disorder during the warm-up still count.
func warmUp(ctx context.Context, o *options, r *runner, rate float64) progress {
	if o.warmup > 0 {
		publishFor(ctx, o, r, rate, o.warmup, "warm-up")
	}
	return r.progress()
}

// fill copies the counts of a run into res.
func fill(res *result, r *runner, pr progress, st settled, h *hdrhistogram.Histogram, drained bool) {
	res.Messages = &messages{
		Sent: st.sent, Expected: pr.expect, Delivered: pr.delivered,
		Lost: st.issues.Lost, Duplicated: st.issues.Duplicated, OutOfOrder: st.issues.OutOfOrder,
		Foreign: st.foreign, Malformed: st.malformed,
		Backlogged: st.counts.backlogged, ServerErrors: st.counts.serverErrs, HTTPErrors: st.counts.httpErrs,
		Disconnects: st.counts.disconnects, Drained: drained,
	}
	res.Latency = latencyOf(h)
	res.SubscribersAffected = st.affected
	res.PerSubscriber = st.worst
	if res.PerSubscriber == nil {
		res.PerSubscriber = []subIssues{}
	}
	if len(st.counts.closeCodes) > 0 {
		res.CloseCodes = map[string]uint64{}
		for k, v := range st.counts.closeCodes {
			res.CloseCodes[strconv.Itoa(k)] = v
		}
	}
	if len(st.counts.errs) > 0 {
		res.Errors = st.counts.errs
	}
	res.FirstServerError = st.counts.firstErr
}

// runIdle holds the connections open and reads the server's memory.
func runIdle(ctx context.Context, o *options, r *runner, res *result, rssBefore int64, c0 cpuSample) error {
	connectS := res.Connections.ConnectS
	b := newBar(o.progress, o.hold, "holding")
	begin := time.Now()
	for time.Since(begin) < o.hold && ctx.Err() == nil {
		time.Sleep(min(100*time.Millisecond, o.hold))
		b.set(time.Since(begin), fmt.Sprintf("holding %d connections", res.Connections.Open))
	}
	b.done()
	c1 := sampleCPU(o.pid)
	id := &idleResult{Conns: res.Connections.Open, HoldS: o.hold.Seconds()}
	if connectS > 0 {
		id.ConnectPerSec = float64(res.Connections.Open) / connectS
	}
	if rss, err := procRSS(os.Getpid()); err == nil {
		id.ClientRSS = rss
	}
	if o.pid > 0 {
		after, err := procRSS(o.pid)
		if err != nil {
			return fmt.Errorf("bench: --pid %d: %w", o.pid, err)
		}
		id.RSSBefore, id.RSSAfter = rssBefore, after
		if id.Conns > 0 {
			bpc := float64(after-rssBefore) / float64(id.Conns)
			id.BytesPerConn = &bpc
		}
	}
	// Still open at the end? Idle connections the server dropped count.
	st := r.settle()
	if st.counts.disconnects > 0 {
		res.Messages = &messages{Disconnects: st.counts.disconnects}
	}
	if len(st.counts.closeCodes) > 0 {
		res.CloseCodes = map[string]uint64{}
		for k, v := range st.counts.closeCodes {
			res.CloseCodes[strconv.Itoa(k)] = v
		}
	}
	res.Idle = id
	res.WindowS = float64(c1.wall-c0.wall) / 1e9
	res.ClientCPU, res.Server = between(c0, c1, o.pid)
	if res.Server != nil {
		res.Server.RSSBytes = id.RSSAfter
	}
	return nil
}

// runRamp raises the rate by --factor each step until a step fails.
func runRamp(ctx context.Context, o *options, r *runner, res *result) error {
	rp := &rampResult{MaxP99Ms: float64(o.maxP99) / float64(time.Millisecond)}
	res.Ramp = rp
	total := hdrhistogram.New(histMinMicros, histMaxMicros, histDigits)
	per := float64(r.p.subs) / float64(len(r.p.topics))
	rate := o.rate
	prevDelivered := warmUp(ctx, o, r, rate).delivered
	st0 := r.settle()
	prevSent, prev, prevErrs := st0.sent, st0.issues, st0.counts.serverErrs+st0.counts.httpErrs
	firstA := sampleCPU(o.pid)
	var lastB cpuSample
	var lastDrained bool
	retries := o.retries
	for step := 0; step < o.maxSteps && ctx.Err() == nil; {
		a := sampleCPU(o.pid)
		label := fmt.Sprintf("step %d: %s/s", step+1, num(rate*per))
		start, stop, drained := publishFor(ctx, o, r, rate, o.stepDuration, label)
		b := sampleCPU(o.pid)
		lastB, lastDrained = b, drained
		pr := r.progress()
		h := r.takeHist()
		total.Merge(h)
		st := r.settle()
		s := rampStep{Rate: rate, TargetDeliveries: rate * per, Latency: latencyOf(h)}
		window := float64(max(stop, pr.lastRecv)-start) / 1e9
		if window > 0 {
			s.DeliveriesPerSec = float64(pr.delivered-prevDelivered) / window
		}
		s.Lost = st.issues.Lost - prev.Lost
		s.Duplicated = st.issues.Duplicated - prev.Duplicated
		s.OutOfOrder = st.issues.OutOfOrder - prev.OutOfOrder
		s.ClientCPU, s.Server = between(a, b, o.pid)
		sent := st.sent - prevSent
		errs := st.counts.serverErrs + st.counts.httpErrs - prevErrs
		prevDelivered, prevSent, prev, prevErrs = pr.delivered, st.sent, st.issues, prevErrs+errs
		switch {
		case s.Lost+s.Duplicated+s.OutOfOrder != 0:
			s.Why = fmt.Sprintf("%d lost, %d duplicated, %d out of order", s.Lost, s.Duplicated, s.OutOfOrder)
		case errs > 0:
			s.Why = fmt.Sprintf("%d publishes refused by the server", errs)
		case !drained:
			s.Why = "deliveries still missing after --drain"
		case s.Latency.P99 > rp.MaxP99Ms:
			s.Why = fmt.Sprintf("p99 %.2f ms over %.1f ms", s.Latency.P99, rp.MaxP99Ms)
		case float64(sent+uint64(r.p.pubs)) < 0.95*rate*o.stepDuration.Seconds(): // one short per publisher: rounding
			s.Why = fmt.Sprintf("the tool sent only %d of %.0f messages (client-bound)", sent, rate*o.stepDuration.Seconds())
		case st.counts.disconnects > 0:
			s.Why = "connections lost"
		default:
			s.Pass = true
		}
		if !s.Pass && s.ClientCPU.Percent >= 90 {
			s.Why += fmt.Sprintf(" (the tool used %.0f%% of a core: maybe client-bound)", s.ClientCPU.Percent)
		}
		latencyOnly := !s.Pass && s.Lost+s.Duplicated+s.OutOfOrder == 0 && errs == 0 && drained && st.counts.disconnects == 0 &&
			s.Latency.P99 > rp.MaxP99Ms
		if latencyOnly && retries > 0 {
			// One p99 spike from other work on the machine should not
			// end the ramp: the step runs again (--retries).
			retries--
			s.Retried = true
			rp.Steps = append(rp.Steps, s)
			continue
		}
		rp.Steps = append(rp.Steps, s)
		if !s.Pass {
			break
		}
		retries = o.retries
		step++
		best := s
		rp.Best = &best
		rate *= o.factor
		if rate > maxRate {
			break
		}
	}
	pr := r.progress()
	st := r.settle()
	fill(res, r, pr, st, total, lastDrained)
	res.WindowS = float64(lastB.wall-firstA.wall) / 1e9
	if rp.Best != nil {
		res.DeliveriesPerSec = rp.Best.DeliveriesPerSec
		res.Config.Rate = rp.Best.Rate
		res.Config.DeliveryRate = rp.Best.TargetDeliveries
	}
	res.ClientCPU, res.Server = between(firstA, lastB, o.pid)
	// Losses at the step that failed are what ended the ramp, not a
	// failure of the run; order and duplicates are judged as usual.
	if n := len(rp.Steps); n > 0 && !rp.Steps[n-1].Pass {
		last := rp.Steps[n-1]
		res.Messages.Lost -= min(res.Messages.Lost, last.Lost)
		res.Messages.Drained = true
	}
	return nil
}
