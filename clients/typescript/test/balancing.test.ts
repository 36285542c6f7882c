// Client-side load balancing (loadBalancing option) against in-process gRPC servers on loopback.
import { type ConnectRouter } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import assert from "node:assert/strict";
import * as http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { after, before, describe, test } from "node:test";

import { BalancingTransport } from "../src/balancing.js";
import {
  Code,
  collectStream,
  ConnectError,
  createClient,
  ErrorInfoSchema,
  errorDetails,
  GPTService,
  parseTarget,
} from "../src/index.js";

const CALLS = 30;

/** One fake replica: counts the calls it served; refuses them like a gateway when told to. */
class Replica {
  served = 0;
  refused = 0;
  refuseWith: { code: Code; reason: string } | undefined;
  readonly server: http2.Http2Server;
  port = 0;

  constructor() {
    this.server = http2.createServer(connectNodeAdapter({ routes: (router) => this.routes(router) }));
  }

  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  async start(): Promise<void> {
    await new Promise<void>((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    this.port = (this.server.address() as AddressInfo).port;
  }

  stop(): Promise<void> {
    return new Promise((resolve) => this.server.close(() => resolve()));
  }

  private answer(): void {
    if (this.refuseWith) {
      this.refused++;
      const { code, reason } = this.refuseWith;
      throw new ConnectError(`refused: ${reason}`, code, undefined, [
        { desc: ErrorInfoSchema, value: { reason, domain: "gpt-grpc" } },
      ]);
    }
    this.served++;
  }

  private routes(router: ConnectRouter): void {
    router.service(GPTService, {
      countTokens: () => {
        this.answer();
        return { tokenCount: 1n, encoding: "o200k_base" };
      },
      streamChatCompletion: async function* (this: Replica) {
        this.answer();
        yield { event: { case: "delta" as const, value: { content: "hi" } } };
        yield { event: { case: "summary" as const, value: { usage: { totalTokens: 1n } } } };
      }.bind(this),
    });
  }
}

async function startReplicas(n: number): Promise<Replica[]> {
  const replicas = Array.from({ length: n }, () => new Replica());
  await Promise.all(replicas.map((r) => r.start()));
  return replicas;
}

function ipv4(replicas: Replica[], extra: string[] = []): string {
  return "ipv4:" + [...replicas.map((r) => r.address), ...extra].join(",");
}

async function countTokens(client: ReturnType<typeof createClient>, calls: number): Promise<void> {
  for (let i = 0; i < calls; i++) await client.countTokens({ text: "a" });
}

describe("parseTarget", () => {
  test("gRPC's target forms", () => {
    assert.deepEqual(parseTarget("ipv4:10.0.0.1:50051,10.0.0.2"), { kind: "static", addresses: ["10.0.0.1:50051", "10.0.0.2:443"] });
    assert.deepEqual(parseTarget("ipv6:[::1]:50051,::2"), { kind: "static", addresses: ["[::1]:50051", "[::2]:443"] });
    assert.deepEqual(parseTarget("ipv6:::1"), { kind: "static", addresses: ["[::1]:443"] });
    assert.deepEqual(parseTarget("dns:///gateway.internal:50051"), { kind: "dns", host: "gateway.internal", port: "50051" });
    assert.deepEqual(parseTarget("dns:gateway"), { kind: "dns", host: "gateway", port: "443" });
    assert.deepEqual(parseTarget("gateway:50051"), { kind: "dns", host: "gateway", port: "50051" });
    assert.deepEqual(parseTarget("127.0.0.1:50051"), { kind: "static", addresses: ["127.0.0.1:50051"] });
    for (const bad of ["ipv4:::1", "ipv6:127.0.0.1", "ipv4:1.2.3.4:x", "dns://8.8.8.8/gateway:1"]) {
      assert.throws(() => parseTarget(bad), /gpt-grpc/, bad);
    }
  });

  test("an unknown policy is refused", () => {
    assert.throws(
      () => createClient("ipv4:127.0.0.1:1", { insecure: true, loadBalancing: "random" as "round_robin" }),
      /unknown loadBalancing/,
    );
  });
});

describe("round_robin and pick_first", () => {
  let replicas: Replica[] = [];
  before(async () => {
    replicas = await startReplicas(3);
  });
  after(() => Promise.all(replicas.map((r) => r.stop())));
  const reset = (): void => {
    for (const r of replicas) {
      r.served = 0;
      r.refused = 0;
      r.refuseWith = undefined;
    }
  };

  test("round_robin: every replica gets its turn, unary and streaming", async () => {
    reset();
    const client = createClient(ipv4(replicas), { insecure: true, loadBalancing: "round_robin", defaultTimeoutMs: 10_000 });
    try {
      await countTokens(client, CALLS);
      assert.deepEqual(replicas.map((r) => r.served), [10, 10, 10]);
      for (let i = 0; i < 3; i++) {
        const res = await collectStream(client.streamChatCompletion({ userMessage: "x" }));
        assert.equal(res.content, "hi");
      }
      assert.deepEqual(replicas.map((r) => r.served), [11, 11, 11]);
    } finally {
      client.close();
    }
  });

  test("pick_first (the default for an address list): every call to the first", async () => {
    reset();
    const client = createClient(ipv4(replicas), { insecure: true, defaultTimeoutMs: 10_000 });
    try {
      await countTokens(client, CALLS);
      assert.deepEqual(replicas.map((r) => r.served), [CALLS, 0, 0]);
    } finally {
      client.close();
    }
  });

  test("an address with nothing listening is skipped; its calls go to the others", async () => {
    reset();
    const dead = new Replica();
    await dead.start();
    const deadAddress = dead.address;
    await dead.stop();
    const client = createClient(ipv4(replicas, [deadAddress]), {
      insecure: true,
      loadBalancing: "round_robin",
      defaultTimeoutMs: 10_000,
    });
    try {
      await countTokens(client, CALLS); // none fails: the refused connection never carried the call
      assert.equal(replicas.reduce((n, r) => n + r.served, 0), CALLS);
      assert.ok(replicas.every((r) => r.served >= CALLS / 3 - 1), `${replicas.map((r) => r.served)}`);
    } finally {
      client.close();
    }
  });

  test("a replica shutting down refuses once, then is left out; unary and streams succeed", async () => {
    reset();
    replicas[1]!.refuseWith = { code: Code.Unavailable, reason: "SHUTTING_DOWN" };
    const client = createClient(ipv4(replicas), { insecure: true, loadBalancing: "round_robin", defaultTimeoutMs: 10_000 });
    try {
      await countTokens(client, CALLS);
      for (let i = 0; i < 3; i++) await collectStream(client.streamChatCompletion({ userMessage: "x" }));
      assert.equal(replicas[0]!.served + replicas[2]!.served, CALLS + 3);
      assert.equal(replicas[1]!.served, 0);
      // Left out for gRPC's backoff (1 s, then longer) after each refusal, not called every turn.
      assert.ok(replicas[1]!.refused >= 1 && replicas[1]!.refused <= 3, `refused ${replicas[1]!.refused}`);
    } finally {
      client.close();
    }
  });

  test("any other error of a gateway is the caller's: not sent elsewhere", async () => {
    reset();
    for (const r of replicas) r.refuseWith = { code: Code.Unavailable, reason: "UPSTREAM_UNAVAILABLE" };
    const client = createClient(ipv4(replicas), { insecure: true, loadBalancing: "round_robin", defaultTimeoutMs: 10_000 });
    try {
      await assert.rejects(client.countTokens({ text: "a" }), (err) => {
        const { code, reason } = errorDetails(err);
        return code === Code.Unavailable && reason === "UPSTREAM_UNAVAILABLE";
      });
      assert.equal(replicas.reduce((n, r) => n + r.refused, 0), 1);
    } finally {
      client.close();
    }
  });

  test("dns:/// names are resolved with the system resolver", async () => {
    reset();
    const port = replicas[0]!.port;
    const client = createClient(`dns:///localhost:${port}`, { insecure: true, loadBalancing: "round_robin", defaultTimeoutMs: 10_000 });
    try {
      await countTokens(client, 3);
      assert.equal(replicas[0]!.served, 3);
      assert.ok((client.transport as BalancingTransport).addresses.includes(`127.0.0.1:${port}`));
    } finally {
      client.close();
    }
  });
});
