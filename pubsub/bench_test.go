package pubsub

import (
	"context"
	"fmt"
	"testing"

	"github.com/chatgg/chatgg/codec"
	"github.com/chatgg/chatgg/internal/testsvc"
)

// nopDeliverer drops everything.
type nopDeliverer struct{}

func (nopDeliverer) Deliver(*codec.Message) {}

// benchBatch returns batch messages of 100-byte JSON payloads.
func benchBatch(topic string, batch int) []*codec.Message {
	b := batchOf(topic, 0, batch)
	for _, m := range b {
		m.Data = fmt.Appendf(nil, `{"text":"%089d"}`, 0)
	}
	return b
}

func BenchmarkLocalPublish(b *testing.B) {
	for _, batch := range []int{1, 100} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			l := NewLocal(LocalConfig{Deliverer: nopDeliverer{}})
			msgs := benchBatch("room", batch)
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				if err := l.Publish(ctx, msgs); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

// BenchmarkRedisPublish publishes to a topic nobody subscribes, so it
// measures the publishing side: encoding, the round trip and Redis.
// parallel runs GOMAXPROCS publishers, which rueidis pipelines together.
func BenchmarkRedisPublish(b *testing.B) {
	url := testsvc.Redis(b)
	for _, batch := range []int{1, 100} {
		for _, parallel := range []bool{false, true} {
			b.Run(fmt.Sprintf("batch=%d/parallel=%v", batch, parallel), func(b *testing.B) {
				bus, err := NewRedis(RedisConfig{
					URL:           url,
					ChannelPrefix: testsvc.UniqueName(b, "bench") + ":",
					Deliverer:     nopDeliverer{},
				})
				if err != nil {
					b.Fatal(err)
				}
				defer bus.Close()
				msgs := benchBatch("room", batch)
				ctx := context.Background()
				b.ReportAllocs()
				if parallel {
					b.RunParallel(func(pb *testing.PB) {
						for pb.Next() {
							if err := bus.Publish(ctx, msgs); err != nil {
								b.Error(err)
								return
							}
						}
					})
				} else {
					for b.Loop() {
						if err := bus.Publish(ctx, msgs); err != nil {
							b.Fatal(err)
						}
					}
				}
				b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "msgs/s")
			})
		}
	}
}

// BenchmarkRedisRoundTrip publishes on one node and waits for delivery on
// another, one message at a time: publish plus fan-in latency.
func BenchmarkRedisRoundTrip(b *testing.B) {
	url := testsvc.Redis(b)
	prefix := testsvc.UniqueName(b, "bench") + ":"
	got := make(chan struct{}, 1)
	sub, err := NewRedis(RedisConfig{URL: url, ChannelPrefix: prefix, Deliverer: signalDeliverer(got)})
	if err != nil {
		b.Fatal(err)
	}
	defer sub.Close()
	pub, err := NewRedis(RedisConfig{URL: url, ChannelPrefix: prefix, Deliverer: nopDeliverer{}})
	if err != nil {
		b.Fatal(err)
	}
	defer pub.Close()
	if err := sub.SubscribeWait(context.Background(), "room"); err != nil {
		b.Fatal(err)
	}
	msgs := benchBatch("room", 1)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if err := pub.Publish(ctx, msgs); err != nil {
			b.Fatal(err)
		}
		<-got
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

type signalDeliverer chan struct{}

func (s signalDeliverer) Deliver(*codec.Message) { s <- struct{}{} }

func BenchmarkLocalDedupClaim(b *testing.B) {
	d := NewLocalDedup(0)
	keys := make([]string, 1<<16)
	for i := range keys {
		keys[i] = fmt.Sprint("key", i)
	}
	ctx := context.Background()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		d.Claim(ctx, "room", keys[i&(len(keys)-1)], "id")
		i++
	}
}
