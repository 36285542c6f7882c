// Package gptgrpcotel propagates the application's OpenTelemetry trace to the
// gpt-grpc gateway.
//
//	c, err := gptgrpc.Dial("gateway:50051", gptgrpcotel.WithTracing())
//
// WithTracing installs otelgrpc's client stats handler
// (go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc):
// each call gets a client span, child of the span in the call's context, and
// carries its W3C traceparent (and tracestate, through the configured
// propagators) in the gRPC metadata, so the gateway's server span - and its
// spans of the upstream attempts - join the application's trace. It is a
// package of its own so that an application without OpenTelemetry does not
// build it.
package gptgrpcotel

import (
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"google.golang.org/grpc"

	"github.com/gpt-grpc/gpt-grpc/clients/go/gptgrpc"
)

// WithTracing traces and propagates every call of the client with otelgrpc's
// client stats handler. Without options it uses the global TracerProvider and
// propagators (otel.SetTracerProvider, otel.SetTextMapPropagator); pass
// otelgrpc.WithTracerProvider or otelgrpc.WithPropagators to choose others.
func WithTracing(opts ...otelgrpc.Option) gptgrpc.Option {
	return gptgrpc.WithDialOptions(grpc.WithStatsHandler(otelgrpc.NewClientHandler(opts...)))
}
