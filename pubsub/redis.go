package pubsub

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/redis/rueidis"

	"github.com/chatgg/chatgg/codec"
)

const (
	// DefaultChannelPrefix is prepended to a topic to name its Redis
	// channel when RedisConfig.ChannelPrefix is empty.
	DefaultChannelPrefix = "chatgg:"
	// DefaultReconnectMaxDelay caps the backoff between attempts to
	// re-establish the subscription connection.
	DefaultReconnectMaxDelay = 5 * time.Second
	// DefaultPingTimeout bounds Ping when its context has no deadline.
	DefaultPingTimeout = 2 * time.Second

	reconnectMinDelay = 100 * time.Millisecond
	// subscribeTimeout bounds one SUBSCRIBE/UNSUBSCRIBE round trip; past it
	// the subscription connection is taken as broken.
	subscribeTimeout = 10 * time.Second
	// subscribeChunk is the most channels named in one SUBSCRIBE, so a
	// resubscription of many topics is not one huge command.
	subscribeChunk = 512
	// downLogEvery spaces the "still down" warnings during an outage.
	downLogEvery = 30 * time.Second
	// badLogEvery spaces the warnings about undecodable messages.
	badLogEvery = 10 * time.Second
	// maxPooledBuf keeps one giant batch from pinning its buffer forever.
	maxPooledBuf = 1 << 20
)

// errSubscriptionClosed stands in for the reason when rueidis closes the
// hooks channel without one.
var errSubscriptionClosed = errors.New("pubsub: redis subscription connection closed")

// RedisConfig configures a Redis bus.
type RedisConfig struct {
	// URL locates Redis: redis://[user:password@]host[:port][/db], or
	// rediss:// for TLS, parsed by rueidis.ParseURL (so its query
	// parameters such as dial_timeout, protocol=2 and master_set apply).
	// Ignored when Client is set. Default: none; URL or Client is required.
	URL string
	// SentinelMaster, when set, makes the client ask Redis Sentinels for
	// this master set and follow its failovers
	// (rueidis.ClientOption.Sentinel.MasterSet); the URL's host then names
	// a Sentinel unless SentinelAddrs is set. The URL's user, password and
	// database apply to the master; its TLS (rediss://) and dial_timeout
	// to master and Sentinels; Sentinels are contacted without AUTH (pass a
	// Client for anything else). Ignored when Client is set. Default: ""
	// (no Sentinel, unless the URL has master_set=).
	SentinelMaster string
	// SentinelAddrs are the Sentinels' host:port addresses
	// (rueidis.ClientOption.InitAddress), replacing the URL's host. Only
	// with SentinelMaster. Ignored when Client is set.
	SentinelAddrs []string
	// Client, when set, is used instead of dialling URL; the bus does not
	// close it. It must not be a Redis Cluster client.
	Client rueidis.Client
	// ChannelPrefix is prepended to a topic to name its Redis channel.
	// Default DefaultChannelPrefix.
	ChannelPrefix string
	// Deliverer receives every message of a subscribed topic. Required.
	Deliverer Deliverer
	// Logger receives state changes of the subscription connection and
	// rate-limited warnings. Nil discards.
	Logger *slog.Logger
	// ReconnectMaxDelay caps the exponential backoff between reconnection
	// attempts. Default DefaultReconnectMaxDelay.
	ReconnectMaxDelay time.Duration
	// HotWindow bounds each topic's window of recent messages, kept in
	// Redis beside the channel so that a reconnecting client can catch up
	// on messages not yet stored (see Recent). Zero fields take the
	// defaults; Len < 0 disables the window.
	HotWindow HotWindow
}

// Redis is a bus over Redis pub/sub for multi-node deployments. Publishing
// sends PUBLISH <prefix><topic> with the message's wire form
// (codec.AppendMessage). Each node holds one subscription connection, owned
// by one background goroutine that issues SUBSCRIBE/UNSUBSCRIBE for the
// topics the node asks for, decodes what arrives and hands it to the
// Deliverer. Safe for concurrent use.
//
// Delivery is at most once: messages published while the subscription
// connection is down are lost to this node (history is the store's job).
// It is never twice: the node subscribes each topic once, on one connection,
// and the old connection is closed before a new one subscribes.
//
// A broken subscription connection (Redis restarted, network cut, or a
// Sentinel failover, during which Sentinel kills the pub/sub clients of the
// nodes it reconfigures) is noticed by rueidis (EOF, or its keepalive PING
// timing out) and replaced on the current master after a backoff.
type Redis struct {
	client   rueidis.Client
	own      bool // client was built by NewRedis and is closed by Close
	prefix   string
	d        Deliverer
	log      *slog.Logger
	maxDelay time.Duration
	hotLen   int
	hotAge   time.Duration

	ctx       context.Context // cancelled by Close
	cancel    context.CancelFunc
	stopped   chan struct{} // closed when run returns
	closed    atomic.Bool
	closeOnce sync.Once

	kick chan struct{} // capacity 1: want changed, run should sync

	// Lock order: mu and smu are never held together.

	mu    sync.Mutex // guards want and dirty; held briefly by event loops
	want  map[string]struct{}
	dirty map[string]struct{} // topics changed in want since the last sync

	smu     sync.Mutex // guards the subscription state below
	live    *session   // the connection whose confirmations count
	up      bool       // live is established and subscribed to want
	conf    map[string]struct{}
	confCh  chan struct{} // closed and replaced when up or conf changes
	lastErr error         // why the subscription connection went down

	badLog logLimiter
	bufs   sync.Pool // *pubScratch
}

// session identifies one subscription connection, so late hook calls from a
// connection being torn down are ignored.
type session struct{}

// pubScratch is Publish's per-call scratch, pooled across calls.
type pubScratch struct {
	buf  []byte
	ends []int // per message: end of channel name, end of hot key, end of wire form
	last []int // per message: index after its last command
	cmds []rueidis.Completed
}

// NewRedis returns a Redis bus and starts its subscription goroutine. With
// cfg.URL it connects first and fails if Redis is unreachable; later outages
// are survived (see Ping).
func NewRedis(cfg RedisConfig) (*Redis, error) {
	if cfg.Deliverer == nil {
		return nil, errors.New("pubsub: RedisConfig.Deliverer is nil")
	}
	client, own, err := redisClient(cfg.Client, cfg.URL, cfg.SentinelMaster, cfg.SentinelAddrs)
	if err != nil {
		return nil, err
	}
	r := &Redis{
		client:   client,
		own:      own,
		prefix:   cfg.ChannelPrefix,
		d:        cfg.Deliverer,
		log:      discardLogger(cfg.Logger).With("component", "pubsub"),
		maxDelay: cfg.ReconnectMaxDelay,
		stopped:  make(chan struct{}),
		kick:     make(chan struct{}, 1),
		want:     make(map[string]struct{}),
		dirty:    make(map[string]struct{}),
		conf:     make(map[string]struct{}),
		confCh:   make(chan struct{}),
		badLog:   logLimiter{Every: badLogEvery},
	}
	if r.prefix == "" {
		r.prefix = DefaultChannelPrefix
	}
	if r.maxDelay <= 0 {
		r.maxDelay = DefaultReconnectMaxDelay
	}
	hw := cfg.HotWindow.withDefaults()
	r.hotLen, r.hotAge = hw.Len, hw.Age
	r.ctx, r.cancel = context.WithCancel(context.Background())
	go r.run()
	return r, nil
}

// Client returns the rueidis client the bus publishes with, for sharing with
// RedisDedup or mq. It stays owned by the bus.
func (r *Redis) Client() rueidis.Client { return r.client }

// Publish sends each message of batch to its topic's channel, in order, in
// one pipelined round trip, and returns once Redis has accepted all of them.
// rueidis also pipelines concurrent callers onto shared connections. The
// error, if any, says how many messages failed and wraps the first failure;
// messages before a failed one may have been delivered. PUBLISH is not
// retried, so a message is never published twice.
func (r *Redis) Publish(ctx context.Context, batch []*codec.Message) error {
	if len(batch) == 0 {
		return nil
	}
	if r.closed.Load() {
		return ErrClosed
	}
	s, _ := r.bufs.Get().(*pubScratch)
	if s == nil {
		s = new(pubScratch)
	}
	// Channel names, hot-window keys and wire forms go into one buffer;
	// slices of it are taken only after the last append, once it no
	// longer moves.
	buf, ends := s.buf[:0], s.ends[:0]
	for _, m := range batch {
		buf = append(buf, r.prefix...)
		buf = append(buf, m.Topic...)
		ends = append(ends, len(buf))
		buf = appendHotKey(buf, r.prefix, m.Topic)
		ends = append(ends, len(buf))
		buf = codec.AppendMessage(buf, m)
		ends = append(ends, len(buf))
	}
	cmds, last := s.cmds[:0], s.last[:0]
	start := 0
	for i := 0; i < len(ends); i += 3 {
		ch, key, msg := buf[start:ends[i]], buf[ends[i]:ends[i+1]], buf[ends[i+1]:ends[i+2]]
		start = ends[i+2]
		if r.hotLen > 0 && !internalTopic(batch[i/3].Topic) {
			// The window is written before the PUBLISH, on the same
			// connection: a node that subscribed before reading the
			// window sees every message in one or the other.
			k := rueidis.BinaryString(key)
			cmds = append(cmds,
				r.client.B().Lpush().Key(k).Element(rueidis.BinaryString(msg)).Build(),
				r.client.B().Ltrim().Key(k).Start(0).Stop(int64(r.hotLen-1)).Build(),
				r.client.B().Pexpire().Key(k).Milliseconds(r.hotAge.Milliseconds()).Build())
		}
		cmds = append(cmds, r.client.B().Publish().
			Channel(rueidis.BinaryString(ch)).
			Message(rueidis.BinaryString(msg)).Build())
		last = append(last, len(cmds))
	}
	resps := r.client.DoMulti(ctx, cmds...)

	failed, first := 0, -1
	var firstErr error
	from := 0
	for mi := range batch {
		for _, resp := range resps[from:last[mi]] {
			if err := resp.Error(); err != nil {
				if failed == 0 {
					first, firstErr = mi, err
				}
				failed++
				break
			}
		}
		from = last[mi]
	}
	if failed == 0 {
		// Every reply is in, so rueidis has written every command and
		// no longer reads buf: safe to reuse. After a failure (a
		// cancelled ctx in particular) a command may still sit in
		// rueidis's queue pointing at buf, so the scratch is dropped.
		clear(cmds)
		if cap(buf) <= maxPooledBuf {
			s.buf, s.ends, s.cmds, s.last = buf, ends, cmds, last
			r.bufs.Put(s)
		}
		return nil
	}
	return fmt.Errorf("pubsub: publish %d of %d messages failed, first to topic %q: %w",
		failed, len(batch), batch[first].Topic, firstErr)
}

// Subscribe asks for the messages of topic: the node's first local
// subscriber of topic arrived. It records the wish and returns at once (it
// is called from event loops); the subscription goroutine issues SUBSCRIBE.
// Subscriptions are a set, not counted: subscribing a subscribed topic does
// nothing, and one Unsubscribe undoes any number of Subscribes (the node
// counts its own subscribers).
func (r *Redis) Subscribe(topic string) { r.setWant(topic, true) }

// Unsubscribe stops the messages of topic: the node's last local subscriber
// left. Like Subscribe it returns at once. A Subscribe and Unsubscribe of
// the same topic in quick succession may cancel out without reaching Redis.
// Messages already in flight may still be delivered after it returns.
func (r *Redis) Unsubscribe(topic string) { r.setWant(topic, false) }

func (r *Redis) setWant(topic string, on bool) {
	r.mu.Lock()
	if on {
		r.want[topic] = struct{}{}
	} else {
		delete(r.want, topic)
	}
	r.dirty[topic] = struct{}{}
	r.mu.Unlock()
	select {
	case r.kick <- struct{}{}:
	default: // a sync is already pending; it will see this change
	}
}

// Subscribed reports whether Redis has confirmed the node's subscription to
// topic on the current subscription connection.
func (r *Redis) Subscribed(topic string) bool {
	r.smu.Lock()
	defer r.smu.Unlock()
	_, ok := r.conf[topic]
	return ok
}

// SubscribeWait is Subscribe followed by waiting until Redis confirms the
// subscription (see Subscribed) or ctx is done. Meant for tests and
// start-up, not for event loops.
func (r *Redis) SubscribeWait(ctx context.Context, topic string) error {
	r.Subscribe(topic)
	for {
		if r.closed.Load() {
			return ErrClosed
		}
		r.smu.Lock()
		_, ok := r.conf[topic]
		ch := r.confCh
		r.smu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Ping returns nil if the subscription connection is up and Redis answers
// PING. While the subscription connection is down it returns an error
// wrapping ErrSubscriptionDown. Without a deadline on ctx it waits at most
// DefaultPingTimeout.
func (r *Redis) Ping(ctx context.Context) error {
	if r.closed.Load() {
		return ErrClosed
	}
	r.smu.Lock()
	up, lastErr := r.up, r.lastErr
	r.smu.Unlock()
	if !up {
		if lastErr == nil {
			return ErrSubscriptionDown
		}
		return fmt.Errorf("%w: %w", ErrSubscriptionDown, lastErr)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultPingTimeout)
		defer cancel()
	}
	if err := r.client.Do(ctx, r.client.B().Ping().Build()).Error(); err != nil {
		return fmt.Errorf("pubsub: redis ping: %w", err)
	}
	return nil
}

// Close stops the subscription goroutine, closes the subscription
// connection and, if NewRedis built the client, the client. Later Publish
// and Ping calls return ErrClosed. It is idempotent.
func (r *Redis) Close() error {
	r.closeOnce.Do(func() {
		r.closed.Store(true)
		r.cancel()
		<-r.stopped
		if r.own {
			r.client.Close()
		}
	})
	return nil
}

// run keeps one subscription connection alive until Close: it establishes
// it, keeps it in sync with want, and when it breaks waits with capped,
// jittered exponential backoff and starts over, resubscribing every wanted
// topic. It logs state changes, and while down one line per downLogEvery.
func (r *Redis) run() {
	defer close(r.stopped)
	delay := reconnectMinDelay
	var (
		everUp    bool
		downSince time.Time
		attempts  int
		downLog   = logLimiter{Every: downLogEvery}
	)
	onUp := func(topics int) {
		if everUp {
			r.log.Info("redis subscription restored", "topics", topics,
				"attempts", attempts, "down", time.Since(downSince).Round(time.Millisecond))
		} else {
			r.log.Info("redis subscription up", "topics", topics)
		}
		everUp, attempts, downSince = true, 0, time.Time{}
		delay = reconnectMinDelay
	}
	for {
		wasUp, err := r.session(onUp)
		if r.ctx.Err() != nil {
			return
		}
		now := time.Now()
		if wasUp {
			downSince = now
			downLog.Allow(now) // the next "still down" comes an interval later
			r.log.Warn("redis subscription lost, reconnecting", "err", err)
		} else {
			attempts++
			if downSince.IsZero() {
				downSince = now
			}
			if ok, suppressed := downLog.Allow(now); ok {
				r.log.Warn("redis subscription down", "err", err, "attempts", attempts,
					"down", now.Sub(downSince).Round(time.Millisecond), "suppressed", suppressed)
			}
		}
		// Equal jitter: half fixed, half random, so nodes that lost
		// Redis together do not reconnect in lockstep.
		t := time.NewTimer(delay/2 + rand.N(delay/2+1))
		select {
		case <-t.C:
		case <-r.ctx.Done():
			t.Stop()
			return
		}
		if !wasUp {
			delay = min(2*delay, r.maxDelay)
		}
	}
}

// session runs one subscription connection: it dedicates a connection,
// checks it with PING, subscribes every wanted topic, then applies changes
// to want as they come, until the connection breaks or Close. wasUp reports
// whether it got that far (onUp was called).
func (r *Redis) session(onUp func(topics int)) (wasUp bool, err error) {
	s := new(session)
	r.smu.Lock()
	r.live = s
	r.smu.Unlock()
	dc, _ := r.client.Dedicate()
	wait := dc.SetPubSubHooks(rueidis.PubSubHooks{
		OnMessage:      r.onMessage,
		OnSubscription: func(ps rueidis.PubSubSubscription) { r.onSubscription(s, ps) },
	})
	defer func() {
		// Close, not the release function: a connection that carried
		// subscriptions is not worth returning to the pool.
		dc.Close()
		for range wait { // closed once the hooks run no more
		}
		r.smu.Lock()
		// Clearing live also fences off a hook call that rueidis may
		// still be finishing as the connection is released.
		r.live, r.up = nil, false
		clear(r.conf)
		if err != nil {
			r.lastErr = err
		}
		r.notifyLocked()
		r.smu.Unlock()
	}()

	// A dead connection (Redis down) fails here rather than looking
	// established while there is nothing to subscribe.
	ctx, cancel := context.WithTimeout(r.ctx, subscribeTimeout)
	err = dc.Do(ctx, dc.B().Ping().Build()).Error()
	cancel()
	if err != nil {
		return false, fmt.Errorf("pubsub: redis subscription connection: %w", err)
	}
	have := make(map[string]struct{})
	for {
		if err := r.sync(dc, have, !wasUp); err != nil {
			return wasUp, err
		}
		if !wasUp {
			wasUp = true
			r.smu.Lock()
			r.up, r.lastErr = true, nil
			r.notifyLocked()
			r.smu.Unlock()
			onUp(len(have))
		}
		select {
		case <-r.kick:
		case err, ok := <-wait:
			if !ok || err == nil {
				err = errSubscriptionClosed
			}
			return wasUp, err
		case <-r.ctx.Done():
			return wasUp, nil
		}
	}
}

// sync brings the connection's subscriptions (have) in line with want:
// every wanted topic when full, else only the topics changed since the last
// sync.
func (r *Redis) sync(dc rueidis.DedicatedClient, have map[string]struct{}, full bool) error {
	var sub, unsub []string
	r.mu.Lock()
	if full {
		for t := range r.want {
			sub = append(sub, t)
		}
	} else {
		for t := range r.dirty {
			_, w := r.want[t]
			_, h := have[t]
			switch {
			case w && !h:
				sub = append(sub, t)
			case !w && h:
				unsub = append(unsub, t)
			}
		}
	}
	clear(r.dirty)
	r.mu.Unlock()

	if err := r.command(dc, sub, true); err != nil {
		return err
	}
	for _, t := range sub {
		have[t] = struct{}{}
	}
	if err := r.command(dc, unsub, false); err != nil {
		return err
	}
	for _, t := range unsub {
		delete(have, t)
	}
	return nil
}

// command sends SUBSCRIBE (or UNSUBSCRIBE) for topics, subscribeChunk
// channels at a time. rueidis returns from a SUBSCRIBE once its first
// channel is confirmed; the others are confirmed through onSubscription.
func (r *Redis) command(dc rueidis.DedicatedClient, topics []string, subscribe bool) error {
	for len(topics) > 0 {
		n := min(len(topics), subscribeChunk)
		chans := make([]string, n)
		for i, t := range topics[:n] {
			chans[i] = r.prefix + t
		}
		topics = topics[n:]
		var cmd rueidis.Completed
		if subscribe {
			cmd = dc.B().Subscribe().Channel(chans...).Build()
		} else {
			cmd = dc.B().Unsubscribe().Channel(chans...).Build()
		}
		ctx, cancel := context.WithTimeout(r.ctx, subscribeTimeout)
		err := dc.Do(ctx, cmd).Error()
		cancel()
		if err != nil {
			if subscribe {
				return fmt.Errorf("pubsub: redis subscribe %d channels: %w", n, err)
			}
			return fmt.Errorf("pubsub: redis unsubscribe %d channels: %w", n, err)
		}
	}
	return nil
}

// onSubscription records Redis's confirmations. It runs on the connection's
// reader goroutine.
func (r *Redis) onSubscription(s *session, ps rueidis.PubSubSubscription) {
	topic, ok := strings.CutPrefix(ps.Channel, r.prefix)
	if !ok {
		return
	}
	r.smu.Lock()
	defer r.smu.Unlock()
	if r.live != s { // a torn-down connection must not resurrect its topics
		return
	}
	switch ps.Kind {
	case "subscribe":
		r.conf[topic] = struct{}{}
	case "unsubscribe":
		delete(r.conf, topic)
	default:
		return
	}
	r.notifyLocked()
}

// notifyLocked wakes SubscribeWait callers. Caller holds smu.
func (r *Redis) notifyLocked() {
	close(r.confCh)
	r.confCh = make(chan struct{})
}

// onMessage decodes a message and delivers it. It runs on the connection's
// reader goroutine, so it must not block (nor may the Deliverer).
func (r *Redis) onMessage(pm rueidis.PubSubMessage) {
	topic, ok := strings.CutPrefix(pm.Channel, r.prefix)
	if !ok {
		return
	}
	// Zero copy: m.Data aliases the bytes of pm.Message. rueidis reads each
	// bulk string into its own fresh allocation and never reuses it (Go
	// strings are immutable), and m is read-only for everyone downstream,
	// so nothing ever writes to these bytes.
	b := unsafe.Slice(unsafe.StringData(pm.Message), len(pm.Message))
	m := new(codec.Message)
	if err := codec.DecodeMessage(b, m); err != nil {
		r.warnBad(topic, "undecodable message dropped", err)
		return
	}
	if m.Topic != topic {
		r.warnBad(topic, "message for another topic dropped", nil)
		return
	}
	r.d.Deliver(m)
}

func (r *Redis) warnBad(topic, msg string, err error) {
	if ok, suppressed := r.badLog.Allow(time.Now()); ok {
		r.log.LogAttrs(context.Background(), slog.LevelWarn, msg,
			slog.String("topic", topic), slog.Any("err", err), slog.Int("suppressed", suppressed))
	}
}
