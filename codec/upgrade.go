package codec

import (
	"bytes"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"strconv"
)

// This file parses the client's HTTP/1.1 WebSocket opening handshake
// (RFC 6455 §4.2.1 on top of RFC 7230) in place and builds the server's
// answers. The event loop calls ParseUpgrade with everything it has buffered
// so far, however the bytes were split by the network.

// DefaultMaxHeaderBytes is the request head limit ParseUpgrade applies when
// given maxHeaderBytes <= 0: 8 KiB, room for a browser request with cookies.
const DefaultMaxHeaderBytes = 8 << 10

// Handshake errors. UpgradeStatus maps each to the HTTP status to answer with.
var (
	// ErrIncomplete means the input does not yet hold a whole request head:
	// read more and call again with the longer buffer. It is not a failure.
	ErrIncomplete = errors.New("codec: incomplete input")
	// ErrHeaderTooLarge means the head exceeds the limit (431).
	ErrHeaderTooLarge = errors.New("codec: request head too large")
	// ErrBadRequestLine means the request line is not
	// "method SP request-target SP HTTP-version CRLF" (400).
	ErrBadRequestLine = errors.New("codec: malformed request line")
	// ErrUnsupportedHTTPVersion means a well-formed HTTP version other than
	// HTTP/1.1, e.g. HTTP/1.0 (400).
	ErrUnsupportedHTTPVersion = errors.New("codec: HTTP version is not 1.1")
	// ErrBadHeaderLine means a malformed header field line: no ':', an empty
	// or invalid name, whitespace before ':', a control character in the
	// value, obs-fold, or a line not ending in CRLF (400).
	ErrBadHeaderLine = errors.New("codec: malformed header line")
	// ErrDuplicateHeader means a header that must appear once appeared again:
	// Host, Origin, Authorization, Sec-WebSocket-Key or
	// Sec-WebSocket-Version (400).
	ErrDuplicateHeader = errors.New("codec: duplicate header")
	// ErrMethodNotAllowed means the method is not GET (405).
	ErrMethodNotAllowed = errors.New("codec: method not allowed")
	// ErrBadRequestTarget means the request target is not an origin-form
	// path ("/..."), or holds a '#' or a byte outside printable ASCII (400).
	ErrBadRequestTarget = errors.New("codec: bad request target")
	// ErrMissingHost means no Host header or an empty one (400).
	ErrMissingHost = errors.New("codec: missing Host header")
	// ErrNotWebSocketUpgrade means the Upgrade header lacks the token
	// "websocket" (400).
	ErrNotWebSocketUpgrade = errors.New("codec: Upgrade header lacks websocket")
	// ErrNoConnectionUpgrade means the Connection header lacks the token
	// "upgrade" (400).
	ErrNoConnectionUpgrade = errors.New("codec: Connection header lacks upgrade")
	// ErrBadWebSocketVersion means Sec-WebSocket-Version is missing or not
	// "13" (426, answered with "Sec-WebSocket-Version: 13").
	ErrBadWebSocketVersion = errors.New("codec: unsupported Sec-WebSocket-Version")
	// ErrBadWebSocketKey means Sec-WebSocket-Key is missing or does not
	// base64-decode to exactly 16 bytes (400).
	ErrBadWebSocketKey = errors.New("codec: bad Sec-WebSocket-Key")
)

// UpgradeStatus returns the HTTP status code that answers a ParseUpgrade
// result: 101 for nil, 0 for ErrIncomplete (nothing to answer yet), 400, 405,
// 426 or 431 for the handshake errors, and 500 for any other error.
func UpgradeStatus(err error) int {
	switch err {
	case nil:
		return 101
	case ErrIncomplete:
		return 0
	case ErrHeaderTooLarge:
		return 431
	case ErrMethodNotAllowed:
		return 405
	case ErrBadWebSocketVersion:
		return 426
	case ErrBadRequestLine, ErrUnsupportedHTTPVersion, ErrBadHeaderLine,
		ErrDuplicateHeader, ErrBadRequestTarget, ErrMissingHost,
		ErrNotWebSocketUpgrade, ErrNoConnectionUpgrade, ErrBadWebSocketKey:
		return 400
	}
	// Slow path for errors a caller wrapped with %w.
	for _, s := range [...]error{ErrIncomplete, ErrHeaderTooLarge, ErrMethodNotAllowed,
		ErrBadWebSocketVersion, ErrBadRequestLine, ErrUnsupportedHTTPVersion,
		ErrBadHeaderLine, ErrDuplicateHeader, ErrBadRequestTarget, ErrMissingHost,
		ErrNotWebSocketUpgrade, ErrNoConnectionUpgrade, ErrBadWebSocketKey} {
		if errors.Is(err, s) {
			return UpgradeStatus(s)
		}
	}
	return 500
}

// UpgradeRequest is a parsed WebSocket opening handshake. Its []byte fields
// alias the buffer given to ParseUpgrade and are valid only until the caller
// discards or overwrites that buffer: copy what you keep. A field whose header
// was absent is nil. Header values are trimmed of surrounding spaces and tabs
// but otherwise raw.
type UpgradeRequest struct {
	// Method is the request method; always "GET" after a successful parse.
	Method []byte
	// Path is the request path, still percent-encoded, without the query. It
	// starts with '/'.
	Path []byte
	// Query is the raw query string without the '?': nil when the target has
	// no '?', empty when it ends in one. See QueryValue and AppendUnescape.
	Query []byte

	// Host is the Host header.
	Host []byte
	// Origin is the Origin header, sent by browsers (RFC 6455 §4.1 item 8).
	Origin []byte
	// Key is Sec-WebSocket-Key, 24 base64 characters; pass it to AcceptKey
	// or AppendUpgradeResponse.
	Key []byte
	// Protocol is the raw Sec-WebSocket-Protocol value, a comma list. If the
	// header is repeated only the first one is kept: the RFC 6455 §11.3.4
	// concatenation cannot be built without copying, and picking from the
	// first list still selects a protocol the client offered.
	Protocol []byte
	// Extensions is the raw Sec-WebSocket-Extensions value; like Protocol,
	// only the first of repeated headers is kept (declining offers is legal).
	Extensions []byte
	// Version is Sec-WebSocket-Version; always "13" after a successful parse.
	Version []byte
	// Authorization is the Authorization header.
	Authorization []byte
	// XForwardedFor is the last X-Forwarded-For header. The last, not the
	// first: a proxy that adds a header line rather than extending the list
	// puts its own (trusted) entry last.
	XForwardedFor []byte

	// HeaderBytes is the size of the request head including the final blank
	// line; bytes after it (a pipelined first frame) belong to the WebSocket
	// stream.
	HeaderBytes int

	// UpgradeWebSocket reports that an Upgrade header lists "websocket"
	// (case-insensitive; all Upgrade headers are searched).
	UpgradeWebSocket bool
	// ConnectionUpgrade reports that a Connection header lists "upgrade"
	// (case-insensitive, e.g. "keep-alive, Upgrade"; all Connection headers
	// are searched).
	ConnectionUpgrade bool
}

// ParseUpgrade parses the WebSocket opening handshake at the start of b into
// *r, overwriting it, and returns the length of the request head.
//
// The caller passes everything buffered so far, each time more bytes arrive.
// ParseUpgrade keeps no state between calls: it returns ErrIncomplete until b
// holds a whole head and len(b) <= maxHeaderBytes, and ErrHeaderTooLarge as
// soon as len(b) > maxHeaderBytes without the head having ended within the
// limit. Once the head is complete, the answer is the same for every longer
// b. Each call costs O(len(b)) and allocates nothing; a caller that keeps a
// per-connection offset can make the wait O(new bytes) with UpgradeHeadLen.
// maxHeaderBytes <= 0 means DefaultMaxHeaderBytes.
//
// On success n == r.HeaderBytes and b[n:] is the start of the WebSocket
// stream. On any error n is 0 and *r is unspecified; UpgradeStatus gives the
// status to answer with (see AppendHTTPError).
//
// The head ends at the first empty line. Line endings must be CRLF (RFC 7230
// §3.5 lets a server accept a lone LF; we do not): a lone LF anywhere is
// ErrBadRequestLine or ErrBadHeaderLine, but an empty line ended by a lone LF
// still ends the head, so such a client gets its 400 at once rather than a
// timeout. Only the origin-form target ("/path?query") is accepted;
// absolute-form ("http://host/path") is ErrBadRequestTarget, since RFC 6455
// §4.1 clients never send it and accepting it would make Host ambiguous
// (RFC 7230 §5.4).
//
// Checks run in this order, so one request gets one answer: request line
// syntax and HTTP version, header line syntax and duplicates, method (405),
// request target, Host, Upgrade, Connection, Sec-WebSocket-Version (426, also
// when missing, so that old clients learn which version to use) and
// Sec-WebSocket-Key.
func ParseUpgrade(b []byte, r *UpgradeRequest, maxHeaderBytes int) (n int, err error) {
	n, _, err = UpgradeHeadLen(b, 0, maxHeaderBytes)
	if err != nil {
		return 0, err
	}
	*r = UpgradeRequest{HeaderBytes: n}
	if err := r.parse(b[:n]); err != nil {
		return 0, err
	}
	return n, nil
}

// UpgradeHeadLen reports whether b starts with a whole request head, without
// parsing it: n is the head's length, or 0 with ErrIncomplete or
// ErrHeaderTooLarge exactly when ParseUpgrade(b, …, maxHeaderBytes) would
// return those.
//
// It lets a loop that receives a head in many pieces look only at new bytes:
// keep next per connection (zero at first), pass it back as from with the
// longer buffer after each ErrIncomplete, and call ParseUpgrade once n > 0.
// from must be 0 or the next of an earlier call on a prefix of b with the
// same limit; a from beyond the limit or len(b) is treated as 0.
func UpgradeHeadLen(b []byte, from, maxHeaderBytes int) (n, next int, err error) {
	if maxHeaderBytes <= 0 {
		maxHeaderBytes = DefaultMaxHeaderBytes
	}
	s := b
	if len(s) > maxHeaderBytes {
		s = s[:maxHeaderBytes] // the head must end within the limit
	}
	if from < 0 || from > len(s) {
		from = 0
	}
	n, next = headEnd(s, from)
	switch {
	case n > 0:
		return n, 0, nil
	case len(b) > maxHeaderBytes:
		return 0, 0, ErrHeaderTooLarge
	}
	return 0, next, ErrIncomplete
}

// headEnd returns the index just past the first empty line of b that follows
// an LF at or after from, and 0 as next; or -1 and the offset from which to
// search again once b has grown. An empty line is ended by CRLF or a lone LF;
// whether every line ending is a proper CRLF is parse's business.
//
// Two substring searches rather than a loop over each LF: bytes.Index goes
// over to a SIMD search when candidates keep failing, so a head of many short
// lines, rescanned on every read by a stateless caller, stays cheap.
func headEnd(b []byte, from int) (end, next int) {
	s := b[from:]
	i := bytes.Index(s, []byte("\n\r\n"))
	lf := s
	if i >= 0 {
		lf = s[:i+1] // where a "\n\n" starting earlier would be
	}
	if j := bytes.Index(lf, []byte("\n\n")); j >= 0 {
		return from + j + 2, 0
	}
	if i >= 0 {
		return from + i + 3, 0
	}
	// An LF among the last two bytes may yet start an empty line.
	return -1, max(from, len(b)-2)
}

// parse fills r from head, a complete request head ending in an empty line.
func (r *UpgradeRequest) parse(head []byte) error {
	line, rest, err := nextHeadLine(head)
	if err != nil {
		return ErrBadRequestLine
	}
	var target []byte
	if err := r.parseRequestLine(line, &target); err != nil {
		return err
	}
	var seen uint8 // seenHost and friends
	for {
		line, rest, err = nextHeadLine(rest)
		if err != nil {
			return err
		}
		if len(line) == 0 {
			break // the empty line ending the head
		}
		if err := r.parseHeaderLine(line, &seen); err != nil {
			return err
		}
	}

	if string(r.Method) != "GET" {
		return ErrMethodNotAllowed
	}
	if err := r.parseTarget(target); err != nil {
		return err
	}
	if len(r.Host) == 0 {
		return ErrMissingHost
	}
	if !r.UpgradeWebSocket {
		return ErrNotWebSocketUpgrade
	}
	if !r.ConnectionUpgrade {
		return ErrNoConnectionUpgrade
	}
	if string(r.Version) != "13" {
		return ErrBadWebSocketVersion
	}
	if !validWebSocketKey(r.Key) {
		return ErrBadWebSocketKey
	}
	return nil
}

// nextHeadLine splits b after its first LF and returns the line without its
// CRLF. A line without LF, or whose LF lacks the CR before it, is
// ErrBadHeaderLine.
func nextHeadLine(b []byte) (line, rest []byte, err error) {
	i := bytes.IndexByte(b, '\n')
	if i < 1 || b[i-1] != '\r' {
		return nil, nil, ErrBadHeaderLine
	}
	return b[:i-1], b[i+1:], nil
}

// parseRequestLine splits "method SP target SP version" (RFC 7230 §3.1.1),
// with exactly one SP between parts.
func (r *UpgradeRequest) parseRequestLine(line []byte, target *[]byte) error {
	sp1 := bytes.IndexByte(line, ' ')
	if sp1 <= 0 || !isToken(line[:sp1]) {
		return ErrBadRequestLine
	}
	rest := line[sp1+1:]
	sp2 := bytes.IndexByte(rest, ' ')
	if sp2 <= 0 {
		return ErrBadRequestLine
	}
	version := rest[sp2+1:]
	if string(version) != "HTTP/1.1" {
		if len(version) == 8 && string(version[:5]) == "HTTP/" && isDecDigit(version[5]) &&
			version[6] == '.' && isDecDigit(version[7]) {
			return ErrUnsupportedHTTPVersion
		}
		return ErrBadRequestLine // includes a third SP: it lands in version
	}
	r.Method = line[:sp1]
	*target = rest[:sp2]
	return nil
}

// parseTarget checks an origin-form request target (RFC 7230 §5.3.1) and
// splits it into Path and Query.
func (r *UpgradeRequest) parseTarget(t []byte) error {
	if t[0] != '/' {
		return ErrBadRequestTarget
	}
	q := -1
	for i, c := range t {
		if c <= ' ' || c >= 0x7f || c == '#' {
			return ErrBadRequestTarget
		}
		if c == '?' && q < 0 {
			q = i
		}
	}
	if q < 0 {
		r.Path = t
		return nil
	}
	r.Path, r.Query = t[:q], t[q+1:]
	return nil
}

// Bits of seen: headers that may appear only once, and those of which only
// the first is kept.
const (
	seenHost = 1 << iota
	seenOrigin
	seenKey
	seenVersion
	seenAuthorization
	seenProtocol   // repeats allowed, first kept
	seenExtensions // repeats allowed, first kept
)

// parseHeaderLine parses "name: OWS value OWS" (RFC 7230 §3.2) and stores the
// headers r exposes.
func (r *UpgradeRequest) parseHeaderLine(line []byte, seen *uint8) error {
	// A leading SP or HT is obs-fold, which a server must reject or unfold
	// (RFC 7230 §3.2.4); isToken rejects it along with whitespace before ':'.
	colon := bytes.IndexByte(line, ':')
	if colon <= 0 || !isToken(line[:colon]) {
		return ErrBadHeaderLine
	}
	name, v := line[:colon], line[colon+1:]
	for _, c := range v {
		if c < ' ' && c != '\t' || c == 0x7f {
			return ErrBadHeaderLine
		}
	}
	v = trimOWS(v)

	// The names we keep all have different lengths: one comparison each.
	switch len(name) {
	case len("host"):
		if asciiEqualFold(name, "host") {
			return setHeaderOnce(&r.Host, v, seen, seenHost)
		}
	case len("origin"):
		if asciiEqualFold(name, "origin") {
			return setHeaderOnce(&r.Origin, v, seen, seenOrigin)
		}
	case len("upgrade"):
		if asciiEqualFold(name, "upgrade") {
			r.UpgradeWebSocket = r.UpgradeWebSocket || HeaderTokenContains(v, "websocket")
		}
	case len("connection"):
		if asciiEqualFold(name, "connection") {
			r.ConnectionUpgrade = r.ConnectionUpgrade || HeaderTokenContains(v, "upgrade")
		}
	case len("authorization"):
		if asciiEqualFold(name, "authorization") {
			return setHeaderOnce(&r.Authorization, v, seen, seenAuthorization)
		}
	case len("x-forwarded-for"):
		if asciiEqualFold(name, "x-forwarded-for") {
			r.XForwardedFor = v
		}
	case len("sec-websocket-key"):
		if asciiEqualFold(name, "sec-websocket-key") {
			return setHeaderOnce(&r.Key, v, seen, seenKey)
		}
	case len("sec-websocket-version"):
		if asciiEqualFold(name, "sec-websocket-version") {
			return setHeaderOnce(&r.Version, v, seen, seenVersion)
		}
	case len("sec-websocket-protocol"):
		if asciiEqualFold(name, "sec-websocket-protocol") && *seen&seenProtocol == 0 {
			*seen |= seenProtocol
			r.Protocol = v
		}
	case len("sec-websocket-extensions"):
		if asciiEqualFold(name, "sec-websocket-extensions") && *seen&seenExtensions == 0 {
			*seen |= seenExtensions
			r.Extensions = v
		}
	}
	return nil
}

func setHeaderOnce(dst *[]byte, v []byte, seen *uint8, bit uint8) error {
	if *seen&bit != 0 {
		return ErrDuplicateHeader
	}
	*seen |= bit
	*dst = v
	return nil
}

// validWebSocketKey reports whether k is base64 for exactly 16 bytes (RFC 6455 §4.1
// item 7). Like encoding/base64, it accepts non-zero padding bits.
func validWebSocketKey(k []byte) bool {
	if len(k) != 24 {
		return false
	}
	var buf [18]byte
	n, err := base64.StdEncoding.Decode(buf[:], k)
	return err == nil && n == 16
}

// websocketGUID is appended to the key for Sec-WebSocket-Accept
// (RFC 6455 §1.3).
const websocketGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// AcceptKey appends the Sec-WebSocket-Accept value for key to dst:
// base64(SHA-1(key + the RFC 6455 GUID)). It allocates only if dst lacks the
// 28 bytes of room.
func AcceptKey(dst []byte, key []byte) []byte {
	var sum [sha1.Size]byte
	var buf [128]byte
	if len(key) <= len(buf)-len(websocketGUID) {
		// A stack copy keeps the hash input off the heap.
		m := copy(buf[:], key)
		m += copy(buf[m:], websocketGUID)
		sum = sha1.Sum(buf[:m])
	} else {
		h := sha1.New()
		h.Write(key)
		h.Write([]byte(websocketGUID))
		h.Sum(sum[:0])
	}
	return base64.StdEncoding.AppendEncode(dst, sum[:])
}

// AppendUpgradeResponse appends the 101 response accepting a handshake with
// the given Sec-WebSocket-Key. A non-empty protocol is echoed as
// Sec-WebSocket-Protocol; it must be one of the client's offers, spelled as
// the client spelled it.
func AppendUpgradeResponse(dst []byte, key []byte, protocol []byte) []byte {
	dst = append(dst, "HTTP/1.1 101 Switching Protocols\r\n"+
		"Upgrade: websocket\r\n"+
		"Connection: Upgrade\r\n"+
		"Sec-WebSocket-Accept: "...)
	dst = AcceptKey(dst, key)
	dst = append(dst, "\r\n"...)
	if len(protocol) > 0 {
		dst = append(dst, "Sec-WebSocket-Protocol: "...)
		dst = append(dst, protocol...)
		dst = append(dst, "\r\n"...)
	}
	return append(dst, "\r\n"...)
}

// AppendHTTPError appends a complete HTTP/1.1 response with the given status
// and a text/plain body of msg plus a newline, marked "Connection: close":
// the caller closes the connection after writing it. A 405 carries
// "Allow: GET" and a 426 "Sec-WebSocket-Version: 13" (RFC 6455 §4.4). A status
// outside 100..999 is sent as 500; one without a known reason phrase gets an
// empty one, which RFC 7230 §3.1.2 allows. msg must not hold CR or LF if
// the body is to stay one line; it is not escaped.
func AppendHTTPError(dst []byte, status int, msg string) []byte {
	if status < 100 || status > 999 {
		status = 500
	}
	dst = append(dst, "HTTP/1.1 "...)
	dst = strconv.AppendInt(dst, int64(status), 10)
	dst = append(dst, ' ')
	dst = append(dst, reasonPhrase(status)...)
	dst = append(dst, "\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: "...)
	dst = strconv.AppendInt(dst, int64(len(msg)+1), 10)
	dst = append(dst, "\r\nConnection: close\r\n"...)
	switch status {
	case 405:
		dst = append(dst, "Allow: GET\r\n"...)
	case 426:
		dst = append(dst, "Sec-WebSocket-Version: 13\r\n"...)
	}
	dst = append(dst, "\r\n"...)
	dst = append(dst, msg...)
	return append(dst, '\n')
}

func reasonPhrase(status int) string {
	switch status {
	case 400:
		return "Bad Request"
	case 403:
		return "Forbidden"
	case 404:
		return "Not Found"
	case 405:
		return "Method Not Allowed"
	case 408:
		return "Request Timeout"
	case 426:
		return "Upgrade Required"
	case 429:
		return "Too Many Requests"
	case 431:
		return "Request Header Fields Too Large"
	case 500:
		return "Internal Server Error"
	case 503:
		return "Service Unavailable"
	}
	return ""
}

// HeaderTokenContains reports whether the comma-separated header value v
// lists token, compared case-insensitively after trimming spaces and tabs
// around each element (RFC 7230 §7; empty elements are skipped). Elements
// are compared whole: "websocket/13" or "permessage-deflate; x=1" do not
// match "websocket" or "permessage-deflate", and quoted strings are not
// understood. Subprotocol names are case-sensitive in practice, so to echo
// one, compare the client's spelling too.
func HeaderTokenContains(v []byte, token string) bool {
	for len(v) > 0 {
		var elem []byte
		if i := bytes.IndexByte(v, ','); i >= 0 {
			elem, v = v[:i], v[i+1:]
		} else {
			elem, v = v, nil
		}
		if elem = trimOWS(elem); len(elem) > 0 && asciiEqualFold(elem, token) {
			return true
		}
	}
	return false
}

// QueryValue returns the raw value of the first parameter called name in
// query (a query string without '?', parameters separated by '&' only, as
// net/url does since Go 1.17). It returns nil if name is absent and an empty
// non-nil slice for "name" or "name=". Names are compared byte for byte,
// without unescaping; the value is returned still escaped: decode it with
// AppendUnescape. The result aliases query.
func QueryValue(query []byte, name string) []byte {
	for len(query) > 0 {
		var pair []byte
		if i := bytes.IndexByte(query, '&'); i >= 0 {
			pair, query = query[:i], query[i+1:]
		} else {
			pair, query = query, nil
		}
		k, v := pair, pair[len(pair):]
		if i := bytes.IndexByte(pair, '='); i >= 0 {
			k, v = pair[:i], pair[i+1:]
		}
		if string(k) == name {
			return v
		}
	}
	return nil
}

// AppendUnescape appends v with query escapes decoded to dst, as
// net/url.QueryUnescape does: "%XX" becomes byte 0xXX and '+' a space. It
// reports false, returning dst unchanged, if v holds a '%' not followed by
// two hex digits. The result is not checked to be UTF-8.
func AppendUnescape(dst, v []byte) ([]byte, bool) {
	orig := len(dst)
	for i := 0; i < len(v); i++ {
		switch c := v[i]; c {
		case '%':
			if i+2 >= len(v) || !isHexDigit(v[i+1]) || !isHexDigit(v[i+2]) {
				return dst[:orig], false
			}
			dst = append(dst, hexValue(v[i+1])<<4|hexValue(v[i+2]))
			i += 2
		case '+':
			dst = append(dst, ' ')
		default:
			dst = append(dst, c)
		}
	}
	return dst, true
}

func isHexDigit(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func hexValue(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c <= 'F':
		return c - 'A' + 10
	}
	return c - 'a' + 10
}

func isDecDigit(c byte) bool { return '0' <= c && c <= '9' }

// isToken reports whether s is a non-empty RFC 7230 §3.2.6 token.
func isToken(s []byte) bool {
	if len(s) == 0 {
		return false
	}
	for _, c := range s {
		if !isTchar(c) {
			return false
		}
	}
	return true
}

// isTchar reports whether c is a tchar: ALPHA, DIGIT or !#$%&'*+-.^_`|~.
func isTchar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	switch c {
	case '!', '#', '$', '%', '&', '\'', '*', '+', '-', '.', '^', '_', '`', '|', '~':
		return true
	}
	return false
}

// trimOWS trims optional whitespace, SP and HT (RFC 7230 §3.2.3).
func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// asciiEqualFold reports whether b and s are equal ignoring ASCII case.
func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		if asciiLower(b[i]) != asciiLower(s[i]) {
			return false
		}
	}
	return true
}

func asciiLower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}
