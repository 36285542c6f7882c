package gptgrpc_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/gpt-grpc/gpt-grpc/clients/go/gptgrpc"
	"github.com/gpt-grpc/gpt-grpc/clients/go/gptgrpcv1"
)

// fakeGateway records the authorization metadata of each call.
type fakeGateway struct {
	gptgrpcv1.UnimplementedGPTServiceServer
	mu    sync.Mutex
	auth  map[string][]string // method -> authorization values
	calls map[string]int      // method -> calls served
}

func (f *fakeGateway) record(ctx context.Context, method string) {
	md, _ := metadata.FromIncomingContext(ctx)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.auth[method] = md.Get("authorization")
	f.calls[method]++
}

func (f *fakeGateway) served(method string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[method]
}

func (f *fakeGateway) authFor(method string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.auth[method]
}

func (f *fakeGateway) Configure(ctx context.Context, _ *gptgrpcv1.ConfigureRequest) (*gptgrpcv1.ConfigureResponse, error) {
	f.record(ctx, "Configure")
	return &gptgrpcv1.ConfigureResponse{Configuration: &gptgrpcv1.Configuration{Generation: 1}}, nil
}

func (f *fakeGateway) CountTokens(ctx context.Context, _ *gptgrpcv1.CountTokensRequest) (*gptgrpcv1.CountTokensResponse, error) {
	f.record(ctx, "CountTokens")
	return &gptgrpcv1.CountTokensResponse{TokenCount: 2, Encoding: "cl100k_base"}, nil
}

func (f *fakeGateway) ChatCompletion(ctx context.Context, req *gptgrpcv1.ChatCompletionRequest) (*gptgrpcv1.ChatCompletionResponse, error) {
	f.record(ctx, "ChatCompletion")
	st := status.New(codes.ResourceExhausted, "upstream rate limited")
	st, err := st.WithDetails(
		&errdetails.ErrorInfo{Reason: "UPSTREAM_RATE_LIMITED", Domain: gptgrpc.ErrorDomain,
			Metadata: map[string]string{"http_status": "429", "request_id": "req_1"}},
		&errdetails.RetryInfo{RetryDelay: durationpb.New(1500 * time.Millisecond)},
		&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: "temperature"}}},
	)
	if err != nil {
		return nil, err
	}
	return nil, st.Err()
}

func (f *fakeGateway) CreateClient(ctx context.Context, req *gptgrpcv1.CreateClientRequest) (*gptgrpcv1.CreateClientResponse, error) {
	f.record(ctx, "CreateClient")
	return &gptgrpcv1.CreateClientResponse{Client: &gptgrpcv1.Client{Name: req.GetName()}, Token: "tok"}, nil
}

func (f *fakeGateway) GetUsage(ctx context.Context, _ *gptgrpcv1.GetUsageRequest) (*gptgrpcv1.GetUsageResponse, error) {
	f.record(ctx, "GetUsage")
	st, err := status.New(codes.ResourceExhausted, "budget spent").WithDetails(
		&errdetails.ErrorInfo{Reason: "CLIENT_BUDGET_EXCEEDED", Domain: gptgrpc.ErrorDomain},
		&errdetails.QuotaFailure{Violations: []*errdetails.QuotaFailure_Violation{{Subject: "client:acme"}}},
	)
	if err != nil {
		return nil, err
	}
	return nil, st.Err()
}

func (f *fakeGateway) StreamChatCompletion(req *gptgrpcv1.StreamChatCompletionRequest, s grpc.ServerStreamingServer[gptgrpcv1.StreamChatCompletionResponse]) error {
	f.record(s.Context(), "StreamChatCompletion")
	for _, part := range []string{"Echo: ", req.GetUserMessage()} {
		if err := s.Send(&gptgrpcv1.StreamChatCompletionResponse{Event: &gptgrpcv1.StreamChatCompletionResponse_Delta{
			Delta: &gptgrpcv1.ChatCompletionDelta{Content: part}}}); err != nil {
			return err
		}
	}
	return s.Send(&gptgrpcv1.StreamChatCompletionResponse{Event: &gptgrpcv1.StreamChatCompletionResponse_Summary{
		Summary: &gptgrpcv1.ChatCompletionSummary{Usage: &gptgrpcv1.Usage{TotalTokens: 5}}}})
}

func serve(t *testing.T, opts ...grpc.ServerOption) (*fakeGateway, string) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeGateway{auth: map[string][]string{}, calls: map[string]int{}}
	srv := grpc.NewServer(opts...)
	gptgrpcv1.RegisterGPTServiceServer(srv, f)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return f, lis.Addr().String()
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestAdminTokenOnlyOnConfigure(t *testing.T) {
	f, addr := serve(t)
	c, err := gptgrpc.Dial(addr, gptgrpc.WithInsecure(), gptgrpc.WithAdminToken("s3cret"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Configure(ctx(t), &gptgrpcv1.ConfigureRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CountTokens(ctx(t), &gptgrpcv1.CountTokensRequest{Text: "hello world"}); err != nil {
		t.Fatal(err)
	}
	if got := f.authFor("Configure"); len(got) != 1 || got[0] != "Bearer s3cret" {
		t.Errorf("Configure authorization = %q, want [Bearer s3cret]", got)
	}
	if got := f.authFor("CountTokens"); len(got) != 0 {
		t.Errorf("CountTokens authorization = %q, want none", got)
	}
	// A per-call token wins over the dial option and is not duplicated.
	if _, err := c.Configure(gptgrpc.ContextWithAdminToken(ctx(t), "other"), &gptgrpcv1.ConfigureRequest{}); err != nil {
		t.Fatal(err)
	}
	if got := f.authFor("Configure"); len(got) != 1 || got[0] != "Bearer other" {
		t.Errorf("Configure authorization = %q, want [Bearer other]", got)
	}
}

func TestClientAndAdminTokens(t *testing.T) {
	f, addr := serve(t)
	c, err := gptgrpc.Dial(addr, gptgrpc.WithInsecure(),
		gptgrpc.WithAdminToken("admin"), gptgrpc.WithClientToken("client"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.CreateClient(ctx(t), &gptgrpcv1.CreateClientRequest{Name: "acme"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CountTokens(ctx(t), &gptgrpcv1.CountTokensRequest{Text: "x"}); err != nil {
		t.Fatal(err)
	}
	stream, err := c.StreamChatCompletion(ctx(t), &gptgrpcv1.StreamChatCompletionRequest{UserMessage: "x"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := gptgrpc.CollectStream(stream, nil); err != nil {
		t.Fatal(err)
	}
	for method, want := range map[string]string{
		"CreateClient": "Bearer admin", "CountTokens": "Bearer client", "StreamChatCompletion": "Bearer client",
	} {
		if got := f.authFor(method); len(got) != 1 || got[0] != want {
			t.Errorf("%s authorization = %q, want [%s]", method, got, want)
		}
	}
	_, err = c.GetUsage(gptgrpc.ContextWithAdminToken(ctx(t), "admin"), &gptgrpcv1.GetUsageRequest{Client: "acme"})
	if got := f.authFor("GetUsage"); len(got) != 1 || got[0] != "Bearer admin" {
		t.Errorf("GetUsage with a per-call token: authorization = %q", got)
	}
	if q := gptgrpc.QuotaFailure(err); len(q.GetViolations()) != 1 || q.GetViolations()[0].GetSubject() != "client:acme" {
		t.Errorf("QuotaFailure = %v (err %v)", q, err)
	}
	if gptgrpc.Reason(err) != gptgrpcv1.ErrorReason_CLIENT_BUDGET_EXCEEDED {
		t.Errorf("Reason = %v", gptgrpc.Reason(err))
	}
	if !gptgrpc.IsAdminMethod(gptgrpcv1.GPTService_RevokeClient_FullMethodName) ||
		gptgrpc.IsAdminMethod(gptgrpcv1.GPTService_GetUsage_FullMethodName) {
		t.Error("IsAdminMethod misclassifies")
	}
}

func TestErrorDetails(t *testing.T) {
	_, addr := serve(t)
	c, err := gptgrpc.Dial(addr, gptgrpc.WithInsecure())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.ChatCompletion(ctx(t), &gptgrpcv1.ChatCompletionRequest{UserMessage: "hi"})
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("code = %v, want ResourceExhausted (err %v)", status.Code(err), err)
	}
	reason, info, retry, bad := gptgrpc.ErrorDetails(err)
	if reason != "UPSTREAM_RATE_LIMITED" || info.GetDomain() != "gpt-grpc" || info.GetMetadata()["http_status"] != "429" {
		t.Errorf("reason %q info %v", reason, info)
	}
	if retry.GetRetryDelay().AsDuration() != 1500*time.Millisecond {
		t.Errorf("retry %v", retry)
	}
	if len(bad.GetFieldViolations()) != 1 || bad.GetFieldViolations()[0].GetField() != "temperature" {
		t.Errorf("bad request %v", bad)
	}
	if got := gptgrpc.Reason(err); got != gptgrpcv1.ErrorReason_UPSTREAM_RATE_LIMITED {
		t.Errorf("Reason = %v", got)
	}
	if r, i, rt, b := gptgrpc.ErrorDetails(errors.New("plain")); r != "" || i != nil || rt != nil || b != nil {
		t.Errorf("non-status error decoded to %q %v %v %v", r, i, rt, b)
	}
	if r, _, _, _ := gptgrpc.ErrorDetails(nil); r != "" {
		t.Errorf("nil error decoded to %q", r)
	}
}

func TestCollectStream(t *testing.T) {
	_, addr := serve(t)
	c, err := gptgrpc.Dial(addr, gptgrpc.WithInsecure())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	stream, err := c.StreamChatCompletion(ctx(t), &gptgrpcv1.StreamChatCompletionRequest{UserMessage: "hello"})
	if err != nil {
		t.Fatal(err)
	}
	deltas := 0
	res, err := gptgrpc.CollectStream(stream, func(*gptgrpcv1.ChatCompletionDelta) { deltas++ })
	if err != nil {
		t.Fatal(err)
	}
	if res.Content != "Echo: hello" || deltas != 2 || res.Summary.GetUsage().GetTotalTokens() != 5 {
		t.Errorf("got %+v after %d deltas", res, deltas)
	}
}

// pki is a throwaway CA with one server and one client certificate.
type pki struct {
	caPEM  []byte
	server tls.Certificate
	client tls.Certificate
	pool   *x509.CertPool
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	leaf := func(serial int64, usage x509.ExtKeyUsage) tls.Certificate {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "localhost"},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
			DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	}
	p := &pki{
		caPEM:  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		server: leaf(2, x509.ExtKeyUsageServerAuth),
		client: leaf(3, x509.ExtKeyUsageClientAuth),
		pool:   x509.NewCertPool(),
	}
	p.pool.AddCert(ca)
	return p
}

func TestMutualTLS(t *testing.T) {
	p := newPKI(t)
	_, addr := serve(t, grpc.Creds(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{p.server}, ClientCAs: p.pool,
		ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12,
	})))

	c, err := gptgrpc.Dial(addr, gptgrpc.WithCA(p.caPEM), gptgrpc.WithClientCert(p.client))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	res, err := c.CountTokens(ctx(t), &gptgrpcv1.CountTokensRequest{Text: "hello world"})
	if err != nil || res.GetTokenCount() != 2 {
		t.Fatalf("mTLS call: %v %v", res, err)
	}

	// Without the client certificate the handshake is refused.
	noCert, err := gptgrpc.Dial(addr, gptgrpc.WithCA(p.caPEM))
	if err != nil {
		t.Fatal(err)
	}
	defer noCert.Close()
	if _, err := noCert.CountTokens(ctx(t), &gptgrpcv1.CountTokensRequest{Text: "x"}); status.Code(err) != codes.Unavailable {
		t.Errorf("call without client cert: %v, want Unavailable", err)
	}

	// Without the CA the server certificate is not trusted.
	noCA, err := gptgrpc.Dial(addr, gptgrpc.WithClientCert(p.client))
	if err != nil {
		t.Fatal(err)
	}
	defer noCA.Close()
	if _, err := noCA.CountTokens(ctx(t), &gptgrpcv1.CountTokensRequest{Text: "x"}); status.Code(err) != codes.Unavailable {
		t.Errorf("call without CA: %v, want Unavailable", err)
	}
}

func TestDialOptionErrors(t *testing.T) {
	if _, err := gptgrpc.Dial("127.0.0.1:1", gptgrpc.WithCA([]byte("not pem"))); err == nil {
		t.Error("WithCA accepted a non-PEM bundle")
	}
	if _, err := gptgrpc.Dial("127.0.0.1:1", gptgrpc.WithInsecure(), gptgrpc.WithServerName("x")); err == nil ||
		!strings.Contains(err.Error(), "WithInsecure") {
		t.Errorf("WithInsecure + TLS option: %v", err)
	}
	if _, err := gptgrpc.Dial("127.0.0.1:1", gptgrpc.WithAdminToken("")); err == nil {
		t.Error("empty admin token accepted")
	}
	if _, err := gptgrpc.Dial("127.0.0.1:1", gptgrpc.WithClientToken("")); err == nil {
		t.Error("empty client token accepted")
	}
	if _, err := gptgrpc.Dial("127.0.0.1:1", gptgrpc.WithCAFile("/nonexistent/ca.pem")); err == nil {
		t.Error("missing CA file accepted")
	}
}
