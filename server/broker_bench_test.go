package server

import (
	"fmt"
	"sync"
	"testing"

	"github.com/chatgg/chatgg/codec"
	"github.com/chatgg/chatgg/internal/testsvc"
	"github.com/chatgg/chatgg/mq"
	"github.com/chatgg/chatgg/pubsub"
)

type dropDeliverer struct{}

func (dropDeliverer) Deliver(*codec.Message) {}

// BenchmarkBrokerOneTopic measures one topic's publishes through the
// broker with Redis as bus and queue: every message of a topic goes
// through one shard, in order, so this is a single topic's ceiling on one
// node. inflight publishes wait for their answer at any time.
func BenchmarkBrokerOneTopic(b *testing.B) {
	redisURL := testsvc.Redis(b)
	for _, maxBatch := range []int{256, 1024} {
		b.Run(fmt.Sprintf("batch=%d", maxBatch), func(b *testing.B) {
			prefix := testsvc.UniqueName(b, "bb")
			bus, err := pubsub.NewRedis(pubsub.RedisConfig{URL: redisURL, ChannelPrefix: prefix + ":", Deliverer: dropDeliverer{}, HotWindow: pubsub.HotWindow{Len: 1000}})
			if err != nil {
				b.Fatal(err)
			}
			defer bus.Close()
			q, err := mq.NewRedis(mq.RedisConfig{URL: redisURL, Queue: prefix + ":queue"})
			if err != nil {
				b.Fatal(err)
			}
			defer q.Close()
			br := newBroker(brokerConfig{Bus: bus, Queue: q, MaxBatch: maxBatch})
			defer br.Close()
			ids := codec.NewIDGen(1)
			data := []byte(`"cg0000000000000000000000000000000000000000000000000000000000000"`)
			const inflight = 2048
			sem := make(chan struct{}, inflight)
			var wg sync.WaitGroup
			var mu sync.Mutex
			var firstErr error
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				sem <- struct{}{}
				wg.Add(1)
				m := &codec.Message{ID: ids.Next(1_750_000_000_000), Topic: "room", Kind: codec.KindJSON, Data: data}
				br.Publish(m, func(_ string, err error) {
					if err != nil {
						mu.Lock()
						firstErr = err
						mu.Unlock()
					}
					<-sem
					wg.Done()
				})
			}
			wg.Wait()
			b.StopTimer()
			if firstErr != nil {
				b.Fatal(firstErr)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}
