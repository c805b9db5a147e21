package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// result is what a run reports: the human table is made from it, and
// --json prints it as is. Fields of other modes are left out.
type result struct {
	Mode       string `json:"mode"`
	Proto      string `json:"proto"`
	URL        string `json:"url"`
	HTTPURL    string `json:"http_url,omitempty"`
	Started    string `json:"started"`
	GoMaxProcs int    `json:"gomaxprocs"`
	Config     config `json:"config"`

	Connections connCounts `json:"connections"`
	WindowS     float64    `json:"window_s"`

	Messages         *messages `json:"messages,omitempty"`
	DeliveriesPerSec float64   `json:"deliveries_per_sec"`
	RoundTripsPerSec float64   `json:"round_trips_per_sec,omitempty"`
	Latency          *latency  `json:"latency_ms,omitempty"`

	ClientCPU cpuUse     `json:"client_cpu"`
	Server    *serverUse `json:"server,omitempty"`

	Idle   *idleResult   `json:"idle,omitempty"`
	Ramp   *rampResult   `json:"ramp,omitempty"`
	Stored *storedResult `json:"stored,omitempty"`
	Store  *storeResult  `json:"store,omitempty"`

	SubscribersAffected int               `json:"subscribers_affected"`
	PerSubscriber       []subIssues       `json:"per_subscriber"`
	CloseCodes          map[string]uint64 `json:"close_codes,omitempty"`
	Errors              map[string]uint64 `json:"errors,omitempty"`
	FirstServerError    string            `json:"first_server_error,omitempty"`

	OK      bool   `json:"ok"`
	Failure string `json:"failure,omitempty"`
}

// config echoes the settings of a run.
type config struct {
	DurationS    float64 `json:"duration_s"`
	Topics       int     `json:"topics"`
	Subscribers  int     `json:"subscribers"`
	Publishers   int     `json:"publishers"`
	Conns        int     `json:"conns"`
	Rate         float64 `json:"rate"`          // publishes/s, all publishers
	DeliveryRate float64 `json:"delivery_rate"` // rate × subscribers per topic
	SizeBytes    int     `json:"size_bytes"`
	Inflight     int     `json:"inflight,omitempty"`
	Loops        int     `json:"loops"`
}

type connCounts struct {
	Requested int     `json:"requested"`
	Open      int     `json:"open"`
	Failed    int     `json:"failed"`
	ConnectS  float64 `json:"connect_s"`
}

type messages struct {
	Sent         uint64 `json:"sent"`
	Expected     uint64 `json:"expected"`
	Delivered    uint64 `json:"delivered"`
	Lost         uint64 `json:"lost"`
	Duplicated   uint64 `json:"duplicated"`
	OutOfOrder   uint64 `json:"out_of_order"`
	Foreign      uint64 `json:"foreign"`
	Malformed    uint64 `json:"malformed"`
	Backlogged   uint64 `json:"client_backlogged"`
	ServerErrors uint64 `json:"server_errors"`
	HTTPErrors   uint64 `json:"http_errors"`
	Disconnects  uint64 `json:"disconnects"`
	Drained      bool   `json:"drained"`
}

type latency struct {
	Count int64   `json:"count"`
	P50   float64 `json:"p50"`
	P90   float64 `json:"p90"`
	P99   float64 `json:"p99"`
	P999  float64 `json:"p999"`
	Max   float64 `json:"max"`
	Mean  float64 `json:"mean"`
}

func latencyOf(h *hdrhistogram.Histogram) *latency {
	ms := func(us int64) float64 { return float64(us) / 1000 }
	return &latency{
		Count: h.TotalCount(),
		P50:   ms(h.ValueAtQuantile(50)),
		P90:   ms(h.ValueAtQuantile(90)),
		P99:   ms(h.ValueAtQuantile(99)),
		P999:  ms(h.ValueAtQuantile(99.9)),
		Max:   ms(h.Max()),
		Mean:  h.Mean() / 1000,
	}
}

type idleResult struct {
	Conns     int     `json:"conns"`
	HoldS     float64 `json:"hold_s"`
	RSSBefore int64   `json:"rss_before_bytes,omitempty"`
	RSSAfter  int64   `json:"rss_after_bytes,omitempty"`
	// BytesPerConn is set whenever the server's RSS was read (--pid), zero
	// or negative included: the server may reuse memory it already held.
	BytesPerConn  *float64 `json:"bytes_per_conn,omitempty"`
	ClientRSS     int64    `json:"client_rss_bytes"`
	ConnectPerSec float64  `json:"connects_per_sec"`
}

type rampStep struct {
	Rate             float64    `json:"rate"`
	TargetDeliveries float64    `json:"target_deliveries_per_sec"`
	DeliveriesPerSec float64    `json:"deliveries_per_sec"`
	Latency          *latency   `json:"latency_ms"`
	Lost             uint64     `json:"lost"`
	Duplicated       uint64     `json:"duplicated"`
	OutOfOrder       uint64     `json:"out_of_order"`
	ClientCPU        cpuUse     `json:"client_cpu"`
	Server           *serverUse `json:"server,omitempty"`
	Pass             bool       `json:"pass"`
	Retried          bool       `json:"retried,omitempty"` // failed on p99 alone and ran again
	Why              string     `json:"why,omitempty"`
}

type rampResult struct {
	MaxP99Ms float64    `json:"max_p99_ms"`
	Steps    []rampStep `json:"steps"`
	Best     *rampStep  `json:"best"`
}

type storedResult struct {
	Stored     uint64   `json:"stored"`
	Lost       uint64   `json:"lost"`
	Duplicated uint64   `json:"duplicated"`
	OutOfOrder uint64   `json:"out_of_order"`
	PerSec     float64  `json:"stored_per_sec"`
	Latency    *latency `json:"latency_ms"`
	Polls      int      `json:"polls"`
	PollErrors int      `json:"poll_errors"`
	// HoleWaits counts polls that stopped before a message whose older
	// messages (same publisher) were not in history yet (see e2e.go).
	HoleWaits int     `json:"hole_waits"`
	Complete  bool    `json:"complete"`
	PollMs    float64 `json:"poll_interval_ms"`
	// Workers is chatgg's side, with --worker-metrics.
	Workers *workerStats `json:"workers,omitempty"`
	// VerifiedAtEnd (--verify-at-end): history was read only after the
	// workers had stored everything; PerSec is the workers' rate and there
	// is no Latency.
	VerifiedAtEnd bool `json:"verified_at_end,omitempty"`
}

// printJSON writes r as indented JSON.
func printJSON(w io.Writer, r *result) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// printTable writes the human summary of r.
func printTable(w io.Writer, r *result) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(k, v string, a ...any) { fmt.Fprintf(tw, "%s\t"+v+"\n", append([]any{k}, a...)...) }
	c := r.Config
	row("mode", "%s (%s) %s", r.Mode, r.Proto, r.URL)
	switch r.Mode {
	case "echo", "idle":
		row("setup", "%d conns, %d B payloads, %d loop(s), GOMAXPROCS %d", c.Conns, c.SizeBytes, c.Loops, r.GoMaxProcs)
	default:
		row("setup", "%d subscribers, %d publishers, %d topic(s), %d B payloads, %d loop(s), GOMAXPROCS %d",
			c.Subscribers, c.Publishers, c.Topics, c.SizeBytes, c.Loops, r.GoMaxProcs)
	}
	row("connections", "%d open, %d failed of %d (%.2fs)", r.Connections.Open, r.Connections.Failed, r.Connections.Requested, r.Connections.ConnectS)
	if m := r.Messages; m != nil {
		if r.Mode != "echo" {
			row("target", "%s publishes/s = %s deliveries/s for %.1fs", num(c.Rate), num(c.DeliveryRate), c.DurationS)
		}
		row("sent", "%d (expected deliveries %d, client backlogged %d)", m.Sent, m.Expected, m.Backlogged)
		row("delivered", "%d in %.2fs", m.Delivered, r.WindowS)
		if r.Mode == "echo" {
			row("round trips/s", "%s", num(r.RoundTripsPerSec))
		} else {
			row("deliveries/s", "%s", num(r.DeliveriesPerSec))
		}
		row("LOST", "%d", m.Lost)
		row("DUPLICATED", "%d", m.Duplicated)
		row("OUT-OF-ORDER", "%d", m.OutOfOrder)
		if m.Foreign+m.Malformed != 0 {
			row("foreign/malformed", "%d / %d", m.Foreign, m.Malformed)
		}
		row("subscribers affected", "%d", r.SubscribersAffected)
		if m.ServerErrors+m.HTTPErrors+m.Disconnects != 0 {
			row("errors", "server %d, http %d, disconnects %d", m.ServerErrors, m.HTTPErrors, m.Disconnects)
		}
	}
	if l := r.Latency; l != nil && l.Count > 0 {
		row("latency ms", "p50 %.3f  p90 %.3f  p99 %.3f  p99.9 %.3f  max %.3f  (n=%d)", l.P50, l.P90, l.P99, l.P999, l.Max, l.Count)
	}
	if s := r.Stored; s != nil {
		row("stored", "%d (lost %d, dup %d, ooo %d, complete %v)", s.Stored, s.Lost, s.Duplicated, s.OutOfOrder, s.Complete)
		if s.VerifiedAtEnd {
			row("stored/s", "%s (the workers' counters; history read and checked after they stored everything)", num(s.PerSec))
		} else {
			row("stored/s", "%s (as history showed them)", num(s.PerSec))
		}
		if s.Latency != nil && s.Latency.Count > 0 {
			row("publish→stored ms", "p50 %.1f  p90 %.1f  p99 %.1f  max %.1f  (poll every %.0f ms)", s.Latency.P50, s.Latency.P90, s.Latency.P99, s.Latency.Max, s.PollMs)
		}
		if s.HoleWaits > 0 {
			row("history holes", "%d polls waited for older messages stored after newer ones", s.HoleWaits)
		}
		if ws := s.Workers; ws != nil {
			row("workers stored/s", "%s (%.0f in %.2fs by their counters, before history shows them)", num(ws.PerSec), ws.Stored, ws.WindowS)
			for i, w := range ws.Workers {
				row(fmt.Sprintf("worker %d", i+1), "%.0f msgs in %.0f batches (%.0f/batch, %.0f failed), %.1f ms/batch, busy %.0f%%",
					w.Messages, w.Batches, w.PerBatch, w.Errors, w.MeanBatchMs, w.BusyPercent)
			}
			row("queue", "max depth %d, max held by workers %d", ws.QueueMaxDepth, ws.QueueMaxProcessing)
			if ws.Errors+ws.QueueErrors > 0 {
				row("worker watch errors", "%d metrics, %d queue: %s", ws.Errors, ws.QueueErrors, ws.FirstErr)
			}
		}
	}
	if id := r.Idle; id != nil {
		row("idle conns", "%d held %.1fs, %s connects/s", id.Conns, id.HoldS, num(id.ConnectPerSec))
		if id.BytesPerConn != nil {
			row("server RSS", "%s → %s: %.0f bytes/conn", mib(id.RSSBefore), mib(id.RSSAfter), *id.BytesPerConn)
		}
		row("client RSS", "%s", mib(id.ClientRSS))
	}
	if rp := r.Ramp; rp != nil {
		for i, s := range rp.Steps {
			p99 := 0.0
			if s.Latency != nil {
				p99 = s.Latency.P99
			}
			srv := ""
			if s.Server != nil {
				srv = fmt.Sprintf(", server %.0f%%", s.Server.Percent)
			}
			verdict := "pass"
			switch {
			case s.Retried:
				verdict = "fail, run again: " + s.Why
			case !s.Pass:
				verdict = "FAIL: " + s.Why
			}
			row(fmt.Sprintf("step %d", i+1), "%s/s target, %s/s got, p99 %.2f ms, client %.0f%%%s: %s",
				num(s.TargetDeliveries), num(s.DeliveriesPerSec), p99, s.ClientCPU.Percent, srv, verdict)
		}
		if rp.Best != nil {
			row("best step", "%s deliveries/s (p99 %.2f ms ≤ %.1f ms, nothing lost)", num(rp.Best.DeliveriesPerSec), rp.Best.Latency.P99, rp.MaxP99Ms)
		} else {
			row("best step", "none passed")
		}
	}
	row("client CPU", "%.1f%% of a core (user %.2fs, sys %.2fs)%s", r.ClientCPU.Percent, r.ClientCPU.UserS, r.ClientCPU.SysS, clientBound(r))
	if s := r.Server; s != nil {
		row("server CPU", "%.1f%% of a core (user %.2fs, sys %.2fs), RSS %s, pid %d", s.Percent, s.UserS, s.SysS, mib(s.RSSBytes), s.PID)
	}
	if len(r.CloseCodes) > 0 {
		row("close codes", "%s", kv(r.CloseCodes))
	}
	if len(r.Errors) > 0 {
		row("client errors", "%s", kv(r.Errors))
	}
	if r.FirstServerError != "" {
		row("first server error", "%s", strings.TrimSpace(firstLine(r.FirstServerError)))
	}
	for i, s := range r.PerSubscriber {
		if i == 10 {
			row("", "… %d more in --json", len(r.PerSubscriber)-10)
			break
		}
		row(fmt.Sprintf("subscriber %d", s.Sub), "lost %d, duplicated %d, out of order %d", s.Lost, s.Duplicated, s.OutOfOrder)
	}
	if r.OK {
		row("result", "OK")
	} else {
		row("result", "FAIL: %s", r.Failure)
	}
	tw.Flush()
}

// clientBound warns when the tool, not the server, was the limit.
func clientBound(r *result) string {
	if r.ClientCPU.Percent >= 90 {
		return "  ← the tool was near a full core: client-bound numbers"
	}
	return ""
}

func kv(m map[string]uint64) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s×%d", k, m[k]))
	}
	return strings.Join(parts, "; ")
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// num formats a rate with thousands separators.
func num(v float64) string {
	s := strconv.FormatFloat(v, 'f', 0, 64)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(' ')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// bar is the progress bar of a long run, or nothing.
type bar struct{ pb *progressbar.ProgressBar }

// newBar shows a bar of d on stderr when show says so: "on", or "auto" with
// a terminal and a run of 2 s or more.
func newBar(show string, d time.Duration, desc string) *bar {
	if show == "off" || (show == "auto" && (d < 2*time.Second || !term.IsTerminal(int(os.Stderr.Fd())))) {
		return &bar{}
	}
	pb := progressbar.NewOptions64(d.Milliseconds(),
		progressbar.OptionSetWriter(os.Stderr),
		progressbar.OptionSetDescription(desc),
		progressbar.OptionSetWidth(30),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionShowDescriptionAtLineEnd(),
		progressbar.OptionClearOnFinish(),
		progressbar.OptionSetPredictTime(false),
		progressbar.OptionSetElapsedTime(true),
	)
	return &bar{pb: pb}
}

func (b *bar) set(elapsed time.Duration, desc string) {
	if b.pb == nil {
		return
	}
	b.pb.Describe(desc)
	_ = b.pb.Set64(elapsed.Milliseconds())
}

func (b *bar) done() {
	if b.pb != nil {
		_ = b.pb.Finish()
		_ = b.pb.Clear()
	}
}
