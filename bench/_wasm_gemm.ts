/**
 * Measures the WebAssembly GEMM against plain TypeScript: GFLOP/s at square sizes, best of
 * several runs. `deno run -A bench/_wasm_gemm.ts [--fma true|false] [sizes...]`
 *
 * @module
 */
import { createWasmGemm } from "../kernels/cpu/wasm_gemm.ts";
import { tsGemm } from "../kernels/cpu/gemm.ts";

const args = [...Deno.args];
let fma: boolean | undefined;
const fi = args.indexOf("--fma");
if (fi >= 0) {
  fma = args[fi + 1] === "true";
  args.splice(fi, 2);
}
const sizes = args.length ? args.map(Number) : [256, 512, 1024];
const gemm = createWasmGemm(fma === undefined ? {} : { fma });
const rand = (n: number) => Float32Array.from({ length: n }, () => Math.random() - 0.5);

function best(g: typeof gemm, n: number, runs: number): number {
  const a = rand(n * n), b = rand(n * n), c = new Float32Array(n * n);
  let bestMs = Infinity;
  const deadline = performance.now() + 3000;
  for (let r = 0; r < runs || (r < 3 * runs && performance.now() < deadline); r++) {
    const t = performance.now();
    g.sgemm(false, false, n, n, n, 1, a, 0, n, b, 0, n, 0, c, 0, n);
    bestMs = Math.min(bestMs, performance.now() - t);
  }
  return bestMs;
}

for (const n of sizes) {
  const runs = n <= 256 ? 20 : n <= 512 ? 8 : 5;
  const ms = best(gemm, n, runs);
  const tsMs = n <= 512 ? best(tsGemm, n, 2) : NaN;
  const gf = (ms: number) => (2 * n * n * n / ms / 1e6).toFixed(1);
  console.log(
    `n=${n} wasm${gemm.name} fma=${fma ?? "auto"}: ${ms.toFixed(2)} ms ${gf(ms)} GFLOP/s` +
      (n <= 512 ? `  ts: ${gf(tsMs)} GFLOP/s` : ""),
  );
}
