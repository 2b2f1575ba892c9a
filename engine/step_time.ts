/**
 * Predicting a training step's time before a run: the work of every op of one rank's share of
 * the GPT (matrix products by their shapes, the element-wise ops by their sizes), the
 * collectives each layout adds, and the pipeline's bubble, priced with rates measured on this
 * machine ({@linkcode calibrate}, cached as JSON by `plan.ts --calibrate`).
 *
 * The formulas (milliseconds; n = micro-batch tokens b T, C the width, F the MLP width, V the
 * vocabulary, p pipeline stages, m micro-batches, v virtual stages, N ranks of a collective):
 * - a ring all-reduce of B bytes: 2 (N-1) alpha + 2 (N-1)/N B / beta; a reduce-scatter or an
 *   all-gather half of it ({@linkcode ringAllReduceMs}, {@linkcode ringHalfMs});
 * - tensor parallelism: two all-reduces of n C values per block in forward, two in backward;
 * - data parallelism: the gradients' all-reduce (ZeRO 0-1) or reduce-scatter (ZeRO 2-3), then
 *   ZeRO 1-3's all-gather of the updated parameters, and ZeRO 3's all-gather of every block's
 *   parameters before its forward and again before its backward;
 * - a pipeline step is its schedule run in simulation ({@linkcode simulateSchedule}) with each
 *   chunk's own time (the first holds the embedding, the last the head, each chunk its
 *   all-reduces and its transfer in and out): on balanced stages (p - 1) of its (m v + p - 1)
 *   chunk times are the bubble, (p - 1) / (m v + p - 1) of the step
 *   ({@linkcode theoreticalBubble}), and imbalance and the schedule's own waits add to it;
 * - activation checkpointing runs each checkpointed block's forward again in backward;
 * - k ranks computing at once on one machine each run slower by the measured sharing factor
 *   (and by k / cores where they outnumber the cores);
 * - over several nodes (ranks laid out in the grid's tp-dp-pp order, node by node), a group
 *   that spans nodes runs its ring at the node link: the slower latency of the two, and the
 *   node's bandwidth divided among the groups of its kind that leave one node at once.
 *
 * @module
 */
import type { Backend, TensorDType } from "../kernels/mod.ts";
import { buildSchedule } from "../parallel/schedules.ts";
import { simulateSchedule } from "../parallel/simulate.ts";

/** The machine's measured rates, as `plan.ts --calibrate` caches them. */
export interface Calibration {
  /** Format version (2: 16-bit products and attention measured on their own). */
  version: 2;
  /** When it was measured (ISO time). */
  measured: string;
  /** The machine's cores. */
  cores: number;
  /** Per BLAS thread count: the compute rates at that count. */
  compute: Record<string, ComputeRates>;
  /** Collective costs between Worker ranks over shared memory, per rank count. */
  links: Record<string, LinkRates>;
  /**
   * Per rank count k: how much longer one thread's work takes while k ranks compute at once
   * (they share the cores' caches, memory bandwidth and, with hyperthreads, the cores).
   */
  sharing: Record<string, number>;
}

/** Compute rates at one thread count. */
export interface ComputeRates {
  /** Matrix products: [smallest dimension, GFLOP/s] pairs, ascending. */
  matmul: [number, number][];
  /** Nanoseconds per element of element-wise work (layernorm, GELU, softmax, adds, loss). */
  elementNs: number;
  /** Nanoseconds per score of attention (B H T^2 scores: the products, softmax and back). */
  attentionNs: number;
  /** Nanoseconds per parameter of an AdamW step. */
  adamwNs: number;
  /** Milliseconds each op costs beyond its arithmetic (dispatch, checks). */
  opOverheadMs: number;
  /** How much slower 16-bit activations make the element-wise work (widening, rounding). */
  halfFactor: number;
  /**
   * Matrix products of 16-bit operands (each widened to float32 around the product, the result
   * rounded back): [smallest dimension, GFLOP/s] pairs, on the ladder of `matmul`.
   */
  halfMatmul: [number, number][];
  /** Nanoseconds per score of attention on 16-bit activations. */
  halfAttentionNs: number;
}

/** Costs of collectives among N ranks: latency per message and bandwidth. */
export interface LinkRates {
  /** Milliseconds per ring step of a collective, and per point-to-point message. */
  alphaMs: number;
  /** Bytes per millisecond a ring step moves. */
  bytesPerMs: number;
}

/**
 * The theoretical bubble of a schedule, as a fraction of the step: (p - 1) / (m + p - 1) for
 * GPipe and 1F1B, (p - 1) / (v m + p - 1) interleaved over v virtual stages.
 *
 * @param pp stages
 * @param microBatches micro-batches per step
 * @param virtualStages chunks per rank
 * @returns the idle fraction of each stage in a perfectly balanced pipeline
 */
export function theoreticalBubble(pp: number, microBatches: number, virtualStages = 1): number {
  return (pp - 1) / (virtualStages * microBatches + pp - 1);
}

/**
 * A ring all-reduce of `bytes` among `n` ranks: 2 (n - 1) steps, each a latency and a
 * 1/n-th of the buffer.
 *
 * @param bytes buffer size
 * @param n ranks
 * @param link the link's latency and bandwidth
 * @returns milliseconds
 */
export function ringAllReduceMs(bytes: number, n: number, link: LinkRates): number {
  if (n <= 1) return 0;
  return 2 * (n - 1) * link.alphaMs + 2 * (n - 1) / n * bytes / link.bytesPerMs;
}

/**
 * A ring reduce-scatter or all-gather of `bytes` (the whole buffer) among `n` ranks: half an
 * all-reduce.
 *
 * @param bytes buffer size
 * @param n ranks
 * @param link the link
 * @returns milliseconds
 */
export function ringHalfMs(bytes: number, n: number, link: LinkRates): number {
  return ringAllReduceMs(bytes, n, link) / 2;
}

/** What a step's prediction needs: the model, the layout, the batch. */
export interface StepTimeInput {
  /** Vocabulary V (padded to a multiple of tp as the engine pads it). */
  vocab: number;
  /** Tokens per sequence T. */
  seqLen: number;
  /** Width C. */
  dim: number;
  /** Blocks. */
  layers: number;
  /** Heads. */
  heads: number;
  /** MLP width; default 4 C. */
  hidden?: number;
  /** Sequences per step over every replica. */
  batch: number;
  /** Data-parallel ranks. */
  dp: number;
  /** Tensor-parallel ranks. */
  tp: number;
  /** Pipeline stages. */
  pp: number;
  /** Virtual stages per rank; default 1. */
  virtualStages?: number;
  /** The schedule of a pipeline of one chunk per stage; default 1F1B (interleaved for v > 1). */
  schedule?: "gpipe" | "1f1b";
  /** Micro-batches per step; default 4 pp with a pipeline, else 1. */
  microBatches?: number;
  /** ZeRO stage; default 0. */
  zeroStage?: 0 | 1 | 2 | 3;
  /** Activations and gradients in 16 bits (fp16 or bf16): fp32 master weights stay. */
  half?: boolean;
  /** Activation checkpointing: every N-th block (0 off). */
  checkpointActivations?: number;
  /** Ranks sharing this machine's cores (their BLAS threads split them); default ranks / nodes. */
  ranksHere?: number;
  /** Nodes the ranks are spread over, equally, in the grid's order; default 1. */
  nodes?: number;
  /** The link between nodes, as one node sees it (needed with more than one node). */
  nodeLink?: LinkRates;
}

/** A predicted step, in milliseconds, split by where the time goes (on the slowest rank). */
export interface StepTimeEstimate {
  /** Forward and backward arithmetic (with recomputation) of every micro-batch. */
  computeMs: number;
  /** Tensor-parallel all-reduces. */
  tpCommMs: number;
  /** Pipeline transfers between stages. */
  ppCommMs: number;
  /** The pipeline's idle share. */
  bubbleMs: number;
  /** Data-parallel gradient reductions and ZeRO's gathers. */
  dpCommMs: number;
  /** The optimizer step. */
  optimizerMs: number;
  /** The whole step. */
  stepMs: number;
  /** Tokens per second at that step time. */
  tokensPerS: number;
  /** BLAS threads per rank the prediction assumed. */
  threads: number;
}

/** The rate of a product whose smallest dimension is `d`, interpolated (log scale). */
export function matmulGflops(rates: ComputeRates, M: number, N: number, K: number): number {
  const d = Math.min(M, N, K), pts = rates.matmul;
  if (d <= pts[0]![0]) return pts[0]![1] * d / pts[0]![0];
  for (let i = 1; i < pts.length; i++) {
    const [d1, r1] = pts[i]!, [d0, r0] = pts[i - 1]!;
    if (d <= d1) {
      const f = Math.log(d / d0) / Math.log(d1 / d0);
      return r0 + f * (r1 - r0);
    }
  }
  return pts[pts.length - 1]![1];
}

/**
 * Predict one training step of a layout from the machine's rates (see the module doc for the
 * formulas).
 *
 * @param x the model, layout and batch
 * @param cal the machine's calibration
 * @returns the step time and where it goes
 */
export function predictStepTime(x: StepTimeInput, cal: Calibration): StepTimeEstimate {
  const { tp, pp, dp } = x;
  const v = x.virtualStages ?? 1;
  const m = x.microBatches ?? (pp > 1 ? 4 * pp : 1);
  const zero = x.zeroStage ?? 0;
  const ranks = tp * pp * dp;
  const nodes = x.nodes ?? 1;
  const perNode = ranks / nodes;
  if (!Number.isInteger(perNode) || nodes < 1) {
    throw new RangeError(`${ranks} ranks do not split evenly over ${nodes} nodes`);
  }
  if (nodes > 1 && !x.nodeLink) {
    throw new TypeError(`A step over ${nodes} nodes needs the link between them (nodeLink)`);
  }
  const here = x.ranksHere ?? perNode;
  const threads = Math.max(1, Math.floor(cal.cores / Math.max(1, here)));
  const rates = cal.compute[String(threads)] ?? cal.compute[Object.keys(cal.compute)[0]!]!;
  // Ranks computing at once share the machine (see Calibration.sharing); more ranks than cores
  // also take turns on them.
  const slow = (here > 1 ? cal.sharing?.[String(here)] ?? 1 : 1) *
    Math.max(1, here / cal.cores);
  const b = x.batch / (m * dp);
  if (!Number.isInteger(b) || b < 1) {
    throw new RangeError(
      `A batch of ${x.batch} does not split into ${m} micro-batches over dp ${dp}`,
    );
  }
  const T = x.seqLen, C = x.dim, F = x.hidden ?? 4 * x.dim, n = b * T;
  const Vp = Math.ceil(x.vocab / tp) * tp;
  const half = x.half ?? false;
  const ew = slow * rates.elementNs * (half ? rates.halfFactor : 1) / 1e6; // ms per element
  const over = rates.opOverheadMs;
  // A product, forward or (its two products) backward.
  const mmRates = half ? { ...rates, matmul: rates.halfMatmul } : rates;
  const mm = (M: number, N: number, K: number) =>
    slow * 2 * M * N * K / (matmulGflops(mmRates, M, N, K) * 1e6) + over;
  const linear = (inp: number, out: number) => ({
    f: mm(n, out, inp),
    b: mm(n, inp, out) + mm(inp, out, n) + n * out * ew,
  });
  const qkv = linear(C, 3 * C / tp), proj = linear(C / tp, C);
  const fc = linear(C, F / tp), proj2 = linear(F / tp, C);
  const scores = b * (x.heads / tp) * T * T;
  const att = slow * scores * (half ? rates.halfAttentionNs : rates.attentionNs) / 1e6;
  // Element-wise work of a block: two layernorms, two residual adds, GELU, in and out.
  const blockEw = (4 * n * C + n * F / tp) * ew;
  const blockF = qkv.f + proj.f + fc.f + proj2.f + att / 3 + blockEw + 8 * over;
  const blockB = qkv.b + proj.b + fc.b + proj2.b + 2 * att / 3 + 2 * blockEw + 8 * over;
  const layersPerStage = x.layers / pp;
  const layersPerChunk = layersPerStage / v;
  if (!Number.isInteger(layersPerChunk)) {
    throw new RangeError(`${x.layers} blocks do not split into ${pp} x ${v} chunks`);
  }
  // Checkpointed blocks run their forward again in backward.
  const recompute = (x.checkpointActivations ?? 0) > 0;
  // The head (final layernorm, product, loss) on the last virtual stage, the embedding on the
  // first.
  const head = linear(C, Vp / tp);
  const headF = head.f + 2 * n * (Vp / tp) * ew + n * C * ew;
  const headB = head.b + n * (Vp / tp) * ew + n * C * ew;
  const embedF = n * C * ew, embedB = 2 * n * C * ew;
  const shm = (k: number): LinkRates =>
    cal.links[String(k)] ?? cal.links[Object.keys(cal.links).at(-1)!]!;
  // The link of a group of k ranks `stride` apart: shared memory within a node; across nodes
  // the node link, its bandwidth split among the groups of this kind that leave a node at once.
  const groupLink = (k: number, stride: number): LinkRates => {
    const inside = shm(Math.min(k, Math.max(2, perNode)));
    if (nodes === 1 || k * stride <= perNode) return shm(k);
    const local = Math.max(1, Math.min(k, Math.floor(perNode / stride)));
    const node = x.nodeLink!;
    return {
      alphaMs: Math.max(inside.alphaMs, node.alphaMs),
      bytesPerMs: Math.min(inside.bytesPerMs, node.bytesPerMs / (perNode / local)),
    };
  };
  const actBytes = n * C * (half ? 2 : 4);
  // Per chunk of one micro-batch: tensor parallelism's two all-reduces per block each way, and
  // with a pipeline one activation in and one gradient out.
  const tpOne = tp > 1 ? 2 * layersPerChunk * ringAllReduceMs(actBytes, tp, groupLink(tp, 1)) : 0;
  const p2pLink = groupLink(pp > 1 ? pp : 2, tp * dp);
  const ppOne = pp > 1 ? p2pLink.alphaMs + actBytes / p2pLink.bytesPerMs : 0;
  // What one chunk of one micro-batch costs on a stage, split by kind.
  const chunkCost = (stage: number, chunk: number, kind: "forward" | "backward") => {
    const first = stage === 0 && chunk === 0, last = stage === pp - 1 && chunk === v - 1;
    const blocks = kind === "forward" ? blockF : blockB + (recompute ? blockF : 0);
    const ends = (first ? (kind === "forward" ? embedF : embedB) : 0) +
      (last ? (kind === "forward" ? headF : headB) : 0);
    return { compute: layersPerChunk * blocks + ends, tp: tpOne, pp: ppOne };
  };
  // Each stage's busy time; the pipeline's length from running its schedule's step lists.
  const stageBusy = Array.from({ length: pp }, (_, st) => {
    let compute = 0, tpc = 0, ppc = 0;
    for (let c = 0; c < v; c++) {
      for (const kind of ["forward", "backward"] as const) {
        const k = chunkCost(st, c, kind);
        compute += m * k.compute, tpc += m * k.tp, ppc += m * k.pp;
      }
    }
    return { compute, tp: tpc, pp: ppc, all: compute + tpc + ppc };
  });
  const busiest = stageBusy.reduce((a, b) => b.all > a.all ? b : a);
  let pipelineMs = busiest.all;
  if (pp > 1) {
    const name = v > 1 ? "interleaved" : x.schedule ?? "1f1b";
    const sim = simulateSchedule(buildSchedule(name, { pp, m, v }), {
      duration: (st, kind, _mb, c) => {
        const k = chunkCost(st, c, kind);
        return k.compute + k.tp + k.pp;
      },
    });
    pipelineMs = sim.makespan;
  }
  const computeMs = busiest.compute;
  const tpCommMs = busiest.tp;
  const ppCommMs = busiest.pp;
  const bubbleMs = Math.max(0, pipelineMs - busiest.all);
  // Parameters on this rank: the blocks of its stage, split over tp, and its end's tables.
  const blockParams = (4 * C * C + 2 * C * F + 9 * C + F) / tp;
  const rankParams = layersPerStage * blockParams + (Vp / tp) * C + T * C;
  const gradBytes = rankParams * (half ? 2 : 4);
  const link = groupLink(dp, tp);
  let dpCommMs = 0;
  if (dp > 1) {
    dpCommMs = zero <= 1 ? ringAllReduceMs(gradBytes, dp, link) : ringHalfMs(gradBytes, dp, link);
    if (zero >= 1) dpCommMs += ringHalfMs(rankParams * (half ? 2 : 4), dp, link);
    if (zero === 3) dpCommMs += 2 * m * ringHalfMs(rankParams * (half ? 2 : 4), dp, link);
  }
  const owned = zero >= 1 ? rankParams / dp : rankParams;
  const optimizerMs = slow * owned * rates.adamwNs / 1e6 + rankParams * ew + 2 * over;
  const stepMs = pipelineMs + dpCommMs + optimizerMs;
  return {
    computeMs,
    tpCommMs,
    ppCommMs,
    bubbleMs,
    dpCommMs,
    optimizerMs,
    stepMs,
    tokensPerS: x.batch * T / (stepMs / 1000),
    threads,
  };
}

// ---- calibration ---------------------------------------------------------------------------

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

/**
 * Milliseconds of one call of `f`: the first quartile of runs that together take about
 * `budgetMs` (a training step's ops run back to back, warm, like the faster runs here).
 */
async function timeIt(f: () => void | Promise<unknown>, budgetMs: number): Promise<number> {
  await f();
  const times: number[] = [];
  const t0 = performance.now();
  while (times.length < 5 || (performance.now() - t0 < budgetMs && times.length < 200)) {
    const s = performance.now();
    await f();
    times.push(performance.now() - s);
  }
  const sorted = times.sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 4)]!;
}

/** Options of {@linkcode calibrate}. */
export interface CalibrateOptions {
  /** The CPU backend to measure at a thread count (e.g. `createCpuBackend`). */
  backend: (threads: number) => Backend;
  /** Thread counts to measure; default 1 and the machine's cores. */
  threads?: number[];
  /** Shared-memory collectives between k ranks: ms of an all-reduce of each byte size. */
  allReduceMs: (k: number, sizes: number[]) => Promise<number[]>;
  /** Rank counts of the links; default 2 and 4. */
  linkRanks?: number[];
  /** Milliseconds of a fixed one-thread mix of work on each of k ranks running it at once. */
  sharedMs?: (k: number) => Promise<number[]>;
  /** Progress lines. */
  log?: (line: string) => void;
}

/**
 * Measure this machine's rates: matrix products at a ladder of sizes, element-wise work,
 * attention and AdamW per element on the CPU backend at each thread count, and shared-memory
 * all-reduces between Worker ranks (a latency and a bandwidth fitted per rank count).
 *
 * @param opts the backend, the collectives and the thread counts
 * @returns the calibration
 */
export async function calibrate(opts: CalibrateOptions): Promise<Calibration> {
  const cores = navigator.hardwareConcurrency || 1;
  const counts = opts.threads ?? [...new Set([1, cores])];
  const compute: Record<string, ComputeRates> = {};
  for (const threads of counts) {
    const be = opts.backend(threads);
    try {
      // Two rounds, keeping the faster reading of each rate: a neighbour's burst on a shared
      // machine slows one round, not the machine.
      const a = await measureCompute(be, opts.log), b = await measureCompute(be, opts.log);
      compute[String(threads)] = fasterRates(a, b);
    } finally {
      be.dispose();
    }
    opts.log?.(`compute at ${threads} thread(s) measured`);
  }
  const links: Record<string, LinkRates> = {};
  for (const k of opts.linkRanks ?? [2, 4]) {
    const sizes = [1 << 10, 1 << 20, 1 << 23];
    const ms = await opts.allReduceMs(k, sizes);
    // Fit 2 (k-1) alpha + 2 (k-1)/k bytes / beta through the smallest and largest sizes.
    const steps = 2 * (k - 1), frac = 2 * (k - 1) / k;
    const slope = (ms[2]! - ms[0]!) / (frac * (sizes[2]! - sizes[0]!));
    const bytesPerMs = 1 / Math.max(slope, 1e-12);
    const alphaMs = Math.max(0, (ms[0]! - frac * sizes[0]! / bytesPerMs) / steps);
    links[String(k)] = { alphaMs, bytesPerMs };
    opts.log?.(`all-reduce over ${k} ranks measured`);
  }
  const sharing: Record<string, number> = {};
  if (opts.sharedMs) {
    // Three rounds, alone and shared in turn, keeping the fastest reading of each: a burst
    // that lands on one shared reading would otherwise price every multi-rank layout as if
    // the machine were that slow.
    const ks = opts.linkRanks ?? [2, 4];
    let alone = Infinity;
    const shared = new Map<number, number>();
    for (let round = 0; round < 3; round++) {
      alone = Math.min(alone, median(await opts.sharedMs(1)));
      for (const k of ks) {
        const times = await opts.sharedMs(k);
        const mean = times.reduce((x, y) => x + y, 0) / times.length;
        shared.set(k, Math.min(shared.get(k) ?? Infinity, mean));
      }
    }
    for (const k of ks) {
      // Beyond one rank per core the ranks also take turns: count only the sharing of a core.
      const turns = Math.max(1, k / cores);
      // (At least 1: sharing never speeds a rank up; a lower reading is noise.)
      sharing[String(k)] = Math.max(1, shared.get(k)! / alone / turns);
      opts.log?.(`${k} ranks computing at once: ${sharing[String(k)]!.toFixed(2)}x each`);
    }
  }
  return { version: 2, measured: new Date().toISOString(), cores, compute, links, sharing };
}

/** Each rate of `a` and `b` at its faster reading. */
function fasterRates(a: ComputeRates, b: ComputeRates): ComputeRates {
  const ladder = (x: [number, number][], y: [number, number][]) =>
    x.map(([d, r], i) => [d, Math.max(r, y[i]![1])] as [number, number]);
  const elementNs = Math.min(a.elementNs, b.elementNs);
  return {
    matmul: ladder(a.matmul, b.matmul),
    elementNs,
    attentionNs: Math.min(a.attentionNs, b.attentionNs),
    adamwNs: Math.min(a.adamwNs, b.adamwNs),
    opOverheadMs: Math.min(a.opOverheadMs, b.opOverheadMs),
    halfFactor: Math.min(a.elementNs * a.halfFactor, b.elementNs * b.halfFactor) / elementNs,
    halfMatmul: ladder(a.halfMatmul, b.halfMatmul),
    halfAttentionNs: Math.min(a.halfAttentionNs, b.halfAttentionNs),
  };
}

async function measureCompute(be: Backend, log?: (l: string) => void): Promise<ComputeRates> {
  const rand = (n: number, dtype: TensorDType = "f32") => {
    const t = be.alloc(n, dtype);
    const a = new Float32Array(n);
    for (let i = 0; i < n; i++) a[i] = Math.sin(i * 12.9898) * 0.5;
    if (dtype === "f32") be.write(t, a);
    else be.fill(t, 0.25);
    return t;
  };
  // Products of shapes n x 4d x d (the forward of an MLP of width d) at a ladder of d, of
  // float32 and of 16-bit operands.
  const ladder = async (dtype: TensorDType) => {
    const out: [number, number][] = [];
    for (const d of [16, 32, 64, 128, 256, 512]) {
      const M = 512, N = 4 * d, K = d;
      const A = rand(M * K, dtype), B = rand(K * N, dtype), Cm = be.alloc(M * N, dtype);
      const ms = await timeIt(async () => {
        be.matmul(Cm, A, B, null, M, N, K);
        await be.read(be.view(Cm, 0, 1));
      }, 150);
      out.push([d, 2 * M * N * K / (ms * 1e6)]);
    }
    return out;
  };
  const matmul = await ladder("f32");
  const halfMatmul = await ladder("bf16");
  // The cost of a call beyond its arithmetic: a 1 x 1 x 1 product.
  const one = rand(1), out1 = be.alloc(1);
  const opOverheadMs = await timeIt(() => be.matmul(out1, one, one, null, 1, 1, 1), 50);
  // Element-wise: a layernorm and a GELU, forward and backward, of 1M elements.
  const elementNs = async (dtype: TensorDType) => {
    const N = 1024, C = 1024, x = rand(N * C, dtype), y = be.alloc(N * C, dtype);
    const w = rand(C), bias = rand(C), mu = be.alloc(N), r = be.alloc(N);
    const ms = await timeIt(async () => {
      be.layernormForward(y, mu, r, x, w, bias, N, C);
      be.geluForward(x, y, N * C);
      await be.read(be.view(y, 0, 1));
    }, 200);
    return ms * 1e6 / (2 * N * C);
  };
  const f32Ns = await elementNs("f32");
  const halfNs = await elementNs("bf16");
  // Attention: B H T^2 scores at T = 128, forward and backward.
  const attention = async (dtype: TensorDType) => {
    const Ba = 4, T = 128, Ca = 256, H = 8;
    const q = rand(Ba * T * 3 * Ca, dtype), o = be.alloc(Ba * T * Ca, dtype);
    const att = be.alloc(Ba * H * T * T, dtype), dq = be.alloc(Ba * T * 3 * Ca, dtype);
    const dout = rand(Ba * T * Ca, dtype);
    const ms = await timeIt(async () => {
      be.attentionForward(o, att, q, Ba, T, Ca, H);
      be.attentionBackward(dq, dout, q, att, Ba, T, Ca, H);
      await be.read(be.view(dq, 0, 1));
    }, 200);
    return ms * 1e6 / (Ba * H * T * T);
  };
  const attentionNs = await attention("f32");
  const halfAttentionNs = await attention("bf16");
  // AdamW over 1M parameters.
  const P = 1 << 20, pw = rand(P), pg = rand(P), pm = be.alloc(P), pv = be.alloc(P);
  const adamMs = await timeIt(async () => {
    be.adamw(pw, pg, pm, pv, P, {
      lr: 1e-3,
      beta1: 0.9,
      beta2: 0.95,
      eps: 1e-8,
      weightDecay: 0,
      step: 1,
    });
    await be.read(be.view(pw, 0, 1));
  }, 150);
  log?.(`matmul ${matmul.map(([d, r]) => `${d}:${r.toFixed(1)}`).join(" ")} GFLOP/s`);
  return {
    matmul,
    elementNs: f32Ns,
    attentionNs,
    adamwNs: adamMs * 1e6 / P,
    opOverheadMs,
    halfFactor: halfNs / f32Ns,
    halfMatmul,
    halfAttentionNs,
  };
}
