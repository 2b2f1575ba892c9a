/**
 * Vocabulary-parallel softmax cross-entropy, and the output head built on it. Each rank holds
 * the logits of its vocabulary shard `[N, V/tp]`; the full logits are never gathered. Per row,
 * the max, the sum of exponentials and the target's logit are reduced across the tensor group:
 *
 * ```
 * loss = log(sum_j exp(z_j - max)) + max - z_target
 * ```
 *
 * and the gradient of each shard is `softmax(z) - onehot(target)` on that shard. With one rank
 * the head uses the backend's own cross-entropy op instead (the serial head).
 *
 * @module
 */

import type { Backend, Tensor } from "../kernels/mod.ts";
import type { ParamSpec } from "../optim/mod.ts";
import { Arena, GRAD_SLOT } from "./_arena.ts";
import {
  type Layer,
  type LayerContext,
  saved,
  seqFactor,
  slotOf,
  splitOn,
  type Step,
} from "./layer.ts";
import { LayerNorm } from "./layernorm.ts";
import {
  copyToRegion,
  gatherFromSequence,
  type TensorParallel,
  tpRank,
  tpSize,
} from "./mappings.ts";

/** What the forward keeps for the backward. */
export interface VocabParallelSaved {
  /**
   * Softmax probabilities of this rank's shard `[N, V/tp]` (the head keeps them in its
   * activation type and passes them back in).
   */
  readonly probs: Float32Array;
  /** The targets `[N]` (negative = ignored). */
  readonly targets: Int32Array;
  /** Rows. */
  readonly N: number;
  /** Vocabulary entries on this rank. */
  readonly vocabLocal: number;
  /** First vocabulary entry on this rank. */
  readonly vocabStart: number;
}

async function hostFloats(be: Backend, t: Tensor): Promise<Float32Array | Float64Array> {
  const v = be.hostView(t);
  if (v instanceof Float32Array || v instanceof Float64Array) return v;
  return Float32Array.from(await be.read(t) as ArrayLike<number>);
}

/**
 * Forward: per-row losses of the softmax over the whole vocabulary, from this rank's shard.
 * Collective over the tensor group (two all-reduces: max, then sum-exp and target logit).
 *
 * @param be the backend
 * @param tp the tensor-parallel group
 * @param logits this rank's logits `[N, vocabLocal]`
 * @param targets `[N]` i32 target ids in the whole vocabulary (negative = ignored, loss 0)
 * @param N rows
 * @param vocabLocal vocabulary entries on this rank
 * @param vocabStart first vocabulary entry on this rank
 * @returns the losses `[N]` and what the backward needs
 */
export async function vocabParallelCrossEntropy(
  be: Backend,
  tp: TensorParallel,
  logits: Tensor,
  targets: Tensor,
  N: number,
  vocabLocal: number,
  vocabStart: number,
): Promise<{ losses: Float32Array; saved: VocabParallelSaved }> {
  const z = await hostFloats(be, logits);
  const tg = Int32Array.from(await be.read(targets) as ArrayLike<number>).subarray(0, N);
  const V = vocabLocal;
  const max = new Float32Array(N);
  for (let i = 0; i < N; i++) {
    let m = -Infinity;
    for (let j = 0; j < V; j++) m = Math.max(m, z[i * V + j]!);
    max[i] = m;
  }
  const opts = tp.timeoutMs === undefined ? undefined : { timeoutMs: tp.timeoutMs };
  const multi = tp.comm !== null && tp.comm.size > 1;
  if (multi) await tp.comm!.allReduce(max, "max", opts);
  const probs = new Float32Array(N * V);
  // sums[i] = sum of exp(z - max) over this shard; sums[N + i] = the target logit if here.
  const sums = new Float32Array(2 * N);
  for (let i = 0; i < N; i++) {
    let s = 0;
    for (let j = 0; j < V; j++) {
      const e = Math.exp(z[i * V + j]! - max[i]!);
      probs[i * V + j] = e;
      s += e;
    }
    sums[i] = s;
    const t = tg[i]! - vocabStart;
    if (tg[i]! >= 0 && t >= 0 && t < V) sums[N + i] = z[i * V + t]!;
  }
  if (multi) await tp.comm!.allReduce(sums, "sum", opts);
  const losses = new Float32Array(N);
  for (let i = 0; i < N; i++) {
    const inv = 1 / sums[i]!;
    for (let j = 0; j < V; j++) probs[i * V + j]! *= inv;
    losses[i] = tg[i]! < 0 ? 0 : Math.log(sums[i]!) + max[i]! - sums[N + i]!;
  }
  return { losses, saved: { probs, targets: tg, N, vocabLocal, vocabStart } };
}

/**
 * Backward: `dlogits[N, vocabLocal] = (softmax - onehot(target)) * dloss` on this rank's shard;
 * rows with a negative target get 0. No communication.
 *
 * @param be the backend
 * @param dlogits gradient of this rank's logits (overwritten)
 * @param s what the forward kept
 * @param dloss the gradient of each row's loss
 */
export function vocabParallelCrossEntropyBackward(
  be: Backend,
  dlogits: Tensor,
  s: VocabParallelSaved,
  dloss: number,
): void {
  const { N, vocabLocal: V, vocabStart, targets, probs } = s;
  const d = new Float32Array(N * V);
  for (let i = 0; i < N; i++) {
    if (targets[i]! < 0) continue;
    for (let j = 0; j < V; j++) d[i * V + j] = probs[i * V + j]! * dloss;
    const t = targets[i]! - vocabStart;
    if (t >= 0 && t < V) d[i * V + t]! -= dloss;
  }
  be.write(dlogits, d);
}

/** Options of {@linkcode VocabParallelHead}. */
export interface HeadOptions {
  /** Whether the head reuses `wte` (else `lm_head.weight`); default true. */
  tied?: boolean;
  /** Layernorm epsilon; default 1e-5. */
  eps?: number;
  /** The group of stages that also hold the tied `wte`. */
  tie?: string;
  /** This stage's `wte` stands in for the embedding's (on another stage). */
  mirror?: boolean;
}

/**
 * The output head with the vocabulary split: final layernorm `ln_f` (replicated), logits of this
 * rank's vocabulary rows `z_i = ln_f(x) W_i^T` with `W` = `wte` (tied) or `lm_head.weight`,
 * `[V/tp, C]` here, and the mean cross-entropy over targets >= 0. Forward returns the loss `[1]`
 * (the same on every rank) when the step has targets, else this rank's logits
 * `[B*T_full, V/tp]`.
 */
export class VocabParallelHead implements Layer {
  /** `ln_f.*` and this rank's rows of the output weight. */
  readonly specs: readonly ParamSpec[];
  /** First vocabulary row this rank holds. */
  readonly vocabStart: number;
  /** The final layernorm. */
  readonly lnf: LayerNorm;
  #c: LayerContext;
  #w: string;
  #V: number;
  #C: number;
  #arena: Arena;
  #saved: ({ h: Tensor; ce?: VocabParallelSaved } | undefined)[] = [];

  /**
   * Build the layer.
   *
   * @param ctx backend, tensor-parallel group, parameter store, pool and activation type
   * @param vocab the serial (padded) vocabulary, a multiple of tp
   * @param dim the model width C
   * @param opts tied or not, epsilon, the tie to another stage
   */
  constructor(ctx: LayerContext, vocab: number, dim: number, opts: HeadOptions = {}) {
    const size = tpSize(ctx.tp);
    if (vocab % size !== 0) {
      throw new RangeError(
        `Vocabulary ${vocab} does not split across tp=${size}: pad it with checkModelLayout()`,
      );
    }
    this.#V = vocab / size;
    this.vocabStart = tpRank(ctx.tp) * this.#V;
    const tied = opts.tied ?? true;
    this.#w = tied ? "wte" : "lm_head.weight";
    this.lnf = new LayerNorm(ctx, "ln_f", dim, opts.eps ?? 1e-5);
    this.specs = [
      ...this.lnf.specs,
      {
        name: this.#w,
        shape: [this.#V, dim],
        full: [vocab, dim],
        split: splitOn(ctx.tp, 0),
        ...(tied && opts.tie ? { tie: opts.tie } : {}),
        ...(tied && opts.mirror ? { mirror: true } : {}),
      },
    ];
    this.#c = ctx;
    this.#C = dim;
    this.#arena = new Arena(ctx.backend, ctx.pool, "head");
  }

  /**
   * Compute the loss (or the logits) and keep what backward needs.
   *
   * @param x the input `[B*T, C]`
   * @param step the shape and slot of the pass
   * @returns the loss `[1]`, or this rank's logits without targets
   */
  async forward(x: Tensor, step: Step): Promise<Tensor> {
    const slot = slotOf(step);
    const { backend: be, tp, store } = this.#c;
    const dt = this.#c.dtype ?? "f32";
    const n = step.B * step.T;
    const N = n * seqFactor(tp);
    const C = this.#C, V = this.#V;
    const a = this.#arena;
    const h = await this.lnf.forward(x, step);
    let hf = h;
    if (tp.sequenceParallel) {
      hf = a.get(slot, "hfull", N * C, dt);
      await gatherFromSequence.forward(be, tp, hf, h);
    } else {
      await copyToRegion.forward(be, tp, h);
    }
    const logits = a.get(slot, "logits", N * V, dt);
    be.matmul(logits, hf, store.value(this.#w), null, N, V, C, { transB: true });
    if (!step.targets) {
      this.#saved[slot] = { h: hf };
      return logits;
    }
    const loss = a.get(slot, "loss", 1);
    const count = step.count ?? N;
    if (tpSize(tp) === 1) {
      const losses = a.get(slot, "losses", N);
      be.crossEntropyForward(losses, a.get(slot, "probs", N * V, dt), logits, step.targets, N, V);
      be.sumRows(loss, losses, N, 1);
      be.scale(loss, count > 0 ? 1 / count : 0, 1);
      this.#saved[slot] = { h: hf };
      return loss;
    }
    const { losses, saved: ce } = await vocabParallelCrossEntropy(
      be,
      tp,
      logits,
      step.targets,
      N,
      V,
      this.vocabStart,
    );
    // The probabilities are an activation kept for backward: stored in the activation type.
    const probs = a.get(slot, "probs", N * V, dt);
    be.write(probs, ce.probs);
    this.#saved[slot] = { h: hf, ce: { ...ce, probs: new Float32Array(0) } };
    let sum = 0;
    for (const l of losses) sum += l;
    be.write(loss, new Float32Array([count > 0 ? sum / count : 0]));
    return loss;
  }

  /**
   * Add into the parameter gradients and return the input's gradient.
   *
   * @param _dy ignored: the head starts from its loss
   * @param step the shape and slot of the matching forward
   * @returns the input's gradient
   */
  async backward(_dy: Tensor | null, step: Step): Promise<Tensor> {
    const slot = slotOf(step);
    const s = saved(this.#saved, slot, "VocabParallelHead");
    if (!step.targets) throw new TypeError("VocabParallelHead.backward needs the step's targets");
    const { backend: be, tp, store } = this.#c;
    const dt = this.#c.dtype ?? "f32";
    const n = step.B * step.T;
    const N = n * seqFactor(tp);
    const C = this.#C, V = this.#V;
    const a = this.#arena;
    const count = step.count ?? N;
    const dloss = count > 0 ? (step.gradScale ?? 1) / count : 0;
    const dlogits = a.get(slot, "logits", N * V, dt);
    if (s.ce) {
      const probs = Float32Array.from(await be.read(a.get(slot, "probs", N * V, dt)));
      vocabParallelCrossEntropyBackward(be, dlogits, { ...s.ce, probs }, dloss);
    } else {
      be.fill(dlogits, 0);
      be.crossEntropyBackward(dlogits, a.get(slot, "probs", N * V, dt), step.targets, dloss, N, V);
    }
    const w = store.value(this.#w);
    const dhf = a.get(GRAD_SLOT, "dhfull", N * C, dt);
    be.matmul(dhf, dlogits, w, null, N, C, V);
    be.matmul(store.grad(this.#w), dlogits, s.h, null, V, C, N, { transA: true, accumulate: true });
    let dh = dhf;
    if (tp.sequenceParallel) {
      dh = a.get(GRAD_SLOT, "dh", n * C, dt);
      await gatherFromSequence.backward(be, tp, dh, dhf);
    } else {
      await copyToRegion.backward(be, tp, dhf);
    }
    return await this.lnf.backward(dh, step);
  }
}
