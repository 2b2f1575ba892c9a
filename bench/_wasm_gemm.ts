/**
 * Measures the WebAssembly GEMM (relaxed FMA and mul+add) against plain TypeScript measured in
 * the same run: GFLOP/s of C = A @ B at square sizes, best of several runs (the machine may be
 * shared, so the best run is the one least disturbed).
 *
 * `deno run -A bench/_wasm_gemm.ts [sizes...]` (default 256 512 1024)
 *
 * @module
 */
import { createWasmGemm } from "../kernels/cpu/wasm_gemm.ts";
import { type Gemm, tsGemm } from "../kernels/cpu/gemm.ts";
import { hasRelaxedSimd } from "../kernels/cpu/_wasm_gemm_module.ts";

const sizes = Deno.args.length ? Deno.args.map(Number) : [256, 512, 1024];

function rand(n: number): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.random() - 0.5;
  return out;
}

/** Best time in ms of `runs` calls (more while under one second). */
function best(g: Gemm, n: number, runs: number): number {
  const a = rand(n * n), b = rand(n * n), c = new Float32Array(n * n);
  g.sgemm(false, false, n, n, n, 1, a, 0, n, b, 0, n, 0, c, 0, n);
  let ms = Infinity;
  const until = performance.now() + 1000;
  for (let r = 0; r < runs || performance.now() < until; r++) {
    const t = performance.now();
    g.sgemm(false, false, n, n, n, 1, a, 0, n, b, 0, n, 0, c, 0, n);
    ms = Math.min(ms, performance.now() - t);
  }
  return ms;
}

const variants: [string, Gemm][] = [["wasm mul+add", createWasmGemm({ fma: false })]];
if (hasRelaxedSimd()) variants.unshift(["wasm relaxed fma", createWasmGemm({ fma: true })]);
variants.push(["ts", tsGemm]);

for (const n of sizes) {
  const flop = 2 * n * n * n;
  const line = [`n=${n}`];
  for (const [label, g] of variants) {
    if (g === tsGemm && n > 512) continue;
    const ms = best(g, n, g === tsGemm ? 2 : 5);
    line.push(`${label} ${(flop / ms / 1e6).toFixed(1)} GFLOP/s (${ms.toFixed(2)} ms)`);
  }
  console.log(line.join("  "));
}
