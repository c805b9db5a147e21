package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestStoreCompareTable(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, r *result) {
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name+".json"), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"compare", "--store", "--dir", dir}, &out, &errb); code != exitSetup {
		t.Fatalf("without results: exit %d", code)
	}
	write("store", &result{Mode: "store", Store: &storeResult{Batch: 500, Inflight: 2, Written: 30000, DocsPerSec: 10000,
		BatchLatency: &latency{P50: 90, P99: 200}, Complete: true}, Server: &serverUse{Percent: 130}})
	e2e := &result{Mode: "e2e", Config: config{Rate: 12000, DurationS: 2.5, Publishers: 24},
		Messages: &messages{Sent: 30000},
		Stored: &storedResult{Stored: 30000, PerSec: 9500, Complete: true, PollMs: 50, Latency: &latency{P50: 2000, P99: 3000},
			Workers: &workerStats{PerSec: 9700, Stored: 30000, WindowS: 3.1, QueueMaxDepth: 4000,
				Workers: []workerSample{{Messages: 15000, Batches: 30, PerBatch: 500, MeanBatchMs: 95, BusyPercent: 92}}}}}
	write("e2e", e2e)
	for _, tc := range []struct {
		perSec float64
		met    string
	}{{9500, "yes"}, {8000, "NO"}} {
		e2e.Stored.PerSec = tc.perSec
		write("e2e", e2e)
		out.Reset()
		if code := run(context.Background(), []string{"compare", "--store", "--dir", dir}, &out, &errb); code != exitOK {
			t.Fatalf("exit %d: %s", code, errb.String())
		}
		var line string
		for _, l := range strings.Split(out.String(), "\n") {
			if strings.Contains(l, "seen in history") {
				line = l
			}
		}
		f := strings.Fields(line)
		if len(f) == 0 || f[len(f)-1] != tc.met {
			t.Fatalf("%v/s: row %q, want met %s\n%s", tc.perSec, line, tc.met, out.String())
		}
		want := map[float64]string{9500: "0.95", 8000: "0.80"}[tc.perSec]
		if !strings.Contains(line, want) {
			t.Fatalf("row %q has no ratio %s", line, want)
		}
	}
	for _, s := range []string{"workers' counters", "0.97", "worker 1: 15000 msgs in 30 batches (500/batch", "queue: max depth 4000"} {
		if !strings.Contains(out.String(), s) {
			t.Fatalf("no %q in\n%s", s, out.String())
		}
	}
}
