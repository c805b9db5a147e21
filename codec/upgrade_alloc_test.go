//go:build !race

package codec

import "testing"

func TestUpgradeDoesNotAllocate(t *testing.T) {
	req := []byte(browserRequest)
	bad := []byte(rfcRequest[:len(rfcRequest)-2] + "X-NoColon\r\n\r\n")
	key := []byte("x3JJHMbDL1EzLkh9GBhXDw==")
	dst := make([]byte, 0, 512)
	var r UpgradeRequest
	for name, f := range map[string]func(){
		"ParseUpgrade": func() {
			if _, err := ParseUpgrade(req, &r, 0); err != nil {
				t.Fatal(err)
			}
		},
		"ParseUpgradeIncomplete": func() { _, _ = ParseUpgrade(req[:len(req)-1], &r, 0) },
		"ParseUpgradeRejected": func() {
			if _, err := ParseUpgrade(bad, &r, 0); err != ErrBadHeaderLine {
				t.Fatal(err)
			}
		},
		"UpgradeHeadLen":        func() { _, _, _ = UpgradeHeadLen(req[:len(req)-1], 100, 0) },
		"AcceptKey":             func() { dst = AcceptKey(dst[:0], key) },
		"AppendUpgradeResponse": func() { dst = AppendUpgradeResponse(dst[:0], key, []byte("chat")) },
		"AppendHTTPError":       func() { dst = AppendHTTPError(dst[:0], 426, "use version 13") },
		"HeaderTokenContains":   func() { _ = HeaderTokenContains([]byte("keep-alive, Upgrade"), "upgrade") },
		"QueryValue":            func() { _ = QueryValue(r.Query, "token") },
		"AppendUnescape":        func() { dst, _ = AppendUnescape(dst[:0], []byte("abc%2B123+x")) },
		"UpgradeStatus":         func() { _ = UpgradeStatus(ErrBadWebSocketKey) },
	} {
		if n := testing.AllocsPerRun(100, f); n != 0 {
			t.Errorf("%s: %v allocations per run, want 0", name, n)
		}
	}
}
