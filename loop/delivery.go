package loop

import (
	"github.com/gobwas/ws"

	"github.com/chatgg/chatgg/codec"
)

// delivery is one message on its way to local subscribers, with its frames
// encoded once for all of them. Shared by every loop: read-only.
type delivery struct {
	m    *codec.Message
	json []byte // the /ws frame: {"op":"msg",...}
	raw  []byte // the raw-mode frame: the data verbatim
}

// maxServerHeader is the largest header of an unmasked frame.
const maxServerHeader = 10

func newDelivery(m *codec.Message) *delivery {
	d := &delivery{m: m}
	op := ws.OpText
	if m.Kind == codec.KindBinary {
		op = ws.OpBinary
	}
	d.raw = codec.AppendFrame(make([]byte, 0, codec.FrameSize(len(m.Data))), op, true, m.Data)

	// Encode the JSON body after room for the largest header, then put the
	// header right in front of it: one buffer, no second copy of the body.
	buf := make([]byte, maxServerHeader, maxServerHeader+len(m.Data)+len(m.Topic)+len(m.From)+96)
	buf = codec.AppendMsgJSON(buf, m)
	body := buf[maxServerHeader:]
	var hdr [maxServerHeader]byte
	h := codec.AppendHeader(hdr[:0], ws.Header{Fin: true, OpCode: ws.OpText, Length: int64(len(body))})
	start := maxServerHeader - len(h)
	copy(buf[start:], h)
	d.json = buf[start:]
	return d
}

// frame is the frame for a connection of the given mode.
func (d *delivery) frame(mode uint8) []byte {
	if mode == modeJSON {
		return d.json
	}
	return d.raw
}
