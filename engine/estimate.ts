/**
 * A memory estimator: the bytes one rank holds to train a GPT under a layout (data, tensor,
 * sequence and pipeline parallel, a ZeRO stage, a precision, activation checkpointing).
 *
 * Model states follow the ZeRO paper (Rajbhandari et al. 2020, Table 1 and section 5): with
 * `Psi` parameters on a rank, `Nd` data-parallel ranks and `2 + 2 + K` bytes per parameter
 * (mixed-precision Adam: K = 12, the fp32 master weights and two fp32 moments),
 *
 * ```
 * stage 0 (baseline)   (2 + 2 + K) Psi
 * stage 1 (P_os)       2 Psi + 2 Psi + K Psi / Nd
 * stage 2 (P_os+g)     2 Psi + (2 + K) Psi / Nd
 * stage 3 (P_os+g+p)   (2 + 2 + K) Psi / Nd
 * ```
 *
 * In fp32 the parameters are the master weights: 4 + 4 + 8 (two moments). SGD with momentum
 * has K = 8 in mixed precision (master weights and momentum) and 4 in fp32. A partitioned part
 * holds `ceil(Psi / Nd)` elements (shards are padded so that they divide). With tensor and
 * pipeline parallelism `Psi` is what one rank computes with: `Psi / (tp * pp)` from a count,
 * exact per stage from a shape ({@linkcode stageParamCounts}).
 * Activations follow what the layers of `models/blocks.ts` and `parallel/` keep per
 * micro-batch in flight ({@linkcode activationBytes}). Pure functions: nothing happens at
 * import and nothing is allocated.
 *
 * @example ZeRO-2 over 64 ranks for the paper's 7.5B model
 * ```ts
 * import assert from "node:assert/strict";
 * import { estimateMemory } from "./estimate.ts";
 * const e = estimateMemory({ params: 7.5e9, dp: 64, zeroStage: 2 });
 * assert.equal((e.modelStatesBytesPerRank / 1e9).toFixed(1), "16.6"); // GB
 * ```
 *
 * @module
 */

import { resolveGptConfig } from "../models/config.ts";
import { gptRankSpecs } from "../models/gpt.ts";
import { checkModelLayout } from "../parallel/grid.ts";

/** Storage format of parameters, gradients and activations (fp16/bf16: mixed precision). */
export type Precision = "fp32" | "fp16" | "bf16";
/** The optimizer, which sets the bytes of optimizer state per parameter. */
export type OptimizerKind = "adamw" | "sgd";
/** ZeRO stage: 0 none, 1 optimizer states, 2 and gradients, 3 and parameters partitioned. */
export type ZeroStage = 0 | 1 | 2 | 3;

/** The shape of a GPT (the keys of `GptConfig` in models/config.ts). */
export interface ModelShape {
  /** Vocabulary size V. */
  vocab: number;
  /** Longest sequence. */
  ctx: number;
  /** Model width C. */
  dim: number;
  /** Transformer blocks. */
  layers: number;
  /** Attention heads H. */
  heads: number;
  /** MLP width F; default 4C. */
  hidden?: number;
  /** Whether the head reuses `wte`; default true. */
  tied?: boolean;
}

/** How training is laid out over ranks; every field has a default. */
export interface MemoryLayout {
  /** Data-parallel size Nd; default 1. */
  dp?: number;
  /** Tensor-parallel size; default 1. */
  tp?: number;
  /** Pipeline stages; default 1. */
  pp?: number;
  /** ZeRO stage; default 0. */
  zeroStage?: ZeroStage;
  /** Precision; default `"fp16"` (the paper's mixed precision). */
  precision?: Precision;
  /** Optimizer; default `"adamw"`. */
  optimizer?: OptimizerKind;
  /** Sequences per micro-batch B; default 1. */
  microBatch?: number;
  /** Tokens per sequence T; default the shape's ctx. */
  seqLen?: number;
  /**
   * Activation checkpointing: every N-th block keeps only its output and recomputes its parts
   * in backward (0, the default: off).
   */
  checkpointActivations?: number;
  /** Sequence parallelism (with tp > 1): layernorms and residuals hold T/tp rows. */
  sequenceParallel?: boolean;
  /** Micro-batches per step; caps those in flight (default: no cap, 1F1B's pp - s). */
  microBatches?: number;
  /**
   * ZeRO-3: parameters below this many elements stay whole on every rank (DeepSpeed's
   * `stage3_param_persistence_threshold`; needs the shape); default 0, as the paper counts.
   */
  persistenceThreshold?: number;
}

/** Bytes of model state per parameter. */
export interface BytesPerParam {
  /** Parameters used in compute (2 in fp16/bf16, 4 in fp32). */
  params: number;
  /** Gradients (2 or 4). */
  grads: number;
  /** Optimizer state K: master weights (mixed precision) and moments. */
  optimizer: number;
}

/**
 * Bytes per parameter of a precision and optimizer: mixed-precision AdamW 2 + 2 + 12 (fp32
 * master, two fp32 moments), mixed-precision SGD 2 + 2 + 8 (master, momentum), fp32 AdamW
 * 4 + 4 + 8 (the parameters are the master weights), fp32 SGD 4 + 4 + 4.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { bytesPerParam } from "./estimate.ts";
 * assert.deepEqual(bytesPerParam("fp16", "adamw"), { params: 2, grads: 2, optimizer: 12 });
 * ```
 *
 * @param precision the precision
 * @param optimizer the optimizer
 * @returns bytes of parameters, gradients and optimizer state per parameter
 */
export function bytesPerParam(precision: Precision, optimizer: OptimizerKind): BytesPerParam {
  _choice("precision", precision, ["fp32", "fp16", "bf16"]);
  _choice("optimizer", optimizer, ["adamw", "sgd"]);
  const half = precision !== "fp32";
  const moments = optimizer === "adamw" ? 8 : 4;
  return half
    ? { params: 2, grads: 2, optimizer: 4 + moments }
    : { params: 4, grads: 4, optimizer: moments };
}

/** A rank's model states. */
export interface ModelStateBytes {
  /** Parameters the rank computes with (before ZeRO partitioning). */
  params: number;
  /** Bytes of parameters held. */
  paramsBytes: number;
  /** Bytes of gradients held. */
  gradsBytes: number;
  /** Bytes of optimizer state held. */
  optimizerBytes: number;
  /** Their sum. */
  totalBytes: number;
}

/**
 * The model states of a rank that computes with `params` parameters, from the ZeRO paper's
 * formulas: each partitioned part holds `ceil(params / dp)` elements.
 *
 * @example Table 1 of the paper, P_os at Nd = 64
 * ```ts
 * import assert from "node:assert/strict";
 * import { modelStateBytes } from "./estimate.ts";
 * const s = modelStateBytes(7.5e9, { dp: 64, zeroStage: 1 });
 * assert.equal((s.totalBytes / 1e9).toFixed(1), "31.4");
 * ```
 *
 * @param params parameters on the rank (Psi / (tp * pp), or a stage's exact count)
 * @param layout dp, ZeRO stage, precision and optimizer (the rest is ignored)
 * @returns bytes of parameters, gradients and optimizer state
 */
export function modelStateBytes(
  params: number,
  layout: Pick<MemoryLayout, "dp" | "zeroStage" | "precision" | "optimizer"> & {
    /** ZeRO-3: parameters of the rank kept whole besides their shard. */
    persistent?: number;
  } = {},
): ModelStateBytes {
  _count("params", params, 0);
  const dp = _count("dp", layout.dp ?? 1);
  const stage = layout.zeroStage ?? 0;
  _choice("zeroStage", stage, [0, 1, 2, 3]);
  const b = bytesPerParam(layout.precision ?? "fp16", layout.optimizer ?? "adamw");
  const shard = Math.ceil(params / dp);
  const paramsBytes = b.params * (stage >= 3 ? shard + (layout.persistent ?? 0) : params);
  const gradsBytes = b.grads * (stage >= 2 ? shard : params);
  const optimizerBytes = b.optimizer * (stage >= 1 ? shard : params);
  return {
    params,
    paramsBytes,
    gradsBytes,
    optimizerBytes,
    totalBytes: paramsBytes + gradsBytes + optimizerBytes,
  };
}

/**
 * The number of parameters of a GPT (GPT-2's list, `gptParamSpecs`): `V C + ctx C` for the
 * embeddings, `12 C^2 + 13 C` per block with F = 4C, `2 C` for `ln_f`, `V C` more when untied.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { countParams } from "./estimate.ts";
 * const n = countParams({ vocab: 50257, ctx: 1024, dim: 768, layers: 12, heads: 12 });
 * assert.equal(n, 124439808); // GPT-2 small
 * ```
 *
 * @param shape the model's shape
 * @returns the parameter count
 */
export function countParams(shape: ModelShape): number {
  return stageParamCounts(shape).reduce((a, b) => a + b, 0);
}

/**
 * The parameters one rank of each pipeline stage computes with: stage s holds layers / pp
 * blocks, the first also `wte` and `wpe`, the last `ln_f` and its own `wte` when tied (or
 * `lm_head.weight`); with tp the split tensors hold 1/tp of their elements, the vocabulary
 * padded up to a multiple of tp. With tp = pp = 1 this is the whole model (unpadded).
 *
 * @example tp = 2, pp = 2 on a small GPT
 * ```ts
 * import assert from "node:assert/strict";
 * import { stageParamCounts } from "./estimate.ts";
 * const shape = { vocab: 65, ctx: 16, dim: 32, layers: 4, heads: 4 };
 * const [first, last] = stageParamCounts(shape, { tp: 2, pp: 2 });
 * assert.deepEqual([first, last], [14464, 14016]);
 * ```
 *
 * @param shape the model's shape
 * @param layout tp and pp (the rest is ignored)
 * @returns per stage, the parameters of one of its ranks
 */
export function stageParamCounts(
  shape: ModelShape,
  layout: Pick<MemoryLayout, "tp" | "pp"> = {},
): number[] {
  const m = _modelLayout(shape, layout);
  const c = resolveGptConfig({ ...shape, vocab: m.paddedVocab });
  const tp = layout.tp ?? 1;
  const pp = layout.pp ?? 1;
  const counts: number[] = [];
  for (let s = 0; s < pp; s++) {
    // What the layers of tensor rank 0 of stage s declare (this rank's shapes).
    let n = 0;
    for (const p of gptRankSpecs(c, { tp, pp, stage: s })) n += p.shape.reduce((a, b) => a * b, 1);
    counts.push(n);
  }
  return counts;
}

/**
 * The parameters below `threshold` elements that one rank of each pipeline stage keeps whole
 * under ZeRO-3 (besides their shard), as its layers declare them.
 *
 * @param shape the model's shape
 * @param layout tp and pp
 * @param threshold DeepSpeed's `stage3_param_persistence_threshold`
 * @returns per stage, the elements kept whole
 */
export function stagePersistentCounts(
  shape: ModelShape,
  layout: Pick<MemoryLayout, "tp" | "pp">,
  threshold: number,
): number[] {
  const m = _modelLayout(shape, layout);
  const c = resolveGptConfig({ ...shape, vocab: m.paddedVocab });
  const tp = layout.tp ?? 1, pp = layout.pp ?? 1;
  return Array.from({ length: pp }, (_, s) => {
    let n = 0;
    for (const p of gptRankSpecs(c, { tp, pp, stage: s })) {
      const size = p.shape.reduce((a, b) => a * b, 1);
      if (size < threshold) n += size;
    }
    return n;
  });
}

/**
 * What one transformer block keeps per micro-batch on a rank, in bytes: each formula below
 * counts elements of the activation dtype, except the layernorms' mean and rstd (f32). N = B T
 * rows, n the rows a rank holds outside the parallel regions (N, or N / tp with sequence
 * parallelism).
 */
export interface BlockActivationParts {
  /** ln_1 output, mean and rstd: `n C + 2 n` (parallel/block.ts `ln1.y/.mean/.rstd`). */
  ln1: number;
  /** c_attn's gathered input with sequence parallelism: `N C` (linear.ts `xfull`), else 0. */
  qkvInput: number;
  /** q | k | v: `3 N C / tp` (linear.ts ColumnParallelLinear `y`). */
  qkv: number;
  /** Attention probabilities: `B (H/tp) T^2` (attention.ts `att`). */
  attentionProbs: number;
  /** Attention output: `N C / tp` (attention.ts `y`). */
  attentionOut: number;
  /** attn c_proj: partial sums `N C`, plus `n C` scattered with sp (linear.ts `partial`, `y`). */
  attentionProj: number;
  /** Residual `r = x + attn`: `n C` (block.ts `r`). */
  residual: number;
  /** ln_2 output, mean and rstd: `n C + 2 n`. */
  ln2: number;
  /** c_fc's gathered input with sequence parallelism: `N C` (linear.ts `xfull`), else 0. */
  mlpInput: number;
  /** MLP hidden before GELU: `N F / tp` (c_fc's `y`). */
  mlpHidden: number;
  /** GELU output: `N F / tp` (attention.ts ParallelMlp `g`). */
  gelu: number;
  /** mlp c_proj: partial sums `N C`, plus `n C` with sp (linear.ts `partial`, `y`). */
  mlpProj: number;
  /** Block output `y = r + mlp`: `n C` (block.ts `y`). */
  output: number;
}

/** One pipeline stage's activations on one rank, in bytes. */
export interface StageActivations {
  /** The stage. */
  stage: number;
  /** Blocks on the stage. */
  blocks: number;
  /** Micro-batches in flight at once (1F1B: pp - stage, capped by the micro-batches). */
  inFlight: number;
  /** Per micro-batch: one block's parts (bytes), as if not checkpointed. */
  block: BlockActivationParts;
  /**
   * Per micro-batch, by part: `input` (token ids on the first stage, else the received
   * activations), `embedding`, `blocks` (every block's parts, or with checkpointing one kept
   * tensor per group of blocks), `head` (ln_f, logits, probabilities, targets).
   */
  perMicroBatch: { input: number; embedding: number; blocks: number; head: number };
  /** Bytes per micro-batch in flight (the sum of `perMicroBatch`). */
  perMicroBatchBytes: number;
  /**
   * Held once, shared by the micro-batches: `recompute` (one checkpointed block's
   * activations, RECOMPUTE_SLOT) and `scratch` (backward gradient buffers, GRAD_SLOT).
   */
  once: { recompute: number; scratch: number };
  /** `inFlight * perMicroBatchBytes + recompute + scratch`. */
  totalBytes: number;
}

/** Activations per rank of every stage. */
export interface ActivationBytes {
  /** Bytes of one activation element (4 fp32, 2 fp16/bf16); statistics, ids take 4. */
  elementBytes: number;
  /** Per stage. */
  stages: StageActivations[];
  /** The largest stage's total. */
  maxBytes: number;
}

/**
 * The activation memory of one rank of each pipeline stage: what the layers keep per
 * micro-batch in flight (every arena buffer fetched with a slot >= 0 other than
 * RECOMPUTE_SLOT), times the micro-batches in flight, plus what is held once. The sum, per
 * micro-batch, with N = B T, n = N (or N / tp with sequence parallelism), h = H / tp, in
 * elements of the activation dtype, except the layernorm statistics (the 2n of each
 * layernorm), losses, ids and targets, which take 4 bytes (f32, i32) in every precision:
 *
 * ```
 * input      first stage: N ids; other stages: n C received (parallel/gpt.ts #inputs)
 * embedding  N C (embedding.ts x) + n C with sp (y)
 * block      ln1 (n C + 2n) + [sp: N C] + qkv 3 N C / tp + att B h T^2 + attn out N C / tp
 *            + c_proj partial N C [+ sp: n C] + residual n C + ln2 (n C + 2n) + [sp: N C]
 *            + mlp hidden N F / tp + gelu N F / tp + c_proj partial N C [+ sp: n C] + output n C
 *            (tp = 1: N (10 C + 2 F + 4) + B H T^2, models/blocks.ts)
 * blocks     blocks * block; with checkpointing every k-th block (index i, i % k == 0)
 *            keeps only its output n C instead of its parts
 * head       last stage: N targets + ln_f (n C + 2n) + [sp: N C] + logits N V / tp
 *            + probabilities N V / tp + N per-row losses (or, tp > 1, the targets' copy) + loss 1
 * once       recompute: one block (when any is checkpointed); scratch: one block's backward buffers
 *            (dr n C, dqkv 3 N C / tp, dh N F / tp, the linears' dx N C + N C / tp + N C
 *            + N F / tp, with sp also 2 n C + 2 N C), the head's (N C + 2 n C with sp, else
 *            2 N C), the embedding's N C with sp, the received gradient n C off the last stage
 * ```
 *
 * @example Checkpointing every block keeps less
 * ```ts
 * import assert from "node:assert/strict";
 * import { activationBytes } from "./estimate.ts";
 * const shape = { vocab: 50257, ctx: 1024, dim: 768, layers: 12, heads: 12 };
 * const full = activationBytes(shape, { microBatch: 8 });
 * const ckpt = activationBytes(shape, { microBatch: 8, checkpointActivations: 1 });
 * assert.ok(ckpt.maxBytes < full.maxBytes / 2);
 * ```
 *
 * @param shape the model's shape
 * @param layout tp, pp, precision, micro-batch, sequence length, checkpointing, sp
 * @returns per stage, the bytes per micro-batch, in flight and in total
 */
export function activationBytes(shape: ModelShape, layout: MemoryLayout = {}): ActivationBytes {
  const m = _modelLayout(shape, layout);
  const c = resolveGptConfig(shape);
  const tp = layout.tp ?? 1;
  const pp = layout.pp ?? 1;
  const B = _count("microBatch", layout.microBatch ?? 1);
  const T = _count("seqLen", layout.seqLen ?? c.ctx);
  if (T > c.ctx) throw new RangeError(`seqLen ${T} exceeds the model's ctx ${c.ctx}`);
  const k = _count("checkpointActivations", layout.checkpointActivations ?? 0, 0);
  const sp = layout.sequenceParallel ?? false;
  if (typeof sp !== "boolean") throw new TypeError(`sequenceParallel must be true or false`);
  if (sp && T % tp !== 0) {
    throw new RangeError(
      `Sequence parallelism splits seqLen ${T} across tp=${tp}: seqLen must be a multiple of tp`,
    );
  }
  const cap = layout.microBatches === undefined
    ? Infinity
    : _count("microBatches", layout.microBatches);
  const precision = layout.precision ?? "fp16";
  _choice("precision", precision, ["fp32", "fp16", "bf16"]);
  const e = precision === "fp32" ? 4 : 2;
  const C = c.dim, F = c.hidden, V = m.paddedVocab, h = m.headsPerRank;
  const N = B * T;
  const n = sp ? N / tp : N;
  const gathered = sp ? N * C : 0;
  const scattered = sp ? n * C : 0;
  // Bytes: activations take e each; layernorm statistics, losses and ids take 4 (f32, i32).
  const block: BlockActivationParts = {
    ln1: e * n * C + 4 * 2 * n,
    qkvInput: e * gathered,
    qkv: e * 3 * N * C / tp,
    attentionProbs: e * B * h * T * T,
    attentionOut: e * N * C / tp,
    attentionProj: e * (N * C + scattered),
    residual: e * n * C,
    ln2: e * n * C + 4 * 2 * n,
    mlpInput: e * gathered,
    mlpHidden: e * N * F / tp,
    gelu: e * N * F / tp,
    mlpProj: e * (N * C + scattered),
    output: e * n * C,
  };
  const blockBytes = Object.values(block).reduce((a, b) => a + b, 0);
  const blockScratch = n * C + 3 * N * C / tp + N * F / tp +
    (N * C + N * C / tp + N * C + N * F / tp) + (sp ? 2 * n * C + 2 * N * C : 0);
  const L = m.layersPerChunk;
  // Checkpointing every k-th block (global index i with i % k == 0), as models/gpt.ts does: such
  // a block keeps only its output per micro-batch and recomputes its parts, one block at a time,
  // in the shared recompute slot.
  const ckpt = Array.from({ length: pp }, (_, s) => {
    let n = 0;
    for (let i = s * L; i < (s + 1) * L; i++) if (k > 0 && i % k === 0) n++;
    return n;
  });
  const stages: StageActivations[] = [];
  for (let s = 0; s < pp; s++) {
    const first = s === 0, last = s === pp - 1;
    const perMicroBatch = {
      input: first ? 4 * N : e * n * C,
      embedding: first ? e * (N * C + scattered) : 0,
      blocks: (L - ckpt[s]!) * blockBytes + ckpt[s]! * e * n * C,
      head: last ? e * (n * C + gathered + 2 * N * V / tp) + 4 * (N + 2 * n + N + 1) : 0,
    };
    const perMicroBatchBytes = Object.values(perMicroBatch).reduce((a, b) => a + b, 0);
    const scratch = e * ((L > 0 ? blockScratch : 0) +
      (last ? (sp ? N * C + 2 * n * C : 2 * N * C) : n * C) + (first && sp ? N * C : 0));
    const once = { recompute: ckpt[s]! > 0 ? blockBytes : 0, scratch };
    const inFlight = Math.min(pp - s, cap);
    stages.push({
      stage: s,
      blocks: L,
      inFlight,
      block,
      perMicroBatch,
      perMicroBatchBytes,
      once,
      totalBytes: inFlight * perMicroBatchBytes + once.recompute + once.scratch,
    });
  }
  return { elementBytes: e, stages, maxBytes: Math.max(...stages.map((x) => x.totalBytes)) };
}

/** What to estimate: a parameter count or a model shape (exactly one), and the layout. */
export interface EstimateInput extends MemoryLayout {
  /** Parameters Psi (without a shape: per rank Psi / (tp * pp), no activations). */
  params?: number;
  /** The model's shape: exact per-stage counts and activations. */
  shape?: ModelShape;
}

/** One pipeline stage's memory on one of its ranks. */
export interface StageMemory {
  /** The stage. */
  stage: number;
  /** Model states. */
  modelStates: ModelStateBytes;
  /** Activations (`null` without a shape). */
  activations: StageActivations | null;
  /** Model states plus activations. */
  totalBytes: number;
}

/** The estimate for one layout. */
export interface MemoryEstimate {
  /** Parameters of the whole model Psi. */
  params: number;
  /** The shape, when given. */
  shape: ModelShape | null;
  /** The layout with every default filled in (`seqLen` is 0 without a shape). */
  layout: Required<Omit<MemoryLayout, "microBatches">> & { microBatches: number | null };
  /** Per stage. */
  stages: StageMemory[];
  /** The model states of the stage that holds the most (ties: the first). */
  modelStates: ModelStateBytes;
  /** The most model-state bytes any stage's rank holds: `modelStates.totalBytes`. */
  modelStatesBytesPerRank: number;
  /** The most activation bytes any stage's rank holds, `null` without a shape. */
  activationsBytesPerRank: number | null;
  /** The most bytes any stage's rank holds (its model states plus its activations). */
  totalBytesPerRank: number;
  /** The stage with the largest total. */
  largestStage: number;
}

/**
 * Model states and activations per rank of every pipeline stage, and the largest rank's
 * figures (model states, activations and total are each the largest over the stages).
 *
 * @example Table 1 of the ZeRO paper: P_os+g+p at Nd = 64
 * ```ts
 * import assert from "node:assert/strict";
 * import { estimateMemory } from "./estimate.ts";
 * const e = estimateMemory({ params: 7.5e9, dp: 64, zeroStage: 3 });
 * assert.equal((e.modelStatesBytesPerRank / 1e9).toFixed(2), "1.88");
 * ```
 *
 * @example A GPT-2 small shape on tp = 2, pp = 2 with ZeRO-1 over 4 replicas
 * ```ts
 * import assert from "node:assert/strict";
 * import { estimateMemory } from "./estimate.ts";
 * const e = estimateMemory({
 *   shape: { vocab: 50257, ctx: 1024, dim: 768, layers: 12, heads: 12 },
 *   dp: 4, tp: 2, pp: 2, zeroStage: 1, microBatch: 4,
 * });
 * assert.equal(e.stages.length, 2);
 * assert.ok(e.activationsBytesPerRank! > 0);
 * ```
 *
 * @param input the parameter count or shape, and the layout
 * @returns the estimate
 * @throws {TypeError} for a value of the wrong type, or both or neither of params and shape
 * @throws {RangeError} for a value out of range or a model that does not split over tp and pp
 */
export function estimateMemory(input: EstimateInput): MemoryEstimate {
  if (input === null || typeof input !== "object") {
    throw new TypeError("estimateMemory() takes an object like { params, dp, zeroStage }");
  }
  const { params: given, shape, ...rest } = input;
  if ((given === undefined) === (shape === undefined)) {
    throw new TypeError("Give either params (a parameter count) or shape (the GPT's sizes)");
  }
  const tp = _count("tp", rest.tp ?? 1);
  const pp = _count("pp", rest.pp ?? 1);
  const layout = {
    dp: _count("dp", rest.dp ?? 1),
    tp,
    pp,
    zeroStage: rest.zeroStage ?? 0,
    precision: rest.precision ?? "fp16",
    optimizer: rest.optimizer ?? "adamw",
    microBatch: _count("microBatch", rest.microBatch ?? 1),
    seqLen: shape ? rest.seqLen ?? shape.ctx : 0,
    checkpointActivations: rest.checkpointActivations ?? 0,
    sequenceParallel: rest.sequenceParallel ?? false,
    microBatches: rest.microBatches ?? null,
    persistenceThreshold: rest.persistenceThreshold ?? 0,
  };
  bytesPerParam(layout.precision, layout.optimizer);
  _choice("zeroStage", layout.zeroStage, [0, 1, 2, 3]);
  let params: number;
  let counts: number[];
  let persistent: number[] = [];
  let acts: ActivationBytes | null = null;
  if (shape) {
    params = countParams(shape);
    counts = stageParamCounts(shape, { tp, pp });
    if (layout.zeroStage === 3 && layout.persistenceThreshold > 0) {
      persistent = stagePersistentCounts(shape, { tp, pp }, layout.persistenceThreshold);
    }
    acts = activationBytes(shape, rest);
  } else {
    params = _count("params", given!);
    const needShape = [
      "microBatch",
      "seqLen",
      "checkpointActivations",
      "sequenceParallel",
      "microBatches",
      "persistenceThreshold",
    ];
    for (const k of needShape) {
      if ((rest as Record<string, unknown>)[k] !== undefined) {
        throw new TypeError(`${k} needs the model's shape: give shape instead of params`);
      }
    }
    counts = Array.from({ length: pp }, () => Math.ceil(params / (tp * pp)));
  }
  const stages: StageMemory[] = counts.map((count, s) => {
    const modelStates = modelStateBytes(count, { ...rest, persistent: persistent[s] ?? 0 });
    const activations = acts ? acts.stages[s]! : null;
    const totalBytes = modelStates.totalBytes + (activations?.totalBytes ?? 0);
    return { stage: s, modelStates, activations, totalBytes };
  });
  let most = stages[0]!, largest = stages[0]!;
  for (const s of stages) {
    if (s.modelStates.totalBytes > most.modelStates.totalBytes) most = s;
    if (s.totalBytes > largest.totalBytes) largest = s;
  }
  return {
    params,
    shape: shape ? { ...shape } : null,
    layout,
    stages,
    modelStates: most.modelStates,
    modelStatesBytesPerRank: most.modelStates.totalBytes,
    activationsBytesPerRank: acts ? acts.maxBytes : null,
    totalBytesPerRank: largest.totalBytes,
    largestStage: largest.stage,
  };
}

function _modelLayout(shape: ModelShape, layout: Pick<MemoryLayout, "tp" | "pp">) {
  if (shape === null || typeof shape !== "object") {
    throw new TypeError(
      "The model shape must be an object like { vocab, ctx, dim, layers, heads }",
    );
  }
  const c = resolveGptConfig(shape);
  const tp = _count("tp", layout.tp ?? 1);
  const m = checkModelLayout({
    heads: c.heads,
    layers: c.layers,
    vocab: c.vocab,
    tp,
    pp: layout.pp,
  });
  if (c.hidden % tp !== 0) {
    throw new RangeError(
      `Cannot split the MLP width ${c.hidden} across tp=${tp}: choose a tp that divides it`,
    );
  }
  return m;
}

function _count(name: string, v: number, min = 1): number {
  if (typeof v !== "number") {
    throw new TypeError(`${name} must be a number, got ${JSON.stringify(v)}`);
  }
  if (!Number.isSafeInteger(v) || v < min) {
    throw new RangeError(`${name} must be an integer >= ${min}, got ${v}`);
  }
  return v;
}

function _choice<T>(name: string, v: T, choices: readonly T[]): void {
  if (!choices.includes(v)) {
    throw new RangeError(`${name} must be one of ${choices.join(", ")}, got ${JSON.stringify(v)}`);
  }
}
