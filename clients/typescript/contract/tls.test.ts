// TLS and mutual TLS end to end: the TypeScript client against a gateway that
// the harness starts with certificates made for the run. Run it through the
// harness, once per mode:
//
//   python tests/contract/harness.py --tls  --cwd clients/typescript -- npm run test:tls
//   python tests/contract/harness.py --mtls --cwd clients/typescript -- npm run test:tls
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { Code, collectStream, createClient, errorDetails, type ClientOptions } from "../src/index.js";

const HARNESS = "run it through tests/contract/harness.py --tls or --mtls (make contract-test)";

function env(name: string): string {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set: ${HARNESS}`);
  return v;
}

// Go and Python report UNAVAILABLE for a connection the gateway refused, and so does
// the wrapper: Connect-node itself fails the call as Canceled when the gateway closes
// the connection (plaintext to the TLS port, a missing or untrusted client certificate:
// "http/2 stream closed with error code CANCEL") and as Internal when the gateway's
// certificate does not verify (the TLS error as its cause); createClient maps both.

/** A call from a client made with options must be refused at the connection (UNAVAILABLE): it never reaches the gateway. */
async function refused(target: string, options: ClientOptions): Promise<void> {
  const client = createClient(target, options);
  try {
    await assert.rejects(client.countTokens({ model: "gpt-4", text: "hello world" }, { timeoutMs: 5000 }), (err) => {
      const { code, message, reason } = errorDetails(err);
      assert.equal(Code[code], "Unavailable", `status ${Code[code]} (${message}): not a refused connection`);
      assert.equal(reason, "", `the gateway answered (${reason}): the connection was not refused`);
      return true;
    });
  } finally {
    client.close();
  }
}

test("tls", async (t) => {
  const mode = env("GPT_GRPC_TLS_MODE");
  assert.ok(mode === "tls" || mode === "mtls", `GPT_GRPC_TLS_MODE=${mode}, want tls or mtls`);
  const target = env("GPT_GRPC_TARGET");
  const ca = readFileSync(env("GPT_GRPC_TLS_CA"));
  const cert = readFileSync(env("GPT_GRPC_TLS_CERT"));
  const key = readFileSync(env("GPT_GRPC_TLS_KEY"));
  const rogue = { cert: readFileSync(env("GPT_GRPC_TLS_ROGUE_CERT")), key: readFileSync(env("GPT_GRPC_TLS_ROGUE_KEY")) };
  const clientCert = mode === "mtls" ? { cert, key } : {};

  await t.test("trusted client chats", async () => {
    const client = createClient(target, { tls: { ca, ...clientCert }, defaultTimeoutMs: 10_000 });
    try {
      const res = await client.chatCompletion({ model: "gpt-4o-mini", userMessage: `over ${mode}` });
      assert.equal(res.content, `Echo: over ${mode}`);
      const streamed = await collectStream(client.streamChatCompletion({ model: "gpt-4o-mini", userMessage: "streamed" }));
      assert.equal(streamed.content, "Echo: streamed");
    } finally {
      client.close();
    }
  });
  await t.test("plaintext client refused", () => refused(target, { insecure: true }));
  // Node's root store only: the gateway's certificate does not verify.
  await t.test("client without the CA refused", () => refused(target, { tls: { ...clientCert } }));
  if (mode === "mtls") {
    await t.test("client without a certificate refused", () => refused(target, { tls: { ca } }));
    await t.test("client with an untrusted certificate refused", () => refused(target, { tls: { ca, ...rogue } }));
  }
});
