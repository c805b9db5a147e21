package server

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/chatgg/chatgg/codec"
	"github.com/chatgg/chatgg/loop"
)

// Roles a process can run.
const (
	RoleAll    = "all"    // WebSocket + REST + worker (the default)
	RoleServe  = "serve"  // WebSocket + REST
	RoleWorker = "worker" // queue to store
)

// Config is the whole server configuration. Only this package reads flags
// and the environment; every other package gets a plain Config of its own.
type Config struct {
	Role     string
	WSAddr   string
	HTTPAddr string
	// PprofAddr serves net/http/pprof when set (--pprof-addr).
	PprofAddr string
	DataDir   string
	LogLevel  slog.Level

	RedisURL      string
	ChannelPrefix string
	DefaultTopic  string
	QueueName     string
	CouchDBURL    string
	Node          uint16

	Loops               int
	MaxHeaderBytes      int
	HandshakeTimeout    time.Duration
	IdleTimeout         time.Duration
	MaxOutboundBytes    int
	MaxMessageBytes     int
	EchoMaxMessageBytes int
	MaxTopicsPerConn    int
	PublishRate         float64
	PublishBurst        float64
	DedupWindow         time.Duration
	ShutdownTimeout     time.Duration
	BatchSize           int
	BatchWait           time.Duration
	WorkerHeartbeat     time.Duration
	RecoverInterval     time.Duration
	ProxyProtocol       bool
	QueueJournal        bool // embedded queue: journal batches to the data directory
	HotWindowLen        int
	HotWindowAge        time.Duration
	DrainPeriod         time.Duration
	CloseWindow         time.Duration

	// Security (docs/security.md).
	JWTSecret           string
	JWTPublicKeyFile    string
	JWTJWKSFile         string
	JWTIssuer           string
	JWTAudience         string
	JWTLeeway           time.Duration
	AllowAnonymous      string   // "auto", "true" or "false"
	AnonymousSubTopics  []string // empty: none
	AnonymousPubTopics  []string
	AllowedOrigins      []string // nil: every origin
	APIKeysFile         string
	APIKeys             string
	MaxConns            int
	MaxConnsPerIP       int
	UpgradesPerSecPerIP float64
}

// option is one setting: its flag, the environment names that also set it
// (the first found wins; flags win over all), its default and its parser.
type option struct {
	flag  string
	env   []string
	def   string
	usage string
	set   func(c *Config, v string) error
}

// secretOptions hold credentials: their values are never shown, neither in
// --help (which prints defaults, read from the environment) nor in errors.
var secretOptions = map[string]bool{"jwt-secret": true, "api-keys": true}

func options() []option {
	return []option{
		{"ws-addr", []string{"CHATGG_WS_ADDR"}, loop.DefaultAddr, "WebSocket listen address (PORT=n also sets :n)", func(c *Config, v string) error { return setAddr(&c.WSAddr, v) }},
		{"http-addr", []string{"CHATGG_HTTP_ADDR"}, ":9002", "REST listen address", func(c *Config, v string) error { return setAddr(&c.HTTPAddr, v) }},
		{"data-dir", []string{"CHATGG_DATA_DIR"}, "./data", "directory of the embedded store and the embedded queue's journal", func(c *Config, v string) error { c.DataDir = v; return nonEmpty(v) }},
		{"log-level", []string{"CHATGG_LOG_LEVEL"}, "info", "debug, info, warn or error", func(c *Config, v string) error { return c.LogLevel.UnmarshalText([]byte(v)) }},
		{"redis-url", []string{"CHATGG_REDIS_URL", "REDIS_URL"}, "", "Redis for pub/sub, queue and dedup (redis://, rediss://); empty: in-process", setString(func(c *Config) *string { return &c.RedisURL })},
		{"redis-prefix", []string{"CHATGG_REDIS_PREFIX"}, "chatgg:", "prefix of chatgg's Redis channels", setString(func(c *Config) *string { return &c.ChannelPrefix })},
		{"default-topic", []string{"CHATGG_DEFAULT_TOPIC", "REDIS_CHANNEL"}, loop.DefaultTopic, "topic of raw connections on paths other than /raw/{topic}", func(c *Config, v string) error {
			if !codec.ValidTopicString(v) {
				return errors.New("not a valid topic name")
			}
			c.DefaultTopic = v
			return nil
		}},
		{"queue", []string{"CHATGG_QUEUE", "BULLMQ_QUEUE_NAME"}, "chatgg:queue", "Redis list of the message queue", setString(func(c *Config) *string { return &c.QueueName })},
		{"couchdb-url", []string{"CHATGG_COUCHDB_URL", "COUCHDB_URL"}, "", "CouchDB database URL, e.g. http://admin:admin@couchdb:5984/chatgg; empty: embedded store", setString(func(c *Config) *string { return &c.CouchDBURL })},
		{"node", []string{"CHATGG_NODE", "NODE_INDEX"}, "0", "node index (0-65535), part of every message id", func(c *Config, v string) error {
			n, err := strconv.ParseUint(v, 10, 16)
			c.Node = uint16(n)
			return err
		}},
		{"loops", []string{"CHATGG_LOOPS"}, "0", "event loops (0: one per core)", setInt(func(c *Config) *int { return &c.Loops }, 0)},
		{"max-header-bytes", []string{"CHATGG_MAX_HEADER_BYTES"}, strconv.Itoa(loop.DefaultMaxHeaderBytes), "upgrade request head limit", setInt(func(c *Config) *int { return &c.MaxHeaderBytes }, 1)},
		{"handshake-timeout", []string{"CHATGG_HANDSHAKE_TIMEOUT"}, loop.DefaultHandshakeTimeout.String(), "time allowed to complete the upgrade", setDuration(func(c *Config) *time.Duration { return &c.HandshakeTimeout })},
		{"idle-timeout", []string{"CHATGG_IDLE_TIMEOUT"}, "120s", "close connections silent this long (pinged at half)", setDuration(func(c *Config) *time.Duration { return &c.IdleTimeout })},
		{"max-outbound-bytes", []string{"CHATGG_MAX_OUTBOUND_BYTES"}, strconv.Itoa(loop.DefaultMaxOutboundBytes), "unsent bytes per connection before it is closed with 4008", setInt(func(c *Config) *int { return &c.MaxOutboundBytes }, 1)},
		{"max-message-bytes", []string{"CHATGG_MAX_MESSAGE_BYTES"}, strconv.Itoa(loop.DefaultMaxMessageBytes), "published message data limit (/ws, raw, REST)", setInt(func(c *Config) *int { return &c.MaxMessageBytes }, 1)},
		{"echo-max-message-bytes", []string{"CHATGG_ECHO_MAX_MESSAGE_BYTES"}, strconv.Itoa(loop.DefaultEchoMaxMessageBytes), "message limit on /echo", setInt(func(c *Config) *int { return &c.EchoMaxMessageBytes }, 1)},
		{"max-topics-per-conn", []string{"CHATGG_MAX_TOPICS_PER_CONN"}, strconv.Itoa(loop.DefaultMaxTopicsPerConn), "subscriptions per connection", setInt(func(c *Config) *int { return &c.MaxTopicsPerConn }, 1)},
		{"publish-rate", []string{"CHATGG_PUBLISH_RATE"}, strconv.Itoa(loop.DefaultPublishRate), "publishes per second per connection", setFloat(func(c *Config) *float64 { return &c.PublishRate })},
		{"publish-burst", []string{"CHATGG_PUBLISH_BURST"}, strconv.Itoa(loop.DefaultPublishBurst), "publish burst per connection", setFloat(func(c *Config) *float64 { return &c.PublishBurst })},
		{"dedup-window", []string{"CHATGG_DEDUP_WINDOW"}, "5m", "how long an idempotency key is remembered", setDuration(func(c *Config) *time.Duration { return &c.DedupWindow })},
		{"shutdown-timeout", []string{"CHATGG_SHUTDOWN_TIMEOUT"}, "10s", "bound on a graceful stop", setDuration(func(c *Config) *time.Duration { return &c.ShutdownTimeout })},
		{"batch-size", []string{"CHATGG_BATCH_SIZE"}, "500", "messages per storage batch", setInt(func(c *Config) *int { return &c.BatchSize }, 1)},
		{"batch-wait", []string{"CHATGG_BATCH_WAIT"}, "50ms", "longest wait to fill a storage batch", setDuration(func(c *Config) *time.Duration { return &c.BatchWait })},
		{"worker-heartbeat", []string{"CHATGG_WORKER_HEARTBEAT"}, "10s", "Redis queue: a worker silent this long is dead and its batch goes back to the queue", setDuration(func(c *Config) *time.Duration { return &c.WorkerHeartbeat })},
		{"hot-window", []string{"CHATGG_HOT_WINDOW"}, "1000", "recent messages kept per topic for reconnecting clients (sub with after)", setInt(func(c *Config) *int { return &c.HotWindowLen }, 1)},
		{"hot-window-age", []string{"CHATGG_HOT_WINDOW_AGE"}, "5m", "a topic's recent messages are forgotten this long after its last message", setDuration(func(c *Config) *time.Duration { return &c.HotWindowAge })},
		{"proxy-protocol", []string{"CHATGG_PROXY_PROTOCOL"}, "false", "require a PROXY protocol v1/v2 header on every WebSocket and REST connection (behind a balancer that sends it)", func(c *Config, v string) error {
			b, err := strconv.ParseBool(v)
			c.ProxyProtocol = b
			return err
		}},
		{"drain-period", []string{"CHATGG_DRAIN_PERIOD"}, "5s", "on SIGTERM: time spent not-ready but serving, while the balancer moves new clients away", setNonNegDuration(func(c *Config) *time.Duration { return &c.DrainPeriod })},
		{"close-window", []string{"CHATGG_CLOSE_WINDOW"}, "5s", "on SIGTERM: clients are closed with 1001 spread over this window, so they do not reconnect at once", setNonNegDuration(func(c *Config) *time.Duration { return &c.CloseWindow })},
		{"recover-interval", []string{"CHATGG_RECOVER_INTERVAL"}, "5s", "Redis queue: how often workers look for dead workers", setDuration(func(c *Config) *time.Duration { return &c.RecoverInterval })},
		{"jwt-secret", []string{"CHATGG_JWT_SECRET"}, "", "HS256 shared secret for WebSocket tokens, at least 32 bytes (prefer the environment)", setString(func(c *Config) *string { return &c.JWTSecret })},
		{"jwt-public-key", []string{"CHATGG_JWT_PUBLIC_KEY"}, "", "PEM file of RSA or Ed25519 public keys for WebSocket tokens (RS256, EdDSA)", setString(func(c *Config) *string { return &c.JWTPublicKeyFile })},
		{"jwt-jwks", []string{"CHATGG_JWT_JWKS"}, "", "JWKS file of RSA and Ed25519 public keys for WebSocket tokens, picked by kid (read at start, never fetched)", setString(func(c *Config) *string { return &c.JWTJWKSFile })},
		{"jwt-issuer", []string{"CHATGG_JWT_ISSUER"}, "", "iss tokens must carry; empty: not checked", setString(func(c *Config) *string { return &c.JWTIssuer })},
		{"jwt-audience", []string{"CHATGG_JWT_AUDIENCE"}, "", "aud tokens must include; empty: not checked", setString(func(c *Config) *string { return &c.JWTAudience })},
		{"jwt-leeway", []string{"CHATGG_JWT_LEEWAY"}, "30s", "clock skew allowed on exp and nbf", setNonNegDuration(func(c *Config) *time.Duration { return &c.JWTLeeway })},
		{"allow-anonymous", []string{"CHATGG_ALLOW_ANONYMOUS"}, "auto", "WebSocket connections without a token: true, false, or auto (allowed exactly when no JWT key is set)", func(c *Config, v string) error {
			switch v {
			case "auto", "true", "false":
				c.AllowAnonymous = v
				return nil
			}
			return errors.New("must be auto, true or false")
		}},
		{"anonymous-sub-topics", []string{"CHATGG_ANONYMOUS_SUB_TOPICS"}, "*", "topic patterns anonymous connections may subscribe to, comma-separated (* matches any run of characters); empty: none", setPatterns(func(c *Config) *[]string { return &c.AnonymousSubTopics })},
		{"anonymous-pub-topics", []string{"CHATGG_ANONYMOUS_PUB_TOPICS"}, "*", "topic patterns anonymous connections may publish to; empty: none", setPatterns(func(c *Config) *[]string { return &c.AnonymousPubTopics })},
		{"allowed-origins", []string{"CHATGG_ALLOWED_ORIGINS"}, "*", "Origin values browser upgrades may carry, comma-separated: https://host[:port], https://*.domain or *; others get 403", setOrigins},
		{"api-keys-file", []string{"CHATGG_API_KEYS_FILE"}, "", "REST API keys file: lines of key scope[,scope] [name]; scopes publish, history, admin", setString(func(c *Config) *string { return &c.APIKeysFile })},
		{"api-keys", []string{"CHATGG_API_KEYS"}, "", "REST API keys as in --api-keys-file, entries separated by ; (prefer the environment)", setString(func(c *Config) *string { return &c.APIKeys })},
		{"max-conns", []string{"CHATGG_MAX_CONNS"}, "0", "connections on the WebSocket port; upgrades past it get 503 (0: no limit)", setInt(func(c *Config) *int { return &c.MaxConns }, 0)},
		{"max-conns-per-ip", []string{"CHATGG_MAX_CONNS_PER_IP"}, "0", "connections per client address (IPv6: per /64); upgrades past it get 429 (0: no limit)", setInt(func(c *Config) *int { return &c.MaxConnsPerIP }, 0)},
		{"upgrades-per-sec-per-ip", []string{"CHATGG_UPGRADES_PER_SEC_PER_IP"}, "0", "WebSocket upgrades per second per client address, burst as many; past it 429 (0: no limit)", setNonNegFloat(func(c *Config) *float64 { return &c.UpgradesPerSecPerIP })},
		{"queue-journal", []string{"CHATGG_QUEUE_JOURNAL"}, "true", "embedded queue (no Redis): write every accepted batch to <data-dir>/queue.db before acking it, so a crash loses nothing; false keeps it in memory only (about 0.3 ms less per publish)", func(c *Config, v string) error {
			b, err := strconv.ParseBool(v)
			c.QueueJournal = b
			return err
		}},
		{"pprof-addr", []string{"CHATGG_PPROF_ADDR"}, "", "serve Go's net/http/pprof on this address (e.g. 127.0.0.1:6060); empty: off. Keep it on loopback: profiles reveal internals", func(c *Config, v string) error {
			if v == "" {
				c.PprofAddr = ""
				return nil
			}
			return setAddr(&c.PprofAddr, v)
		}},
	}
}

func setNonNegFloat(field func(*Config) *float64) func(*Config, string) error {
	return func(c *Config, v string) error {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || f < 0 || math.IsInf(f, 0) || math.IsNaN(f) {
			return errors.New("must be a number, 0 or more")
		}
		*field(c) = f
		return nil
	}
}

// splitList splits a comma list, trimming spaces and dropping empty items.
func splitList(v string) []string {
	out := []string{}
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// setPatterns parses topic patterns: topic characters and '*'.
func setPatterns(field func(*Config) *[]string) func(*Config, string) error {
	return func(c *Config, v string) error {
		pats := splitList(v)
		for _, p := range pats {
			if t := strings.ReplaceAll(p, "*", "x"); len(p) > maxPatternBytes || !codec.ValidTopicString(t) {
				return fmt.Errorf("%q is not a topic pattern", p)
			}
		}
		*field(c) = pats
		return nil
	}
}

// setOrigins parses the origin allowlist.
func setOrigins(c *Config, v string) error {
	list := splitList(v)
	if len(list) == 0 {
		return errors.New("must list at least one origin, or *")
	}
	for i, o := range list {
		if o == "*" {
			c.AllowedOrigins = nil
			return nil
		}
		u, err := url.Parse(o)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" ||
			u.Path != "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
			return fmt.Errorf("%q is not an origin such as https://chat.example.com", o)
		}
		if h := u.Hostname(); strings.Contains(h, "*") && (!strings.HasPrefix(h, "*.") || strings.Count(h, "*") > 1) {
			return fmt.Errorf("%q: a wildcard must be a whole first label, as in https://*.example.com", o)
		}
		list[i] = strings.ToLower(o)
	}
	c.AllowedOrigins = list
	return nil
}

func setString(field func(*Config) *string) func(*Config, string) error {
	return func(c *Config, v string) error { *field(c) = v; return nil }
}

func setInt(field func(*Config) *int, min int) func(*Config, string) error {
	return func(c *Config, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil {
			return errors.New("not an integer")
		}
		if n < min {
			return fmt.Errorf("must be at least %d", min)
		}
		*field(c) = n
		return nil
	}
}

func setFloat(field func(*Config) *float64) func(*Config, string) error {
	return func(c *Config, v string) error {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || f <= 0 {
			return errors.New("must be a positive number")
		}
		*field(c) = f
		return nil
	}
}

func setDuration(field func(*Config) *time.Duration) func(*Config, string) error {
	return func(c *Config, v string) error {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return errors.New("must be a positive duration such as 10s")
		}
		*field(c) = d
		return nil
	}
}

func setNonNegDuration(field func(*Config) *time.Duration) func(*Config, string) error {
	return func(c *Config, v string) error {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return errors.New("must be a duration such as 5s, or 0")
		}
		*field(c) = d
		return nil
	}
}

func setAddr(dst *string, v string) error {
	if _, _, err := net.SplitHostPort(v); err != nil {
		return errors.New("must be host:port or :port")
	}
	*dst = v
	return nil
}

func nonEmpty(v string) error {
	if v == "" {
		return errors.New("must not be empty")
	}
	return nil
}

// ErrHelp is returned by Load when -h or --help was asked for.
var ErrHelp = flag.ErrHelp

// Load reads the configuration: defaults, then the environment, then flags.
// args are the command-line arguments after the program name; the first may
// be a role. A bad value fails with the setting's name.
func Load(args []string, getenv func(string) string, usage io.Writer) (Config, error) {
	var c Config
	c.Role = RoleAll
	if getenv("WORKER") == "true" || getenv("WORKER") == "1" {
		c.Role = RoleWorker // the original demo's switch
	}
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		switch args[0] {
		case RoleAll, RoleServe, RoleWorker:
			c.Role = args[0]
			args = args[1:]
		default:
			return c, fmt.Errorf("unknown role %q: want all, serve or worker", args[0])
		}
	}

	opts := options()
	fs := flag.NewFlagSet("chatgg", flag.ContinueOnError)
	fs.SetOutput(usage)
	vals := make([]*string, len(opts))
	secrets := map[string]string{}
	for i, o := range opts {
		v := o.def
		for _, name := range o.env {
			if e := getenv(name); e != "" {
				v = e
				break
			}
		}
		if o.flag == "ws-addr" && getenv("CHATGG_WS_ADDR") == "" && getenv("PORT") != "" {
			v = ":" + getenv("PORT") // the original demo's PORT
		}
		if secretOptions[o.flag] {
			// The flag's default is what --help prints: keep the value out.
			secrets[o.flag] = v
			v = ""
		}
		vals[i] = fs.String(o.flag, v, fmt.Sprintf("%s (env %s)", o.usage, strings.Join(o.env, ", ")))
	}
	fs.Usage = func() {
		fmt.Fprintf(usage, "usage: chatgg [all|serve|worker] [flags]\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	for i, o := range opts {
		v := *vals[i]
		if secretOptions[o.flag] && !set[o.flag] {
			v = secrets[o.flag]
		}
		if err := o.set(&c, v); err != nil {
			shown := strconv.Quote(v)
			if secretOptions[o.flag] {
				shown = "(value not shown)"
			}
			return c, fmt.Errorf("invalid --%s (env %s) %s: %v", o.flag, strings.Join(o.env, ", "), shown, err)
		}
	}
	return c, nil
}

// Options lists every setting for the docs: flag, environment names,
// default and meaning.
func Options() [][4]string {
	var out [][4]string
	for _, o := range options() {
		out = append(out, [4]string{"--" + o.flag, strings.Join(o.env, ", "), o.def, o.usage})
	}
	return out
}
