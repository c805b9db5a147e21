package codec

// Kind says how a message's Data is to be read and which WebSocket frame type
// raw-mode subscribers receive it with.
type Kind uint8

const (
	// KindJSON is a JSON value published through /ws or REST with
	// application/json. Raw-mode subscribers receive it as a text frame.
	KindJSON Kind = iota
	// KindText is UTF-8 text published in raw mode with a text frame.
	// /ws subscribers receive it as a JSON string.
	KindText
	// KindBinary is opaque bytes (raw-mode binary frame or a non-JSON REST
	// body). /ws subscribers receive it base64-encoded with "enc":"base64".
	KindBinary
)

// Message is one published chat message. It is created once when it enters a
// node (WebSocket or REST), given its ID there, and keeps that ID through
// pub/sub, the queue and storage.
//
// A Message handed across a package boundary is read-only for the receiver:
// it may be shared by several goroutines (pub/sub delivery, the queue
// producer, the loops).
type Message struct {
	// ID is the message's unique, time-sortable id (see IDLen).
	ID string
	// Topic is the topic (channel) the message was published to.
	Topic string
	// TS is the publish time in Unix milliseconds, taken with the ID.
	TS int64
	// Kind tells how Data is encoded.
	Kind Kind
	// Key is the publisher's idempotency key, empty when none was given.
	Key string
	// From is the authenticated sender, empty for anonymous publishers.
	From string
	// Data is the payload: raw JSON for KindJSON, bytes otherwise.
	Data []byte
}
