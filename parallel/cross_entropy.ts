/**
 * Vocabulary-parallel softmax cross-entropy, and the output head built on it. Each rank holds
 * the logits of its vocabulary shard `[N, V/tp]`; the full logits are never gathered. Per row,
 * the max, the sum of exponentials and the target's logit are reduced across the tensor group:
 *
 * ```
 * loss = log(sum_j exp(z_j - max)) + max - z_target
 * ```
 *
 * and the gradient of each shard is `softmax(z) - onehot(target)` on that shard.
 *
 * @module
 */

import type { Backend, Tensor } from "../kernels/mod.ts";
import type { ParamSpec } from "../optim/mod.ts";
import { Arena, GRAD_SLOT, saved, slotOf } from "./_arena.ts";
import type { ParallelLayer, ParallelStep, ParamSource } from "./layer.ts";
import {
  copyToRegion,
  gatherFromSequence,
  type TensorParallel,
  tpRank,
  tpSize,
} from "./mappings.ts";

/** What the forward keeps for the backward. */
export interface VocabParallelSaved {
  /** Softmax probabilities of this rank's shard `[N, V/tp]`. */
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

async function host(be: Backend, t: Tensor): Promise<Float32Array | Float64Array | Int32Array> {
  return be.hostView(t) ?? await be.read(t);
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
  const z = await host(be, logits);
  const tg = Int32Array.from(await host(be, targets) as ArrayLike<number>).subarray(0, N);
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
 * Backward: `dlogits[N, vocabLocal] += (softmax - onehot(target)) * dloss` on this rank's
 * shard; rows with a negative target add nothing. No communication.
 *
 * @param be the backend
 * @param dlogits gradient of this rank's logits (added into)
 * @param s what the forward kept
 * @param dloss the gradient of each row's loss
 */
export async function vocabParallelCrossEntropyBackward(
  be: Backend,
  dlogits: Tensor,
  s: VocabParallelSaved,
  dloss: number,
): Promise<void> {
  const { N, vocabLocal: V, vocabStart, targets, probs } = s;
  const live = be.hostView(dlogits);
  const d = live ?? await be.read(dlogits);
  for (let i = 0; i < N; i++) {
    if (targets[i]! < 0) continue;
    for (let j = 0; j < V; j++) d[i * V + j]! += probs[i * V + j]! * dloss;
    const t = targets[i]! - vocabStart;
    if (t >= 0 && t < V) d[i * V + t]! -= dloss;
  }
  if (!live) be.write(dlogits, d);
}

/**
 * The output head with the vocabulary split: final layernorm `ln_f` (replicated), logits of this
 * rank's vocabulary rows `z_i = ln_f(x) W_i^T` with `W` = `wte` (tied) or `lm_head.weight`,
 * `[V/tp, C]` here, and the mean vocabulary-parallel cross-entropy over targets >= 0. Forward
 * returns the loss `[1]` (the same on every rank) when the step has targets, else this rank's
 * logits `[B*T_full, V/tp]`.
 */
export class VocabParallelHead implements ParallelLayer {
  /** `ln_f.*` and this rank's rows of the output weight. */
  readonly specs: readonly ParamSpec[];
  /** First vocabulary row this rank holds. */
  readonly vocabStart: number;
  #be: Backend;
  #tp: TensorParallel;
  #lnw: Tensor;
  #lnb: Tensor;
  #dlnw: Tensor;
  #dlnb: Tensor;
  #w: Tensor;
  #dw: Tensor;
  #V: number;
  #C: number;
  #eps: number;
  #arena: Arena;
  #saved = new Map<number, { x: Tensor; h: Tensor; ce?: VocabParallelSaved }>();

  /**
   * Build the layer.
   *
   * @param backend the backend
   * @param tp the tensor-parallel group
   * @param store where this rank's parameters live
   * @param vocab the serial (padded) vocabulary, a multiple of tp
   * @param dim the model width C
   * @param tied whether the head uses `wte` (else `lm_head.weight`)
   * @param eps the layernorm epsilon
   */
  constructor(
    backend: Backend,
    tp: TensorParallel,
    store: ParamSource,
    vocab: number,
    dim: number,
    tied = true,
    eps = 1e-5,
  ) {
    const size = tpSize(tp);
    if (vocab % size !== 0) {
      throw new RangeError(
        `Vocabulary ${vocab} does not split across tp=${size}: pad it with checkModelLayout()`,
      );
    }
    this.#V = vocab / size;
    this.vocabStart = tpRank(tp) * this.#V;
    const wName = tied ? "wte" : "lm_head.weight";
    this.specs = [
      { name: "ln_f.weight", shape: [dim] },
      { name: "ln_f.bias", shape: [dim] },
      { name: wName, shape: [this.#V, dim] },
    ];
    this.#be = backend;
    this.#tp = tp;
    this.#C = dim;
    this.#eps = eps;
    this.#lnw = store.value("ln_f.weight");
    this.#lnb = store.value("ln_f.bias");
    this.#dlnw = store.grad("ln_f.weight");
    this.#dlnb = store.grad("ln_f.bias");
    this.#w = store.value(wName);
    this.#dw = store.grad(wName);
    this.#arena = new Arena(backend);
  }

  /**
   * Compute the output and keep what backward needs.
   *
   * @param x the input
   * @param step the shape and slot of the pass
   * @returns the output
   */
  async forward(x: Tensor, step: ParallelStep): Promise<Tensor> {
    const slot = slotOf(step);
    const sp = this.#tp.sequenceParallel === true;
    const n = step.B * step.T;
    const N = n * (sp ? tpSize(this.#tp) : 1);
    const C = this.#C;
    const be = this.#be;
    const a = this.#arena;
    const h = a.get(slot, "h", n * C);
    be.layernormForward(
      h,
      a.get(slot, "mean", n),
      a.get(slot, "rstd", n),
      x,
      this.#lnw,
      this.#lnb,
      n,
      C,
      this.#eps,
    );
    let hf = h;
    if (sp) {
      hf = a.get(slot, "hfull", N * C);
      await gatherFromSequence.forward(be, this.#tp, hf, h);
    } else {
      await copyToRegion.forward(be, this.#tp, h);
    }
    const logits = a.get(slot, "logits", N * this.#V);
    be.matmul(logits, hf, this.#w, null, N, this.#V, C, { transB: true });
    if (!step.targets) {
      this.#saved.set(slot, { x, h: hf });
      return logits;
    }
    const { losses, saved: ce } = await vocabParallelCrossEntropy(
      be,
      this.#tp,
      logits,
      step.targets,
      N,
      this.#V,
      this.vocabStart,
    );
    this.#saved.set(slot, { x, h: hf, ce });
    let sum = 0;
    for (const l of losses) sum += l;
    const count = step.count ?? N;
    const loss = a.get(slot, "loss", 1);
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
  async backward(_dy: Tensor | null, step: ParallelStep): Promise<Tensor> {
    const slot = slotOf(step);
    const s = saved(this.#saved, slot, "VocabParallelHead");
    if (!s.ce) throw new TypeError("VocabParallelHead.backward needs the step's targets");
    const sp = this.#tp.sequenceParallel === true;
    const n = step.B * step.T;
    const N = n * (sp ? tpSize(this.#tp) : 1);
    const C = this.#C;
    const V = this.#V;
    const be = this.#be;
    const a = this.#arena;
    const count = step.count ?? N;
    const dlogits = a.get(slot, "logits", N * V);
    be.fill(dlogits, 0);
    await vocabParallelCrossEntropyBackward(
      be,
      dlogits,
      s.ce,
      count > 0 ? (step.gradScale ?? 1) / count : 0,
    );
    const dhf = a.get(GRAD_SLOT, "dhfull", N * C);
    be.matmul(dhf, dlogits, this.#w, null, N, C, V);
    be.matmul(this.#dw, dlogits, s.h, null, V, C, N, { transA: true, accumulate: true });
    let dh = dhf;
    if (sp) {
      dh = a.get(GRAD_SLOT, "dh", n * C);
      await gatherFromSequence.backward(be, this.#tp, dh, dhf);
    } else {
      await copyToRegion.backward(be, this.#tp, dhf);
    }
    const dx = a.get(GRAD_SLOT, "dx", n * C);
    be.fill(dx, 0);
    be.layernormBackward(
      dx,
      this.#dlnw,
      this.#dlnb,
      dh,
      s.x,
      this.#lnw,
      a.get(slot, "mean", n),
      a.get(slot, "rstd", n),
      n,
      C,
    );
    return dx;
  }
}
