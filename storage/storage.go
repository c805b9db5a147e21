// Package storage owns where messages rest: the embedded bbolt store
// (zero-config default, [Bolt]) and CouchDB ([Couch]). Both keep every
// message of a topic ordered by its time-sortable ID and answer history reads.
//
// storage leaves queueing to mq: a worker hands batches to Store and retries a
// failed batch itself. Store is idempotent by Message.ID, so a retried batch
// stores each message exactly once.
package storage

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/chatgg/chatgg/codec"
)

// Store is the method set [Bolt] and [Couch] share. It documents the
// contract; consumers declare the subset they need (mq's Sink is Store alone).
type Store interface {
	// Store durably stores batch. A message whose ID is already stored is a
	// success and is not stored again. It returns nil only once every
	// message of batch is stored; on error some may be, and the batch may be
	// retried as a whole. batch and its messages are read-only and not kept.
	Store(ctx context.Context, batch []*codec.Message) error
	// History returns at most limit messages of topic whose ID is greater
	// than afterID ("" = from the oldest), ascending by ID. A limit of zero
	// or less returns none. The messages are the caller's to keep.
	History(ctx context.Context, topic, afterID string, limit int) ([]*codec.Message, error)
	// Oldest returns the smallest stored ID of topic; ok is false when the
	// topic has no stored message.
	Oldest(ctx context.Context, topic string) (id string, ok bool, err error)
	// Ping reports whether the store can be reached.
	Ping(ctx context.Context) error
	// Close releases the store. Calls after Close fail.
	Close() error
}

var (
	_ Store = (*Bolt)(nil)
	_ Store = (*Couch)(nil)
)

// ErrBadMessage is wrapped by Store's error when a message can never be
// stored (empty ID or topic, unknown Kind; for Couch also Data of a KindJSON
// message that is not valid JSON): retrying the batch will not help. Store
// wraps it only when every other message of the batch is stored, so a
// caller may drop such a batch without losing messages; any other failure is
// reported instead.
var ErrBadMessage = errors.New("storage: message cannot be stored")

// maxIDsInError caps how many ids an error message lists.
const maxIDsInError = 10

// checkMessage reports why m can never be stored, or "" when it can.
func checkMessage(m *codec.Message) string {
	switch {
	case m == nil:
		return "nil message"
	case m.ID == "":
		return "empty id"
	case m.Topic == "":
		return "empty topic"
	case m.Kind > codec.KindBinary:
		return "unknown kind"
	}
	return ""
}

// badMessages wraps ErrBadMessage with the ids (and first reason) of the
// messages that cannot be stored.
func badMessages(ids []string, reason string) error {
	return fmt.Errorf("%w: %d message(s) (%s): %s", ErrBadMessage, len(ids), joinIDs(ids), reason)
}

// joinIDs lists at most maxIDsInError ids for an error message.
func joinIDs(ids []string) string {
	if len(ids) <= maxIDsInError {
		return strings.Join(ids, ", ")
	}
	return strings.Join(ids[:maxIDsInError], ", ") + fmt.Sprintf(", … %d more", len(ids)-maxIDsInError)
}

// componentLogger returns l (or a discarding logger when nil) tagged with
// the storage component and the store kind.
func componentLogger(l *slog.Logger, store string) *slog.Logger {
	if l == nil {
		l = slog.New(slog.DiscardHandler)
	}
	return l.With("component", "storage", "store", store)
}
