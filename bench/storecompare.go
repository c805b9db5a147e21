package main

import (
	"fmt"
	"io"
	"math"
	"text/tabwriter"
)

// storeTarget is issue 5's bound: chatgg stores at least 0.9 times the
// rate of its store alone.
const storeTarget = 0.9

// runStoreCompare prints the store-compare table from the --json results
// that bench/store-compare.sh leaves in dir: store.json (bench store),
// e2e.json (bench e2e at a rate above the store's, with --worker-metrics)
// and, when present, e2e-latency.json (bench e2e below the store's rate,
// for latency without a backlog).
func runStoreCompare(dir string, stdout, stderr io.Writer) int {
	st, e2e, lat := loadResult(dir, "store"), loadResult(dir, "e2e"), loadResult(dir, "e2e-latency")
	if st == nil || st.Store == nil || e2e == nil || e2e.Stored == nil {
		fmt.Fprintf(stderr, "bench compare --store: need store.json and e2e.json in %s\n", dir)
		return exitSetup
	}
	printStoreCompare(stdout, st, e2e, lat)
	return exitOK
}

// printStoreCompare writes the table of the store alone against chatgg.
func printStoreCompare(w io.Writer, st, e2e, lat *result) {
	s, e := st.Store, e2e.Stored
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "metric\tstore alone\tchatgg e2e\tratio\ttarget\tmet\t")
	row := func(name, a, b, ratio, target, met string) {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t\n", name, a, b, ratio, target, met)
	}
	f0 := func(v float64) string { return fmtv(v, "%.0f") }
	f1 := func(v float64) string { return fmtv(v, "%.1f") }
	ratio := e.PerSec / s.DocsPerSec
	met := "NO"
	if ratio >= storeTarget {
		met = "yes"
	}
	row("messages stored", f0(float64(s.Written+s.Conflicts)), f0(float64(e.Stored)), "", "", "")
	if e.VerifiedAtEnd {
		row("stored/s (e2e: workers, history checked after)", f0(s.DocsPerSec), f0(e.PerSec), fmtv(ratio, "%.2f"), fmt.Sprintf("≥ %.2f", storeTarget), met)
	} else {
		row("stored/s (e2e: seen in history)", f0(s.DocsPerSec), f0(e.PerSec), fmtv(ratio, "%.2f"), fmt.Sprintf("≥ %.2f", storeTarget), met)
	}
	if ws := e.Workers; ws != nil && !e.VerifiedAtEnd {
		row("stored/s (e2e: workers' counters)", f0(s.DocsPerSec), f0(ws.PerSec), fmtv(ws.PerSec/s.DocsPerSec, "%.2f"), "", "")
	}
	bl := s.BatchLatency
	if bl == nil {
		bl = &latency{P50: math.NaN(), P99: math.NaN()}
	}
	el := e.Latency
	if el == nil {
		el = &latency{P50: math.NaN(), P99: math.NaN()}
	}
	row("p50 ms (store: batch; e2e: publish→stored)", f1(bl.P50), f1(el.P50), "", "", "")
	row("p99 ms (store: batch; e2e: publish→stored)", f1(bl.P99), f1(el.P99), "", "", "")
	if lat != nil && lat.Stored != nil && lat.Stored.Latency != nil {
		l := lat.Stored.Latency
		row(fmt.Sprintf("e2e at %s/s, no backlog: p50 / p99 ms", num(lat.Config.Rate)), "", fmt.Sprintf("%.1f / %.1f", l.P50, l.P99), "", "", "")
	}
	cpu := func(r *result) float64 {
		if r.Server == nil {
			return math.NaN()
		}
		return r.Server.Percent
	}
	row("store CPU % of a core", f1(cpu(st)), f1(cpu(e2e)), "", "", "")
	row("tool CPU % of a core", f1(st.ClientCPU.Percent), f1(e2e.ClientCPU.Percent), "", "", "")
	issues := float64(e.Lost + e.Duplicated + e.OutOfOrder)
	ok := "yes"
	if issues != 0 || !e.Complete {
		ok = "NO"
	}
	row("e2e lost + duplicated + out of order", "", f0(issues), "", "0", ok)
	if m := e2e.Messages; m != nil && m.ServerErrors+m.Disconnects > 0 {
		row("e2e publishes refused (server errors)", "", f0(float64(m.ServerErrors)), "", "0", "NO")
	}
	tw.Flush()
	fmt.Fprintf(w, "store alone: batches of %d, %d in flight; e2e: %s publishes/s for %.1fs, %d publishers, history polled every %.0f ms (%d polls, %d stopped at a hole)\n",
		s.Batch, s.Inflight, num(e2e.Config.Rate), e2e.Config.DurationS, e2e.Config.Publishers, e.PollMs, e.Polls, e.HoleWaits)
	if ws := e.Workers; ws != nil {
		for i, wk := range ws.Workers {
			fmt.Fprintf(w, "worker %d: %.0f msgs in %.0f batches (%.0f/batch, %.0f failed), %.1f ms/batch, busy %.0f%% of %.2fs\n",
				i+1, wk.Messages, wk.Batches, wk.PerBatch, wk.Errors, wk.MeanBatchMs, wk.BusyPercent, ws.WindowS)
		}
		fmt.Fprintf(w, "queue: max depth %d, max held by workers %d\n", ws.QueueMaxDepth, ws.QueueMaxProcessing)
	}
}
