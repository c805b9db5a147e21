package web

import (
	"bytes"
	"compress/gzip"
	"io"
	"net"
	"regexp"
	"strings"
	"testing"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttputil"
)

// serve runs Handler behind a real fasthttp server on an in-memory
// listener, answering 404 where Handler declines, and returns a client for
// it. A real server, so HEAD and headers behave as on the wire.
func serve(t *testing.T) *fasthttp.Client {
	t.Helper()
	ln := fasthttputil.NewInmemoryListener()
	s := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		if !Handler(ctx) {
			ctx.SetStatusCode(fasthttp.StatusNotFound)
			ctx.SetBodyString("not web")
		}
	}}
	go func() { _ = s.Serve(ln) }() // returns when the listener closes
	t.Cleanup(func() { ln.Close() })
	return &fasthttp.Client{Dial: func(string) (net.Conn, error) { return ln.Dial() }}
}

type reply struct {
	status int
	header map[string]string
	body   []byte
}

func do(t *testing.T, c *fasthttp.Client, method, uri string, header ...string) reply {
	t.Helper()
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.Header.SetMethod(method)
	req.SetRequestURI("http://chat.example:9002" + uri)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	if method == fasthttp.MethodHead {
		resp.SkipBody = true
	}
	if err := c.Do(req, resp); err != nil {
		t.Fatalf("%s %s: %v", method, uri, err)
	}
	r := reply{status: resp.StatusCode(), header: map[string]string{}, body: bytes.Clone(resp.Body())}
	for k, v := range resp.Header.All() {
		r.header[string(k)] = string(v)
	}
	return r
}

func TestHandlerServesEachFileWithItsType(t *testing.T) {
	c := serve(t)
	for _, tc := range []struct {
		path, contentType, contains string
	}{
		{"/", "text/html; charset=utf-8", "<title>chatgg</title>"},
		{"/static/app.js", "text/javascript; charset=utf-8", "export function histogramQuantile"},
		{"/static/style.css", "text/css; charset=utf-8", ":root"},
		{"/static/favicon.svg", "image/svg+xml", "<svg"},
	} {
		t.Run(tc.path, func(t *testing.T) {
			r := do(t, c, "GET", tc.path)
			if r.status != 200 {
				t.Fatalf("status %d, want 200", r.status)
			}
			if got := r.header["Content-Type"]; got != tc.contentType {
				t.Errorf("Content-Type %q, want %q", got, tc.contentType)
			}
			if !bytes.Contains(r.body, []byte(tc.contains)) {
				t.Errorf("body lacks %q", tc.contains)
			}
			if r.header["X-Content-Type-Options"] != "nosniff" {
				t.Errorf("X-Content-Type-Options %q, want nosniff", r.header["X-Content-Type-Options"])
			}
			if !regexp.MustCompile(`^"[0-9a-f]{16}"$`).MatchString(r.header["Etag"]) {
				t.Errorf("ETag %q, want a quoted hash", r.header["Etag"])
			}
		})
	}
}

func TestHandlerDeclinesOtherPaths(t *testing.T) {
	c := serve(t)
	for _, path := range []string{
		"/v1/topics", "/metrics", "/index.html", "/static", "/static/", "/static/nope.js",
		"/static/../web.go", "/static/app.js/", "/STATIC/app.js",
	} {
		t.Run(path, func(t *testing.T) {
			r := do(t, c, "GET", path)
			if r.status != 404 || string(r.body) != "not web" {
				t.Errorf("GET %s: %d %.40q, want the caller's 404", path, r.status, r.body)
			}
		})
	}
}

func TestPageHasStrictCSP(t *testing.T) {
	r := do(t, serve(t), "GET", "/")
	csp := r.header["Content-Security-Policy"]
	for _, want := range []string{
		"default-src 'none'", "script-src 'self';", "style-src 'self';",
		"connect-src 'self' ws://chat.example:* wss://chat.example:*;",
		"frame-ancestors 'none'", "base-uri 'none'", "require-trusted-types-for 'script'",
	} {
		if !strings.Contains(csp, want) {
			t.Errorf("CSP %q lacks %q", csp, want)
		}
	}
	if strings.Contains(csp, "unsafe-") {
		t.Errorf("CSP %q allows something unsafe", csp)
	}
}

func TestCSPConnectSrcFollowsOnlyPlainHosts(t *testing.T) {
	for _, tc := range []struct{ host, want string }{
		{"127.0.0.1:9002", "ws://127.0.0.1:* wss://127.0.0.1:*"},
		{"chat.example.com", "ws://chat.example.com:* wss://chat.example.com:*"},
		{"[::1]:9002", "ws: wss:"},
		{"evil; script-src *", "ws: wss:"},
		{"", "ws: wss:"},
	} {
		t.Run(tc.host, func(t *testing.T) {
			got := csp([]byte(tc.host))
			if !strings.Contains(got, "connect-src 'self' "+tc.want+";") {
				t.Errorf("csp(%q) = %q, want connect-src 'self' %s", tc.host, got, tc.want)
			}
		})
	}
}

func TestHandlerAnswersNotModified(t *testing.T) {
	c := serve(t)
	first := do(t, c, "GET", "/static/app.js")
	etag := first.header["Etag"]
	for _, inm := range []string{etag, "W/" + etag, `"nope", ` + etag, "*"} {
		r := do(t, c, "GET", "/static/app.js", "If-None-Match", inm)
		if r.status != 304 || len(r.body) != 0 {
			t.Errorf("If-None-Match %s: %d with %d bytes, want 304 and none", inm, r.status, len(r.body))
		}
		if r.header["Etag"] != etag {
			t.Errorf("If-None-Match %s: ETag %q, want %q", inm, r.header["Etag"], etag)
		}
	}
	if r := do(t, c, "GET", "/static/app.js", "If-None-Match", `"stale"`); r.status != 200 {
		t.Errorf("stale If-None-Match: %d, want 200", r.status)
	}
}

// The page names its assets with ?v=<hash>: those URLs are cached for good,
// the page itself and unversioned asset URLs are revalidated.
func TestVersionedAssetsAreImmutable(t *testing.T) {
	c := serve(t)
	page := do(t, c, "GET", "/")
	if got := page.header["Cache-Control"]; got != cacheRevalidate {
		t.Errorf("page Cache-Control %q, want %q", got, cacheRevalidate)
	}
	for _, asset := range []string{"/static/app.js", "/static/style.css", "/static/favicon.svg"} {
		m := regexp.MustCompile(regexp.QuoteMeta(asset) + `\?v=([0-9a-f]{16})"`).FindSubmatch(page.body)
		if m == nil {
			t.Errorf("page does not refer to %s?v=<hash>", asset)
			continue
		}
		if got := do(t, c, "GET", asset+"?v="+string(m[1])).header["Cache-Control"]; got != cacheImmutable {
			t.Errorf("%s?v=current: Cache-Control %q, want %q", asset, got, cacheImmutable)
		}
		if got := do(t, c, "GET", asset+"?v=0000000000000000").header["Cache-Control"]; got != cacheRevalidate {
			t.Errorf("%s?v=old: Cache-Control %q, want %q", asset, got, cacheRevalidate)
		}
		if got := do(t, c, "GET", asset).header["Etag"]; got != `"`+string(m[1])+`"` {
			t.Errorf("%s: ETag %s does not match the page's ?v=%s", asset, got, m[1])
		}
	}
}

func TestHandlerGzipsForClientsThatAsk(t *testing.T) {
	c := serve(t)
	plain := do(t, c, "GET", "/static/app.js")
	for _, tc := range []struct {
		ae   string
		gzip bool
	}{
		{"gzip, deflate, br", true},
		{"br;q=1.0, gzip;q=0.8", true},
		{"gzip;q=0", false},
		{"gzip; q=0.000", false},
		{"identity", false},
		{"", false},
	} {
		t.Run(tc.ae, func(t *testing.T) {
			r := do(t, c, "GET", "/static/app.js", "Accept-Encoding", tc.ae)
			if r.header["Vary"] != "Accept-Encoding" {
				t.Errorf("Vary %q, want Accept-Encoding", r.header["Vary"])
			}
			if got := r.header["Content-Encoding"] == "gzip"; got != tc.gzip {
				t.Fatalf("gzip %v, want %v", got, tc.gzip)
			}
			body := r.body
			if tc.gzip {
				zr, err := gzip.NewReader(bytes.NewReader(r.body))
				if err != nil {
					t.Fatal(err)
				}
				if body, err = io.ReadAll(zr); err != nil {
					t.Fatal(err)
				}
				if r.header["Etag"] == plain.header["Etag"] {
					t.Errorf("gzip and identity share the ETag %s", r.header["Etag"])
				}
			}
			if !bytes.Equal(body, plain.body) {
				t.Error("body differs from the identity body")
			}
		})
	}
}

func TestHandlerAllowsOnlyGetAndHead(t *testing.T) {
	c := serve(t)
	head := do(t, c, "HEAD", "/")
	if head.status != 200 || len(head.body) != 0 || head.header["Content-Type"] != "text/html; charset=utf-8" {
		t.Errorf("HEAD /: %d, %d bytes, %q", head.status, len(head.body), head.header["Content-Type"])
	}
	for _, m := range []string{"POST", "PUT", "DELETE"} {
		r := do(t, c, m, "/static/app.js")
		if r.status != 405 || r.header["Allow"] != "GET, HEAD" {
			t.Errorf("%s: %d Allow %q, want 405 Allow GET, HEAD", m, r.status, r.header["Allow"])
		}
	}
}

// The page must work under its own CSP: no inline script, style or event
// handler, and user text only through textContent (Trusted Types would
// throw at runtime; this catches it before a browser does).
func TestStaticFilesNeedNothingTheCSPForbids(t *testing.T) {
	html, err := staticFS.ReadFile("static/index.html")
	if err != nil {
		t.Fatal(err)
	}
	for _, re := range []string{`<script(?:\s[^>]*)?>\s*[^<\s]`, `\sstyle=`, `\son[a-z]+=`, `<style`, `javascript:`} {
		if loc := regexp.MustCompile(`(?i)` + re).FindIndex(html); loc != nil {
			t.Errorf("index.html has %q at %d: %s", re, loc[0], html[loc[0]:min(len(html), loc[1]+40)])
		}
	}
	js, err := staticFS.ReadFile("static/app.js")
	if err != nil {
		t.Fatal(err)
	}
	for _, sink := range []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function", "setAttribute('style'"} {
		if bytes.Contains(js, []byte(sink)) {
			t.Errorf("app.js uses %s", sink)
		}
	}
}

func TestEveryEmbeddedFileIsServed(t *testing.T) {
	entries, err := staticFS.ReadDir("static")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		p := "/static/" + e.Name()
		if e.Name() == "index.html" {
			p = "/"
		}
		if files[p] == nil {
			t.Errorf("static/%s is embedded but not served (unknown extension?)", e.Name())
		}
	}
}
