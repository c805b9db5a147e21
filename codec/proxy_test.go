package codec

import (
	"errors"
	"net/netip"
	"testing"
)

func TestParseProxy(t *testing.T) {
	src4, dst4 := netip.MustParseAddrPort("203.0.113.7:51234"), netip.MustParseAddrPort("10.0.0.2:9001")
	src6, dst6 := netip.MustParseAddrPort("[2001:db8::1]:443"), netip.MustParseAddrPort("[2001:db8::2]:9001")
	cases := []struct {
		name     string
		in       string
		n        int
		src, dst netip.AddrPort
		err      error
	}{
		{"v1 tcp4", "PROXY TCP4 203.0.113.7 10.0.0.2 51234 9001\r\nGET /", 44, src4, dst4, nil},
		{"v1 tcp6", "PROXY TCP6 2001:db8::1 2001:db8::2 443 9001\r\n", 45, src6, dst6, nil},
		{"v1 unknown", "PROXY UNKNOWN\r\n", 15, netip.AddrPort{}, netip.AddrPort{}, nil},
		{"v1 unknown with addresses", "PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", 35, netip.AddrPort{}, netip.AddrPort{}, nil},
		{"v2 tcp4", string(AppendProxyV2(nil, src4, dst4)) + "GET", 28, src4, dst4, nil},
		{"v2 tcp6", string(AppendProxyV2(nil, src6, dst6)), 52, src6, dst6, nil},
		{"v2 local", "\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00", 16, netip.AddrPort{}, netip.AddrPort{}, nil},
		{"no header: plain HTTP", "GET / HTTP/1.1\r\n", 0, netip.AddrPort{}, netip.AddrPort{}, ErrBadProxyHeader},
		{"v1 bad family", "PROXY UDP4 1.2.3.4 1.2.3.4 1 2\r\n", 0, netip.AddrPort{}, netip.AddrPort{}, ErrBadProxyHeader},
		{"v1 family mismatch", "PROXY TCP4 2001:db8::1 2001:db8::2 1 2\r\n", 0, netip.AddrPort{}, netip.AddrPort{}, ErrBadProxyHeader},
		{"v1 bad port", "PROXY TCP4 1.2.3.4 1.2.3.4 70000 2\r\n", 0, netip.AddrPort{}, netip.AddrPort{}, ErrBadProxyHeader},
		{"v1 leading zero port", "PROXY TCP4 1.2.3.4 1.2.3.4 01 2\r\n", 0, netip.AddrPort{}, netip.AddrPort{}, ErrBadProxyHeader},
		{"v1 extra field", "PROXY TCP4 1.2.3.4 1.2.3.4 1 2 3\r\n", 0, netip.AddrPort{}, netip.AddrPort{}, ErrBadProxyHeader},
		{"v1 too long", "PROXY TCP4 " + string(make([]byte, 120)), 0, netip.AddrPort{}, netip.AddrPort{}, ErrBadProxyHeader},
		{"v2 bad version", "\r\n\r\n\x00\r\nQUIT\n\x31\x11\x00\x0c" + string(make([]byte, 12)), 0, netip.AddrPort{}, netip.AddrPort{}, ErrBadProxyHeader},
		{"v2 short addresses", "\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x04" + string(make([]byte, 4)), 0, netip.AddrPort{}, netip.AddrPort{}, ErrBadProxyHeader},
		{"v2 udp", "\r\n\r\n\x00\r\nQUIT\n\x21\x12\x00\x0c" + string(make([]byte, 12)), 0, netip.AddrPort{}, netip.AddrPort{}, ErrBadProxyHeader},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var h ProxyHeader
			n, err := ParseProxy([]byte(tc.in), &h)
			if !errors.Is(err, tc.err) || n != tc.n || h.Src != tc.src || h.Dst != tc.dst {
				t.Fatalf("ParseProxy = %d %v %+v, want %d %v %v %v", n, err, h, tc.n, tc.err, tc.src, tc.dst)
			}
			// Every proper prefix of a valid header is incomplete, never an error.
			if tc.err == nil {
				for i := 0; i < tc.n; i++ {
					if _, err := ParseProxy([]byte(tc.in[:i]), &h); err != ErrIncomplete {
						t.Fatalf("prefix of %d bytes: %v, want ErrIncomplete", i, err)
					}
				}
			}
		})
	}
}

func TestAppendProxyV1RoundTrip(t *testing.T) {
	for _, pair := range [][2]string{{"1.2.3.4:5", "6.7.8.9:10"}, {"[::1]:65535", "[fe80::1]:1"}} {
		src, dst := netip.MustParseAddrPort(pair[0]), netip.MustParseAddrPort(pair[1])
		b := AppendProxyV1(nil, src, dst)
		var h ProxyHeader
		if n, err := ParseProxy(b, &h); err != nil || n != len(b) || h.Src != src || h.Dst != dst {
			t.Fatalf("%q: %d %v %+v", b, n, err, h)
		}
	}
}

func FuzzParseProxy(f *testing.F) {
	f.Add([]byte("PROXY TCP4 203.0.113.7 10.0.0.2 51234 9001\r\n"))
	f.Add([]byte("PROXY UNKNOWN\r\n"))
	f.Add(AppendProxyV2(nil, netip.MustParseAddrPort("1.2.3.4:5"), netip.MustParseAddrPort("6.7.8.9:10")))
	f.Fuzz(func(t *testing.T, b []byte) {
		var h ProxyHeader
		n, err := ParseProxy(b, &h)
		if n < 0 || n > len(b) || (err != nil && n != 0) {
			t.Fatalf("n=%d err=%v for %q", n, err, b)
		}
		if err == nil {
			// A complete header parses the same with anything after it.
			var h2 ProxyHeader
			if n2, err2 := ParseProxy(append(append([]byte(nil), b[:n]...), "tail"...), &h2); n2 != n || err2 != nil || h2 != h {
				t.Fatalf("unstable: %d %v vs %d %v", n, err, n2, err2)
			}
		}
	})
}
