package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestPayloadRoundTrip(t *testing.T) {
	cases := []struct {
		name string
		s    stamp
		size int
	}{
		{"minimum size", stamp{pub: 0, seq: 1, sent: 0}, minPayloadSize},
		{"default size", stamp{pub: 7, seq: 42, sent: 123456789}, 64},
		{"largest fields", stamp{pub: 1<<32 - 1, seq: 1<<48 - 1, sent: 1<<63 - 1}, 64},
		{"125 bytes", stamp{pub: 3, seq: 9, sent: 5}, 125},
		{"126 bytes", stamp{pub: 3, seq: 9, sent: 5}, 126},
		{"64 KiB", stamp{pub: 65535, seq: 1 << 40, sent: 1 << 50}, maxPayloadSize},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := appendPayload(nil, tc.s, tc.size)
			if len(p) != tc.size {
				t.Fatalf("len = %d, want %d", len(p), tc.size)
			}
			got, err := parsePayload(p)
			if err != nil || got != tc.s {
				t.Fatalf("parsePayload = %+v, %v; want %+v", got, err, tc.s)
			}
			q := make([]byte, tc.size)
			putPayload(q, tc.s)
			if !bytes.Equal(p, q) {
				t.Fatalf("putPayload differs from appendPayload:\n%q\n%q", q, p)
			}
			for _, c := range p {
				if c < 0x21 || c > 0x7e || c == '"' || c == '\\' {
					t.Fatalf("payload byte %q is not plain JSON-safe ASCII", c)
				}
			}
		})
	}
}

func TestParsePayloadRejectsForeignBytes(t *testing.T) {
	good := string(appendPayload(nil, stamp{pub: 1, seq: 2, sent: 3}, 64))
	cases := map[string]string{
		"empty":           "",
		"short":           good[:minPayloadSize-1],
		"wrong magic":     "xx" + good[2:],
		"upper-case hex":  good[:offSeq] + "00000000000A" + good[offSent:],
		"non-hex in time": good[:offSent] + "zzzzzzzzzzzzzzzz" + good[minPayloadSize:],
		"sequence zero":   good[:offSeq] + "000000000000" + good[offSent:],
	}
	for name, in := range cases {
		t.Run(name, func(t *testing.T) {
			if s, err := parsePayload([]byte(in)); err == nil {
				t.Fatalf("parsePayload(%q) = %+v, want an error", in, s)
			}
		})
	}
}

func TestFindPayloadInEveryEnvelope(t *testing.T) {
	p := string(appendPayload(nil, stamp{pub: 5, seq: 6, sent: 7}, 64))
	cases := []struct {
		name, body string
		ok         bool
	}{
		{"raw frame", p, true},
		{"JSON string (REST to raw)", `"` + p + `"`, true},
		{"ws msg object", `{"op":"msg","topic":"bench.0","id":"01a228adfedb0000000000","ts":1795978821339,"data":"` + p + `"}`, true},
		{"ws error object", `{"op":"error","code":429,"message":"rate"}`, false},
		{"other bytes", "hello", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := findPayload([]byte(tc.body))
			if ok != tc.ok {
				t.Fatalf("ok = %v, want %v", ok, tc.ok)
			}
			if !ok {
				return
			}
			s, err := parsePayload(got)
			if err != nil || s != (stamp{pub: 5, seq: 6, sent: 7}) {
				t.Fatalf("payload %q: %+v, %v", got, s, err)
			}
		})
	}
}

func TestPayloadPadding(t *testing.T) {
	p := appendPayload(nil, stamp{pub: 1, seq: 1}, 50)
	if !strings.HasSuffix(string(p), strings.Repeat(".", 50-minPayloadSize)) {
		t.Fatalf("padding: %q", p)
	}
}
