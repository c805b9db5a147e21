package storage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"strings"
	"time"

	kivik "github.com/go-kivik/kivik/v4"
	"github.com/go-kivik/kivik/v4/couchdb"

	"github.com/chatgg/chatgg/codec"
)

const (
	// DefaultCouchURL is the CouchDB database used when CouchConfig.URL is
	// empty.
	DefaultCouchURL = "http://127.0.0.1:5984/" + DefaultCouchDB
	// DefaultCouchDB is the database name used when the URL has no path.
	DefaultCouchDB = "chatgg"
	// DefaultCouchRequestTimeout bounds each request to CouchDB.
	DefaultCouchRequestTimeout = 10 * time.Second
)

const (
	// couchDocAttempts bounds how often one Store call writes a document
	// that CouchDB rejected with a per-document error other than conflict.
	couchDocAttempts = 3
	// couchRetryBackoff is the pause before the second attempt; it doubles.
	couchRetryBackoff = 50 * time.Millisecond
	// couchDocPrefix starts every message document's _id, which is
	// couchDocPrefix + topic + couchDocSep + message ID (see couchDocID).
	couchDocPrefix = "m!"
	// couchDocSep ends the topic in an _id. It is not a topic byte and
	// sorts below every topic byte, so one topic's documents are one
	// contiguous range of _all_docs, ascending by message ID.
	couchDocSep = '!'
	// couchRangeEnd closes a topic's range: it sorts above every message ID
	// byte (IDs are lowercase hex).
	couchRangeEnd = "~"
	// couchMaxIdleConns keeps connections to CouchDB open for concurrent
	// workers; net/http's default keeps only 2 per host.
	couchMaxIdleConns = 32
)

// CouchConfig configures the CouchDB store. Zero values mean the defaults.
type CouchConfig struct {
	// URL is the database URL, as http[s]://[user:password@]host:port/db.
	// The last path element names the database (DefaultCouchDB when the URL
	// has no path); credentials, if any, are sent with HTTP basic auth.
	// Default DefaultCouchURL.
	URL string
	// RequestTimeout bounds each HTTP request. Default
	// DefaultCouchRequestTimeout.
	RequestTimeout time.Duration
	// Logger receives start-up events and retried writes. Nil discards.
	Logger *slog.Logger
}

// Couch stores messages in a CouchDB (or compatible) database, one document
// per message whose _id is "m!" + topic + "!" + message ID, and reads
// history as a range of _all_docs. CouchDB sorts _all_docs by raw _id, and
// the separator cannot occur in a topic, so a topic's messages are one range
// in ID order: no index to build or keep up to date, which on PouchDB Server
// cost more than writing the documents did.
//
// Couch is safe for concurrent use.
type Couch struct {
	client  *kivik.Client
	db      *kivik.DB
	name    string
	timeout time.Duration
	log     *slog.Logger
}

// couchDoc is a message as a CouchDB document. Data is the JSON value itself
// for KindJSON (stored compactly), a string for KindText and a base64
// string for KindBinary.
type couchDoc struct {
	DocID string `json:"_id"`
	Topic string `json:"topic"`
	ID    string `json:"id"`
	TS    int64  `json:"ts"`
	Kind  string `json:"kind"`
	Key   string `json:"key,omitempty"`
	From  string `json:"from,omitempty"`
	Data  any    `json:"data"`
}

// couchRow is a message document as _all_docs returns it with
// include_docs.
type couchRow struct {
	Topic string          `json:"topic"`
	ID    string          `json:"id"`
	TS    int64           `json:"ts"`
	Kind  string          `json:"kind"`
	Key   string          `json:"key"`
	From  string          `json:"from"`
	Data  json.RawMessage `json:"data"`
}

// Kind names in documents.
const (
	couchKindJSON   = "json"
	couchKindText   = "text"
	couchKindBinary = "binary"
)

// BulkError reports documents that CouchDB rejected on every attempt of one
// Store call (conflicts, meaning already stored, are not errors).
type BulkError struct {
	// Docs is how many documents the call wrote (the batch, less messages
	// that can never be stored).
	Docs int
	// Failed lists the message IDs that were not stored.
	Failed []string
	// Err is the last rejection, for errors.Is and kivik.HTTPStatus.
	Err error
}

func (e *BulkError) Error() string {
	return fmt.Sprintf("storage: bulk write %d docs: %d rejected (%s): %v",
		e.Docs, len(e.Failed), joinIDs(e.Failed), e.Err)
}

func (e *BulkError) Unwrap() error { return e.Err }

// NewCouch connects to the database named by cfg.URL, creating it when
// missing. It fails when CouchDB cannot be reached.
func NewCouch(ctx context.Context, cfg CouchConfig) (*Couch, error) {
	raw := cfg.URL
	if raw == "" {
		raw = DefaultCouchURL
	}
	base, user, name, err := splitCouchURL(raw)
	if err != nil {
		return nil, err
	}
	timeout := cfg.RequestTimeout
	if timeout <= 0 {
		timeout = DefaultCouchRequestTimeout
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxIdleConns = couchMaxIdleConns
	transport.MaxIdleConnsPerHost = couchMaxIdleConns
	opts := []kivik.Option{
		couchdb.OptionHTTPClient(&http.Client{Transport: transport}),
		// Gzip costs more CPU than it saves on the loopback or a LAN, and
		// not every CouchDB-compatible server inflates request bodies.
		couchdb.OptionNoRequestCompression(),
	}
	if user != nil {
		// Basic auth on every request rather than kivik's default cookie
		// session: no login round trip at start, nothing to expire.
		pw, _ := user.Password()
		opts = append(opts, couchdb.BasicAuth(user.Username(), pw))
	}
	client, err := kivik.New("couch", base, opts...)
	if err != nil {
		return nil, fmt.Errorf("storage: couch client for %s: %w", redact(base), err)
	}
	c := &Couch{
		client:  client,
		db:      client.DB(name),
		name:    name,
		timeout: timeout,
		log:     componentLogger(cfg.Logger, "couch"),
	}
	if err := c.setup(ctx); err != nil {
		_ = client.Close()
		return nil, err
	}
	c.log.Info("store opened", "url", redact(base), "db", name)
	return c, nil
}

// splitCouchURL splits a database URL into the server URL (no credentials),
// the credentials and the database name.
func splitCouchURL(raw string) (base string, user *url.Userinfo, name string, err error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", nil, "", fmt.Errorf("storage: couch URL: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", nil, "", fmt.Errorf("storage: couch URL %q: scheme must be http or https", redact(raw))
	}
	user, u.User = u.User, nil
	// Split the escaped path so a database name with an escaped "/" stays
	// one element.
	p := strings.TrimRight(u.EscapedPath(), "/")
	i := strings.LastIndexByte(p, '/')
	name, err = url.PathUnescape(p[i+1:])
	if err != nil {
		return "", nil, "", fmt.Errorf("storage: couch URL path: %w", err)
	}
	if name == "" {
		name = DefaultCouchDB
	}
	u.Path, u.RawPath = "", ""
	if i > 0 {
		if err := setEscapedPath(u, p[:i]); err != nil {
			return "", nil, "", err
		}
	}
	u.RawQuery, u.Fragment = "", ""
	return u.String(), user, name, nil
}

func setEscapedPath(u *url.URL, escaped string) error {
	p, err := url.PathUnescape(escaped)
	if err != nil {
		return fmt.Errorf("storage: couch URL path: %w", err)
	}
	u.Path, u.RawPath = p, escaped
	return nil
}

// redact drops the password from a URL for logs and errors.
func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "<invalid URL>"
	}
	return u.Redacted()
}

// setup creates the database when missing.
func (c *Couch) setup(ctx context.Context) error {
	rctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	// Check first so that an existing database needs no admin rights.
	exists, err := c.client.DBExists(rctx, c.name)
	if err != nil {
		return fmt.Errorf("storage: couch database %q: %w", c.name, err)
	}
	if !exists {
		err := c.client.CreateDB(rctx, c.name)
		// 412: another node created it since DBExists.
		if err != nil && kivik.HTTPStatus(err) != http.StatusPreconditionFailed {
			return fmt.Errorf("storage: create couch database %q: %w", c.name, err)
		}
		if err == nil {
			c.log.Info("database created", "db", c.name)
		}
	}
	return nil
}

// couchDocID is the _id of message id of topic.
func couchDocID(topic, id string) string {
	return couchDocPrefix + topic + string(couchDocSep) + id
}

// Store writes batch with one _bulk_docs request. A conflict means the
// message is already stored. Documents rejected otherwise are posted again,
// without the rest of the batch, up to couchDocAttempts times in all; those
// still rejected are reported in a *BulkError. A failed request returns its
// error: the caller retries the batch, and what the failed request did store
// then conflicts.
func (c *Couch) Store(ctx context.Context, batch []*codec.Message) error {
	if len(batch) == 0 {
		return nil
	}
	docs := make([]any, 0, len(batch))
	var (
		bad    []string
		reason string
	)
	for _, m := range batch {
		d, r := toCouchDoc(m)
		if r != "" {
			bad, reason = append(bad, messageID(m)), r
			continue
		}
		docs = append(docs, d)
	}
	total, backoff := len(docs), couchRetryBackoff
	for attempt := 1; len(docs) > 0; attempt++ {
		rejected, lastErr, err := c.bulk(ctx, docs)
		if err != nil {
			return fmt.Errorf("storage: bulk write %d docs: %w", len(docs), err)
		}
		if len(rejected) == 0 {
			break
		}
		if attempt == couchDocAttempts {
			ids := make([]string, len(rejected))
			for i, d := range rejected {
				ids[i] = d.(*couchDoc).ID
			}
			return &BulkError{Docs: total, Failed: ids, Err: lastErr}
		}
		c.log.Debug("retrying rejected documents", "docs", len(rejected), "attempt", attempt, "err", lastErr)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("storage: bulk write %d docs: %w", len(rejected), ctx.Err())
		case <-t.C:
		}
		backoff *= 2
		docs = rejected
	}
	if len(bad) > 0 {
		return badMessages(bad, reason)
	}
	return nil
}

// bulk posts docs to _bulk_docs and returns the documents rejected with an
// error other than conflict, with the last such error. err is set when the
// request itself failed.
func (c *Couch) bulk(ctx context.Context, docs []any) (rejected []any, lastErr, err error) {
	rctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	results, err := c.db.BulkDocs(rctx, docs)
	// 417 (a validation function rejected documents) still carries the
	// per-document results.
	if err != nil && (len(results) == 0 || kivik.HTTPStatus(err) != http.StatusExpectationFailed) {
		return nil, nil, err
	}
	// Match results by id, not position: every document must be accounted
	// for, and one missing from the response was not stored.
	failed := make(map[string]error, 0)
	answered := make(map[string]struct{}, len(results))
	for _, r := range results {
		answered[r.ID] = struct{}{}
		if r.Error != nil && kivik.HTTPStatus(r.Error) != http.StatusConflict {
			failed[r.ID] = r.Error
			lastErr = r.Error
		}
	}
	for _, d := range docs {
		id := d.(*couchDoc).DocID
		if _, ok := answered[id]; !ok {
			failed[id] = errors.New("storage: no result for document")
			lastErr = failed[id]
		}
		if _, ok := failed[id]; ok {
			rejected = append(rejected, d)
		}
	}
	return rejected, lastErr, nil
}

// toCouchDoc converts m, or says why it cannot be stored.
func toCouchDoc(m *codec.Message) (*couchDoc, string) {
	if r := checkMessage(m); r != "" {
		return nil, r
	}
	d := &couchDoc{DocID: couchDocID(m.Topic, m.ID), Topic: m.Topic, ID: m.ID, TS: m.TS, Key: m.Key, From: m.From}
	switch m.Kind {
	case codec.KindJSON:
		// encoding/json compacts a RawMessage as it writes it.
		if !json.Valid(m.Data) {
			return nil, "data is not valid JSON"
		}
		d.Kind, d.Data = couchKindJSON, json.RawMessage(m.Data)
	case codec.KindText:
		d.Kind, d.Data = couchKindText, string(m.Data)
	case codec.KindBinary:
		// encoding/json writes []byte as standard base64.
		d.Kind, d.Data = couchKindBinary, m.Data
		if m.Data == nil {
			d.Data = []byte{}
		}
	}
	return d, ""
}

// message converts a stored document back.
func (r *couchRow) message() (*codec.Message, error) {
	m := &codec.Message{ID: r.ID, Topic: r.Topic, TS: r.TS, Key: r.Key, From: r.From}
	switch r.Kind {
	case couchKindJSON:
		m.Kind = codec.KindJSON
		if len(r.Data) > 0 {
			m.Data = []byte(r.Data)
		}
	case couchKindText:
		m.Kind = codec.KindText
		var s string
		if err := json.Unmarshal(r.Data, &s); err != nil {
			return nil, fmt.Errorf("text data: %w", err)
		}
		if s != "" {
			m.Data = []byte(s)
		}
	case couchKindBinary:
		m.Kind = codec.KindBinary
		if err := json.Unmarshal(r.Data, &m.Data); err != nil {
			return nil, fmt.Errorf("binary data: %w", err)
		}
		if len(m.Data) == 0 {
			m.Data = nil
		}
	default:
		return nil, fmt.Errorf("unknown kind %q", r.Kind)
	}
	return m, nil
}

// scan reads at most limit message documents of topic from _all_docs,
// ascending by ID, starting at fromID (inclusive; "" = the oldest), and
// calls each for every row. With docs false the rows carry only their ID.
func (c *Couch) scan(ctx context.Context, topic, fromID string, limit int, docs bool, each func(*couchRow) error) error {
	rctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	params := map[string]any{
		// kivik encodes both keys as JSON strings.
		"startkey": couchDocID(topic, fromID),
		"endkey":   couchDocID(topic, couchRangeEnd),
	}
	if limit < math.MaxInt {
		params["limit"] = limit
	}
	if docs {
		params["include_docs"] = true
	}
	rs := c.db.AllDocs(rctx, kivik.Params(params))
	defer rs.Close()
	for rs.Next() {
		var r couchRow
		if docs {
			if err := rs.ScanDoc(&r); err != nil {
				return err
			}
		} else {
			id, err := rs.ID()
			if err != nil {
				return err
			}
			r.ID = id[len(couchDocID(topic, "")):]
		}
		if err := each(&r); err != nil {
			return err
		}
	}
	return rs.Err()
}

// History returns at most limit messages of topic with ID > afterID,
// ascending by ID, with one _all_docs request.
func (c *Couch) History(ctx context.Context, topic, afterID string, limit int) ([]*codec.Message, error) {
	if limit <= 0 {
		return nil, nil
	}
	want := limit
	if afterID != "" && limit < math.MaxInt {
		want++ // the range starts at afterID, which comes back when stored
	}
	out := make([]*codec.Message, 0, min(limit, 64))
	err := c.scan(ctx, topic, afterID, want, true, func(r *couchRow) error {
		if r.ID == afterID || len(out) == limit {
			return nil
		}
		m, err := r.message()
		if err != nil {
			return fmt.Errorf("document %s: %w", r.ID, err)
		}
		out = append(out, m)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("storage: couch history of %q: %w", topic, err)
	}
	return out, nil
}

// Oldest returns the smallest stored ID of topic.
func (c *Couch) Oldest(ctx context.Context, topic string) (string, bool, error) {
	var id string
	err := c.scan(ctx, topic, "", 1, false, func(r *couchRow) error {
		id = r.ID
		return nil
	})
	if err != nil {
		return "", false, fmt.Errorf("storage: couch oldest of %q: %w", topic, err)
	}
	return id, id != "", nil
}

// Ping GETs the database.
func (c *Couch) Ping(ctx context.Context) error {
	rctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	if _, err := c.db.Stats(rctx); err != nil {
		return fmt.Errorf("storage: couch ping %q: %w", c.name, err)
	}
	return nil
}

// Close waits for running requests and closes idle connections.
func (c *Couch) Close() error {
	if err := c.client.Close(); err != nil {
		return fmt.Errorf("storage: couch close: %w", err)
	}
	c.log.Info("store closed")
	return nil
}
