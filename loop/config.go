// Package loop owns chatgg's WebSocket edge: gnet event loops (one per core)
// that accept TCP connections, parse the HTTP upgrade in place, decode and
// encode frames, keep each connection's state and its subscriptions, and fan
// messages out to local subscribers. There is no goroutine per connection.
//
// What a connection publishes leaves through a Publisher; what the node must
// deliver arrives through Engine.Deliver. Pub/sub, queueing and storage are
// other packages' business; package server plugs them together.
//
// Concurrency: every connection belongs to one loop, and its state is touched
// only on that loop's goroutine. Other goroutines reach a loop through its
// inbox (loopState.post), which the loop drains in one pass.
package loop

import (
	"log/slog"
	"time"

	"github.com/chatgg/chatgg/codec"
)

// Defaults for Config fields left zero.
const (
	DefaultAddr                = ":9001"
	DefaultMaxHeaderBytes      = 8 << 10
	DefaultHandshakeTimeout    = 10 * time.Second
	DefaultIdleTimeout         = 120 * time.Second
	DefaultMaxOutboundBytes    = 1 << 20
	DefaultEchoMaxMessageBytes = 16 << 20
	DefaultMaxMessageBytes     = 64 << 10
	DefaultMaxFrameBytes       = 1 << 20
	DefaultMaxTopicsPerConn    = 256
	DefaultPublishRate         = 1000
	DefaultPublishBurst        = 2000
	DefaultTopic               = "MESSAGES"
	DefaultCloseTimeout        = 5 * time.Second
	DefaultRejectLogInterval   = 10 * time.Second
)

// Publisher is where connections' messages go (met by the server's broker,
// which hands them to pub/sub and the queue).
type Publisher interface {
	// Publish accepts m. It must not block; done is called exactly once,
	// from any goroutine, with the id the message is known by (m.ID, or the
	// original id when m.Key repeats a recent key) or with the error.
	// m belongs to the Publisher from now on and is not modified by loop.
	Publish(m *codec.Message, done func(id string, err error))
}

// Subscriber learns which topics this node has local subscribers for, so the
// bus delivers only those (met by the server's adapter over pubsub buses).
// Calls come from event loops and must not block.
type Subscriber interface {
	// Subscribe is called when a topic gets its first subscriber on this
	// node. ready is called once, from any goroutine, when messages of the
	// topic published from then on are sure to be delivered (the bus
	// confirmed the subscription), or with the error that prevented it.
	Subscribe(topic string, ready func(err error))
	// Unsubscribe is called when a topic's last subscriber on this node leaves.
	Unsubscribe(topic string)
}

// Recoverer finds the messages a reconnecting client missed (met by the
// server, from the bus's hot window and the store).
type Recoverer interface {
	// Recover looks up the messages of topic after the one with id after,
	// oldest first. It must not block; done is called once, from any
	// goroutine. recovered is false when continuity cannot be vouched for.
	Recover(topic, after string, done func(msgs []*codec.Message, recovered bool, err error))
}

// StoreWatcher tells when a message is in the store, for pubs with
// "stored":true (met by the server).
type StoreWatcher interface {
	// WatchStored calls done once, from any goroutine, when the message id
	// of topic is stored, or with the error that stops it from knowing.
	WatchStored(topic, id string, done func(err error))
}

// Config configures an Engine. Zero fields take the defaults above.
type Config struct {
	// Addr is the TCP listen address (default ":9001").
	Addr string
	// Loops is the number of event loops (default: GOMAXPROCS).
	Loops int
	// MaxHeaderBytes bounds the HTTP upgrade request head (default 8 KiB);
	// larger requests are answered 431.
	MaxHeaderBytes int
	// HandshakeTimeout closes connections that have not completed the
	// upgrade in time (default 10 s).
	HandshakeTimeout time.Duration
	// IdleTimeout closes a connection silent this long; it is pinged when
	// silent for half of it (default 120 s).
	IdleTimeout time.Duration
	// CloseTimeout bounds how long a closing connection may take to flush
	// and answer our close frame (default 5 s).
	CloseTimeout time.Duration
	// MaxOutboundBytes bounds the bytes queued for writing to one connection
	// (default 1 MiB); a connection over it is closed with 4008.
	MaxOutboundBytes int
	// EchoMaxMessageBytes bounds messages on /echo (default 16 MiB).
	EchoMaxMessageBytes int
	// MaxMessageBytes bounds published message data on /ws and raw mode
	// (default 64 KiB).
	MaxMessageBytes int
	// MaxFrameBytes bounds one /ws JSON message (default 1 MiB); requests
	// between MaxMessageBytes and this get an error op, larger ones close
	// the connection with 1009.
	MaxFrameBytes int
	// MaxTopicsPerConn bounds the subscriptions of one connection (default 256).
	MaxTopicsPerConn int
	// PublishRate and PublishBurst configure each connection's token bucket
	// (defaults 1000 messages/s, burst 2000).
	PublishRate  float64
	PublishBurst float64
	// DefaultTopic is the topic of raw connections on paths other than
	// /raw/{topic}, /ws and /echo (default "MESSAGES").
	DefaultTopic string
	// Node is this node's index, part of every message id.
	Node uint16
	// IDs generates message ids; nil makes one for Node.
	IDs *codec.IDGen
	// Publisher receives published messages; nil rejects publishes.
	Publisher Publisher
	// Subscriber is told of node-wide subscription changes; may be nil.
	Subscriber Subscriber
	// StoreWatcher answers pubs with "stored":true; nil refuses them.
	StoreWatcher StoreWatcher
	// Recoverer answers subs with "after"; nil refuses them.
	Recoverer Recoverer
	// ProxyProtocol requires a PROXY protocol v1 or v2 header before the
	// upgrade request; connections without one are dropped.
	ProxyProtocol bool
	// CloseWindow spreads the 1001 closes of Shutdown over this long, so
	// clients do not all reconnect at once (default 0: all at once).
	CloseWindow time.Duration
	// Logger receives the engine's logs; nil discards them.
	Logger *slog.Logger

	// Auth verifies the tokens clients connect with (docs/security.md);
	// nil: tokens are ignored and every connection is anonymous.
	Auth Authenticator
	// AllowAnonymous lets connections without a token in when Auth is set.
	AllowAnonymous bool
	// AnonymousSubTopics and AnonymousPubTopics are the topic patterns
	// (see MatchTopic) anonymous connections may subscribe and publish to.
	// nil: every topic; empty and not nil: none.
	AnonymousSubTopics, AnonymousPubTopics []string
	// AllowedOrigins lists the Origin values a browser upgrade may carry:
	// "scheme://host[:port]", "scheme://*.domain" for any subdomain, or "*".
	// nil: every origin. Requests without an Origin header are not checked.
	AllowedOrigins []string
	// MaxConns bounds the TCP connections on the port, upgraded or not;
	// an upgrade past it is answered 503 (default 0: no limit).
	MaxConns int
	// MaxConnsPerIP bounds the connections from one client address (an
	// IPv6 /64); an upgrade past it is answered 429 (default 0: no limit).
	MaxConnsPerIP int
	// UpgradesPerSecPerIP is the rate of upgrades allowed from one client
	// address, a token bucket of as many; past it upgrades are answered 429
	// (default 0: no limit).
	UpgradesPerSecPerIP float64
	// RejectLogInterval is the least time between two log lines about
	// refusals for the same reason (default 10 s).
	RejectLogInterval time.Duration
}

func (c *Config) setDefaults() {
	if c.Addr == "" {
		c.Addr = DefaultAddr
	}
	if c.MaxHeaderBytes <= 0 {
		c.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if c.HandshakeTimeout <= 0 {
		c.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = DefaultIdleTimeout
	}
	if c.CloseTimeout <= 0 {
		c.CloseTimeout = DefaultCloseTimeout
	}
	if c.MaxOutboundBytes <= 0 {
		c.MaxOutboundBytes = DefaultMaxOutboundBytes
	}
	if c.EchoMaxMessageBytes <= 0 {
		c.EchoMaxMessageBytes = DefaultEchoMaxMessageBytes
	}
	if c.MaxMessageBytes <= 0 {
		c.MaxMessageBytes = DefaultMaxMessageBytes
	}
	if c.MaxFrameBytes <= 0 {
		c.MaxFrameBytes = DefaultMaxFrameBytes
	}
	if c.MaxFrameBytes < c.MaxMessageBytes {
		c.MaxFrameBytes = c.MaxMessageBytes + 4<<10
	}
	if c.MaxTopicsPerConn <= 0 {
		c.MaxTopicsPerConn = DefaultMaxTopicsPerConn
	}
	if c.PublishRate <= 0 {
		c.PublishRate = DefaultPublishRate
	}
	if c.PublishBurst <= 0 {
		c.PublishBurst = DefaultPublishBurst
	}
	if c.DefaultTopic == "" {
		c.DefaultTopic = DefaultTopic
	}
	if c.IDs == nil {
		c.IDs = codec.NewIDGen(c.Node)
	}
	if c.RejectLogInterval <= 0 {
		c.RejectLogInterval = DefaultRejectLogInterval
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}
