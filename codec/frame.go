// Package codec owns chatgg's wire formats: WebSocket frames (RFC 6455), the
// HTTP upgrade request, message envelopes (the binary form used between
// nodes, the client JSON protocol and its outbound frames), message ids and
// topic names.
//
// codec is pure: bytes in, bytes out. It does no I/O, starts no goroutines and
// does not log, which keeps it easy to fuzz and benchmark. Encoders append to
// a caller's buffer; decoders work in place and return slices of their input.
// Connections, timeouts and fan-out belong to package loop.
package codec

import (
	"encoding/binary"
	"errors"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

// Frame-level protocol errors. Each maps to a close code through CloseCode.
var (
	ErrUnmasked          = errors.New("codec: client frame is not masked")
	ErrReservedBits      = errors.New("codec: reserved bits set without a negotiated extension")
	ErrReservedOpcode    = errors.New("codec: reserved opcode")
	ErrControlTooLong    = errors.New("codec: control frame payload over 125 bytes")
	ErrControlFragmented = errors.New("codec: fragmented control frame")
	ErrUnexpectedCont    = errors.New("codec: continuation frame without a message in progress")
	ErrExpectedCont      = errors.New("codec: new data frame while a fragmented message is in progress")
	ErrBadLength         = errors.New("codec: invalid payload length")
	ErrBadClosePayload   = errors.New("codec: invalid close frame payload")
	ErrBadCloseCode      = errors.New("codec: invalid close code")
	ErrInvalidUTF8       = errors.New("codec: invalid UTF-8 in text message")
	ErrMessageTooLarge   = errors.New("codec: message too large")
)

// Close codes chatgg sends (RFC 6455 §7.4.1, plus the private range).
const (
	CloseNormal        ws.StatusCode = 1000
	CloseGoingAway     ws.StatusCode = 1001
	CloseProtocolError ws.StatusCode = 1002
	CloseInvalidData   ws.StatusCode = 1007
	ClosePolicy        ws.StatusCode = 1008
	CloseTooLarge      ws.StatusCode = 1009
	CloseInternal      ws.StatusCode = 1011
	// CloseSlowConsumer closes a connection whose unsent bytes passed its
	// limit; the client may reconnect and catch up.
	CloseSlowConsumer ws.StatusCode = 4008
)

// CloseCode maps a decoding error to the close code the server answers
// with. It is the one place that decides it. err may wrap a sentinel.
func CloseCode(err error) ws.StatusCode {
	switch {
	case errors.Is(err, ErrInvalidUTF8):
		return CloseInvalidData
	case errors.Is(err, ErrMessageTooLarge):
		return CloseTooLarge
	default:
		return CloseProtocolError
	}
}

// mapHeaderError turns gobwas/ws's checker errors into ours.
func mapHeaderError(err error) error {
	switch err {
	case nil:
		return nil
	case ws.ErrProtocolOpCodeReserved:
		return ErrReservedOpcode
	case ws.ErrProtocolControlPayloadOverflow:
		return ErrControlTooLong
	case ws.ErrProtocolControlNotFinal:
		return ErrControlFragmented
	case ws.ErrProtocolNonZeroRsv:
		return ErrReservedBits
	case ws.ErrProtocolMaskRequired:
		return ErrUnmasked
	case ws.ErrProtocolContinuationExpected:
		return ErrExpectedCont
	case ws.ErrProtocolContinuationUnexpected:
		return ErrUnexpectedCont
	default:
		return ErrBadLength
	}
}

// ParseHeader parses the frame header at the start of b. It returns n == 0
// and no error when b does not yet hold the whole header. The header is
// returned as is; protocol checks are the Reader's.
func ParseHeader(b []byte) (h ws.Header, n int, err error) {
	if len(b) < 2 {
		return h, 0, nil
	}
	h.Fin = b[0]&0x80 != 0
	h.Rsv = (b[0] & 0x70) >> 4
	h.OpCode = ws.OpCode(b[0] & 0x0f)
	h.Masked = b[1]&0x80 != 0
	n = 2
	switch l := b[1] & 0x7f; l {
	case 126:
		if len(b) < 4 {
			return h, 0, nil
		}
		h.Length = int64(binary.BigEndian.Uint16(b[2:4]))
		n = 4
	case 127:
		if len(b) < 10 {
			return h, 0, nil
		}
		u := binary.BigEndian.Uint64(b[2:10])
		if u>>63 != 0 { // RFC 6455 §5.2: the most significant bit MUST be 0.
			return h, 0, ErrBadLength
		}
		h.Length = int64(u)
		n = 10
	default:
		h.Length = int64(l)
	}
	if h.Masked {
		if len(b) < n+4 {
			return h, 0, nil
		}
		copy(h.Mask[:], b[n:n+4])
		n += 4
	}
	return h, n, nil
}

// AppendHeader appends the wire form of h to dst.
func AppendHeader(dst []byte, h ws.Header) []byte {
	b0 := byte(h.OpCode) | h.Rsv<<4
	if h.Fin {
		b0 |= 0x80
	}
	var m byte
	if h.Masked {
		m = 0x80
	}
	switch {
	case h.Length < 126:
		dst = append(dst, b0, m|byte(h.Length))
	case h.Length <= 0xffff:
		dst = append(dst, b0, m|126)
		dst = binary.BigEndian.AppendUint16(dst, uint16(h.Length))
	default:
		dst = append(dst, b0, m|127)
		dst = binary.BigEndian.AppendUint64(dst, uint64(h.Length))
	}
	if h.Masked {
		dst = append(dst, h.Mask[:]...)
	}
	return dst
}

// AppendFrame appends one unmasked (server-to-client) frame carrying payload.
func AppendFrame(dst []byte, op ws.OpCode, fin bool, payload []byte) []byte {
	dst = AppendHeader(dst, ws.Header{Fin: fin, OpCode: op, Length: int64(len(payload))})
	return append(dst, payload...)
}

// FrameSize is the number of bytes AppendFrame writes for a payload of n bytes.
func FrameSize(n int) int {
	return ws.HeaderSize(ws.Header{Length: int64(n)}) + n
}

// AppendClose appends a close frame with code and reason. Reasons longer
// than the 123 bytes a control frame leaves for them are cut, at a rune
// boundary.
func AppendClose(dst []byte, code ws.StatusCode, reason string) []byte {
	const maxReason = ws.MaxControlFramePayloadSize - 2
	if len(reason) > maxReason {
		// Back up to the start of the rune that straddles the cut: the
		// reason must stay UTF-8 or the peer fails the connection with
		// 1007 instead of reading our close (RFC 6455 §5.5.1, §8.1).
		n := maxReason
		for i := 1; i < utf8.UTFMax && n > 0 && !utf8.RuneStart(reason[n]); i++ {
			n--
		}
		reason = reason[:n]
	}
	dst = AppendHeader(dst, ws.Header{Fin: true, OpCode: ws.OpClose, Length: int64(2 + len(reason))})
	dst = binary.BigEndian.AppendUint16(dst, uint16(code))
	return append(dst, reason...)
}

// CheckClosePayload validates a received close frame's payload (RFC 6455
// §5.5.1, §7.4) and returns its code, or 0 for an empty payload.
func CheckClosePayload(p []byte) (ws.StatusCode, error) {
	switch len(p) {
	case 0:
		return 0, nil
	case 1:
		return 0, ErrBadClosePayload
	}
	code := ws.StatusCode(binary.BigEndian.Uint16(p))
	if !validCloseCode(code) {
		return code, ErrBadCloseCode
	}
	if !ValidUTF8(p[2:]) {
		return code, ErrBadClosePayload
	}
	return code, nil
}

// validCloseCode reports whether a peer may send code: 1000-1003, 1007-1011
// or the registered and private ranges 3000-4999.
func validCloseCode(c ws.StatusCode) bool {
	switch {
	case c >= 1000 && c <= 1003, c >= 1007 && c <= 1011:
		return true
	case c >= 3000 && c <= 4999:
		return true
	}
	return false
}
