// Package server wires chatgg together: it reads the configuration (flags
// and environment), builds the pub/sub bus, the queue, the store and the
// WebSocket engine for the process's role, plugs them into each other, serves
// the REST API and metrics on a second port with fasthttp, and stops it all
// gracefully. Nothing imports server but cmd/chatgg.
package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/chatgg/chatgg/codec"
	"github.com/chatgg/chatgg/loop"
	"github.com/chatgg/chatgg/mq"
	"github.com/chatgg/chatgg/pubsub"
	"github.com/chatgg/chatgg/storage"
)

// busBackend is the method set of pubsub.Local and pubsub.Redis.
type busBackend interface {
	bus
	Subscribe(topic string)
	Unsubscribe(topic string)
	Ping(ctx context.Context) error
	Close() error
}

// queueBackend is the method set of mq.Local and mq.Redis.
type queueBackend interface {
	producer
	RunWorker(ctx context.Context, sink mq.Sink, cfg mq.WorkerConfig) error
	Stats(ctx context.Context) (mq.Stats, error)
	Ping(ctx context.Context) error
	Close() error
}

// storeBackend is the method set of storage.Bolt and storage.Couch.
type storeBackend interface {
	storage.Store
}

// Server is one chatgg process.
type Server struct {
	cfg Config
	log *slog.Logger

	engine  *loop.Engine
	broker  *broker
	bus     busBackend
	queue   queueBackend
	journal *mq.Journal // the embedded queue's, nil with Redis
	store   storeBackend
	dedup   interface{ Close() error }
	ids     *codec.IDGen
	metrics *metrics
	fwd     *forwarder
	watcher *storedWatcher
	apiKeys *apiKeys // nil: REST is open
	rejLog  rateLog  // REST refusals

	http   *fasthttp.Server
	httpLn net.Listener
	pprof  *pprofServer // nil unless --pprof-addr

	draining     atomic.Bool // set on Shutdown: /readyz answers 503
	workerCancel context.CancelFunc
	workerDone   chan struct{}
	// notices carries storage notices from the worker to the goroutine
	// that publishes them (with Redis), so that the worker's next Store
	// does not wait for the publish.
	notices  chan []*codec.Message
	httpDone chan error
	stopOnce sync.Once
}

// forwarder is the bus's Deliverer: it measures publish-to-delivery latency
// once per message and node, then hands the message to the engine.
type forwarder struct {
	engine  *loop.Engine
	metrics *metrics
	watcher *storedWatcher
}

func (f *forwarder) Deliver(m *codec.Message) {
	if strings.HasPrefix(m.Topic, storedTopicPrefix) {
		if f.watcher != nil {
			f.watcher.notice(m)
		}
		return
	}
	f.metrics.observeDelivery(m)
	if f.engine != nil {
		f.engine.Deliver(m)
	}
}

// New builds a server for cfg; Start runs it.
func New(ctx context.Context, cfg Config, logger *slog.Logger) (s *Server, err error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Role != RoleAll && (cfg.RedisURL == "" || cfg.CouchDBURL == "") {
		return nil, fmt.Errorf("role %s needs --redis-url and --couchdb-url: the embedded queue and store live in one process (use role all)", cfg.Role)
	}
	s = &Server{cfg: cfg, log: logger.With("component", "server"), ids: codec.NewIDGen(cfg.Node)}
	s.rejLog.Every = loop.DefaultRejectLogInterval
	s.metrics = newMetrics()
	s.fwd = &forwarder{metrics: s.metrics}
	built := s // "return nil, err" clears s before this runs
	defer func() {
		if err != nil {
			built.closeBackends()
		}
	}()

	if err := s.setupAPIKeys(); err != nil {
		return nil, err
	}
	serving := cfg.Role != RoleWorker
	hot := pubsub.HotWindow{Len: cfg.HotWindowLen, Age: cfg.HotWindowAge}
	if cfg.RedisURL != "" {
		// Workers use the bus too, for storage notices.
		rb, err := pubsub.NewRedis(pubsub.RedisConfig{URL: cfg.RedisURL, ChannelPrefix: cfg.ChannelPrefix, Deliverer: s.fwd, Logger: logger, HotWindow: hot})
		if err != nil {
			return nil, fmt.Errorf("server: redis pub/sub: %w", err)
		}
		s.bus = rb
		if serving {
			d, err := pubsub.NewRedisDedup(pubsub.RedisDedupConfig{Client: rb.Client(), Prefix: cfg.ChannelPrefix, Window: cfg.DedupWindow})
			if err != nil {
				return nil, fmt.Errorf("server: redis dedup: %w", err)
			}
			s.dedup = d
		}
		q, err := mq.NewRedis(mq.RedisConfig{URL: cfg.RedisURL, Queue: cfg.QueueName, HeartbeatTTL: cfg.WorkerHeartbeat, RecoverInterval: cfg.RecoverInterval, Logger: logger})
		if err != nil {
			return nil, fmt.Errorf("server: redis queue: %w", err)
		}
		s.queue = q
	} else {
		s.bus = pubsub.NewLocal(pubsub.LocalConfig{Deliverer: s.fwd, HotWindow: hot})
		s.dedup = nopCloser{pubsub.NewLocalDedup(cfg.DedupWindow)}
		// The journal makes the embedded queue the commit point Redis is
		// otherwise: what was accepted survives a crash.
		var j *mq.Journal
		if cfg.QueueJournal {
			var err error
			if j, err = mq.OpenJournal(filepath.Join(cfg.DataDir, mq.DefaultJournalFile), logger); err != nil {
				return nil, fmt.Errorf("server: embedded queue: %w", err)
			}
			s.journal = j
		} else {
			s.log.Warn("the embedded queue is in memory only (--queue-journal=false): a crash loses accepted messages not yet stored")
		}
		q := mq.NewLocal(mq.LocalConfig{Logger: logger, Journal: j})
		s.queue = q
		recovered, err := q.Recover()
		if err != nil {
			return nil, fmt.Errorf("server: embedded queue: %w", err)
		}
		// A crash between the journal and the ack left the publisher
		// without an answer: its retry with the same key is acked with the
		// recovered message's id, not published again.
		for _, m := range recovered {
			if m.Key != "" {
				_, _, _ = s.dedup.(nopCloser).Claim(ctx, m.Topic, m.Key, m.ID)
			}
		}
	}

	if cfg.CouchDBURL != "" {
		c, err := storage.NewCouch(ctx, storage.CouchConfig{URL: cfg.CouchDBURL, Logger: logger})
		if err != nil {
			return nil, fmt.Errorf("server: couchdb: %w", err)
		}
		s.store = c
	} else {
		b, err := storage.NewBolt(storage.BoltConfig{Dir: cfg.DataDir, Logger: logger})
		if err != nil {
			return nil, fmt.Errorf("server: embedded store: %w", err)
		}
		s.store = b
	}

	if serving {
		s.watcher = newStoredWatcher(s.store, storedWatchTTL)
		s.fwd.watcher = s.watcher
		if cfg.RedisURL != "" {
			s.bus.Subscribe(storedTopic(cfg.Node)) // notices from workers anywhere
		}
		s.broker = newBroker(brokerConfig{
			Bus:          s.bus,
			Queue:        s.queue,
			Dedup:        s.dedup.(deduper),
			Logger:       logger,
			OnPublished:  s.metrics.published,
			OnPublishErr: s.metrics.publishError,
		})
		lc := loop.Config{
			Addr:                cfg.WSAddr,
			Loops:               cfg.Loops,
			MaxHeaderBytes:      cfg.MaxHeaderBytes,
			HandshakeTimeout:    cfg.HandshakeTimeout,
			IdleTimeout:         cfg.IdleTimeout,
			MaxOutboundBytes:    cfg.MaxOutboundBytes,
			EchoMaxMessageBytes: cfg.EchoMaxMessageBytes,
			MaxMessageBytes:     cfg.MaxMessageBytes,
			MaxTopicsPerConn:    cfg.MaxTopicsPerConn,
			PublishRate:         cfg.PublishRate,
			PublishBurst:        cfg.PublishBurst,
			DefaultTopic:        cfg.DefaultTopic,
			Node:                cfg.Node,
			IDs:                 s.ids,
			Publisher:           s.broker,
			Subscriber:          subscriber{s.bus},
			Recoverer:           recoverer{hot: s.bus.(recentReader), hotLen: cfg.HotWindowLen, store: s.store},
			StoreWatcher:        s.watcher,
			ProxyProtocol:       cfg.ProxyProtocol,
			CloseWindow:         cfg.CloseWindow,
			Logger:              logger,
			AnonymousSubTopics:  cfg.AnonymousSubTopics,
			AnonymousPubTopics:  cfg.AnonymousPubTopics,
			AllowedOrigins:      cfg.AllowedOrigins,
			MaxConns:            cfg.MaxConns,
			MaxConnsPerIP:       cfg.MaxConnsPerIP,
			UpgradesPerSecPerIP: cfg.UpgradesPerSecPerIP,
		}
		if err := s.setupAuth(&lc); err != nil {
			return nil, err
		}
		s.engine = loop.New(lc)
		s.fwd.engine = s.engine
		s.metrics.engine = s.engine
	}
	s.metrics.queue = s.queue
	return s, nil
}

// setupAuth loads the JWT keys for the WebSocket port and says, once and
// loudly, when it is left open.
func (s *Server) setupAuth(lc *loop.Config) error {
	cfg := &s.cfg
	jc := jwtConfig{
		Secret:        []byte(cfg.JWTSecret),
		PublicKeyFile: cfg.JWTPublicKeyFile,
		JWKSFile:      cfg.JWTJWKSFile,
		Issuer:        cfg.JWTIssuer,
		Audience:      cfg.JWTAudience,
		Leeway:        cfg.JWTLeeway,
	}
	if jc.enabled() {
		a, err := newJWTAuth(jc)
		if err != nil {
			return fmt.Errorf("server: %w", err)
		}
		lc.Auth = a
		lc.AllowAnonymous = cfg.AllowAnonymous == "true"
		if lc.AllowAnonymous {
			s.log.Warn("SECURITY: WebSocket clients without a token are let in (--allow-anonymous=true); they may use --anonymous-sub-topics and --anonymous-pub-topics",
				"sub_topics", strings.Join(cfg.AnonymousSubTopics, ","), "pub_topics", strings.Join(cfg.AnonymousPubTopics, ","))
		}
	} else {
		if cfg.AllowAnonymous == "false" {
			return errors.New("server: --allow-anonymous=false needs --jwt-secret, --jwt-public-key or --jwt-jwks")
		}
		if cfg.JWTIssuer != "" || cfg.JWTAudience != "" {
			return errors.New("server: --jwt-issuer and --jwt-audience need --jwt-secret, --jwt-public-key or --jwt-jwks")
		}
		s.log.Warn("SECURITY: WebSocket authentication is OFF: no JWT key is configured (--jwt-secret, --jwt-public-key, --jwt-jwks), so anyone who reaches this port may connect, subscribe and publish")
	}
	return nil
}

// setupAPIKeys loads the REST API keys (every role serves REST).
func (s *Server) setupAPIKeys() error {
	keys, err := loadAPIKeys(s.cfg.APIKeysFile, s.cfg.APIKeys)
	if err != nil {
		return fmt.Errorf("server: %w", err)
	}
	s.apiKeys = keys
	if keys == nil {
		s.log.Warn("SECURITY: the REST API is OPEN: no API key is configured (--api-keys-file, CHATGG_API_KEYS), so anyone who reaches the REST port may publish, read history and administer the queue")
	}
	return nil
}

// nopCloser gives LocalDedup a Close.
type nopCloser struct{ *pubsub.LocalDedup }

func (nopCloser) Close() error { return nil }

// Start binds the WebSocket, REST and pprof ports and starts the worker.
func (s *Server) Start() error {
	if s.engine != nil {
		if err := s.engine.Start(); err != nil {
			return err
		}
	}
	ln, err := net.Listen("tcp", s.cfg.HTTPAddr)
	if err != nil {
		s.stopEngine(context.Background())
		return fmt.Errorf("server: listen on %s: %w", s.cfg.HTTPAddr, err)
	}
	if s.cfg.PprofAddr != "" {
		p, err := startPprof(s.cfg.PprofAddr)
		if err != nil {
			_ = ln.Close()
			s.stopEngine(context.Background())
			return err
		}
		s.pprof = p
		if !loopbackAddr(s.cfg.PprofAddr) {
			s.log.Warn("SECURITY: pprof is served on a non-loopback address: profiles and command lines are readable by anyone who reaches it", "addr", p.addr())
		} else {
			s.log.Info("pprof served", "addr", p.addr())
		}
	}
	if s.cfg.ProxyProtocol {
		ln = newProxyListener(ln, s.log, func() { s.metrics.rejected("http", "proxy_header") })
	}
	s.httpLn = ln
	s.http = s.newHTTPServer()
	s.httpDone = make(chan error, 1)
	go func() { s.httpDone <- s.http.Serve(ln) }()

	if s.cfg.Role != RoleServe {
		wctx, cancel := context.WithCancel(context.Background())
		s.workerCancel = cancel
		s.workerDone = make(chan struct{})
		sink := &countingSink{store: s.store, metrics: s.metrics, notify: s.notifyStored}
		s.notices = make(chan []*codec.Message, noticeBacklog)
		go func() {
			defer close(s.workerDone)
			sent := make(chan struct{})
			go func() {
				defer close(sent)
				s.sendNotices()
			}()
			err := s.queue.RunWorker(wctx, sink, mq.WorkerConfig{BatchSize: s.cfg.BatchSize, MaxWait: s.cfg.BatchWait})
			if err != nil && !errors.Is(err, context.Canceled) {
				s.log.Error("worker stopped", "err", err)
			}
			close(s.notices)
			<-sent
		}()
	}
	s.log.Info("chatgg started", "role", s.cfg.Role, "ws", s.WSAddr(), "http", s.HTTPAddr(),
		"pubsub", backendName(s.cfg.RedisURL, "redis", "in-process"),
		"store", backendName(s.cfg.CouchDBURL, "couchdb", "embedded bolt in "+s.cfg.DataDir))
	return nil
}

func backendName(url, set, unset string) string {
	if url != "" {
		return set
	}
	return unset
}

// WSAddr is the WebSocket listen address ("" for the worker role).
func (s *Server) WSAddr() string {
	if s.engine == nil || s.engine.Addr() == nil {
		return ""
	}
	return s.engine.Addr().String()
}

// PprofAddr is the pprof listen address ("" unless --pprof-addr).
func (s *Server) PprofAddr() string {
	if s.pprof == nil {
		return ""
	}
	return s.pprof.addr()
}

// HTTPAddr is the REST listen address.
func (s *Server) HTTPAddr() string {
	if s.httpLn == nil {
		return ""
	}
	return s.httpLn.Addr().String()
}

// Shutdown stops gracefully within ctx: the node turns not-ready, WebSocket
// clients are closed with 1001, publishes in flight finish, the worker
// stores what it holds, then everything closes.
func (s *Server) Shutdown(ctx context.Context) error {
	var errs []error
	s.stopOnce.Do(func() {
		// Drain: not ready, still serving, while the balancer moves new
		// clients to other nodes.
		s.draining.Store(true)
		if s.engine != nil && s.cfg.DrainPeriod > 0 {
			s.log.Info("draining", "period", s.cfg.DrainPeriod)
			t := time.NewTimer(s.cfg.DrainPeriod)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
			}
		}
		s.stopEngine(ctx)
		if s.broker != nil {
			s.broker.Close()
		}
		if s.http != nil {
			if err := s.http.ShutdownWithContext(ctx); err != nil {
				errs = append(errs, fmt.Errorf("server: http shutdown: %w", err))
			}
		}
		if s.pprof != nil {
			if err := s.pprof.shutdown(ctx); err != nil {
				errs = append(errs, err)
			}
		}
		if s.workerCancel != nil {
			s.workerCancel()
			select {
			case <-s.workerDone:
			case <-ctx.Done():
				errs = append(errs, errors.New("server: worker did not stop in time"))
			}
		}
		s.closeBackends()
	})
	return errors.Join(errs...)
}

func (s *Server) stopEngine(ctx context.Context) {
	if s.engine == nil || s.engine.Addr() == nil {
		return
	}
	if err := s.engine.Shutdown(ctx); err != nil {
		s.log.Warn("websocket shutdown", "err", err)
	}
}

func (s *Server) closeBackends() {
	if s.watcher != nil {
		_ = s.watcher.Close()
	}
	for _, c := range []interface{ Close() error }{s.bus, s.dedup, s.queue, s.store, s.journal} {
		if c == nil || c == (*mq.Journal)(nil) {
			continue
		}
		if err := c.Close(); err != nil {
			s.log.Warn("close", "err", err)
		}
	}
}

// countingSink counts store batches for the metrics and sends the
// storage notices of stored batches.
type countingSink struct {
	store   storeBackend
	metrics *metrics
	notify  func(ctx context.Context, batch []*codec.Message)
}

func (c *countingSink) Store(ctx context.Context, batch []*codec.Message) error {
	start := time.Now()
	err := c.store.Store(ctx, batch)
	c.metrics.storeBatch(len(batch), time.Since(start), err)
	if err == nil {
		c.notify(ctx, batch)
	}
	return err
}

// Ping lets the worker tell a store outage from a bad message.
func (c *countingSink) Ping(ctx context.Context) error { return c.store.Ping(ctx) }

// noticeBacklog is how many batches' storage notices may wait for their
// publish; past it the worker waits (the notices are bounded, not dropped).
const noticeBacklog = 16

// noticeTimeout bounds the publish of one batch's storage notices.
const noticeTimeout = 5 * time.Second

// notifyStored tells the nodes that accepted the messages of batch that
// they are stored: through Redis to whichever node (published by
// sendNotices, so the worker goes on meanwhile), or directly in one
// process. A lost notice costs a client its "stored" answer, never data.
func (s *Server) notifyStored(_ context.Context, batch []*codec.Message) {
	if s.cfg.RedisURL == "" {
		if s.watcher != nil {
			for _, m := range batch {
				s.watcher.fire(m.ID)
			}
		}
		return
	}
	// storedNotices copies the ids: batch is the worker's again once
	// Store returns.
	s.notices <- storedNotices(batch)
}

// sendNotices publishes the storage notices notifyStored queues, in
// order, until the channel is closed.
func (s *Server) sendNotices() {
	for n := range s.notices {
		ctx, cancel := context.WithTimeout(context.Background(), noticeTimeout)
		if err := s.bus.Publish(ctx, n); err != nil {
			s.log.Warn("storage notices not sent", "err", err)
		}
		cancel()
	}
}

// Main runs chatgg with the given arguments and environment until ctx ends.
// It returns the process exit code.
func Main(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) int {
	cfg, err := Load(args, getenv, stderr)
	if errors.Is(err, ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "chatgg:", err)
		return 2
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: cfg.LogLevel}))
	s, err := New(ctx, cfg, logger)
	if err != nil {
		logger.Error("start failed", "err", err)
		return 1
	}
	if err := s.Start(); err != nil {
		logger.Error("start failed", "err", err)
		s.closeBackends()
		return 1
	}
	<-ctx.Done()
	logger.Info("shutting down", "timeout", cfg.ShutdownTimeout)
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	if err := s.Shutdown(sctx); err != nil {
		logger.Error("shutdown", "err", err)
		return 1
	}
	logger.Info("stopped")
	return 0
}
