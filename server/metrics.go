package server

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/chatgg/chatgg/codec"
	"github.com/chatgg/chatgg/internal/ratelog"
	"github.com/chatgg/chatgg/loop"
)

// metrics is the process's Prometheus registry and the instruments the
// server updates itself; the engine's and the queue's counters are read at
// scrape time by a collector.
type metrics struct {
	reg *prometheus.Registry

	engine *loop.Engine
	queue  queueBackend

	publishedTotal  prometheus.Counter
	publishErrors   *prometheus.CounterVec
	deliveryLatency prometheus.Histogram
	storeBatches    *prometheus.CounterVec
	storeMessages   prometheus.Counter
	storeSeconds    prometheus.Histogram
	restRequests    *prometheus.CounterVec

	// rejMu guards rejections: refusals on the REST port by reason,
	// exported with the engine's as chatgg_rejections_total{port,reason}
	// by the stateCollector (one metric family from two sources).
	rejMu      sync.Mutex
	rejections map[[2]string]int64
}

func newMetrics() *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	m.publishedTotal = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "chatgg_messages_published_total",
		Help: "Messages accepted by pub/sub and the queue on this node.",
	})
	m.publishErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "chatgg_publish_errors_total",
		Help: "Publishes refused or failed, by kind.",
	}, []string{"kind"})
	m.deliveryLatency = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "chatgg_delivery_latency_seconds",
		Help:    "Time from a message's acceptance (its id time) to its hand-off to this node's loops.",
		Buckets: []float64{.0005, .001, .002, .005, .01, .02, .05, .1, .2, .5, 1, 2, 5},
	})
	m.storeBatches = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "chatgg_store_batches_total",
		Help: "Batches handed to the store by workers, by result.",
	}, []string{"result"})
	m.storeMessages = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "chatgg_store_messages_total",
		Help: "Messages stored by this node's worker.",
	})
	m.storeSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "chatgg_store_batch_seconds",
		Help:    "Duration of store batch writes.",
		Buckets: prometheus.ExponentialBuckets(.001, 2, 14),
	})
	m.restRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "chatgg_http_requests_total",
		Help: "REST requests, by route and status.",
	}, []string{"route", "status"})
	m.rejections = make(map[[2]string]int64)
	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.publishedTotal, m.publishErrors, m.deliveryLatency,
		m.storeBatches, m.storeMessages, m.storeSeconds, m.restRequests,
		&stateCollector{m: m},
	)
	return m
}

// rejected counts a refusal on port ("http") for reason.
func (m *metrics) rejected(port, reason string) {
	m.rejMu.Lock()
	m.rejections[[2]string{port, reason}]++
	m.rejMu.Unlock()
}

// rejectedCount is the running total of rejected(port, reason).
func (m *metrics) rejectedCount(port, reason string) int64 {
	m.rejMu.Lock()
	defer m.rejMu.Unlock()
	return m.rejections[[2]string{port, reason}]
}

// rateLog lets a repeated log line through at most once per interval per
// key, so a flood of bad requests cannot flood the log.
type rateLog struct{ ratelog.Keyed }

func (l *rateLog) allow(key string, now time.Time) bool {
	ok, _ := l.Allow(key, now)
	return ok
}

func (m *metrics) published(n int) { m.publishedTotal.Add(float64(n)) }

func (m *metrics) publishError(err error) {
	kind := "backend"
	switch {
	case errors.Is(err, ErrBusy):
		kind = "busy"
	case errors.Is(err, ErrStopping):
		kind = "stopping"
	case errors.Is(err, ErrNotDelivered):
		kind = "pubsub"
	case errors.Is(err, context.DeadlineExceeded):
		kind = "timeout"
	}
	m.publishErrors.WithLabelValues(kind).Inc()
}

func (m *metrics) observeDelivery(msg *codec.Message) {
	lat := time.Now().UnixMilli() - msg.TS
	if lat < 0 {
		lat = 0
	}
	m.deliveryLatency.Observe(float64(lat) / 1000)
}

func (m *metrics) storeBatch(n int, d time.Duration, err error) {
	m.storeSeconds.Observe(d.Seconds())
	if err != nil {
		m.storeBatches.WithLabelValues("error").Inc()
		return
	}
	m.storeBatches.WithLabelValues("ok").Inc()
	m.storeMessages.Add(float64(n))
}

// stateCollector reads the engine's and the queue's state at scrape time.
type stateCollector struct{ m *metrics }

var (
	descConns     = prometheus.NewDesc("chatgg_connections", "Open TCP connections on the WebSocket port.", nil, nil)
	descUpgraded  = prometheus.NewDesc("chatgg_upgrades_total", "WebSocket upgrades completed.", nil, nil)
	descRejected  = prometheus.NewDesc("chatgg_upgrades_rejected_total", "Upgrades refused, by HTTP status.", []string{"status"}, nil)
	descMsgIn     = prometheus.NewDesc("chatgg_messages_in_total", "WebSocket data messages received.", nil, nil)
	descMsgOut    = prometheus.NewDesc("chatgg_messages_out_total", "Message frames written to WebSocket clients.", nil, nil)
	descCloses    = prometheus.NewDesc("chatgg_closes_total", "Connections closed by the server, by close code.", []string{"code"}, nil)
	descSlow      = prometheus.NewDesc("chatgg_slow_consumers_total", "Connections closed with 4008 for exceeding their outbound limit.", nil, nil)
	descHandshake = prometheus.NewDesc("chatgg_handshake_timeouts_total", "Connections closed before completing the upgrade.", nil, nil)
	descQueue     = prometheus.NewDesc("chatgg_queue_messages", "Messages in the queue, by state (queued, processing, dead).", []string{"state"}, nil)
	descRejects   = prometheus.NewDesc("chatgg_rejections_total", "Connections and requests refused, by port (ws, http) and reason (docs/security.md).", []string{"port", "reason"}, nil)
)

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descConns, descUpgraded, descRejected, descMsgIn, descMsgOut, descCloses, descSlow, descHandshake, descQueue, descRejects} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	if e := c.m.engine; e != nil {
		st := e.Stats()
		ch <- prometheus.MustNewConstMetric(descConns, prometheus.GaugeValue, float64(st.Conns))
		ch <- prometheus.MustNewConstMetric(descUpgraded, prometheus.CounterValue, float64(st.Upgraded))
		ch <- prometheus.MustNewConstMetric(descMsgIn, prometheus.CounterValue, float64(st.MessagesIn))
		ch <- prometheus.MustNewConstMetric(descMsgOut, prometheus.CounterValue, float64(st.MessagesOut))
		ch <- prometheus.MustNewConstMetric(descSlow, prometheus.CounterValue, float64(st.SlowConsumers))
		ch <- prometheus.MustNewConstMetric(descHandshake, prometheus.CounterValue, float64(st.HandshakeTimeout))
		for status, n := range st.UpgradeRejected {
			ch <- prometheus.MustNewConstMetric(descRejected, prometheus.CounterValue, float64(n), strconv.Itoa(status))
		}
		for code, n := range st.Closed {
			ch <- prometheus.MustNewConstMetric(descCloses, prometheus.CounterValue, float64(n), strconv.Itoa(int(code)))
		}
		for reason, n := range st.Rejections {
			ch <- prometheus.MustNewConstMetric(descRejects, prometheus.CounterValue, float64(n), "ws", reason)
		}
	}
	c.m.rejMu.Lock()
	for k, n := range c.m.rejections {
		ch <- prometheus.MustNewConstMetric(descRejects, prometheus.CounterValue, float64(n), k[0], k[1])
	}
	c.m.rejMu.Unlock()
	if q := c.m.queue; q != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if st, err := q.Stats(ctx); err == nil {
			ch <- prometheus.MustNewConstMetric(descQueue, prometheus.GaugeValue, float64(st.Depth), "queued")
			ch <- prometheus.MustNewConstMetric(descQueue, prometheus.GaugeValue, float64(st.Processing), "processing")
			ch <- prometheus.MustNewConstMetric(descQueue, prometheus.GaugeValue, float64(st.Dead), "dead")
		}
	}
}
