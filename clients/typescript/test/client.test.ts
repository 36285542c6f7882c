// Unit tests of the wrapper against an in-process gRPC server on loopback.
import { create } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { type ConnectRouter, type HandlerContext } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import * as http2 from "node:http2";
import * as net from "node:net";
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
  collectConverseStream,
  collectStream,
  ConnectError,
  ContextAssistant,
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
const histories = new Map<string, string[]>(); // the fake's conversations
let conversationSerial = 0;

function conversationNotFound(): ConnectError {
  return new ConnectError("no such conversation", Code.NotFound, undefined, [
    { desc: ErrorInfoSchema, value: { reason: "CONVERSATION_NOT_FOUND", domain: "gpt-grpc" } },
  ]);
}

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
    createConversation(_req, ctx) {
      record("createConversation", ctx);
      const id = `conv_${String(++conversationSerial).padStart(32, "0")}`;
      histories.set(id, []);
      return { conversation: { id } };
    },
    converse(req, ctx) {
      record("converse", ctx);
      const history = histories.get(req.conversationId);
      if (!history) throw conversationNotFound();
      history.push(req.userMessage);
      return { content: `Echo: ${req.userMessage} (turn ${history.length})`, messageCount: 2 * history.length };
    },
    deleteConversation(req, ctx) {
      record("deleteConversation", ctx);
      if (!histories.delete(req.conversationId)) throw conversationNotFound();
      return {};
    },
    async *streamConverse(req, ctx) {
      record("streamConverse", ctx);
      for (const part of ["Echo: ", req.userMessage]) {
        yield { event: { case: "delta", value: { content: part } } };
      }
      yield { event: { case: "summary", value: { messageCount: 2, contextTokens: 12n } } };
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

function listen(server: http2.Http2Server | http2.Http2SecureServer | net.Server): Promise<number> {
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

  test("ContextAssistant keeps one conversation, and starts anew when it is gone", async () => {
    const client = createClient(target, { insecure: true, clientToken: "client", defaultTimeoutMs: 10_000 });
    try {
      const assistant = new ContextAssistant(client, { systemMessage: "Be brief." });
      assert.equal(assistant.conversationId, "");
      const answers = await Promise.all([assistant.ask("one"), assistant.ask("two")]); // one at a time, in order
      assert.deepEqual(answers, ["Echo: one (turn 1)", "Echo: two (turn 2)"]);
      assert.equal(seenAuth.get("converse"), "Bearer client");
      const first = assistant.conversationId;
      await client.deleteConversation({ conversationId: first });
      assert.equal(await assistant.ask("three"), "Echo: three (turn 1)");
      assert.notEqual(assistant.conversationId, first);
      await assistant.reset();
      assert.equal(assistant.conversationId, "");
      assert.equal(histories.size, 0);
    } finally {
      client.close();
    }
  });

  test("collectConverseStream concatenates deltas and returns the turn's summary", async () => {
    const client = createClient(target, { insecure: true });
    try {
      const res = await collectConverseStream(client.streamConverse({ conversationId: "conv_x", userMessage: "hi" }));
      assert.equal(res.content, "Echo: hi");
      assert.equal(res.summary.messageCount, 2);
      assert.equal(res.summary.contextTokens, 12n);
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

  test("without the client certificate the call fails as Unavailable", async () => {
    await assertUnavailable(target, { tls: { ca: pem("ca.pem") } });
  });

  test("without the CA the server is not trusted: Unavailable", async () => {
    const err = await assertUnavailable(target, { tls: { cert: pem("client.pem"), key: pem("client.key") } });
    assert.match(err.message, /certificate/i);
  });

  test("a plaintext client is refused as Unavailable", async () => {
    await assertUnavailable(target, { insecure: true });
  });
});

/** A countTokens call from a client made with options fails as Unavailable, with no reason; returns its error. */
async function assertUnavailable(target: string, options: Parameters<typeof createClient>[1]): Promise<ConnectError> {
  const client = createClient(target, { defaultTimeoutMs: 10_000, ...options });
  try {
    const err = await client.countTokens({ text: "x" }).then(
      () => assert.fail("the call succeeded"),
      (e: unknown) => e,
    );
    assert.ok(err instanceof ConnectError, `not a ConnectError: ${String(err)}`);
    assert.equal(Code[err.code], "Unavailable", err.message);
    const d = errorDetails(err);
    assert.equal(d.code, Code.Unavailable);
    assert.equal(d.reason, "");
    assert.ok(err.cause !== undefined, "the transport error is kept as the cause");
    return err;
  } finally {
    client.close();
  }
}

/** A TCP server: onSocket gets every connection; close() also destroys them. */
function tcpServer(onSocket: (s: net.Socket) => void): { server: net.Server; close(): void } {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    sockets.add(s);
    s.on("error", () => {});
    onSocket(s);
  });
  return {
    server,
    close() {
      for (const s of sockets) s.destroy();
      server.close();
    },
  };
}

// Go and Python report UNAVAILABLE for a connection that fails before the gateway
// answers; Connect-node says Canceled, Internal or Aborted for most of them (the
// wrapper maps them), and Unavailable for a refused connection.
describe("connection failures", () => {
  test("nothing listening on the port: Unavailable (unary and streaming, plaintext and TLS)", async () => {
    const { server, close } = tcpServer(() => {});
    const target = `127.0.0.1:${await listen(server)}`;
    close();
    const err = await assertUnavailable(target, { insecure: true });
    assert.equal((err.cause as NodeJS.ErrnoException).code, "ECONNREFUSED");
    await assertUnavailable(target, {});
    const client = createClient(target, { insecure: true });
    try {
      await assert.rejects(collectStream(client.streamChatCompletion({ userMessage: "x" })), (e: unknown) => {
        assert.equal(errorDetails(e).code, Code.Unavailable);
        return true;
      });
    } finally {
      client.close();
    }
  });

  test("the peer closes the connection before answering: Unavailable, not Canceled", async () => {
    const srv = tcpServer((s) => s.destroy());
    try {
      const err = await assertUnavailable(`127.0.0.1:${await listen(srv.server)}`, { insecure: true });
      assert.match(err.message, /connection closed before the gateway answered/);
    } finally {
      srv.close();
    }
  });

  test("the peer resets the connection: Unavailable, not Aborted", async () => {
    const srv = tcpServer((s) => s.resetAndDestroy());
    try {
      await assertUnavailable(`127.0.0.1:${await listen(srv.server)}`, { insecure: true });
    } finally {
      srv.close();
    }
  });

  test("a peer that does not speak HTTP/2: Unavailable, and close() right after does not crash", async () => {
    const srv = tcpServer((s) => s.end("HTTP/1.1 400 Bad Request\r\n\r\n"));
    try {
      await assertUnavailable(`127.0.0.1:${await listen(srv.server)}`, { insecure: true });
      // Node emits the session's error a tick later; an unhandled one would fail this test.
      await new Promise((resolve) => setTimeout(resolve, 50));
    } finally {
      srv.close();
    }
  });

  test("a caller's abort, deadline or close() stays Canceled / DeadlineExceeded", async () => {
    // Accepts connections and never answers (plaintext: the HTTP/2 stream is open; TLS: the handshake hangs).
    const srv = tcpServer(() => {});
    const target = `127.0.0.1:${await listen(srv.server)}`;
    try {
      for (const options of [{ insecure: true }, {}]) {
        const client = createClient(target, options);
        try {
          const ac = new AbortController();
          setTimeout(() => ac.abort(), 50);
          await assert.rejects(client.countTokens({ text: "x" }, { signal: ac.signal }), (err: unknown) => {
            assert.equal(Code[errorDetails(err).code], "Canceled");
            return true;
          });
          await assert.rejects(client.countTokens({ text: "x" }, { timeoutMs: 50 }), (err: unknown) => {
            assert.equal(Code[errorDetails(err).code], "DeadlineExceeded");
            return true;
          });
          const call = client.countTokens({ text: "x" });
          setTimeout(() => client.close(), 50);
          await assert.rejects(call, (err: unknown) => {
            assert.equal(Code[errorDetails(err).code], "Canceled", String(err));
            return true;
          });
        } finally {
          client.close();
        }
      }
    } finally {
      srv.close();
    }
  });

  test("a stream the server resets on a live connection stays Canceled", async () => {
    const server = http2.createServer();
    server.on("stream", (stream) => stream.close(http2.constants.NGHTTP2_CANCEL));
    const client = createClient(`127.0.0.1:${await listen(server)}`, { insecure: true });
    try {
      await assert.rejects(client.countTokens({ text: "x" }), (err: unknown) => {
        assert.equal(Code[errorDetails(err).code], "Canceled");
        return true;
      });
    } finally {
      client.close();
      server.close();
    }
  });

  test("a status the server sent is kept, with its details (even Canceled or Internal)", async () => {
    for (const code of [Code.Canceled, Code.Internal, Code.Unavailable]) {
      const server = http2.createServer(
        connectNodeAdapter({
          routes(router) {
            router.service(GPTService, {
              countTokens() {
                throw new ConnectError("from the gateway", code, undefined, [
                  { desc: ErrorInfoSchema, value: { reason: "UPSTREAM_UNAVAILABLE", domain: "gpt-grpc" } },
                ]);
              },
            });
          },
        }),
      );
      const client = createClient(`127.0.0.1:${await listen(server)}`, { insecure: true });
      try {
        await assert.rejects(client.countTokens({ text: "x" }), (err: unknown) => {
          const d = errorDetails(err);
          assert.equal(Code[d.code], Code[code]);
          assert.equal(d.message, "from the gateway");
          assert.equal(d.reason, "UPSTREAM_UNAVAILABLE");
          return true;
        });
      } finally {
        client.close();
        server.close();
      }
    }
  });

  test("the caller's interceptors see the mapped error", async () => {
    const { server, close } = tcpServer((s) => s.destroy());
    const seen: Code[] = [];
    const client = createClient(`127.0.0.1:${await listen(server)}`, {
      insecure: true,
      interceptors: [
        (next) => async (req) => {
          try {
            return await next(req);
          } catch (err) {
            seen.push(ConnectError.from(err).code);
            throw err;
          }
        },
      ],
    });
    try {
      await assert.rejects(client.countTokens({ text: "x" }));
      assert.deepEqual(seen.map((c) => Code[c]), ["Unavailable"]);
    } finally {
      client.close();
      close();
    }
  });
});
