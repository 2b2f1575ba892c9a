// The WebGPU tests, run in a child process (see tests/_gpu_child.ts for why): the shared op
// suite on both WebGPU kernel families, the WebGPU-specific checks, and the GPT-2 fixture on the
// webgpu backend. Each child test becomes a step here and must pass; the child must exit cleanly.

import assert from "node:assert/strict";

const MODULES = [
  "tests/kernels/ops_test.ts",
  "tests/kernels/_webgpu_checks.ts",
  "tests/models/fixture_test.ts",
];

Deno.test("WebGPU tests pass in a child process", async (t) => {
  const root = new URL("../", import.meta.url);
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "tests/_gpu_child.ts", ...MODULES],
    cwd: root,
    env: { LOOM_TEST_GPU_CHILD: "1", NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  const results: { name: string; ok: boolean; ignored?: boolean; error?: string }[] = [];
  for (const line of text.split("\n")) {
    if (line.startsWith("{")) results.push(JSON.parse(line));
    else if (line.trim()) console.log(line);
  }
  const ran = results.filter((r) => !r.ignored);
  for (const r of ran) await t.step(r.name, () => assert.ok(r.ok, r.error));
  const stderr = new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 0, `the WebGPU child process failed (exit ${out.code}):\n${stderr}`);
  if (ran.length === 0) {
    // Only where this machine has no WebGPU adapter: the modules said so on stdout.
    assert.match(text, /no WebGPU adapter/, `the WebGPU child ran no test:\n${stderr}`);
  }
});
