package pubsub

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/chatgg/chatgg/codec"
)

// Defaults of HotWindow.
const (
	DefaultHotWindowLen = 1000
	DefaultHotWindowAge = 5 * time.Minute
)

// HotWindow bounds a topic's window of recent messages: the last Len
// messages, forgotten Age after the topic's last message.
//
// The window closes the gap a reconnecting client would otherwise fall into:
// messages published but not yet stored by a worker. A client catching up
// reads the window first and storage only for older messages.
type HotWindow struct {
	Len int           // messages per topic; default DefaultHotWindowLen; < 0 disables
	Age time.Duration // default DefaultHotWindowAge
}

func (h HotWindow) withDefaults() HotWindow {
	if h.Len == 0 {
		h.Len = DefaultHotWindowLen
	}
	if h.Age <= 0 {
		h.Age = DefaultHotWindowAge
	}
	return h
}

// internalTopic reports whether topic is one of chatgg's own notices
// between nodes ('!' cannot start a client topic): they have no window.
func internalTopic(topic string) bool { return len(topic) > 0 && topic[0] == '!' }

// appendHotKey appends the Redis key of topic's window. Braces keep the
// topic apart from the rest of the key (topics cannot contain '}').
func appendHotKey(dst []byte, prefix, topic string) []byte {
	dst = append(dst, prefix...)
	dst = append(dst, "hot:{"...)
	dst = append(dst, topic...)
	return append(dst, '}')
}

// Recent returns the messages of topic's window published after the one
// with id after, in publish order. found reports whether after is in the
// window: only then is the answer known to be complete; otherwise the
// caller also reads storage. With after == "" it returns the whole window.
func (r *Redis) Recent(ctx context.Context, topic, after string) (msgs []*codec.Message, found bool, err error) {
	if r.hotLen <= 0 {
		return nil, false, nil
	}
	key := string(appendHotKey(nil, r.prefix, topic))
	vals, err := r.client.Do(ctx, r.client.B().Lrange().Key(key).Start(0).Stop(-1).Build()).AsStrSlice()
	if err != nil {
		return nil, false, fmt.Errorf("pubsub: read hot window of %q: %w", topic, err)
	}
	// Newest first: collect until after, then reverse.
	for _, v := range vals {
		m := new(codec.Message)
		if err := codec.DecodeMessage([]byte(v), m); err != nil {
			continue // not ours; never written by Publish
		}
		if after != "" && m.ID == after {
			found = true
			break
		}
		msgs = append(msgs, m)
	}
	reverse(msgs)
	return msgs, found, nil
}

func reverse(ms []*codec.Message) {
	for i, j := 0, len(ms)-1; i < j; i, j = i+1, j-1 {
		ms[i], ms[j] = ms[j], ms[i]
	}
}

// localWindows is the in-process bus's hot windows.
type localWindows struct {
	cfg HotWindow

	mu     sync.Mutex
	topics map[string]*window
	writes int
}

// window is one topic's ring of recent messages.
type window struct {
	msgs []*codec.Message // ring, oldest at start once full
	next int
	last time.Time // last write
}

func (w *localWindows) add(m *codec.Message, now time.Time) {
	if w.cfg.Len <= 0 || internalTopic(m.Topic) {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.topics == nil {
		w.topics = make(map[string]*window)
	}
	t := w.topics[m.Topic]
	if t == nil {
		t = &window{}
		w.topics[m.Topic] = t
	}
	if len(t.msgs) < w.cfg.Len {
		t.msgs = append(t.msgs, m)
	} else {
		t.msgs[t.next] = m
		t.next = (t.next + 1) % w.cfg.Len
	}
	t.last = now
	// Forget idle topics now and then, so the windows stay bounded by the
	// topics active within Age.
	if w.writes++; w.writes%1024 == 0 {
		for name, tw := range w.topics {
			if now.Sub(tw.last) > w.cfg.Age {
				delete(w.topics, name)
			}
		}
	}
}

func (w *localWindows) recent(topic, after string, now time.Time) (msgs []*codec.Message, found bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	t := w.topics[topic]
	if t == nil || now.Sub(t.last) > w.cfg.Age {
		return nil, false
	}
	n := len(t.msgs)
	for i := n - 1; i >= 0; i-- { // newest first
		m := t.msgs[(t.next+i)%n]
		if after != "" && m.ID == after {
			found = true
			break
		}
		msgs = append(msgs, m)
	}
	reverse(msgs)
	return msgs, found
}

// Recent is Redis.Recent for the in-process bus.
func (l *Local) Recent(_ context.Context, topic, after string) ([]*codec.Message, bool, error) {
	msgs, found := l.hot.recent(topic, after, time.Now())
	return msgs, found, nil
}
