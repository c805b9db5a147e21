package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"github.com/chatgg/chatgg/codec"
)

// The e2e mode publishes like fanout and meanwhile polls the history API
// of every topic (source=store: what the store holds, without the hot
// window of accepted messages) until each message is found stored. A message's
// publish-to-stored latency is taken when the poll that first returns it
// is answered, so it is rounded up by up to --poll.
//
// Several workers store batches in any order (see package mq), so history
// may show a message before an older one is stored, and a cursor moved
// past the older one's place would never see it. When a publisher's next
// message is missing, the poller stops before the message that follows
// the gap, moves its cursor back to that publisher's last message found,
// and reads again from there (skipping what it already counted) until the
// gap fills or storeHoleWait has passed. Then it moves on, for the rest of
// that poll past any gap (a publish the server refused leaves one for
// good, and they come in bursts), and what was missing counts as lost (or,
// found later, out of order).

// maxPage is the history page size asked for (the API's maximum).
const maxPage = 1000

// storeHoleWait bounds how long the poller waits at a gap in a publisher's
// sequence: a few batch writes, at most.
const storeHoleWait = 5 * time.Second

// storePoller follows the history of a run's topics. Its fields are the
// poller goroutine's until it returns; stored and lastNew are read while it
// runs.
type storePoller struct {
	p      *plan
	base   string
	client *http.Client
	tracks []subTrack // by topic, publishers by rank as for subscribers
	topics []topicPoll
	hist   *hdrhistogram.Histogram
	body   bytes.Buffer

	stored  atomic.Uint64 // distinct messages found
	lastNew atomic.Int64  // now() of the poll that found the last new one

	polls, errs int
	firstErr    string
	malformed   uint64
	holes       int  // times a poll stopped at a gap
	passing     bool // a wait expired: this poll of this topic passes gaps
	// sent is what each publisher sent, set once publishing stopped.
	sent atomic.Pointer[[]uint64]
}

// topicPoll is where the poller is in one topic's history.
type topicPoll struct {
	cursor string // the after= of the next read
	// high is the highest id counted: what a read after a rewind returns
	// up to it was counted before, unless it filled a gap.
	high    [codec.IDLen]byte
	hasHigh bool
	// pubLast is the id of each publisher's last message counted (by
	// rank), where a read goes back to when its next one is missing.
	pubLast [][codec.IDLen]byte
	hasLast []bool
	// holdSince is now() of the poll that first stopped at the current
	// gap, or 0.
	holdSince int64
}

func newStorePoller(p *plan, httpURL string) *storePoller {
	sp := &storePoller{
		p:      p,
		base:   httpURL,
		client: &http.Client{Timeout: 10 * time.Second},
		tracks: make([]subTrack, len(p.topics)),
		topics: make([]topicPoll, len(p.topics)),
		hist:   hdrhistogram.New(histMinMicros, histMaxMicros, histDigits),
	}
	for t := range sp.tracks {
		n := p.pubsOnTopic(t)
		sp.tracks[t].pubs = make([]pubTrack, n)
		sp.topics[t].pubLast = make([][codec.IDLen]byte, n)
		sp.topics[t].hasLast = make([]bool, n)
	}
	return sp
}

// run polls every topic each interval until stop is closed.
func (sp *storePoller) run(stop <-chan struct{}, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		for i := range sp.p.topics {
			if err := sp.pollTopic(i); err != nil {
				sp.errs++
				if sp.firstErr == "" {
					sp.firstErr = err.Error()
				}
			}
		}
		select {
		case <-stop:
			return
		case <-t.C:
		}
	}
}

// pollTopic reads the pages of topic i after its cursor.
func (sp *storePoller) pollTopic(i int) error {
	sp.passing = false
	if sent := sp.sent.Load(); sent != nil {
		sp.rewindIncomplete(i, *sent)
	}
	for page := 0; page < 100; page++ {
		// source=store: stored messages only, not the hot window of
		// accepted ones.
		u := fmt.Sprintf("%s/v1/topics/%s/messages?source=store&limit=%d", sp.base, url.PathEscape(sp.p.topics[i]), maxPage)
		if c := sp.topics[i].cursor; c != "" {
			u += "&after=" + c
		}
		sp.polls++
		resp, err := sp.client.Get(u)
		if err != nil {
			return err
		}
		sp.body.Reset()
		_, err = io.Copy(&sp.body, io.LimitReader(resp.Body, 64<<20))
		resp.Body.Close()
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("bench: history %s: %s", u, resp.Status)
		}
		more := sp.parsePage(i, sp.body.Bytes(), now())
		if !more {
			return nil
		}
	}
	return nil
}

// parsePage accounts for the messages of one history page of topic t,
// answered at time at, and reports whether the poll should read the next
// page.
func (sp *storePoller) parsePage(t int, b []byte, at int64) (more bool) {
	const idKey, dataKey, nextKey = `"id":"`, `"data":`, `"next":`
	tr, tp := &sp.tracks[t], &sp.topics[t]
	page := b
	var last []byte // the last id read, where the cursor moves
	for {
		i := bytes.Index(b, []byte(idKey))
		if i < 0 {
			break
		}
		b = b[i+len(idKey):]
		end := bytes.IndexByte(b, '"')
		if end < 0 {
			break
		}
		id := b[:end]
		j := bytes.Index(b, []byte(dataKey))
		if j < 0 {
			break
		}
		b = b[j+len(dataKey):]
		// Read again after a rewind: counted before, unless it fills a gap.
		reread := tp.hasHigh && bytes.Compare(id, tp.high[:]) <= 0
		body, ok := findPayload(b)
		var s stamp
		var err error
		if ok {
			s, err = parsePayload(body)
		}
		switch {
		case !ok || err != nil:
			if !reread {
				sp.malformed++
			}
			last = id
			continue
		case int(s.pub) >= sp.p.pubs || sp.p.topicOf(int(s.pub)) != t:
			if !reread {
				tr.foreign++
			}
			last = id
			continue
		}
		rank := int(s.pub) / len(sp.p.topics)
		pt := &tr.pubs[rank]
		if reread && pt.has(s.seq) {
			last = id
			continue
		}
		if s.seq > pt.max+1 && !sp.passing {
			// This publisher's next message is missing: wait for it, up
			// to storeHoleWait. Its place is after the publisher's last
			// message found, which the cursor may have passed.
			if tp.holdSince == 0 {
				tp.holdSince = max(at, 1) // 0 means none
			}
			if at-tp.holdSince < int64(storeHoleWait) {
				sp.holes++
				tp.rewind(rank)
				return false
			}
			sp.passing = true
		}
		tp.holdSince = 0
		last = id
		if len(id) == codec.IDLen {
			copy(tp.pubLast[rank][:], id)
			tp.hasLast[rank] = true
			if !reread {
				copy(tp.high[:], id)
				tp.hasHigh = true
			}
		}
		if pt.observe(s.seq) != again {
			sp.stored.Add(1)
			sp.lastNew.Store(at)
			us := min(max((at-s.sent)/1000, 0), histMaxMicros)
			_ = sp.hist.RecordValue(us)
		}
	}
	if last != nil {
		tp.cursor = string(last)
	}
	n := bytes.LastIndex(page, []byte(nextKey))
	return n >= 0 && !bytes.HasPrefix(bytes.TrimSpace(page[n+len(nextKey):]), []byte("null"))
}

// rewind moves the cursor back to the last message found of the publisher
// of rank, or to the start when none was.
func (tp *topicPoll) rewind(rank int) {
	switch {
	case !tp.hasLast[rank]:
		tp.cursor = ""
	case tp.cursor == "" || string(tp.pubLast[rank][:]) < tp.cursor:
		tp.cursor = string(tp.pubLast[rank][:])
	}
}

// rewindIncomplete is for the end of a run, once sent (by publisher) is
// known: a publisher's last messages may have been stored after the cursor
// passed their place, and no later message of theirs will show the gap.
// The cursor moves back to the last message found of any publisher of
// topic t still short of what it sent.
func (sp *storePoller) rewindIncomplete(t int, sent []uint64) {
	tp := &sp.topics[t]
	for p := t; p < sp.p.pubs && p < len(sent); p += len(sp.p.topics) {
		rank := p / len(sp.p.topics)
		if sp.tracks[t].pubs[rank].distinct() < sent[p] {
			tp.rewind(rank)
		}
	}
}

// runE2E publishes for --duration and waits for every message to be stored.
//
// With --verify-at-end the poller starts only once the workers' counters
// account for every message sent: reading history costs the store too
// (PouchDB Server reads a document in about a seventh of the time it takes
// to write one, on the same thread), so a poller running alongside slows
// what it measures. The rate is then the workers' own, and the history
// read afterwards still checks every message for loss, duplicates and order.
func runE2E(ctx context.Context, o *options, r *runner, res *result, _ io.Writer) error {
	sp := newStorePoller(r.p, r.p.httpBase(o.httpURL))
	stopPoll := make(chan struct{})
	polled := make(chan struct{})
	startPoll := func() {
		go func() {
			defer close(polled)
			sp.run(stopPoll, o.poll)
		}()
	}
	if !o.verifyAtEnd {
		startPoll()
	}
	var ww *workerWatch
	watched := make(chan struct{})
	if urls := splitURLs(o.workerMetrics); len(urls) > 0 {
		ww = newWorkerWatch(urls, r.p.httpBase(o.httpURL))
		ww.sample(now()) // the counters before publishing
		go func() {
			defer close(watched)
			ww.run(stopPoll, min(o.poll, workerWatchEvery))
		}()
	} else {
		close(watched)
	}
	a := sampleCPU(o.pid)
	start, stop, drained := publishFor(ctx, o, r, o.rate, o.duration, "e2e")
	sent := r.sentPerPub()
	sp.sent.Store(&sent)
	var total uint64
	for _, n := range sent {
		total += n
	}
	b := newBar(o.progress, o.storeTimeout, "stored")
	deadline := time.Now().Add(o.storeTimeout)
	if o.verifyAtEnd {
		for uint64(ww.stored.Load()) < total && time.Now().Before(deadline) && ctx.Err() == nil {
			time.Sleep(10 * time.Millisecond)
			b.set(time.Until(deadline), fmt.Sprintf("workers stored %d/%d", ww.stored.Load(), total))
		}
		startPoll()
	}
	for sp.stored.Load() < total && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
		b.set(time.Until(deadline), fmt.Sprintf("stored %d/%d", sp.stored.Load(), total))
	}
	b.done()
	close(stopPoll)
	<-polled
	<-watched
	c := sampleCPU(o.pid)

	pr := r.progress()
	h := r.takeHist()
	st := r.settle()
	fill(res, r, pr, st, h, drained)
	if r.p.subs == 0 {
		res.Messages.Expected, res.Latency = 0, nil
	}
	res.WindowS = float64(stop-start) / 1e9
	if res.WindowS > 0 {
		res.DeliveriesPerSec = float64(pr.delivered) / res.WindowS
	}
	sr := &storedResult{
		Stored: sp.stored.Load(), Latency: latencyOf(sp.hist), Polls: sp.polls, PollErrors: sp.errs, HoleWaits: sp.holes,
		PollMs: float64(o.poll) / float64(time.Millisecond),
	}
	for t := range sp.tracks {
		var mine []uint64
		for p := t; p < r.p.pubs; p += len(r.p.topics) {
			mine = append(mine, sent[p])
		}
		is := sp.tracks[t].settle(mine)
		sr.Lost += is.Lost
		sr.Duplicated += is.Duplicated
		sr.OutOfOrder += is.OutOfOrder
	}
	sr.Complete = sr.Stored >= total && sr.Lost == 0
	if last := sp.lastNew.Load(); last > start {
		sr.PerSec = float64(sr.Stored) / (float64(last-start) / 1e9)
	}
	if ww != nil {
		sr.Workers = ww.stats(start)
	}
	if o.verifyAtEnd {
		// What the poller saw says when it looked, not when messages were
		// stored: the rate is the workers', and there is no latency.
		sr.VerifiedAtEnd, sr.Latency, sr.PerSec = true, nil, sr.Workers.PerSec
	}
	res.Stored = sr
	if sp.firstErr != "" {
		if res.Errors == nil {
			res.Errors = map[string]uint64{}
		}
		res.Errors[sp.firstErr] += uint64(sp.errs)
	}
	res.ClientCPU, res.Server = between(a, c, o.pid)
	return nil
}

// httpBase is the REST base URL without a trailing slash.
func (p *plan) httpBase(httpURL string) string {
	u, err := url.Parse(httpURL)
	if err != nil {
		return httpURL
	}
	u.Path = p.httpPrefix
	u.RawQuery = ""
	return u.String()
}
