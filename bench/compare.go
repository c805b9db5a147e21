package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"text/tabwriter"
)

// runCompare prints the bench-compare table from the --json results that
// bench/compare.sh leaves in a directory: <server>-<test>.json for servers
// chatgg and ws and tests fanout, echo, idle and ramp, plus chatgg-fanout-ws
// (the same fan-out through /ws JSON).
func runCompare(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("bench compare", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", "", "directory of the results")
	store := fs.Bool("store", false, "print the store-compare table (store.json, e2e.json, e2e-latency.json) instead")
	if err := fs.Parse(args); err != nil || *dir == "" {
		fmt.Fprintln(stderr, "usage: bench compare [--store] --dir DIR")
		return exitSetup
	}
	if *store {
		return runStoreCompare(*dir, stdout, stderr)
	}
	load := func(name string) *result { return loadResult(*dir, name) }
	cf, wf := load("chatgg-fanout"), load("ws-fanout")
	ce, we := load("chatgg-echo"), load("ws-echo")
	ci, wi := load("chatgg-idle"), load("ws-idle")
	cr, wr := load("chatgg-ramp"), load("ws-ramp")
	cj := load("chatgg-fanout-ws")

	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "metric\tchatgg\tws (Node)\tratio\ttarget\tmet\t")
	row := func(name string, c, w float64, ratio float64, target string, met string, format string) {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t\n", name, fmtv(c, format), fmtv(w, format), fmtv(ratio, "%.2f"), target, met)
	}
	yes := func(ok bool, have bool) string {
		switch {
		case !have:
			return "n/a"
		case ok:
			return "yes"
		}
		return "NO"
	}
	serverCPU := func(r *result) float64 {
		if r == nil || r.Server == nil {
			return math.NaN()
		}
		return r.Server.Percent
	}
	clientCPU := func(r *result) float64 {
		if r == nil {
			return math.NaN()
		}
		return r.ClientCPU.Percent
	}
	p99 := func(r *result) float64 {
		if r == nil || r.Latency == nil {
			return math.NaN()
		}
		return r.Latency.P99
	}
	field := func(r *result, f func(*result) float64) float64 {
		if r == nil {
			return math.NaN()
		}
		return f(r)
	}
	rate := func(r *result) float64 { return r.DeliveriesPerSec }
	rtt := func(r *result) float64 { return r.RoundTripsPerSec }
	bpc := func(r *result) float64 {
		if r.Idle == nil || r.Idle.BytesPerConn == nil {
			return math.NaN()
		}
		return *r.Idle.BytesPerConn
	}
	best := func(r *result) float64 {
		if r.Ramp == nil || r.Ramp.Best == nil {
			return 0
		}
		return r.Ramp.Best.DeliveriesPerSec
	}
	issues := func(r *result) float64 {
		if r == nil || r.Messages == nil {
			return math.NaN()
		}
		m := r.Messages
		return float64(m.Lost + m.Duplicated + m.OutOfOrder)
	}

	c, w := serverCPU(cf), serverCPU(wf)
	row("fanout: deliveries/s", field(cf, rate), field(wf, rate), field(cf, rate)/field(wf, rate), "", "", "%.0f")
	row("fanout: server CPU %", c, w, c/w, "≤ 0.40", yes(c/w <= 0.4, !math.IsNaN(c/w)), "%.1f")
	row("fanout: p99 ms", p99(cf), p99(wf), p99(cf)/p99(wf), "≤ 1.00", yes(p99(cf) <= p99(wf), !math.IsNaN(p99(cf)/p99(wf))), "%.2f")
	row("fanout: p999 ms", field(cf, func(r *result) float64 { return r.Latency.P999 }), field(wf, func(r *result) float64 { return r.Latency.P999 }), math.NaN(), "", "", "%.2f")
	sysShare := func(r *result) float64 {
		if r == nil || r.Server == nil || r.Server.CPUS == 0 {
			return math.NaN()
		}
		return 100 * r.Server.SysS / r.Server.CPUS
	}
	row("fanout: server CPU in kernel %", sysShare(cf), sysShare(wf), math.NaN(), "", "", "%.0f")
	row("fanout: client CPU %", clientCPU(cf), clientCPU(wf), math.NaN(), "", "", "%.1f")
	row("fanout: lost+dup+ooo", issues(cf), issues(wf), math.NaN(), "0", yes(issues(cf) == 0, cf != nil), "%.0f")
	if cj != nil {
		j := serverCPU(cj)
		row("fanout /ws JSON: server CPU %", j, math.NaN(), j/c, "≤ 1.30 × raw", yes(j/c <= 1.3, !math.IsNaN(j/c)), "%.1f")
	}
	e1, e2 := field(ce, rtt), field(we, rtt)
	row("echo: msg/s", e1, e2, e1/e2, "≥ 1.50", yes(e1/e2 >= 1.5, !math.IsNaN(e1/e2)), "%.0f")
	row("echo: p99 ms", p99(ce), p99(we), p99(ce)/p99(we), "", "", "%.2f")
	row("echo: server CPU %", serverCPU(ce), serverCPU(we), serverCPU(ce)/serverCPU(we), "", "", "%.1f")
	row("echo: client CPU %", clientCPU(ce), clientCPU(we), math.NaN(), "", "", "%.1f")
	i1, i2 := field(ci, bpc), field(wi, bpc)
	conns := 0
	if ci != nil && ci.Idle != nil {
		conns = ci.Idle.Conns
	}
	row(fmt.Sprintf("idle (%d conns): bytes/conn", conns), i1, i2, i1/i2, "chatgg ≤ 1024", yes(i1 <= 1024, !math.IsNaN(i1)), "%.0f")
	r1, r2 := field(cr, best), field(wr, best)
	row("ramp: best deliveries/s", r1, r2, r1/r2, "≥ 3.00", yes(r1/r2 >= 3, !math.IsNaN(r1/r2) && !math.IsInf(r1/r2, 0)), "%.0f")
	row("ramp: client CPU % (best)", field(cr, func(r *result) float64 { return rampBestClient(r) }), field(wr, func(r *result) float64 { return rampBestClient(r) }), math.NaN(), "", "", "%.1f")
	tw.Flush()
	for _, r := range []*result{cr, wr} {
		if r == nil || r.Ramp == nil || len(r.Ramp.Steps) == 0 {
			continue
		}
		last := r.Ramp.Steps[len(r.Ramp.Steps)-1]
		rerun := 0
		for _, s := range r.Ramp.Steps {
			if s.Retried {
				rerun++
			}
		}
		if rerun > 0 {
			fmt.Fprintf(stdout, "ramp %s: %d step(s) run again after a p99 spike\n", serverOf(r, cr), rerun)
		}
		if !last.Pass {
			fmt.Fprintf(stdout, "ramp %s: stopped at %s deliveries/s: %s\n", serverOf(r, cr), num(last.TargetDeliveries), last.Why)
		} else {
			fmt.Fprintf(stdout, "ramp %s: every step passed up to %s deliveries/s (--max-steps)\n", serverOf(r, cr), num(last.TargetDeliveries))
		}
	}
	return exitOK
}

func serverOf(r, chatgg *result) string {
	if r == chatgg {
		return "chatgg"
	}
	return "ws"
}

func rampBestClient(r *result) float64 {
	if r.Ramp == nil || r.Ramp.Best == nil {
		return math.NaN()
	}
	return r.Ramp.Best.ClientCPU.Percent
}

func fmtv(v float64, format string) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "-"
	}
	return fmt.Sprintf(format, v)
}

// loadResult reads dir/name.json, a --json result; nil when it is missing
// or unreadable (a step that failed leaves none).
func loadResult(dir, name string) *result {
	b, err := os.ReadFile(filepath.Join(dir, name+".json"))
	if err != nil {
		return nil
	}
	var r result
	if json.Unmarshal(b, &r) != nil {
		return nil
	}
	return &r
}
