package server

import (
	"io"
	"os"
	"strings"
	"testing"
	"time"
)

func env(kv ...string) func(string) string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return func(k string) string { return m[k] }
}

func TestLoadDefaults(t *testing.T) {
	c, err := Load(nil, env(), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.Role != RoleAll || c.WSAddr != ":9001" || c.HTTPAddr != ":9002" || c.DataDir != "./data" ||
		c.DefaultTopic != "MESSAGES" || c.QueueName != "chatgg:queue" || c.IdleTimeout != 120*time.Second {
		t.Fatalf("defaults: %+v", c)
	}
}

func TestLoadOriginalEnvNames(t *testing.T) {
	c, err := Load(nil, env("PORT", "3000", "REDIS_URL", "redis://r:6379", "REDIS_CHANNEL", "CHAT",
		"BULLMQ_QUEUE_NAME", "jobs", "COUCHDB_URL", "http://admin:admin@couchdb:5984/chatgg", "NODE_INDEX", "7", "WORKER", "true"), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.WSAddr != ":3000" || c.RedisURL != "redis://r:6379" || c.DefaultTopic != "CHAT" || c.QueueName != "jobs" ||
		c.CouchDBURL != "http://admin:admin@couchdb:5984/chatgg" || c.Node != 7 || c.Role != RoleWorker {
		t.Fatalf("original env names not honoured: %+v", c)
	}
}

func TestLoadFlagsWinOverEnv(t *testing.T) {
	c, err := Load([]string{"serve", "--ws-addr", "127.0.0.1:1", "--node=3"}, env("CHATGG_WS_ADDR", ":5", "NODE_INDEX", "9"), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.Role != RoleServe || c.WSAddr != "127.0.0.1:1" || c.Node != 3 {
		t.Fatalf("%+v", c)
	}
}

func TestLoadRejectsBadValuesNamingTheSetting(t *testing.T) {
	cases := []struct {
		name string
		args []string
		env  []string
		want string
	}{
		{"bad role", []string{"dance"}, nil, "unknown role"},
		{"bad addr", []string{"--ws-addr", "nope"}, nil, "--ws-addr"},
		{"bad env addr", nil, []string{"CHATGG_HTTP_ADDR", "x"}, "--http-addr"},
		{"bad node", nil, []string{"NODE_INDEX", "70000"}, "NODE_INDEX"},
		{"bad duration", []string{"--idle-timeout", "soon"}, nil, "--idle-timeout"},
		{"negative size", []string{"--max-message-bytes", "-1"}, nil, "--max-message-bytes"},
		{"bad topic", nil, []string{"REDIS_CHANNEL", "has space"}, "REDIS_CHANNEL"},
		{"bad log level", []string{"--log-level", "loud"}, nil, "--log-level"},
		{"unknown flag", []string{"--nope"}, nil, "nope"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(tc.args, env(tc.env...), io.Discard)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error naming %q", err, tc.want)
			}
		})
	}
}

func TestSplitRolesNeedExternalServices(t *testing.T) {
	c, _ := Load([]string{"serve"}, env(), io.Discard)
	if _, err := New(t.Context(), c, nil); err == nil || !strings.Contains(err.Error(), "--redis-url") {
		t.Fatalf("serve without Redis: %v", err)
	}
}

// TestREADMEConfigTable keeps the README's configuration table true: every
// setting appears with its environment names and default.
func TestREADMEConfigTable(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	for _, o := range Options() {
		def := "(none)"
		if o[2] != "" {
			def = "`" + o[2] + "`"
		}
		row := "| `" + o[0] + "` | `" + strings.Join(strings.Split(o[1], ", "), "`, `") + "` | " + def + " |"
		if !strings.Contains(readme, row) {
			t.Errorf("README.md lacks the row %s", row)
		}
	}
}
