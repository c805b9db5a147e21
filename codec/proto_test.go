package codec

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"
)

// describe renders the fields of r that are present, for comparing in
// tables, and checks that the Has flags agree with the slices.
func describe(t testing.TB, r *Request) string {
	t.Helper()
	if r.HasRef != (r.Ref != nil) || r.HasKey != (r.Key != nil) || r.HasAfter != (r.After != nil) {
		t.Errorf("Has flags disagree with fields: %+v", r)
	}
	if r.Op != OpUnknown && r.OpName == nil {
		t.Errorf("Op %v without OpName", r.Op)
	}
	var parts []string
	if r.OpName != nil {
		parts = append(parts, fmt.Sprintf("op=%v", r.Op))
		if r.Op == OpUnknown {
			parts = append(parts, fmt.Sprintf("opname=%q", r.OpName))
		}
	}
	if r.Topic != nil {
		parts = append(parts, fmt.Sprintf("topic=%q", r.Topic))
	}
	if r.HasRef {
		parts = append(parts, fmt.Sprintf("ref=%q", r.Ref))
	}
	if r.HasKey {
		parts = append(parts, fmt.Sprintf("key=%q", r.Key))
	}
	if r.Data != nil {
		parts = append(parts, "data="+string(r.Data))
	}
	if r.HasAfter {
		parts = append(parts, fmt.Sprintf("after=%q", r.After))
	}
	if r.Stored {
		parts = append(parts, "stored")
	}
	if r.Token != nil {
		parts = append(parts, fmt.Sprintf("token=%q", r.Token))
	}
	return strings.Join(parts, " ")
}

type requestTest struct {
	name string
	in   string
	err  error
	want string // describe of the result; checked unless err is ErrBadJSON or ErrNotObject
}

var requestTests = []requestTest{
	// Each op.
	{"sub", `{"op":"sub","topic":"room.1"}`, nil, `op=sub topic="room.1"`},
	{"sub after", `{"op":"sub","topic":"room.1","after":"0193790f6d7b000700002a","ref":"s1"}`, nil, `op=sub topic="room.1" ref="s1" after="0193790f6d7b000700002a"`},
	{"unsub", `{"op":"unsub","topic":"a/b"}`, nil, `op=unsub topic="a/b"`},
	{"pub", `{"op":"pub","topic":"t","data":{"text":"hi"}}`, nil, `op=pub topic="t" data={"text":"hi"}`},
	{"pub all fields", `{"op":"pub","topic":"t","ref":"r1","key":"k1","stored":true,"data":[1,2]}`, nil, `op=pub topic="t" ref="r1" key="k1" data=[1,2] stored`},
	{"pub stored false", `{"op":"pub","topic":"t","stored":false,"data":1}`, nil, `op=pub topic="t" data=1`},
	{"auth", `{"op":"auth","token":"abc.def"}`, nil, `op=auth token="abc.def"`},
	{"auth empty token", `{"op":"auth","token":""}`, nil, `op=auth token=""`},

	// Every kind of data value, kept exactly as sent.
	{"data string", `{"op":"pub","topic":"t","data":"a\"b\u00e9"}`, nil, `op=pub topic="t" data="a\"b\u00e9"`},
	{"data number", `{"op":"pub","topic":"t","data":-12.5e+3}`, nil, `op=pub topic="t" data=-12.5e+3`},
	{"data zero", `{"op":"pub","topic":"t","data":0}`, nil, `op=pub topic="t" data=0`},
	{"data true", `{"op":"pub","topic":"t","data":true}`, nil, `op=pub topic="t" data=true`},
	{"data false", `{"op":"pub","topic":"t","data":false}`, nil, `op=pub topic="t" data=false`},
	{"data null", `{"op":"pub","topic":"t","data":null}`, nil, `op=pub topic="t" data=null`},
	{"data empty object", `{"op":"pub","topic":"t","data":{}}`, nil, `op=pub topic="t" data={}`},
	{"data empty array", `{"op":"pub","topic":"t","data":[ ]}`, nil, `op=pub topic="t" data=[ ]`},
	{"data nested", `{"op":"pub","topic":"t","data":{"a":[1,{"b":[[],{}]},"x"],"c":{"d":null}}}`, nil, `op=pub topic="t" data={"a":[1,{"b":[[],{}]},"x"],"c":{"d":null}}`},
	{"data inner whitespace kept", "{\"op\":\"pub\",\"topic\":\"t\",\"data\": { \"a\" :\t[ 1 , 2 ] } }", nil, `op=pub topic="t" data={ "a" :` + "\t" + `[ 1 , 2 ] }`},

	// Layout.
	{"whitespace everywhere", " \t\r\n{ \"op\" : \"sub\" ,\n\"topic\"\t:\r\"t\" } \n", nil, `op=sub topic="t"`},
	{"data first", `{"data":{"x":1},"topic":"t","op":"pub"}`, nil, `op=pub topic="t" data={"x":1}`},
	{"unknown fields skipped", `{"v":2,"meta":{"a":[1,{"b":"}"}],"c":"]"},"op":"sub","n":-0.0e-0,"t":true,"f":false,"z":null,"topic":"t"}`, nil, `op=sub topic="t"`},
	{"unknown field with escapes", `{"x\"y":"\\\"\u0041","op":"sub","topic":"t"}`, nil, `op=sub topic="t"`},
	{"keys are case-sensitive", `{"OP":"pub","op":"sub","Topic":5,"topic":"t"}`, nil, `op=sub topic="t"`},

	// Duplicates: last wins.
	{"duplicate topic", `{"op":"sub","topic":"a","topic":"b"}`, nil, `op=sub topic="b"`},
	{"duplicate op", `{"op":"pub","op":"sub","topic":"t"}`, nil, `op=sub topic="t"`},
	{"wrong type then right type", `{"op":"sub","topic":5,"topic":"t"}`, nil, `op=sub topic="t"`},
	{"right type then wrong type", `{"op":"sub","topic":"t","topic":5}`, ErrFieldType, `op=sub`},
	{"ref then null", `{"op":"sub","topic":"t","ref":"r","ref":null}`, nil, `op=sub topic="t"`},
	{"long key then short key", `{"op":"pub","topic":"t","data":1,"key":"` + strings.Repeat("k", 65) + `","key":"k"}`, nil, `op=pub topic="t" key="k" data=1`},
	{"data twice", `{"op":"pub","topic":"t","data":1,"data":[2]}`, nil, `op=pub topic="t" data=[2]`},

	// Null is absent.
	{"null optional fields", `{"op":"pub","topic":"t","data":1,"ref":null,"key":null,"after":null,"stored":null,"token":null}`, nil, `op=pub topic="t" data=1`},
	{"empty ref is present", `{"op":"sub","topic":"t","ref":""}`, nil, `op=sub topic="t" ref=""`},

	// Escapes in strings.
	{"escaped topic", `{"op":"sub","topic":"r\u006fom\/1"}`, nil, `op=sub topic="room/1"`},
	{"escaped op", `{"op":"\u0073ub","topic":"t"}`, nil, `op=sub topic="t"`},
	{"escaped member name", `{"\u006fp":"sub","to\u0070ic":"t"}`, nil, `op=sub topic="t"`},
	{"ref escapes", `{"op":"sub","topic":"t","ref":"a\"b\\c\/d\be\ff\ng\rh\ti"}`, nil, `op=sub topic="t" ref="a\"b\\c/d\be\ff\ng\rh\ti"`},
	{"ref surrogate pair", `{"op":"sub","topic":"t","ref":"\ud83d\ude00!"}`, nil, `op=sub topic="t" ref="😀!"`},
	{"ref upper-case hex", `{"op":"sub","topic":"t","ref":"\u00E9\u00e9"}`, nil, `op=sub topic="t" ref="éé"`},
	{"ref lone high surrogate", `{"op":"sub","topic":"t","ref":"\ud83dx"}`, nil, "op=sub topic=\"t\" ref=\"\ufffdx\""},
	{"ref lone low surrogate", `{"op":"sub","topic":"t","ref":"\ude00"}`, nil, "op=sub topic=\"t\" ref=\"\ufffd\""},
	{"ref high surrogate then non-surrogate", `{"op":"sub","topic":"t","ref":"\ud83d\u0041"}`, nil, "op=sub topic=\"t\" ref=\"\ufffdA\""},
	{"ref two high surrogates", `{"op":"sub","topic":"t","ref":"\ud83d\ud83d\ude00"}`, nil, "op=sub topic=\"t\" ref=\"\ufffd😀\""},
	{"ref raw UTF-8", `{"op":"sub","topic":"t","ref":"héllo 世界"}`, nil, `op=sub topic="t" ref="héllo 世界"`},
	{"ref escaped NUL", `{"op":"sub","topic":"t","ref":"\u0000"}`, nil, `op=sub topic="t" ref="\x00"`},
	{"several escaped fields", `{"op":"pub","topic":"\u0074","ref":"\u0072","key":"\u006b","data":"\u0064"}`, nil, `op=pub topic="t" ref="r" key="k" data="\u0064"`},

	// Key length.
	{"key 64 bytes", `{"op":"pub","topic":"t","data":1,"key":"` + strings.Repeat("k", 64) + `"}`, nil, `op=pub topic="t" key="` + strings.Repeat("k", 64) + `" data=1`},
	{"key 65 bytes", `{"op":"pub","topic":"t","data":1,"key":"` + strings.Repeat("k", 65) + `"}`, ErrKeyTooLong, `op=pub topic="t" key="` + strings.Repeat("k", 65) + `" data=1`},
	{"key 64 bytes unescaped", `{"op":"pub","topic":"t","data":1,"key":"` + strings.Repeat(`\u0041`, 64) + `"}`, nil, `op=pub topic="t" key="` + strings.Repeat("A", 64) + `" data=1`},
	{"key 65 bytes unescaped", `{"op":"pub","topic":"t","data":1,"key":"` + strings.Repeat(`\u00e9`, 33) + `"}`, ErrKeyTooLong, `op=pub topic="t" key="` + strings.Repeat("é", 33) + `" data=1`},

	// Malformed JSON.
	{"empty", ``, ErrBadJSON, ``},
	{"only whitespace", " \n\t ", ErrBadJSON, ``},
	{"open brace", `{`, ErrBadJSON, ``},
	{"unterminated", `{"op":"sub"`, ErrBadJSON, ``},
	{"unterminated string", `{"op":"sub`, ErrBadJSON, ``},
	{"trailing comma", `{"op":"sub","topic":"t",}`, ErrBadJSON, ``},
	{"leading comma", `{,"op":"sub"}`, ErrBadJSON, ``},
	{"missing colon", `{"op" "sub"}`, ErrBadJSON, ``},
	{"missing value", `{"op":}`, ErrBadJSON, ``},
	{"missing comma", `{"op":"sub" "topic":"t"}`, ErrBadJSON, ``},
	{"unquoted name", `{op:"sub"}`, ErrBadJSON, ``},
	{"single quotes", `{"op":'sub'}`, ErrBadJSON, ``},
	{"two objects", `{"op":"sub","topic":"t"}{}`, ErrBadJSON, ``},
	{"trailing garbage", `{"op":"sub","topic":"t"} x`, ErrBadJSON, ``},
	{"raw newline in string", "{\"op\":\"sub\",\"topic\":\"t\",\"ref\":\"a\nb\"}", ErrBadJSON, ``},
	{"raw tab in string", "{\"op\":\"sub\",\"topic\":\"t\",\"x\":\"a\tb\"}", ErrBadJSON, ``},
	{"raw NUL in data string", "{\"op\":\"pub\",\"topic\":\"t\",\"data\":\"\x00\"}", ErrBadJSON, ``},
	{"raw control in name", "{\"o\x01p\":\"sub\"}", ErrBadJSON, ``},
	{"bad escape", `{"op":"sub","topic":"t","ref":"\x41"}`, ErrBadJSON, ``},
	{"escaped single quote", `{"op":"sub","topic":"t","ref":"\'"}`, ErrBadJSON, ``},
	{"short unicode escape", `{"op":"sub","topic":"t","ref":"\u12"}`, ErrBadJSON, ``},
	{"non-hex unicode escape", `{"op":"sub","topic":"t","ref":"\u12g4"}`, ErrBadJSON, ``},
	{"backslash at end", `{"op":"sub","topic":"t","ref":"\`, ErrBadJSON, ``},
	{"leading zero", `{"op":"pub","topic":"t","data":01}`, ErrBadJSON, ``},
	{"lone minus", `{"op":"pub","topic":"t","data":-}`, ErrBadJSON, ``},
	{"plus sign", `{"op":"pub","topic":"t","data":+1}`, ErrBadJSON, ``},
	{"leading dot", `{"op":"pub","topic":"t","data":.5}`, ErrBadJSON, ``},
	{"trailing dot", `{"op":"pub","topic":"t","data":1.}`, ErrBadJSON, ``},
	{"empty exponent", `{"op":"pub","topic":"t","data":1e}`, ErrBadJSON, ``},
	{"signed empty exponent", `{"op":"pub","topic":"t","data":1e+}`, ErrBadJSON, ``},
	{"hex number", `{"op":"pub","topic":"t","data":0x1}`, ErrBadJSON, ``},
	{"NaN", `{"op":"pub","topic":"t","data":NaN}`, ErrBadJSON, ``},
	{"Infinity", `{"op":"pub","topic":"t","data":-Infinity}`, ErrBadJSON, ``},
	{"truncated true", `{"op":"pub","topic":"t","data":tru}`, ErrBadJSON, ``},
	{"True", `{"op":"pub","topic":"t","data":True}`, ErrBadJSON, ``},
	{"nul literal", `{"op":"pub","topic":"t","data":nul}`, ErrBadJSON, ``},
	{"array trailing comma", `{"op":"pub","topic":"t","data":[1,]}`, ErrBadJSON, ``},
	{"array missing comma", `{"op":"pub","topic":"t","data":[1 2]}`, ErrBadJSON, ``},
	{"array unclosed", `{"op":"pub","topic":"t","data":[1,2}`, ErrBadJSON, ``},
	{"object member without value", `{"op":"pub","topic":"t","data":{"b"}}`, ErrBadJSON, ``},
	{"object trailing comma", `{"op":"pub","topic":"t","data":{"b":1,}}`, ErrBadJSON, ``},
	{"object non-string name", `{"op":"pub","topic":"t","data":{1:2}}`, ErrBadJSON, ``},
	{"mismatched brackets", `{"op":"pub","topic":"t","data":[}]}`, ErrBadJSON, ``},
	{"deep mismatch", `{"op":"pub","topic":"t","data":[[{"a":[]]]}`, ErrBadJSON, ``},
	{"comment", `{"op":"sub","topic":"t"} // hi`, ErrBadJSON, ``},
	{"non-breaking space", "{\"op\":\"sub\",\u00a0\"topic\":\"t\"}", ErrBadJSON, ``},
	{"form feed is not whitespace", "{\"op\":\"sub\",\f\"topic\":\"t\"}", ErrBadJSON, ``},
	{"bad JSON wins over type error", `{"op":5,"topic":"t",}`, ErrBadJSON, ``},
	{"bad JSON in unknown field", `{"op":"sub","topic":"t","x":[1,}`, ErrBadJSON, ``},

	// Not an object.
	{"array", `[{"op":"sub"}]`, ErrNotObject, ``},
	{"string", ` "op" `, ErrNotObject, ``},
	{"number", `1`, ErrNotObject, ``},
	{"null", `null`, ErrNotObject, ``},
	{"malformed array", `[1,`, ErrBadJSON, ``},

	// Field types.
	{"numeric op", `{"op":5,"topic":"t"}`, ErrFieldType, `topic="t"`},
	{"numeric topic", `{"op":"sub","topic":5}`, ErrFieldType, `op=sub`},
	{"object topic", `{"op":"sub","topic":{"a":1}}`, ErrFieldType, `op=sub`},
	{"numeric ref", `{"op":"sub","topic":"t","ref":7}`, ErrFieldType, `op=sub topic="t"`},
	{"array key", `{"op":"pub","topic":"t","data":1,"key":[]}`, ErrFieldType, `op=pub topic="t" data=1`},
	{"numeric after", `{"op":"sub","topic":"t","after":1}`, ErrFieldType, `op=sub topic="t"`},
	{"string stored", `{"op":"pub","topic":"t","data":1,"stored":"true"}`, ErrFieldType, `op=pub topic="t" data=1`},
	{"numeric stored", `{"op":"pub","topic":"t","data":1,"stored":1}`, ErrFieldType, `op=pub topic="t" data=1`},
	{"boolean token", `{"op":"auth","token":true}`, ErrFieldType, `op=auth`},
	{"type error wins over missing op", `{"topic":1}`, ErrFieldType, ``},
	{"type error keeps ref", `{"ref":"r9","op":"sub","topic":false}`, ErrFieldType, `op=sub ref="r9"`},

	// Missing op and unknown ops.
	{"empty object", `{}`, ErrMissingOp, ``},
	{"empty object with space", `{ }`, ErrMissingOp, ``},
	{"no op", `{"topic":"t","ref":"r"}`, ErrMissingOp, `topic="t" ref="r"`},
	{"null op", `{"op":null,"topic":"t"}`, ErrMissingOp, `topic="t"`},
	{"unknown op", `{"op":"jump","ref":"r"}`, ErrUnknownOp, `op=unknown opname="jump" ref="r"`},
	{"op is case-sensitive", `{"op":"SUB","topic":"t"}`, ErrUnknownOp, `op=unknown opname="SUB" topic="t"`},
	{"empty op", `{"op":""}`, ErrUnknownOp, `op=unknown opname=""`},
	{"op prefix", `{"op":"su"}`, ErrUnknownOp, `op=unknown opname="su"`},

	// Missing or invalid required fields.
	{"sub without topic", `{"op":"sub","ref":"r"}`, ErrMissingTopic, `op=sub ref="r"`},
	{"unsub without topic", `{"op":"unsub"}`, ErrMissingTopic, `op=unsub`},
	{"pub without topic", `{"op":"pub","data":1}`, ErrMissingTopic, `op=pub data=1`},
	{"null topic", `{"op":"sub","topic":null}`, ErrMissingTopic, `op=sub`},
	{"empty topic", `{"op":"sub","topic":""}`, ErrBadTopic, `op=sub topic=""`},
	{"topic with space", `{"op":"sub","topic":"a b"}`, ErrBadTopic, `op=sub topic="a b"`},
	{"topic too long", `{"op":"sub","topic":"` + strings.Repeat("t", 129) + `"}`, ErrBadTopic, `op=sub topic="` + strings.Repeat("t", 129) + `"`},
	{"escaped bad topic", `{"op":"sub","topic":"a\nb"}`, ErrBadTopic, `op=sub topic="a\nb"`},
	{"pub without data", `{"op":"pub","topic":"t","ref":"r1"}`, ErrMissingData, `op=pub topic="t" ref="r1"`},
	{"auth without token", `{"op":"auth"}`, ErrMissingToken, `op=auth`},
	{"auth null token", `{"op":"auth","token":null}`, ErrMissingToken, `op=auth`},
}

func TestParseRequest(t *testing.T) {
	var r Request // reused across cases, as a loop does
	for _, tt := range requestTests {
		t.Run(tt.name, func(t *testing.T) {
			err := ParseRequest([]byte(tt.in), &r)
			if err != tt.err {
				t.Fatalf("ParseRequest(%s) error = %v, want %v", tt.in, err, tt.err)
			}
			if tt.err == ErrBadJSON || tt.err == ErrNotObject {
				return
			}
			if got := describe(t, &r); got != tt.want {
				t.Errorf("ParseRequest(%s) =\n\t%s\nwant\n\t%s", tt.in, got, tt.want)
			}
		})
	}
}

func TestParseRequestErrorsAreDistinctAndNamed(t *testing.T) {
	errs := []error{ErrBadJSON, ErrNotObject, ErrMissingOp, ErrUnknownOp, ErrMissingTopic, ErrBadTopic, ErrMissingData, ErrMissingToken, ErrFieldType, ErrKeyTooLong}
	seen := map[string]bool{}
	for _, err := range errs {
		if !strings.HasPrefix(err.Error(), "codec: ") || seen[err.Error()] {
			t.Errorf("error %q: want a distinct message starting with codec:", err)
		}
		seen[err.Error()] = true
	}
	if ErrBadJSON.Error() != "codec: malformed JSON" {
		t.Errorf("ErrBadJSON = %q", ErrBadJSON)
	}
}

func TestParseRequestAliasesInput(t *testing.T) {
	in := []byte(`{"op":"pub","topic":"room","ref":"R7","data":{"a":1}}`)
	var r Request
	if err := ParseRequest(in, &r); err != nil {
		t.Fatal(err)
	}
	for name, s := range map[string][]byte{"Topic": r.Topic, "Ref": r.Ref, "Data": r.Data, "OpName": r.OpName} {
		if i := bytes.Index(in, s); i < 0 || &in[i] != &s[0] {
			t.Errorf("%s does not alias the input", name)
		}
	}
}

func TestParseRequestUnescapedFieldsSurviveScratchGrowth(t *testing.T) {
	// Many escaped fields force the scratch buffer to grow while earlier
	// fields point into it; each must keep its own value.
	long := strings.Repeat(`\u0061`, 500)
	in := `{"op":"pub","topic":"\u0074","ref":"` + long + `","after":"\u0062","token":"` + long + `x","data":1}`
	var r Request
	if err := ParseRequest([]byte(in), &r); err != nil {
		t.Fatal(err)
	}
	if string(r.Topic) != "t" || string(r.Ref) != strings.Repeat("a", 500) || string(r.After) != "b" || string(r.Token) != strings.Repeat("a", 500)+"x" {
		t.Errorf("got %s", describe(t, &r))
	}
	// Appending to a field must not overwrite the next one.
	_ = append(r.Topic, 'X')
	if string(r.Ref[:1]) != "a" {
		t.Error("appending to Topic overwrote Ref")
	}
}

func TestParseRequestResetsBetweenCalls(t *testing.T) {
	var r Request
	if err := ParseRequest([]byte(`{"op":"pub","topic":"\u0074","ref":"r","key":"k","after":"a","stored":true,"data":1,"token":"x"}`), &r); err != nil {
		t.Fatal(err)
	}
	if err := ParseRequest([]byte(`{"op":"unsub","topic":"u"}`), &r); err != nil {
		t.Fatal(err)
	}
	if got, want := describe(t, &r), `op=unsub topic="u"`; got != want {
		t.Errorf("second parse = %s, want %s", got, want)
	}
	r.Reset()
	if got := describe(t, &r); got != "" || r.Op != OpUnknown {
		t.Errorf("after Reset: %q", got)
	}
}

func TestParseRequestNestingLimit(t *testing.T) {
	nest := func(n int) string { return strings.Repeat("[", n) + strings.Repeat("]", n) }
	// The frame itself is one level: data may nest 9999 more, as with
	// json.Valid on the whole frame.
	ok := `{"op":"pub","topic":"t","data":` + nest(maxJSONDepth-1) + `}`
	var r Request
	if err := ParseRequest([]byte(ok), &r); err != nil {
		t.Errorf("nesting %d: %v", maxJSONDepth, err)
	}
	tooDeep := `{"op":"pub","topic":"t","data":` + nest(maxJSONDepth) + `}`
	if err := ParseRequest([]byte(tooDeep), &r); err != ErrBadJSON {
		t.Errorf("nesting %d: %v, want ErrBadJSON", maxJSONDepth+1, err)
	}
	if !json.Valid([]byte(ok)) || json.Valid([]byte(tooDeep)) {
		t.Error("encoding/json's limit moved; update maxJSONDepth")
	}
}

func TestOpString(t *testing.T) {
	for op, want := range map[Op]string{OpUnknown: "unknown", OpSub: "sub", OpUnsub: "unsub", OpPub: "pub", OpAuth: "auth", 99: "unknown"} {
		if got := op.String(); got != want {
			t.Errorf("Op(%d).String() = %q, want %q", op, got, want)
		}
	}
}

var validJSONTests = []struct {
	in   string
	want bool
}{
	{`0`, true}, {`-0`, true}, {`-0.0e-0`, true}, {`1E+10`, true}, {`123.456e789`, true},
	{`01`, false}, {`-`, false}, {`1.`, false}, {`.1`, false}, {`1e`, false}, {`+1`, false}, {`1e+`, false}, {`--1`, false}, {`0x10`, false},
	{`""`, true}, {`"\u0000\ud800"`, true}, {`"\/\b\f\n\r\t\"\\"`, true}, {`"\a"`, false}, {"\"\x1f\"", false}, {"\"\x7f\"", true}, {`"`, false}, {`"\"`, false}, {`"\u123"`, false},
	{`true`, true}, {`false`, true}, {`null`, true}, {`nulll`, false}, {`t`, false}, {`nul`, false},
	{`[]`, true}, {`{}`, true}, {`[1,[2,{"a":[]}]]`, true}, {`[`, false}, {`]`, false}, {`[1,]`, false}, {`[,1]`, false}, {`{"a"}`, false}, {`{"a":}`, false}, {`{"a":1,}`, false}, {`{,}`, false}, {`[}`, false}, {`{]`, false}, {`[[]`, false}, {`[]]`, false},
	{``, false}, {` `, false}, {" \t\n\r1\r\n\t ", true}, {`1 2`, false}, {`[] []`, false}, {"\f1", false}, {"1\x00", false},
	{`"héllo"`, true}, {"\"\xff\"", false}, {"\"\xed\xa0\x80\"", false}, {"\"\xc0\x80\"", false},
	{strings.Repeat("[", maxJSONDepth) + strings.Repeat("]", maxJSONDepth), true},
	{strings.Repeat("[", maxJSONDepth+1) + strings.Repeat("]", maxJSONDepth+1), false},
	{strings.Repeat(`{"a":`, maxJSONDepth) + "1" + strings.Repeat("}", maxJSONDepth), true},
	{strings.Repeat(`[{"a":`, 300) + "[]" + strings.Repeat("}]", 300), true},
	{strings.Repeat(`[{"a":`, 300) + "[]" + strings.Repeat("]}", 300), false},
}

func TestValidJSON(t *testing.T) {
	for _, tt := range validJSONTests {
		name := tt.in
		if len(name) > 40 {
			name = name[:40] + "..."
		}
		t.Run(name, func(t *testing.T) {
			if got := ValidJSON([]byte(tt.in)); got != tt.want {
				t.Errorf("ValidJSON(%q) = %v, want %v", name, got, tt.want)
			}
			if std := json.Valid([]byte(tt.in)) && utf8.ValidString(tt.in); std != tt.want {
				t.Errorf("json.Valid && utf8.Valid = %v, table says %v", std, tt.want)
			}
		})
	}
}

var jsonStringTests = []struct {
	name, in, want string
}{
	{"empty", "", `""`},
	{"plain", "hello world", `"hello world"`},
	{"quote and backslash", `a"b\c`, `"a\"b\\c"`},
	{"slash kept", "a/b", `"a/b"`},
	{"common controls", "\n\r\t", `"\n\r\t"`},
	{"other controls", "\x00\x01\b\f\x1f", `"\u0000\u0001\u0008\u000c\u001f"`},
	{"DEL kept", "\x7f", "\"\x7f\""},
	{"HTML kept", "<a&b>", `"<a&b>"`},
	{"UTF-8 kept", "héllo 世界 😀 \u2028", "\"héllo 世界 😀 \u2028\""},
	{"invalid byte", "a\xffb", `"a\ufffdb"`},
	{"truncated sequence", "\xe4\xb8", `"\ufffd\ufffd"`},
	{"encoded surrogate", "\xed\xa0\x80", `"\ufffd\ufffd\ufffd"`},
	{"overlong", "\xc0\xaf", `"\ufffd\ufffd"`},
	{"above U+10FFFF", "\xf4\x90\x80\x80", `"\ufffd\ufffd\ufffd\ufffd"`},
	{"max rune", "\xf4\x8f\xbf\xbf", "\"\xf4\x8f\xbf\xbf\""},
	{"escape after multibyte", "é\"", `"é\""`},
}

func TestAppendJSONString(t *testing.T) {
	for _, tt := range jsonStringTests {
		t.Run(tt.name, func(t *testing.T) {
			got := AppendJSONString([]byte("x"), []byte(tt.in))
			if string(got) != "x"+tt.want {
				t.Fatalf("AppendJSONString(%q) = %s, want %s", tt.in, got[1:], tt.want)
			}
			if s := string(appendJSONString(nil, tt.in)); s != tt.want {
				t.Errorf("string variant = %s, want %s", s, tt.want)
			}
			var back string
			if err := json.Unmarshal(got[1:], &back); err != nil {
				t.Fatalf("output does not unmarshal: %v", err)
			}
			if utf8.ValidString(tt.in) && back != tt.in {
				t.Errorf("unmarshals to %q, want %q", back, tt.in)
			}
		})
	}
}

func TestStopMaskFindsFirstSpecialByte(t *testing.T) {
	stop := func(c byte, high bool) bool { return c < 0x20 || c == '"' || c == '\\' || high && c >= 0x80 }
	first := func(w []byte, high bool) int {
		for i, c := range w {
			if stop(c, high) {
				return i
			}
		}
		return 8
	}
	word := make([]byte, 8)
	fills := []byte{'a', 0x7f, ' ', '#', '[', ']', 0x80, 0xff, 0x00, '"', '\\', 0x1f, 0x21}
	for p := range 8 {
		for c := range 256 {
			for _, below := range fills {
				for _, above := range fills {
					for i := range word {
						word[i] = below
						if i > p {
							word[i] = above
						}
					}
					word[p] = byte(c)
					for _, high := range []bool{false, true} {
						want := first(word, high)
						if got := firstFlagged(stopMask(load64(word, 0), high)); got != want {
							t.Fatalf("first flagged of (%q, %v) = %d, want %d", word, high, got, want)
						}
						if got := firstFlagged(stopMask(load64(string(word), 0), high)); got != want {
							t.Fatalf("first flagged of (string %q, %v) = %d, want %d", word, high, got, want)
						}
					}
				}
			}
		}
	}
}

func TestStringsSplitAcrossWords(t *testing.T) {
	// Put the byte that matters at every offset relative to the 8-byte
	// words the scanners read.
	for pad := range 17 {
		p := strings.Repeat("x", pad)
		for _, tt := range []struct{ in, want string }{
			{p + `"`, p + `\"`}, {p + "\\", p + `\\`}, {p + "\n", p + `\n`}, {p + "\xff", p + `\ufffd`}, {p + "é", p + "é"},
		} {
			if got := AppendJSONString(nil, []byte(tt.in+p)); string(got) != `"`+tt.want+p+`"` {
				t.Errorf("AppendJSONString(%q) = %s", tt.in+p, got)
			}
		}
		for _, tt := range []struct {
			in string
			ok bool
		}{
			{`"` + p + `"`, true}, {`"` + p + `\n` + p + `"`, true}, {`"` + p + "\x01" + p + `"`, false}, {`"` + p + `\` + `"`, false}, {`"` + p, false}, {`"` + p + `\q"`, false},
		} {
			if got := ValidJSON([]byte(tt.in)); got != tt.ok {
				t.Errorf("ValidJSON(%q) = %v, want %v", tt.in, got, tt.ok)
			}
		}
	}
}

func TestAppendMsgJSON(t *testing.T) {
	const id = "0193790f6d7b000700002a"
	tests := []struct {
		name string
		m    Message
		want string
	}{
		{"json", Message{ID: id, Topic: "room.1", TS: 1732900000123, Kind: KindJSON, Data: []byte(`{"text":"hi"}`)},
			`{"op":"msg","topic":"room.1","id":"` + id + `","ts":1732900000123,"data":{"text":"hi"}}`},
		{"json with from", Message{ID: id, Topic: "t", TS: 5, Kind: KindJSON, From: `al"ice`, Key: "ignored", Data: []byte(`[1]`)},
			`{"op":"msg","topic":"t","id":"` + id + `","ts":5,"data":[1],"from":"al\"ice"}`},
		{"json empty data", Message{ID: id, Topic: "t", TS: 5, Kind: KindJSON},
			`{"op":"msg","topic":"t","id":"` + id + `","ts":5,"data":null}`},
		{"text", Message{ID: id, Topic: "t", TS: 5, Kind: KindText, Data: []byte("line\n\"q\" é")},
			`{"op":"msg","topic":"t","id":"` + id + `","ts":5,"data":"line\n\"q\" é"}`},
		{"empty text", Message{ID: id, Topic: "t", TS: 5, Kind: KindText},
			`{"op":"msg","topic":"t","id":"` + id + `","ts":5,"data":""}`},
		{"binary", Message{ID: id, Topic: "t", TS: 5, Kind: KindBinary, Data: []byte{0, 0xff, 0xfe, 'a'}},
			`{"op":"msg","topic":"t","id":"` + id + `","ts":5,"data":"AP/+YQ==","enc":"base64"}`},
		{"binary with from", Message{ID: id, Topic: "t", TS: 5, Kind: KindBinary, From: "bob", Data: []byte("hi")},
			`{"op":"msg","topic":"t","id":"` + id + `","ts":5,"data":"aGk=","enc":"base64","from":"bob"}`},
		{"unknown kind as binary", Message{ID: id, Topic: "t", TS: 5, Kind: 9, Data: []byte("hi")},
			`{"op":"msg","topic":"t","id":"` + id + `","ts":5,"data":"aGk=","enc":"base64"}`},
		{"negative ts", Message{ID: id, Topic: "t", TS: -1, Kind: KindJSON, Data: []byte(`1`)},
			`{"op":"msg","topic":"t","id":"` + id + `","ts":-1,"data":1}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := AppendMsgJSON([]byte("x"), &tt.m)
			if string(got) != "x"+tt.want {
				t.Fatalf("AppendMsgJSON =\n\t%s\nwant\n\t%s", got[1:], tt.want)
			}
			checkReply(t, got[1:])
			var back struct {
				Data json.RawMessage `json:"data"`
				Enc  string          `json:"enc"`
			}
			if err := json.Unmarshal(got[1:], &back); err != nil {
				t.Fatal(err)
			}
			var data []byte
			switch {
			case back.Enc == "base64":
				var s string
				_ = json.Unmarshal(back.Data, &s)
				data, _ = base64.StdEncoding.DecodeString(s)
			case tt.m.Kind == KindText:
				var s string
				_ = json.Unmarshal(back.Data, &s)
				data = []byte(s)
			default:
				data = back.Data
				if len(tt.m.Data) == 0 {
					data = nil
				}
			}
			if !bytes.Equal(data, tt.m.Data) {
				t.Errorf("data decodes to %q, want %q", data, tt.m.Data)
			}
		})
	}
}

// checkReply checks that a server reply is one valid JSON object in valid
// UTF-8.
func checkReply(t *testing.T, b []byte) {
	t.Helper()
	if !ValidJSON(b) || !json.Valid(b) || b[0] != '{' {
		t.Errorf("reply is not a valid JSON object: %s", b)
	}
}

func TestAppendReplies(t *testing.T) {
	const id = "0193790f6d7b000700002a"
	tests := []struct {
		name string
		got  []byte
		want string
	}{
		{"ack", AppendAck(nil, []byte("r1"), "", 0), `{"op":"ack","ref":"r1"}`},
		{"ack with id", AppendAck(nil, []byte("r1"), id, 1732900000123), `{"op":"ack","ref":"r1","id":"` + id + `","ts":1732900000123}`},
		{"ack empty ref", AppendAck(nil, []byte{}, "", 0), `{"op":"ack","ref":""}`},
		{"ack nil ref", AppendAck(nil, nil, id, 1), `{"op":"ack","id":"` + id + `","ts":1}`},
		{"ack escaped ref", AppendAck(nil, []byte("a\"\n"), "", 0), `{"op":"ack","ref":"a\"\n"}`},
		{"stored", AppendStored(nil, []byte("r2"), id), `{"op":"stored","ref":"r2","id":"` + id + `"}`},
		{"stored nil ref", AppendStored(nil, nil, id), `{"op":"stored","id":"` + id + `"}`},
		{"error", AppendError(nil, []byte("r3"), 400, "codec: request has no topic"), `{"op":"error","ref":"r3","code":400,"message":"codec: request has no topic"}`},
		{"error nil ref", AppendError(nil, nil, 4008, "slow"), `{"op":"error","code":4008,"message":"slow"}`},
		{"error escaped message", AppendError(nil, nil, -1, "bad \"op\": \x01\xff"), `{"op":"error","code":-1,"message":"bad \"op\": \u0001\ufffd"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if string(tt.got) != tt.want {
				t.Errorf("got\n\t%s\nwant\n\t%s", tt.got, tt.want)
			}
			checkReply(t, tt.got)
		})
	}
}

func TestAppendersAppend(t *testing.T) {
	m := &Message{ID: "i", Topic: "t", Data: []byte("1")}
	for name, f := range map[string]func([]byte) []byte{
		"AppendMsgJSON":    func(d []byte) []byte { return AppendMsgJSON(d, m) },
		"AppendAck":        func(d []byte) []byte { return AppendAck(d, []byte("r"), "i", 1) },
		"AppendStored":     func(d []byte) []byte { return AppendStored(d, []byte("r"), "i") },
		"AppendError":      func(d []byte) []byte { return AppendError(d, []byte("r"), 1, "m") },
		"AppendJSONString": func(d []byte) []byte { return AppendJSONString(d, []byte("s")) },
	} {
		alone := f(nil)
		if got := f([]byte("prefix")); string(got) != "prefix"+string(alone) {
			t.Errorf("%s does not append to dst: %q", name, got)
		}
	}
}

func FuzzParseRequest(f *testing.F) {
	for _, tt := range requestTests {
		f.Add([]byte(tt.in))
	}
	for _, tt := range validJSONTests {
		if len(tt.in) < 1000 {
			f.Add([]byte(tt.in))
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		// ValidJSON is json.Valid plus UTF-8, on any input.
		if got, want := ValidJSON(b), json.Valid(b) && utf8.Valid(b); got != want {
			t.Fatalf("ValidJSON(%q) = %v, json.Valid && utf8.Valid = %v", b, got, want)
		}

		var r Request
		err := ParseRequest(b, &r) // must not panic, whatever b is
		if !utf8.Valid(b) {
			return // outside ParseRequest's contract beyond not panicking
		}
		std := json.Valid(b)
		var obj map[string]json.RawMessage
		isObj := std && b[skipSpace(b, 0)] == '{' && json.Unmarshal(b, &obj) == nil
		switch {
		case err == ErrBadJSON:
			if std {
				t.Fatalf("ErrBadJSON for valid JSON %q", b)
			}
			return
		case err == ErrNotObject:
			if !std || isObj {
				t.Fatalf("ErrNotObject for %q (valid %v, object %v)", b, std, isObj)
			}
			return
		case !isObj:
			t.Fatalf("ParseRequest(%q) = %v, not a JSON syntax error; valid %v", b, err, std)
		}
		if err == nil && r.Data != nil && !ValidJSON(r.Data) {
			t.Fatalf("Data %q is not valid JSON", r.Data)
		}

		// Differential check against encoding/json, which also lets the
		// last of duplicate names win and unescapes them.
		if raw, ok := obj["data"]; ok != (r.Data != nil) || !bytes.Equal(raw, r.Data) {
			t.Fatalf("data = %q, encoding/json has %q (present %v)", r.Data, raw, ok)
		}
		checkString := func(name string, got []byte) {
			raw, ok := obj[name]
			if !ok || string(raw) == "null" || raw[0] != '"' {
				if got != nil {
					t.Fatalf("%s = %q, encoding/json has %s", name, got, raw)
				}
				if ok && string(raw) != "null" && err != ErrFieldType {
					t.Fatalf("%s = %s, error %v, want ErrFieldType", name, raw, err)
				}
				return
			}
			var s string
			if json.Unmarshal(raw, &s) != nil || string(got) != s || got == nil {
				t.Fatalf("%s = %q, encoding/json has %q", name, got, s)
			}
		}
		checkString("op", r.OpName)
		checkString("topic", r.Topic)
		checkString("ref", r.Ref)
		checkString("key", r.Key)
		checkString("after", r.After)
		checkString("token", r.Token)
		if stored := string(obj["stored"]); r.Stored != (stored == "true") {
			t.Fatalf("stored = %v, encoding/json has %s", r.Stored, stored)
		}
		describe(t, &r) // checks the Has flags
	})
}

func FuzzAppendJSONString(f *testing.F) {
	for _, tt := range jsonStringTests {
		f.Add([]byte(tt.in))
	}
	f.Fuzz(func(t *testing.T, s []byte) {
		out := AppendJSONString(nil, s)
		if !utf8.Valid(out) || !ValidJSON(out) {
			t.Fatalf("AppendJSONString(%q) = %q: not valid UTF-8 JSON", s, out)
		}
		if string(appendJSONString(nil, string(s))) != string(out) {
			t.Fatal("string and []byte variants differ")
		}
		var back string
		if err := json.Unmarshal(out, &back); err != nil {
			t.Fatalf("Unmarshal(%q): %v", out, err)
		}
		if utf8.Valid(s) {
			if back != string(s) {
				t.Fatalf("round trip of %q = %q", s, back)
			}
			return
		}
		// Invalid UTF-8: like encoding/json, each bad byte is U+FFFD.
		std, _ := json.Marshal(string(s))
		var want string
		_ = json.Unmarshal(std, &want)
		if back != want {
			t.Fatalf("AppendJSONString(%q) decodes to %q, encoding/json gives %q", s, back, want)
		}
	})
}

var typicalPub = []byte(`{"op":"pub","topic":"room.general","ref":"42","data":{"text":"hello, world","user":"alice","n":3}}`)

func BenchmarkParseRequest(b *testing.B) {
	for _, bc := range []struct{ name, in string }{
		{"pub", string(typicalPub)},
		{"sub", `{"op":"sub","topic":"room.general","after":"0193790f6d7b000700002a"}`},
		{"pub_escaped", `{"op":"pub","topic":"room.general","ref":"\u0034\u0032","data":{"text":"h\u00e9llo"}}`},
		{"pub_4KiB", `{"op":"pub","topic":"room.general","data":{"text":"` + strings.Repeat("x", 4096) + `"}}`},
	} {
		b.Run(bc.name, func(b *testing.B) {
			in := []byte(bc.in)
			var r Request
			b.SetBytes(int64(len(in)))
			b.ReportAllocs()
			for b.Loop() {
				if err := ParseRequest(in, &r); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkAppendMsgJSON(b *testing.B) {
	for _, size := range []int{64, 4096} {
		for _, kind := range []Kind{KindJSON, KindText, KindBinary} {
			data := bytes.Repeat([]byte("x"), size)
			if kind == KindJSON {
				data = []byte(`"` + strings.Repeat("x", size-2) + `"`)
			}
			m := &Message{ID: "0193790f6d7b000700002a", Topic: "room.general", TS: 1732900000123, Kind: kind, From: "alice", Data: data}
			b.Run(fmt.Sprintf("%s/%d", [...]string{"json", "text", "binary"}[kind], size), func(b *testing.B) {
				buf := make([]byte, 0, 2*size+256)
				b.SetBytes(int64(size))
				b.ReportAllocs()
				for b.Loop() {
					buf = AppendMsgJSON(buf[:0], m)
				}
			})
		}
	}
}

func BenchmarkValidJSON(b *testing.B) {
	in := []byte(`{"text":"hello, world","tags":["a","b",{"c":[1,2.5,-3e4,true,false,null]}],"user":{"name":"alice","id":12345}}`)
	b.SetBytes(int64(len(in)))
	b.ReportAllocs()
	for b.Loop() {
		if !ValidJSON(in) {
			b.Fatal("invalid")
		}
	}
}

func TestParseRequestErrorsAreComparable(t *testing.T) {
	// Callers switch on the sentinels; make sure none is wrapped.
	var r Request
	err := ParseRequest([]byte(`{"op":"x"}`), &r)
	if !errors.Is(err, ErrUnknownOp) || err != ErrUnknownOp {
		t.Errorf("got %v", err)
	}
}
