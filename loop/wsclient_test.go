package loop

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

// This file holds the tests' raw-socket WebSocket client. It builds masked
// frames by hand, so a test can send anything (bad opcodes, reserved bits,
// frames cut at any byte), and parses the server's frames and close codes
// itself, checking that they obey RFC 6455 as a client would.

// ioTimeout bounds every blocking read or write of a test client.
const ioTimeout = 10 * time.Second

// testKey is a valid Sec-WebSocket-Key (RFC 6455 §1.3's example).
const testKey = "dGhlIHNhbXBsZSBub25jZQ=="

// startEngine starts an engine on a free loopback port for the test. Its
// cleanup checks that every connection is gone (no leaks: the test's clients
// are closed by their own, later registered, cleanups) and shuts it down.
func startEngine(tb testing.TB, cfg Config) *Engine {
	tb.Helper()
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	e := New(cfg)
	if err := e.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if !e.Stopping() {
			if !waitFor(5*time.Second, func() bool { return e.Stats().Conns == 0 }) {
				tb.Errorf("leak: %d connections still open after the test", e.Stats().Conns)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := e.Shutdown(ctx); err != nil {
			tb.Errorf("shutdown: %v", err)
		}
	})
	return e
}

// waitFor polls cond every few milliseconds until it holds or d passes.
func waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// dialTCP opens a TCP connection to the engine, closed at the end of the test.
func dialTCP(tb testing.TB, e *Engine) net.Conn {
	tb.Helper()
	nc, err := net.DialTimeout("tcp", e.Addr().String(), ioTimeout)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { nc.Close() })
	return nc
}

// upgradeRequest returns a GET upgrade request for path; extra header lines
// ("Name: value") are added after the standard ones.
func upgradeRequest(path string, extra ...string) string {
	var b strings.Builder
	b.WriteString("GET " + path + " HTTP/1.1\r\n" +
		"Host: localhost\r\n" +
		"Upgrade: websocket\r\n" +
		"Connection: Upgrade\r\n" +
		"Sec-WebSocket-Key: " + testKey + "\r\n" +
		"Sec-WebSocket-Version: 13\r\n")
	for _, h := range extra {
		b.WriteString(h + "\r\n")
	}
	b.WriteString("\r\n")
	return b.String()
}

// acceptFor is the Sec-WebSocket-Accept the server must answer key with.
func acceptFor(key string) string {
	h := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	return base64.StdEncoding.EncodeToString(h[:])
}

// wsClient is a WebSocket client over a raw TCP connection.
type wsClient struct {
	tb  testing.TB
	nc  net.Conn
	br  *bufio.Reader
	seq uint32 // varies the masking key from frame to frame
}

// dialWS connects and upgrades to path, failing the test on any error.
func dialWS(tb testing.TB, e *Engine, path string) *wsClient {
	tb.Helper()
	c, err := tryDialWS(tb, e.Addr().String(), path)
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// tryDialWS connects and upgrades to path. The connection is closed at the
// end of the test.
func tryDialWS(tb testing.TB, addr, path string) (*wsClient, error) {
	nc, err := net.DialTimeout("tcp", addr, ioTimeout)
	if err != nil {
		return nil, err
	}
	tb.Cleanup(func() { nc.Close() })
	c := &wsClient{tb: tb, nc: nc, br: bufio.NewReaderSize(nc, 64<<10)}
	nc.SetDeadline(time.Now().Add(ioTimeout))
	if _, err := io.WriteString(nc, upgradeRequest(path)); err != nil {
		return nil, err
	}
	if err := c.readUpgradeResponse(); err != nil {
		return nil, err
	}
	nc.SetDeadline(time.Time{})
	return c, nil
}

// readUpgradeResponse reads the server's answer to the upgrade request and
// checks it is a proper 101.
func (c *wsClient) readUpgradeResponse() error {
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		return fmt.Errorf("read upgrade response: %w", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		return fmt.Errorf("upgrade: got status %d, want 101", resp.StatusCode)
	}
	if got, want := resp.Header.Get("Sec-WebSocket-Accept"), acceptFor(testKey); got != want {
		return fmt.Errorf("upgrade: Sec-WebSocket-Accept %q, want %q", got, want)
	}
	if !strings.EqualFold(resp.Header.Get("Upgrade"), "websocket") ||
		!strings.EqualFold(resp.Header.Get("Connection"), "upgrade") {
		return fmt.Errorf("upgrade: bad Upgrade/Connection headers %v", resp.Header)
	}
	return nil
}

// frame is one WebSocket frame.
type frame struct {
	fin     bool
	rsv     byte // the three RSV bits, RSV1 = 4
	op      ws.OpCode
	payload []byte
}

func (f frame) String() string {
	p := f.payload
	if len(p) > 32 {
		return fmt.Sprintf("{op %d fin %v rsv %d, %d bytes}", f.op, f.fin, f.rsv, len(p))
	}
	return fmt.Sprintf("{op %d fin %v rsv %d %q}", f.op, f.fin, f.rsv, p)
}

// maskFor derives a masking key from a sequence number; never all zero, so
// that a server forgetting to unmask shows.
func maskFor(seq uint32) [4]byte {
	var m [4]byte
	binary.BigEndian.PutUint32(m[:], seq*2654435761+0x9e3779b9)
	m[0] |= 0x81
	return m
}

// appendClientHeader appends a masked frame header announcing length bytes.
func appendClientHeader(dst []byte, fin bool, rsv byte, op ws.OpCode, length int64, mask [4]byte) []byte {
	b0 := byte(op)&0x0f | (rsv&7)<<4
	if fin {
		b0 |= 0x80
	}
	switch {
	case length < 126:
		dst = append(dst, b0, 0x80|byte(length))
	case length <= 0xffff:
		dst = append(dst, b0, 0x80|126)
		dst = binary.BigEndian.AppendUint16(dst, uint16(length))
	default:
		dst = append(dst, b0, 0x80|127)
		dst = binary.BigEndian.AppendUint64(dst, uint64(length))
	}
	return append(dst, mask[:]...)
}

// appendClientFrame appends f as a masked client frame.
func appendClientFrame(dst []byte, f frame, mask [4]byte) []byte {
	dst = appendClientHeader(dst, f.fin, f.rsv, f.op, int64(len(f.payload)), mask)
	start := len(dst)
	dst = append(dst, f.payload...)
	ws.Cipher(dst[start:], mask, 0)
	return dst
}

// encode returns the wire form of frames, masked with varying keys.
func (c *wsClient) encode(frames ...frame) []byte {
	n := 0
	for _, f := range frames {
		n += 14 + len(f.payload)
	}
	b := make([]byte, 0, n)
	for _, f := range frames {
		c.seq++
		b = appendClientFrame(b, f, maskFor(c.seq))
	}
	return b
}

// writeRaw writes b in one call, or in chunks of chop bytes when chop > 0.
func (c *wsClient) writeRaw(b []byte, chop int) error {
	c.nc.SetWriteDeadline(time.Now().Add(ioTimeout))
	if chop <= 0 {
		_, err := c.nc.Write(b)
		return err
	}
	for len(b) > 0 {
		n := min(chop, len(b))
		if _, err := c.nc.Write(b[:n]); err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// send writes frames in one TCP write, failing the test on error.
func (c *wsClient) send(frames ...frame) {
	c.tb.Helper()
	if err := c.writeRaw(c.encode(frames...), 0); err != nil {
		c.tb.Fatalf("write: %v", err)
	}
}

// readFrame reads one server frame and checks what RFC 6455 asks of a
// server's frames: unmasked, no RSV bits without extensions, control frames
// short and final.
func (c *wsClient) readFrame() (frame, error) {
	return c.readFrameTimeout(ioTimeout)
}

func (c *wsClient) readFrameTimeout(d time.Duration) (frame, error) {
	c.nc.SetReadDeadline(time.Now().Add(d))
	var hdr [10]byte
	if _, err := io.ReadFull(c.br, hdr[:2]); err != nil {
		return frame{}, err
	}
	f := frame{fin: hdr[0]&0x80 != 0, rsv: hdr[0] >> 4 & 7, op: ws.OpCode(hdr[0] & 0x0f)}
	if hdr[1]&0x80 != 0 {
		return f, errors.New("server frame is masked (RFC 6455 §5.1)")
	}
	length := int64(hdr[1] & 0x7f)
	switch length {
	case 126:
		if _, err := io.ReadFull(c.br, hdr[2:4]); err != nil {
			return f, err
		}
		length = int64(binary.BigEndian.Uint16(hdr[2:4]))
		if length < 126 {
			return f, fmt.Errorf("server used a non-minimal 16-bit length %d", length)
		}
	case 127:
		if _, err := io.ReadFull(c.br, hdr[2:10]); err != nil {
			return f, err
		}
		length = int64(binary.BigEndian.Uint64(hdr[2:10]))
		if length <= 0xffff || length > 64<<20 {
			return f, fmt.Errorf("server sent a bad 64-bit length %d", length)
		}
	}
	if f.rsv != 0 {
		return f, fmt.Errorf("server frame has RSV bits %d", f.rsv)
	}
	if f.op.IsControl() && (length > 125 || !f.fin) {
		return f, fmt.Errorf("bad server control frame: op %d, fin %v, %d bytes", f.op, f.fin, length)
	}
	f.payload = make([]byte, length)
	if _, err := io.ReadFull(c.br, f.payload); err != nil {
		return f, err
	}
	return f, nil
}

// closeCode returns the code of a close frame's payload, 0 for an empty one.
func closeCode(p []byte) int {
	if len(p) < 2 {
		return 0
	}
	return int(binary.BigEndian.Uint16(p))
}

// expectFrame reads a frame and fails the test unless it equals want.
func (c *wsClient) expectFrame(want frame) {
	c.tb.Helper()
	got, err := c.readFrame()
	if err != nil {
		c.tb.Fatalf("reading %v: %v", want, err)
	}
	if got.op != want.op || got.fin != want.fin || !bytes.Equal(got.payload, want.payload) {
		c.tb.Fatalf("got frame %v, want %v", got, want)
	}
}

// expectClose reads the next frame, which must be a close frame with code
// (0: an empty payload), and then the end of the TCP stream: the server
// closes the connection after the closing handshake (RFC 6455 §7.1.1).
func (c *wsClient) expectClose(code int) {
	c.tb.Helper()
	f, err := c.readFrame()
	if err != nil {
		c.tb.Fatalf("want close %d: %v", code, err)
	}
	c.checkClose(f, code)
	c.expectEOF()
}

// checkClose checks f is a well-formed close frame with code.
func (c *wsClient) checkClose(f frame, code int) {
	c.tb.Helper()
	if f.op != ws.OpClose {
		c.tb.Fatalf("got frame %v, want close %d", f, code)
	}
	if len(f.payload) == 1 {
		c.tb.Fatalf("close payload of 1 byte")
	}
	if got := closeCode(f.payload); got != code {
		c.tb.Fatalf("close code %d (%q), want %d", got, f.payload[min(2, len(f.payload)):], code)
	}
	if len(f.payload) > 2 && !utf8.Valid(f.payload[2:]) {
		c.tb.Fatalf("close reason is not UTF-8: %q", f.payload[2:])
	}
}

// expectEOF reads until the server ends the TCP stream; no more data may
// arrive before that.
func (c *wsClient) expectEOF() {
	c.tb.Helper()
	c.nc.SetReadDeadline(time.Now().Add(ioTimeout))
	var b [1]byte
	n, err := c.br.Read(b[:])
	if n > 0 {
		c.tb.Fatalf("data after the close frame: %#x...", b[0])
	}
	if err != io.EOF {
		c.tb.Fatalf("want EOF from the server, got %v", err)
	}
}

// expectEnd reads until the connection ends by EOF or reset; no more data
// may arrive before that.
func (c *wsClient) expectEnd() {
	c.tb.Helper()
	c.nc.SetReadDeadline(time.Now().Add(ioTimeout))
	var b [1]byte
	n, err := c.br.Read(b[:])
	if n > 0 {
		c.tb.Fatalf("data after the close frame: %#x...", b[0])
	}
	if !isClosedErr(err) {
		c.tb.Fatalf("want the connection closed, got %v", err)
	}
}

// echo sends one message and checks that it comes back unchanged.
func (c *wsClient) echo(op ws.OpCode, payload []byte) {
	c.tb.Helper()
	c.send(frame{fin: true, op: op, payload: payload})
	c.expectFrame(frame{fin: true, op: op, payload: payload})
}

// closeHandshake sends close 1000 and expects the server to echo it and end
// the TCP connection.
func (c *wsClient) closeHandshake() {
	c.tb.Helper()
	c.send(closeFrame(1000, "bye"))
	c.expectClose(1000)
}

// closeFrame returns a close frame with code and reason.
func closeFrame(code int, reason string) frame {
	p := binary.BigEndian.AppendUint16(nil, uint16(code))
	return frame{fin: true, op: ws.OpClose, payload: append(p, reason...)}
}

// isClosedErr reports whether err says the peer closed or reset the
// connection.
func isClosedErr(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}
