/**
 * Matrix-product throughput of every backend, one thread each:
 *
 *   deno run -A bench/kernels.ts [--json] [--backend ts,wasm,blas,webgpu] [--quick]
 *
 * Shapes: square 256, 512, 1024, then the products of one training step of the GPT that
 * `bench/train.ts` trains (B*T = 1024 rows, C = 256, vocabulary 256): the qkv, attention-output,
 * MLP and LM-head products forward, and the weight-gradient (transA) and input-gradient (transB)
 * products backward. Each figure is the median of repeated runs (at least 3, for at least
 * 0.3 s). `--json` prints one object per line: `{backend, op, shape, ms, gflops}` (blas lines
 * add `core`, the kernel set OpenBLAS picked). `--quick` stops at 512 and skips the GPT shapes.
 *
 * @module
 */

import {
  type Backend,
  blasLoadError,
  createCpuBackend,
  loadBlas,
  type MatmulOptions,
  setBlasThreads,
} from "../kernels/mod.ts";
import { createWebGPUBackend } from "../kernels/webgpu/mod.ts";

interface Shape {
  op: string;
  M: number;
  N: number;
  K: number;
  opts: MatmulOptions;
}

const args = Deno.args;
const json = args.includes("--json");
const quick = args.includes("--quick");
const pick = args.find((_, i) => args[i - 1] === "--backend") ??
  args.find((a) => a.startsWith("--backend="))?.slice(10) ?? "ts,wasm,blas,webgpu";
const wanted = new Set(pick.split(","));
for (const a of args) {
  if (a.startsWith("--") && !["--json", "--quick", "--backend"].includes(a.split("=")[0])) {
    console.error(
      `Unknown option ${a}. Usage: bench/kernels.ts [--json] [--quick] [--backend ts,wasm,blas,webgpu]`,
    );
    Deno.exit(2);
  }
}
for (const b of wanted) {
  if (!["ts", "wasm", "blas", "webgpu"].includes(b)) {
    console.error(`Unknown backend "${b}": choose from ts, wasm, blas, webgpu`);
    Deno.exit(2);
  }
}

const shapes: Shape[] = [];
for (const n of quick ? [256, 512] : [256, 512, 1024]) {
  shapes.push({ op: "matmul", M: n, N: n, K: n, opts: {} });
}
if (!quick) {
  const R = 1024, C = 256, V = 256;
  shapes.push(
    { op: "gpt.qkv", M: R, N: 3 * C, K: C, opts: {} },
    { op: "gpt.attn_proj", M: R, N: C, K: C, opts: {} },
    { op: "gpt.mlp_fc", M: R, N: 4 * C, K: C, opts: {} },
    { op: "gpt.mlp_proj", M: R, N: C, K: 4 * C, opts: {} },
    { op: "gpt.lm_head", M: R, N: V, K: C, opts: { transB: true } },
    { op: "gpt.mlp_fc.dW", M: C, N: 4 * C, K: R, opts: { transA: true, accumulate: true } },
    { op: "gpt.mlp_fc.dX", M: R, N: C, K: 4 * C, opts: { transB: true, accumulate: true } },
  );
}

function shapeName(s: Shape): string {
  const t = (s.opts.transA ? "T" : "N") + (s.opts.transB ? "T" : "N");
  return `${s.M}x${s.N}x${s.K}${t === "NN" ? "" : ` ${t}`}`;
}

type Sync = (t: ReturnType<Backend["alloc"]>) => Promise<unknown>;

/**
 * Median milliseconds of one matmul of `s` on `be`: each sample runs `reps` products, then
 * `sync` (which waits for queued work), and divides.
 */
async function time(be: Backend, s: Shape, sync: Sync, reps = 1): Promise<number> {
  const a = be.alloc(s.M * s.K), b = be.alloc(s.K * s.N), c = be.alloc(s.M * s.N);
  const fillA = new Float32Array(s.M * s.K).map((_, i) => ((i * 7919) % 1000) / 1000 - 0.5);
  const fillB = new Float32Array(s.K * s.N).map((_, i) => ((i * 104729) % 1000) / 1000 - 0.5);
  be.write(a, fillA);
  be.write(b, fillB);
  be.matmul(c, a, b, null, s.M, s.N, s.K, s.opts); // warm-up
  await sync(c);
  const times: number[] = [];
  const start = performance.now();
  while (times.length < 3 || (performance.now() - start < 300 && times.length < 50)) {
    const t0 = performance.now();
    for (let r = 0; r < reps; r++) be.matmul(c, a, b, null, s.M, s.N, s.K, s.opts);
    await sync(c);
    times.push((performance.now() - t0) / reps);
  }
  times.sort((x, y) => x - y);
  return times[times.length >> 1];
}

function report(backend: string, s: Shape, ms: number, extra: Record<string, string> = {}): void {
  const gflops = (2 * s.M * s.N * s.K) / (ms * 1e6);
  if (json) {
    console.log(JSON.stringify({
      backend,
      op: s.op,
      shape: shapeName(s),
      ms: +ms.toFixed(3),
      gflops: +gflops.toFixed(2),
      ...extra,
    }));
  } else {
    console.log(
      `${backend.padEnd(7)} ${s.op.padEnd(14)} ${shapeName(s).padEnd(18)} ` +
        `${ms.toFixed(3).padStart(10)} ms ${gflops.toFixed(2).padStart(8)} GFLOP/s`,
    );
  }
}

function note(line: string): void {
  if (json) console.error(line);
  else console.log(line);
}

const env = ["OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS"]
  .map((k) => `${k}=${Deno.env.get(k) ?? "(unset)"}`).join(" ");
const noSync = () => Promise.resolve();

for (const name of ["ts", "wasm", "blas"] as const) {
  if (!wanted.has(name)) continue;
  const extra: Record<string, string> = {};
  if (name === "blas") {
    const blas = loadBlas();
    if (!blas) {
      note(`blas: skipped, no BLAS library loads (${blasLoadError()})`);
      continue;
    }
    setBlasThreads(1);
    extra.core = blas.info.corename ?? "n/a";
    note(
      `blas: ${blas.info.library}, core type ${blas.info.corename ?? "n/a"}, ` +
        `config "${blas.info.config ?? "n/a"}"; ${env}`,
    );
  }
  const be = createCpuBackend({ gemm: name, ...(name === "blas" ? { threads: 1 } : {}) });
  note(`${name}: ${be.description}`);
  for (const s of shapes) report(name, s, await time(be, s, noSync), extra);
  be.dispose();
}

if (wanted.has("webgpu")) {
  // One rasteriser thread for llvmpipe, set before the adapter exists (Mesa reads it then).
  if (Deno.env.get("LP_NUM_THREADS") === undefined) Deno.env.set("LP_NUM_THREADS", "1");
  const gpu = await createWebGPUBackend();
  const why = "no WebGPU adapter on this machine";
  if (!gpu) {
    note(`webgpu: skipped, ${why}`);
  } else {
    const g = gpu;
    note(`webgpu: ${g.description}; LP_NUM_THREADS=${Deno.env.get("LP_NUM_THREADS")}`);
    // A read waits for the products; each readback costs about 10 ms in Deno, so one read
    // follows 5 products.
    const sync: Sync = async (c) => await g.read(g.view(c, 0, 1));
    for (const s of shapes) report("webgpu", s, await time(g, s, sync, 5));
    g.dispose();
  }
}
