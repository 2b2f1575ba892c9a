/**
 * VocabParallelEmbedding: token plus position embedding with the token table split by
 * vocabulary rows. Rank i holds rows `[i * V/tp, (i+1) * V/tp)` of `wte`; a token outside that
 * range gives zeros there, so summing over ranks ({@linkcode reduceFromRegion}, or with
 * sequence parallelism {@linkcode reduceScatterToSequence}) yields exactly the serial rows.
 * The position table `wpe` is replicated; rank 0 adds it before the sum.
 *
 * @module
 */

import type { Backend, Tensor } from "../kernels/mod.ts";
import type { ParamSpec } from "../optim/mod.ts";
import { Arena, GRAD_SLOT, saved, slotOf } from "./_arena.ts";
import type { ParallelLayer, ParallelStep, ParamSource } from "./layer.ts";
import {
  reduceFromRegion,
  reduceScatterToSequence,
  type TensorParallel,
  tpRank,
  tpSize,
} from "./mappings.ts";

/**
 * `x[b, t] = wte[ids[b, t]] + wpe[t]` with `wte` `[V/tp, C]` this rank's vocabulary rows and
 * `wpe` `[ctx, C]` whole. Input: token ids `[B*T_full]` (i32); output `[B*T, C]` (this rank's
 * rows with sequence parallelism). Backward returns `null`.
 */
export class VocabParallelEmbedding implements ParallelLayer {
  /** `wte` `[V/tp, C]` and `wpe` `[ctx, C]`. */
  readonly specs: readonly ParamSpec[];
  /** First vocabulary row this rank holds. */
  readonly vocabStart: number;
  #be: Backend;
  #tp: TensorParallel;
  #wte: Tensor;
  #dwte: Tensor;
  #wpe: Tensor;
  #dwpe: Tensor;
  #C: number;
  #ctx: number;
  #arena: Arena;
  #ids = new Map<number, Tensor>();

  /**
   * Build the layer.
   *
   * @param backend the backend
   * @param tp the tensor-parallel group
   * @param store where `wte` (this rank's rows) and `wpe` live
   * @param vocab the serial (padded) vocabulary V, a multiple of tp
   * @param ctx the longest sequence
   * @param dim the model width C
   */
  constructor(
    backend: Backend,
    tp: TensorParallel,
    store: ParamSource,
    vocab: number,
    ctx: number,
    dim: number,
  ) {
    const size = tpSize(tp);
    if (vocab % size !== 0) {
      throw new RangeError(
        `Vocabulary ${vocab} does not split across tp=${size}: pad it with checkModelLayout()`,
      );
    }
    const local = vocab / size;
    this.vocabStart = tpRank(tp) * local;
    this.specs = [{ name: "wte", shape: [local, dim] }, { name: "wpe", shape: [ctx, dim] }];
    this.#be = backend;
    this.#tp = tp;
    this.#C = dim;
    this.#ctx = ctx;
    this.#wte = store.value("wte");
    this.#dwte = store.grad("wte");
    this.#wpe = store.value("wpe");
    this.#dwpe = store.grad("wpe");
    this.#arena = new Arena(backend);
  }

  #full(step: ParallelStep): [number, number] {
    const T = step.T * (this.#tp.sequenceParallel ? tpSize(this.#tp) : 1);
    if (T > this.#ctx) {
      throw new RangeError(`Sequence length ${T} exceeds the context ${this.#ctx}`);
    }
    return [step.B, T];
  }

  /**
   * Compute the output and keep what backward needs.
   *
   * @param ids the token ids
   * @param step the shape and slot of the pass
   * @returns the output
   */
  async forward(ids: Tensor, step: ParallelStep): Promise<Tensor> {
    const slot = slotOf(step);
    const [B, T] = this.#full(step);
    const C = this.#C;
    const be = this.#be;
    const x = this.#arena.get(slot, "x", B * T * C);
    be.embeddingForward(x, ids, this.#wte, B * T, C, this.vocabStart);
    if (tpRank(this.#tp) === 0) be.addRows(x, be.view(this.#wpe, 0, T * C), B, T * C);
    this.#ids.set(slot, ids);
    if (!this.#tp.sequenceParallel) {
      await reduceFromRegion.forward(be, this.#tp, x);
      return x;
    }
    const y = this.#arena.get(slot, "y", step.B * step.T * C);
    await reduceScatterToSequence.forward(be, this.#tp, y, x);
    return y;
  }

  /**
   * Add into the parameter gradients and return the input's gradient.
   *
   * @param dy the output's gradient
   * @param step the shape and slot of the matching forward
   * @returns the input's gradient
   */
  async backward(dy: Tensor | null, step: ParallelStep): Promise<null> {
    const slot = slotOf(step);
    const ids = saved(this.#ids, slot, "VocabParallelEmbedding");
    if (!dy) throw new TypeError("VocabParallelEmbedding.backward needs dy");
    const [B, T] = this.#full(step);
    const C = this.#C;
    const be = this.#be;
    let dx = dy;
    if (this.#tp.sequenceParallel) {
      dx = this.#arena.get(GRAD_SLOT, "dx", B * T * C);
      await reduceScatterToSequence.backward(be, this.#tp, dx, dy);
    } else {
      await reduceFromRegion.backward(be, this.#tp, dy);
    }
    be.embeddingBackward(this.#dwte, dx, ids, B * T, C, this.vocabStart);
    be.sumRows(be.view(this.#dwpe, 0, T * C), dx, B, T * C, true);
    return null;
  }
}
