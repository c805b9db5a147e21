package storage

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatgg/chatgg/codec"
	"github.com/chatgg/chatgg/internal/testsvc"
)

func TestMain(m *testing.M) { testsvc.Main(m) }

// opener returns a new, empty store for one test; it closes the store and
// removes what it holds in t.Cleanup.
type opener func(t *testing.T) Store

// testCtx bounds each store call of a test.
func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// baseMs is the time of the first test message: ids of the same test sort
// by their index.
const baseMs = 1_750_000_000_000

// testID returns the id of the i-th test message.
func testID(i int) string {
	return string(codec.AppendID(nil, baseMs+int64(i/4), 1, uint32(i%4)))
}

// msgs returns messages i in [from, to) of topic, KindText "m<i>".
func msgs(topic string, from, to int) []*codec.Message {
	out := make([]*codec.Message, 0, to-from)
	for i := from; i < to; i++ {
		out = append(out, &codec.Message{
			ID:    testID(i),
			Topic: topic,
			TS:    baseMs + int64(i/4),
			Kind:  codec.KindText,
			Data:  fmt.Appendf(nil, "m%d", i),
		})
	}
	return out
}

func ids(ms []*codec.Message) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.ID
	}
	return out
}

func store(t *testing.T, s Store, batch []*codec.Message) {
	t.Helper()
	if err := s.Store(testCtx(t), batch); err != nil {
		t.Fatalf("Store(%d messages): %v", len(batch), err)
	}
}

func history(t *testing.T, s Store, topic, after string, limit int) []*codec.Message {
	t.Helper()
	got, err := s.History(testCtx(t), topic, after, limit)
	if err != nil {
		t.Fatalf("History(%q, %q, %d): %v", topic, after, limit, err)
	}
	return got
}

func sameIDs(t *testing.T, what string, got []*codec.Message, want []string) {
	t.Helper()
	if g := ids(got); !reflect.DeepEqual(g, want) && !(len(g) == 0 && len(want) == 0) {
		t.Errorf("%s: ids\n got %v\nwant %v", what, g, want)
	}
}

// sameMessage compares every field; JSON data semantically, because
// CouchDB-compatible servers may rewrite numbers (1.0 → 1) and escapes.
func sameMessage(t *testing.T, got, want *codec.Message) {
	t.Helper()
	if got.ID != want.ID || got.Topic != want.Topic || got.TS != want.TS || got.Kind != want.Kind ||
		got.Key != want.Key || got.From != want.From {
		t.Errorf("message %s: got %+v, want %+v", want.ID, *got, *want)
		return
	}
	if want.Kind == codec.KindJSON && !bytes.Equal(got.Data, want.Data) {
		var g, w any
		if err := json.Unmarshal(got.Data, &g); err != nil {
			t.Errorf("message %s: data %q is not JSON: %v", want.ID, got.Data, err)
			return
		}
		_ = json.Unmarshal(want.Data, &w)
		if !reflect.DeepEqual(g, w) {
			t.Errorf("message %s: JSON data %s, want %s", want.ID, got.Data, want.Data)
		}
		return
	}
	if !bytes.Equal(got.Data, want.Data) {
		t.Errorf("message %s: data %q, want %q", want.ID, got.Data, want.Data)
	}
}

// testConformance runs the behaviour both stores share.
func testConformance(t *testing.T, open opener) {
	t.Run("HistoryIsAscendingByID", func(t *testing.T) {
		t.Parallel()
		s := open(t)
		all := msgs("room", 0, 10)
		// Two batches, each out of order: order comes from the ids.
		store(t, s, []*codec.Message{all[7], all[2], all[9], all[0], all[5]})
		store(t, s, []*codec.Message{all[4], all[1], all[8], all[3], all[6]})
		got := history(t, s, "room", "", 100)
		sameIDs(t, "History", got, ids(all))
		for i := range got {
			sameMessage(t, got[i], all[i])
		}
	})

	t.Run("AfterCursorAndLimit", func(t *testing.T) {
		t.Parallel()
		s := open(t)
		all := msgs("room", 0, 12)
		// Leave out message 5 so that one cursor is an id never stored.
		stored := append(append([]*codec.Message{}, all[:5]...), all[6:]...)
		store(t, s, stored)
		storedIDs := ids(stored)
		for _, tc := range []struct {
			name  string
			after string
			limit int
			want  []string
		}{
			{"FromStart", "", 100, storedIDs},
			{"FromStartLimit1", "", 1, storedIDs[:1]},
			{"FromStartLimit3", "", 3, storedIDs[:3]},
			{"LimitEqualsCount", "", len(stored), storedIDs},
			{"LimitZero", "", 0, nil},
			{"LimitNegative", "", -1, nil},
			{"AfterFirst", all[0].ID, 100, storedIDs[1:]},
			{"AfterFirstLimit1", all[0].ID, 1, storedIDs[1:2]},
			{"AfterMiddleLimit2", all[3].ID, 2, []string{all[4].ID, all[6].ID}},
			{"AfterUnstoredID", all[5].ID, 2, []string{all[6].ID, all[7].ID}},
			{"AfterLast", all[11].ID, 10, nil},
			{"AfterBeyondLast", testID(1000), 10, nil},
			{"AfterBeforeFirst", testID(-8), 2, storedIDs[:2]},
			{"AfterSecondToLastLimit1", all[10].ID, 1, []string{all[11].ID}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				sameIDs(t, "History", history(t, s, "room", tc.after, tc.limit), tc.want)
			})
		}
	})

	t.Run("PagingVisitsEveryMessageOnce", func(t *testing.T) {
		t.Parallel()
		s := open(t)
		all := msgs("room", 0, 25)
		store(t, s, all)
		for _, page := range []int{1, 4, 25, 26} {
			var seen []string
			after := ""
			for range 30 {
				got := history(t, s, "room", after, page)
				if len(got) == 0 {
					break
				}
				seen = append(seen, ids(got)...)
				after = got[len(got)-1].ID
			}
			if !reflect.DeepEqual(seen, ids(all)) {
				t.Errorf("pages of %d: got %v, want %v", page, seen, ids(all))
			}
		}
	})

	t.Run("StoreIsIdempotent", func(t *testing.T) {
		t.Parallel()
		s := open(t)
		batch := msgs("room", 0, 8)
		for range 3 {
			store(t, s, batch)
		}
		// A message repeated within one batch is stored once too.
		store(t, s, append(msgs("room", 8, 9), msgs("room", 8, 9)...))
		got := history(t, s, "room", "", 100)
		sameIDs(t, "History", got, ids(msgs("room", 0, 9)))
	})

	t.Run("PartiallyOverlappingBatch", func(t *testing.T) {
		t.Parallel()
		s := open(t)
		store(t, s, msgs("room", 0, 6))
		// 3..5 are stored already, 6..9 are new.
		store(t, s, msgs("room", 3, 10))
		got := history(t, s, "room", "", 100)
		want := msgs("room", 0, 10)
		sameIDs(t, "History", got, ids(want))
		if len(got) == len(want) {
			for i := range got {
				sameMessage(t, got[i], want[i])
			}
		}
	})

	t.Run("KindsRoundTrip", func(t *testing.T) {
		t.Parallel()
		s := open(t)
		allBytes := make([]byte, 256)
		for i := range allBytes {
			allBytes[i] = byte(i)
		}
		big := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB
		cases := []struct {
			name string
			kind codec.Kind
			key  string
			from string
			data []byte
		}{
			{"JSONObject", codec.KindJSON, "k1", "alice", []byte(`{"text":"hi","n":1,"nested":{"a":[1,2,{"b":null}]},"t":true}`)},
			{"JSONString", codec.KindJSON, "", "", []byte(`"plain"`)},
			{"JSONNumber", codec.KindJSON, "", "", []byte(`42`)},
			{"JSONArray", codec.KindJSON, "", "", []byte(`[1,"two",false]`)},
			{"JSONNull", codec.KindJSON, "", "", []byte(`null`)},
			{"JSONUnicode", codec.KindJSON, "", "", []byte(`{"s":"héllo 世界 😀 \"q\" \\ </>"}`)},
			{"Text", codec.KindText, "idem-1", "bob", []byte("hello, world")},
			{"TextUnicode", codec.KindText, "", "", []byte("héllo 世界 😀 \"quoted\" \\ \n\t <b>")},
			{"TextEmpty", codec.KindText, "", "", nil},
			{"BinaryAllBytes", codec.KindBinary, "", "carol", allBytes},
			{"BinaryInvalidUTF8", codec.KindBinary, "", "", []byte{0xff, 0xfe, 0x00, 0xc3}},
			{"BinaryEmpty", codec.KindBinary, "", "", nil},
			{"Binary64KiB", codec.KindBinary, "", "", big},
		}
		var batch []*codec.Message
		for i, tc := range cases {
			batch = append(batch, &codec.Message{
				ID: testID(i), Topic: "kinds", TS: baseMs + int64(i), Kind: tc.kind,
				Key: tc.key, From: tc.from, Data: tc.data,
			})
		}
		store(t, s, batch)
		got := history(t, s, "kinds", "", 100)
		if len(got) != len(batch) {
			t.Fatalf("History returned %d messages, want %d", len(got), len(batch))
		}
		for i, tc := range cases {
			t.Run(tc.name, func(t *testing.T) { sameMessage(t, got[i], batch[i]) })
		}
	})

	t.Run("TopicsAreIsolated", func(t *testing.T) {
		t.Parallel()
		s := open(t)
		// Interleaved in one batch. Topics that are prefixes of others,
		// with every separator byte a topic may hold after the prefix, and
		// one starting with "_" (reserved at the start of a CouchDB _id).
		var batch []*codec.Message
		want := map[string][]string{}
		topics := []string{"room", "room2", "a/b", "ro", "a", "a-b", "a.b", "a:b", "a@b", "a_b", "A", "_sys"}
		for i := range 3 * len(topics) {
			topic := topics[i%len(topics)]
			m := msgs(topic, i, i+1)[0]
			batch = append(batch, m)
			want[topic] = append(want[topic], m.ID)
		}
		store(t, s, batch)
		for _, topic := range topics {
			sameIDs(t, "History "+topic, history(t, s, topic, "", 100), want[topic])
			id, ok, err := s.Oldest(testCtx(t), topic)
			if err != nil || !ok || id != want[topic][0] {
				t.Errorf("Oldest(%q) = %q, %v, %v; want %q", topic, id, ok, err, want[topic][0])
			}
		}
		sameIDs(t, "History of unknown topic", history(t, s, "nobody", "", 100), nil)
	})

	t.Run("Oldest", func(t *testing.T) {
		t.Parallel()
		s := open(t)
		ctx := testCtx(t)
		if id, ok, err := s.Oldest(ctx, "room"); err != nil || ok || id != "" {
			t.Fatalf("Oldest of empty topic = %q, %v, %v; want \"\", false, nil", id, ok, err)
		}
		all := msgs("room", 0, 6)
		store(t, s, all[3:])
		store(t, s, all[1:2])
		if id, ok, err := s.Oldest(ctx, "room"); err != nil || !ok || id != all[1].ID {
			t.Fatalf("Oldest = %q, %v, %v; want %q, true, nil", id, ok, err, all[1].ID)
		}
	})

	t.Run("BadMessagesAreReportedAndOthersStored", func(t *testing.T) {
		t.Parallel()
		s := open(t)
		good := msgs("room", 0, 3)
		noID := &codec.Message{Topic: "room", Kind: codec.KindText, Data: []byte("x")}
		noTopic := &codec.Message{ID: testID(50), Kind: codec.KindText}
		badKind := &codec.Message{ID: testID(51), Topic: "room", Kind: 9}
		batch := []*codec.Message{good[0], noID, good[1], noTopic, badKind, good[2]}
		err := s.Store(testCtx(t), batch)
		if !errors.Is(err, ErrBadMessage) {
			t.Fatalf("Store = %v, want ErrBadMessage", err)
		}
		if !strings.Contains(err.Error(), testID(50)) {
			t.Errorf("error %q does not name the message %s", err, testID(50))
		}
		sameIDs(t, "History", history(t, s, "room", "", 100), ids(good))
	})

	t.Run("EmptyBatch", func(t *testing.T) {
		t.Parallel()
		s := open(t)
		if err := s.Store(testCtx(t), nil); err != nil {
			t.Fatalf("Store(nil) = %v", err)
		}
	})

	t.Run("Ping", func(t *testing.T) {
		t.Parallel()
		s := open(t)
		if err := s.Ping(testCtx(t)); err != nil {
			t.Fatalf("Ping = %v", err)
		}
	})

	t.Run("ConcurrentStoresStoreEachMessageOnce", func(t *testing.T) {
		t.Parallel()
		s := open(t)
		const writers, perWriter = 6, 40
		var wg sync.WaitGroup
		errs := make(chan error, writers*2)
		for w := range writers {
			wg.Go(func() {
				// Each writer overlaps its neighbour by half, as retried
				// batches of two workers would.
				from := w * perWriter / 2
				for _, b := range [][]*codec.Message{
					msgs("room", from, from+perWriter/2),
					msgs("room", from, from+perWriter),
				} {
					if err := s.Store(testCtx(t), b); err != nil {
						errs <- err
					}
				}
			})
			wg.Go(func() {
				if _, err := s.History(testCtx(t), "room", "", 50); err != nil {
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		n := (writers-1)*perWriter/2 + perWriter
		sameIDs(t, "History", history(t, s, "room", "", 1000), ids(msgs("room", 0, n)))
	})
}
