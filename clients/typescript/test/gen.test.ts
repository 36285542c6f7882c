// Fails when the committed generated code (src/gen) differs from what
// clients/gen.sh produces now from proto/.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

// build/test/gen.test.js -> repository root
const root = fileURLToPath(new URL("../../../../", import.meta.url));
const generatedDir = "clients/typescript/src/gen";

function readTree(dir: string): Map<string, Buffer> {
  const files = new Map<string, Buffer>();
  const walk = (d: string): void => {
    for (const name of readdirSync(d)) {
      const p = join(d, name);
      if (statSync(p).isDirectory()) walk(p);
      else files.set(relative(dir, p), readFileSync(p));
    }
  };
  walk(dir);
  return files;
}

test("generated TypeScript code is fresh", () => {
  const out = mkdtempSync(join(tmpdir(), "gptgrpc-gen-"));
  try {
    try {
      execFileSync("bash", [join(root, "clients/gen.sh"), "--only", "ts", "--out", out], {
        cwd: root,
        stdio: ["ignore", "pipe", "pipe"],
      });
    } catch (e) {
      const err = e as { stderr?: Buffer; message: string };
      throw new Error(`clients/gen.sh failed (run 'make clients-install' first?): ${err.stderr?.toString() ?? err.message}`);
    }
    const want = readTree(join(out, generatedDir));
    const got = readTree(join(root, generatedDir));
    const problems: string[] = [];
    for (const [name, bytes] of want) {
      const have = got.get(name);
      if (!have) problems.push(`${generatedDir}/${name} is missing`);
      else if (!have.equals(bytes)) problems.push(`${generatedDir}/${name} differs from the generated code`);
    }
    for (const name of got.keys()) {
      if (!want.has(name)) problems.push(`${generatedDir}/${name} is not generated from proto/ any more`);
    }
    if (problems.length > 0) {
      throw new Error(`generated TypeScript code is stale: run make proto\n  ${problems.join("\n  ")}`);
    }
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});
