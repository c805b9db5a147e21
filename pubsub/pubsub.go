// Package pubsub owns fan-out between nodes: an in-process bus (Local, the
// embedded default) and Redis pub/sub (Redis), plus the idempotency-key dedup
// window (LocalDedup, RedisDedup). Delivery to local clients is the
// Deliverer's job: pubsub hands every message of a topic the node subscribes
// to the Deliverer once, and the Deliverer (the loop engine) filters and
// writes it to its connections.
//
// Local and Redis share one method set, which server declares as the bus
// interface it needs:
//
//	Publish(ctx context.Context, batch []*codec.Message) error // in order
//	Subscribe(topic string)   // node-wide: first local subscriber arrived
//	Unsubscribe(topic string) // node-wide: last local subscriber left
//	Ping(ctx context.Context) error
//	Close() error
//
// LocalDedup and RedisDedup likewise share Claim and Release.
package pubsub

import (
	"errors"
	"log/slog"

	"github.com/chatgg/chatgg/codec"
	"github.com/chatgg/chatgg/internal/ratelog"
)

// Deliverer is where messages arriving from the bus go (met by the loop
// engine).
type Deliverer interface {
	// Deliver hands m to every local subscriber of m.Topic. It must not
	// block; m is read-only and may be shared by several goroutines.
	Deliver(m *codec.Message)
}

// Errors returned by the buses.
var (
	// ErrClosed is returned by a bus or dedup window used after Close.
	ErrClosed = errors.New("pubsub: closed")
	// ErrSubscriptionDown is returned by Redis.Ping while the node's
	// subscription connection is not established.
	ErrSubscriptionDown = errors.New("pubsub: redis subscription connection down")
)

// discardLogger returns l, or a logger that drops everything when l is nil.
func discardLogger(l *slog.Logger) *slog.Logger {
	if l != nil {
		return l
	}
	return slog.New(slog.DiscardHandler)
}

// logLimiter is the shared rate limit on repeated log lines.
type logLimiter = ratelog.Limiter
