package server

import (
	"errors"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/chatgg/chatgg/codec"
)

// proxyHeaderTimeout bounds how long a connection may take to send its
// PROXY protocol header.
const proxyHeaderTimeout = 5 * time.Second

// proxyListener accepts connections that must start with a PROXY protocol
// header (v1 or v2), as sent by the load balancer in front of the REST port.
// Headers are read off the accept path, one goroutine per connection until
// its header arrived, so a slow client cannot stall Accept. A connection
// without a valid header is refused (closed) and counted.
type proxyListener struct {
	net.Listener
	log      *slog.Logger
	onReject func()

	once  sync.Once
	ready chan net.Conn
	done  chan struct{}
	err   error
}

func newProxyListener(ln net.Listener, log *slog.Logger, onReject func()) *proxyListener {
	return &proxyListener{Listener: ln, log: log, onReject: onReject, ready: make(chan net.Conn), done: make(chan struct{})}
}

func (l *proxyListener) Accept() (net.Conn, error) {
	l.once.Do(func() { go l.acceptLoop() })
	select {
	case c := <-l.ready:
		return c, nil
	case <-l.done:
		return nil, l.err
	}
}

func (l *proxyListener) acceptLoop() {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			l.err = err
			close(l.done)
			return
		}
		go l.handshake(c)
	}
}

func (l *proxyListener) handshake(c net.Conn) {
	_ = c.SetReadDeadline(time.Now().Add(proxyHeaderTimeout))
	buf := make([]byte, 0, 256)
	var h codec.ProxyHeader
	for {
		if len(buf) == cap(buf) {
			l.reject(c, codec.ErrBadProxyHeader)
			return
		}
		n, err := c.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		hn, perr := codec.ParseProxy(buf, &h)
		if perr == nil {
			_ = c.SetReadDeadline(time.Time{})
			pc := &proxyConn{Conn: c, rest: buf[hn:], remote: c.RemoteAddr()}
			if h.Src.IsValid() {
				pc.remote = net.TCPAddrFromAddrPort(h.Src)
			}
			select {
			case l.ready <- pc:
			case <-l.done:
				c.Close()
			}
			return
		}
		if !errors.Is(perr, codec.ErrIncomplete) {
			l.reject(c, perr)
			return
		}
		if err != nil {
			l.reject(c, err)
			return
		}
	}
}

func (l *proxyListener) reject(c net.Conn, err error) {
	if l.onReject != nil {
		l.onReject()
	}
	l.log.Debug("refused connection without a valid PROXY header", "conn", c.RemoteAddr().String(), "err", err)
	c.Close()
}

// proxyConn is a connection whose PROXY header was read: reads start with
// the bytes that came after the header, and RemoteAddr is the client's.
type proxyConn struct {
	net.Conn
	rest   []byte
	remote net.Addr
}

func (c *proxyConn) Read(p []byte) (int, error) {
	if len(c.rest) > 0 {
		n := copy(p, c.rest)
		c.rest = c.rest[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

func (c *proxyConn) RemoteAddr() net.Addr { return c.remote }
