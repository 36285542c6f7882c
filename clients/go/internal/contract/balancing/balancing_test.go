//go:build contract

// Client-side load balancing against live gateway replicas. Run it through the
// harness with several replicas, which sets GPT_GRPC_TARGETS and GPT_GRPC_METRICS_URLS:
//
//	python tests/contract/harness.py --replicas 3 --cwd clients/go -- go test -count=1 -tags contract ./internal/contract/balancing/
package balancing

import (
	"bufio"
	"context"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gpt-grpc/gpt-grpc/clients/go/gptgrpc"
	"github.com/gpt-grpc/gpt-grpc/clients/go/gptgrpcv1"
)

const (
	calls   = 30
	timeout = 10 * time.Second
)

var httpc = &http.Client{Timeout: timeout}

// served is the replica's count of successful CountTokens calls, from its Prometheus metrics.
func served(t *testing.T, url string) int {
	t.Helper()
	resp, err := httpc.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	scan := bufio.NewScanner(resp.Body)
	for scan.Scan() {
		line := scan.Text()
		if strings.HasPrefix(line, "gpt_grpc_calls_total{") && strings.Contains(line, `method="CountTokens"`) &&
			strings.Contains(line, `code="OK"`) {
			fields := strings.Fields(line)
			value, err := strconv.ParseFloat(fields[len(fields)-1], 64)
			if err != nil {
				t.Fatalf("metric line %q: %v", line, err)
			}
			return int(value)
		}
	}
	return 0
}

func allServed(t *testing.T, urls []string) []int {
	out := make([]int, len(urls))
	for i, u := range urls {
		out[i] = served(t, u)
	}
	return out
}

func TestRoundRobinOverLiveReplicas(t *testing.T) {
	targets, urls := os.Getenv("GPT_GRPC_TARGETS"), os.Getenv("GPT_GRPC_METRICS_URLS")
	if targets == "" || urls == "" {
		t.Fatal("GPT_GRPC_TARGETS and GPT_GRPC_METRICS_URLS are not set: run it through tests/contract/harness.py --replicas 3")
	}
	metrics := strings.Split(urls, ",")
	c, err := gptgrpc.Dial("ipv4:"+targets, gptgrpc.WithInsecure(), gptgrpc.WithLoadBalancing(gptgrpc.RoundRobin))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	call := func() {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		if _, err := c.CountTokens(ctx, &gptgrpcv1.CountTokensRequest{Text: "spread me", Model: "gpt-4o-mini"}); err != nil {
			t.Fatal(err)
		}
	}
	// The first calls of a new client go to the first replica ready: call until each served one.
	deadline := time.Now().Add(timeout)
	for start := allServed(t, metrics); ; {
		now, all := allServed(t, metrics), true
		for i := range now {
			all = all && now[i] > start[i]
		}
		if all {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not every replica served a call after %s: %v -> %v", timeout, start, now)
		}
		call()
	}
	before := allServed(t, metrics)
	for i := 0; i < calls; i++ {
		call()
	}
	after := allServed(t, metrics)
	total, spread := 0, make([]int, len(after))
	for i := range after {
		spread[i] = after[i] - before[i]
		total += spread[i]
		if spread[i] < calls/len(metrics)/2 {
			t.Errorf("replica %d served %d of %d calls: %v", i, spread[i], calls, spread)
		}
	}
	if total != calls {
		t.Errorf("the replicas served %d calls, want %d: %v", total, calls, spread)
	}
	t.Logf("calls per replica: %v", spread)
}
