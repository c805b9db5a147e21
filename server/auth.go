package server

import (
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/chatgg/chatgg/loop"
)

// This file verifies the JWTs WebSocket clients connect with (the loop's
// Authenticator): HS256 with a shared secret, RS256 and EdDSA with public
// keys from a PEM or JWKS file. docs/security.md describes the claims.

// Limits on what a token may carry: its sub is stamped on every message
// the connection publishes, and its patterns are matched on every sub and
// pub.
const (
	maxSubjectBytes   = 256
	maxTopicPatterns  = 256
	maxPatternBytes   = 256
	minJWTSecretBytes = 32 // RFC 7518 §3.2: an HS256 key of at least 256 bits
	minRSAKeyBits     = 2048
)

// Token verification errors. Their text is not sent to clients (the loop
// answers "invalid token" or "token expired").
var (
	errNoSubject    = errors.New("server: token has no sub")
	errBadSubject   = errors.New("server: token sub too long")
	errBadPatterns  = errors.New("server: token topic patterns too many or too long")
	errNoKeyForAlg  = errors.New("server: no key for the token's alg")
	errUnknownKeyID = errors.New("server: no key with the token's kid")
	errTokenSyntax  = errors.New("server: token holds characters other than base64url and '.'")
)

// jwtClaims are the claims chatgg reads: the registered ones and the topic
// patterns.
type jwtClaims struct {
	jwt.RegisteredClaims
	SubTopics []string `json:"sub_topics"`
	PubTopics []string `json:"pub_topics"`
}

// publicKey is one verification key with its JWKS kid and alg, if any.
type publicKey struct {
	kid string
	alg string // "RS256" or "EdDSA"; from the JWK's alg or the key type
	key any    // *rsa.PublicKey or ed25519.PublicKey
}

// jwtAuth verifies tokens; safe for concurrent use (read-only after
// newJWTAuth).
type jwtAuth struct {
	secret []byte
	keys   []publicKey
	leeway time.Duration
	parser *jwt.Parser
}

// jwtConfig is what newJWTAuth needs from Config.
type jwtConfig struct {
	Secret        []byte
	PublicKeyFile string // PEM
	JWKSFile      string
	Issuer        string
	Audience      string
	Leeway        time.Duration
	now           func() time.Time // tests; nil: time.Now
}

// enabled reports whether any key is configured.
func (c jwtConfig) enabled() bool {
	return len(c.Secret) > 0 || c.PublicKeyFile != "" || c.JWKSFile != ""
}

// newJWTAuth loads the keys. Errors name the setting at fault.
func newJWTAuth(cfg jwtConfig) (*jwtAuth, error) {
	a := &jwtAuth{leeway: cfg.Leeway}
	var methods []string
	if len(cfg.Secret) > 0 {
		if len(cfg.Secret) < minJWTSecretBytes {
			return nil, fmt.Errorf("--jwt-secret: must be at least %d bytes", minJWTSecretBytes)
		}
		a.secret = cfg.Secret
		methods = append(methods, jwt.SigningMethodHS256.Alg())
	}
	if cfg.PublicKeyFile != "" {
		b, err := os.ReadFile(cfg.PublicKeyFile)
		if err != nil {
			return nil, fmt.Errorf("--jwt-public-key: %w", err)
		}
		keys, err := parsePEMKeys(b)
		if err != nil {
			return nil, fmt.Errorf("--jwt-public-key %s: %w", cfg.PublicKeyFile, err)
		}
		a.keys = append(a.keys, keys...)
	}
	if cfg.JWKSFile != "" {
		b, err := os.ReadFile(cfg.JWKSFile)
		if err != nil {
			return nil, fmt.Errorf("--jwt-jwks: %w", err)
		}
		keys, err := parseJWKS(b)
		if err != nil {
			return nil, fmt.Errorf("--jwt-jwks %s: %w", cfg.JWKSFile, err)
		}
		a.keys = append(a.keys, keys...)
	}
	for _, alg := range []string{jwt.SigningMethodRS256.Alg(), jwt.SigningMethodEdDSA.Alg()} {
		for _, k := range a.keys {
			if k.alg == alg {
				methods = append(methods, alg)
				break
			}
		}
	}
	if len(methods) == 0 {
		return nil, errors.New("--jwt-secret, --jwt-public-key or --jwt-jwks: no key configured")
	}
	opts := []jwt.ParserOption{
		// Only the algorithms of the configured keys: never "none", and a
		// public key is never taken for an HMAC secret (alg confusion).
		jwt.WithValidMethods(methods),
		jwt.WithExpirationRequired(),
		jwt.WithLeeway(cfg.Leeway),
		jwt.WithStrictDecoding(),
	}
	if cfg.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(cfg.Issuer))
	}
	if cfg.Audience != "" {
		opts = append(opts, jwt.WithAudience(cfg.Audience))
	}
	if cfg.now != nil {
		opts = append(opts, jwt.WithTimeFunc(cfg.now))
	}
	a.parser = jwt.NewParser(opts...)
	return a, nil
}

// compactJWS reports whether token holds only what a JWS in compact form
// may (RFC 7515 §7.1): base64url characters and dots. Go's base64 decoding
// skips CR and LF, so without this a signed token would also verify with
// line breaks in it.
func compactJWS(token string) bool {
	for i := 0; i < len(token); i++ {
		switch c := token[i]; {
		case c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '_', c == '.':
		default:
			return false
		}
	}
	return true
}

// Verify implements loop.Authenticator. It is CPU-only: a signature check
// and a JSON decode, microseconds for HS256 and EdDSA, some more for RS256.
func (a *jwtAuth) Verify(token string) (*loop.Identity, error) {
	if !compactJWS(token) {
		return nil, errTokenSyntax
	}
	var c jwtClaims
	if _, err := a.parser.ParseWithClaims(token, &c, a.key); err != nil {
		if errors.Is(err, jwt.ErrTokenExpired) {
			return nil, fmt.Errorf("%w: %w", loop.ErrTokenExpired, err)
		}
		return nil, err
	}
	switch {
	case c.Subject == "":
		return nil, errNoSubject
	case len(c.Subject) > maxSubjectBytes:
		return nil, errBadSubject
	case !patternsOK(c.SubTopics) || !patternsOK(c.PubTopics):
		return nil, errBadPatterns
	}
	id := &loop.Identity{Subject: c.Subject, SubTopics: c.SubTopics, PubTopics: c.PubTopics}
	if c.ExpiresAt != nil { // always, with WithExpirationRequired
		id.Expires = c.ExpiresAt.Add(a.leeway)
	}
	return id, nil
}

func patternsOK(p []string) bool {
	if len(p) > maxTopicPatterns {
		return false
	}
	for _, s := range p {
		if len(s) > maxPatternBytes {
			return false
		}
	}
	return true
}

// key picks the verification key for t by its alg (already one of the
// configured ones) and kid.
func (a *jwtAuth) key(t *jwt.Token) (any, error) {
	alg := t.Method.Alg()
	if alg == jwt.SigningMethodHS256.Alg() {
		if a.secret == nil {
			return nil, errNoKeyForAlg
		}
		return a.secret, nil
	}
	kid, _ := t.Header["kid"].(string)
	var set jwt.VerificationKeySet
	for _, k := range a.keys {
		if k.alg != alg {
			continue
		}
		if kid != "" && k.kid == kid {
			return k.key, nil
		}
		set.Keys = append(set.Keys, k.key)
	}
	if kid != "" {
		// A kid names one key: do not try the others. PEM keys have no
		// kid, so a kid only finds JWKS keys.
		for _, k := range a.keys {
			if k.kid != "" && k.alg == alg {
				return nil, errUnknownKeyID
			}
		}
	}
	if len(set.Keys) == 0 {
		return nil, errNoKeyForAlg
	}
	return set, nil
}

// parsePEMKeys reads every PUBLIC KEY, RSA PUBLIC KEY and CERTIFICATE block
// of a PEM file.
func parsePEMKeys(b []byte) ([]publicKey, error) {
	var keys []publicKey
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			break
		}
		var pub any
		var err error
		switch block.Type {
		case "PUBLIC KEY":
			pub, err = x509.ParsePKIXPublicKey(block.Bytes)
		case "RSA PUBLIC KEY":
			pub, err = x509.ParsePKCS1PublicKey(block.Bytes)
		case "CERTIFICATE":
			var cert *x509.Certificate
			if cert, err = x509.ParseCertificate(block.Bytes); err == nil {
				pub = cert.PublicKey
			}
		default:
			if len(block.Headers) == 0 && (block.Type == "PRIVATE KEY" || block.Type == "RSA PRIVATE KEY") {
				return nil, fmt.Errorf("holds a %s: give the public key only", block.Type)
			}
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%s block: %w", block.Type, err)
		}
		k, err := newPublicKey(pub, "", "")
		if err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, errors.New("no PEM public key found")
	}
	return keys, nil
}

// newPublicKey checks a key's type and size and gives it its alg.
func newPublicKey(pub any, kid, alg string) (publicKey, error) {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() < minRSAKeyBits {
			return publicKey{}, fmt.Errorf("RSA key of %d bits: at least %d needed", k.N.BitLen(), minRSAKeyBits)
		}
		if alg != "" && alg != "RS256" {
			return publicKey{}, fmt.Errorf("RSA key %q with alg %s: only RS256 is supported", kid, alg)
		}
		return publicKey{kid: kid, alg: "RS256", key: k}, nil
	case ed25519.PublicKey:
		if alg != "" && alg != "EdDSA" {
			return publicKey{}, fmt.Errorf("Ed25519 key %q with alg %s: want EdDSA", kid, alg)
		}
		return publicKey{kid: kid, alg: "EdDSA", key: k}, nil
	}
	return publicKey{}, fmt.Errorf("unsupported key type %T: want RSA or Ed25519", pub)
}

// jwk is one key of a JWKS (RFC 7517), the members chatgg reads.
type jwk struct {
	Kty string `json:"kty"`
	Kid string `json:"kid"`
	Alg string `json:"alg"`
	Use string `json:"use"`
	N   string `json:"n"`   // RSA modulus
	E   string `json:"e"`   // RSA exponent
	Crv string `json:"crv"` // OKP curve
	X   string `json:"x"`   // OKP public key
}

// parseJWKS reads the RSA and Ed25519 signing keys of a JWKS document.
// Keys of other types (EC, symmetric) are refused rather than skipped: a
// key the operator expects to work must not be silently ignored.
func parseJWKS(b []byte) ([]publicKey, error) {
	var doc struct {
		Keys []jwk `json:"keys"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("not a JWKS document: %w", err)
	}
	var keys []publicKey
	for i, k := range doc.Keys {
		if k.Use != "" && k.Use != "sig" {
			continue // an encryption key
		}
		var pub any
		switch k.Kty {
		case "RSA":
			n, err1 := base64.RawURLEncoding.DecodeString(k.N)
			e, err2 := base64.RawURLEncoding.DecodeString(k.E)
			if err1 != nil || err2 != nil || len(n) == 0 || len(e) == 0 || len(e) > 4 {
				return nil, fmt.Errorf("key %d (%q): bad RSA n or e", i, k.Kid)
			}
			exp := int(new(big.Int).SetBytes(e).Int64())
			if exp < 3 || exp%2 == 0 {
				return nil, fmt.Errorf("key %d (%q): bad RSA exponent", i, k.Kid)
			}
			pub = &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: exp}
		case "OKP":
			x, err := base64.RawURLEncoding.DecodeString(k.X)
			if k.Crv != "Ed25519" || err != nil || len(x) != ed25519.PublicKeySize {
				return nil, fmt.Errorf("key %d (%q): want an Ed25519 OKP key", i, k.Kid)
			}
			pub = ed25519.PublicKey(x)
		default:
			return nil, fmt.Errorf("key %d (%q): key type %q is not supported (RSA or OKP/Ed25519)", i, k.Kid, k.Kty)
		}
		pk, err := newPublicKey(pub, k.Kid, k.Alg)
		if err != nil {
			return nil, fmt.Errorf("key %d: %w", i, err)
		}
		keys = append(keys, pk)
	}
	if len(keys) == 0 {
		return nil, errors.New("no signing key")
	}
	return keys, nil
}
