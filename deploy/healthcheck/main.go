// Command chatgg-healthcheck is the container image's HEALTHCHECK: it asks
// the local chatgg process for GET /healthz and exits 0 on a 200, 1 on
// anything else. The image is distroless (no shell, no curl), hence a
// program of its own; it uses the standard library only.
//
// It checks liveness, not readiness: a node whose Redis or CouchDB is down
// is alive but not ready, and restarting it would not help. The balancer
// checks /readyz itself.
//
// The address is the first argument if given; otherwise the port of
// CHATGG_HTTP_ADDR on 127.0.0.1 (or the host it names, unless a wildcard);
// otherwise 127.0.0.1:9002. Docker runs the check with the container's
// environment, so it follows the settings chatgg itself reads. When
// CHATGG_PROXY_PROTOCOL is true, chatgg refuses a connection that does not
// start with a PROXY protocol header, so the check sends a version 2 LOCAL
// header first, as a balancer's own health checks do.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"
)

// defaultAddr is chatgg's default REST address as seen from inside the
// container (--http-addr defaults to :9002).
const defaultAddr = "127.0.0.1:9002"

// timeout bounds the whole check; Docker's HEALTHCHECK --timeout is longer.
const timeout = 2 * time.Second

// proxyV2Local is a PROXY protocol version 2 header with the LOCAL command
// and no addresses: the 12-byte signature, version 2 with command 0, family
// and transport unspecified, zero address bytes (proxy-protocol.txt §2.2).
var proxyV2Local = []byte("\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00")

func main() {
	var arg string
	if len(os.Args) > 1 {
		arg = os.Args[1]
	}
	addr, err := target(arg, os.Getenv("CHATGG_HTTP_ADDR"))
	if err == nil {
		var proxy bool
		proxy, err = proxyEnabled(os.Getenv("CHATGG_PROXY_PROTOCOL"))
		if err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			err = check(ctx, addr, proxy)
			cancel()
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "chatgg-healthcheck:", err)
		os.Exit(1)
	}
}

// target is the address to check: arg if set, else the REST address chatgg
// listens on according to env (CHATGG_HTTP_ADDR), with a wildcard host
// replaced by the loopback address.
func target(arg, env string) (string, error) {
	if arg != "" {
		return arg, nil
	}
	if env == "" {
		return defaultAddr, nil
	}
	host, port, err := net.SplitHostPort(env)
	if err != nil {
		return "", fmt.Errorf("CHATGG_HTTP_ADDR %q: %w", env, err)
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port), nil
}

// proxyEnabled parses CHATGG_PROXY_PROTOCOL the way chatgg does
// (strconv.ParseBool); unset means off.
func proxyEnabled(v string) (bool, error) {
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, fmt.Errorf("CHATGG_PROXY_PROTOCOL %q: %w", v, err)
	}
	return b, nil
}

// check GETs /healthz from addr, preceded by a PROXY v2 LOCAL header when
// proxy is set, and fails unless the answer is 200.
func check(ctx context.Context, addr string, proxy bool) error {
	var d net.Dialer
	tr := &http.Transport{
		Proxy:             nil, // never an HTTP(S)_PROXY from the environment
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
			c, err := d.DialContext(ctx, network, a)
			if err != nil || !proxy {
				return c, err
			}
			if _, err := c.Write(proxyV2Local); err != nil {
				c.Close()
				return nil, fmt.Errorf("write PROXY header: %w", err)
			}
			return c, nil
		},
	}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/healthz", nil)
	if err != nil {
		return err
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return errors.New("GET /healthz: " + resp.Status)
	}
	return nil
}
