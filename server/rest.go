package server

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"

	"github.com/chatgg/chatgg/codec"
	"github.com/chatgg/chatgg/web"
)

//go:embed openapi.json
var openapiJSON []byte

// REST limits.
const (
	maxBatchMessages = 1000
	defaultPageSize  = 100
	maxPageSize      = 1000
	restTimeout      = 10 * time.Second
)

// restQueue is the optional admin side of the Redis queue.
type restQueue interface {
	ReplayDead(ctx context.Context) (int, error)
}

func (s *Server) newHTTPServer() *fasthttp.Server {
	metricsHandler := fasthttpadaptor.NewFastHTTPHandler(promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{}))
	return &fasthttp.Server{
		Name:                  "chatgg",
		Handler:               func(ctx *fasthttp.RequestCtx) { s.route(ctx, metricsHandler) },
		MaxRequestBodySize:    maxBatchMessages*s.cfg.MaxMessageBytes/4 + 1<<20,
		ReadTimeout:           30 * time.Second,
		WriteTimeout:          30 * time.Second,
		IdleTimeout:           2 * time.Minute,
		Logger:                fasthttpLogger{s},
		NoDefaultServerHeader: true,
		ErrorHandler: func(ctx *fasthttp.RequestCtx, err error) {
			if errors.Is(err, fasthttp.ErrBodyTooLarge) {
				writeError(ctx, fasthttp.StatusRequestEntityTooLarge, "body too large")
				return
			}
			writeError(ctx, fasthttp.StatusBadRequest, "malformed request")
		},
	}
}

type fasthttpLogger struct{ s *Server }

func (l fasthttpLogger) Printf(format string, args ...any) {
	l.s.log.Debug(fmt.Sprintf(format, args...))
}

// route dispatches a request. The routes are few and fixed, so a switch
// beats a router dependency.
func (s *Server) route(ctx *fasthttp.RequestCtx, metricsHandler fasthttp.RequestHandler) {
	path := string(ctx.Path())
	route := path
	defer func() { s.metrics.restRequests.WithLabelValues(route, strconv.Itoa(ctx.Response.StatusCode())).Inc() }()

	switch path {
	case "/healthz":
		route = path
		if method(ctx, "GET") {
			writeJSON(ctx, fasthttp.StatusOK, []byte(`{"status":"ok"}`))
		}
		return
	case "/readyz":
		if method(ctx, "GET") {
			s.ready(ctx)
		}
		return
	case "/metrics":
		if method(ctx, "GET") {
			metricsHandler(ctx)
		}
		return
	case "/v1/openapi.json":
		if method(ctx, "GET") {
			writeJSON(ctx, fasthttp.StatusOK, openapiJSON)
		}
		return
	case "/v1/topics":
		if s.authorized(ctx, scopeAdmin) && method(ctx, "GET") && s.serving(ctx) {
			s.listTopics(ctx)
		}
		return
	case "/v1/messages":
		if s.authorized(ctx, scopePublish) && method(ctx, "POST") && s.serving(ctx) {
			s.publishBatch(ctx)
		}
		return
	case "/v1/queue":
		if s.authorized(ctx, scopeAdmin) && method(ctx, "GET") {
			s.queueStats(ctx)
		}
		return
	case "/v1/queue/dead/replay":
		if s.authorized(ctx, scopeAdmin) && method(ctx, "POST") {
			s.replayDead(ctx)
		}
		return
	}
	if topic, ok := topicPath(path); ok {
		route = "/v1/topics/{topic}/messages"
		switch string(ctx.Method()) {
		case "POST":
			if s.authorized(ctx, scopePublish) && validTopic(ctx, topic) && s.serving(ctx) {
				s.publishOne(ctx, topic)
			}
		case "GET":
			if s.authorized(ctx, scopeHistory) && validTopic(ctx, topic) {
				s.history(ctx, topic)
			}
		default:
			ctx.Response.Header.Set("Allow", "GET, POST")
			writeError(ctx, fasthttp.StatusMethodNotAllowed, "method not allowed")
		}
		return
	}
	if web.Handler(ctx) {
		return // the chat page: a fixed set of paths, so path is a bounded route label
	}
	route = "other"
	writeError(ctx, fasthttp.StatusNotFound, "no such route")
}

// validTopic answers 400 for an invalid topic name.
func validTopic(ctx *fasthttp.RequestCtx, topic string) bool {
	if !codec.ValidTopicString(topic) {
		writeError(ctx, fasthttp.StatusBadRequest, "invalid topic name: 1 to 128 bytes of [A-Za-z0-9_.:@/-]")
		return false
	}
	return true
}

// authorized checks the request's API key for scope: 401 without a known
// key, 403 without the scope. With no keys configured REST is open.
func (s *Server) authorized(ctx *fasthttp.RequestCtx, need scope) bool {
	if s.apiKeys == nil {
		return true
	}
	const prefix = "bearer "
	h := ctx.Request.Header.Peek("Authorization")
	if len(h) <= len(prefix) || !bytes.EqualFold(h[:len(prefix)], []byte(prefix)) {
		s.restRejected(ctx, "no_api_key")
		ctx.Response.Header.Set("WWW-Authenticate", `Bearer realm="chatgg"`)
		writeError(ctx, fasthttp.StatusUnauthorized, "API key required: Authorization: Bearer <key>")
		return false
	}
	k, err := s.apiKeys.lookup(bytes.TrimSpace(h[len(prefix):]))
	if err != nil {
		s.restRejected(ctx, "bad_api_key")
		ctx.Response.Header.Set("WWW-Authenticate", `Bearer realm="chatgg", error="invalid_token"`)
		writeError(ctx, fasthttp.StatusUnauthorized, "invalid API key")
		return false
	}
	if k.scopes&need == 0 {
		s.restRejected(ctx, "scope")
		writeError(ctx, fasthttp.StatusForbidden, "API key lacks the "+need.String()+" scope")
		return false
	}
	return true
}

// restRejected counts a refused REST request and logs it at most once per
// interval per reason; the key presented is never logged.
func (s *Server) restRejected(ctx *fasthttp.RequestCtx, reason string) {
	s.metrics.rejected("http", reason)
	if s.rejLog.allow(reason, time.Now()) {
		s.log.Info("request refused", "reason", reason, "peer", ctx.RemoteIP().String(),
			"path", string(ctx.Path()), "total", s.metrics.rejectedCount("http", reason))
	}
}

// topicPath matches /v1/topics/{topic}/messages. Topics may contain '/', so
// the topic is everything between the prefix and the suffix.
func topicPath(path string) (string, bool) {
	const prefix, suffix = "/v1/topics/", "/messages"
	if len(path) <= len(prefix)+len(suffix) || path[:len(prefix)] != prefix || path[len(path)-len(suffix):] != suffix {
		return "", false
	}
	return path[len(prefix) : len(path)-len(suffix)], true
}

func method(ctx *fasthttp.RequestCtx, want string) bool {
	if string(ctx.Method()) == want {
		return true
	}
	ctx.Response.Header.Set("Allow", want)
	writeError(ctx, fasthttp.StatusMethodNotAllowed, "method not allowed")
	return false
}

// serving answers 503 on a worker-only process.
func (s *Server) serving(ctx *fasthttp.RequestCtx) bool {
	if s.broker == nil {
		writeError(ctx, fasthttp.StatusServiceUnavailable, "this node runs the worker role only")
		return false
	}
	return true
}

func writeJSON(ctx *fasthttp.RequestCtx, status int, body []byte) {
	ctx.SetStatusCode(status)
	ctx.SetContentType("application/json")
	ctx.SetBody(body)
}

// writeError answers {"error":{"code","message"}}.
func writeError(ctx *fasthttp.RequestCtx, status int, msg string) {
	b := make([]byte, 0, 64+len(msg))
	b = append(b, `{"error":{"code":`...)
	b = strconv.AppendInt(b, int64(status), 10)
	b = append(b, `,"message":`...)
	b = codec.AppendJSONString(b, []byte(msg))
	b = append(b, "}}"...)
	writeJSON(ctx, status, b)
}

// publishStatus maps a publish error to its HTTP status.
func publishStatus(err error) int {
	switch {
	case errors.Is(err, ErrBusy):
		return fasthttp.StatusTooManyRequests
	case errors.Is(err, ErrKeyInFlight):
		return fasthttp.StatusConflict
	default:
		return fasthttp.StatusServiceUnavailable
	}
}

// newMessage builds a message entering through REST; the id is assigned here.
func (s *Server) newMessage(topic string, kind codec.Kind, data []byte, key string) *codec.Message {
	now := time.Now().UnixMilli()
	return &codec.Message{ID: s.ids.Next(now), Topic: topic, TS: now, Kind: kind, Key: key, Data: data}
}

// publishOne handles POST /v1/topics/{topic}/messages.
func (s *Server) publishOne(ctx *fasthttp.RequestCtx, topic string) {
	body := ctx.PostBody()
	if len(body) > s.cfg.MaxMessageBytes {
		writeError(ctx, fasthttp.StatusRequestEntityTooLarge, fmt.Sprintf("message over %d bytes", s.cfg.MaxMessageBytes))
		return
	}
	kind := codec.KindBinary
	if isJSON(ctx.Request.Header.ContentType()) {
		if !codec.ValidJSON(body) {
			writeError(ctx, fasthttp.StatusBadRequest, "body is not valid JSON")
			return
		}
		kind = codec.KindJSON
	}
	key := string(ctx.Request.Header.Peek("Idempotency-Key"))
	if len(key) > codec.MaxKeyBytes {
		writeError(ctx, fasthttp.StatusBadRequest, fmt.Sprintf("Idempotency-Key over %d bytes", codec.MaxKeyBytes))
		return
	}
	m := s.newMessage(topic, kind, bytes.Clone(body), key)
	rctx, cancel := context.WithTimeout(context.Background(), restTimeout)
	defer cancel()
	id, err := s.broker.PublishWait(rctx, m)
	if err != nil {
		writeError(ctx, publishStatus(err), "publish failed: "+err.Error())
		return
	}
	writeJSON(ctx, fasthttp.StatusAccepted, appendIDTS(nil, id))
}

func appendIDTS(b []byte, id string) []byte {
	b = append(b, `{"id":"`...)
	b = append(b, id...)
	b = append(b, `","ts":`...)
	b = strconv.AppendInt(b, codec.IDTime(id), 10)
	return append(b, '}')
}

func isJSON(ct []byte) bool {
	if i := bytes.IndexByte(ct, ';'); i >= 0 {
		ct = ct[:i]
	}
	ct = bytes.TrimSpace(ct)
	return bytes.EqualFold(ct, []byte("application/json"))
}

// batchItem is one entry of POST /v1/messages.
type batchItem struct {
	Topic string          `json:"topic"`
	Data  json.RawMessage `json:"data"`
	Key   string          `json:"key,omitempty"`
}

// publishBatch handles POST /v1/messages: up to 1000 messages, each
// answered with an id or an error, in request order.
func (s *Server) publishBatch(ctx *fasthttp.RequestCtx) {
	if !isJSON(ctx.Request.Header.ContentType()) {
		writeError(ctx, fasthttp.StatusUnsupportedMediaType, "Content-Type must be application/json")
		return
	}
	var items []batchItem
	if err := json.Unmarshal(ctx.PostBody(), &items); err != nil {
		writeError(ctx, fasthttp.StatusBadRequest, "body must be a JSON array of {topic, data, key?}")
		return
	}
	if len(items) == 0 || len(items) > maxBatchMessages {
		writeError(ctx, fasthttp.StatusBadRequest, fmt.Sprintf("a batch holds 1 to %d messages", maxBatchMessages))
		return
	}
	type result struct {
		id     string
		status int
		msg    string
	}
	results := make([]result, len(items))
	done := make(chan struct{}, len(items))
	pending := 0
	for i, it := range items {
		switch {
		case !codec.ValidTopicString(it.Topic):
			results[i] = result{status: 400, msg: "invalid topic name"}
			continue
		case len(it.Data) == 0:
			results[i] = result{status: 400, msg: "missing data"}
			continue
		case len(it.Data) > s.cfg.MaxMessageBytes:
			results[i] = result{status: 413, msg: "message data too large"}
			continue
		case len(it.Key) > codec.MaxKeyBytes:
			results[i] = result{status: 400, msg: "key too long"}
			continue
		}
		i := i
		pending++
		s.broker.Publish(s.newMessage(it.Topic, codec.KindJSON, []byte(it.Data), it.Key), func(id string, err error) {
			if err != nil {
				results[i] = result{status: publishStatus(err), msg: "publish failed: " + err.Error()}
			} else {
				results[i] = result{id: id}
			}
			done <- struct{}{}
		})
	}
	timeout := time.NewTimer(restTimeout)
	defer timeout.Stop()
	for ; pending > 0; pending-- {
		select {
		case <-done:
		case <-timeout.C:
			writeError(ctx, fasthttp.StatusServiceUnavailable, "publish timed out")
			return
		}
	}
	status := fasthttp.StatusAccepted
	b := []byte(`{"results":[`)
	for i, r := range results {
		if i > 0 {
			b = append(b, ',')
		}
		if r.status != 0 {
			status = fasthttp.StatusMultiStatus
			b = append(b, `{"error":{"code":`...)
			b = strconv.AppendInt(b, int64(r.status), 10)
			b = append(b, `,"message":`...)
			b = codec.AppendJSONString(b, []byte(r.msg))
			b = append(b, "}}"...)
			continue
		}
		b = appendIDTS(b, r.id)
	}
	b = append(b, "]}"...)
	writeJSON(ctx, status, b)
}

// history handles GET /v1/topics/{topic}/messages?after=<id>&limit=<n>
// [&source=store].
func (s *Server) history(ctx *fasthttp.RequestCtx, topic string) {
	args := ctx.QueryArgs()
	after := string(args.Peek("after"))
	if after != "" && !codec.ValidID(after) {
		writeError(ctx, fasthttp.StatusBadRequest, "after must be a message id")
		return
	}
	// source=store lists only what the store holds: whether a message is
	// stored yet (bench e2e measures publish-to-stored with it).
	storeOnly := false
	switch src := string(args.Peek("source")); src {
	case "", "all":
	case "store":
		storeOnly = true
	default:
		writeError(ctx, fasthttp.StatusBadRequest, "source must be all or store")
		return
	}
	limit := defaultPageSize
	if v := args.Peek("limit"); len(v) > 0 {
		n, err := strconv.Atoi(string(v))
		if err != nil || n < 1 || n > maxPageSize {
			writeError(ctx, fasthttp.StatusBadRequest, fmt.Sprintf("limit must be 1 to %d", maxPageSize))
			return
		}
		limit = n
	}
	rctx, cancel := context.WithTimeout(context.Background(), restTimeout)
	defer cancel()
	msgs, err := s.store.History(rctx, topic, after, limit+1)
	if err != nil {
		s.log.Warn("history read failed", "topic", topic, "err", err)
		writeError(ctx, fasthttp.StatusServiceUnavailable, "history unavailable")
		return
	}
	// Workers store batches out of order, so a message may be stored after
	// a newer one a client already paged past. The hot window holds the
	// recent messages whether stored or not: merged in, every message is
	// visible before a cursor can pass it.
	if rr, ok := s.bus.(recentReader); ok && !storeOnly {
		hot, _, err := rr.Recent(rctx, topic, "")
		if err != nil {
			s.log.Warn("history without the hot window", "topic", topic, "err", err)
		}
		msgs = mergeRecent(msgs, hot, after, limit+1)
	}
	next := ""
	if len(msgs) > limit {
		msgs = msgs[:limit]
		next = msgs[limit-1].ID
	}
	b := []byte(`{"messages":[`)
	for i, m := range msgs {
		if i > 0 {
			b = append(b, ',')
		}
		b = codec.AppendMsgJSON(b, m)
	}
	b = append(b, `],"next":`...)
	if next == "" {
		b = append(b, "null"...)
	} else {
		b = codec.AppendJSONString(b, []byte(next))
	}
	b = append(b, '}')
	writeJSON(ctx, fasthttp.StatusOK, b)
}

// mergeRecent adds the messages of hot with ids after after to stored
// (both id-ordered or publish-ordered), each id once, in id order, at most
// max. Ids are fixed-width hex, so string order is id order.
func mergeRecent(stored, hot []*codec.Message, after string, max int) []*codec.Message {
	if len(hot) == 0 {
		return stored
	}
	seen := make(map[string]struct{}, len(stored))
	for _, m := range stored {
		seen[m.ID] = struct{}{}
	}
	out := stored
	for _, m := range hot {
		if _, dup := seen[m.ID]; !dup && m.ID > after {
			out = append(out, m)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	if len(out) > max {
		out = out[:max]
	}
	return out
}

// listTopics handles GET /v1/topics.
func (s *Server) listTopics(ctx *fasthttp.RequestCtx) {
	topics := s.engine.Topics()
	names := make([]string, 0, len(topics))
	for t := range topics {
		names = append(names, t)
	}
	sort.Strings(names)
	b := []byte(`{"topics":[`)
	for i, t := range names {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"topic":`...)
		b = codec.AppendJSONString(b, []byte(t))
		b = append(b, `,"subscribers":`...)
		b = strconv.AppendInt(b, int64(topics[t]), 10)
		b = append(b, '}')
	}
	b = append(b, "]}"...)
	writeJSON(ctx, fasthttp.StatusOK, b)
}

// ready handles /readyz: the dependencies this node needs to do its job
// answer, and it is not shutting down. A node that accepts messages needs
// pub/sub and the queue; the store matters to it only for history reads, so
// a store outage marks it "degraded" but keeps it in the balancer (the queue
// holds the backlog). A worker needs the queue and the store.
func (s *Server) ready(ctx *fasthttp.RequestCtx) {
	rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	type check struct {
		name     string
		ping     func(context.Context) error
		critical bool
	}
	var checks []check
	if s.bus != nil {
		checks = append(checks, check{"pubsub", s.bus.Ping, s.broker != nil})
	}
	checks = append(checks, check{"queue", s.queue.Ping, true}, check{"store", s.store.Ping, s.broker == nil})
	status, degraded := fasthttp.StatusOK, false
	b := []byte(`{"checks":{`)
	for i, c := range checks {
		if i > 0 {
			b = append(b, ',')
		}
		b = codec.AppendJSONString(b, []byte(c.name))
		b = append(b, ':')
		if err := c.ping(rctx); err != nil {
			if c.critical {
				status = fasthttp.StatusServiceUnavailable
			} else {
				degraded = true
			}
			b = codec.AppendJSONString(b, []byte(err.Error()))
		} else {
			b = append(b, `"ok"`...)
		}
	}
	b = append(b, '}')
	if s.draining.Load() {
		status = fasthttp.StatusServiceUnavailable
		b = append(b, `,"stopping":true`...)
	}
	switch {
	case status != fasthttp.StatusOK:
		b = append(b, `,"status":"not ready"}`...)
	case degraded:
		b = append(b, `,"status":"degraded"}`...)
	default:
		b = append(b, `,"status":"ready"}`...)
	}
	writeJSON(ctx, status, b)
}

// queueStats handles GET /v1/queue.
func (s *Server) queueStats(ctx *fasthttp.RequestCtx) {
	rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	st, err := s.queue.Stats(rctx)
	if err != nil {
		writeError(ctx, fasthttp.StatusServiceUnavailable, "queue unavailable")
		return
	}
	b := fmt.Appendf(nil, `{"depth":%d,"processing":%d,"dead":%d}`, st.Depth, st.Processing, st.Dead)
	writeJSON(ctx, fasthttp.StatusOK, b)
}

// replayDead handles POST /v1/queue/dead/replay.
func (s *Server) replayDead(ctx *fasthttp.RequestCtx) {
	q, ok := s.queue.(restQueue)
	if !ok {
		writeJSON(ctx, fasthttp.StatusOK, []byte(`{"replayed":0}`))
		return
	}
	rctx, cancel := context.WithTimeout(context.Background(), restTimeout)
	defer cancel()
	n, err := q.ReplayDead(rctx)
	if err != nil {
		writeError(ctx, fasthttp.StatusServiceUnavailable, "queue unavailable")
		return
	}
	writeJSON(ctx, fasthttp.StatusOK, fmt.Appendf(nil, `{"replayed":%d}`, n))
}
