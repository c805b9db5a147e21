package codec

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
)

// ErrBadProxyHeader reports a connection that should start with a PROXY
// protocol header and does not, or whose header is malformed.
var ErrBadProxyHeader = errors.New("codec: missing or malformed PROXY protocol header")

// ProxyHeader is what a load balancer says about the connection it forwards
// (the PROXY protocol, versions 1 and 2, haproxy.org/download/2.9/doc/proxy-protocol.txt).
type ProxyHeader struct {
	// Src is the client's address, Dst the address it connected to. Both
	// are zero for LOCAL (v2) and UNKNOWN (v1) headers, which the balancer
	// sends for its own connections, such as health checks.
	Src, Dst netip.AddrPort
}

// proxyV2Sig starts every version 2 header.
var proxyV2Sig = []byte("\r\n\r\n\x00\r\nQUIT\n")

// maxProxyV1 is the longest version 1 header, CRLF included (§2.1).
const maxProxyV1 = 107

// ParseProxy parses the PROXY protocol header at the start of b. It returns
// ErrIncomplete while b is a valid prefix of a header, and the header's
// length once it is complete.
func ParseProxy(b []byte, h *ProxyHeader) (n int, err error) {
	*h = ProxyHeader{}
	if len(b) == 0 {
		return 0, ErrIncomplete
	}
	if b[0] == '\r' {
		return parseProxyV2(b, h)
	}
	return parseProxyV1(b, h)
}

func parseProxyV1(b []byte, h *ProxyHeader) (int, error) {
	const prefix = "PROXY "
	if len(b) < len(prefix) {
		if !bytes.HasPrefix([]byte(prefix), b) {
			return 0, ErrBadProxyHeader
		}
		return 0, ErrIncomplete
	}
	if !bytes.HasPrefix(b, []byte(prefix)) {
		return 0, ErrBadProxyHeader
	}
	end := bytes.Index(b, []byte("\r\n"))
	if end < 0 {
		if len(b) >= maxProxyV1 {
			return 0, ErrBadProxyHeader
		}
		return 0, ErrIncomplete
	}
	if end+2 > maxProxyV1 {
		return 0, ErrBadProxyHeader
	}
	line := b[len(prefix):end]
	var f [5][]byte
	nf := 0
	for len(line) > 0 && nf < 5 {
		i := bytes.IndexByte(line, ' ')
		if i < 0 {
			f[nf], line = line, nil
		} else {
			f[nf], line = line[:i], line[i+1:]
		}
		nf++
	}
	switch {
	case nf >= 1 && string(f[0]) == "UNKNOWN":
		return end + 2, nil // the rest of the line is to be ignored (§2.1)
	case nf != 5 || len(line) != 0 || (string(f[0]) != "TCP4" && string(f[0]) != "TCP6"):
		return 0, ErrBadProxyHeader
	}
	src, err1 := netip.ParseAddr(string(f[1]))
	dst, err2 := netip.ParseAddr(string(f[2]))
	sp, ok1 := parsePort(f[3])
	dp, ok2 := parsePort(f[4])
	if err1 != nil || err2 != nil || !ok1 || !ok2 || src.Is4() != (string(f[0]) == "TCP4") || dst.Is4() != src.Is4() {
		return 0, ErrBadProxyHeader
	}
	h.Src, h.Dst = netip.AddrPortFrom(src, sp), netip.AddrPortFrom(dst, dp)
	return end + 2, nil
}

// parsePort parses a decimal port without leading zeros.
func parsePort(b []byte) (uint16, bool) {
	if len(b) == 0 || len(b) > 5 || (b[0] == '0' && len(b) > 1) {
		return 0, false
	}
	n := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return uint16(n), n <= 0xffff
}

func parseProxyV2(b []byte, h *ProxyHeader) (int, error) {
	if len(b) < len(proxyV2Sig) {
		if !bytes.HasPrefix(proxyV2Sig, b) {
			return 0, ErrBadProxyHeader
		}
		return 0, ErrIncomplete
	}
	if !bytes.HasPrefix(b, proxyV2Sig) {
		return 0, ErrBadProxyHeader
	}
	if len(b) < 16 {
		return 0, ErrIncomplete
	}
	verCmd, famProto := b[12], b[13]
	if verCmd>>4 != 2 || verCmd&0xf > 1 {
		return 0, ErrBadProxyHeader
	}
	n := 16 + int(binary.BigEndian.Uint16(b[14:16]))
	if len(b) < n {
		return 0, ErrIncomplete
	}
	if verCmd&0xf == 0 { // LOCAL: the balancer's own connection
		return n, nil
	}
	addr := b[16:n]
	switch famProto {
	case 0x11: // TCP over IPv4
		if len(addr) < 12 {
			return 0, ErrBadProxyHeader
		}
		src := netip.AddrFrom4([4]byte(addr[0:4]))
		dst := netip.AddrFrom4([4]byte(addr[4:8]))
		h.Src = netip.AddrPortFrom(src, binary.BigEndian.Uint16(addr[8:10]))
		h.Dst = netip.AddrPortFrom(dst, binary.BigEndian.Uint16(addr[10:12]))
	case 0x21: // TCP over IPv6
		if len(addr) < 36 {
			return 0, ErrBadProxyHeader
		}
		src := netip.AddrFrom16([16]byte(addr[0:16]))
		dst := netip.AddrFrom16([16]byte(addr[16:32]))
		h.Src = netip.AddrPortFrom(src, binary.BigEndian.Uint16(addr[32:34]))
		h.Dst = netip.AddrPortFrom(dst, binary.BigEndian.Uint16(addr[34:36]))
	case 0x00: // UNSPEC: addresses unknown
	default:
		return 0, ErrBadProxyHeader
	}
	return n, nil
}

// AppendProxyV1 appends a version 1 header for src and dst (for tests and
// tools that sit in front of chatgg).
func AppendProxyV1(dst []byte, src, to netip.AddrPort) []byte {
	fam := "TCP4 "
	if src.Addr().Is6() && !src.Addr().Is4In6() {
		fam = "TCP6 "
	}
	dst = append(dst, "PROXY "...)
	dst = append(dst, fam...)
	dst = src.Addr().AppendTo(dst)
	dst = append(dst, ' ')
	dst = to.Addr().AppendTo(dst)
	dst = append(dst, ' ')
	dst = appendUint(dst, uint64(src.Port()))
	dst = append(dst, ' ')
	dst = appendUint(dst, uint64(to.Port()))
	return append(dst, "\r\n"...)
}

// AppendProxyV2 appends a version 2 PROXY header for src and dst.
func AppendProxyV2(dst []byte, src, to netip.AddrPort) []byte {
	dst = append(dst, proxyV2Sig...)
	dst = append(dst, 0x21)
	if src.Addr().Is4() {
		dst = append(dst, 0x11, 0, 12)
		a, b := src.Addr().As4(), to.Addr().As4()
		dst = append(dst, a[:]...)
		dst = append(dst, b[:]...)
	} else {
		dst = append(dst, 0x21, 0, 36)
		a, b := src.Addr().As16(), to.Addr().As16()
		dst = append(dst, a[:]...)
		dst = append(dst, b[:]...)
	}
	dst = binary.BigEndian.AppendUint16(dst, src.Port())
	return binary.BigEndian.AppendUint16(dst, to.Port())
}

func appendUint(dst []byte, v uint64) []byte {
	var buf [20]byte
	i := len(buf)
	for {
		i--
		buf[i] = byte('0' + v%10)
		v /= 10
		if v == 0 {
			break
		}
	}
	return append(dst, buf[i:]...)
}
