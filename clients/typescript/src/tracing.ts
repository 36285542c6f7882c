/**
 * The application's OpenTelemetry trace context on every call to the gateway.
 *
 * ```ts
 * import { createClient } from "@gpt-grpc/client";
 * import { traceContextInterceptor } from "@gpt-grpc/client/tracing";
 *
 * const client = createClient("gateway.internal:50051", { interceptors: [traceContextInterceptor()] });
 * ```
 *
 * A Connect interceptor that writes the active OpenTelemetry context into each
 * call's request headers with the application's registered propagator (W3C
 * `traceparent` and `tracestate` once the SDK is set up, e.g.
 * `NodeTracerProvider.register()`): the gateway's server span then continues
 * the application's trace. Without an active span nothing is written; a header
 * the call already has (set by the caller or another instrumentation) is kept.
 *
 * It needs `@opentelemetry/api` (an optional peer dependency), which is why it
 * is a module of its own: the main entry point never loads it.
 */
import type { Interceptor } from "@connectrpc/connect";
import { context, propagation, type TextMapSetter } from "@opentelemetry/api";

const keepExisting: TextMapSetter<Headers> = {
  set(carrier, key, value) {
    if (!carrier.has(key)) carrier.set(key, value);
  },
};

/** An interceptor adding the active trace context to every call (unary and streaming). */
export function traceContextInterceptor(): Interceptor {
  return (next) => async (req) => {
    propagation.inject(context.active(), req.header, keepExisting);
    return await next(req);
  };
}
