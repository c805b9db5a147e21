package server

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"os"
	"strings"
)

// This file holds the REST API keys: who may publish, read history or
// administer the node over REST (docs/rest.md).

// scope is a permission an API key carries.
type scope uint8

const (
	scopePublish scope = 1 << iota // POST /v1/topics/{topic}/messages, POST /v1/messages
	scopeHistory                   // GET /v1/topics/{topic}/messages
	scopeAdmin                     // GET /v1/topics, GET /v1/queue, POST /v1/queue/dead/replay
)

var scopeNames = map[string]scope{"publish": scopePublish, "history": scopeHistory, "admin": scopeAdmin}

func (s scope) String() string {
	for n, v := range scopeNames {
		if v == s {
			return n
		}
	}
	return "unknown"
}

// minAPIKeyBytes keeps guessable keys out.
const minAPIKeyBytes = 16

// apiKey is one key, kept only as its SHA-256 digest.
type apiKey struct {
	digest [sha256.Size]byte
	scopes scope
	name   string // for logs; the key itself is never logged
}

// apiKeys is the loaded key set; read-only after load.
type apiKeys struct {
	keys []apiKey
}

// parseAPIKeys reads entries "key scope1,scope2 [name]", one per line
// (sep '\n') or separated by ';' (the environment form). Blank entries and
// lines starting with '#' are skipped. Errors give the entry's position,
// never the key.
func parseAPIKeys(text string, sep byte, ks *apiKeys) error {
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(nil, 1<<20)
	sc.Split(func(data []byte, atEOF bool) (int, []byte, error) {
		if i := bytes.IndexByte(data, sep); i >= 0 {
			return i + 1, data[:i], nil
		}
		if atEOF && len(data) > 0 {
			return len(data), data, nil
		}
		return 0, nil, nil
	})
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 2 || len(f) > 3 {
			return fmt.Errorf("entry %d: want \"key scope[,scope...] [name]\"", n)
		}
		if len(f[0]) < minAPIKeyBytes {
			return fmt.Errorf("entry %d: key shorter than %d bytes", n, minAPIKeyBytes)
		}
		k := apiKey{digest: sha256.Sum256([]byte(f[0])), name: fmt.Sprintf("key%d", len(ks.keys)+1)}
		if len(f) == 3 {
			k.name = f[2]
		}
		for _, s := range strings.Split(f[1], ",") {
			v, ok := scopeNames[s]
			if !ok {
				// The bad value is not quoted: in a mangled line it may
				// be someone's key.
				return fmt.Errorf("entry %d: unknown scope: want publish, history or admin, comma-separated", n)
			}
			k.scopes |= v
		}
		for _, o := range ks.keys {
			if o.digest == k.digest {
				return fmt.Errorf("entry %d: key repeated", n)
			}
		}
		ks.keys = append(ks.keys, k)
	}
	return sc.Err()
}

// loadAPIKeys builds the key set from the file and the environment list.
// nil, nil: no keys configured, REST is open.
func loadAPIKeys(file, list string) (*apiKeys, error) {
	ks := &apiKeys{}
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("--api-keys-file: %w", err)
		}
		if err := parseAPIKeys(string(b), '\n', ks); err != nil {
			return nil, fmt.Errorf("--api-keys-file %s: %w", file, err)
		}
		if len(ks.keys) == 0 {
			return nil, fmt.Errorf("--api-keys-file %s: no key", file)
		}
	}
	if list != "" {
		if err := parseAPIKeys(list, ';', ks); err != nil {
			return nil, fmt.Errorf("--api-keys (env CHATGG_API_KEYS): %w", err)
		}
	}
	if len(ks.keys) == 0 {
		return nil, nil
	}
	return ks, nil
}

var errUnknownAPIKey = errors.New("server: unknown API key")

// lookup finds the key presented. Its digest is compared with every
// stored digest in constant time, without stopping at a match, so the time
// taken tells nothing of which key, or how much of one, matched.
func (ks *apiKeys) lookup(presented []byte) (*apiKey, error) {
	d := sha256.Sum256(presented)
	found := -1
	for i := range ks.keys {
		if subtle.ConstantTimeCompare(d[:], ks.keys[i].digest[:]) == 1 {
			found = i
		}
	}
	if found < 0 {
		return nil, errUnknownAPIKey
	}
	return &ks.keys[found], nil
}
