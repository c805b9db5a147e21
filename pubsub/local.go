package pubsub

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/chatgg/chatgg/codec"
)

// LocalConfig configures a Local bus.
type LocalConfig struct {
	// Deliverer receives every published message. Required.
	Deliverer Deliverer
	// HotWindow bounds each topic's window of recent messages (see
	// Recent). Zero fields take the defaults; Len < 0 disables it.
	HotWindow HotWindow
}

// Local is the in-process bus of a single-node deployment: a publish is
// delivered straight to the node's own Deliverer. Safe for concurrent use.
type Local struct {
	d      Deliverer
	hot    localWindows
	closed atomic.Bool
}

// NewLocal returns a Local bus delivering to cfg.Deliverer. It panics if
// cfg.Deliverer is nil (a wiring mistake at start-up).
func NewLocal(cfg LocalConfig) *Local {
	if cfg.Deliverer == nil {
		panic("pubsub: LocalConfig.Deliverer is nil")
	}
	return &Local{d: cfg.Deliverer, hot: localWindows{cfg: cfg.HotWindow.withDefaults()}}
}

// Publish calls the Deliverer for each message of batch, in order, on the
// caller's goroutine, and returns once all are delivered. It returns
// ctx.Err() if ctx is already done, and ErrClosed after Close.
func (l *Local) Publish(ctx context.Context, batch []*codec.Message) error {
	if l.closed.Load() {
		return ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	now := time.Now()
	for _, m := range batch {
		l.hot.add(m, now) // before delivery, as on Redis
		l.d.Deliver(m)
	}
	return nil
}

// Subscribe does nothing: every message published on the node reaches its
// Deliverer, which filters by its own subscriptions.
func (l *Local) Subscribe(topic string) {}

// Unsubscribe does nothing (see Subscribe).
func (l *Local) Unsubscribe(topic string) {}

// Ping returns nil until Close, then ErrClosed.
func (l *Local) Ping(ctx context.Context) error {
	if l.closed.Load() {
		return ErrClosed
	}
	return nil
}

// Close makes later Publish and Ping calls fail with ErrClosed. It is
// idempotent.
func (l *Local) Close() error {
	l.closed.Store(true)
	return nil
}
