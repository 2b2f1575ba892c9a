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
 * `--ops` adds the other ops of one layer of that GPT (attention, GELU, layernorm, cross-entropy)
 * and AdamW over its parameters (`gflops` is null where a FLOP count says nothing).
 *
 * @module
 */

import {
  type Backend,
  blasLoadError,
  createCpuBackend,
  loadBlas,
  type MatmulOptions,
  Rng,
  setBlasThreads,
  type Tensor,
} from "../kernels/mod.ts";
import { createWebGPUBackend } from "../kernels/webgpu/mod.ts";

interface Shape {
  op: string;
  M: number;
  N: number;
  K: number;
  opts: MatmulOptions;
}

/** One timed operation: `setup` allocates and fills its tensors and returns the step to time. */
interface Job {
  op: string;
  shape: string;
  /** Floating-point operations of one step, or null where GFLOP/s says nothing. */
  flops: number | null;
  setup(be: Backend): { step: () => void; probe: Tensor };
}

const args = Deno.args;
const json = args.includes("--json");
const quick = args.includes("--quick");
const withOps = args.includes("--ops");
const pick = args.find((_, i) => args[i - 1] === "--backend") ??
  args.find((a) => a.startsWith("--backend="))?.slice(10) ?? "ts,wasm,blas,webgpu";
const wanted = new Set(pick.split(","));
for (const a of args) {
  if (
    a.startsWith("--") && !["--json", "--quick", "--ops", "--backend"].includes(a.split("=")[0])
  ) {
    console.error(
      `Unknown option ${a}. Usage: bench/kernels.ts [--json] [--quick] [--ops] [--backend ts,wasm,blas,webgpu]`,
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

function filled(be: Backend, n: number, seed: number, scale = 1): Tensor {
  const rng = new Rng(seed), a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = (rng.uniform() * 2 - 1) * scale;
  const t = be.alloc(n);
  be.write(t, a);
  return t;
}

function matmulJob(s: Shape): Job {
  return {
    op: s.op,
    shape: shapeName(s),
    flops: 2 * s.M * s.N * s.K,
    setup(be) {
      const a = filled(be, s.M * s.K, 1), b = filled(be, s.K * s.N, 2), c = be.alloc(s.M * s.N);
      return { step: () => be.matmul(c, a, b, null, s.M, s.N, s.K, s.opts), probe: c };
    },
  };
}

const jobs: Job[] = shapes.map(matmulJob);
if (withOps) {
  // The other ops of one layer of that GPT (B = 8, T = 128, C = 256, H = 8), and AdamW over
  // its 3.26 M parameters.
  const B = 8, T = 128, C = 256, H = 8, N = B * T, V = 256, P = 3_257_856;
  const attShape = `B=${B} T=${T} C=${C} H=${H}`;
  const attFlops = 4 * B * H * T * T * (C / H); // two T x T x hs products, full blocks
  jobs.push(
    {
      op: "attention.fwd",
      shape: attShape,
      flops: attFlops,
      setup(be) {
        const qkv = filled(be, N * 3 * C, 3), out = be.alloc(N * C), att = be.alloc(B * H * T * T);
        return { step: () => be.attentionForward(out, att, qkv, B, T, C, H), probe: out };
      },
    },
    {
      op: "attention.bwd",
      shape: attShape,
      flops: 2 * attFlops,
      setup(be) {
        const qkv = filled(be, N * 3 * C, 3), out = be.alloc(N * C), att = be.alloc(B * H * T * T);
        be.attentionForward(out, att, qkv, B, T, C, H);
        const dout = filled(be, N * C, 4), dqkv = be.alloc(N * 3 * C);
        return {
          step: () => be.attentionBackward(dqkv, dout, qkv, att, B, T, C, H),
          probe: dqkv,
        };
      },
    },
    {
      op: "gelu.fwd+bwd",
      shape: `n=${N * 4 * C}`,
      flops: null,
      setup(be) {
        const n = N * 4 * C, x = filled(be, n, 5, 3), y = be.alloc(n), d = be.alloc(n);
        return {
          step: () => {
            be.geluForward(y, x, n);
            be.geluBackward(d, x, y, n);
          },
          probe: d,
        };
      },
    },
    {
      op: "layernorm.fwd+bwd",
      shape: `N=${N} C=${C}`,
      flops: null,
      setup(be) {
        const x = filled(be, N * C, 6), w = filled(be, C, 7), b = filled(be, C, 8);
        const y = be.alloc(N * C), mean = be.alloc(N), rstd = be.alloc(N);
        const dx = be.alloc(N * C), dw = be.alloc(C), db = be.alloc(C);
        return {
          step: () => {
            be.layernormForward(y, mean, rstd, x, w, b, N, C);
            be.layernormBackward(dx, dw, db, y, x, w, mean, rstd, N, C);
          },
          probe: dx,
        };
      },
    },
    {
      op: "crossentropy.fwd+bwd",
      shape: `N=${N} V=${V}`,
      flops: null,
      setup(be) {
        const logits = filled(be, N * V, 9, 4), probs = be.alloc(N * V), losses = be.alloc(N);
        const targets = be.alloc(N, "i32"), dlogits = be.alloc(N * V);
        be.write(targets, new Int32Array(N).map((_, i) => (i * 31) % V));
        return {
          step: () => {
            be.crossEntropyForward(losses, probs, logits, targets, N, V);
            be.crossEntropyBackward(dlogits, probs, targets, 1 / N, N, V);
          },
          probe: dlogits,
        };
      },
    },
    {
      op: "adamw",
      shape: `n=${P}`,
      flops: null,
      setup(be) {
        const p = filled(be, P, 10), g = filled(be, P, 11), m = be.alloc(P), v = be.alloc(P);
        let step = 0;
        const hp = { lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, step: 1 };
        return { step: () => be.adamw(p, g, m, v, P, { ...hp, step: ++step }), probe: p };
      },
    },
  );
}

type Sync = (t: Tensor) => Promise<unknown>;

/**
 * Median milliseconds of one step of `job` on `be`: each sample runs `reps` steps, then `sync`
 * (which waits for queued work), and divides.
 */
async function time(be: Backend, job: Job, sync: Sync, reps = 1): Promise<number> {
  const { step, probe } = job.setup(be);
  step(); // warm-up
  await sync(probe);
  const times: number[] = [];
  const start = performance.now();
  while (times.length < 3 || (performance.now() - start < 300 && times.length < 50)) {
    const t0 = performance.now();
    for (let r = 0; r < reps; r++) step();
    await sync(probe);
    times.push((performance.now() - t0) / reps);
  }
  times.sort((x, y) => x - y);
  return times[times.length >> 1];
}

function report(backend: string, job: Job, ms: number, extra: Record<string, string> = {}): void {
  const gflops = job.flops === null ? null : job.flops / (ms * 1e6);
  if (json) {
    console.log(JSON.stringify({
      backend,
      op: job.op,
      shape: job.shape,
      ms: +ms.toFixed(3),
      gflops: gflops === null ? null : +gflops.toFixed(2),
      ...extra,
    }));
  } else {
    console.log(
      `${backend.padEnd(7)} ${job.op.padEnd(20)} ${job.shape.padEnd(22)} ` +
        `${ms.toFixed(3).padStart(10)} ms` +
        (gflops === null ? "" : ` ${gflops.toFixed(2).padStart(8)} GFLOP/s`),
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
  for (const job of jobs) report(name, job, await time(be, job, noSync), extra);
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
    for (const job of jobs) report("webgpu", job, await time(g, job, sync, 5));
    g.dispose();
  }
}
