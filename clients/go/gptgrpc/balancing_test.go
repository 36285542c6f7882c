package gptgrpc_test

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/gpt-grpc/gpt-grpc/clients/go/gptgrpc"
	"github.com/gpt-grpc/gpt-grpc/clients/go/gptgrpcv1"
)

const balancingCalls = 30

type replica struct {
	fake   *fakeGateway
	health *healthServer
	addr   string
}

// healthServer is grpc.health.v1 written out here rather than taken from
// google.golang.org/grpc/health, whose import also registers gRPC's client-side
// health checking: the tests then prove that package gptgrpc registers it.
type healthServer struct {
	healthpb.UnimplementedHealthServer
	mu      sync.Mutex
	status  healthpb.HealthCheckResponse_ServingStatus
	changed chan struct{}
}

func newHealthServer() *healthServer {
	return &healthServer{status: healthpb.HealthCheckResponse_SERVING, changed: make(chan struct{})}
}

func (h *healthServer) set(status healthpb.HealthCheckResponse_ServingStatus) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.status = status
	close(h.changed)
	h.changed = make(chan struct{})
}

func (h *healthServer) Check(context.Context, *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return &healthpb.HealthCheckResponse{Status: h.status}, nil
}

func (h *healthServer) Watch(req *healthpb.HealthCheckRequest, stream grpc.ServerStreamingServer[healthpb.HealthCheckResponse]) error {
	if req.GetService() != gptgrpc.HealthService {
		return status.Error(codes.NotFound, "unknown service")
	}
	for {
		h.mu.Lock()
		current, changed := h.status, h.changed
		h.mu.Unlock()
		if err := stream.Send(&healthpb.HealthCheckResponse{Status: current}); err != nil {
			return err
		}
		select {
		case <-changed:
		case <-stream.Context().Done():
			return nil
		}
	}
}

// replicas starts n fake gateways, each with a grpc.health.v1 service reporting
// gptgrpc.v1.GPTService as SERVING, and returns them with an ipv4: target naming them all.
func replicas(t *testing.T, n int) ([]replica, string) {
	t.Helper()
	var out []replica
	var addrs []string
	for i := 0; i < n; i++ {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		r := replica{fake: &fakeGateway{auth: map[string][]string{}, calls: map[string]int{}}, health: newHealthServer(),
			addr: lis.Addr().String()}
		srv := grpc.NewServer()
		gptgrpcv1.RegisterGPTServiceServer(srv, r.fake)
		healthpb.RegisterHealthServer(srv, r.health)
		go func() { _ = srv.Serve(lis) }()
		t.Cleanup(srv.Stop)
		out, addrs = append(out, r), append(addrs, r.addr)
	}
	return out, "ipv4:" + strings.Join(addrs, ",")
}

func countTokens(t *testing.T, c *gptgrpc.Client, calls int) {
	t.Helper()
	for i := 0; i < calls; i++ {
		if _, err := c.CountTokens(ctx(t), &gptgrpcv1.CountTokensRequest{Text: "a b"}); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
}

func served(rs []replica) []int {
	out := make([]int, len(rs))
	for i, r := range rs {
		out[i] = r.fake.served("CountTokens")
	}
	return out
}

// untilAllServed makes calls one at a time until every replica served one (bounded): round
// robin rotates over the connections that are ready, so the first calls of a new client go
// to the first replica that answered.
func untilAllServed(t *testing.T, c *gptgrpc.Client, rs []replica) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		all := true
		for _, n := range served(rs) {
			all = all && n > 0
		}
		if all {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not connected to every replica after 10s: %v", served(rs))
		}
		countTokens(t, c, 1)
	}
}

func TestRoundRobinSpreadsCallsOverEveryAddress(t *testing.T) {
	rs, target := replicas(t, 3)
	c, err := gptgrpc.Dial(target, gptgrpc.WithInsecure(), gptgrpc.WithLoadBalancing(gptgrpc.RoundRobin))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	untilAllServed(t, c, rs)
	before := served(rs)
	countTokens(t, c, balancingCalls)
	for i, n := range served(rs) {
		if got := n - before[i]; got != balancingCalls/len(rs) {
			t.Errorf("replica %d served %d of %d calls, want %d", i, got, balancingCalls, balancingCalls/len(rs))
		}
	}
}

func TestWithoutLoadBalancingOneAddressTakesEveryCall(t *testing.T) {
	rs, target := replicas(t, 3)
	c, err := gptgrpc.Dial(target, gptgrpc.WithInsecure())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	countTokens(t, c, balancingCalls)
	busy := 0
	for _, n := range served(rs) {
		if n > 0 {
			busy++
		}
	}
	if busy != 1 {
		t.Fatalf("pick_first (gRPC's default) used %d replicas: %v", busy, served(rs))
	}
}

func TestRoundRobinSkipsAReplicaThatIsNotServing(t *testing.T) {
	rs, target := replicas(t, 3)
	c, err := gptgrpc.Dial(target, gptgrpc.WithInsecure(), gptgrpc.WithLoadBalancing(gptgrpc.RoundRobin))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	untilAllServed(t, c, rs)
	// A draining gateway says NOT_SERVING at once; the health watch takes it out of rotation.
	rs[0].health.set(healthpb.HealthCheckResponse_NOT_SERVING)
	deadline := time.Now().Add(10 * time.Second)
	for {
		before := served(rs)
		countTokens(t, c, balancingCalls)
		after := served(rs)
		if after[0] == before[0] {
			if after[1] == before[1] || after[2] == before[2] {
				t.Fatalf("calls not spread over the two serving replicas: %v -> %v", before, after)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the NOT_SERVING replica still gets calls after 10s: %v", after)
		}
	}
}

func TestLoadBalancingOptionErrors(t *testing.T) {
	if _, err := gptgrpc.Dial("127.0.0.1:1", gptgrpc.WithInsecure(), gptgrpc.WithLoadBalancing("random")); err == nil ||
		!strings.Contains(err.Error(), "unknown load-balancing policy") {
		t.Fatalf("want an unknown-policy error, got %v", err)
	}
	for _, target := range []string{"ipv4:::1", "ipv4:1.2.3.4:x:y", "ipv6:127.0.0.1", "ipv4:"} {
		if _, err := gptgrpc.Dial(target, gptgrpc.WithInsecure()); err == nil {
			t.Errorf("Dial(%q) accepted a bad address list", target)
		}
	}
}

func TestIPv6TargetWithOneAddress(t *testing.T) {
	lis, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skip("no IPv6 loopback here:", err) // the address parsing is covered by the internal test
	}
	srv := grpc.NewServer()
	gptgrpcv1.RegisterGPTServiceServer(srv, &fakeGateway{auth: map[string][]string{}, calls: map[string]int{}})
	go func() { _ = srv.Serve(lis) }()
	defer srv.Stop()
	c, err := gptgrpc.Dial("ipv6:"+lis.Addr().String(), gptgrpc.WithInsecure(), gptgrpc.WithLoadBalancing(gptgrpc.RoundRobin))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// No health service there: gRPC then treats the replica as healthy (gRFC A17).
	if _, err := c.CountTokens(ctx(t), &gptgrpcv1.CountTokensRequest{Text: "a"}); status.Code(err) != codes.OK {
		t.Fatal(err)
	}
}
