package main

import (
	"fmt"
	"testing"

	"github.com/chatgg/chatgg/codec"
)

func FuzzFrameReader(f *testing.F) {
	b, _ := stream()
	f.Add(b, uint16(0))
	f.Add(b, uint16(7))
	f.Add([]byte{0x81, 0x7e, 0x00}, uint16(1))
	f.Add(serverFrame(2, true, payloadOf(300)), uint16(3))
	f.Fuzz(func(t *testing.T, in []byte, split uint16) {
		var whole, parts collector
		var r1, r2 frameReader
		err1 := feed(t, &r1, &whole, in)
		i := int(split) % (len(in) + 1)
		err2 := feed(t, &r2, &parts, in[:i], in[i:])
		if (err1 == nil) != (err2 == nil) {
			// A split may only delay an error, never invent or hide one:
			// both see the same bytes in the end.
			t.Fatalf("whole: %v, split at %d: %v", err1, i, err2)
		}
		if err1 == nil && fmt.Sprint(whole.frames) != fmt.Sprint(parts.frames) {
			t.Fatalf("split at %d changed the frames", i)
		}
	})
}

func FuzzPayload(f *testing.F) {
	f.Add(uint32(1), uint64(1), int64(0), 64)
	f.Add(uint32(0), uint64(1<<48-1), int64(1<<62), 38)
	f.Fuzz(func(t *testing.T, pub uint32, seq uint64, sent int64, size int) {
		seq &= 1<<48 - 1
		if seq == 0 || sent < 0 {
			return
		}
		size = minPayloadSize + (size&0x7fff)%512
		s := stamp{pub: pub, seq: seq, sent: sent}
		got, err := parsePayload(appendPayload(nil, s, size))
		if err != nil || got != s {
			t.Fatalf("%+v → %+v, %v", s, got, err)
		}
	})
}

func TestParseStatCPU(t *testing.T) {
	// The command name may hold spaces and parentheses.
	line := "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 150 0 0 20 0 8 0 100 1000000 500 18446744073709551615\n"
	u, s, err := parseStatCPU([]byte(line))
	if err != nil || u != 2.5 || s != 1.5 {
		t.Fatalf("parseStatCPU = %v, %v, %v; want 2.5 and 1.5 (250 and 150 ticks)", u, s, err)
	}
	if _, _, err := parseStatCPU([]byte("1234 (x) S 1")); err == nil {
		t.Fatal("short line accepted")
	}
}

func TestParseVmRSS(t *testing.T) {
	v, err := parseVmRSS([]byte("Name:\tchatgg\nVmPeak:\t  9000 kB\nVmRSS:\t   15560 kB\nThreads:\t5\n"))
	if err != nil || v != 15560<<10 {
		t.Fatalf("parseVmRSS = %d, %v", v, err)
	}
	if _, err := parseVmRSS([]byte("Name:\tx\n")); err == nil {
		t.Fatal("missing VmRSS accepted")
	}
}

func TestParseResponseHead(t *testing.T) {
	cases := []struct {
		name         string
		head         string
		status, clen int
		bad          bool
	}{
		{"202", "HTTP/1.1 202 Accepted\r\nContent-Length: 45\r\n", 202, 45, false},
		{"lower-case header", "HTTP/1.1 429 Too Many Requests\r\ncontent-length:0\r\n", 429, 0, false},
		{"no length", "HTTP/1.1 200 OK\r\nServer: x\r\n", 0, 0, true},
		{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n", 0, 0, true},
		{"not HTTP", "SSH-2.0-x\r\n", 0, 0, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st, cl, err := parseResponseHead([]byte(tc.head))
			if (err != nil) != tc.bad || (!tc.bad && (st != tc.status || cl != tc.clen)) {
				t.Fatalf("= %d, %d, %v", st, cl, err)
			}
		})
	}
}

func TestCheckUpgradeResponse(t *testing.T) {
	const key = "dGhlIHNhbXBsZSBub25jZQ=="
	good := "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nsec-websocket-accept: " +
		string(codec.AcceptKey(nil, []byte(key))) + "\r\n\r\n"
	if err := checkUpgradeResponse([]byte(good), key); err != nil {
		t.Fatal(err)
	}
	for name, head := range map[string]string{
		"refused":   "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
		"wrong key": "HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: AAAA\r\n\r\n",
		"no accept": "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
	} {
		if err := checkUpgradeResponse([]byte(head), key); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
