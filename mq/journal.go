package mq

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/chatgg/chatgg/codec"
)

// DefaultJournalFile is the journal's file name in the data directory.
const DefaultJournalFile = "queue.db"

// journalBucket holds the accepted, not yet stored messages, keyed by id.
var journalBucket = []byte("queue")

// Journal makes the in-process queue durable: Local writes every batch to
// it (one synced bbolt transaction) before accepting it, removes a
// batch once the Sink stored it, and Recover puts back what a crash left
// in it. A message is therefore either in the journal or stored, and an
// accepted message survives the process dying. Removal may lag (or be lost
// in a crash): such messages are stored again, which the Sink tolerates.
//
// A Journal is safe for concurrent use.
type Journal struct {
	db  *bbolt.DB
	log *slog.Logger
}

// OpenJournal opens (creating when missing) the journal file at path.
func OpenJournal(path string, logger *slog.Logger) (*Journal, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("mq: journal directory: %w", err)
	}
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: 10 * time.Second, FreelistType: bbolt.FreelistMapType})
	if err != nil {
		return nil, fmt.Errorf("mq: open journal %s: %w", path, err)
	}
	if err := db.Update(func(tx *bbolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(journalBucket)
		return err
	}); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("mq: journal %s: %w", path, err)
	}
	j := &Journal{db: db, log: discardLogger(logger).With("component", "mq")}
	j.log.Info("queue journal opened", "path", path)
	return j, nil
}

// append writes batch durably.
func (j *Journal) append(batch []*codec.Message) error {
	size := 0
	for _, m := range batch {
		size += codec.WireLen(m)
	}
	buf := make([]byte, 0, size)
	return j.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(journalBucket)
		for _, m := range batch {
			start := len(buf)
			buf = codec.AppendMessage(buf, m)
			if err := b.Put([]byte(m.ID), buf[start:]); err != nil {
				return err
			}
		}
		return nil
	})
}

// remove forgets batch, once stored.
func (j *Journal) remove(batch []*codec.Message) error {
	return j.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(journalBucket)
		for _, m := range batch {
			if err := b.Delete([]byte(m.ID)); err != nil {
				return err
			}
		}
		return nil
	})
}

// load returns every message in the journal, in id order. An entry that
// does not decode is skipped and logged: nothing can store it.
func (j *Journal) load() ([]*codec.Message, error) {
	var out []*codec.Message
	err := j.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(journalBucket).ForEach(func(k, v []byte) error {
			m := new(codec.Message)
			// A copy: bbolt's value is only valid in the transaction, and
			// the message's Data aliases what it decodes.
			if err := codec.DecodeMessage(append([]byte(nil), v...), m); err != nil {
				j.log.Warn("undecodable journal entry skipped", "key", string(k), "bytes", len(v), "err", err)
				return nil
			}
			out = append(out, m)
			return nil
		})
	})
	return out, err
}

// Close closes the journal file.
func (j *Journal) Close() error {
	if err := j.db.Close(); err != nil && !errors.Is(err, berrors.ErrDatabaseNotOpen) {
		return fmt.Errorf("mq: close journal: %w", err)
	}
	return nil
}
