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
)

// The e2e mode publishes like fanout and meanwhile polls the history API
// of every topic until each message is found stored. A message's
// publish-to-stored latency is taken when the poll that first returns it
// is answered, so it is rounded up by up to --poll.

// maxPage is the history page size asked for (the API's maximum).
const maxPage = 1000

// storePoller follows the history of a run's topics. Its fields are the
// poller goroutine's until it returns; stored and lastNew are read while it
// runs.
type storePoller struct {
	p      *plan
	base   string
	client *http.Client
	tracks []subTrack // by topic, publishers by rank as for subscribers
	cursor []string
	hist   *hdrhistogram.Histogram
	body   bytes.Buffer

	stored  atomic.Uint64 // distinct messages found
	lastNew atomic.Int64  // now() of the poll that found the last new one

	polls, errs int
	firstErr    string
	malformed   uint64
}

func newStorePoller(p *plan, httpURL string) *storePoller {
	sp := &storePoller{
		p:      p,
		base:   httpURL,
		client: &http.Client{Timeout: 10 * time.Second},
		tracks: make([]subTrack, len(p.topics)),
		cursor: make([]string, len(p.topics)),
		hist:   hdrhistogram.New(histMinMicros, histMaxMicros, histDigits),
	}
	for t := range sp.tracks {
		sp.tracks[t].pubs = make([]pubTrack, p.pubsOnTopic(t))
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
	for page := 0; page < 100; page++ {
		u := fmt.Sprintf("%s/v1/topics/%s/messages?limit=%d", sp.base, url.PathEscape(sp.p.topics[i]), maxPage)
		if sp.cursor[i] != "" {
			u += "&after=" + sp.cursor[i]
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
// answered at time at, and reports whether a next page exists.
func (sp *storePoller) parsePage(t int, b []byte, at int64) (more bool) {
	const idKey, dataKey, nextKey = `"id":"`, `"data":`, `"next":`
	tr := &sp.tracks[t]
	var last []byte
	defer func() {
		if last != nil {
			sp.cursor[t] = string(last)
		}
	}()
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
		last = id
		body, ok := findPayload(b)
		if !ok {
			sp.malformed++
			continue
		}
		s, err := parsePayload(body)
		if err != nil {
			sp.malformed++
			continue
		}
		if int(s.pub) >= sp.p.pubs || sp.p.topicOf(int(s.pub)) != t {
			tr.foreign++
			continue
		}
		if tr.pubs[int(s.pub)/len(sp.p.topics)].observe(s.seq) != again {
			sp.stored.Add(1)
			sp.lastNew.Store(at)
			us := min(max((at-s.sent)/1000, 0), histMaxMicros)
			_ = sp.hist.RecordValue(us)
		}
	}
	n := bytes.LastIndex(sp.body.Bytes(), []byte(nextKey))
	return n >= 0 && !bytes.HasPrefix(bytes.TrimSpace(sp.body.Bytes()[n+len(nextKey):]), []byte("null"))
}

// runE2E publishes for --duration and waits for every message to be stored.
func runE2E(ctx context.Context, o *options, r *runner, res *result, _ io.Writer) error {
	sp := newStorePoller(r.p, r.p.httpBase(o.httpURL))
	stopPoll := make(chan struct{})
	polled := make(chan struct{})
	go func() {
		defer close(polled)
		sp.run(stopPoll, o.poll)
	}()
	a := sampleCPU(o.pid)
	start, stop, drained := publishFor(ctx, o, r, o.rate, o.duration, "e2e")
	sent := r.sentPerPub()
	var total uint64
	for _, n := range sent {
		total += n
	}
	b := newBar(o.progress, o.storeTimeout, "stored")
	deadline := time.Now().Add(o.storeTimeout)
	for sp.stored.Load() < total && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
		b.set(time.Until(deadline), fmt.Sprintf("stored %d/%d", sp.stored.Load(), total))
	}
	b.done()
	close(stopPoll)
	<-polled
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
		Stored: sp.stored.Load(), Latency: latencyOf(sp.hist), Polls: sp.polls, PollErrors: sp.errs,
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
