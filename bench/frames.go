package main

import (
	"errors"

	"github.com/gobwas/ws"

	"github.com/chatgg/chatgg/codec"
)

// maxServerFrameBytes bounds one frame, and one reassembled message, from
// the server: far above anything a run sends (--size is at most 64 KiB; a
// /ws msg object adds its envelope), low enough to keep the read buffer of a
// loop small.
const maxServerFrameBytes = 1 << 20

// Errors of the server's side of the protocol. Each fails its connection.
var (
	errMaskedFrame    = errors.New("bench: server sent a masked frame")
	errReservedBits   = errors.New("bench: server set reserved bits")
	errBadOpcode      = errors.New("bench: server sent a reserved opcode")
	errBadControl     = errors.New("bench: server sent a fragmented or long control frame")
	errBadContinue    = errors.New("bench: server broke fragmentation order")
	errFrameTooLarge  = errors.New("bench: server frame over 1 MiB")
	errShortReadSpace = errors.New("bench: read buffer smaller than a frame")
)

// frameHandler receives what a frameReader decodes: a whole data message
// (text or binary, fragments joined) or a control frame. payload is valid
// until onFrame returns.
type frameHandler interface {
	onFrame(op ws.OpCode, payload []byte)
}

// frameReader parses the unmasked frames a server sends (RFC 6455 §5)
// incrementally: reads may end at any byte. A loop reads into its own
// buffer behind the connection's unfinished tail (prepare), then consume
// hands each whole frame, in place, to the handler and keeps the new
// unfinished tail, copied: usually a few bytes, at most one frame.
//
// A frameReader belongs to one connection; loop goroutine only.
type frameReader struct {
	tail   []byte    // the start of a frame that has not all arrived
	frag   []byte    // a fragmented message in progress
	fragOp ws.OpCode // its opcode, 0 when none is in progress
}

// prepare copies the unfinished tail to the front of buf and returns its
// length: new bytes go to buf[n:], and consume gets buf[:n+read].
func (r *frameReader) prepare(buf []byte) int {
	if len(buf)-len(r.tail) < 4096 {
		// Cannot happen with a loop's buffer (see maxServerFrameBytes),
		// but a short buffer must not silently drop bytes.
		panic(errShortReadSpace)
	}
	return copy(buf, r.tail)
}

// consume decodes every whole frame at the start of b, calls h for each, and
// keeps what is left as the tail. b must start with the tail prepare copied.
func (r *frameReader) consume(b []byte, h frameHandler) error {
	for {
		hdr, hn, err := codec.ParseHeader(b)
		if err != nil {
			return err
		}
		if hn == 0 {
			break
		}
		switch {
		case hdr.Masked:
			return errMaskedFrame
		case hdr.Rsv != 0:
			return errReservedBits
		case hdr.Length > maxServerFrameBytes:
			return errFrameTooLarge
		}
		end := hn + int(hdr.Length)
		if len(b) < end {
			break
		}
		p := b[hn:end]
		b = b[end:]
		op := hdr.OpCode
		switch {
		case op.IsControl():
			if op > ws.OpPong {
				return errBadOpcode
			}
			if !hdr.Fin || len(p) > ws.MaxControlFramePayloadSize {
				return errBadControl
			}
			h.onFrame(op, p)
		case op == ws.OpContinuation:
			if r.fragOp == 0 {
				return errBadContinue
			}
			if len(r.frag)+len(p) > maxServerFrameBytes {
				return errFrameTooLarge
			}
			r.frag = append(r.frag, p...)
			if hdr.Fin {
				op, r.fragOp = r.fragOp, 0
				h.onFrame(op, r.frag)
				r.frag = r.frag[:0]
			}
		case op == ws.OpText || op == ws.OpBinary:
			if r.fragOp != 0 {
				return errBadContinue
			}
			if hdr.Fin {
				h.onFrame(op, p)
			} else {
				r.fragOp = op
				r.frag = append(r.frag[:0], p...)
			}
		default:
			return errBadOpcode
		}
	}
	r.tail = append(r.tail[:0], b...)
	return nil
}

// appendMasked appends a client frame (always masked, RFC 6455 §5.3)
// carrying payload, masked with key.
func appendMasked(dst []byte, op ws.OpCode, payload []byte, key [4]byte) []byte {
	dst = codec.AppendHeader(dst, ws.Header{Fin: true, OpCode: op, Masked: true, Mask: key, Length: int64(len(payload))})
	start := len(dst)
	dst = append(dst, payload...)
	ws.Cipher(dst[start:], key, 0)
	return dst
}

// growFrame appends the header of a masked frame of n payload bytes and
// room for them; the caller fills dst[len-n:] and then masks it with
// ws.Cipher. It spares a copy when the payload is built in place.
func growFrame(dst []byte, op ws.OpCode, n int, key [4]byte) []byte {
	dst = codec.AppendHeader(dst, ws.Header{Fin: true, OpCode: op, Masked: true, Mask: key, Length: int64(n)})
	if cap(dst)-len(dst) < n {
		dst = append(dst, make([]byte, n)...)
		return dst
	}
	return dst[:len(dst)+n]
}
