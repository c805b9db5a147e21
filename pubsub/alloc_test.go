//go:build !race

package pubsub

import (
	"context"
	"testing"
)

func TestLocalPublishDoesNotAllocate(t *testing.T) {
	l := NewLocal(LocalConfig{Deliverer: nopDeliverer{}})
	msgs := benchBatch("room", 100)
	ctx := context.Background()
	if n := testing.AllocsPerRun(100, func() { l.Publish(ctx, msgs) }); n != 0 {
		t.Fatalf("Local.Publish allocates %v times per call, want 0", n)
	}
}
