// Unit tests of the wrapper against an in-process gRPC server on loopback.
import { create } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { type ConnectRouter, type HandlerContext } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import * as http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import {
  ADMIN_RPCS,
  BadRequestSchema,
  DATA_PLANE_RPCS,
  QuotaFailureSchema,
  withToken,
  Code,
  collectStream,
  ConnectError,
  createClient,
  ErrorInfoSchema,
  errorDetails,
  errorReason,
  ErrorReason,
  GPTService,
  RetryInfoSchema,
  withAdminToken,
} from "../src/index.js";

const seenAuth = new Map<string, string | null>();

function routes(router: ConnectRouter): void {
  const record = (method: string, ctx: HandlerContext): void => {
    seenAuth.set(method, ctx.requestHeader.get("authorization"));
  };
  router.service(GPTService, {
    configure(_req, ctx) {
      record("configure", ctx);
      return { configuration: { generation: 1n } };
    },
    countTokens(req, ctx) {
      record("countTokens", ctx);
      return { tokenCount: BigInt(req.text.split(" ").length), encoding: "cl100k_base" };
    },
    chatCompletion(_req, ctx) {
      record("chatCompletion", ctx);
      throw new ConnectError("upstream rate limited", Code.ResourceExhausted, undefined, [
        {
          desc: ErrorInfoSchema,
          value: { reason: "UPSTREAM_RATE_LIMITED", domain: "gpt-grpc", metadata: { http_status: "429" } },
        },
        { desc: RetryInfoSchema, value: { retryDelay: durationFromMs(1500) } },
        { desc: BadRequestSchema, value: { fieldViolations: [{ field: "temperature" }] } },
      ]);
    },
    createClient(req, ctx) {
      record("createClient", ctx);
      return { client: { name: req.name }, token: "tok" };
    },
    getUsage(_req, ctx) {
      record("getUsage", ctx);
      throw new ConnectError("budget spent", Code.ResourceExhausted, undefined, [
        { desc: ErrorInfoSchema, value: { reason: "CLIENT_BUDGET_EXCEEDED", domain: "gpt-grpc" } },
        { desc: QuotaFailureSchema, value: { violations: [{ subject: "client:acme" }] } },
      ]);
    },
    async *streamChatCompletion(req, ctx) {
      record("streamChatCompletion", ctx);
      for (const part of ["Echo: ", req.userMessage]) {
        yield { event: { case: "delta", value: { content: part } } };
      }
      yield { event: { case: "summary", value: { usage: { totalTokens: 5n } } } };
    },
  });
}

function listen(server: http2.Http2Server | http2.Http2SecureServer): Promise<number> {
  return new Promise((resolve) => {
    server.listen(0, "127.0.0.1", () => resolve((server.address() as AddressInfo).port));
  });
}

describe("plaintext", () => {
  const server = http2.createServer(connectNodeAdapter({ routes }));
  let target = "";
  before(async () => {
    target = `127.0.0.1:${await listen(server)}`;
  });
  after(() => server.close());

  test("admin token is sent with Configure only", async () => {
    const client = createClient(target, { insecure: true, adminToken: "s3cret", defaultTimeoutMs: 10_000 });
    try {
      const res = await client.configure({});
      assert.equal(res.configuration?.generation, 1n);
      await client.countTokens({ text: "hello world" });
      assert.equal(seenAuth.get("configure"), "Bearer s3cret");
      assert.equal(seenAuth.get("countTokens"), null);
      await client.configure({}, withAdminToken("other"));
      assert.equal(seenAuth.get("configure"), "Bearer other");
    } finally {
      client.close();
    }
  });

  test("admin token on admin RPCs, client token on the others", async () => {
    const client = createClient(target, { insecure: true, adminToken: "admin", clientToken: "client" });
    try {
      await client.createClient({ name: "acme" });
      await client.countTokens({ text: "x" });
      await collectStream(client.streamChatCompletion({ userMessage: "x" }));
      assert.equal(seenAuth.get("createClient"), "Bearer admin");
      assert.equal(seenAuth.get("countTokens"), "Bearer client");
      assert.equal(seenAuth.get("streamChatCompletion"), "Bearer client");
      await assert.rejects(client.getUsage({ client: "acme" }, withToken("admin")), (err: unknown) => {
        assert.equal(seenAuth.get("getUsage"), "Bearer admin");
        const d = errorDetails(err);
        assert.equal(errorReason(err), ErrorReason.CLIENT_BUDGET_EXCEEDED);
        assert.equal(d.quotaFailure?.violations[0]?.subject, "client:acme");
        return true;
      });
    } finally {
      client.close();
    }
  });

  test("every RPC is classified as admin or data-plane", () => {
    for (const m of GPTService.methods) {
      assert.ok(
        ADMIN_RPCS.includes(m.name) !== DATA_PLANE_RPCS.includes(m.name),
        `${m.name}: classify it in exactly one of ADMIN_RPCS and DATA_PLANE_RPCS (clients/typescript/src/index.ts)`,
      );
    }
    assert.equal(ADMIN_RPCS.length + DATA_PLANE_RPCS.length, GPTService.methods.length);
  });

  test("error details decode", async () => {
    const client = createClient(`http://${target}`, { insecure: true });
    try {
      await assert.rejects(client.chatCompletion({ userMessage: "hi" }), (err: unknown) => {
        const d = errorDetails(err);
        assert.equal(d.code, Code.ResourceExhausted);
        assert.equal(d.message, "upstream rate limited");
        assert.equal(d.reason, "UPSTREAM_RATE_LIMITED");
        assert.equal(d.errorInfo?.domain, "gpt-grpc");
        assert.equal(d.errorInfo?.metadata["http_status"], "429");
        assert.equal(d.retryInfo?.retryDelay?.seconds, 1n);
        assert.equal(d.retryInfo?.retryDelay?.nanos, 500_000_000);
        assert.deepEqual(
          d.badRequest?.fieldViolations.map((v) => v.field),
          ["temperature"],
        );
        assert.equal(errorReason(err), ErrorReason.UPSTREAM_RATE_LIMITED);
        return true;
      });
    } finally {
      client.close();
    }
    const plain = errorDetails(new Error("boom"));
    assert.equal(plain.reason, "");
    assert.equal(plain.errorInfo, undefined);
    assert.equal(errorReason(new Error("boom")), ErrorReason.ERROR_REASON_UNSPECIFIED);
  });

  test("collectStream concatenates deltas and returns the summary", async () => {
    const client = createClient(target, { insecure: true });
    try {
      let deltas = 0;
      const res = await collectStream(client.streamChatCompletion({ userMessage: "hello" }), () => deltas++);
      assert.equal(res.content, "Echo: hello");
      assert.equal(deltas, 2);
      assert.equal(res.summary.usage?.totalTokens, 5n);
    } finally {
      client.close();
    }
  });

  test("option errors", () => {
    assert.throws(() => createClient("http://127.0.0.1:1"), /conflicts with insecure/);
    assert.throws(() => createClient("127.0.0.1:1", { adminToken: "" }), /adminToken is empty/);
    assert.throws(() => createClient("127.0.0.1:1", { clientToken: "" }), /clientToken is empty/);
    assert.throws(() => createClient("127.0.0.1:1", { insecure: true, tls: { serverName: "x" } }), /insecure cannot/);
    assert.ok(create(GPTService.method.countTokens.input, { text: "x" }));
  });
});

// Mutual TLS with a throwaway CA made by openssl (on the polyglot image).
function haveOpenssl(): boolean {
  try {
    execFileSync("openssl", ["version"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

describe("mutual TLS", { skip: haveOpenssl() ? false : "openssl not found" }, () => {
  const dir = mkdtempSync(join(tmpdir(), "gptgrpc-tls-"));
  const pem = (name: string): Buffer => readFileSync(join(dir, name));
  let server: http2.Http2SecureServer | undefined;
  let target = "";

  before(async () => {
    const ossl = (...args: string[]): void => {
      execFileSync("openssl", args, { cwd: dir, stdio: "ignore" });
    };
    const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    ossl("req", "-x509", ...ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=test CA");
    writeFileSync(join(dir, "server.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n");
    writeFileSync(join(dir, "client.ext"), "extendedKeyUsage=clientAuth\n");
    for (const who of ["server", "client"]) {
      ossl("req", ...ec, "-keyout", `${who}.key`, "-out", `${who}.csr`, "-subj", `/CN=${who}`);
      ossl("x509", "-req", "-in", `${who}.csr`, "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", `${who}.pem`, "-days", "1", "-extfile", `${who}.ext`);
    }
    server = http2.createSecureServer(
      { key: pem("server.key"), cert: pem("server.pem"), ca: pem("ca.pem"), requestCert: true, rejectUnauthorized: true },
      connectNodeAdapter({ routes }),
    );
    target = `127.0.0.1:${await listen(server)}`;
  });
  after(() => {
    server?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  test("a client certificate and the CA make the call succeed", async () => {
    const client = createClient(target, {
      tls: { ca: pem("ca.pem"), cert: pem("client.pem"), key: pem("client.key") },
      defaultTimeoutMs: 10_000,
    });
    try {
      const res = await client.countTokens({ text: "hello world" });
      assert.equal(res.tokenCount, 2n);
    } finally {
      client.close();
    }
  });

  test("without the client certificate the call fails", async () => {
    const client = createClient(target, { tls: { ca: pem("ca.pem") }, defaultTimeoutMs: 10_000 });
    try {
      await assert.rejects(client.countTokens({ text: "x" }), (err: unknown) => {
        assert.ok(err instanceof ConnectError);
        return true;
      });
    } finally {
      client.close();
    }
  });

  test("without the CA the server is not trusted", async () => {
    const client = createClient(target, { tls: { cert: pem("client.pem"), key: pem("client.key") }, defaultTimeoutMs: 10_000 });
    try {
      await assert.rejects(client.countTokens({ text: "x" }), (err: unknown) => {
        assert.ok(err instanceof ConnectError);
        assert.match(err.message, /certificate/i);
        return true;
      });
    } finally {
      client.close();
    }
  });
});
