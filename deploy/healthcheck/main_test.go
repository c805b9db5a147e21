package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

func TestTargetFollowsChatggHTTPAddr(t *testing.T) {
	for _, tc := range []struct {
		name, arg, env, want string
		err                  bool
	}{
		{name: "default", want: "127.0.0.1:9002"},
		{name: "argument wins", arg: "10.0.0.5:9100", env: ":9003", want: "10.0.0.5:9100"},
		{name: "port only", env: ":9003", want: "127.0.0.1:9003"},
		{name: "ipv4 wildcard", env: "0.0.0.0:9004", want: "127.0.0.1:9004"},
		{name: "ipv6 wildcard", env: "[::]:9005", want: "127.0.0.1:9005"},
		{name: "specific host", env: "10.1.2.3:9006", want: "10.1.2.3:9006"},
		{name: "loopback v6", env: "[::1]:9007", want: "[::1]:9007"},
		{name: "no port", env: "9002", err: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := target(tc.arg, tc.env)
			if tc.err {
				if err == nil {
					t.Fatalf("target(%q, %q) = %q, want an error", tc.arg, tc.env, got)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("target(%q, %q) = %q, %v; want %q", tc.arg, tc.env, got, err, tc.want)
			}
		})
	}
}

func TestProxyEnabledParsesLikeChatgg(t *testing.T) {
	for v, want := range map[string]bool{"": false, "false": false, "0": false, "true": true, "1": true, "TRUE": true} {
		got, err := proxyEnabled(v)
		if err != nil || got != want {
			t.Errorf("proxyEnabled(%q) = %v, %v; want %v", v, got, err, want)
		}
	}
	if _, err := proxyEnabled("yes"); err == nil {
		t.Error(`proxyEnabled("yes"): want an error, chatgg refuses it too`)
	}
}

func TestCheckNeedsStatus200(t *testing.T) {
	status := http.StatusOK
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" || r.Method != http.MethodGet {
			http.NotFound(w, r)
			return
		}
		w.WriteHeader(status)
	}))
	defer srv.Close()
	addr := srv.Listener.Addr().String()

	if err := check(context.Background(), addr, false); err != nil {
		t.Fatalf("200: %v", err)
	}
	status = http.StatusServiceUnavailable
	if err := check(context.Background(), addr, false); err == nil {
		t.Fatal("503: want an error")
	}
}

func TestCheckFailsFastWhenNothingListens(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := check(ctx, addr, false); err == nil {
		t.Fatal("want an error from a closed port")
	}
}

// proxyListener hands out only connections that start with the PROXY v2
// LOCAL header, like chatgg with --proxy-protocol; others are closed.
type proxyListener struct{ net.Listener }

func (l proxyListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		hdr := make([]byte, len(proxyV2Local))
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		if _, err := io.ReadFull(c, hdr); err != nil || !bytes.Equal(hdr, proxyV2Local) {
			c.Close()
			continue
		}
		_ = c.SetReadDeadline(time.Time{})
		return c, nil
	}
}

func TestCheckSendsProxyV2LocalHeader(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}), ReadHeaderTimeout: time.Second}
	go func() { _ = srv.Serve(proxyListener{ln}) }()
	defer srv.Close()
	addr := ln.Addr().String()

	if err := check(context.Background(), addr, true); err != nil {
		t.Fatalf("with the header: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := check(ctx, addr, false); err == nil {
		t.Fatal("without the header: want an error, the port requires it")
	}
}
