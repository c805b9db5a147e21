package codec

import (
	"math/bits"
	"sync"

	"github.com/gobwas/ws"
)

// DefaultMaxMessageBytes bounds a message when Reader.MaxMessageBytes is 0.
const DefaultMaxMessageBytes = 16 << 20

// keepBufBytes is the largest assembly buffer a Reader keeps between
// messages; larger ones go back to bigBufs so that an idle connection stays
// small.
const keepBufBytes = 4 << 10

// Size classes of bigBufs: powers of two from 8 KiB to 16 MiB.
const (
	minBigShift = 13
	maxBigShift = 24
)

// bigBufs holds assembly buffers over keepBufBytes, by size class, shared
// by every Reader: a message that spans reads or frames and is larger than
// keepBufBytes borrows one for as long as it is assembled and read, so
// large messages cost no allocation once the pool is warm.
var bigBufs [maxBigShift - minBigShift + 1]sync.Pool

// bigClass returns the size class (a shift) that holds n bytes, or -1 when
// n is over the largest class.
func bigClass(n int) int {
	shift := max(bits.Len(uint(n-1)), minBigShift)
	if shift > maxBigShift {
		return -1
	}
	return shift
}

// getBig returns a pooled empty buffer of at least n bytes (n >
// keepBufBytes), or nil when n is over the largest class (the caller then
// makes its own).
func getBig(n int) *[]byte {
	shift := bigClass(n)
	if shift < 0 {
		return nil
	}
	if p, ok := bigBufs[shift-minBigShift].Get().(*[]byte); ok {
		*p = (*p)[:0]
		return p
	}
	b := make([]byte, 0, 1<<shift)
	return &b
}

// putBig gives a buffer from getBig back to its size class.
func putBig(p *[]byte) {
	if p == nil {
		return
	}
	*p = (*p)[:0]
	bigBufs[bits.Len(uint(cap(*p)))-1-minBigShift].Put(p)
}

// Msg is one decoded WebSocket message or control frame.
type Msg struct {
	Op      ws.OpCode
	Payload []byte
}

// Reader decodes the frames a client sends (RFC 6455 §5) incrementally: the
// input may end at any byte, and each call consumes what it can. It enforces
// the protocol (masking, reserved bits and opcodes, control-frame rules,
// continuation order, UTF-8 of text and close reasons, the message size
// limit) and reassembles fragmented messages.
//
// Zero copy where it can be: a whole unfragmented frame found in the input is
// unmasked in place and returned as a slice of the input. Only a message that
// spans frames or calls is copied, once, into the Reader's own buffer.
//
// A Reader belongs to one connection and is used by one goroutine at a time.
type Reader struct {
	// MaxMessageBytes bounds the payload of one message, all fragments
	// together (default DefaultMaxMessageBytes). Larger messages fail with
	// ErrMessageTooLarge as soon as a frame header announces them.
	MaxMessageBytes int

	hdr     ws.Header
	inFrame bool      // hdr parsed, payload not yet all consumed
	msgOp   ws.OpCode // opcode of the data message in progress, 0 for none
	utf8    UTF8
	got     int64   // payload bytes of the current frame consumed so far
	buf     []byte  // the data message in progress when it spans frames or calls
	big     *[]byte // the bigBufs buffer buf is in, if any
	ctl     []byte  // a control frame's payload when it spans calls
}

// Next decodes from b. It returns the number of bytes of b it consumed and,
// when a message or control frame was completed within them, that message
// (m.Op != 0). The caller drops n bytes and, if m.Op != 0, calls Next again
// with the rest; when m.Op == 0 everything usable was consumed and the
// unconsumed tail (an incomplete frame header, at most 13 bytes) must be
// presented again with more bytes.
//
// m.Payload is valid until the next call to Next; it may alias b, which is
// unmasked in place. After an error the connection must be failed with
// CloseCode(err); the Reader is not usable any more.
func (r *Reader) Next(b []byte) (m Msg, n int, err error) {
	for {
		if !r.inFrame {
			h, hn, err := ParseHeader(b[n:])
			if err != nil {
				return Msg{}, n, err
			}
			if hn == 0 {
				return Msg{}, n, nil
			}
			if err := r.checkHeader(h); err != nil {
				return Msg{}, n, err
			}
			n += hn
			r.hdr, r.inFrame, r.got = h, true, 0
		}
		avail := b[n:]
		rest := r.hdr.Length - r.got
		take := int64(len(avail))
		if take > rest {
			take = rest
		}
		chunk := avail[:take]
		ws.Cipher(chunk, r.hdr.Mask, int(r.got))
		n += int(take)
		first := r.got == 0
		r.got += take
		done := r.got == r.hdr.Length

		if r.hdr.OpCode.IsControl() {
			if first && done {
				r.inFrame = false
				return r.control(r.hdr.OpCode, chunk, n)
			}
			if first {
				r.ctl = r.ctl[:0]
			}
			r.ctl = append(r.ctl, chunk...)
			if !done {
				return Msg{}, n, nil
			}
			r.inFrame = false
			return r.control(r.hdr.OpCode, r.ctl, n)
		}

		if r.msgOp == ws.OpText && !r.utf8.Write(chunk) {
			return Msg{}, n, ErrInvalidUTF8
		}
		if first && done && r.hdr.Fin && r.hdr.OpCode != ws.OpContinuation {
			// The whole message is one frame and all of it is in b.
			r.inFrame = false
			return r.finish(chunk, n)
		}
		r.appendBuf(chunk)
		if !done {
			return Msg{}, n, nil
		}
		r.inFrame = false
		if r.hdr.Fin {
			return r.finish(r.buf, n)
		}
	}
}

// checkHeader applies RFC 6455 §5.2-§5.5 to a new frame header and starts a
// new message for a non-continuation data frame.
func (r *Reader) checkHeader(h ws.Header) error {
	state := ws.StateServerSide
	if r.msgOp != 0 {
		state = state.Set(ws.StateFragmented)
	}
	if err := ws.CheckHeader(h, state); err != nil {
		return mapHeaderError(err)
	}
	if h.OpCode.IsControl() {
		return nil
	}
	if h.OpCode != ws.OpContinuation {
		r.msgOp = h.OpCode
		r.utf8.Reset()
		if cap(r.buf) > keepBufBytes {
			// The last message's payload was valid until this call.
			r.dropBuf()
		}
		r.buf = r.buf[:0]
	}
	max := r.MaxMessageBytes
	if max <= 0 {
		max = DefaultMaxMessageBytes
	}
	if h.Length > int64(max-len(r.buf)) {
		return ErrMessageTooLarge
	}
	return nil
}

// appendBuf appends p to the message in progress. Below keepBufBytes it
// grows the buffer as append would but never past keepBufBytes: append's
// rounding would otherwise take a message that fits (say 4000 bytes) over
// the limit, checkHeader would drop the buffer, and every such message
// would allocate again. Past keepBufBytes it borrows from bigBufs, sized
// for the whole frame when its header says more is coming.
func (r *Reader) appendBuf(p []byte) {
	n := len(r.buf) + len(p)
	if n <= cap(r.buf) {
		r.buf = append(r.buf, p...)
		return
	}
	var nb []byte
	var big *[]byte
	if n <= keepBufBytes {
		nb = make([]byte, 0, min(max(2*cap(r.buf), n, 64), keepBufBytes))
	} else {
		frameEnd := len(r.buf) + int(r.hdr.Length-r.got) + len(p) // the frame's last byte, this chunk included
		want := max(n, frameEnd, 2*cap(r.buf))
		if big = getBig(want); big != nil {
			nb = *big
		} else {
			nb = make([]byte, 0, want)
		}
	}
	nb = append(append(nb, r.buf...), p...)
	r.dropBuf()
	r.buf, r.big = nb, big
}

// dropBuf lets go of the assembly buffer, giving it back to bigBufs if it
// came from there.
func (r *Reader) dropBuf() {
	putBig(r.big)
	r.buf, r.big = nil, nil
}

func (r *Reader) finish(p []byte, n int) (Msg, int, error) {
	op := r.msgOp
	r.msgOp = 0
	if op == ws.OpText && !r.utf8.Done() {
		return Msg{}, n, ErrInvalidUTF8
	}
	return Msg{Op: op, Payload: p}, n, nil
}

func (r *Reader) control(op ws.OpCode, p []byte, n int) (Msg, int, error) {
	if op == ws.OpClose {
		if _, err := CheckClosePayload(p); err != nil {
			return Msg{}, n, err
		}
	}
	return Msg{Op: op, Payload: p}, n, nil
}

// Trim gives a large assembly buffer (over keepBufBytes) back to the pool
// shared by all Readers once no message is in progress, so a connection
// holds one only while it assembles and handles a large message. The
// payload Next returned last must not be used after Trim.
func (r *Reader) Trim() {
	if r.big != nil && r.msgOp == 0 && !r.inFrame {
		r.dropBuf()
	}
}

// Release drops the Reader's buffers, for a connection going idle or away.
func (r *Reader) Release() {
	if r.msgOp == 0 && !r.inFrame {
		r.dropBuf()
		r.ctl = nil
	}
}
