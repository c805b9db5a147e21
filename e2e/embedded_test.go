package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chatgg/chatgg/internal/testsvc"
)

// startEmbedded runs chatgg on its embedded defaults (no Redis, no
// CouchDB) on dataDir, with extra flags, and waits until it is ready.
func startEmbedded(t *testing.T, name, dataDir string, flags ...string) (*testsvc.Proc, string) {
	t.Helper()
	ws, httpPort := testsvc.FreePort(t), testsvc.FreePort(t)
	base := fmt.Sprintf("http://127.0.0.1:%d", httpPort)
	args := append([]string{"--ws-addr", fmt.Sprintf("127.0.0.1:%d", ws), "--http-addr", fmt.Sprintf("127.0.0.1:%d", httpPort),
		"--data-dir", dataDir, "--drain-period", "0s", "--close-window", "0s"}, flags...)
	p := testsvc.StartProc(t, testsvc.ProcSpec{
		Name: name, Bin: chatggBin, Args: args, Port: httpPort,
		Ready: func() error {
			st, _, err := do(http.MethodGet, base+"/readyz", "", nil)
			if err == nil && st != http.StatusOK {
				err = fmt.Errorf("readyz %d", st)
			}
			return err
		},
	})
	return p, base
}

// TestEmbeddedCrashLosesNoAckedMessage: on the embedded defaults the queue
// is journaled, so messages acked and not yet stored when the process is
// killed (SIGKILL: no drain) are stored, once each, after a restart on the
// same data directory.
func TestEmbeddedCrashLosesNoAckedMessage(t *testing.T) {
	dataDir := t.TempDir()
	const topic = "room.crash"
	// The worker waits up to an hour to fill a batch of 100 000: nothing is
	// stored before the kill.
	p, base := startEmbedded(t, "chatgg-embedded-1", dataDir, "--batch-size", "100000", "--batch-wait", "1h")
	var acked []string
	for batch := 0; batch < 4; batch++ {
		items := make([]string, 50)
		for i := range items {
			items[i] = fmt.Sprintf(`{"topic":%q,"data":{"n":%d},"key":"k%d"}`, topic, batch*50+i, batch*50+i)
		}
		st, body, err := do(http.MethodPost, base+"/v1/messages", "application/json", []byte("["+strings.Join(items, ",")+"]"))
		if err != nil || st != http.StatusAccepted {
			t.Fatalf("publish batch %d: %d %s %v", batch, st, body, err)
		}
		var res struct{ Results []struct{ ID string } }
		if err := json.Unmarshal(body, &res); err != nil {
			t.Fatal(err)
		}
		for _, r := range res.Results {
			if r.ID == "" {
				t.Fatalf("batch %d: a message was not acked: %s", batch, body)
			}
			acked = append(acked, r.ID)
		}
	}
	var stored []histMsg
	if err := getJSON(base+"/v1/topics/"+topic+"/messages?source=store&limit=1000", &struct {
		Messages *[]histMsg `json:"messages"`
	}{&stored}); err != nil {
		t.Fatal(err)
	}
	if len(stored) != 0 {
		t.Fatalf("%d messages stored before the kill: the test needs them only queued", len(stored))
	}
	p.Kill()

	_, base = startEmbedded(t, "chatgg-embedded-2", dataDir)
	// A publisher that got no answer before the kill retries with its key:
	// acked with the message recovered from the journal, not stored again.
	retry := fmt.Sprintf(`[{"topic":%q,"data":{"n":7},"key":"k7"}]`, topic)
	st, body, err := do(http.MethodPost, base+"/v1/messages", "application/json", []byte(retry))
	var res struct{ Results []struct{ ID string } }
	if err != nil || st != http.StatusAccepted || json.Unmarshal(body, &res) != nil || len(res.Results) != 1 || res.Results[0].ID != acked[7] {
		t.Fatalf("retry of k7 after the restart: %d %s %v; want acked as %s", st, body, err, acked[7])
	}
	var ids []string
	deadline := time.Now().Add(20 * time.Second)
	for {
		msgs, err := history(base, topic)
		if err != nil {
			t.Fatal(err)
		}
		ids = ids[:0]
		for _, m := range msgs {
			ids = append(ids, m.ID)
		}
		if len(ids) >= len(acked) || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	slices.Sort(acked)
	if !slices.Equal(ids, acked) {
		t.Fatalf("after the restart history holds %d messages, want the %d acked before the kill, once each", len(ids), len(acked))
	}
	t.Logf("%d acked messages stored after SIGKILL and restart", len(acked))
}
