import assert from "node:assert/strict";

async function probe(lib: string): Promise<{ gemm: string; description: string; why: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL("./_blas_fallback.ts", import.meta.url).pathname],
    env: { LOOM_BLAS_LIB: lib },
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(60_000),
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  return JSON.parse(text.trim().split("\n").at(-1)!);
}

Deno.test("createCpuBackend() falls back to WebAssembly where no BLAS library loads", async () => {
  const missing = await probe("/nonexistent/libopenblas.so.0");
  assert.equal(missing.gemm, "wasm");
  assert.match(missing.description, /WebAssembly SIMD/);
  assert.match(missing.why, /\/nonexistent\/libopenblas\.so\.0/);
  const none = await probe("none");
  assert.equal(none.gemm, "wasm");
});
