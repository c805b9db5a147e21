package server

import (
	"testing"

	"github.com/chatgg/chatgg/internal/testsvc"
)

// TestMain stops the Redis and CouchDB-compatible servers the tests started.
func TestMain(m *testing.M) { testsvc.Main(m) }
