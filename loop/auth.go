package loop

import (
	"bytes"
	"errors"
	"time"

	"github.com/chatgg/chatgg/codec"
)

// This file holds connect-time authentication and topic permissions. The
// token is verified by an Authenticator (the server's JWT verifier); loop
// only finds the token in the request, keeps what it grants on the
// connection, checks topics against it and closes the connection when it
// expires.

// Authenticator verifies the tokens clients present (met by the server's
// JWT verifier).
type Authenticator interface {
	// Verify checks token and returns what it grants. It is called on an
	// event loop, so it must do no I/O and return quickly (a signature
	// check). An expired token's error wraps ErrTokenExpired. The Identity
	// is kept by the connection and not modified.
	Verify(token string) (*Identity, error)
}

// Identity is what a verified token grants a connection.
type Identity struct {
	// Subject is the token's sub, stamped as "from" on every message the
	// connection publishes.
	Subject string
	// Expires is when the token stops being accepted (its exp plus the
	// verifier's leeway); the connection is closed with 4001 then. Zero:
	// never.
	Expires time.Time
	// SubTopics and PubTopics are the topic patterns the connection may
	// subscribe and publish to (see MatchTopic); none: no topic.
	SubTopics, PubTopics []string
}

// Token errors an Authenticator may wrap, for the answer and the metrics.
var (
	// ErrTokenExpired: the token's exp has passed.
	ErrTokenExpired = errors.New("loop: token expired")
)

// MaxTokenBytes bounds a token: longer ones are refused without being
// parsed.
const MaxTokenBytes = 8 << 10

// closeTokenExpired closes a connection whose token expired (a private-use
// code, RFC 6455 §7.4.2).
const closeTokenExpired = 4001

// subprotocol is the WebSocket subprotocol echoed when a client offers it
// (browsers that send their token as a "bearer.<token>" subprotocol must
// also offer it: a browser fails a connection whose server picks none of
// its offers).
const subprotocol = "chatgg.v1"

// bearerProtocolPrefix marks a Sec-WebSocket-Protocol entry carrying a token.
const bearerProtocolPrefix = "bearer."

// MatchTopic reports whether topic matches pattern: '*' matches any run of
// characters, '/' and '.' included, and every other byte matches itself.
// "room.*" matches "room.1" and "room.a/b" but not "room"; "*" matches
// every topic.
func MatchTopic(pattern string, topic []byte) bool {
	p, s := 0, 0
	star, mark := -1, 0
	for s < len(topic) {
		switch {
		case p < len(pattern) && pattern[p] == '*':
			star, mark = p, s
			p++
		case p < len(pattern) && pattern[p] == topic[s]:
			p++
			s++
		case star >= 0:
			// Let the last star take one more byte and retry.
			p = star + 1
			mark++
			s = mark
		default:
			return false
		}
	}
	for p < len(pattern) && pattern[p] == '*' {
		p++
	}
	return p == len(pattern)
}

// topicSet is a parsed list of patterns; all short-cuts "*".
type topicSet struct {
	all  bool
	pats []string
}

func newTopicSet(pats []string) topicSet {
	if pats == nil {
		return topicSet{all: true}
	}
	s := topicSet{pats: pats}
	for _, p := range pats {
		if p == "*" {
			s.all = true
		}
	}
	return s
}

func (s *topicSet) match(topic []byte) bool {
	return s.all || matchAny(s.pats, topic)
}

func matchAny(pats []string, topic []byte) bool {
	for _, p := range pats {
		if MatchTopic(p, topic) {
			return true
		}
	}
	return false
}

// maySub reports whether c may subscribe to topic.
func (ls *loopState) maySub(c *conn, topic []byte) bool {
	if c.auth != nil {
		return matchAny(c.auth.SubTopics, topic)
	}
	return ls.e.anonSub.match(topic)
}

// mayPub reports whether c may publish to topic.
func (ls *loopState) mayPub(c *conn, topic []byte) bool {
	if c.auth != nil {
		return matchAny(c.auth.PubTopics, topic)
	}
	return ls.e.anonPub.match(topic)
}

// connectToken finds the token of an upgrade request: an Authorization
// Bearer header, else a ?token= query parameter, else a "bearer.<token>"
// subprotocol. It also returns the subprotocol to echo. The token aliases
// the request or the loop's scratch buffer: valid until the next upgrade.
func (ls *loopState) connectToken(req *codec.UpgradeRequest) (token, proto []byte) {
	// Sec-WebSocket-Protocol: a comma list of tokens.
	for v := req.Protocol; len(v) > 0; {
		var elem []byte
		if i := bytes.IndexByte(v, ','); i >= 0 {
			elem, v = v[:i], v[i+1:]
		} else {
			elem, v = v, nil
		}
		elem = bytes.TrimSpace(elem)
		switch {
		case string(elem) == subprotocol:
			proto = elem
		case len(elem) > len(bearerProtocolPrefix) && string(elem[:len(bearerProtocolPrefix)]) == bearerProtocolPrefix:
			if token == nil {
				token = elem[len(bearerProtocolPrefix):]
			}
		}
	}
	if q := codec.QueryValue(req.Query, "token"); len(q) > 0 {
		if t, ok := codec.AppendUnescape(ls.tok[:0], q); ok {
			ls.tok = t
			token = t
		}
	}
	if a := req.Authorization; len(a) > len("bearer ") && bytes.EqualFold(a[:len("bearer ")], []byte("bearer ")) {
		token = bytes.TrimSpace(a[len("bearer "):])
	}
	return token, proto
}

// authenticate checks an upgrade's token. It returns the identity (nil for
// an anonymous connection), or the reason, status and message to refuse
// with.
func (ls *loopState) authenticate(token []byte) (id *Identity, r reason, status int, msg string) {
	cfg := &ls.e.cfg
	if cfg.Auth == nil {
		return nil, 0, 0, "" // tokens are not checked at all
	}
	if len(token) == 0 {
		if cfg.AllowAnonymous {
			return nil, 0, 0, ""
		}
		return nil, rsnNoToken, 401, "token required"
	}
	id, r, msg = ls.verify(token)
	if id == nil {
		return nil, r, 401, msg
	}
	return id, 0, 0, ""
}

// verify runs the Authenticator on token; a nil Identity comes with the
// reason and a message for the client (no detail of the verification).
func (ls *loopState) verify(token []byte) (*Identity, reason, string) {
	if len(token) > MaxTokenBytes {
		return nil, rsnBadToken, "invalid token"
	}
	id, err := ls.e.cfg.Auth.Verify(string(token))
	switch {
	case errors.Is(err, ErrTokenExpired):
		return nil, rsnTokenExpired, "token expired"
	case err != nil || id == nil:
		return nil, rsnBadToken, "invalid token"
	}
	return id, 0, ""
}

// authOp handles {"op":"auth","token":T}: a connection presents a fresh
// token before its own expires (or an anonymous one signs in). The new
// token must name the same subject; its topics replace the old ones and
// subscriptions it does not grant are dropped.
func (ls *loopState) authOp(c *conn, token []byte, ref string) {
	if ls.e.cfg.Auth == nil {
		ls.out = appendErrorFrame(ls.out, ref, codeBadRequest, "authentication is not enabled on this server")
		return
	}
	if !ls.allow(c) {
		ls.out = appendErrorFrame(ls.out, ref, codeRateLimited, "rate exceeded")
		return
	}
	id, _, msg := ls.verify(token)
	if id == nil {
		ls.e.rejected(rsnAuthRefused, c.peer, codeUnauthorized, ls.now)
		ls.out = appendErrorFrame(ls.out, ref, codeUnauthorized, msg)
		return
	}
	if c.auth != nil && id.Subject != c.auth.Subject {
		ls.e.rejected(rsnAuthRefused, c.peer, codeForbidden, ls.now)
		ls.out = appendErrorFrame(ls.out, ref, codeForbidden, "token is for another subject")
		return
	}
	c.auth = id
	for i := len(c.subs) - 1; i >= 0; i-- {
		if !matchAny(id.SubTopics, []byte(c.subs[i].s.topic)) {
			ls.unsubscribe(c, i)
		}
	}
	if ref != "" {
		ls.out = appendAckFrame(ls.out, ref)
	}
}

// expired reports whether c's token has expired by now.
func (c *conn) expired(now time.Time) bool {
	return c.auth != nil && !c.auth.Expires.IsZero() && now.After(c.auth.Expires)
}
