/**
 * Training throughput of the GPT on random tokens: 3 warm-up steps, then the median step time
 * of `--steps` timed steps, on one backend path.
 *
 * ```sh
 * deno run -A bench/train.ts --vocab 256 --ctx 128 --dim 256 --layers 4 --heads 8 \
 *   --batch 8 --steps 20 --json [--backend blas|wasm|ts|webgpu] [--threads 1]
 * ```
 *
 * Prints one JSON line with `--json`: `backend, threads, params, tokens_per_s,
 * ms_per_step_median, loss_first, loss_last`, and on the CPU `model_gflops` (the step's model
 * FLOP/s: 6 P + 12 L T C per token), `sgemm_gflops` (a 1024 x 1024 x 1024 float32 product on
 * the same backend and threads, the fastest of its runs before and after training) and
 * `sgemm_share`, the first over the second: how close training comes to the machine's matrix
 * rate, measured in the same run.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { WindowSampler } from "../data/mod.ts";
import { initialize } from "../engine/mod.ts";
import { type Backend, createCpuBackend, Rng } from "../kernels/mod.ts";
import { createWebGPUBackend } from "../kernels/webgpu/mod.ts";
import { median } from "./_median.ts";

const WARMUP = 3;
const NUMS = ["vocab", "ctx", "dim", "layers", "heads", "batch", "steps", "threads", "seed"];
const DEFAULTS: Record<string, number> = {
  vocab: 256,
  ctx: 128,
  dim: 256,
  layers: 4,
  heads: 8,
  batch: 8,
  steps: 20,
  threads: 1,
  seed: 0,
};

interface BenchOptions {
  vocab: number;
  ctx: number;
  dim: number;
  layers: number;
  heads: number;
  batch: number;
  steps: number;
  threads: number;
  seed: number;
  backend: string;
  json: boolean;
  help: boolean;
}

function parse(argv: string[]): BenchOptions {
  const options: Record<string, { type: "string" | "boolean" }> = {
    json: { type: "boolean" },
    backend: { type: "string" },
    help: { type: "boolean" },
  };
  for (const k of NUMS) options[k] = { type: "string" };
  let values: Record<string, string | boolean | undefined>;
  try {
    values = parseArgs({ args: argv, options, strict: true, allowPositionals: false }).values;
  } catch (e) {
    throw new TypeError(`${(e as Error).message}. Run with --help to see the options.`);
  }
  const n: Record<string, number> = {};
  for (const k of NUMS) {
    const raw = values[k] as string | undefined;
    const v = raw === undefined ? DEFAULTS[k] : Number(raw);
    if (!Number.isInteger(v) || v < (k === "seed" ? 0 : 1)) {
      throw new TypeError(`--${k} expects a positive integer, got "${raw}"`);
    }
    n[k] = v;
  }
  const backend = (values.backend as string | undefined) ?? "auto";
  if (!["auto", "blas", "wasm", "ts", "webgpu"].includes(backend)) {
    throw new RangeError(`--backend must be auto, blas, wasm, ts or webgpu, got "${backend}"`);
  }
  return {
    ...(n as Omit<BenchOptions, "backend" | "json" | "help">),
    backend,
    json: Boolean(values.json),
    help: Boolean(values.help),
  };
}

async function makeBackend(kind: string, threads: number): Promise<Backend> {
  if (kind === "webgpu") {
    const be = await createWebGPUBackend();
    if (be === null) throw new RangeError("--backend webgpu: no WebGPU adapter in this runtime");
    return be;
  }
  return createCpuBackend({ gemm: kind as "auto", threads });
}

/** GFLOP/s of the fastest of 8 products of 1024 x 1024 x 1024 on `be`. */
async function sgemmGflops(be: Backend): Promise<number> {
  const d = 1024, a = be.alloc(d * d), b = be.alloc(d * d), c = be.alloc(d * d);
  be.fill(a, 0.5);
  be.fill(b, 0.25);
  let best = Infinity;
  for (let i = 0; i < 8; i++) {
    const t = performance.now();
    be.matmul(c, a, b, null, d, d, d);
    await be.read(be.view(c, 0, 1));
    best = Math.min(best, performance.now() - t);
  }
  return 2 * d * d * d / (best * 1e6);
}

if (import.meta.main) {
  let o: BenchOptions;
  try {
    o = parse(Deno.args);
  } catch (e) {
    console.error(`error: ${(e as Error).message}`);
    Deno.exit(2);
  }
  if (o.help) {
    console.log(
      "Usage: deno run -A bench/train.ts [--vocab 256] [--ctx 128] [--dim 256] [--layers 4]\n" +
        "  [--heads 8] [--batch 8] [--steps 20] [--backend auto|blas|wasm|ts|webgpu]\n" +
        "  [--threads 1] [--seed 0] [--json]",
    );
    Deno.exit(0);
  }
  const backend = await makeBackend(o.backend, o.threads);
  const cpu = backend.description.startsWith("cpu");
  const sgemmBefore = cpu ? await sgemmGflops(backend) : NaN;
  const engine = await initialize({
    model: { vocab: o.vocab, ctx: o.ctx, dim: o.dim, layers: o.layers, heads: o.heads },
    train_batch_size: o.batch,
    gradient_clipping: 1,
    optimizer: { type: "AdamW", params: { lr: 1e-3 } },
    seed: o.seed,
  }, { backend });
  const rng = new Rng(o.seed + 1);
  const stream = Int32Array.from({ length: 1 << 16 }, () => rng.int(o.vocab));
  const src = new WindowSampler(stream, o.batch, o.ctx, o.seed + 2);
  const times: number[] = [];
  let lossFirst = NaN, lossLast = NaN;
  for (let i = 0; i < WARMUP + o.steps; i++) {
    const batch = src.next();
    const t = performance.now();
    const r = await engine.trainBatch([batch]);
    const ms = performance.now() - t;
    if (i === 0) lossFirst = r.loss;
    lossLast = r.loss;
    if (i >= WARMUP) times.push(ms);
  }
  const ms = median(times);
  const sgemm = cpu ? Math.max(sgemmBefore, await sgemmGflops(backend)) : NaN;
  const tokensPerS = (o.batch * o.ctx) / (ms / 1000);
  const flopsPerToken = 6 * engine.model.numParams + 12 * o.layers * o.ctx * o.dim;
  const modelGflops = tokensPerS * flopsPerToken / 1e9;
  const result = {
    backend: backend.description,
    threads: o.backend === "webgpu" ? null : o.threads,
    params: engine.model.numParams,
    tokens_per_s: Math.round((o.batch * o.ctx) / (ms / 1000)),
    ms_per_step_median: Math.round(ms * 100) / 100,
    loss_first: lossFirst,
    loss_last: lossLast,
    ...(cpu
      ? {
        model_gflops: Math.round(modelGflops * 10) / 10,
        sgemm_gflops: Math.round(sgemm * 10) / 10,
        sgemm_share: Math.round(modelGflops / sgemm * 1000) / 1000,
      }
      : {}),
  };
  backend.dispose();
  if (o.json) {
    console.log(JSON.stringify(result));
  } else {
    console.log(`${result.backend}`);
    console.log(
      `${result.params.toLocaleString("en-US")} parameters, batch ${o.batch} x ctx ${o.ctx}: ` +
        `${result.tokens_per_s.toLocaleString("en-US")} tokens/s, ` +
        `${result.ms_per_step_median} ms/step (median of ${o.steps} after ${WARMUP} warm-up), ` +
        `loss ${lossFirst.toFixed(3)} -> ${lossLast.toFixed(3)}`,
    );
    if (cpu) {
      console.log(
        `model ${result.model_gflops} GFLOP/s against sgemm ${result.sgemm_gflops} GFLOP/s ` +
          `in this run: ${(100 * result.sgemm_share!).toFixed(1)}% of the matrix rate`,
      );
    }
  }
}
