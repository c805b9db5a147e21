package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// httpc is the tests' REST client. Its keep-alive connections to the
// balancer each stay on the node they were balanced to. Connections to a
// node's own REST port start with a PROXY protocol header, as the
// balancer's do: the nodes run with --proxy-protocol and refuse
// connections without one.
var httpc = &http.Client{
	Timeout:   15 * time.Second,
	Transport: &http.Transport{DialContext: dialREST, MaxIdleConnsPerHost: 8},
}

// proxied holds the host:port addresses that want a PROXY header.
var proxied sync.Map

// dialREST connects to addr and, if it is a node's, sends a PROXY v1
// header naming the connection's own ends.
func dialREST(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	if _, ok := proxied.Load(addr); !ok {
		return c, nil
	}
	src, dst := c.LocalAddr().(*net.TCPAddr), c.RemoteAddr().(*net.TCPAddr)
	if _, err := fmt.Fprintf(c, "PROXY TCP4 %s %s %d %d\r\n", src.IP, dst.IP, src.Port, dst.Port); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// do sends a request and returns the status and body.
func do(method, u, contentType string, body []byte) (int, []byte, error) {
	req, err := http.NewRequest(method, u, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := httpc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// get GETs u and wants 200.
func get(u string) ([]byte, error) {
	status, b, err := do(http.MethodGet, u, "", nil)
	if err != nil {
		return nil, err
	}
	if status != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %d %s", u, status, b)
	}
	return b, nil
}

// getJSON GETs u, wants 200 and decodes the body into out.
func getJSON(u string, out any) error {
	b, err := get(u)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("GET %s: %w in %s", u, err, b)
	}
	return nil
}

// wantStatus GETs u and returns an error unless it answers status.
func wantStatus(u string, status int) error {
	got, b, err := do(http.MethodGet, u, "", nil)
	if err != nil {
		return err
	}
	if got != status {
		return fmt.Errorf("GET %s: %d %s", u, got, b)
	}
	return nil
}

// queueStats is GET /v1/queue.
type queueStats struct {
	Depth      int64 `json:"depth"`
	Processing int64 `json:"processing"`
	Dead       int64 `json:"dead"`
}

func (n *node) queue() (queueStats, error) {
	var q queueStats
	err := getJSON(n.httpURL("/v1/queue"), &q)
	return q, err
}

// subscribers returns the node's local subscriber count of topic
// (GET /v1/topics).
func (n *node) subscribers(topic string) (int, error) {
	var v struct {
		Topics []struct {
			Topic       string `json:"topic"`
			Subscribers int    `json:"subscribers"`
		} `json:"topics"`
	}
	if err := getJSON(n.httpURL("/v1/topics"), &v); err != nil {
		return 0, err
	}
	for _, t := range v.Topics {
		if t.Topic == topic {
			return t.Subscribers, nil
		}
	}
	return 0, nil
}

// histMsg is a message as the history API returns it.
type histMsg struct {
	Op    string          `json:"op"`
	Topic string          `json:"topic"`
	ID    string          `json:"id"`
	TS    int64           `json:"ts"`
	Data  json.RawMessage `json:"data"`
}

// history reads every stored message of topic from base (a node or the
// balancer), page by page, following next.
func history(base, topic string) ([]histMsg, error) {
	var all []histMsg
	after := ""
	for pages := 0; ; pages++ {
		if pages > 1000 {
			return nil, fmt.Errorf("history of %s: more than 1000 pages", topic)
		}
		u := base + "/v1/topics/" + topic + "/messages?limit=1000"
		if after != "" {
			u += "&after=" + url.QueryEscape(after)
		}
		var page struct {
			Messages []histMsg `json:"messages"`
			Next     *string   `json:"next"`
		}
		if err := getJSON(u, &page); err != nil {
			return nil, err
		}
		all = append(all, page.Messages...)
		if page.Next == nil {
			return all, nil
		}
		if *page.Next <= after {
			return nil, fmt.Errorf("history of %s: next %q does not advance past %q", topic, *page.Next, after)
		}
		after = *page.Next
	}
}

// couchDoc is a stored message read from CouchDB itself.
type couchDoc struct {
	DocID string          `json:"_id"`
	Topic string          `json:"topic"`
	ID    string          `json:"id"`
	Data  json.RawMessage `json:"data"`
}

// couchDocs returns every message document of the database (design
// documents left out).
func couchDocs(dbURL string) ([]couchDoc, error) {
	var v struct {
		Rows []struct {
			ID  string   `json:"id"`
			Doc couchDoc `json:"doc"`
		} `json:"rows"`
	}
	if err := getJSON(dbURL+"/_all_docs?include_docs=true", &v); err != nil {
		return nil, err
	}
	docs := make([]couchDoc, 0, len(v.Rows))
	for _, r := range v.Rows {
		if strings.HasPrefix(r.ID, "_design/") {
			continue
		}
		docs = append(docs, r.Doc)
	}
	return docs, nil
}

// couchDeleteDB removes a test's database; errors are ignored (the server
// may be gone already).
func couchDeleteDB(dbURL string) {
	_, _, _ = do(http.MethodDelete, dbURL, "", nil)
}
