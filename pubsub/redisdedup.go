package pubsub

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"
)

// RedisDedupConfig configures a RedisDedup.
type RedisDedupConfig struct {
	// Client, when set, is used instead of dialling URL; Close leaves it
	// open. Typically (*Redis).Client(), to share the bus's connections.
	Client rueidis.Client
	// URL, SentinelMaster and SentinelAddrs locate Redis as in
	// RedisConfig. Ignored when Client is set.
	URL            string
	SentinelMaster string
	SentinelAddrs  []string
	// Prefix starts every key, which is
	// <Prefix>dedup:{<topic>}<key>. Default DefaultChannelPrefix.
	Prefix string
	// Window is how long a key is remembered. Default DefaultDedupWindow.
	Window time.Duration
}

// RedisDedup is the idempotency-key window shared by all nodes, one Redis
// key per claim that expires with the window. Safe for concurrent use.
//
// Keys are <prefix>dedup:{<topic>}<key>: topics may contain ':' but never
// '}' (see codec.ValidTopic), so no topic and key pair collides with
// another, and in a Redis Cluster a topic's keys would share a slot.
type RedisDedup struct {
	client   rueidis.Client
	own      bool
	prefix   string
	windowMs int64
	// legacy switches Claim to a Lua script once Redis rejects SET with
	// both NX and GET (Redis < 7.0).
	legacy atomic.Bool
	closed atomic.Bool
}

// claimScript is Claim for Redis < 7.0: SET NX GET as one atomic script.
// Returning false gives a nil reply, as SET NX GET does for a fresh key.
var claimScript = rueidis.NewLuaScript(`
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
`)

// commitScript replaces a claim's pending value with the final one,
// keeping its expiry, if the claim still holds the pending value.
var commitScript = rueidis.NewLuaScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
end
return 0
`)

// releaseScript deletes a claim only if it is still held by the given id.
var releaseScript = rueidis.NewLuaScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
	return redis.call('DEL', KEYS[1])
end
return 0
`)

// NewRedisDedup returns a RedisDedup. With cfg.URL it connects first and
// fails if Redis is unreachable.
func NewRedisDedup(cfg RedisDedupConfig) (*RedisDedup, error) {
	client, own, err := redisClient(cfg.Client, cfg.URL, cfg.SentinelMaster, cfg.SentinelAddrs)
	if err != nil {
		return nil, err
	}
	d := &RedisDedup{client: client, own: own, prefix: cfg.Prefix}
	if d.prefix == "" {
		d.prefix = DefaultChannelPrefix
	}
	window := cfg.Window
	if window <= 0 {
		window = DefaultDedupWindow
	}
	// PX takes whole milliseconds; a sub-millisecond window would be 0,
	// which Redis rejects.
	d.windowMs = max(1, window.Milliseconds())
	return d, nil
}

func (d *RedisDedup) key(topic, key string) string {
	var b strings.Builder
	b.Grow(len(d.prefix) + len("dedup:{}") + len(topic) + len(key))
	b.WriteString(d.prefix)
	b.WriteString("dedup:{")
	b.WriteString(topic)
	b.WriteByte('}')
	b.WriteString(key)
	return b.String()
}

// Claim records id as the message published on topic with idempotency key
// key, unless the key was already claimed within the window, in one round
// trip (SET key id NX GET PX window). fresh is true when the caller now owns
// the key (existingID is then ""); otherwise existingID is the id recorded by
// the first claim. On error neither holds and nothing may have been
// recorded.
func (d *RedisDedup) Claim(ctx context.Context, topic, key, id string) (existingID string, fresh bool, err error) {
	k := d.key(topic, key)
	var resp rueidis.RedisResult
	if !d.legacy.Load() {
		resp = d.client.Do(ctx, d.client.B().Set().Key(k).Value(id).Nx().Get().
			PxMilliseconds(d.windowMs).Build())
		if re, ok := rueidis.IsRedisErr(resp.Error()); ok && !re.IsNil() &&
			strings.Contains(strings.ToLower(re.Error()), "syntax") {
			d.legacy.Store(true)
		}
	}
	if d.legacy.Load() {
		resp = claimScript.Exec(ctx, d.client, []string{k},
			[]string{id, strconv.FormatInt(d.windowMs, 10)})
	}
	v, err := resp.ToString()
	if rueidis.IsRedisNil(err) {
		return "", true, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("pubsub: dedup claim: %w", err)
	}
	return v, false, nil
}

// Commit is LocalDedup.Commit on Redis, atomically.
func (d *RedisDedup) Commit(ctx context.Context, topic, key, pending, final string) (bool, error) {
	v, err := commitScript.Exec(ctx, d.client, []string{d.key(topic, key)}, []string{pending, final}).ToAny()
	if err != nil && !rueidis.IsRedisNil(err) {
		return false, fmt.Errorf("pubsub: dedup commit: %w", err)
	}
	// SET answers OK when the script swapped; it returns 0 otherwise.
	return v == "OK", nil
}

// Release forgets the claim of key on topic if it is still held by id, so a
// retry can publish after the first attempt failed. The compare and delete
// run as one Lua script, so a claim taken by someone else after this one
// expired is left alone.
func (d *RedisDedup) Release(ctx context.Context, topic, key, id string) error {
	err := releaseScript.Exec(ctx, d.client, []string{d.key(topic, key)}, []string{id}).Error()
	if err != nil {
		return fmt.Errorf("pubsub: dedup release: %w", err)
	}
	return nil
}

// Close closes the client if NewRedisDedup built it. It is idempotent.
func (d *RedisDedup) Close() error {
	if d.own && !d.closed.Swap(true) {
		d.client.Close()
	}
	return nil
}
