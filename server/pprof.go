package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"time"
)

// pprofServer serves net/http/pprof on --pprof-addr, on its own listener
// and mux (nothing is registered on http.DefaultServeMux), so that an
// operator can profile a node under real load:
//
//	go tool pprof http://127.0.0.1:6060/debug/pprof/profile?seconds=30
type pprofServer struct {
	srv *http.Server
	ln  net.Listener
}

func startPprof(addr string) (*pprofServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("server: pprof listen on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	p := &pprofServer{
		// No WriteTimeout: a CPU profile or trace streams for as long as
		// asked (?seconds=).
		srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second},
		ln:  ln,
	}
	go func() { _ = p.srv.Serve(ln) }()
	return p, nil
}

func (p *pprofServer) addr() string { return p.ln.Addr().String() }

func (p *pprofServer) shutdown(ctx context.Context) error {
	if err := p.srv.Shutdown(ctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		// A profile still streaming: cut it.
		_ = p.srv.Close()
		return fmt.Errorf("server: pprof shutdown: %w", err)
	}
	return nil
}

// loopbackAddr reports whether addr binds only to a loopback address.
func loopbackAddr(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
