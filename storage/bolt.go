package storage

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"go.etcd.io/bbolt"

	"github.com/chatgg/chatgg/codec"
)

const (
	// DefaultDir is the data directory of the embedded store.
	DefaultDir = "./data"
	// DefaultBoltFile is the embedded store's file name inside its directory.
	DefaultBoltFile = "chatgg.db"
	// DefaultBoltOpenTimeout is how long NewBolt waits for the file lock.
	DefaultBoltOpenTimeout = 5 * time.Second
)

// boltFillPercent packs pages nearly full: ids grow with time, so a topic's
// bucket is appended to at its end and split pages are rarely written again.
const boltFillPercent = 0.9

// BoltConfig configures the embedded store. Zero values mean the defaults.
type BoltConfig struct {
	// Dir is the data directory, created (mode 0750) when missing.
	// Default DefaultDir. Unused when Path is set.
	Dir string
	// Path is the database file. Default "<Dir>/chatgg.db". Its directory is
	// created when missing.
	Path string
	// OpenTimeout bounds the wait for the file's exclusive lock, held while
	// another process has the file open. Default DefaultBoltOpenTimeout.
	OpenTimeout time.Duration
	// Logger receives start-up and shutdown events. Nil discards.
	Logger *slog.Logger
}

// Bolt is the embedded store: a bbolt file with one bucket per topic, keyed
// by message ID (fixed width, so byte order is time order) and holding the
// codec wire form. One process at a time may open the file.
//
// Bolt is safe for concurrent use. Stores are serialised by bbolt's single
// writer; reads run in parallel with them.
type Bolt struct {
	db  *bbolt.DB
	log *slog.Logger
}

// NewBolt opens (creating when missing) the store file.
func NewBolt(cfg BoltConfig) (*Bolt, error) {
	path := cfg.Path
	if path == "" {
		dir := cfg.Dir
		if dir == "" {
			dir = DefaultDir
		}
		path = filepath.Join(dir, DefaultBoltFile)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("storage: create data directory: %w", err)
	}
	timeout := cfg.OpenTimeout
	if timeout <= 0 {
		timeout = DefaultBoltOpenTimeout
	}
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{
		Timeout: timeout,
		// The hashmap freelist stays fast once the file is large and
		// fragmented; bbolt's array default degrades there.
		FreelistType: bbolt.FreelistMapType,
	})
	if err != nil {
		return nil, fmt.Errorf("storage: open %s: %w", path, err)
	}
	b := &Bolt{db: db, log: componentLogger(cfg.Logger, "bolt")}
	b.log.Info("store opened", "path", path)
	return b, nil
}

// Store stores batch in one synced bbolt transaction. Messages whose
// ID is already in their topic's bucket are skipped.
func (b *Bolt) Store(ctx context.Context, batch []*codec.Message) error {
	if len(batch) == 0 {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	var (
		bad    []string
		reason string
		size   int
	)
	for _, m := range batch {
		if r := checkMessage(m); r != "" {
			bad, reason = append(bad, messageID(m)), r
			continue
		}
		size += len(m.ID) + codec.WireLen(m)
	}
	if len(bad) == len(batch) {
		return badMessages(bad, reason)
	}
	// bbolt keeps the key and value slices given to Put until the
	// transaction commits, so they are carved from one arena per batch. An
	// append that grows the arena leaves earlier slices on the old array,
	// which still holds their bytes.
	arena := make([]byte, 0, size)
	err := b.db.Update(func(tx *bbolt.Tx) error {
		var (
			bk    *bbolt.Bucket
			c     *bbolt.Cursor // reused: a Cursor per Get allocates its stack
			topic string
		)
		for _, m := range batch {
			if checkMessage(m) != "" {
				continue
			}
			if bk == nil || m.Topic != topic {
				var err error
				if bk, err = tx.CreateBucketIfNotExists([]byte(m.Topic)); err != nil {
					return fmt.Errorf("topic %q: %w", m.Topic, err)
				}
				bk.FillPercent = boltFillPercent
				c = bk.Cursor()
				topic = m.Topic
			}
			start := len(arena)
			arena = append(arena, m.ID...)
			key := arena[start:len(arena):len(arena)]
			// Seek repositions the cursor, so it stays valid across Puts.
			if k, _ := c.Seek(key); k != nil && string(k) == m.ID {
				arena = arena[:start] // already stored: idempotent success
				continue
			}
			start = len(arena)
			arena = codec.AppendMessage(arena, m)
			if err := bk.Put(key, arena[start:len(arena):len(arena)]); err != nil {
				return fmt.Errorf("put %s: %w", m.ID, err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("storage: bolt write %d messages: %w", len(batch)-len(bad), err)
	}
	if len(bad) > 0 {
		return badMessages(bad, reason)
	}
	return nil
}

// History returns at most limit messages of topic with ID > afterID,
// ascending by ID.
func (b *Bolt) History(ctx context.Context, topic, afterID string, limit int) ([]*codec.Message, error) {
	if limit <= 0 {
		return nil, nil
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var out []*codec.Message
	err := b.db.View(func(tx *bbolt.Tx) error {
		bk := tx.Bucket([]byte(topic))
		if bk == nil {
			return nil
		}
		out = make([]*codec.Message, 0, min(limit, 64))
		c := bk.Cursor()
		var k, v []byte
		if afterID == "" {
			k, v = c.First()
		} else {
			k, v = c.Seek([]byte(afterID))
			if k != nil && string(k) == afterID {
				k, v = c.Next()
			}
		}
		for ; k != nil && len(out) < limit; k, v = c.Next() {
			var m codec.Message
			if err := codec.DecodeMessage(v, &m); err != nil {
				return fmt.Errorf("decode %s: %w", k, err)
			}
			// m aliases bbolt's memory, valid only inside this transaction.
			out = append(out, m.Clone())
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("storage: bolt history of %q: %w", topic, err)
	}
	return out, nil
}

// Oldest returns the smallest stored ID of topic.
func (b *Bolt) Oldest(ctx context.Context, topic string) (string, bool, error) {
	if err := ctx.Err(); err != nil {
		return "", false, err
	}
	var id string
	err := b.db.View(func(tx *bbolt.Tx) error {
		if bk := tx.Bucket([]byte(topic)); bk != nil {
			if k, _ := bk.Cursor().First(); k != nil {
				id = string(k)
			}
		}
		return nil
	})
	if err != nil {
		return "", false, fmt.Errorf("storage: bolt oldest of %q: %w", topic, err)
	}
	return id, id != "", nil
}

// Ping reports whether the file is open.
func (b *Bolt) Ping(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := b.db.View(func(*bbolt.Tx) error { return nil }); err != nil {
		return fmt.Errorf("storage: bolt ping: %w", err)
	}
	return nil
}

// Close waits for running transactions and closes the file. Closing a
// closed Bolt is a no-op.
func (b *Bolt) Close() error {
	if err := b.db.Close(); err != nil {
		return fmt.Errorf("storage: bolt close: %w", err)
	}
	b.log.Info("store closed")
	return nil
}

// messageID is m's ID for error messages, tolerating nil.
func messageID(m *codec.Message) string {
	if m == nil {
		return "<nil>"
	}
	return m.ID
}
