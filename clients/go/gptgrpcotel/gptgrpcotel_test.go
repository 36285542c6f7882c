package gptgrpcotel_test

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/gpt-grpc/gpt-grpc/clients/go/gptgrpc"
	"github.com/gpt-grpc/gpt-grpc/clients/go/gptgrpcotel"
	gptgrpcv1 "github.com/gpt-grpc/gpt-grpc/clients/go/gptgrpcv1"
)

// gateway records the trace context each call arrived with.
type gateway struct {
	gptgrpcv1.UnimplementedGPTServiceServer
	mu     sync.Mutex
	parent []string
}

func (g *gateway) record(ctx context.Context) {
	md, _ := metadata.FromIncomingContext(ctx)
	g.mu.Lock()
	defer g.mu.Unlock()
	g.parent = append(g.parent, strings.Join(md.Get("traceparent"), ","))
}

func (g *gateway) CountTokens(ctx context.Context, _ *gptgrpcv1.CountTokensRequest) (*gptgrpcv1.CountTokensResponse, error) {
	g.record(ctx)
	return &gptgrpcv1.CountTokensResponse{TokenCount: 3}, nil
}

func (g *gateway) StreamChatCompletion(_ *gptgrpcv1.StreamChatCompletionRequest, s grpc.ServerStreamingServer[gptgrpcv1.StreamChatCompletionResponse]) error {
	g.record(s.Context())
	return s.Send(&gptgrpcv1.StreamChatCompletionResponse{Event: &gptgrpcv1.StreamChatCompletionResponse_Delta{
		Delta: &gptgrpcv1.ChatCompletionDelta{Content: "hi"}}})
}

func TestWithTracingPropagatesTheApplicationsTrace(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &gateway{}
	srv := grpc.NewServer()
	gptgrpcv1.RegisterGPTServiceServer(srv, g)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)

	// The application's OpenTelemetry: its own provider, recording the spans it ends.
	recorder := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(recorder))
	c, err := gptgrpc.Dial(lis.Addr().String(), gptgrpc.WithInsecure(), gptgrpcotel.WithTracing(
		otelgrpc.WithTracerProvider(tp), otelgrpc.WithPropagators(propagation.TraceContext{})))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ctx, app := tp.Tracer("the-application").Start(ctx, "answer-question")
	if _, err := c.CountTokens(ctx, &gptgrpcv1.CountTokensRequest{Text: "hello"}); err != nil {
		t.Fatal(err)
	}
	stream, err := c.StreamChatCompletion(ctx, &gptgrpcv1.StreamChatCompletionRequest{UserMessage: "hello"})
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := stream.Recv(); err != nil {
			break
		}
	}
	app.End()

	appID := app.SpanContext()
	var calls []sdktrace.ReadOnlySpan
	for _, s := range recorder.Ended() {
		if s.Parent().SpanID() == appID.SpanID() {
			calls = append(calls, s)
		}
	}
	if len(calls) != 2 {
		t.Fatalf("want a client span per call under the application's span, got %d of %d", len(calls), len(recorder.Ended()))
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.parent) != 2 {
		t.Fatalf("gateway saw %d calls, want 2", len(g.parent))
	}
	for i, got := range g.parent {
		want := "00-" + appID.TraceID().String() + "-" + calls[i].SpanContext().SpanID().String() + "-01"
		if got != want {
			t.Errorf("call %d: traceparent %q, want %q (the call's span, in the application's trace)", i, got, want)
		}
	}
}
