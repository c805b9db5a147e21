package e2e

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestHAProxyConfigNeedsBrokerAddresses checks the deployment's balancer
// file on its own: valid with the variables set, and refused, naming the
// server lines, without the broker addresses.
func TestHAProxyConfigNeedsBrokerAddresses(t *testing.T) {
	env := []string{"LB_WS_BIND=127.0.0.1:1", "LB_HTTP_BIND=127.0.0.1:2", "LB_STATS_BIND=127.0.0.1:3"}
	var brokers []string
	for i := 1; i <= 3; i++ {
		brokers = append(brokers,
			fmt.Sprintf("BROKER%d_WS=127.0.0.1:%d", i, 10+i),
			fmt.Sprintf("BROKER%d_HTTP=127.0.0.1:%d", i, 20+i))
	}
	if out, err := haproxyCheck(append(env, brokers...)); err != nil {
		t.Fatalf("haproxy -c with every variable: %v\n%s", err, out)
	}
	// The test binary's own environment must not fill in for the missing
	// variables.
	for _, kv := range brokers {
		name := kv[:strings.IndexByte(kv, '=')]
		t.Setenv(name, "")
	}
	out, err := haproxyCheck(env)
	if err == nil || !strings.Contains(string(out), "'server' expects <name> and <addr>") {
		t.Fatalf("haproxy -c without broker addresses: %v, want a refusal naming the server lines:\n%s", err, out)
	}
}

// TestClusterActsAsOneServer: clients connected through the balancer land on
// different nodes, yet every message published through any node (WebSocket
// or REST, through the balancer) reaches every subscriber exactly once and
// in its publisher's order, and every acked message is stored exactly once.
func TestClusterActsAsOneServer(t *testing.T) {
	c := startCluster(t, clusterConfig{})
	const (
		topic   = "room.e2e"
		clients = 6
		perPub  = 200
		restN   = 40
		batchN  = 100
	)
	led := newLedger()

	// Connected one after another, leastconn spreads them over the nodes.
	var subs []*wsClient
	for i := 1; i <= clients; i++ {
		cl := dialWS(t, c.lbWS, fmt.Sprintf("ws%d", i), led, 64)
		cl.subscribe(topic)
		subs = append(subs, cl)
	}
	spread, total := 0, 0
	var per []string
	for _, n := range c.nodes {
		k, err := n.subscribers(topic)
		if err != nil {
			t.Fatalf("%s: %v", n.name, err)
		}
		per = append(per, fmt.Sprintf("%s:%d", n.name, k))
		total += k
		if k > 0 {
			spread++
		}
	}
	t.Logf("subscribers per node: %s", strings.Join(per, " "))
	if total != clients || spread < 2 {
		t.Fatalf("subscribers per node %v: want %d in all, on at least 2 nodes", per, clients)
	}

	var wg sync.WaitGroup
	for _, cl := range subs {
		wg.Go(func() { cl.publishLoop(topic, perPub, 0, nil) })
	}
	rest := &restPublisher{name: "rest", base: "http://" + c.lbHTTP, led: led}
	wg.Go(func() {
		for s := 1; s <= restN; s++ {
			if st := rest.publish(topic, s); st != 202 {
				t.Errorf("REST publish %d: status %d", s, st)
			}
		}
	})
	batch := &restPublisher{name: "batch", base: "http://" + c.lbHTTP, led: led}
	wg.Go(func() {
		seqs := make([]int, batchN)
		for i := range seqs {
			seqs[i] = i + 1
		}
		if st, err := batch.publishBatch(topic, seqs); err != nil || st != 202 {
			t.Errorf("REST batch: status %d, %v", st, err)
		}
	})
	wg.Wait()
	led.waitAnswered(t, 30*time.Second)
	counts := led.counts()
	if want := clients*perPub + restN + batchN; counts[acked] != want {
		t.Fatalf("outcomes %v (refused by code %v): want all %d acked", counts, led.codes(), want)
	}

	for _, s := range subs {
		waitDelivered(t, s, led, always, 30*time.Second)
	}
	for _, s := range subs {
		checkDelivered(t, s, led, always)
	}
	stored := checkStored(t, c, "http://"+c.lbHTTP, topic, led, 60*time.Second)
	t.Logf("%d messages acked, delivered to %d subscribers on %d nodes, stored once each", stored, clients, spread)

	// Nothing is left behind in the queue.
	waitQueueEmpty(t, c, 10*time.Second)
}
