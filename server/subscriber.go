package server

import (
	"context"
	"fmt"
	"time"
)

// subscribeTimeout bounds how long a WebSocket sub waits for the bus to
// confirm a new topic before it is answered with an error.
const subscribeTimeout = 10 * time.Second

// confirmer is a bus that can say when a subscription is active (pubsub.Redis).
type confirmer interface {
	SubscribeWait(ctx context.Context, topic string) error
}

// subscriber adapts a pubsub bus to loop.Subscriber: a sub is acked only once
// the bus confirmed the topic, so no message published after the ack is
// missed.
type subscriber struct {
	bus busBackend
}

func (s subscriber) Subscribe(topic string, ready func(error)) {
	c, ok := s.bus.(confirmer)
	if !ok {
		s.bus.Subscribe(topic) // in-process: active at once
		ready(nil)
		return
	}
	go func() { // the loop must not wait for Redis
		ctx, cancel := context.WithTimeout(context.Background(), subscribeTimeout)
		defer cancel()
		if err := c.SubscribeWait(ctx, topic); err != nil {
			ready(fmt.Errorf("pub/sub did not confirm the subscription: %w", err))
			return
		}
		ready(nil)
	}()
}

func (s subscriber) Unsubscribe(topic string) { s.bus.Unsubscribe(topic) }
