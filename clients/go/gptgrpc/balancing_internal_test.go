package gptgrpc

import (
	"encoding/json"
	"reflect"
	"testing"
)

func TestParseStaticAddresses(t *testing.T) {
	cases := []struct {
		target string
		want   []string
		ok     bool
	}{
		{"ipv4:127.0.0.1:50051,127.0.0.2:50052", []string{"127.0.0.1:50051", "127.0.0.2:50052"}, true},
		{"ipv4:10.0.0.1", []string{"10.0.0.1:443"}, true},
		{"ipv6:[::1]:50051,[2001:db8::1]:7", []string{"[::1]:50051", "[2001:db8::1]:7"}, true},
		{"ipv6:::1", []string{"[::1]:443"}, true},
		{"dns:///gateway:50051", nil, false},
		{"gateway:50051", nil, false},
	}
	for _, c := range cases {
		got, ok, err := parseStaticAddresses(c.target)
		if err != nil || ok != c.ok || !reflect.DeepEqual(got, c.want) {
			t.Errorf("parseStaticAddresses(%q) = %v, %v, %v; want %v, %v", c.target, got, ok, err, c.want, c.ok)
		}
	}
}

func TestServiceConfig(t *testing.T) {
	var cfg map[string]any
	if err := json.Unmarshal([]byte(serviceConfig(RoundRobin)), &cfg); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"loadBalancingConfig": []any{map[string]any{"round_robin": map[string]any{}}},
		"healthCheckConfig":   map[string]any{"serviceName": "gptgrpc.v1.GPTService"},
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Fatalf("service config %v, want %v", cfg, want)
	}
}
