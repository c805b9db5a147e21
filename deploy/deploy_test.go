package deploy

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/chatgg/chatgg/server"
)

// repo is the repository's root: go test runs in deploy/.
const repo = ".."

// stackVars stands for the deployer's environment when the stack is read:
// docker-compose.yml requires a CouchDB password.
var stackVars = map[string]string{"COUCHDB_PASSWORD": "check-password"}

// chatggServices are the stack's services that run the chatgg image, with
// the role each must run.
var chatggServices = map[string]string{"broker": server.RoleServe, "worker": server.RoleWorker}

func readFile(t *testing.T, rel string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repo, rel))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// chatggEnvNames is every environment name chatgg reads: the environment
// names of server.Options, and WORKER and PORT, the original demo's names
// that server.Load reads itself.
func chatggEnvNames() map[string]bool {
	names := map[string]bool{"WORKER": true, "PORT": true}
	for _, o := range server.Options() {
		for _, n := range strings.Split(o[1], ",") {
			if n = strings.TrimSpace(n); n != "" {
				names[n] = true
			}
		}
	}
	return names
}

// optionDefault is the default of the setting read from env name.
func optionDefault(t *testing.T, name string) string {
	t.Helper()
	for _, o := range server.Options() {
		for _, n := range strings.Split(o[1], ",") {
			if strings.TrimSpace(n) == name {
				return o[2]
			}
		}
	}
	t.Fatalf("no chatgg setting reads %s (server.Options)", name)
	return ""
}

// duration is env[name] or the setting's default, as a duration.
func duration(t *testing.T, env map[string]string, name string) time.Duration {
	t.Helper()
	v, ok := env[name]
	if !ok {
		v = optionDefault(t, name)
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("%s=%q: %v", name, v, err)
	}
	return d
}

// load runs chatgg's configuration loader on args and env, exactly as the
// binary would with that command line and environment, and checks that
// env holds only names chatgg reads: a misspelt name would be ignored by
// the binary and silently leave a default.
func load(t *testing.T, what string, args []string, env map[string]string) server.Config {
	t.Helper()
	known := chatggEnvNames()
	var unknown []string
	for name := range env {
		if !known[name] {
			unknown = append(unknown, name)
		}
	}
	sort.Strings(unknown)
	if len(unknown) > 0 {
		t.Errorf("%s: chatgg reads no environment variable %s (README, Configuration)", what, strings.Join(unknown, ", "))
	}
	cfg, err := server.Load(args, func(k string) string { return env[k] }, io.Discard)
	if err != nil {
		t.Fatalf("%s: chatgg %s refuses its settings: %v", what, strings.Join(args, " "), err)
	}
	return cfg
}

func port(t *testing.T, what, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("%s: %q: %v", what, addr, err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatalf("%s: %q: %v", what, addr, err)
	}
	return n
}

// The stack, docker-compose.yml: the parts the tests read.

type compose struct {
	Version  string             `yaml:"version"`
	Services map[string]service `yaml:"services"`
	Configs  map[string]struct {
		Name string `yaml:"name"`
		File string `yaml:"file"`
	} `yaml:"configs"`
}

type service struct {
	Image           string            `yaml:"image"`
	Build           any               `yaml:"build"`
	Command         []string          `yaml:"command"`
	Environment     map[string]string `yaml:"environment"`
	Ports           []publish         `yaml:"ports"`
	StopGracePeriod string            `yaml:"stop_grace_period"`
	Ulimits         map[string]struct {
		Soft int `yaml:"soft"`
		Hard int `yaml:"hard"`
	} `yaml:"ulimits"`
	Healthcheck struct {
		Test []string `yaml:"test"`
	} `yaml:"healthcheck"`
	Configs []struct {
		Source string `yaml:"source"`
		Target string `yaml:"target"`
	} `yaml:"configs"`
	Deploy struct {
		Replicas     *int   `yaml:"replicas"`
		EndpointMode string `yaml:"endpoint_mode"`
		UpdateConfig struct {
			Parallelism   int    `yaml:"parallelism"`
			Order         string `yaml:"order"`
			FailureAction string `yaml:"failure_action"`
		} `yaml:"update_config"`
		Resources struct {
			Limits struct {
				Cpus   string `yaml:"cpus"`
				Memory string `yaml:"memory"`
			} `yaml:"limits"`
		} `yaml:"resources"`
	} `yaml:"deploy"`
}

type publish struct {
	Target    int    `yaml:"target"`
	Published int    `yaml:"published"`
	Protocol  string `yaml:"protocol"`
	Mode      string `yaml:"mode"`
}

func (s service) replicas() int {
	if s.Deploy.Replicas == nil {
		return 1
	}
	return *s.Deploy.Replicas
}

func readCompose(t *testing.T, rel string) compose {
	t.Helper()
	var c compose
	if err := yaml.Unmarshal([]byte(readFile(t, rel)), &c); err != nil {
		t.Fatalf("%s: %v", rel, err)
	}
	return c
}

func readStack(t *testing.T) compose {
	t.Helper()
	c := readCompose(t, "docker-compose.yml")
	if c.Version != "3.8" {
		t.Errorf("docker-compose.yml: version %q, want \"3.8\"", c.Version)
	}
	for _, name := range []string{"lb", "broker", "worker", "redis", "couchdb"} {
		if _, ok := c.Services[name]; !ok {
			t.Errorf("docker-compose.yml: no service %s", name)
		}
	}
	return c
}

// composeVar matches compose's variable references: $$, ${NAME},
// ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}, $NAME.
var composeVar = regexp.MustCompile(`\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))`)

// interpolate substitutes vars into s as docker compose and docker stack
// deploy do.
func interpolate(s string, vars map[string]string) (string, error) {
	var err error
	out := composeVar.ReplaceAllStringFunc(s, func(m string) string {
		sm := composeVar.FindStringSubmatch(m)
		if sm[1] == "$" {
			return "$"
		}
		name := sm[2] + sm[5]
		v, set := vars[name]
		switch sm[3] {
		case ":-":
			if v == "" {
				return sm[4]
			}
		case "-":
			if !set {
				return sm[4]
			}
		case ":?", "?":
			if v == "" && (sm[3] == ":?" || !set) && err == nil {
				err = fmt.Errorf("%s is required: %s", name, sm[4])
			}
		}
		return v
	})
	return out, err
}

// taskEnv is service's environment as the task in slot sees it: compose
// variables substituted, then swarm's {{.Task.Slot}} template.
func taskEnv(t *testing.T, name string, s service, slot int) map[string]string {
	t.Helper()
	env := map[string]string{}
	for k, v := range s.Environment {
		v, err := interpolate(v, stackVars)
		if err != nil {
			t.Fatalf("service %s: %s: %v", name, k, err)
		}
		v = strings.ReplaceAll(v, "{{.Task.Slot}}", strconv.Itoa(slot))
		if strings.Contains(v, "{{") {
			t.Fatalf("service %s: %s=%q: a swarm template other than {{.Task.Slot}}", name, k, v)
		}
		env[k] = v
	}
	return env
}

func TestStackRunsChatggServicesWithSettingsItAccepts(t *testing.T) {
	c := readStack(t)
	for name, svc := range c.Services {
		image, err := interpolate(svc.Image, stackVars)
		if err != nil {
			t.Fatal(err)
		}
		_, isChatgg := chatggServices[name]
		if runsChatgg := svc.Build != nil || strings.HasPrefix(image, "chatgg"); runsChatgg != isChatgg {
			t.Errorf("service %s: runs the chatgg image: %v, want %v", name, runsChatgg, isChatgg)
		}
	}
	for name, role := range chatggServices {
		t.Run(name, func(t *testing.T) {
			svc := c.Services[name]
			if len(svc.Command) == 0 || svc.Command[0] != role {
				t.Errorf("command %q, want the role %q first", svc.Command, role)
			}
			nodes := map[uint16]int{}
			for slot := 1; slot <= svc.replicas(); slot++ {
				env := taskEnv(t, name, svc, slot)
				cfg := load(t, fmt.Sprintf("service %s, slot %d", name, slot), svc.Command, env)
				if cfg.Role != role {
					t.Errorf("slot %d: role %q, want %q", slot, cfg.Role, role)
				}
				// server.New refuses serve and worker without both.
				checkBackendURL(t, "REDIS_URL", cfg.RedisURL, "redis", c)
				checkBackendURL(t, "COUCHDB_URL", cfg.CouchDBURL, "couchdb", c)
				if prev, dup := nodes[cfg.Node]; dup && role == server.RoleServe {
					t.Errorf("slots %d and %d share NODE_INDEX %d: their message ids could collide", prev, slot, cfg.Node)
				}
				nodes[cfg.Node] = slot
			}
		})
	}
	broker := c.Services["broker"]
	if n := broker.replicas(); n != 3 {
		t.Errorf("broker: %d replicas, want 3", n)
	}
	if n := c.Services["worker"].replicas(); n != 2 {
		t.Errorf("worker: %d replicas, want 2", n)
	}
	if broker.Environment["NODE_INDEX"] != "{{.Task.Slot}}" {
		t.Errorf("broker: NODE_INDEX=%q, want {{.Task.Slot}}", broker.Environment["NODE_INDEX"])
	}
	if on, err := strconv.ParseBool(taskEnv(t, "broker", broker, 1)["CHATGG_PROXY_PROTOCOL"]); err != nil || !on {
		t.Error("broker: CHATGG_PROXY_PROTOCOL is not true: behind the balancer the brokers would log its address, not the clients'")
	}
	// One descriptor per client: the brokers and the balancer.
	for _, name := range []string{"broker", "lb"} {
		if got := c.Services[name].Ulimits["nofile"]; got.Soft != 1048576 || got.Hard != 1048576 {
			t.Errorf("%s: ulimits nofile %+v, want 1048576", name, got)
		}
	}
}

// checkBackendURL checks that a chatgg URL setting names a service of the
// stack on the port that service's image listens on.
func checkBackendURL(t *testing.T, name, raw, service string, c compose) {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil || raw == "" {
		t.Errorf("%s %q: not a URL (%v)", name, raw, err)
		return
	}
	want := map[string]string{"redis": "6379", "couchdb": "5984"}[service]
	if u.Hostname() != service || u.Port() != want {
		t.Errorf("%s %q: want the stack's %s on port %s", name, raw, service, want)
	}
	if _, ok := c.Services[u.Hostname()]; !ok {
		t.Errorf("%s %q: no service %s in the stack", name, raw, u.Hostname())
	}
	if service == "couchdb" {
		pw, _ := u.User.Password()
		if u.User.Username() == "" || pw != stackVars["COUCHDB_PASSWORD"] || strings.Trim(u.Path, "/") == "" {
			t.Errorf("%s %q: want the admin's name, COUCHDB_PASSWORD and a database", name, raw)
		}
	}
}

func TestStackSingleHostOverrideGivesTheBrokerAnIndex(t *testing.T) {
	c := readStack(t)
	o := readCompose(t, "deploy/compose.single-host.yml")
	broker := c.Services["broker"]
	ob := o.Services["broker"]
	env := map[string]string{}
	for k, v := range broker.Environment {
		env[k] = v
	}
	for k, v := range ob.Environment {
		env[k] = v
	}
	broker.Environment = env
	if ob.replicas() != 1 {
		t.Errorf("override: %d brokers, want 1: copies of one broker would share its NODE_INDEX", ob.replicas())
	}
	// No swarm: templates stay as written, so none may be left.
	e := taskEnv(t, "broker", broker, 0)
	if strings.Contains(fmt.Sprint(e), "{{") || e["NODE_INDEX"] == "0" {
		t.Fatalf("override leaves a template: %v", e)
	}
	load(t, "single-host broker", broker.Command, e)
}

func TestStackGracefulRollingUpdate(t *testing.T) {
	c := readStack(t)
	broker := c.Services["broker"]
	env := taskEnv(t, "broker", broker, 1)
	stop := duration(t, env, "CHATGG_DRAIN_PERIOD") + duration(t, env, "CHATGG_CLOSE_WINDOW") + duration(t, env, "CHATGG_SHUTDOWN_TIMEOUT")
	grace, err := time.ParseDuration(broker.StopGracePeriod)
	if err != nil || grace <= stop {
		t.Errorf("broker: stop_grace_period %q, want more than drain + close window + shutdown timeout = %v: swarm would SIGKILL a broker handing over its clients", broker.StopGracePeriod, stop)
	}
	u := broker.Deploy.UpdateConfig
	if u.Parallelism != 1 {
		t.Errorf("broker: update parallelism %d, want 1", u.Parallelism)
	}
	// The replacement task takes the old one's slot, so its NODE_INDEX: the
	// two must never run at once.
	if u.Order != "stop-first" {
		t.Errorf("broker: update order %q, want stop-first: start-first runs two brokers with one NODE_INDEX", u.Order)
	}
	if u.FailureAction != "rollback" {
		t.Errorf("broker: update failure_action %q, want rollback", u.FailureAction)
	}
	if broker.Deploy.Resources.Limits.Cpus == "" || broker.Deploy.Resources.Limits.Memory == "" {
		t.Error("broker: no resource limits")
	}
	for _, name := range []string{"broker", "worker"} {
		if hc := c.Services[name].Healthcheck.Test; len(hc) < 2 || hc[0] != "CMD" || hc[1] != "/usr/local/bin/chatgg-healthcheck" {
			t.Errorf("%s: healthcheck %q, want the image's chatgg-healthcheck", name, hc)
		}
	}
}

// The balancer: deploy/haproxy/haproxy.cfg, shared with the end-to-end tests.

type haproxyCfg struct {
	text     string
	required []string // "${NAME}" references without a default
	optional []string // "${NAME-default}"
}

var haproxyVar = regexp.MustCompile(`"\$\{([A-Za-z_][A-Za-z0-9_]*)(-[^}]*)?\}"`)

func readHAProxyCfg(t *testing.T) haproxyCfg {
	t.Helper()
	path := filepath.Join(repo, "deploy", "haproxy", "haproxy.cfg")
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		t.Skip("deploy/haproxy/haproxy.cfg does not exist yet")
	}
	if err != nil {
		t.Fatal(err)
	}
	h := haproxyCfg{text: string(b)}
	seen := map[string]bool{}
	for _, line := range strings.Split(h.text, "\n") {
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		for _, m := range haproxyVar.FindAllStringSubmatch(line, -1) {
			if seen[m[1]] {
				continue
			}
			seen[m[1]] = true
			if m[2] == "" {
				h.required = append(h.required, m[1])
			} else {
				h.optional = append(h.optional, m[1])
			}
		}
	}
	return h
}

// directives are the cfg's non-comment lines, trimmed, per section header.
func (h haproxyCfg) sections() map[string][]string {
	out := map[string][]string{}
	var cur string
	for _, line := range strings.Split(h.text, "\n") {
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		if strings.TrimSpace(line) == "" {
			continue
		}
		if line[0] != ' ' && line[0] != '\t' {
			cur = strings.Join(strings.Fields(line), " ")
			continue
		}
		out[cur] = append(out[cur], strings.Join(strings.Fields(line), " "))
	}
	return out
}

func lookHAProxy(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("haproxy"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/sbin/haproxy"); err == nil {
		return "/usr/sbin/haproxy"
	}
	t.Fatal("haproxy not found; run `make services` (scripts/services.sh install)")
	return ""
}

// haproxyCheck runs haproxy -c on the shared configuration with env alone.
func haproxyCheck(t *testing.T, what string, env map[string]string) {
	t.Helper()
	cmd := exec.Command(lookHAProxy(t), "-c", "-f", filepath.Join(repo, "deploy", "haproxy", "haproxy.cfg"))
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("%s: haproxy -c: %v\n%s", what, err, out)
	}
}

// checkBalancerEnv checks env against the configuration's variables: each
// required one set, none that it does not read.
func checkBalancerEnv(t *testing.T, what string, h haproxyCfg, env map[string]string) {
	t.Helper()
	for _, name := range h.required {
		if env[name] == "" {
			t.Errorf("%s: %s is not set; haproxy.cfg requires it", what, name)
		}
	}
	for name := range env {
		if name != "CONFIG" && !slices.Contains(h.required, name) && !slices.Contains(h.optional, name) {
			t.Errorf("%s: haproxy.cfg does not read %s", what, name)
		}
	}
}

// brokerSlots counts the configuration's broker server lines.
func (h haproxyCfg) brokerSlots() int {
	n := 0
	for _, name := range h.required {
		if regexp.MustCompile(`^BROKER[0-9]+_WS$`).MatchString(name) {
			n++
		}
	}
	return n
}

func TestStackBalancerMatchesHAProxyCfgAndBrokers(t *testing.T) {
	c := readStack(t)
	h := readHAProxyCfg(t)
	lb := c.Services["lb"]
	env := taskEnv(t, "lb", lb, 1)
	checkBalancerEnv(t, "service lb", h, env)
	haproxyCheck(t, "service lb's environment", env)

	if got, want := h.brokerSlots(), c.Services["broker"].replicas(); got != want {
		t.Errorf("haproxy.cfg balances %d brokers, the stack runs %d", got, want)
	}
	bcfg := load(t, "service broker", c.Services["broker"].Command, taskEnv(t, "broker", c.Services["broker"], 1))
	wsPort, httpPort := port(t, "broker ws", bcfg.WSAddr), port(t, "broker http", bcfg.HTTPAddr)
	for name, v := range env {
		var want int
		switch {
		case strings.HasPrefix(name, "BROKER") && strings.HasSuffix(name, "_WS"):
			want = wsPort
		case strings.HasPrefix(name, "BROKER") && strings.HasSuffix(name, "_HTTP"):
			want = httpPort
		default:
			continue
		}
		host, _, _ := net.SplitHostPort(v)
		if host != "broker" || port(t, name, v) != want {
			t.Errorf("service lb: %s=%s, want broker:%d (the broker's listen port)", name, v, want)
		}
	}

	published := map[int]bool{}
	for _, p := range lb.Ports {
		published[p.Target] = true
		if p.Published != p.Target {
			t.Errorf("lb publishes %d as %d: clients expect chatgg's ports", p.Target, p.Published)
		}
		// Through swarm's routing mesh the balancer would see (and forward
		// in the PROXY header) an ingress address, not the client's.
		if p.Mode != "host" {
			t.Errorf("lb publishes %d in mode %q, want host", p.Target, p.Mode)
		}
	}
	lbWS, lbHTTP := env["LB_WS_BIND"], env["LB_HTTP_BIND"]
	if lbWS == "" || lbHTTP == "" {
		t.Fatal("service lb: LB_WS_BIND and LB_HTTP_BIND must be set")
	}
	for _, p := range []int{port(t, "LB_WS_BIND", lbWS), port(t, "LB_HTTP_BIND", lbHTTP)} {
		if !published[p] {
			t.Errorf("lb listens on %d but does not publish it", p)
		}
	}
	if len(published) != 2 || !published[wsPort] || !published[httpPort] {
		t.Errorf("lb publishes %v, want chatgg's ports %d and %d", published, wsPort, httpPort)
	}

	var mounted bool
	for _, cf := range lb.Configs {
		if cf.Target == "/usr/local/etc/haproxy/haproxy.cfg" && filepath.Clean(c.Configs[cf.Source].File) == "deploy/haproxy/haproxy.cfg" {
			mounted = true
		}
	}
	if !mounted {
		t.Error("lb: deploy/haproxy/haproxy.cfg is not the image's /usr/local/etc/haproxy/haproxy.cfg")
	}
}

// The brokers require the PROXY protocol (CHATGG_PROXY_PROTOCOL=true in the
// stack and the VMs): a connection without the header is refused, so the
// balancer must send it on every connection to them, checks included.
func TestBalancerSendsProxyProtocolToBrokers(t *testing.T) {
	secs := readHAProxyCfg(t).sections()
	for section, lines := range secs {
		if !strings.HasPrefix(section, "backend ") {
			continue
		}
		proxyByDefault := serverDefault(secs, section, "send-proxy")
		for _, l := range lines {
			if !strings.HasPrefix(l, "server ") {
				continue
			}
			if !proxyByDefault && !hasKeyword(l, "send-proxy") {
				t.Errorf("haproxy.cfg %s: %q sends no PROXY header (send-proxy-v2): the brokers refuse such connections", section, l)
			}
			// HAProxy adds the header to checks only when they go to the
			// server's own address and port.
			if (hasKeyword(l, "port") || hasKeyword(l, "addr")) && !hasKeyword(l, "check-send-proxy") &&
				!serverDefault(secs, section, "check-send-proxy") {
				t.Errorf("haproxy.cfg %s: %q checks another port without check-send-proxy: the brokers refuse the check", section, l)
			}
		}
	}
}

// serverDefault reports whether a default-server line of section or of
// defaults has a keyword starting with kw (send-proxy: send-proxy-v2 too).
func serverDefault(secs map[string][]string, section, kw string) bool {
	for _, sec := range []string{section, "defaults"} {
		for _, l := range secs[sec] {
			if strings.HasPrefix(l, "default-server ") && hasKeyword(l, kw) {
				return true
			}
		}
	}
	return false
}

// hasKeyword reports whether a config line has a word starting with kw.
func hasKeyword(line, kw string) bool {
	return slices.ContainsFunc(strings.Fields(line), func(f string) bool { return strings.HasPrefix(f, kw) })
}

// In the stack every broker server line names the same host, `broker`,
// which (endpoint_mode dnsrr) resolves to every broker task. Resolved once
// at start by libc, the three lines would all get the same task; with
// runtime DNS resolution (a resolvers section) HAProxy gives each line of a
// backend its own task (its default prevent-dup-ip) and follows tasks as
// rolling updates replace them.
func TestBalancerFollowsSwarmBrokerTasks(t *testing.T) {
	c := readStack(t)
	h := readHAProxyCfg(t)
	if c.Services["broker"].Deploy.EndpointMode != "dnsrr" {
		t.Skip("the stack's brokers are not dnsrr")
	}
	secs := h.sections()
	var resolvers bool
	for s := range secs {
		resolvers = resolvers || strings.HasPrefix(s, "resolvers ")
	}
	if !resolvers {
		t.Fatal("haproxy.cfg has no resolvers section (e.g. `resolvers dns` with parse-resolv-conf, used by default-server): the stack's three broker lines, all `broker`, would resolve once, to one task")
	}
	for s, lines := range secs {
		for _, l := range lines {
			if strings.HasPrefix(l, "server ") && !hasKeyword(l, "resolvers") && !serverDefault(secs, s, "resolvers") {
				t.Errorf("haproxy.cfg %s: %q does not use the resolvers", s, l)
			}
		}
	}
}

// The image: Dockerfile and .dockerignore.

type instruction struct{ cmd, args string }

// dockerfile splits the Dockerfile into instructions, continuation lines
// joined and comments dropped.
func dockerfile(t *testing.T) []instruction {
	t.Helper()
	var out []instruction
	var cur strings.Builder
	sc := bufio.NewScanner(strings.NewReader(readFile(t, "Dockerfile")))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "#") || (line == "" && cur.Len() == 0) {
			continue
		}
		if strings.HasSuffix(line, "\\") {
			cur.WriteString(strings.TrimSuffix(line, "\\") + " ")
			continue
		}
		cur.WriteString(line)
		cmd, args, _ := strings.Cut(strings.TrimSpace(cur.String()), " ")
		out = append(out, instruction{strings.ToUpper(cmd), strings.TrimSpace(args)})
		cur.Reset()
	}
	return out
}

func jsonArgs(t *testing.T, in instruction) []string {
	t.Helper()
	var v []string
	if err := json.Unmarshal([]byte(in.args), &v); err != nil {
		t.Fatalf("%s %s: want the JSON (exec) form: %v", in.cmd, in.args, err)
	}
	return v
}

func TestDockerfileBuildsAndRunsChatgg(t *testing.T) {
	ins := dockerfile(t)
	var stages []string
	args := map[string]string{}
	finalEnv := map[string]string{}
	var build, expose, user string
	var entrypoint, cmd, health []string
	for _, in := range ins {
		switch in.cmd {
		case "ARG":
			if k, v, ok := strings.Cut(in.args, "="); ok {
				args[k] = v
			}
		case "FROM":
			stages = append(stages, in.args)
		case "RUN":
			if strings.Contains(in.args, "go build") {
				build += in.args + "\n"
			}
		case "ENV":
			if len(stages) == 1 {
				build += in.args + "\n" // the builder's settings, such as CGO_ENABLED
				break
			}
			for _, kv := range strings.Fields(in.args) {
				k, v, _ := strings.Cut(kv, "=")
				finalEnv[k] = v
			}
		case "EXPOSE":
			expose = in.args
		case "USER":
			user = in.args
		case "ENTRYPOINT":
			entrypoint = jsonArgs(t, in)
		case "CMD":
			cmd = jsonArgs(t, in)
		case "HEALTHCHECK":
			_, c, ok := strings.Cut(in.args, "CMD ")
			if !ok {
				t.Fatalf("HEALTHCHECK %s: no CMD", in.args)
			}
			health = jsonArgs(t, instruction{"HEALTHCHECK", c})
		}
	}

	// The builder's Go is go.mod's.
	gomod := readFile(t, "go.mod")
	m := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindStringSubmatch(gomod)
	if len(stages) != 2 || m == nil || !strings.Contains(stages[0], "golang:${GO_VERSION}") || args["GO_VERSION"] != m[1] {
		t.Errorf("stages %q, GO_VERSION %q: want golang:${GO_VERSION} with go.mod's Go %v, then the final image", stages, args["GO_VERSION"], m)
	}
	if len(stages) == 2 && !strings.Contains(stages[1], "distroless/static") && !strings.HasPrefix(stages[1], "scratch") {
		t.Errorf("final stage %q: want a minimal static base", stages[1])
	}
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", "-ldflags='-s -w'", "./cmd/chatgg", "./deploy/healthcheck", "--mount=type=cache,target=/go/pkg/mod", "--mount=type=cache,target=/root/.cache/go-build"} {
		if !strings.Contains(build, want) {
			t.Errorf("Dockerfile: the build lacks %s", want)
		}
	}
	if user == "" || user == "root" || strings.HasPrefix(user, "0:") || user == "0" {
		t.Errorf("USER %q: the image must not run as root", user)
	}

	if !slices.Equal(entrypoint, []string{"/usr/local/bin/chatgg"}) || !slices.Equal(cmd, []string{"all"}) {
		t.Errorf("ENTRYPOINT %q CMD %q, want the binary and role all", entrypoint, cmd)
	}
	cfg := load(t, "the image's ENV and CMD", cmd, finalEnv)
	if cfg.Role != server.RoleAll {
		t.Errorf("CMD runs role %q", cfg.Role)
	}
	want := fmt.Sprintf("%d %d", port(t, "ws", cfg.WSAddr), port(t, "http", cfg.HTTPAddr))
	if expose != want {
		t.Errorf("EXPOSE %q, want chatgg's default ports %q", expose, want)
	}
	if !slices.Equal(health, []string{"/usr/local/bin/chatgg-healthcheck"}) || !strings.Contains(build, "-o /out/chatgg-healthcheck ./deploy/healthcheck") {
		t.Errorf("HEALTHCHECK %q: want /usr/local/bin/chatgg-healthcheck, built from deploy/healthcheck", health)
	}
}

func TestDockerignoreKeepsTheBuildInputs(t *testing.T) {
	var patterns []string
	for _, l := range strings.Split(readFile(t, ".dockerignore"), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			patterns = append(patterns, l)
		}
	}
	needed := []string{"go.mod", "go.sum", "cmd/chatgg/main.go", "deploy/healthcheck/main.go", "server/openapi.json", "server/config.go", "codec/frame.go", "web/web.go"}
	for _, path := range needed {
		if _, err := os.Stat(filepath.Join(repo, path)); err != nil {
			t.Errorf("%s: %v", path, err)
		}
		parts := strings.Split(path, "/")
		for _, p := range patterns {
			// A pattern excludes a path when it matches the path or a
			// directory above it: from the root, or anywhere after **/.
			anywhere := strings.HasPrefix(p, "**/")
			p = strings.TrimPrefix(p, "**/")
			for i := range parts {
				if i > 0 && !anywhere {
					break
				}
				for j := i + 1; j <= len(parts); j++ {
					if ok, _ := filepath.Match(p, strings.Join(parts[i:j], "/")); ok {
						t.Errorf(".dockerignore %q excludes %s, which the build needs", p, path)
					}
				}
			}
		}
	}
}

// The health check program against a real chatgg: plain, and through the
// PROXY protocol as with CHATGG_PROXY_PROTOCOL=true.
func TestImageHealthcheckProbesChatgg(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "chatgg-healthcheck")
	build := exec.Command("go", "build", "-o", bin, "./healthcheck")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./deploy/healthcheck: %v\n%s", err, out)
	}
	for _, tc := range []struct {
		name              string
		serverPP, checkPP string
		ok                bool
	}{
		{"plain", "false", "", true},
		{"proxy protocol", "true", "true", true},
		{"proxy protocol expected, not sent", "true", "false", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := map[string]string{
				"CHATGG_WS_ADDR":        "127.0.0.1:0",
				"CHATGG_HTTP_ADDR":      "127.0.0.1:0",
				"CHATGG_DATA_DIR":       t.TempDir(),
				"CHATGG_LOOPS":          "1",
				"CHATGG_PROXY_PROTOCOL": tc.serverPP,
				"CHATGG_DRAIN_PERIOD":   "0s",
				"CHATGG_CLOSE_WINDOW":   "0s",
			}
			cfg := load(t, "test server", []string{"all"}, env)
			s, err := server.New(context.Background(), cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				if err := s.Shutdown(ctx); err != nil {
					t.Errorf("shutdown: %v", err)
				}
			})
			check := exec.Command(bin)
			check.Env = []string{"CHATGG_HTTP_ADDR=" + s.HTTPAddr(), "CHATGG_PROXY_PROTOCOL=" + tc.checkPP}
			out, err := check.CombinedOutput()
			if (err == nil) != tc.ok {
				t.Fatalf("chatgg-healthcheck: %v, want success %v\n%s", err, tc.ok, out)
			}
		})
	}
}

// The VMs: the Vagrantfile, read by deploy/vagrant_machines.rb, and each
// machine's provisioning script run under DRY_RUN.

type machine struct {
	Name      string   `json:"name"`
	Hostname  string   `json:"hostname"`
	IPs       []string `json:"ips"`
	Aliases   []string `json:"aliases"`
	Provision []struct {
		Inline string            `json:"inline"`
		Env    map[string]string `json:"env"`
	} `json:"provision"`
}

// vagrantMachines evaluates the Vagrantfile with env (BROKERS, WORKERS ...).
func vagrantMachines(t *testing.T, env ...string) []machine {
	t.Helper()
	ruby, err := exec.LookPath("ruby")
	if err != nil {
		t.Fatal("ruby not found; run `make services` (scripts/services.sh install)")
	}
	cmd := exec.Command(ruby, "vagrant_machines.rb", filepath.Join(repo, "Vagrantfile"))
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}, env...)
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("ruby vagrant_machines.rb: %v\n%s", err, ee.Stderr)
		}
		t.Fatal(err)
	}
	var ms []machine
	if err := json.Unmarshal(out, &ms); err != nil {
		t.Fatalf("vagrant_machines.rb: %v\n%s", err, out)
	}
	return ms
}

var provisionScript = regexp.MustCompile(`^bash /vagrant/(deploy/provision/[a-z]+\.sh)$`)

// provisioned is what a script would install: the files under root.
type provisioned struct {
	root, output string
}

func (p provisioned) file(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(p.root, path))
	if err != nil {
		t.Fatalf("provisioning did not write %s: %v\n%s", path, err, p.output)
	}
	return string(b)
}

// provision runs m's provisioner with DRY_RUN=1 and a DESTDIR.
func provision(t *testing.T, m machine) (script string, p provisioned) {
	t.Helper()
	if len(m.Provision) != 1 {
		t.Fatalf("machine %s: %d provisioners, want 1", m.Name, len(m.Provision))
	}
	pv := m.Provision[0]
	sm := provisionScript.FindStringSubmatch(pv.Inline)
	if sm == nil {
		t.Fatalf("machine %s: provisioner %q, want bash /vagrant/deploy/provision/NAME.sh", m.Name, pv.Inline)
	}
	root := t.TempDir()
	fake := filepath.Join(t.TempDir(), "chatgg")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("bash", filepath.Join(repo, sm[1]))
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "DESTDIR=" + root, "DRY_RUN=1", "CHATGG_BIN=" + fake}
	for k, v := range pv.Env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("machine %s: %s: %v\n%s", m.Name, sm[1], err, out)
	}
	return strings.TrimSuffix(filepath.Base(sm[1]), ".sh"), provisioned{root, string(out)}
}

// envFile parses a systemd EnvironmentFile as provisioning writes it.
func envFile(t *testing.T, text string, into map[string]string) {
	t.Helper()
	for _, l := range strings.Split(text, "\n") {
		if l = strings.TrimSpace(l); l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		k, v, ok := strings.Cut(l, "=")
		if !ok {
			t.Fatalf("environment file line %q", l)
		}
		into[k] = v
	}
}

var enabledUnit = regexp.MustCompile(`systemctl enable --quiet chatgg@([a-z]+)`)

func TestVagrantMachinesProvisionChatgg(t *testing.T) {
	ms := vagrantMachines(t)
	byName := map[string]machine{}
	ips := map[string]string{}
	for _, m := range ms {
		byName[m.Name] = m
		if len(m.IPs) != 1 || !strings.HasPrefix(m.IPs[0], "192.168.56.") {
			t.Errorf("machine %s: addresses %q, want one on 192.168.56.0/24", m.Name, m.IPs)
			continue
		}
		if other, dup := ips[m.IPs[0]]; dup {
			t.Errorf("machines %s and %s share %s", other, m.Name, m.IPs[0])
		}
		ips[m.IPs[0]] = m.Name
	}
	for _, name := range []string{"redis", "couchdb", "broker1", "broker2", "broker3", "worker1", "lb"} {
		if _, ok := byName[name]; !ok {
			t.Fatalf("the Vagrantfile defines no machine %s (BROKERS defaults to 3)", name)
		}
	}
	if !slices.Contains(byName["lb"].Aliases, "chatgg.test") {
		t.Errorf("lb: hostsupdater aliases %q, want chatgg.test", byName["lb"].Aliases)
	}
	redisIP, couchIP := byName["redis"].IPs[0], byName["couchdb"].IPs[0]
	couchPassword := byName["couchdb"].Provision[0].Env["COUCHDB_PASSWORD"]
	unit := readFile(t, "deploy/systemd/chatgg@.service")
	stopTimeout := unitDuration(t, unit, "TimeoutStopSec")

	nodes := map[uint16]string{}
	var brokerAddrs []string
	for _, m := range ms {
		t.Run(m.Name, func(t *testing.T) {
			script, p := provision(t, m)
			switch script {
			case "broker", "worker":
				if got := p.file(t, "etc/systemd/system/chatgg@.service"); got != unit {
					t.Error("the installed unit differs from deploy/systemd/chatgg@.service")
				}
				em := enabledUnit.FindStringSubmatch(p.output)
				if em == nil {
					t.Fatalf("no chatgg@ unit enabled:\n%s", p.output)
				}
				role := em[1]
				env := map[string]string{}
				envFile(t, p.file(t, "etc/chatgg/chatgg.env"), env)
				envFile(t, p.file(t, "etc/chatgg/chatgg-"+role+".env"), env)
				env["CHATGG_DATA_DIR"] = "/var/lib/chatgg" // the unit's Environment=
				cfg := load(t, "machine "+m.Name, []string{role}, env)
				if cfg.Role != chatggServices[script] {
					t.Errorf("role %q, want %q", cfg.Role, chatggServices[script])
				}
				if u, err := url.Parse(cfg.RedisURL); err != nil || u.Hostname() != redisIP {
					t.Errorf("REDIS_URL %q, want the redis VM %s", cfg.RedisURL, redisIP)
				}
				u, err := url.Parse(cfg.CouchDBURL)
				pw, _ := u.User.Password()
				if err != nil || u.Hostname() != couchIP || pw != couchPassword {
					t.Errorf("COUCHDB_URL %q, want the couchdb VM %s with its admin password", cfg.CouchDBURL, couchIP)
				}
				if script == "broker" {
					if prev, dup := nodes[cfg.Node]; dup {
						t.Errorf("NODE_INDEX %d also on %s", cfg.Node, prev)
					}
					nodes[cfg.Node] = m.Name
					brokerAddrs = append(brokerAddrs, m.IPs[0])
					if on, _ := strconv.ParseBool(env["CHATGG_PROXY_PROTOCOL"]); !on {
						t.Error("CHATGG_PROXY_PROTOCOL is not true behind the balancer")
					}
					if stop := duration(t, env, "CHATGG_DRAIN_PERIOD") + duration(t, env, "CHATGG_CLOSE_WINDOW") + duration(t, env, "CHATGG_SHUTDOWN_TIMEOUT"); stopTimeout <= stop {
						t.Errorf("unit TimeoutStopSec %v, want more than drain + close window + shutdown timeout = %v", stopTimeout, stop)
					}
				}
			case "redis":
				conf := p.file(t, "etc/redis/chatgg.conf")
				for _, want := range []string{"appendonly yes", "appendfsync everysec", "maxmemory-policy noeviction", " " + redisIP} {
					if !strings.Contains(conf, want) {
						t.Errorf("redis settings lack %q:\n%s", want, conf)
					}
				}
			case "couchdb":
				ini := p.file(t, "opt/couchdb/etc/local.d/10-chatgg.ini")
				if ini != readFile(t, "deploy/couchdb/chatgg.ini") || !strings.Contains(ini, "single_node = true") {
					t.Errorf("couchdb settings:\n%s", ini)
				}
				p.file(t, "opt/couchdb/etc/local.d/20-chatgg-admin.ini")
			case "haproxy":
				h := readHAProxyCfg(t)
				env := map[string]string{}
				envFile(t, p.file(t, "etc/chatgg/haproxy.env"), env)
				if env["CONFIG"] != "/etc/haproxy/chatgg.cfg" || p.file(t, "etc/haproxy/chatgg.cfg") != h.text {
					t.Errorf("the haproxy unit does not run deploy/haproxy/haproxy.cfg: CONFIG=%q", env["CONFIG"])
				}
				delete(env, "CONFIG")
				checkBalancerEnv(t, "machine lb", h, env)
				haproxyCheck(t, "machine lb's environment", env)
				for i := 1; i <= h.brokerSlots(); i++ {
					ip := byName[fmt.Sprintf("broker%d", i)].IPs[0]
					if env[fmt.Sprintf("BROKER%d_WS", i)] != ip+":9001" || env[fmt.Sprintf("BROKER%d_HTTP", i)] != ip+":9002" {
						t.Errorf("BROKER%d_WS/HTTP = %s, %s; want broker%d at %s:9001, :9002", i, env[fmt.Sprintf("BROKER%d_WS", i)], env[fmt.Sprintf("BROKER%d_HTTP", i)], i, ip)
					}
				}
			default:
				t.Errorf("unexpected script %s", script)
			}
		})
	}
	if len(brokerAddrs) != 3 {
		t.Errorf("%d broker VMs provisioned, want 3", len(brokerAddrs))
	}
}

// With fewer brokers than the configuration has server lines, the spare
// lines point where nothing listens and stay down.
func TestVagrantBalancerWithTwoBrokers(t *testing.T) {
	h := readHAProxyCfg(t)
	for _, m := range vagrantMachines(t, "BROKERS=2", "WORKERS=0") {
		if strings.HasPrefix(m.Name, "worker") || m.Name == "broker3" {
			t.Errorf("BROKERS=2 WORKERS=0 defines %s", m.Name)
		}
		if m.Name != "lb" {
			continue
		}
		_, p := provision(t, m)
		env := map[string]string{}
		envFile(t, p.file(t, "etc/chatgg/haproxy.env"), env)
		delete(env, "CONFIG")
		checkBalancerEnv(t, "machine lb", h, env)
		haproxyCheck(t, "machine lb, 2 brokers", env)
	}
}

func unitDuration(t *testing.T, unit, key string) time.Duration {
	t.Helper()
	m := regexp.MustCompile(`(?m)^` + key + `=(\S+)$`).FindStringSubmatch(unit)
	if m == nil {
		t.Fatalf("the unit has no %s", key)
	}
	d, err := time.ParseDuration(m[1])
	if err != nil {
		t.Fatalf("%s=%s: %v", key, m[1], err)
	}
	return d
}

func TestSystemdUnitRunsARole(t *testing.T) {
	unit := readFile(t, "deploy/systemd/chatgg@.service")
	for _, want := range []string{"ExecStart=/usr/local/bin/chatgg %i", "User=chatgg", "EnvironmentFile=/etc/chatgg/chatgg.env", "LimitNOFILE=1048576", "KillSignal=SIGTERM"} {
		if !strings.Contains(unit, "\n"+want+"\n") {
			t.Errorf("deploy/systemd/chatgg@.service lacks %q", want)
		}
	}
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed")
	}
	// verify wants ExecStart's binary to exist: point it at one that does.
	dir := t.TempDir()
	tmpl := filepath.Join(dir, "chatgg@.service")
	if err := os.WriteFile(tmpl, []byte(strings.ReplaceAll(unit, "/usr/local/bin/chatgg", "/bin/true")), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, role := range []string{server.RoleServe, server.RoleWorker} {
		inst := filepath.Join(dir, "chatgg@"+role+".service")
		if err := os.Symlink(tmpl, inst); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(analyze, "verify", "--man=no", inst).CombinedOutput()
		if err != nil || len(strings.TrimSpace(string(out))) > 0 {
			t.Errorf("systemd-analyze verify chatgg@%s.service: %v\n%s", role, err, out)
		}
	}
}
