package codec

import (
	"bufio"
	"bytes"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// rfcRequest is the client handshake of RFC 6455 §1.2 (with §4.1's Origin).
const rfcRequest = "GET /chat HTTP/1.1\r\n" +
	"Host: server.example.com\r\n" +
	"Upgrade: websocket\r\n" +
	"Connection: Upgrade\r\n" +
	"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" +
	"Origin: http://example.com\r\n" +
	"Sec-WebSocket-Protocol: chat, superchat\r\n" +
	"Sec-WebSocket-Version: 13\r\n" +
	"\r\n"

// browserRequest is what a current Chrome sends, about 600 bytes.
const browserRequest = "GET /ws?topic=lobby&token=abc%2B123 HTTP/1.1\r\n" +
	"Host: chat.example.com\r\n" +
	"Connection: Upgrade\r\n" +
	"Pragma: no-cache\r\n" +
	"Cache-Control: no-cache\r\n" +
	"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36\r\n" +
	"Upgrade: websocket\r\n" +
	"Origin: https://chat.example.com\r\n" +
	"Sec-WebSocket-Version: 13\r\n" +
	"Accept-Encoding: gzip, deflate, br, zstd\r\n" +
	"Accept-Language: en-US,en;q=0.9\r\n" +
	"Cookie: session=4f1c2a9be0d34e8a9c1f; theme=dark\r\n" +
	"Sec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==\r\n" +
	"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" +
	"\r\n"

// upgradeReq builds a request from a request line and header lines, each
// given without its CRLF.
func upgradeReq(requestLine string, headers ...string) string {
	var sb strings.Builder
	sb.WriteString(requestLine + "\r\n")
	for _, h := range headers {
		sb.WriteString(h + "\r\n")
	}
	sb.WriteString("\r\n")
	return sb.String()
}

const (
	upHost    = "Host: example.com"
	upUpgrade = "Upgrade: websocket"
	upConn    = "Connection: Upgrade"
	upKey     = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="
	upVersion = "Sec-WebSocket-Version: 13"
	upReqLine = "GET /chat HTTP/1.1"
)

// validUpgrade is a well-formed handshake with the given extra headers appended.
func validUpgrade(extra ...string) string {
	return upgradeReq(upReqLine, append([]string{upHost, upUpgrade, upConn, upKey, upVersion}, extra...)...)
}

type upgradeCase struct {
	name  string
	in    string
	max   int   // 0: DefaultMaxHeaderBytes
	err   error // want
	check func(t *testing.T, r *UpgradeRequest)
}

// upgradeCases is shared by the table, incremental and fuzz-seed tests.
var upgradeCases = []upgradeCase{
	// Accepted.
	{name: "RFCExample", in: rfcRequest, check: func(t *testing.T, r *UpgradeRequest) {
		want := UpgradeRequest{
			Method: []byte("GET"), Path: []byte("/chat"),
			Host: []byte("server.example.com"), Origin: []byte("http://example.com"),
			Key: []byte("dGhlIHNhbXBsZSBub25jZQ=="), Protocol: []byte("chat, superchat"),
			Version: []byte("13"), HeaderBytes: len(rfcRequest),
			UpgradeWebSocket: true, ConnectionUpgrade: true,
		}
		if !reflect.DeepEqual(*r, want) {
			t.Errorf("got  %s\nwant %s", fmtUpgrade(r), fmtUpgrade(&want))
		}
	}},
	{name: "Browser", in: browserRequest, check: func(t *testing.T, r *UpgradeRequest) {
		expectField(t, "Path", r.Path, "/ws")
		expectField(t, "Query", r.Query, "topic=lobby&token=abc%2B123")
		expectField(t, "Origin", r.Origin, "https://chat.example.com")
		expectField(t, "Extensions", r.Extensions, "permessage-deflate; client_max_window_bits")
		if r.Protocol != nil || r.Authorization != nil || r.XForwardedFor != nil {
			t.Errorf("absent headers not nil: %s", fmtUpgrade(r))
		}
	}},
	{name: "Minimal", in: validUpgrade()},
	{name: "NameCaseInsensitive", in: upgradeReq(upReqLine, "hOsT: example.com", "UPGRADE: WebSocket",
		"connection: upgrade", "sec-websocket-KEY: dGhlIHNhbXBsZSBub25jZQ==", "SEC-WEBSOCKET-VERSION: 13")},
	{name: "ConnectionKeepAliveUpgrade", in: upgradeReq(upReqLine, upHost, upUpgrade,
		"Connection: keep-alive, Upgrade", upKey, upVersion)},
	{name: "ConnectionListNoSpaces", in: upgradeReq(upReqLine, upHost, upUpgrade,
		"Connection: keep-alive,upgrade,close", upKey, upVersion)},
	{name: "ConnectionEmptyElements", in: upgradeReq(upReqLine, upHost, upUpgrade,
		"Connection: , ,\tUpgrade ,", upKey, upVersion)},
	{name: "ConnectionRepeated", in: upgradeReq(upReqLine, upHost, upUpgrade,
		"Connection: keep-alive", "Connection: Upgrade", upKey, upVersion)},
	{name: "UpgradeList", in: upgradeReq(upReqLine, upHost, "Upgrade: h2c, WebSocket", upConn, upKey, upVersion)},
	{name: "WhitespaceAroundValues", in: upgradeReq(upReqLine, "Host:\t example.com \t", "Upgrade:websocket",
		"Connection:   Upgrade  ", "Sec-WebSocket-Key:\tdGhlIHNhbXBsZSBub25jZQ==\t", "Sec-WebSocket-Version: 13 "),
		check: func(t *testing.T, r *UpgradeRequest) {
			expectField(t, "Host", r.Host, "example.com")
			expectField(t, "Key", r.Key, "dGhlIHNhbXBsZSBub25jZQ==")
			expectField(t, "Version", r.Version, "13")
		}},
	{name: "InnerWhitespaceKept", in: validUpgrade("Authorization: Bearer \t abc"), check: func(t *testing.T, r *UpgradeRequest) {
		expectField(t, "Authorization", r.Authorization, "Bearer \t abc")
	}},
	{name: "RepeatedProtocolKeepsFirst", in: validUpgrade("Sec-WebSocket-Protocol: a, b", "Sec-WebSocket-Protocol: c",
		"Sec-WebSocket-Extensions: x", "Sec-WebSocket-Extensions: y"),
		check: func(t *testing.T, r *UpgradeRequest) {
			expectField(t, "Protocol", r.Protocol, "a, b")
			expectField(t, "Extensions", r.Extensions, "x")
		}},
	{name: "RepeatedXForwardedForKeepsLast", in: validUpgrade("X-Forwarded-For: 6.6.6.6", "X-Forwarded-For: 10.0.0.1, 10.0.0.2"),
		check: func(t *testing.T, r *UpgradeRequest) {
			expectField(t, "XForwardedFor", r.XForwardedFor, "10.0.0.1, 10.0.0.2")
		}},
	{name: "QueryEmpty", in: upgradeReq("GET /chat? HTTP/1.1", upHost, upUpgrade, upConn, upKey, upVersion),
		check: func(t *testing.T, r *UpgradeRequest) {
			expectField(t, "Path", r.Path, "/chat")
			if r.Query == nil || len(r.Query) != 0 {
				t.Errorf("Query = %q (nil %v), want empty non-nil", r.Query, r.Query == nil)
			}
		}},
	{name: "QueryWithQuestionMarks", in: upgradeReq("GET /?a=?b HTTP/1.1", upHost, upUpgrade, upConn, upKey, upVersion),
		check: func(t *testing.T, r *UpgradeRequest) {
			expectField(t, "Path", r.Path, "/")
			expectField(t, "Query", r.Query, "a=?b")
		}},
	{name: "NoQuery", in: validUpgrade(), check: func(t *testing.T, r *UpgradeRequest) {
		if r.Query != nil {
			t.Errorf("Query = %q, want nil", r.Query)
		}
	}},
	{name: "PipelinedFrameAfterHead", in: validUpgrade() + "\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58",
		check: func(t *testing.T, r *UpgradeRequest) {
			if r.HeaderBytes != len(validUpgrade()) {
				t.Errorf("HeaderBytes = %d, want %d", r.HeaderBytes, len(validUpgrade()))
			}
		}},
	{name: "UnknownHeadersAndObsText", in: validUpgrade("X-Name: caf\xc3\xa9", "X-Empty:", "X-Sp:   ", "Accept: */*")},
	{name: "HostWithPort", in: upgradeReq(upReqLine, "Host: [::1]:8080", upUpgrade, upConn, upKey, upVersion)},
	{name: "ExactlyMaxHeaderBytes", in: validUpgrade(), max: len(validUpgrade())},

	// 400: request line.
	{name: "EmptyRequestLine", in: "\r\n" + validUpgrade(), err: ErrBadRequestLine},
	{name: "OnlyBlankLine", in: "\r\n\r\n", err: ErrBadRequestLine},
	{name: "RequestLineTwoParts", in: upgradeReq("GET /chat", upHost), err: ErrBadRequestLine},
	{name: "RequestLineDoubleSpace", in: upgradeReq("GET  /chat HTTP/1.1", upHost), err: ErrBadRequestLine},
	{name: "RequestLineTrailingSpace", in: upgradeReq("GET /chat HTTP/1.1 ", upHost), err: ErrBadRequestLine},
	{name: "RequestLineLeadingSpace", in: upgradeReq(" GET /chat HTTP/1.1", upHost), err: ErrBadRequestLine},
	{name: "RequestLineTab", in: upgradeReq("GET\t/chat HTTP/1.1", upHost), err: ErrBadRequestLine},
	{name: "SpaceInTarget", in: upgradeReq("GET /a b HTTP/1.1", upHost), err: ErrBadRequestLine},
	{name: "LowerCaseHTTPName", in: upgradeReq("GET /chat http/1.1", upHost), err: ErrBadRequestLine},
	{name: "VersionGarbage", in: upgradeReq("GET /chat HTTP/1.1x", upHost), err: ErrBadRequestLine},
	{name: "LoneLFEverywhere", in: strings.ReplaceAll(validUpgrade(), "\r\n", "\n"), err: ErrBadRequestLine},
	{name: "HTTP10", in: upgradeReq("GET /chat HTTP/1.0", upHost, upUpgrade, upConn, upKey, upVersion), err: ErrUnsupportedHTTPVersion},
	{name: "HTTP20", in: upgradeReq("GET /chat HTTP/2.0", upHost, upUpgrade, upConn, upKey, upVersion), err: ErrUnsupportedHTTPVersion},
	{name: "HTTP10BeforeMethod", in: upgradeReq("POST /chat HTTP/1.0", upHost), err: ErrUnsupportedHTTPVersion},

	// 400: header lines.
	{name: "ObsFold", in: validUpgrade("X-A: a", " folded"), err: ErrBadHeaderLine},
	{name: "ObsFoldTab", in: validUpgrade("X-A: a", "\tfolded: b"), err: ErrBadHeaderLine},
	{name: "WhitespaceBeforeFirstHeader", in: upgradeReq(upReqLine, " Host: example.com", upUpgrade, upConn, upKey, upVersion), err: ErrBadHeaderLine},
	{name: "NoColon", in: validUpgrade("X-NoColon"), err: ErrBadHeaderLine},
	{name: "EmptyName", in: validUpgrade(": value"), err: ErrBadHeaderLine},
	{name: "SpaceBeforeColon", in: validUpgrade("X-A : b"), err: ErrBadHeaderLine},
	{name: "InvalidNameChar", in: validUpgrade("X(A): b"), err: ErrBadHeaderLine},
	{name: "NulInValue", in: validUpgrade("X-A: a\x00b"), err: ErrBadHeaderLine},
	{name: "DelInValue", in: validUpgrade("X-A: a\x7fb"), err: ErrBadHeaderLine},
	{name: "CRInValue", in: validUpgrade("X-A: a\rb"), err: ErrBadHeaderLine},
	{name: "LoneLFHeaderLine", in: upgradeReq(upReqLine, upHost, upUpgrade+"\n"+upConn, upKey, upVersion), err: ErrBadHeaderLine},
	{name: "LoneLFBlankLine", in: strings.TrimSuffix(validUpgrade(), "\r\n") + "\n", err: ErrBadHeaderLine},
	{name: "LFThenCRLFEndsHeadEarly", in: upgradeReq(upReqLine, upHost, upUpgrade+"\n\r\nX: y", upConn), err: ErrBadHeaderLine},
	{name: "CRCRLF", in: upgradeReq(upReqLine, upHost+"\r", upUpgrade, upConn, upKey, upVersion), err: ErrBadHeaderLine},
	{name: "DuplicateHost", in: validUpgrade("Host: evil.example.com"), err: ErrDuplicateHeader},
	{name: "DuplicateHostEmptyFirst", in: upgradeReq(upReqLine, "Host:", upHost, upUpgrade, upConn, upKey, upVersion), err: ErrDuplicateHeader},
	{name: "DuplicateKey", in: validUpgrade("sec-websocket-key: AAAAAAAAAAAAAAAAAAAAAA=="), err: ErrDuplicateHeader},
	{name: "DuplicateVersion", in: validUpgrade(upVersion), err: ErrDuplicateHeader},
	{name: "DuplicateOrigin", in: validUpgrade("Origin: https://a", "Origin: https://b"), err: ErrDuplicateHeader},
	{name: "DuplicateAuthorization", in: validUpgrade("Authorization: a", "Authorization: b"), err: ErrDuplicateHeader},
	{name: "BadHeaderBeforeBadMethod", in: upgradeReq("POST /chat HTTP/1.1", "X-NoColon"), err: ErrBadHeaderLine},

	// 405.
	{name: "POST", in: upgradeReq("POST /chat HTTP/1.1", upHost, upUpgrade, upConn, upKey, upVersion), err: ErrMethodNotAllowed},
	{name: "LowerCaseGet", in: upgradeReq("get /chat HTTP/1.1", upHost, upUpgrade, upConn, upKey, upVersion), err: ErrMethodNotAllowed},
	{name: "HEAD", in: upgradeReq("HEAD /chat HTTP/1.1", upHost), err: ErrMethodNotAllowed},
	{name: "CONNECTAuthorityForm", in: upgradeReq("CONNECT example.com:443 HTTP/1.1", upHost), err: ErrMethodNotAllowed},
	{name: "OPTIONSAsterisk", in: upgradeReq("OPTIONS * HTTP/1.1", upHost), err: ErrMethodNotAllowed},
	{name: "POSTWithoutUpgradeHeaders", in: upgradeReq("POST /chat HTTP/1.1"), err: ErrMethodNotAllowed},

	// 400: request target.
	{name: "TargetWithoutSlash", in: upgradeReq("GET chat HTTP/1.1", upHost, upUpgrade, upConn, upKey, upVersion), err: ErrBadRequestTarget},
	{name: "TargetAbsoluteForm", in: upgradeReq("GET http://example.com/chat HTTP/1.1", upHost, upUpgrade, upConn, upKey, upVersion), err: ErrBadRequestTarget},
	{name: "TargetAsterisk", in: upgradeReq("GET * HTTP/1.1", upHost, upUpgrade, upConn, upKey, upVersion), err: ErrBadRequestTarget},
	{name: "TargetFragment", in: upgradeReq("GET /chat#x HTTP/1.1", upHost, upUpgrade, upConn, upKey, upVersion), err: ErrBadRequestTarget},
	{name: "TargetNonASCII", in: upgradeReq("GET /caf\xc3\xa9 HTTP/1.1", upHost, upUpgrade, upConn, upKey, upVersion), err: ErrBadRequestTarget},
	{name: "TargetControl", in: upgradeReq("GET /a\x01 HTTP/1.1", upHost, upUpgrade, upConn, upKey, upVersion), err: ErrBadRequestTarget},

	// 400: required headers.
	{name: "MissingHost", in: upgradeReq(upReqLine, upUpgrade, upConn, upKey, upVersion), err: ErrMissingHost},
	{name: "EmptyHost", in: upgradeReq(upReqLine, "Host: \t", upUpgrade, upConn, upKey, upVersion), err: ErrMissingHost},
	{name: "NoHeaders", in: upgradeReq(upReqLine), err: ErrMissingHost},
	{name: "MissingUpgrade", in: upgradeReq(upReqLine, upHost, upConn, upKey, upVersion), err: ErrNotWebSocketUpgrade},
	{name: "UpgradeOther", in: upgradeReq(upReqLine, upHost, "Upgrade: h2c", upConn, upKey, upVersion), err: ErrNotWebSocketUpgrade},
	{name: "UpgradeWithVersionSuffix", in: upgradeReq(upReqLine, upHost, "Upgrade: websocket/13", upConn, upKey, upVersion), err: ErrNotWebSocketUpgrade},
	{name: "UpgradeSubstring", in: upgradeReq(upReqLine, upHost, "Upgrade: websockets", upConn, upKey, upVersion), err: ErrNotWebSocketUpgrade},
	{name: "MissingConnection", in: upgradeReq(upReqLine, upHost, upUpgrade, upKey, upVersion), err: ErrNoConnectionUpgrade},
	{name: "ConnectionKeepAliveOnly", in: upgradeReq(upReqLine, upHost, upUpgrade, "Connection: keep-alive", upKey, upVersion), err: ErrNoConnectionUpgrade},
	{name: "ConnectionUpgraded", in: upgradeReq(upReqLine, upHost, upUpgrade, "Connection: upgraded", upKey, upVersion), err: ErrNoConnectionUpgrade},

	// 426.
	{name: "Version8", in: upgradeReq(upReqLine, upHost, upUpgrade, upConn, upKey, "Sec-WebSocket-Version: 8"), err: ErrBadWebSocketVersion},
	{name: "VersionList", in: upgradeReq(upReqLine, upHost, upUpgrade, upConn, upKey, "Sec-WebSocket-Version: 13, 8"), err: ErrBadWebSocketVersion},
	{name: "VersionMissing", in: upgradeReq(upReqLine, upHost, upUpgrade, upConn, upKey), err: ErrBadWebSocketVersion},
	{name: "VersionBeforeKey", in: upgradeReq(upReqLine, upHost, upUpgrade, upConn, "Sec-WebSocket-Version: 8"), err: ErrBadWebSocketVersion},

	// 400: key.
	{name: "KeyMissing", in: upgradeReq(upReqLine, upHost, upUpgrade, upConn, upVersion), err: ErrBadWebSocketKey},
	{name: "KeyEmpty", in: upgradeReq(upReqLine, upHost, upUpgrade, upConn, "Sec-WebSocket-Key:", upVersion), err: ErrBadWebSocketKey},
	{name: "KeyShort", in: upgradeReq(upReqLine, upHost, upUpgrade, upConn, "Sec-WebSocket-Key: dGhlIHNhbXBsZQ==", upVersion), err: ErrBadWebSocketKey},
	{name: "KeyEighteenBytes", in: upgradeReq(upReqLine, upHost, upUpgrade, upConn, "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAAAA", upVersion), err: ErrBadWebSocketKey},
	{name: "KeyBadChar", in: upgradeReq(upReqLine, upHost, upUpgrade, upConn, "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ!=", upVersion), err: ErrBadWebSocketKey},
	{name: "KeyURLAlphabet", in: upgradeReq(upReqLine, upHost, upUpgrade, upConn, "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ-_", upVersion), err: ErrBadWebSocketKey},
	{name: "KeyInnerSpace", in: upgradeReq(upReqLine, upHost, upUpgrade, upConn, "Sec-WebSocket-Key: dGhlIHNhbXBs ZSBub25jZQ=", upVersion), err: ErrBadWebSocketKey},

	// 431.
	{name: "OneOverMaxHeaderBytes", in: validUpgrade(), max: len(validUpgrade()) - 1, err: ErrHeaderTooLarge},
	{name: "TooLargeUnterminated", in: strings.Repeat("A", 100), max: 64, err: ErrHeaderTooLarge},
	{name: "TooLargeDefault", in: validUpgrade("Cookie: " + strings.Repeat("x", DefaultMaxHeaderBytes)), err: ErrHeaderTooLarge},
}

func TestParseUpgradeCases(t *testing.T) {
	for _, tc := range upgradeCases {
		t.Run(tc.name, func(t *testing.T) {
			var r UpgradeRequest
			n, err := ParseUpgrade([]byte(tc.in), &r, tc.max)
			if err != tc.err {
				t.Fatalf("err = %v, want %v", err, tc.err)
			}
			if err != nil {
				if n != 0 {
					t.Errorf("n = %d on error, want 0", n)
				}
				return
			}
			if n != r.HeaderBytes || n > len(tc.in) || !strings.HasSuffix(tc.in[:n], "\r\n\r\n") {
				t.Errorf("n = %d, HeaderBytes = %d, len = %d", n, r.HeaderBytes, len(tc.in))
			}
			expectField(t, "Method", r.Method, "GET")
			expectField(t, "Version", r.Version, "13")
			if !r.UpgradeWebSocket || !r.ConnectionUpgrade || len(r.Key) != 24 || r.Path[0] != '/' {
				t.Errorf("accepted request lacks a required part: %s", fmtUpgrade(&r))
			}
			if tc.check != nil {
				tc.check(t, &r)
			}
			upgradeAgreesWithNetHTTP(t, tc.in[:n], &r)
		})
	}
}

// upgradeAgreesWithNetHTTP checks an accepted head against net/http's
// reading of it.
func upgradeAgreesWithNetHTTP(t *testing.T, head string, r *UpgradeRequest) {
	t.Helper()
	req, err := http.ReadRequest(bufio.NewReader(strings.NewReader(head)))
	if err != nil {
		t.Fatalf("net/http rejects a head we accept: %v", err)
	}
	if req.Method != string(r.Method) || req.Host != string(r.Host) ||
		req.URL.EscapedPath() != string(r.Path) || req.URL.RawQuery != string(r.Query) {
		t.Errorf("net/http reads %s %s %s ? %s", req.Method, req.Host, req.URL.EscapedPath(), req.URL.RawQuery)
	}
	for name, got := range map[string][]byte{
		"Origin": r.Origin, "Sec-WebSocket-Key": r.Key, "Sec-WebSocket-Version": r.Version,
		"Sec-WebSocket-Protocol": r.Protocol, "Sec-WebSocket-Extensions": r.Extensions,
		"Authorization": r.Authorization,
	} {
		if v := req.Header.Values(name); len(v) > 0 && v[0] != string(got) {
			t.Errorf("%s: net/http %q, we %q", name, v[0], got)
		}
	}
	if v := req.Header.Values("X-Forwarded-For"); len(v) > 0 && v[len(v)-1] != string(r.XForwardedFor) {
		t.Errorf("X-Forwarded-For: net/http %q, we %q", v, r.XForwardedFor)
	}
}

// TestParseUpgradeSplitAtEveryByteMatchesOneShot feeds every case one more
// byte at a time, as a loop receiving one byte per read would: until the head
// is complete the answer is ErrIncomplete (ErrHeaderTooLarge once past the
// limit), and from then on it is the one-shot answer. ParseUpgrade keeps no
// state, so this covers a split into two chunks at every position too.
func TestParseUpgradeSplitAtEveryByteMatchesOneShot(t *testing.T) {
	for _, tc := range upgradeCases {
		t.Run(tc.name, func(t *testing.T) {
			b := []byte(tc.in)
			var whole UpgradeRequest
			wantN, wantErr := ParseUpgrade(b, &whole, tc.max)
			done := -1 // first prefix length with a final answer
			for k := 0; k <= len(b); k++ {
				var r UpgradeRequest
				n, err := ParseUpgrade(b[:k], &r, tc.max)
				if err == ErrIncomplete {
					if done >= 0 {
						t.Fatalf("prefix %d: ErrIncomplete after a final answer at %d", k, done)
					}
					continue
				}
				if done < 0 {
					done = k
				}
				if n != wantN || err != wantErr {
					t.Fatalf("prefix %d: (%d, %v), one-shot (%d, %v)", k, n, err, wantN, wantErr)
				}
				if err == nil && !reflect.DeepEqual(r, whole) {
					t.Fatalf("prefix %d: %s\none-shot %s", k, fmtUpgrade(&r), fmtUpgrade(&whole))
				}
			}
			limit := tc.max
			if limit <= 0 {
				limit = DefaultMaxHeaderBytes
			}
			want := upgradeBlankLineEnd(tc.in)
			if wantErr == ErrHeaderTooLarge {
				want = limit + 1
			}
			if done != want {
				t.Errorf("final answer at prefix %d, want %d", done, want)
			}
		})
	}
}

// upgradeBlankLineEnd is the length of s up to its first empty line (ended by CRLF
// or a lone LF), or -1.
func upgradeBlankLineEnd(s string) int {
	end := -1
	for _, sep := range []string{"\n\n", "\n\r\n"} {
		if i := strings.Index(s, sep); i >= 0 && (end < 0 || i+len(sep) < end) {
			end = i + len(sep)
		}
	}
	return end
}

// TestUpgradeHeadLenResumesWhereItStopped feeds every case a byte at a time
// to UpgradeHeadLen, passing next back as from, as the loop does; it must
// answer at the same prefix, with the same n or error, as ParseUpgrade.
func TestUpgradeHeadLenResumesWhereItStopped(t *testing.T) {
	for _, tc := range upgradeCases {
		t.Run(tc.name, func(t *testing.T) {
			b := []byte(tc.in)
			var r UpgradeRequest
			next := 0
			for k := 0; k <= len(b); k++ {
				n, nx, err := UpgradeHeadLen(b[:k], next, tc.max)
				wantN, wantErr := ParseUpgrade(b[:k], &r, tc.max)
				if err == ErrIncomplete {
					if wantErr != ErrIncomplete {
						t.Fatalf("prefix %d: ErrIncomplete, ParseUpgrade says %v", k, wantErr)
					}
					if nx < next || nx > k {
						t.Fatalf("prefix %d: next %d after %d", k, nx, next)
					}
					next = nx
					continue
				}
				if wantErr == ErrIncomplete || (err == ErrHeaderTooLarge) != (wantErr == ErrHeaderTooLarge) ||
					wantErr == nil && n != wantN || err == nil && n != upgradeBlankLineEnd(tc.in) {
					t.Fatalf("prefix %d: (%d, %v), ParseUpgrade (%d, %v)", k, n, err, wantN, wantErr)
				}
				return
			}
			t.Fatal("no answer for the whole input")
		})
	}
}

func TestUpgradeHeadLenIgnoresBadFrom(t *testing.T) {
	b := []byte(validUpgrade())
	for _, from := range []int{-1, len(b) + 1, 1 << 30} {
		if n, _, err := UpgradeHeadLen(b, from, 0); err != nil || n != len(b) {
			t.Errorf("from %d: (%d, %v), want (%d, nil)", from, n, err, len(b))
		}
	}
	if n, _, err := UpgradeHeadLen(b, 0, len(b)-1); err != ErrHeaderTooLarge || n != 0 {
		t.Errorf("over the limit: (%d, %v)", n, err)
	}
}

func TestParseUpgradeTooLargeAsSoonAsOverLimit(t *testing.T) {
	b := []byte(strings.Repeat("GET /", 2000))
	for _, limit := range []int{1, 16, 100, 4095} {
		var r UpgradeRequest
		if _, err := ParseUpgrade(b[:limit], &r, limit); err != ErrIncomplete {
			t.Errorf("limit %d, %d bytes: err = %v, want ErrIncomplete", limit, limit, err)
		}
		if _, err := ParseUpgrade(b[:limit+1], &r, limit); err != ErrHeaderTooLarge {
			t.Errorf("limit %d, %d bytes: err = %v, want ErrHeaderTooLarge", limit, limit+1, err)
		}
	}
	var r UpgradeRequest
	if _, err := ParseUpgrade(b[:DefaultMaxHeaderBytes+1], &r, 0); err != ErrHeaderTooLarge {
		t.Errorf("default limit: err = %v, want ErrHeaderTooLarge", err)
	}
	if _, err := ParseUpgrade(b[:DefaultMaxHeaderBytes], &r, -1); err != ErrIncomplete {
		t.Errorf("default limit: err = %v, want ErrIncomplete", err)
	}
}

func TestParseUpgradeOverwritesRequest(t *testing.T) {
	var r UpgradeRequest
	if _, err := ParseUpgrade([]byte(validUpgrade("Origin: https://a", "X-Forwarded-For: 1.2.3.4")), &r, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := ParseUpgrade([]byte(validUpgrade()), &r, 0); err != nil {
		t.Fatal(err)
	}
	if r.Origin != nil || r.XForwardedFor != nil {
		t.Errorf("fields of the previous request survived: %s", fmtUpgrade(&r))
	}
}

func TestUpgradeStatusMapsErrors(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want int
	}{
		{nil, 101},
		{ErrIncomplete, 0},
		{ErrHeaderTooLarge, 431},
		{ErrBadRequestLine, 400},
		{ErrUnsupportedHTTPVersion, 400},
		{ErrBadHeaderLine, 400},
		{ErrDuplicateHeader, 400},
		{ErrMethodNotAllowed, 405},
		{ErrBadRequestTarget, 400},
		{ErrMissingHost, 400},
		{ErrNotWebSocketUpgrade, 400},
		{ErrNoConnectionUpgrade, 400},
		{ErrBadWebSocketVersion, 426},
		{ErrBadWebSocketKey, 400},
		{fmt.Errorf("conn 7: %w", ErrMethodNotAllowed), 405},
		{fmt.Errorf("conn 7: %w", ErrHeaderTooLarge), 431},
		{errors.New("something else"), 500},
	} {
		if got := UpgradeStatus(tc.err); got != tc.want {
			t.Errorf("UpgradeStatus(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
	// Every case's error has a 4xx status.
	for _, tc := range upgradeCases {
		if s := UpgradeStatus(tc.err); tc.err != nil && (s < 400 || s > 499) {
			t.Errorf("%s: status %d for %v", tc.name, s, tc.err)
		}
	}
}

func TestUpgradeAcceptKeyRFCExample(t *testing.T) {
	// RFC 6455 §1.3.
	got := AcceptKey([]byte("prefix:"), []byte("dGhlIHNhbXBsZSBub25jZQ=="))
	if string(got) != "prefix:s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" {
		t.Errorf("AcceptKey = %q", got)
	}
}

func TestUpgradeAcceptKeyMatchesDefinition(t *testing.T) {
	for _, key := range []string{"", "x", "AAAAAAAAAAAAAAAAAAAAAA==", strings.Repeat("k", 92), strings.Repeat("k", 93), strings.Repeat("k", 1000)} {
		sum := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
		if got, want := string(AcceptKey(nil, []byte(key))), base64.StdEncoding.EncodeToString(sum[:]); got != want {
			t.Errorf("AcceptKey(%d-byte key) = %q, want %q", len(key), got, want)
		}
	}
}

func TestAppendUpgradeResponse(t *testing.T) {
	key := []byte("dGhlIHNhbXBsZSBub25jZQ==")
	const base = "HTTP/1.1 101 Switching Protocols\r\n" +
		"Upgrade: websocket\r\n" +
		"Connection: Upgrade\r\n" +
		"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
	for _, tc := range []struct {
		name     string
		protocol string
		want     string
	}{
		{"NoProtocol", "", base + "\r\n"},
		{"Protocol", "chat", base + "Sec-WebSocket-Protocol: chat\r\n\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := AppendUpgradeResponse([]byte("x"), key, []byte(tc.protocol))
			if string(got) != "x"+tc.want {
				t.Errorf("got %q\nwant %q", got, "x"+tc.want)
			}
			resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(got[1:])), nil)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != 101 || resp.Header.Get("Sec-WebSocket-Protocol") != tc.protocol {
				t.Errorf("net/http reads %d %v", resp.StatusCode, resp.Header)
			}
		})
	}
}

func TestUpgradeHTTPErrorIsValidResponse(t *testing.T) {
	for _, tc := range []struct {
		status int
		reason string
		extra  string // header that must be present
	}{
		{400, "Bad Request", ""},
		{403, "Forbidden", ""},
		{404, "Not Found", ""},
		{405, "Method Not Allowed", "Allow: GET"},
		{408, "Request Timeout", ""},
		{426, "Upgrade Required", "Sec-WebSocket-Version: 13"},
		{429, "Too Many Requests", ""},
		{431, "Request Header Fields Too Large", ""},
		{500, "Internal Server Error", ""},
		{503, "Service Unavailable", ""},
		{418, "", ""},
		{42, "Internal Server Error", ""}, // out of range: sent as 500
	} {
		t.Run(strconv.Itoa(tc.status), func(t *testing.T) {
			const msg = "sorry: ünïcode"
			got := AppendHTTPError([]byte("x"), tc.status, msg)[1:]
			status := tc.status
			if status < 100 {
				status = 500
			}
			wantLine := "HTTP/1.1 " + strconv.Itoa(status) + " " + tc.reason + "\r\n"
			if !bytes.HasPrefix(got, []byte(wantLine)) {
				t.Errorf("status line of %q, want %q", got, wantLine)
			}
			if tc.extra != "" && !bytes.Contains(got, []byte("\r\n"+tc.extra+"\r\n")) {
				t.Errorf("%q lacks %q", got, tc.extra)
			}
			resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(got)), nil)
			if err != nil {
				t.Fatalf("net/http cannot read %q: %v", got, err)
			}
			body, err := io.ReadAll(resp.Body)
			if err != nil || string(body) != msg+"\n" || resp.ContentLength != int64(len(msg)+1) {
				t.Errorf("body %q (len %d), err %v", body, resp.ContentLength, err)
			}
			if !resp.Close || resp.Header.Get("Content-Type") != "text/plain; charset=utf-8" {
				t.Errorf("headers %v, close %v", resp.Header, resp.Close)
			}
		})
	}
	want := "HTTP/1.1 405 Method Not Allowed\r\n" +
		"Content-Type: text/plain; charset=utf-8\r\n" +
		"Content-Length: 4\r\n" +
		"Connection: close\r\n" +
		"Allow: GET\r\n" +
		"\r\n" +
		"GET\n"
	if got := AppendHTTPError(nil, 405, "GET"); string(got) != want {
		t.Errorf("got %q\nwant %q", got, want)
	}
}

func TestUpgradeHeaderTokenContains(t *testing.T) {
	for _, tc := range []struct {
		v, token string
		want     bool
	}{
		{"Upgrade", "upgrade", true},
		{"upgrade", "Upgrade", true},
		{"keep-alive, Upgrade", "upgrade", true},
		{"keep-alive,Upgrade", "upgrade", true},
		{"Upgrade, keep-alive", "upgrade", true},
		{" \tUpgrade\t ", "upgrade", true},
		{",,upgrade,,", "upgrade", true},
		{"keep-alive", "upgrade", false},
		{"upgraded", "upgrade", false},
		{"up grade", "upgrade", false},
		{"websocket/13", "websocket", false},
		{"permessage-deflate; client_max_window_bits", "permessage-deflate", false},
		{"chat, superchat", "superchat", true},
		{"chat, superchat", "super", false},
		{"", "upgrade", false},
		{",", "", false},
	} {
		if got := HeaderTokenContains([]byte(tc.v), tc.token); got != tc.want {
			t.Errorf("HeaderTokenContains(%q, %q) = %v, want %v", tc.v, tc.token, got, tc.want)
		}
	}
}

func TestUpgradeQueryValueReturnsFirstRawValue(t *testing.T) {
	for _, tc := range []struct {
		query, name string
		want        string
		wantNil     bool
	}{
		{"topic=lobby", "topic", "lobby", false},
		{"a=1&topic=lobby&topic=other", "topic", "lobby", false},
		{"topic", "topic", "", false},
		{"topic=", "topic", "", false},
		{"topic=a=b", "topic", "a=b", false},
		{"x=1&&topic=2", "topic", "2", false},
		{"token=abc%2B123", "token", "abc%2B123", false},
		{"Topic=a", "topic", "", true},
		{"topics=a", "topic", "", true},
		{"x=topic", "topic", "", true},
		{"a=1;topic=2", "topic", "", true},
		{"", "topic", "", true},
		{"=x", "", "x", false},
	} {
		got := QueryValue([]byte(tc.query), tc.name)
		if (got == nil) != tc.wantNil || string(got) != tc.want {
			t.Errorf("QueryValue(%q, %q) = %q (nil %v), want %q (nil %v)", tc.query, tc.name, got, got == nil, tc.want, tc.wantNil)
		}
	}
}

func TestUpgradeAppendUnescapeMatchesNetURL(t *testing.T) {
	for _, v := range []string{"", "plain", "a+b", "abc%2B123", "%41%62%7e", "%E2%82%AC", "%zz", "%4", "%", "a%2", "100%", "%%41", "%C3%A9t%C3%A9"} {
		got, ok := AppendUnescape([]byte("pre"), []byte(v))
		want, err := url.QueryUnescape(v)
		if ok != (err == nil) {
			t.Errorf("AppendUnescape(%q) ok = %v, url.QueryUnescape err = %v", v, ok, err)
			continue
		}
		if !ok {
			want = ""
		}
		if string(got) != "pre"+want {
			t.Errorf("AppendUnescape(%q) = %q, want %q", v, got, "pre"+want)
		}
	}
}

func BenchmarkParseUpgrade(b *testing.B) {
	req := []byte(browserRequest)
	b.Run("OneShot", func(b *testing.B) {
		var r UpgradeRequest
		b.SetBytes(int64(len(req)))
		b.ReportAllocs()
		for b.Loop() {
			if _, err := ParseUpgrade(req, &r, 0); err != nil {
				b.Fatal(err)
			}
		}
	})
	// The worst a client can make a loop do: one read per byte, each
	// rescanning everything buffered so far.
	b.Run("ByteAtATime", func(b *testing.B) {
		var r UpgradeRequest
		b.SetBytes(int64(len(req)))
		b.ReportAllocs()
		for b.Loop() {
			for k := 1; k <= len(req); k++ {
				if _, err := ParseUpgrade(req[:k], &r, 0); err != nil && err != ErrIncomplete {
					b.Fatal(err)
				}
			}
		}
	})
	// The same with the offset kept between reads: linear.
	b.Run("ByteAtATimeResumed", func(b *testing.B) {
		var r UpgradeRequest
		b.SetBytes(int64(len(req)))
		b.ReportAllocs()
		for b.Loop() {
			next := 0
			for k := 1; k <= len(req); k++ {
				n, nx, err := UpgradeHeadLen(req[:k], next, 0)
				if err == ErrIncomplete {
					next = nx
					continue
				}
				if _, err := ParseUpgrade(req[:n], &r, 0); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
	// A client trickling an unterminated head of short lines up to the
	// default limit, the most a connection can make the loop scan.
	junk := bytes.Repeat([]byte("X: y\r\n"), DefaultMaxHeaderBytes/6+1)
	b.Run("ByteAtATimeToLimit", func(b *testing.B) {
		var r UpgradeRequest
		b.ReportAllocs()
		for b.Loop() {
			for k := 1; k <= DefaultMaxHeaderBytes+1; k++ {
				if _, err := ParseUpgrade(junk[:k], &r, 0); err != ErrIncomplete && err != ErrHeaderTooLarge {
					b.Fatal(err)
				}
			}
		}
	})
	b.Run("ByteAtATimeToLimitResumed", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			next := 0
			for k := 1; k <= DefaultMaxHeaderBytes+1; k++ {
				_, nx, err := UpgradeHeadLen(junk[:k], next, 0)
				if err != ErrIncomplete && err != ErrHeaderTooLarge {
					b.Fatal(err)
				}
				next = nx
			}
		}
	})
}

func BenchmarkAppendUpgradeResponse(b *testing.B) {
	key := []byte("x3JJHMbDL1EzLkh9GBhXDw==")
	dst := make([]byte, 0, 256)
	b.ReportAllocs()
	for b.Loop() {
		dst = AppendUpgradeResponse(dst[:0], key, []byte("chat"))
	}
}

func expectField(t *testing.T, field string, got []byte, want string) {
	t.Helper()
	if string(got) != want {
		t.Errorf("%s = %q, want %q", field, got, want)
	}
}

func fmtUpgrade(r *UpgradeRequest) string {
	return fmt.Sprintf("{Method:%q Path:%q Query:%q Host:%q Origin:%q Key:%q Protocol:%q Extensions:%q Version:%q Authorization:%q XForwardedFor:%q HeaderBytes:%d UpgradeWebSocket:%v ConnectionUpgrade:%v}",
		r.Method, r.Path, r.Query, r.Host, r.Origin, r.Key, r.Protocol, r.Extensions, r.Version,
		r.Authorization, r.XForwardedFor, r.HeaderBytes, r.UpgradeWebSocket, r.ConnectionUpgrade)
}
