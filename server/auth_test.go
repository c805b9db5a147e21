package server

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"

	"github.com/chatgg/chatgg/loop"
)

// testKeys are signing keys generated once per test binary (RSA keys take
// a while under the race detector).
type testKeys struct {
	secret   []byte
	rsa      *rsa.PrivateKey
	rsaOther *rsa.PrivateKey
	ed       ed25519.PrivateKey
	edOther  ed25519.PrivateKey
}

var (
	keysOnce sync.Once
	keys     testKeys
)

func getKeys(t testing.TB) *testKeys {
	t.Helper()
	keysOnce.Do(func() {
		keys.secret = []byte("0123456789abcdef0123456789abcdef-test-secret")
		var err error
		if keys.rsa, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
		if keys.rsaOther, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
		_, keys.ed, _ = ed25519.GenerateKey(rand.Reader)
		_, keys.edOther, _ = ed25519.GenerateKey(rand.Reader)
	})
	return &keys
}

// claims builds token claims: sub, exp in ttl, and the topic patterns.
func claims(sub string, ttl time.Duration, subTopics, pubTopics []string) jwt.MapClaims {
	c := jwt.MapClaims{"exp": time.Now().Add(ttl).Unix()}
	if sub != "" {
		c["sub"] = sub
	}
	if subTopics != nil {
		c["sub_topics"] = subTopics
	}
	if pubTopics != nil {
		c["pub_topics"] = pubTopics
	}
	return c
}

func sign(t testing.TB, m jwt.SigningMethod, key any, c jwt.Claims, kid string) string {
	t.Helper()
	tok := jwt.NewWithClaims(m, c)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func writeFile(t testing.TB, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func pemPublic(t testing.TB, pub any) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func jwksFor(k *testKeys) []byte {
	doc := map[string]any{"keys": []map[string]string{
		{"kty": "RSA", "kid": "rsa-1", "alg": "RS256", "use": "sig", "n": b64(k.rsa.N.Bytes()), "e": b64(big.NewInt(int64(k.rsa.E)).Bytes())},
		{"kty": "OKP", "kid": "ed-1", "crv": "Ed25519", "x": b64(k.ed.Public().(ed25519.PublicKey))},
		{"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"}, // skipped: not for signatures
	}}
	b, _ := json.Marshal(doc)
	return b
}

func TestJWTVerify(t *testing.T) {
	k := getKeys(t)
	pemFile := writeFile(t, "keys.pem", append(pemPublic(t, &k.rsa.PublicKey), pemPublic(t, k.ed.Public())...))
	jwksFile := writeFile(t, "jwks.json", jwksFor(k))
	hs, err := newJWTAuth(jwtConfig{Secret: k.secret, Leeway: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	pk, err := newJWTAuth(jwtConfig{PublicKeyFile: pemFile})
	if err != nil {
		t.Fatal(err)
	}
	jw, err := newJWTAuth(jwtConfig{JWKSFile: jwksFile, Issuer: "https://issuer.example", Audience: "chatgg"})
	if err != nil {
		t.Fatal(err)
	}
	good := claims("alice", time.Hour, []string{"room.*"}, []string{"room.1"})
	withIssAud := func(c jwt.MapClaims, iss string, aud any) jwt.MapClaims {
		out := jwt.MapClaims{}
		for k, v := range c {
			out[k] = v
		}
		out["iss"], out["aud"] = iss, aud
		return out
	}
	rsaPubPEM := pemPublic(t, &k.rsa.PublicKey)
	cases := []struct {
		name    string
		a       *jwtAuth
		token   string
		wantErr error // nil: verifies; errAny: any error
	}{
		{"hs256", hs, sign(t, jwt.SigningMethodHS256, k.secret, good, ""), nil},
		{"hs256-wrong-secret", hs, sign(t, jwt.SigningMethodHS256, []byte("another-secret-another-secret-xx"), good, ""), errAny},
		{"hs512-not-allowed", hs, sign(t, jwt.SigningMethodHS512, k.secret, good, ""), errAny},
		{"alg-none", hs, sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, good, ""), errAny},
		{"no-exp", hs, sign(t, jwt.SigningMethodHS256, k.secret, jwt.MapClaims{"sub": "alice"}, ""), errAny},
		{"expired", hs, sign(t, jwt.SigningMethodHS256, k.secret, claims("alice", -time.Minute, nil, nil), ""), loop.ErrTokenExpired},
		{"expired-within-leeway", hs, sign(t, jwt.SigningMethodHS256, k.secret, claims("alice", -10*time.Second, nil, nil), ""), nil},
		{"nbf-in-the-future", hs, sign(t, jwt.SigningMethodHS256, k.secret, jwt.MapClaims{"sub": "a", "exp": time.Now().Add(time.Hour).Unix(), "nbf": time.Now().Add(time.Hour).Unix()}, ""), errAny},
		{"no-sub", hs, sign(t, jwt.SigningMethodHS256, k.secret, claims("", time.Hour, nil, nil), ""), errNoSubject},
		{"sub-too-long", hs, sign(t, jwt.SigningMethodHS256, k.secret, claims(strings.Repeat("s", 300), time.Hour, nil, nil), ""), errBadSubject},
		{"topics-not-a-list", hs, sign(t, jwt.SigningMethodHS256, k.secret, jwt.MapClaims{"sub": "a", "exp": time.Now().Add(time.Hour).Unix(), "sub_topics": "room.*"}, ""), errAny},
		{"rs256-pem", pk, sign(t, jwt.SigningMethodRS256, k.rsa, good, ""), nil},
		{"eddsa-pem", pk, sign(t, jwt.SigningMethodEdDSA, k.ed, good, ""), nil},
		{"rs256-other-key", pk, sign(t, jwt.SigningMethodRS256, k.rsaOther, good, ""), errAny},
		{"eddsa-other-key", pk, sign(t, jwt.SigningMethodEdDSA, k.edOther, good, ""), errAny},
		// Alg confusion: an HMAC over the public key the server holds.
		{"hs256-with-the-public-key-as-secret", pk, sign(t, jwt.SigningMethodHS256, rsaPubPEM, good, ""), errAny},
		{"hs256-to-a-key-only-server", jw, sign(t, jwt.SigningMethodHS256, k.secret, withIssAud(good, "https://issuer.example", "chatgg"), ""), errAny},
		{"rs384-not-allowed", pk, sign(t, jwt.SigningMethodRS384, k.rsa, good, ""), errAny},
		{"jwks-rs256-kid", jw, sign(t, jwt.SigningMethodRS256, k.rsa, withIssAud(good, "https://issuer.example", "chatgg"), "rsa-1"), nil},
		{"jwks-eddsa-kid", jw, sign(t, jwt.SigningMethodEdDSA, k.ed, withIssAud(good, "https://issuer.example", []string{"other", "chatgg"}), "ed-1"), nil},
		{"jwks-no-kid", jw, sign(t, jwt.SigningMethodEdDSA, k.ed, withIssAud(good, "https://issuer.example", "chatgg"), ""), nil},
		{"jwks-unknown-kid", jw, sign(t, jwt.SigningMethodRS256, k.rsa, withIssAud(good, "https://issuer.example", "chatgg"), "rsa-2"), errAny},
		{"jwks-kid-of-the-other-alg", jw, sign(t, jwt.SigningMethodEdDSA, k.ed, withIssAud(good, "https://issuer.example", "chatgg"), "rsa-1"), errAny},
		{"jwks-wrong-issuer", jw, sign(t, jwt.SigningMethodRS256, k.rsa, withIssAud(good, "https://evil.example", "chatgg"), "rsa-1"), errAny},
		{"jwks-wrong-audience", jw, sign(t, jwt.SigningMethodRS256, k.rsa, withIssAud(good, "https://issuer.example", "other"), "rsa-1"), errAny},
		{"jwks-no-audience", jw, sign(t, jwt.SigningMethodRS256, k.rsa, withIssAud(good, "https://issuer.example", nil), "rsa-1"), errAny},
		{"garbage", hs, "not.a.token", errAny},
		{"empty", hs, "", errAny},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			id, err := tc.a.Verify(tc.token)
			switch {
			case tc.wantErr == nil && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.wantErr == nil:
				if id.Subject == "" || id.Expires.IsZero() {
					t.Fatalf("identity %+v", id)
				}
			case err == nil:
				t.Fatalf("verified, want an error")
			case tc.wantErr != errAny && !errors.Is(err, tc.wantErr):
				t.Fatalf("error %v, want %v", err, tc.wantErr)
			}
		})
	}
	id, err := hs.Verify(sign(t, jwt.SigningMethodHS256, k.secret, good, ""))
	if err != nil {
		t.Fatal(err)
	}
	if id.Subject != "alice" || len(id.SubTopics) != 1 || id.SubTopics[0] != "room.*" || id.PubTopics[0] != "room.1" {
		t.Fatalf("identity %+v", id)
	}
	exp := time.Unix(good["exp"].(int64), 0)
	if d := id.Expires.Sub(exp); d != 30*time.Second {
		t.Fatalf("Expires is exp%+v, want exp plus the 30s leeway", d)
	}
}

var errAny = errors.New("any error")

func TestJWTConfigErrorsNameTheSetting(t *testing.T) {
	k := getKeys(t)
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	privDER, _ := x509.MarshalPKCS8PrivateKey(k.rsa)
	cases := []struct {
		name string
		cfg  jwtConfig
		want string
	}{
		{"short secret", jwtConfig{Secret: []byte("short")}, "--jwt-secret"},
		{"missing pem", jwtConfig{PublicKeyFile: "/nonexistent/keys.pem"}, "--jwt-public-key"},
		{"empty pem", jwtConfig{PublicKeyFile: writeFile(t, "e.pem", []byte("nothing"))}, "--jwt-public-key"},
		{"private key pem", jwtConfig{PublicKeyFile: writeFile(t, "p.pem", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: privDER}))}, "public key only"},
		{"1024-bit rsa", jwtConfig{PublicKeyFile: writeFile(t, "s.pem", pemPublic(t, &small.PublicKey))}, "2048"},
		{"jwks not json", jwtConfig{JWKSFile: writeFile(t, "j.json", []byte("{"))}, "--jwt-jwks"},
		{"jwks ec key", jwtConfig{JWKSFile: writeFile(t, "j.json", []byte(`{"keys":[{"kty":"EC","crv":"P-256","x":"AA","y":"AA"}]}`))}, "not supported"},
		{"jwks symmetric key", jwtConfig{JWKSFile: writeFile(t, "j.json", []byte(`{"keys":[{"kty":"oct","k":"AAAA"}]}`))}, "not supported"},
		{"jwks alg mismatch", jwtConfig{JWKSFile: writeFile(t, "j.json", []byte(`{"keys":[{"kty":"OKP","crv":"Ed25519","alg":"RS256","x":"`+b64(k.ed.Public().(ed25519.PublicKey))+`"}]}`))}, "EdDSA"},
		{"jwks empty", jwtConfig{JWKSFile: writeFile(t, "j.json", []byte(`{"keys":[]}`))}, "no signing key"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := newJWTAuth(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// FuzzVerifyToken: whatever the string, Verify does not panic, and nothing
// but a token signed with the configured keys verifies. The seeds are
// tokens signed with other keys, alg none and alg confusion attempts; the
// fuzzer cannot forge a signature, so every input must be refused.
func FuzzVerifyToken(f *testing.F) {
	k := getKeys(f)
	pemFile := writeFile(f, "keys.pem", append(pemPublic(f, &k.rsa.PublicKey), pemPublic(f, k.ed.Public())...))
	var verifiers []*jwtAuth
	for _, c := range []jwtConfig{{Secret: k.secret}, {PublicKeyFile: pemFile}, {JWKSFile: writeFile(f, "jwks.json", jwksFor(k))}} {
		a, err := newJWTAuth(c)
		if err != nil {
			f.Fatal(err)
		}
		verifiers = append(verifiers, a)
	}
	good := claims("alice", time.Hour, []string{"*"}, []string{"*"})
	rsaPubPEM := pemPublic(f, &k.rsa.PublicKey)
	for _, s := range []string{
		"", ".", "..", "a.b.c", "eyJ.eyJ.", "e30.e30.", "e30.e30.e30",
		sign(f, jwt.SigningMethodHS256, []byte("another-secret-another-secret-xx"), good, ""),
		sign(f, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, good, ""),
		sign(f, jwt.SigningMethodHS256, rsaPubPEM, good, ""),
		sign(f, jwt.SigningMethodRS256, k.rsaOther, good, "rsa-1"),
		sign(f, jwt.SigningMethodEdDSA, k.edOther, good, "ed-1"),
		sign(f, jwt.SigningMethodEdDSA, k.edOther, good, ""),
		// Signed with the real keys but altered afterwards (the fuzzer
		// mutates these further).
		sign(f, jwt.SigningMethodHS256, k.secret, good, "") + "x",
		strings.Replace(sign(f, jwt.SigningMethodRS256, k.rsa, good, ""), ".", ".e30", 1),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, token string) {
		for i, a := range verifiers {
			if id, err := a.Verify(token); err == nil {
				t.Fatalf("verifier %d accepted %q as %+v", i, token, id)
			}
		}
	})
}

// jwtServer starts a server whose WebSocket port takes HS256 tokens.
func jwtServer(t *testing.T, mod func(*Config)) (*Server, *testKeys) {
	k := getKeys(t)
	s := testServer(t, func(c *Config) {
		c.JWTSecret = string(k.secret)
		c.JWTLeeway = 0
		if mod != nil {
			mod(c)
		}
	})
	return s, k
}

func TestWebSocketJWTEndToEnd(t *testing.T) {
	s, k := jwtServer(t, nil)
	url := "ws://" + s.WSAddr() + "/ws"

	_, resp, err := websocket.DefaultDialer.Dial(url, nil)
	if err == nil || resp == nil || resp.StatusCode != 401 {
		t.Fatalf("no token: %v %v", resp, err)
	}
	bad := sign(t, jwt.SigningMethodHS256, []byte("another-secret-another-secret-xx"), claims("eve", time.Hour, []string{"*"}, []string{"*"}), "")
	_, resp, err = websocket.DefaultDialer.Dial(url+"?token="+bad, nil)
	if err == nil || resp == nil || resp.StatusCode != 401 {
		t.Fatalf("bad token: %v %v", resp, err)
	}

	tok := sign(t, jwt.SigningMethodHS256, k.secret, claims("alice", time.Hour, []string{"room.*"}, []string{"room.*"}), "")
	// A browser sends the token as a subprotocol next to the real one.
	d := websocket.Dialer{Subprotocols: []string{"chatgg.v1", "bearer." + tok}}
	ws, resp, err := d.Dial(url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.Header.Get("Sec-WebSocket-Protocol"); got != "chatgg.v1" {
		t.Fatalf("subprotocol %q", got)
	}
	t.Cleanup(func() { ws.Close() })
	c := &client{t: t, ws: ws}
	c.send(`{"op":"sub","topic":"room.1","ref":"s"}`)
	c.expect("ack", "s")
	c.send(`{"op":"sub","topic":"lobby","ref":"x"}`)
	if f := c.expect("error", "x"); f.Code != 403 {
		t.Fatalf("sub outside sub_topics: %+v", f)
	}
	c.send(`{"op":"pub","topic":"room.1","data":{"text":"hi"},"from":"mallory"}`)
	_, b := c.read()
	var m struct{ Op, From string }
	if err := json.Unmarshal(b, &m); err != nil || m.Op != "msg" || m.From != "alice" {
		t.Fatalf("got %s, want a msg from alice", b)
	}

	// REST history shows the sender too.
	eventually(t, 5*time.Second, "stored", func() bool {
		_, body, _ := httpDo(t, "GET", "http://"+s.HTTPAddr()+"/v1/topics/room.1/messages", "", "")
		return bytes.Contains(body, []byte(`"from":"alice"`))
	})

	_, body, _ := httpDo(t, "GET", "http://"+s.HTTPAddr()+"/metrics", "", "")
	for _, want := range []string{
		`chatgg_rejections_total{port="ws",reason="no_token"} 1`,
		`chatgg_rejections_total{port="ws",reason="bad_token"} 1`,
		`chatgg_rejections_total{port="ws",reason="sub_denied"} 1`,
		`chatgg_upgrades_rejected_total{status="401"} 2`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %s:\n%s", want, grepLines(string(body), "reject"))
		}
	}
}

func TestWebSocketTokenExpiryAndRefresh(t *testing.T) {
	s, k := jwtServer(t, nil)
	url := "ws://" + s.WSAddr() + "/ws"
	short := func() string {
		return sign(t, jwt.SigningMethodHS256, k.secret, claims("alice", 2*time.Second, []string{"*"}, []string{"*"}), "")
	}
	h := http.Header{"Authorization": {"Bearer " + short()}}

	// Not refreshed: closed with 4001 once exp passes.
	ws, _, err := websocket.DefaultDialer.Dial(url, h)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	_ = ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _, err = ws.ReadMessage()
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != 4001 {
		t.Fatalf("want close 4001, got %v", err)
	}

	// Refreshed in time: stays open past the first exp.
	ws2, _, err := websocket.DefaultDialer.Dial(url, http.Header{"Authorization": {"Bearer " + short()}})
	if err != nil {
		t.Fatal(err)
	}
	c := &client{t: t, ws: ws2}
	t.Cleanup(func() { ws2.Close() })
	other := sign(t, jwt.SigningMethodHS256, k.secret, claims("bob", time.Hour, []string{"*"}, []string{"*"}), "")
	c.send(`{"op":"auth","token":"` + other + `","ref":"b"}`)
	if f := c.expect("error", "b"); f.Code != 403 {
		t.Fatalf("another sub: %+v", f)
	}
	long := sign(t, jwt.SigningMethodHS256, k.secret, claims("alice", time.Hour, []string{"*"}, []string{"*"}), "")
	c.send(`{"op":"auth","token":"` + long + `","ref":"a"}`)
	c.expect("ack", "a")
	time.Sleep(3500 * time.Millisecond)
	c.send(`{"op":"sub","topic":"still.here","ref":"s"}`)
	c.expect("ack", "s")
}

func TestAnonymousSettings(t *testing.T) {
	k := getKeys(t)
	t.Run("refused-when-a-key-is-set", func(t *testing.T) {
		s, _ := jwtServer(t, nil)
		_, resp, err := websocket.DefaultDialer.Dial("ws://"+s.WSAddr()+"/ws", nil)
		if err == nil || resp.StatusCode != 401 {
			t.Fatalf("%v %v", resp, err)
		}
	})
	t.Run("allowed-explicitly-read-only", func(t *testing.T) {
		s, _ := jwtServer(t, func(c *Config) {
			c.AllowAnonymous = "true"
			c.AnonymousSubTopics = []string{"lobby"}
			c.AnonymousPubTopics = []string{}
		})
		c := dial(t, s, "/ws")
		c.send(`{"op":"sub","topic":"lobby","ref":"1"}`)
		c.expect("ack", "1")
		c.send(`{"op":"pub","topic":"lobby","data":1,"ref":"2"}`)
		if f := c.expect("error", "2"); f.Code != 403 {
			t.Fatalf("%+v", f)
		}
	})
	t.Run("false-without-a-key-fails-at-start", func(t *testing.T) {
		cfg, err := Load([]string{"--allow-anonymous=false", "--data-dir", t.TempDir()}, env(), &bytes.Buffer{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := New(t.Context(), cfg, nil); err == nil || !strings.Contains(err.Error(), "--allow-anonymous") {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("short-secret-fails-at-start", func(t *testing.T) {
		cfg, err := Load([]string{"--data-dir", t.TempDir()}, env("CHATGG_JWT_SECRET", "too-short"), &bytes.Buffer{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := New(t.Context(), cfg, nil); err == nil || !strings.Contains(err.Error(), "--jwt-secret") || strings.Contains(err.Error(), "too-short") {
			t.Fatalf("got %v", err)
		}
	})
	_ = k
}

func TestSecretsStayOutOfHelpAndErrors(t *testing.T) {
	const secret = "the-jwt-secret-value-that-must-not-show"
	const apiKeys = "api-key-value-that-must-not-show publish"
	var out bytes.Buffer
	_, err := Load([]string{"--help"}, env("CHATGG_JWT_SECRET", secret, "CHATGG_API_KEYS", apiKeys), &out)
	if !errors.Is(err, ErrHelp) {
		t.Fatal(err)
	}
	if strings.Contains(out.String(), secret) || strings.Contains(out.String(), "api-key-value") {
		t.Fatalf("--help shows a secret:\n%s", out.String())
	}
	c, err := Load(nil, env("CHATGG_JWT_SECRET", secret, "CHATGG_API_KEYS", apiKeys), &out)
	if err != nil || c.JWTSecret != secret || c.APIKeys != apiKeys {
		t.Fatalf("env secrets not read: %v", err)
	}
	c, err = Load([]string{"--jwt-secret", "from-the-flag"}, env("CHATGG_JWT_SECRET", secret), &out)
	if err != nil || c.JWTSecret != "from-the-flag" {
		t.Fatalf("flag does not win: %v %q", err, c.JWTSecret)
	}
	// A bad API key entry fails naming the entry, not the key.
	_, err = loadAPIKeys("", "short-key publish")
	if err == nil || strings.Contains(err.Error(), "short-key") {
		t.Fatalf("got %v", err)
	}
}

func TestSecurityOptionsParse(t *testing.T) {
	cases := []struct {
		name string
		args []string
		want string // "" for success
	}{
		{"origins", []string{"--allowed-origins", "https://chat.example.com, https://*.example.org,http://localhost:8080"}, ""},
		{"origin with path", []string{"--allowed-origins", "https://chat.example.com/app"}, "--allowed-origins"},
		{"origin without scheme", []string{"--allowed-origins", "chat.example.com"}, "--allowed-origins"},
		{"origin bad wildcard", []string{"--allowed-origins", "https://a*.example.com"}, "--allowed-origins"},
		{"patterns", []string{"--anonymous-sub-topics", "lobby, news.*,*"}, ""},
		{"bad pattern", []string{"--anonymous-pub-topics", "has space"}, "--anonymous-pub-topics"},
		{"allow-anonymous", []string{"--allow-anonymous", "maybe"}, "--allow-anonymous"},
		{"negative rate", []string{"--upgrades-per-sec-per-ip", "-1"}, "--upgrades-per-sec-per-ip"},
		{"negative conns", []string{"--max-conns", "-1"}, "--max-conns"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(tc.args, env(), &bytes.Buffer{})
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
		})
	}
	c, _ := Load(nil, env(), &bytes.Buffer{})
	if c.AllowedOrigins != nil || len(c.AnonymousSubTopics) != 1 || c.AllowAnonymous != "auto" || c.MaxConns != 0 {
		t.Fatalf("defaults: %+v", c)
	}
	c, _ = Load([]string{"--anonymous-pub-topics", ""}, env(), &bytes.Buffer{})
	if c.AnonymousPubTopics == nil || len(c.AnonymousPubTopics) != 0 {
		t.Fatalf("empty pattern list must mean none, got %#v", c.AnonymousPubTopics)
	}
}

func TestOriginCheckOnTheServer(t *testing.T) {
	s := testServer(t, func(c *Config) { c.AllowedOrigins = []string{"https://chat.example.com"} })
	url := "ws://" + s.WSAddr() + "/ws"
	_, resp, err := websocket.DefaultDialer.Dial(url, http.Header{"Origin": {"https://evil.example"}})
	if err == nil || resp.StatusCode != 403 {
		t.Fatalf("foreign origin: %v %v", resp, err)
	}
	ws, _, err := websocket.DefaultDialer.Dial(url, http.Header{"Origin": {"https://chat.example.com"}})
	if err != nil {
		t.Fatal(err)
	}
	ws.Close()
}

func TestConnectionLimitsOnTheServer(t *testing.T) {
	s := testServer(t, func(c *Config) { c.MaxConnsPerIP = 1 })
	url := "ws://" + s.WSAddr() + "/echo"
	ws, _, err := websocket.DefaultDialer.Dial(url, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	_, resp, err := websocket.DefaultDialer.Dial(url, nil)
	if err == nil || resp.StatusCode != 429 {
		t.Fatalf("second connection: %v %v", resp, err)
	}
	_, body, _ := httpDo(t, "GET", "http://"+s.HTTPAddr()+"/metrics", "", "")
	if !strings.Contains(string(body), `chatgg_rejections_total{port="ws",reason="ip_conns"} 1`) {
		t.Errorf("metrics:\n%s", grepLines(string(body), "reject"))
	}
}

const (
	keyPublish = "pub-key-0123456789abcdef"
	keyHistory = "hist-key-0123456789abcdef"
	keyAdmin   = "admin-key-0123456789abcdef"
)

func keyServer(t *testing.T) *Server {
	file := writeFile(t, "keys", []byte("# REST keys\n"+keyPublish+" publish backend\n\n"+keyHistory+" history\n"))
	return testServer(t, func(c *Config) {
		c.APIKeysFile = file
		c.APIKeys = keyAdmin + " admin,history ops"
	})
}

func TestRESTAPIKeys(t *testing.T) {
	s := keyServer(t)
	base := "http://" + s.HTTPAddr()
	type req struct{ method, path, ct, body string }
	pub := req{"POST", "/v1/topics/room.1/messages", "application/json", `{"x":1}`}
	batch := req{"POST", "/v1/messages", "application/json", `[{"topic":"a","data":1}]`}
	hist := req{"GET", "/v1/topics/room.1/messages", "", ""}
	topics := req{"GET", "/v1/topics", "", ""}
	queue := req{"GET", "/v1/queue", "", ""}
	replay := req{"POST", "/v1/queue/dead/replay", "", ""}
	cases := []struct {
		name   string
		r      req
		auth   string
		status int
	}{
		{"publish-no-key", pub, "", 401},
		{"publish-bad-key", pub, "Bearer not-a-key-0123456789", 401},
		{"publish-basic-auth", pub, "Basic cHViOmtleQ==", 401},
		{"publish-history-key", pub, "Bearer " + keyHistory, 403},
		{"publish", pub, "Bearer " + keyPublish, 202},
		{"publish-lowercase-scheme", pub, "bearer " + keyPublish, 202},
		{"batch-no-key", batch, "", 401},
		{"batch", batch, "Bearer " + keyPublish, 202},
		{"history-no-key", hist, "", 401},
		{"history-publish-key", hist, "Bearer " + keyPublish, 403},
		{"history", hist, "Bearer " + keyHistory, 200},
		{"history-admin-key-with-history", hist, "Bearer " + keyAdmin, 200},
		{"topics-history-key", topics, "Bearer " + keyHistory, 403},
		{"topics", topics, "Bearer " + keyAdmin, 200},
		{"queue-no-key", queue, "", 401},
		{"queue", queue, "Bearer " + keyAdmin, 200},
		{"replay-publish-key", replay, "Bearer " + keyPublish, 403},
		{"replay", replay, "Bearer " + keyAdmin, 200},
		{"healthz-open", req{"GET", "/healthz", "", ""}, "", 200},
		{"readyz-open", req{"GET", "/readyz", "", ""}, "", 200},
		{"metrics-open", req{"GET", "/metrics", "", ""}, "", 200},
		{"openapi-open", req{"GET", "/v1/openapi.json", "", ""}, "", 200},
		{"web-page-open", req{"GET", "/", "", ""}, "", 200},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var h []string
			if tc.auth != "" {
				h = []string{"Authorization", tc.auth}
			}
			status, body, hdr := httpDo(t, tc.r.method, base+tc.r.path, tc.r.ct, tc.r.body, h...)
			if status != tc.status {
				t.Fatalf("status %d %s, want %d", status, body, tc.status)
			}
			if status == 401 || status == 403 {
				var e struct {
					Error struct {
						Code    int    `json:"code"`
						Message string `json:"message"`
					} `json:"error"`
				}
				if err := json.Unmarshal(body, &e); err != nil || e.Error.Code != status {
					t.Fatalf("error body %s", body)
				}
			}
			if status == 401 && !strings.HasPrefix(hdr.Get("WWW-Authenticate"), "Bearer") {
				t.Errorf("401 without WWW-Authenticate")
			}
		})
	}
	_, body, _ := httpDo(t, "GET", base+"/metrics", "", "")
	for _, want := range []string{
		`chatgg_rejections_total{port="http",reason="no_api_key"} 5`,
		`chatgg_rejections_total{port="http",reason="bad_api_key"} 1`,
		`chatgg_rejections_total{port="http",reason="scope"} 4`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %s:\n%s", want, grepLines(string(body), "rejections"))
		}
	}
}

func TestAPIKeyParsing(t *testing.T) {
	cases := []struct {
		name, text string
		sep        byte
		want       string // error substring; "" for success
		n          int
	}{
		{"lines", "# c\nkey-aaaaaaaaaaaaaaaa publish,history one\n\nkey-bbbbbbbbbbbbbbbb admin\n", '\n', "", 2},
		{"env", "key-aaaaaaaaaaaaaaaa publish; key-bbbbbbbbbbbbbbbb history,admin ops;", ';', "", 2},
		{"unknown scope", "key-aaaaaaaaaaaaaaaa write", '\n', "unknown scope", 0},
		{"no scope", "key-aaaaaaaaaaaaaaaa", '\n', "entry 1", 0},
		{"too many fields", "key-aaaaaaaaaaaaaaaa publish a b", '\n', "entry 1", 0},
		{"short key", "short publish", '\n', "shorter", 0},
		{"repeated", "key-aaaaaaaaaaaaaaaa publish\nkey-aaaaaaaaaaaaaaaa admin", '\n', "repeated", 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var ks apiKeys
			err := parseAPIKeys(tc.text, tc.sep, &ks)
			if tc.want == "" {
				if err != nil || len(ks.keys) != tc.n {
					t.Fatalf("%v, %d keys", err, len(ks.keys))
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "aaaa") {
				t.Fatalf("error shows the key: %v", err)
			}
		})
	}
	var ks apiKeys
	if err := parseAPIKeys("key-aaaaaaaaaaaaaaaa publish one\nkey-bbbbbbbbbbbbbbbb admin two", '\n', &ks); err != nil {
		t.Fatal(err)
	}
	if k, err := ks.lookup([]byte("key-bbbbbbbbbbbbbbbb")); err != nil || k.name != "two" || k.scopes != scopeAdmin {
		t.Fatalf("lookup: %+v %v", k, err)
	}
	if _, err := ks.lookup([]byte("key-bbbbbbbbbbbbbbb")); err == nil {
		t.Fatal("a prefix of a key matched")
	}
	for _, k := range ks.keys {
		if bytes.Contains([]byte(fmt.Sprintf("%+v", k)), []byte("aaaa")) {
			t.Fatal("the key is kept in clear")
		}
	}
}

// TestRejectedRESTRequestsLeaveMemoryFlat sends 10 000 requests with bad
// keys and checks that heap and goroutines are back where they were.
func TestRejectedRESTRequestsLeaveMemoryFlat(t *testing.T) {
	if testing.Short() {
		t.Skip("10 000 requests")
	}
	s := keyServer(t)
	url := "http://" + s.HTTPAddr() + "/v1/topics/room.1/messages"
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 8}}
	defer client.CloseIdleConnections()
	run := func(n int) {
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for w := range 8 {
			wg.Go(func() {
				for i := w; i < n; i += 8 {
					req, _ := http.NewRequest("GET", url, nil)
					req.Header.Set("Authorization", fmt.Sprintf("Bearer bad-key-%d-0123456789abcdef", i))
					resp, err := client.Do(req)
					if err != nil {
						errs <- err
						return
					}
					resp.Body.Close()
					if resp.StatusCode != 401 {
						errs <- fmt.Errorf("status %d", resp.StatusCode)
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
	}
	heap := func() uint64 {
		var m runtime.MemStats
		runtime.GC()
		runtime.GC()
		runtime.ReadMemStats(&m)
		return m.HeapInuse
	}
	run(500)
	h0, g0 := heap(), runtime.NumGoroutine()
	run(10000)
	h1, g1 := heap(), runtime.NumGoroutine()
	t.Logf("HeapInuse %d -> %d, goroutines %d -> %d", h0, h1, g0, g1)
	if h1 > h0+8<<20 {
		t.Errorf("heap grew by %d bytes", h1-h0)
	}
	if g1 > g0+10 {
		t.Errorf("goroutines grew from %d to %d", g0, g1)
	}
	if got := s.metrics.rejectedCount("http", "bad_api_key"); got != 10500 {
		t.Errorf("counted %d refusals, want 10500", got)
	}
}

func TestRateLog(t *testing.T) {
	var l rateLog
	l.Every = time.Second
	now := time.Now()
	if !l.allow("a", now) || l.allow("a", now.Add(500*time.Millisecond)) || !l.allow("b", now) || !l.allow("a", now.Add(time.Second)) {
		t.Fatal("rateLog does not let one line per interval and key through")
	}
}

// FuzzParseAPIKeys: any key file either loads or fails without panicking,
// and an error never quotes a key.
func FuzzParseAPIKeys(f *testing.F) {
	f.Add("key-aaaaaaaaaaaaaaaa publish,history one\n# c\n\nkey-bbbbbbbbbbbbbbbb admin")
	f.Add("key-aaaaaaaaaaaaaaaa write")
	f.Add("short publish")
	f.Add("key-aaaaaaaaaaaaaaaa publish;key-aaaaaaaaaaaaaaaa admin")
	f.Fuzz(func(t *testing.T, text string) {
		for _, sep := range []byte{'\n', ';'} {
			var ks apiKeys
			err := parseAPIKeys(text, sep, &ks)
			if err != nil {
				for _, field := range strings.Fields(text) {
					if len(field) >= minAPIKeyBytes && strings.Contains(err.Error(), field) {
						t.Fatalf("error %q quotes %q", err, field)
					}
				}
				continue
			}
			for _, k := range ks.keys {
				if k.scopes == 0 {
					t.Fatalf("key without scope from %q", text)
				}
			}
		}
	})
}

// TestVerifyRefusesLineBreaksInAToken: base64 decoding skips CR and LF, so
// a correctly signed token with a line break in it would verify; a compact
// JWS holds only base64url characters and dots, and anything else is
// refused before the signature is looked at. (FuzzVerifyToken found it.)
func TestVerifyRefusesLineBreaksInAToken(t *testing.T) {
	k := getKeys(t)
	a, err := newJWTAuth(jwtConfig{Secret: k.secret})
	if err != nil {
		t.Fatal(err)
	}
	tok := sign(t, jwt.SigningMethodHS256, k.secret, claims("alice", time.Hour, []string{"*"}, []string{"*"}), "")
	if _, err := a.Verify(tok); err != nil {
		t.Fatalf("the token itself: %v", err)
	}
	dot := strings.IndexByte(tok, '.')
	for _, bad := range []string{tok + "\n", tok + "\r\n", tok[:dot+3] + "\n" + tok[dot+3:], " " + tok, tok + "="} {
		if id, err := a.Verify(bad); !errors.Is(err, errTokenSyntax) {
			t.Errorf("Verify(%q) = %+v, %v; want errTokenSyntax", bad, id, err)
		}
	}
}
