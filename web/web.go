// Package web serves chatgg's chat page: index.html, app.js, style.css and
// an icon, embedded in the binary with go:embed, so the page needs no build
// step and no files next to the binary.
//
// It owns the HTTP side of those files: content types, validators (ETag),
// caching, gzip and the security headers, above all a strict
// Content-Security-Policy. The page itself is a plain client of the REST and
// WebSocket APIs (docs/rest.md, docs/protocol.md); this package knows nothing
// about topics or messages. server mounts Handler on the REST port.
package web

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"path"
	"strings"

	"github.com/valyala/fasthttp"
)

//go:embed static/*
var staticFS embed.FS

// versionLen is how many hex digits of a file's SHA-256 go into its ETag and
// into the ?v= of the asset URLs that index.html refers to.
const versionLen = 16

// Caching. index.html is revalidated on every load (cheap: a 304), so a new
// binary shows its new page at once. It refers to its assets with ?v=<hash>,
// and an asset asked for with its current hash can be cached for good; any
// other asset request is revalidated like the page.
const (
	cacheRevalidate = "no-cache"
	cacheImmutable  = "public, max-age=31536000, immutable"
)

// contentTypes maps the extensions we embed to their types. Explicit rather
// than mime.TypeByExtension, which also reads the host's mime.types.
var contentTypes = map[string]string{
	".html": "text/html; charset=utf-8",
	".js":   "text/javascript; charset=utf-8",
	".css":  "text/css; charset=utf-8",
	".svg":  "image/svg+xml",
}

// file is one servable file, prepared once at start-up. Read-only after
// newSite returns, so requests on any goroutine share it without locks.
type file struct {
	body        []byte
	gz          []byte // gzip of body, nil when it would not be smaller
	contentType string
	version     string // hex prefix of the body's SHA-256
	etag        string // `"<version>"`; the gzip representation has `"<version>-gz"`
	etagGz      string
	isPage      bool // the HTML page: gets the per-request CSP
}

// site is the set of files by request path ("/", "/static/app.js").
type site map[string]*file

// files is built once from the embedded files and never changed: a
// start-up constant, not mutable state.
var files = mustSite()

func mustSite() site {
	s, err := newSite()
	if err != nil {
		panic("web: " + err.Error()) // the embedded files are broken: a build mistake
	}
	return s
}

func newSite() (site, error) {
	entries, err := staticFS.ReadDir("static")
	if err != nil {
		return nil, err
	}
	s := make(site)
	var index []byte
	for _, e := range entries {
		name := e.Name()
		b, err := staticFS.ReadFile("static/" + name)
		if err != nil {
			return nil, err
		}
		if name == "index.html" {
			index = b
			continue
		}
		ct, ok := contentTypes[path.Ext(name)]
		if !ok {
			continue // not served: no type we vouch for
		}
		s["/static/"+name] = newFile(b, ct)
	}
	if index == nil {
		return nil, errors.New("static/index.html missing")
	}
	// Point the page at the current version of each asset.
	for p, f := range s {
		quoted := `"` + p + `"`
		if !bytes.Contains(index, []byte(quoted)) {
			continue
		}
		index = bytes.ReplaceAll(index, []byte(quoted), []byte(`"`+p+"?v="+f.version+`"`))
	}
	page := newFile(index, contentTypes[".html"])
	page.isPage = true
	s["/"] = page
	return s, nil
}

func newFile(body []byte, contentType string) *file {
	sum := sha256.Sum256(body)
	v := hex.EncodeToString(sum[:])[:versionLen]
	f := &file{body: body, contentType: contentType, version: v, etag: `"` + v + `"`, etagGz: `"` + v + `-gz"`}
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression) // the level is valid
	_, _ = zw.Write(body)                                    // a bytes.Buffer does not fail
	_ = zw.Close()
	if buf.Len() < len(body) {
		f.gz = buf.Bytes()
	}
	return f
}

// Handler serves the chat page at "/" and its assets under "/static/", and
// reports whether it answered. It returns false, leaving ctx untouched, for
// every other path, so the caller can go on routing. Query strings are
// ignored except for an asset's ?v=, which picks its caching.
//
// Safe for concurrent use; like any fasthttp handler it must not keep ctx.
func Handler(ctx *fasthttp.RequestCtx) bool {
	f, ok := files[string(ctx.Path())]
	if !ok {
		return false
	}
	f.serve(ctx)
	return true
}

func (f *file) serve(ctx *fasthttp.RequestCtx) {
	h := &ctx.Response.Header
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	h.Set("Cross-Origin-Resource-Policy", "same-origin")
	if f.isPage {
		h.Set("Content-Security-Policy", csp(ctx.Host()))
	} else {
		// Assets are never documents; if one is opened directly it runs
		// nothing.
		h.Set("Content-Security-Policy", "default-src 'none'; sandbox")
	}

	if !ctx.IsGet() && !ctx.IsHead() {
		h.Set("Allow", "GET, HEAD")
		ctx.SetStatusCode(fasthttp.StatusMethodNotAllowed)
		ctx.SetContentType("application/json")
		ctx.SetBodyString(`{"error":{"code":405,"message":"method not allowed"}}`)
		return
	}

	cache := cacheRevalidate
	if !f.isPage && string(ctx.QueryArgs().Peek("v")) == f.version {
		cache = cacheImmutable
	}
	h.Set("Cache-Control", cache)
	h.Set("Vary", "Accept-Encoding")

	body, etag := f.body, f.etag
	useGz := f.gz != nil && acceptsGzip(ctx.Request.Header.Peek("Accept-Encoding"))
	if useGz {
		body, etag = f.gz, f.etagGz
	}
	h.Set("ETag", etag)
	if inm := ctx.Request.Header.Peek("If-None-Match"); len(inm) > 0 && etagMatch(inm, f) {
		ctx.SetStatusCode(fasthttp.StatusNotModified)
		ctx.ResetBody()
		return
	}
	ctx.SetStatusCode(fasthttp.StatusOK)
	ctx.SetContentType(f.contentType)
	if useGz {
		h.Set("Content-Encoding", "gzip")
	}
	// The body is shared and read-only: SetBodyRaw does not copy it, and
	// fasthttp only reads it.
	ctx.Response.SetBodyRaw(body)
}

// etagMatch implements If-None-Match's weak comparison (RFC 9110 §13.1.2):
// any listed tag, W/ or not, naming either representation of f, or "*".
func etagMatch(inm []byte, f *file) bool {
	for _, t := range strings.Split(string(inm), ",") {
		t = strings.TrimSpace(t)
		t = strings.TrimPrefix(t, "W/")
		if t == "*" || t == f.etag || t == f.etagGz {
			return true
		}
	}
	return false
}

// acceptsGzip reports whether an Accept-Encoding value lists gzip with a
// non-zero q. Enough of RFC 9110 §12.5.3 for browsers and curl.
func acceptsGzip(ae []byte) bool {
	for _, part := range strings.Split(string(ae), ",") {
		coding, params, _ := strings.Cut(part, ";")
		if !strings.EqualFold(strings.TrimSpace(coding), "gzip") {
			continue
		}
		params = strings.ReplaceAll(strings.TrimSpace(params), " ", "")
		if q, ok := strings.CutPrefix(params, "q="); ok && strings.Trim(q, "0.") == "" {
			return false // q=0, q=0.0, q=0.000: explicitly refused
		}
		return true
	}
	return false
}

// csp returns the page's Content-Security-Policy. Everything is same-origin
// except the WebSocket, which lives on another port of the same host (9001
// next to the page's 9002, or whatever ?ws= says), so connect-src names the
// page's host on any port, over ws: and wss:. A Host that is not a plain
// name or IPv4 address (an IPv6 literal, which CSP host sources cannot
// express, or junk) gets the scheme-only form instead of being echoed into
// the header.
//
// No inline script or style is allowed, and Trusted Types forbid assigning
// strings to HTML sinks such as innerHTML: the page renders user text with
// textContent only, and the policy makes a slip fail loudly.
func csp(hostport []byte) string {
	ws := "ws: wss:"
	if host := hostOnly(hostport); validHost(host) {
		ws = "ws://" + host + ":* wss://" + host + ":*"
	}
	return "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; " +
		"connect-src 'self' " + ws + "; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; " +
		"require-trusted-types-for 'script'; trusted-types 'none'"
}

// hostOnly strips the port from a Host header value.
func hostOnly(hostport []byte) string {
	h := string(hostport)
	if strings.HasPrefix(h, "[") {
		return h // IPv6 literal, with or without a port; validHost refuses it
	}
	if i := strings.LastIndexByte(h, ':'); i >= 0 {
		h = h[:i]
	}
	return h
}

// validHost accepts DNS names and IPv4 addresses: letters, digits, '-' and
// '.', at most 253 bytes.
func validHost(h string) bool {
	if h == "" || len(h) > 253 {
		return false
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}
