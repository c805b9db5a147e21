package pubsub

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/chatgg/chatgg/codec"
	"github.com/chatgg/chatgg/internal/testsvc"
)

// node is one simulated chatgg node: a Redis bus and what it delivered.
type node struct {
	bus *Redis
	rec *recorder
}

// newNode starts a bus on url with channel prefix, closed by t.Cleanup.
func newNode(t *testing.T, url, prefix string) node {
	t.Helper()
	rec := newRecorder()
	bus, err := NewRedis(RedisConfig{
		URL:               url,
		ChannelPrefix:     prefix,
		Deliverer:         rec,
		Logger:            testLogger(t),
		ReconnectMaxDelay: 500 * time.Millisecond,
	})
	if err != nil {
		t.Fatalf("NewRedis: %v", err)
	}
	t.Cleanup(func() { bus.Close() })
	return node{bus: bus, rec: rec}
}

// testLogger logs to t, so a failing test shows the bus's state changes.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

func subscribeWait(t *testing.T, bus *Redis, topic string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if err := bus.SubscribeWait(ctx, topic); err != nil {
		t.Fatalf("SubscribeWait(%s): %v", topic, err)
	}
}

func publish(t *testing.T, bus *Redis, batch ...*codec.Message) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if err := bus.Publish(ctx, batch); err != nil {
		t.Fatalf("Publish: %v", err)
	}
}

// fence publishes a marker on topic and waits until rec has it, returning
// everything rec got. Messages published before it and delivered on the
// same connection have all arrived by then, duplicates included.
func fence(t *testing.T, pub *Redis, rec *recorder, topic string) []*codec.Message {
	t.Helper()
	return fenceAll(t, pub, topic, rec)[0]
}

// fenceAll is fence for several nodes' recorders with one marker.
func fenceAll(t *testing.T, pub *Redis, topic string, recs ...*recorder) [][]*codec.Message {
	t.Helper()
	f := msg(topic, 999_999)
	f.ID = "fence-" + testsvc.UniqueName(t, "f")
	// After a Redis restart a pooled connection may still be the dead one:
	// its first command fails with EOF without reaching the new server, so
	// trying again cannot deliver the fence twice.
	for attempt := 1; ; attempt++ {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		err := pub.Publish(ctx, []*codec.Message{f})
		cancel()
		if err == nil {
			break
		}
		if !errors.Is(err, io.EOF) || attempt == 3 {
			t.Fatalf("Publish fence: %v", err)
		}
	}
	out := make([][]*codec.Message, len(recs))
	for i, rec := range recs {
		out[i] = rec.waitID(t, f.ID)
	}
	return out
}

// numsub asks Redis how many connections subscribe to channel.
func numsub(t *testing.T, c rueidis.Client, channel string) int64 {
	t.Helper()
	m, err := c.Do(context.Background(), c.B().PubsubNumsub().Channel(channel).Build()).AsIntMap()
	if err != nil {
		t.Fatalf("PUBSUB NUMSUB: %v", err)
	}
	return m[channel]
}

func TestRedisDeliversToEveryNodeExactlyOnce(t *testing.T) {
	url, prefix := testsvc.Redis(t), testsvc.UniqueName(t, "ps")+":"
	a, b := newNode(t, url, prefix), newNode(t, url, prefix)
	for _, n := range []node{a, b} {
		subscribeWait(t, n.bus, "room")
	}
	want := msg("room", 1)
	publish(t, a.bus, want)
	for i, got := range fenceAll(t, a.bus, "room", a.rec, b.rec) {
		name := []string{"A", "B"}[i]
		if len(got) != 2 {
			t.Fatalf("node %s got %d messages, want the message and the fence", name, len(got))
		}
		if diff := sameMessage(got[0], want); diff != "" {
			t.Fatalf("node %s: %s", name, diff)
		}
	}
	if n := numsub(t, a.bus.Client(), prefix+"room"); n != 2 {
		t.Fatalf("NUMSUB = %d, want one subscription per node", n)
	}
}

func TestRedisKeepsOrderAcrossBatches(t *testing.T) {
	url, prefix := testsvc.Redis(t), testsvc.UniqueName(t, "ps")+":"
	a, b := newNode(t, url, prefix), newNode(t, url, prefix)
	subscribeWait(t, a.bus, "room")
	subscribeWait(t, b.bus, "room")

	const total = 1000
	want := batchOf("room", 0, total)
	// Uneven batch sizes, 1 to 97, so batch edges fall everywhere.
	for i, size := 0, 1; i < total; size = size%97 + 13 {
		end := min(i+size, total)
		publish(t, a.bus, want[i:end]...)
		i = end
	}
	for name, n := range map[string]node{"A": a, "B": b} {
		got := n.rec.waitCount(t, "room", total)
		if len(got) != total {
			t.Fatalf("node %s got %d messages, want %d", name, len(got), total)
		}
		for i := range want {
			if diff := sameMessage(got[i], want[i]); diff != "" {
				t.Fatalf("node %s message %d: %s", name, i, diff)
			}
		}
	}
}

func TestRedisConcurrentPublishersKeepTheirOwnOrder(t *testing.T) {
	url, prefix := testsvc.Redis(t), testsvc.UniqueName(t, "ps")+":"
	pub, sub := newNode(t, url, prefix), newNode(t, url, prefix)
	const publishers, each = 8, 200
	for p := range publishers {
		subscribeWait(t, sub.bus, fmt.Sprint("t", p))
	}
	var wg sync.WaitGroup
	for p := range publishers {
		wg.Go(func() {
			topic := fmt.Sprint("t", p)
			for i := 0; i < each; i += 10 {
				if err := pub.bus.Publish(context.Background(), batchOf(topic, i, i+10)); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	for p := range publishers {
		topic := fmt.Sprint("t", p)
		got := sub.rec.waitCount(t, topic, each)
		for i, m := range got {
			if diff := sameMessage(m, msg(topic, i)); diff != "" {
				t.Fatalf("topic %s message %d: %s", topic, i, diff)
			}
		}
	}
}

func TestRedisDeliversOnlySubscribedTopics(t *testing.T) {
	url, prefix := testsvc.Redis(t), testsvc.UniqueName(t, "ps")+":"
	a, b := newNode(t, url, prefix), newNode(t, url, prefix)
	subscribeWait(t, b.bus, "wanted")
	publish(t, a.bus, msg("unwanted", 1))
	got := fence(t, a.bus, b.rec, "wanted")
	if len(got) != 1 {
		t.Fatalf("got %d messages, want only the fence", len(got))
	}
	if len(a.rec.all()) != 0 {
		t.Fatalf("a node without subscriptions got %d messages", len(a.rec.all()))
	}
}

func TestRedisUnsubscribeStopsDelivery(t *testing.T) {
	url, prefix := testsvc.Redis(t), testsvc.UniqueName(t, "ps")+":"
	a, b := newNode(t, url, prefix), newNode(t, url, prefix)
	subscribeWait(t, b.bus, "room")
	subscribeWait(t, b.bus, "fence")
	publish(t, a.bus, msg("room", 1))
	b.rec.waitCount(t, "room", 1)

	b.bus.Unsubscribe("room")
	eventually(t, "unsubscribe confirmed", func() bool { return !b.bus.Subscribed("room") })
	publish(t, a.bus, msg("room", 2))
	fence(t, a.bus, b.rec, "fence")
	if got := b.rec.topic("room"); len(got) != 1 {
		t.Fatalf("got %d room messages, want 1 (none after Unsubscribe)", len(got))
	}
	if n := numsub(t, a.bus.Client(), prefix+"room"); n != 0 {
		t.Fatalf("NUMSUB after Unsubscribe = %d", n)
	}
}

func TestRedisSubscribeAfterUnsubscribe(t *testing.T) {
	url, prefix := testsvc.Redis(t), testsvc.UniqueName(t, "ps")+":"
	a, b := newNode(t, url, prefix), newNode(t, url, prefix)
	subscribeWait(t, b.bus, "room")
	b.bus.Unsubscribe("room")
	eventually(t, "unsubscribe confirmed", func() bool { return !b.bus.Subscribed("room") })
	subscribeWait(t, b.bus, "room")

	publish(t, a.bus, msg("room", 1))
	if got := fence(t, a.bus, b.rec, "room"); len(got) != 2 {
		t.Fatalf("got %d messages, want the message and the fence", len(got))
	}
}

func TestRedisSubscribeIsASetNotACounter(t *testing.T) {
	// By contract the node calls Subscribe once per topic, when its first
	// local subscriber arrives. Calling it again must still not subscribe
	// twice (which would deliver twice), and a quick Subscribe/Unsubscribe/
	// Subscribe run ends subscribed.
	url, prefix := testsvc.Redis(t), testsvc.UniqueName(t, "ps")+":"
	a, b := newNode(t, url, prefix), newNode(t, url, prefix)
	for range 3 {
		b.bus.Subscribe("room")
	}
	b.bus.Unsubscribe("room")
	b.bus.Subscribe("room")
	subscribeWait(t, b.bus, "room")
	if n := numsub(t, a.bus.Client(), prefix+"room"); n != 1 {
		t.Fatalf("NUMSUB = %d, want 1", n)
	}
	publish(t, a.bus, msg("room", 1))
	if got := fence(t, a.bus, b.rec, "room"); len(got) != 2 {
		t.Fatalf("got %d messages, want the message once and the fence", len(got))
	}
}

func TestRedisSubscribeManyTopics(t *testing.T) {
	// More topics than one SUBSCRIBE carries, all confirmed.
	url, prefix := testsvc.Redis(t), testsvc.UniqueName(t, "ps")+":"
	a := newNode(t, url, prefix)
	const n = subscribeChunk*2 + 7
	for i := range n {
		a.bus.Subscribe(fmt.Sprint("t", i))
	}
	eventually(t, "all topics confirmed", func() bool {
		for i := range n {
			if !a.bus.Subscribed(fmt.Sprint("t", i)) {
				return false
			}
		}
		return true
	})
	publish(t, a.bus, msg("t1000", 1))
	a.rec.waitCount(t, "t1000", 1)
}

func TestRedisDropsMalformedMessages(t *testing.T) {
	url, prefix := testsvc.Redis(t), testsvc.UniqueName(t, "ps")+":"
	a := newNode(t, url, prefix)
	subscribeWait(t, a.bus, "room")
	c := a.bus.Client()
	other := codec.AppendMessage(nil, msg("elsewhere", 1)) // valid, wrong topic
	for _, raw := range []string{"", "x", "\x01\x00garbage", "\x09\x00", string(other)} {
		err := c.Do(context.Background(), c.B().Publish().Channel(prefix+"room").Message(raw).Build()).Error()
		if err != nil {
			t.Fatal(err)
		}
	}
	got := fence(t, a.bus, a.rec, "room")
	if len(got) != 1 {
		t.Fatalf("got %d messages, want only the fence: %+v", len(got), got)
	}
}

func TestRedisPublishEmptyBatch(t *testing.T) {
	a := newNode(t, testsvc.Redis(t), testsvc.UniqueName(t, "ps")+":")
	if err := a.bus.Publish(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
}

func TestRedisPublishLargeMessage(t *testing.T) {
	url, prefix := testsvc.Redis(t), testsvc.UniqueName(t, "ps")+":"
	a := newNode(t, url, prefix)
	subscribeWait(t, a.bus, "room")
	for _, size := range []int{0, 1, 65535, 1 << 20} {
		m := msg("room", size)
		m.Kind = codec.KindBinary
		m.Data = make([]byte, size)
		for i := range m.Data {
			m.Data[i] = byte(i)
		}
		publish(t, a.bus, m)
		got := a.rec.waitID(t, m.ID)
		if diff := sameMessage(got[len(got)-1], m); diff != "" {
			t.Fatalf("size %d: differs", size)
		}
	}
}

func TestRedisPublishCancelledContextFails(t *testing.T) {
	a := newNode(t, testsvc.Redis(t), testsvc.UniqueName(t, "ps")+":")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := a.bus.Publish(ctx, batchOf("room", 0, 3))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Publish = %v, want context.Canceled", err)
	}
	if !strings.Contains(err.Error(), "3 of 3") {
		t.Fatalf("error %q does not count the failed messages", err)
	}
}

func TestRedisPingAndClose(t *testing.T) {
	url := testsvc.Redis(t)
	a := newNode(t, url, testsvc.UniqueName(t, "ps")+":")
	eventually(t, "Ping nil", func() bool { return a.bus.Ping(context.Background()) == nil })
	if err := a.bus.Close(); err != nil {
		t.Fatal(err)
	}
	if err := a.bus.Close(); err != nil {
		t.Fatalf("second Close = %v", err)
	}
	if err := a.bus.Publish(context.Background(), batchOf("room", 0, 1)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Publish after Close = %v", err)
	}
	if err := a.bus.Ping(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Ping after Close = %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := a.bus.SubscribeWait(ctx, "room"); !errors.Is(err, ErrClosed) {
		t.Fatalf("SubscribeWait after Close = %v", err)
	}
}

func TestRedisCloseLeavesGivenClientOpen(t *testing.T) {
	opt, err := rueidis.ParseURL(testsvc.Redis(t))
	if err != nil {
		t.Fatal(err)
	}
	c, err := rueidis.NewClient(opt)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	prefix := testsvc.UniqueName(t, "ps") + ":"
	bus, err := NewRedis(RedisConfig{Client: c, ChannelPrefix: prefix, Deliverer: newRecorder()})
	if err != nil {
		t.Fatal(err)
	}
	subscribeWait(t, bus, "room")
	bus.Close()
	if err := c.Do(context.Background(), c.B().Ping().Build()).Error(); err != nil {
		t.Fatalf("given client unusable after bus Close: %v", err)
	}
	eventually(t, "subscription connection closed", func() bool { return numsub(t, c, prefix+"room") == 0 })
}

func TestNewRedisRejectsBadConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  RedisConfig
		want string
	}{
		{"NoDeliverer", RedisConfig{URL: testsvc.Redis(t)}, "Deliverer"},
		{"NoURL", RedisConfig{Deliverer: newRecorder()}, "URL or Client"},
		{"BadScheme", RedisConfig{URL: "http://localhost", Deliverer: newRecorder()}, "scheme"},
		{"BadURLHidesPassword", RedisConfig{URL: "redis://u:s3cret@host:port%/", Deliverer: newRecorder()}, "redis URL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bus, err := NewRedis(tc.cfg)
			if err == nil {
				bus.Close()
				t.Fatal("NewRedis succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not mention %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "s3cret") {
				t.Fatalf("error %q leaks the password", err)
			}
		})
	}
}

func TestRedisRecoversFromRestart(t *testing.T) {
	for _, tc := range []struct {
		name string
		down func(p *testsvc.Proc)
	}{
		{"Stop", (*testsvc.Proc).Stop},
		{"Kill", (*testsvc.Proc).Kill},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := testsvc.NewRedis(t)
			prefix := testsvc.UniqueName(t, "ps") + ":"
			a, b := newNode(t, srv.URL(), prefix), newNode(t, srv.URL(), prefix)
			subscribeWait(t, a.bus, "room")
			subscribeWait(t, b.bus, "room")
			publish(t, a.bus, msg("room", 1))
			a.rec.waitCount(t, "room", 1)
			b.rec.waitCount(t, "room", 1)

			tc.down(srv)
			for name, n := range map[string]node{"A": a, "B": b} {
				eventually(t, "Ping fails on "+name, func() bool {
					return errors.Is(n.bus.Ping(context.Background()), ErrSubscriptionDown)
				})
				if n.bus.Subscribed("room") {
					t.Fatalf("node %s still reports room subscribed while down", name)
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			err := a.bus.Publish(ctx, batchOf("room", 2, 4))
			cancel()
			if err == nil {
				t.Fatal("Publish succeeded with Redis down")
			}
			// Subscribed while down: taken up on reconnection.
			b.bus.Subscribe("late")

			srv.Start()
			for name, n := range map[string]node{"A": a, "B": b} {
				eventually(t, "Ping recovers on "+name, func() bool {
					return n.bus.Ping(context.Background()) == nil
				})
				eventually(t, "room resubscribed on "+name, func() bool { return n.bus.Subscribed("room") })
			}
			eventually(t, "late subscribed", func() bool { return b.bus.Subscribed("late") })

			// The first command on a connection that died with the server
			// may fail (EOF) before rueidis replaces it; it never reached
			// the new server, so retrying cannot duplicate.
			eventually(t, "publish after the restart", func() bool {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				return a.bus.Publish(ctx, []*codec.Message{msg("room", 10), msg("late", 11)}) == nil
			})
			for i, got := range fenceAll(t, a.bus, "room", a.rec, b.rec) {
				name := []string{"A", "B"}[i]
				ids := make([]string, 0, len(got))
				for _, m := range got {
					if m.Topic == "room" {
						ids = append(ids, m.ID)
					}
				}
				want := []string{msg("room", 1).ID, msg("room", 10).ID}
				if len(ids) != 3 || ids[0] != want[0] || ids[1] != want[1] {
					t.Fatalf("node %s room messages %v, want %v and the fence, each once", name, ids, want)
				}
			}
			b.rec.waitCount(t, "late", 1)
			if n := numsub(t, a.bus.Client(), prefix+"room"); n != 2 {
				t.Fatalf("NUMSUB after recovery = %d, want 2", n)
			}
		})
	}
}

func TestRedisSubscribeDoesNotBlockWhileDown(t *testing.T) {
	srv := testsvc.NewRedis(t)
	a := newNode(t, srv.URL(), testsvc.UniqueName(t, "ps")+":")
	subscribeWait(t, a.bus, "room")
	srv.Stop()
	eventually(t, "Ping fails", func() bool { return a.bus.Ping(context.Background()) != nil })
	done := make(chan struct{})
	go func() {
		for i := range 10_000 {
			a.bus.Subscribe(fmt.Sprint("t", i))
			a.bus.Unsubscribe(fmt.Sprint("t", i))
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Subscribe/Unsubscribe blocked while Redis is down")
	}
	srv.Start()
	eventually(t, "room resubscribed", func() bool { return a.bus.Subscribed("room") })
	if a.bus.Subscribed("t5") {
		t.Fatal("a topic unsubscribed while down came back")
	}
}

// startSentinel runs `redis-server CONF --sentinel` monitoring the Redis at
// masterAddr as master set "mymaster", stopped by t.Cleanup, and returns
// its address. testsvc has no Sentinel, and this is the only test needing
// one.
func startSentinel(t *testing.T, masterAddr string) string {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redis-server: %v (make services installs it)", err)
	}
	host, port, _ := net.SplitHostPort(masterAddr)
	sport := testsvc.FreePort(t)
	dir := t.TempDir()
	conf := filepath.Join(dir, "sentinel.conf") // Sentinel rewrites it
	text := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\n"+
		"sentinel monitor mymaster %s %s 1\n", sport, dir, host, port)
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	cmd := exec.Command(bin, conf, "--sentinel")
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill() // by PID: only the process this test started
		cmd.Wait()
		if t.Failed() {
			t.Logf("sentinel output:\n%s", out.String())
		}
	})
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(sport))
	eventually(t, "sentinel listening", func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return addr
}

func TestRedisThroughSentinel(t *testing.T) {
	srv := testsvc.NewRedis(t)
	sentinel := startSentinel(t, srv.Addr())
	prefix := testsvc.UniqueName(t, "ps") + ":"
	rec := newRecorder()
	// The URL's host is a dead address: with SentinelAddrs only the
	// Sentinel is asked, and it names the master.
	bus, err := NewRedis(RedisConfig{
		URL:            "redis://127.0.0.1:1/0",
		SentinelMaster: "mymaster",
		SentinelAddrs:  []string{sentinel},
		ChannelPrefix:  prefix,
		Deliverer:      rec,
		Logger:         testLogger(t),
	})
	if err != nil {
		t.Fatalf("NewRedis via Sentinel: %v", err)
	}
	defer bus.Close()
	if m := bus.Client().Mode(); m != rueidis.ClientModeSentinel {
		t.Fatalf("client mode %s, want sentinel", m)
	}
	subscribeWait(t, bus, "room")
	publish(t, bus, msg("room", 1))
	rec.waitCount(t, "room", 1)
	// The subscription really is on the master testsvc started.
	direct := newNode(t, srv.URL(), prefix)
	if n := numsub(t, direct.bus.Client(), prefix+"room"); n != 1 {
		t.Fatalf("NUMSUB on the master = %d, want 1", n)
	}
}

func TestRedisSentinelAddrsNeedMaster(t *testing.T) {
	_, err := NewRedis(RedisConfig{URL: "redis://127.0.0.1:1/0", SentinelAddrs: []string{"127.0.0.1:2"}, Deliverer: newRecorder()})
	if err == nil || !strings.Contains(err.Error(), "SentinelMaster") {
		t.Fatalf("NewRedis = %v, want an error naming SentinelMaster", err)
	}
}

func TestRedisFollowsSentinelFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("Sentinel failover takes seconds")
	}
	master, replica := testsvc.NewRedis(t), testsvc.NewRedis(t)
	rc := newNode(t, replica.URL(), "unused:").bus.Client()
	mc := newNode(t, master.URL(), "unused:").bus.Client()
	// Redis 7 waits 5s for more replicas before a diskless full sync.
	if err := mc.Do(context.Background(), mc.B().ConfigSet().ParameterValue().
		ParameterValue("repl-diskless-sync-delay", "0").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(master.Addr())
	if err := rc.Do(context.Background(), rc.B().Replicaof().Host(host).Port(mustAtoi(t, port)).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "replica in sync", func() bool {
		info, _ := rc.Do(context.Background(), rc.B().Info().Section("replication").Build()).ToString()
		return strings.Contains(info, "master_link_status:up")
	})
	sentinel := startSentinel(t, master.Addr())

	prefix := testsvc.UniqueName(t, "ps") + ":"
	rec := newRecorder()
	bus, err := NewRedis(RedisConfig{
		URL:               "redis://127.0.0.1:1/0",
		SentinelMaster:    "mymaster",
		SentinelAddrs:     []string{sentinel},
		ChannelPrefix:     prefix,
		Deliverer:         rec,
		Logger:            testLogger(t),
		ReconnectMaxDelay: 500 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	subscribeWait(t, bus, "room")
	publish(t, bus, msg("room", 1))
	rec.waitCount(t, "room", 1)

	// Sentinel must have discovered the replica before it can fail over.
	sc := newSentinelClient(t, sentinel)
	eventually(t, "failover accepted", func() bool {
		return sc.Do(context.Background(), sc.B().SentinelFailover().Master("mymaster").Build()).Error() == nil
	})
	eventually(t, "replica promoted", func() bool {
		role, err := rc.Do(context.Background(), rc.B().Role().Build()).ToArray()
		if err != nil || len(role) == 0 {
			return false
		}
		s, _ := role[0].ToString()
		return s == "master"
	})
	// Sentinel kills the pub/sub clients of the demoted master, so the
	// subscription moves to the new master; publishing follows once rueidis
	// has seen +switch-master. Killing the old master makes sure nothing
	// still goes through it.
	master.Kill()
	n := 2
	eventually(t, "delivery after failover", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		m := msg("room", n)
		n++
		if bus.Publish(ctx, []*codec.Message{m}) != nil {
			return false
		}
		wait := time.NewTimer(500 * time.Millisecond)
		defer wait.Stop()
		for {
			for _, got := range rec.topic("room") {
				if got.ID == m.ID {
					return true
				}
			}
			select {
			case <-rec.notify:
			case <-wait.C:
				return false
			}
		}
	})
	if c := numsub(t, rc, prefix+"room"); c != 1 {
		t.Fatalf("NUMSUB on the new master = %d, want 1", c)
	}
}

func newSentinelClient(t *testing.T, addr string) rueidis.Client {
	t.Helper()
	c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{addr}, ForceSingleClient: true, DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func mustAtoi(t *testing.T, s string) int64 {
	t.Helper()
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
