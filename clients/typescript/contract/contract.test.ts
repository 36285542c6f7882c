// The TypeScript runner of tests/contract/cases.json. Run it through the
// harness, which starts the stand-in and the gateway and sets the environment:
//
//   python tests/contract/harness.py --cwd clients/typescript -- npm run test:contract
import {
  fromJson,
  toJson,
  type DescMessage,
  type DescMethod,
  type DescMethodStreaming,
  type DescMethodUnary,
  type JsonValue,
  type Message,
} from "@bufbuild/protobuf";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import {
  BadRequestSchema,
  Code,
  ConnectError,
  createClient,
  ERROR_DOMAIN,
  ErrorInfoSchema,
  ErrorReasonSchema,
  GPTService,
  RetryInfoSchema,
  type GPTClient,
} from "../src/index.js";
import { match, savedValue, type Json } from "./match.js";

interface ContractCase {
  name: string;
  rpc: string;
  metadata?: Record<string, string>;
  faults?: Json[];
  request?: Json;
  timeout_ms?: number;
  save?: Record<string, string>;
  expect: {
    code: string;
    reason?: string;
    response?: Json;
    stream?: { content?: string; min_deltas?: number; summary?: Json };
    error?: Json;
    upstream_chat_requests?: number;
    upstream_request?: Json;
  };
}

interface CaseFile {
  schema: number;
  service: string;
  defaults: { timeout_ms: number };
  cases: ContractCase[];
}

const HARNESS =
  "run it through tests/contract/harness.py (make contract-test), which starts the stand-in and the gateway";
const jsonOut = { useProtoFieldName: true, alwaysEmitImplicit: true } as const;

// gRPC code names as in google.rpc.Code ("INVALID_ARGUMENT"); Connect's Code has the same numbers.
function codeName(code: Code): string {
  if (code === Code.Canceled) return "CANCELLED";
  return Code[code].replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

function requireEnv(name: string): string {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set: ${HARNESS}`);
  return v;
}

/** Substitutes ${NAME}: a variable saved by an earlier case, else an environment variable. */
function expandVars(value: string, saved: Map<string, string>): string {
  return value.replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)\}/g, (_m, name: string) => {
    const v = saved.get(name) ?? process.env[name];
    if (v === undefined) throw new Error(`metadata refers to \${${name}}, which is neither saved by an earlier case nor set`);
    return v;
  });
}

async function standin(url: string, body?: unknown): Promise<unknown> {
  const res = await fetch(url, {
    method: body === undefined ? "GET" : "POST",
    headers: { "content-type": "application/json" },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    signal: AbortSignal.timeout(10_000),
  });
  const text = await res.text();
  if (res.status !== 200) throw new Error(`stand-in ${url}: HTTP ${res.status} ${text}`);
  return JSON.parse(text) as unknown;
}

function check(what: string, pattern: Json | undefined, actual: unknown): void {
  if (pattern === undefined) return;
  const err = match(what, pattern, actual);
  if (err) assert.fail(`${err}\nactual ${what}: ${JSON.stringify(actual)}`);
}

function errorView(err: ConnectError): Record<string, Json> {
  const view: Record<string, Json> = { code: codeName(err.code), message: err.rawMessage };
  const first = <D extends DescMessage>(desc: D, key: string): void => {
    const found = err.findDetails(desc)[0];
    if (found) view[key] = toJson(desc, found, jsonOut) as Json;
  };
  first(ErrorInfoSchema, "error_info");
  first(RetryInfoSchema, "retry_info");
  first(BadRequestSchema, "bad_request");
  return view;
}

function checkErrorInvariants(err: ConnectError, view: Record<string, Json>): void {
  const infos = err.findDetails(ErrorInfoSchema);
  assert.equal(infos.length, 1, `the status carries ${infos.length} google.rpc.ErrorInfo, want exactly 1 (${err.message})`);
  const info = infos[0]!;
  assert.equal(info.domain, ERROR_DOMAIN, "ErrorInfo.domain");
  const reason = ErrorReasonSchema.values.find((v) => v.name === info.reason);
  assert.ok(reason && reason.number !== 0, `ErrorInfo.reason ${JSON.stringify(info.reason)} is not a gptgrpc.v1.ErrorReason name`);
  const httpStatus = info.metadata["http_status"];
  if (httpStatus !== undefined) {
    assert.match(httpStatus, /^[1-5][0-9][0-9]$/, "ErrorInfo.metadata.http_status");
  }
  void view;
}

async function call(
  client: GPTClient,
  method: DescMethod,
  request: Message,
  headers: Headers,
  timeoutMs: number,
): Promise<Message[]> {
  const transport = client.transport;
  switch (method.methodKind) {
    case "unary": {
      const res = await transport.unary(method as DescMethodUnary, undefined, timeoutMs, headers, request);
      return [res.message];
    }
    case "server_streaming": {
      const input = (async function* () {
        yield request;
      })();
      const res = await transport.stream(method as DescMethodStreaming, undefined, timeoutMs, headers, input);
      const out: Message[] = [];
      for await (const m of res.message) out.push(m);
      return out;
    }
    default:
      throw new Error(`${method.name}: ${method.methodKind} methods are not supported by this runner`);
  }
}

function checkStream(method: DescMethod, responses: Message[], exp: NonNullable<ContractCase["expect"]["stream"]>): void {
  assert.ok(responses.length > 0, "the stream sent no message");
  let content = "";
  let deltas = 0;
  let summary: Json | undefined;
  responses.forEach((r, i) => {
    const m = toJson(method.output, r, jsonOut) as Record<string, Json>;
    const last = i === responses.length - 1;
    const delta = m["delta"];
    if (delta !== undefined && !last) {
      deltas++;
      const c = (delta as Record<string, Json>)["content"];
      content += typeof c === "string" ? c : "";
    } else if (m["summary"] !== undefined && last) {
      summary = m["summary"];
    } else {
      assert.fail(`stream message ${i + 1} of ${responses.length} is ${JSON.stringify(m)}: want deltas, then one summary last`);
    }
  });
  assert.ok(summary !== undefined, "the stream ended without a summary");
  if (exp.content !== undefined) assert.equal(content, exp.content, "deltas concatenated");
  assert.ok(deltas >= (exp.min_deltas ?? 0), `${deltas} deltas, want at least ${exp.min_deltas}`);
  check("summary", exp.summary, summary);
}

test("contract", async (t) => {
  const target = requireEnv("GPT_GRPC_TARGET");
  const standinUrl = requireEnv("STANDIN_URL").replace(/\/+$/, "");
  requireEnv("GPT_GRPC_ADMIN_TOKEN");
  const root = fileURLToPath(new URL("../../../../", import.meta.url)); // build/contract -> repo root
  const path = process.env["CONTRACT_CASES"] || `${root}tests/contract/cases.json`;
  const file = JSON.parse(readFileSync(path, "utf8")) as CaseFile;
  assert.equal(file.schema, 1, `${path}: schema`);
  assert.equal(file.service, GPTService.typeName, `${path}: service`);
  assert.ok(file.cases.length > 0, `${path}: no cases`);
  assert.equal(new Set(file.cases.map((c) => c.name)).size, file.cases.length, "duplicate case names");

  const client = createClient(target, { insecure: true });
  const saved = new Map<string, string>(); // variables saved by earlier cases ("save")
  try {
    for (const c of file.cases) {
      await t.test(c.name, async () => {
        const exp = c.expect;
        const method = GPTService.methods.find((m) => m.name === c.rpc);
        assert.ok(method, `rpc ${c.rpc} is not a method of ${GPTService.typeName}`);
        if (exp.code !== "OK") assert.ok(exp.reason, `expect.reason is required with code ${exp.code}`);
        const save = Object.entries(c.save ?? {});
        if (save.length > 0) {
          assert.ok(exp.code === "OK" && method.methodKind === "unary", "save needs expect.code OK on a unary RPC");
          for (const [name] of save) assert.match(name, /^[A-Za-z_][A-Za-z0-9_]*$/, "save: variable name");
        }
        const request = fromJson(method.input, (c.request ?? {}) as JsonValue);

        await standin(`${standinUrl}/_standin/reset`, {});
        if (c.faults && c.faults.length > 0) await standin(`${standinUrl}/_standin/faults`, { faults: c.faults });

        const headers = new Headers();
        for (const [k, v] of Object.entries(c.metadata ?? {})) headers.append(k, expandVars(v, saved));
        let responses: Message[] = [];
        let error: ConnectError | undefined;
        try {
          responses = await call(client, method, request, headers, c.timeout_ms ?? file.defaults.timeout_ms);
        } catch (e) {
          error = ConnectError.from(e);
        }

        if (error === undefined) {
          assert.equal("OK", exp.code, `status OK, want ${exp.code}`);
          if (exp.stream) {
            checkStream(method, responses, exp.stream);
          } else if (exp.response !== undefined) {
            assert.equal(responses.length, 1, "want one response");
            check("response", exp.response, toJson(method.output, responses[0]!, jsonOut));
          }
        } else {
          const view = errorView(error);
          assert.equal(codeName(error.code), exp.code, `status ${codeName(error.code)} (${JSON.stringify(error.rawMessage)}), want ${exp.code}; details ${JSON.stringify(view)}`);
          checkErrorInvariants(error, view);
          assert.equal((view["error_info"] as Record<string, Json>)["reason"], exp.reason, "ErrorInfo.reason");
          check("error", exp.error, view);
        }

        if (exp.upstream_chat_requests !== undefined) {
          const stats = (await standin(`${standinUrl}/_standin/stats`)) as { requests: number };
          assert.equal(stats.requests, exp.upstream_chat_requests, "chat requests the stand-in received");
        }
        if (exp.upstream_request !== undefined) {
          const records = (await standin(`${standinUrl}/_standin/requests`)) as Array<{ body: unknown }>;
          assert.ok(records.length > 0, "the stand-in recorded no chat request");
          check("upstream_request", exp.upstream_request, records[records.length - 1]!.body);
        }

        // 5: save values for later cases (every check above passed: they throw).
        if (save.length > 0) {
          const view = toJson(method.output, responses[0]!, jsonOut);
          for (const [name, path] of save) saved.set(name, savedValue(view, path));
        }
      });
    }
  } finally {
    client.close();
  }
});
