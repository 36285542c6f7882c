package gptgrpc

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"google.golang.org/grpc"
	_ "google.golang.org/grpc/health" // registers client-side health checking, used by healthCheckConfig
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
)

// Load-balancing policies of gRPC, for WithLoadBalancing.
const (
	// PickFirst sends every call over one connection, to the first address that answers
	// (gRPC's default).
	PickFirst = "pick_first"
	// RoundRobin connects to every address of the target and rotates calls over the
	// connections that are ready.
	RoundRobin = "round_robin"
	// HealthService is the service the gateway reports in grpc.health.v1: NOT_SERVING from
	// the start of a drain (SIGTERM) until it exits.
	HealthService = "gptgrpc.v1.GPTService"
)

// staticScheme names the per-client resolver Dial builds for ipv4: and ipv6: targets.
const staticScheme = "gptgrpc-static"

// defaultPort is the port of an address without one in ipv4:/ipv6: targets (gRPC naming).
const defaultPort = "443"

// WithLoadBalancing selects gRPC's load-balancing policy (RoundRobin or PickFirst) over
// the addresses the target resolves to: a DNS name with several records
// ("dns:///gateway.internal:50051", e.g. a Kubernetes headless Service) or a list of
// addresses ("ipv4:10.0.0.1:50051,10.0.0.2:50051"). It also turns on client-side health
// checking (healthCheckConfig), so that a replica reporting NOT_SERVING (draining) gets
// no new calls.
func WithLoadBalancing(policy string) Option {
	return func(o *options) error {
		if policy != PickFirst && policy != RoundRobin {
			return fmt.Errorf("gptgrpc: unknown load-balancing policy %q (use %q or %q)", policy, RoundRobin, PickFirst)
		}
		o.loadBalancing = policy
		return nil
	}
}

// serviceConfig is the gRPC service config that selects policy and checks each replica's health.
func serviceConfig(policy string) string {
	cfg := map[string]any{
		"loadBalancingConfig": []map[string]any{{policy: map[string]any{}}},
		"healthCheckConfig":   map[string]string{"serviceName": HealthService},
	}
	out, err := json.Marshal(cfg)
	if err != nil {
		panic(err) // maps of strings always marshal
	}
	return string(out)
}

// staticTarget handles gRPC's "ipv4:" and "ipv6:" target schemes, which grpc-go has no
// resolver for: it returns the target to dial and a per-client resolver holding the
// addresses, or ok=false for any other target. The authority (and the TLS name checked
// by default) is the first address, as in gRPC's C core.
func staticTarget(target string) (dial string, opt grpc.DialOption, ok bool, err error) {
	addrs, ok, err := parseStaticAddresses(target)
	if !ok || err != nil {
		return "", nil, ok, err
	}
	r := manual.NewBuilderWithScheme(staticScheme)
	state := resolver.State{}
	for _, a := range addrs {
		state.Addresses = append(state.Addresses, resolver.Address{Addr: a})
	}
	r.InitialState(state)
	return staticScheme + ":///" + addrs[0], grpc.WithResolvers(r), true, nil
}

// parseStaticAddresses splits "ipv4:a[:port][,b[:port]...]" or "ipv6:addr|[addr]:port,..."
// into host:port strings (port 443 when absent), as gRPC's naming document defines them.
func parseStaticAddresses(target string) ([]string, bool, error) {
	scheme, list, found := strings.Cut(target, ":")
	if !found || (scheme != "ipv4" && scheme != "ipv6") {
		return nil, false, nil
	}
	list = strings.TrimPrefix(list, "//") // "ipv4:///a:1" is accepted by some gRPC versions too
	var out []string
	for _, part := range strings.Split(list, ",") {
		host, port := part, defaultPort
		if (scheme == "ipv4" && strings.Contains(part, ":")) || (scheme == "ipv6" && strings.HasPrefix(part, "[")) {
			h, p, err := net.SplitHostPort(part)
			if err != nil {
				return nil, true, fmt.Errorf("gptgrpc: bad address %q in target %q: %w", part, target, err)
			}
			host, port = h, p
		}
		ip, err := netip.ParseAddr(host)
		if err != nil || ip.Is4() != (scheme == "ipv4") {
			return nil, true, fmt.Errorf("gptgrpc: %q is not an %s address (target %q)", host, scheme, target)
		}
		out = append(out, net.JoinHostPort(ip.String(), port))
	}
	return out, true, nil
}
