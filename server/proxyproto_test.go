package server

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/chatgg/chatgg/codec"
)

func rawHTTP(t *testing.T, addr string, prefix []byte) (*http.Response, error) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	req := append(prefix, "GET /healthz HTTP/1.1\r\nHost: chatgg\r\nConnection: close\r\n\r\n"...)
	if _, err := c.Write(req); err != nil {
		return nil, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	return resp, err
}

func TestRESTProxyProtocol(t *testing.T) {
	s := testServer(t, func(c *Config) { c.ProxyProtocol = true })
	src, dst := netip.MustParseAddrPort("203.0.113.9:4000"), netip.MustParseAddrPort("127.0.0.1:9002")
	for name, hdr := range map[string][]byte{
		"v1": codec.AppendProxyV1(nil, src, dst),
		"v2": codec.AppendProxyV2(nil, src, dst),
	} {
		t.Run(name, func(t *testing.T) {
			resp, err := rawHTTP(t, s.HTTPAddr(), hdr)
			if err != nil || resp.StatusCode != 200 {
				t.Fatalf("with a %s header: %v %v", name, resp, err)
			}
		})
	}
	t.Run("missing header is refused", func(t *testing.T) {
		if resp, err := rawHTTP(t, s.HTTPAddr(), nil); err == nil {
			t.Fatalf("a request without a PROXY header was answered: %d", resp.StatusCode)
		}
		_, body, _ := httpDoProxy(t, s.HTTPAddr(), "/metrics")
		if !strings.Contains(body, `chatgg_rejections_total{port="http",reason="proxy_header"} 1`) {
			t.Fatalf("rejection not counted:\n%s", grepLines(body, "rejections"))
		}
	})
}

// httpDoProxy GETs path with a PROXY v1 header and returns the body.
func httpDoProxy(t *testing.T, addr, path string) (int, string, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	hdr := codec.AppendProxyV1(nil, netip.MustParseAddrPort("198.51.100.1:1"), netip.MustParseAddrPort("127.0.0.1:2"))
	_, _ = c.Write(append(hdr, "GET "+path+" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"...))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
