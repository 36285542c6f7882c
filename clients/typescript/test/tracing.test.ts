// The trace-context interceptor against an in-process gRPC server on loopback.
import { type ConnectRouter, type HandlerContext } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import { context, propagation, trace, TraceFlags } from "@opentelemetry/api";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import * as http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { after, before, describe, test } from "node:test";

import { collectStream, createClient, GPTService } from "../src/index.js";
import { traceContextInterceptor } from "../src/tracing.js";

const seen: Array<{ method: string; traceparent: string | null; tracestate: string | null }> = [];

function routes(router: ConnectRouter): void {
  const record = (method: string, ctx: HandlerContext): void => {
    seen.push({ method, traceparent: ctx.requestHeader.get("traceparent"), tracestate: ctx.requestHeader.get("tracestate") });
  };
  router.service(GPTService, {
    countTokens(_req, ctx) {
      record("countTokens", ctx);
      return { tokenCount: 1n };
    },
    async *streamChatCompletion(_req, ctx) {
      record("streamChatCompletion", ctx);
      yield { event: { case: "delta", value: { content: "hi" } } };
      yield { event: { case: "summary", value: { usage: { totalTokens: 1n } } } };
    },
  });
}

describe("traceContextInterceptor", () => {
  const server = http2.createServer(connectNodeAdapter({ routes }));
  const contextManager = new AsyncLocalStorageContextManager();
  let target = "";
  before(async () => {
    // What the application's SDK setup registers.
    context.setGlobalContextManager(contextManager.enable());
    propagation.setGlobalPropagator(new W3CTraceContextPropagator());
    target = await new Promise<string>((resolve) => {
      server.listen(0, "127.0.0.1", () => resolve(`127.0.0.1:${(server.address() as AddressInfo).port}`));
    });
  });
  after(() => {
    server.close();
    context.disable();
    propagation.disable();
  });

  test("sends the active span's context with unary and streaming calls", async () => {
    const traceId = randomBytes(16).toString("hex");
    const spanId = randomBytes(8).toString("hex");
    const span = trace.wrapSpanContext({ traceId, spanId, traceFlags: TraceFlags.SAMPLED });
    const client = createClient(target, { insecure: true, interceptors: [traceContextInterceptor()] });
    try {
      seen.length = 0;
      await context.with(trace.setSpan(context.active(), span), async () => {
        await client.countTokens({ text: "hello" });
        await collectStream(client.streamChatCompletion({ userMessage: "hello" }));
      });
      const want = `00-${traceId}-${spanId}-01`;
      assert.deepEqual(
        seen.map((s) => [s.method, s.traceparent]),
        [
          ["countTokens", want],
          ["streamChatCompletion", want],
        ],
      );

      // No active span: nothing is sent. A header the caller set is kept.
      seen.length = 0;
      await client.countTokens({ text: "hello" });
      const own = `00-${"a".repeat(32)}-${"b".repeat(16)}-01`;
      await context.with(trace.setSpan(context.active(), span), () =>
        client.countTokens({ text: "hello" }, { headers: { traceparent: own } }),
      );
      assert.deepEqual(
        seen.map((s) => s.traceparent),
        [null, own],
      );
    } finally {
      client.close();
    }
  });
});
