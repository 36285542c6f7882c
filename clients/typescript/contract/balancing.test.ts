// Client-side load balancing against live gateway replicas. Run it through the harness with
// several replicas, which sets GPT_GRPC_TARGETS and GPT_GRPC_METRICS_URLS:
//
//   python tests/contract/harness.py --replicas 3 --cwd clients/typescript -- npm run test:balancing
import assert from "node:assert/strict";
import { test } from "node:test";

import { createClient } from "../src/index.js";

const CALLS = 30;
const TIMEOUT_MS = 10_000;

/** The replica's count of successful CountTokens calls, from its Prometheus metrics. */
async function served(url: string): Promise<number> {
  const res = await fetch(url, { signal: AbortSignal.timeout(TIMEOUT_MS) });
  const text = await res.text();
  for (const line of text.split("\n")) {
    if (line.startsWith("gpt_grpc_calls_total{") && line.includes('method="CountTokens"') && line.includes('code="OK"')) {
      return Number(line.trim().split(/\s+/).at(-1));
    }
  }
  return 0;
}

test("round_robin spreads calls over every live replica", async () => {
  const targets = process.env.GPT_GRPC_TARGETS;
  const urls = process.env.GPT_GRPC_METRICS_URLS?.split(",");
  assert.ok(targets && urls, "GPT_GRPC_TARGETS and GPT_GRPC_METRICS_URLS are not set: run it through tests/contract/harness.py --replicas 3");
  const all = (): Promise<number[]> => Promise.all(urls.map(served));
  const client = createClient(`ipv4:${targets}`, { insecure: true, loadBalancing: "round_robin", defaultTimeoutMs: TIMEOUT_MS });
  try {
    const before = await all();
    for (let i = 0; i < CALLS; i++) {
      const res = await client.countTokens({ text: "spread me", model: "gpt-4o-mini" });
      assert.ok(res.tokenCount > 0n);
    }
    const after = await all();
    const spread = after.map((n, i) => n - before[i]!);
    assert.equal(spread.reduce((a, b) => a + b, 0), CALLS, `${spread}`);
    assert.ok(spread.every((n) => n === CALLS / urls.length), `calls per replica: ${spread}`);
    console.log(`calls per replica: ${spread}`);
  } finally {
    client.close();
  }
});
