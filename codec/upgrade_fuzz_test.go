package codec

import (
	"bytes"
	"encoding/base64"
	"net/url"
	"reflect"
	"strings"
	"testing"
)

// FuzzParseUpgrade feeds arbitrary bytes to ParseUpgrade, whole and split
// into pieces, under the default limit and under one the input can exceed.
// Seeds: the table in upgrade_test.go and testdata/fuzz/FuzzParseUpgrade.
func FuzzParseUpgrade(f *testing.F) {
	for _, tc := range upgradeCases {
		f.Add([]byte(tc.in))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, limit := range []int{DefaultMaxHeaderBytes, len(b)/2 + 1} {
			var r UpgradeRequest
			n, err := ParseUpgrade(b, &r, limit)
			checkUpgradeResult(t, b, limit, &r, n, err)
			checkUpgradeSplits(t, b, limit, &r, n, err)
		}

		// The helpers on the same arbitrary bytes.
		got, ok := AppendUnescape(nil, b)
		want, werr := url.QueryUnescape(string(b))
		if ok != (werr == nil) || ok && string(got) != want {
			t.Fatalf("AppendUnescape = %q, %v; url.QueryUnescape = %q, %v", got, ok, want, werr)
		}
		if v := QueryValue(b, "topic"); v != nil && !bytes.Contains(b, v) {
			t.Fatalf("QueryValue returned %q, not part of the input", v)
		}
		if HeaderTokenContains(b, "upgrade") != refTokenContains(string(b), "upgrade") {
			t.Fatalf("HeaderTokenContains(%q, upgrade) disagrees with the reference", b)
		}
	})
}

// checkUpgradeResult checks one ParseUpgrade answer against the contract.
func checkUpgradeResult(t *testing.T, b []byte, limit int, r *UpgradeRequest, n int, err error) {
	t.Helper()
	if n < 0 || n > len(b) || n > limit {
		t.Fatalf("n = %d for %d bytes, limit %d", n, len(b), limit)
	}
	if err != nil {
		if n != 0 {
			t.Fatalf("n = %d with error %v", n, err)
		}
		if s := UpgradeStatus(err); s != 0 && (s < 400 || s > 499) {
			t.Fatalf("status %d for %v", s, err)
		}
		return
	}
	head := b[:n]
	switch {
	case n != r.HeaderBytes || !bytes.HasSuffix(head, []byte("\r\n\r\n")):
		t.Fatalf("n = %d, HeaderBytes = %d, head %q", n, r.HeaderBytes, head)
	case bytes.Contains(head[:n-2], []byte("\r\n\r\n")) || bytes.Contains(head, []byte("\n\n")):
		t.Fatalf("head %q holds an earlier empty line", head)
	case string(r.Method) != "GET" || string(r.Version) != "13" || len(r.Host) == 0:
		t.Fatalf("accepted %s", fmtUpgrade(r))
	case len(r.Path) == 0 || r.Path[0] != '/' || bytes.ContainsAny(r.Path, "?# "):
		t.Fatalf("accepted path %q", r.Path)
	case !r.UpgradeWebSocket || !r.ConnectionUpgrade:
		t.Fatalf("accepted without Upgrade/Connection: %s", fmtUpgrade(r))
	}
	if k, err := base64.StdEncoding.DecodeString(string(r.Key)); err != nil || len(k) != 16 {
		t.Fatalf("accepted key %q", r.Key)
	}
	for _, v := range [][]byte{r.Method, r.Path, r.Query, r.Host, r.Origin, r.Key, r.Protocol,
		r.Extensions, r.Version, r.Authorization, r.XForwardedFor} {
		if v != nil && !bytes.Contains(head, v) {
			t.Fatalf("field %q is not part of the head", v)
		}
		if bytes.ContainsAny(v, "\r\n\x00") || len(v) > 0 && (isOWSByte(v[0]) || isOWSByte(v[len(v)-1])) {
			t.Fatalf("field %q holds a control character or untrimmed space", v)
		}
	}
	if resp := AppendUpgradeResponse(nil, r.Key, r.Protocol); !bytes.HasSuffix(resp, []byte("\r\n\r\n")) {
		t.Fatalf("response %q", resp)
	}
}

// checkUpgradeSplits checks that b arriving in pieces gets ErrIncomplete
// until the answer, and then the one-shot answer (n, err, *r) for good.
func checkUpgradeSplits(t *testing.T, b []byte, limit int, whole *UpgradeRequest, n int, err error) {
	t.Helper()
	// Every prefix for inputs of reasonable size; otherwise pieces whose
	// sizes come from the input itself.
	var ends []int
	if len(b) <= 4096 {
		for k := 0; k <= len(b); k++ {
			ends = append(ends, k)
		}
	} else {
		for k := 0; k < len(b); k += 1 + int(b[k])*7 {
			ends = append(ends, k)
		}
		ends = append(ends, len(b))
	}
	answered := false
	for _, k := range ends {
		var r UpgradeRequest
		pn, perr := ParseUpgrade(b[:k], &r, limit)
		if perr == ErrIncomplete {
			if answered {
				t.Fatalf("prefix %d/%d: ErrIncomplete after the answer", k, len(b))
			}
			if k > limit {
				t.Fatalf("prefix %d: ErrIncomplete past limit %d", k, limit)
			}
			continue
		}
		answered = true
		if pn != n || perr != err {
			t.Fatalf("prefix %d/%d: (%d, %v), one-shot (%d, %v)", k, len(b), pn, perr, n, err)
		}
		if perr == nil && !reflect.DeepEqual(r, *whole) {
			t.Fatalf("prefix %d/%d: %s\none-shot %s", k, len(b), fmtUpgrade(&r), fmtUpgrade(whole))
		}
	}
	if !answered && err != ErrIncomplete {
		t.Fatalf("no prefix answered, one-shot says %v", err)
	}

	// UpgradeHeadLen resumed over the same pieces answers at the same piece.
	next := 0
	for _, k := range ends {
		hn, nx, herr := UpgradeHeadLen(b[:k], next, limit)
		var r UpgradeRequest
		pn, perr := ParseUpgrade(b[:k], &r, limit)
		if (herr == ErrIncomplete) != (perr == ErrIncomplete) || (herr == ErrHeaderTooLarge) != (perr == ErrHeaderTooLarge) ||
			perr == nil && hn != pn {
			t.Fatalf("prefix %d/%d: UpgradeHeadLen (%d, %v), ParseUpgrade (%d, %v)", k, len(b), hn, herr, pn, perr)
		}
		if herr != ErrIncomplete {
			break
		}
		next = nx
	}
}

// refTokenContains is HeaderTokenContains written the obvious way; token
// must hold no letter with a non-ASCII case fold (k, s).
func refTokenContains(v, token string) bool {
	for _, e := range strings.Split(v, ",") {
		if e = strings.Trim(e, " \t"); e != "" && strings.EqualFold(e, token) {
			return true
		}
	}
	return false
}

func isOWSByte(c byte) bool { return c == ' ' || c == '\t' }
