/**
 * VocabParallelEmbedding: token plus position embedding with the token table split by
 * vocabulary rows. Rank i holds rows `[i * V/tp, (i+1) * V/tp)` of `wte`; a token outside that
 * range gives zeros there, so summing over ranks ({@linkcode reduceFromRegion}, or with
 * sequence parallelism {@linkcode reduceScatterToSequence}) yields exactly the serial rows.
 * The position table `wpe` is replicated; rank 0 adds it before the sum. With one rank it is
 * the serial embedding. Dropout (GPT-2's `embd_pdrop`) applies to the sum.
 *
 * @module
 */

import type { Tensor } from "../kernels/mod.ts";
import type { ParamSpec } from "../optim/mod.ts";
import { Arena, GRAD_SLOT } from "./_arena.ts";
import {
  dropoutKey,
  dropoutSalt,
  type Layer,
  type LayerContext,
  saved,
  seqFactor,
  slotOf,
  splitOn,
  type Step,
} from "./layer.ts";
import { reduceFromRegion, reduceScatterToSequence, tpRank, tpSize } from "./mappings.ts";

/** Options of {@linkcode VocabParallelEmbedding}. */
export interface EmbeddingOptions {
  /** The group of stages that also hold `wte` (a head tied to it on another stage). */
  tie?: string;
}

/**
 * `x[b, t] = wte[ids[b, t]] + wpe[t]` with `wte` `[V/tp, C]` this rank's vocabulary rows and
 * `wpe` `[ctx, C]` whole. Input: token ids `[B*T_full]` (i32); output `[B*T, C]` (this rank's
 * rows with sequence parallelism). Backward returns `null`.
 */
export class VocabParallelEmbedding implements Layer {
  /** `wte` `[V/tp, C]` and `wpe` `[ctx, C]`. */
  readonly specs: readonly ParamSpec[];
  /** First vocabulary row this rank holds. */
  readonly vocabStart: number;
  #c: LayerContext;
  #C: number;
  #ctx: number;
  #salt = dropoutSalt("embedding");
  #arena: Arena;
  #ids: (Tensor | undefined)[] = [];

  /**
   * Build the layer.
   *
   * @param ctx backend, tensor-parallel group, parameter store, pool and activation type
   * @param vocab the serial (padded) vocabulary V, a multiple of tp
   * @param ctxLen the longest sequence
   * @param dim the model width C
   * @param opts the tie of `wte` to another stage
   */
  constructor(
    ctx: LayerContext,
    vocab: number,
    ctxLen: number,
    dim: number,
    opts: EmbeddingOptions = {},
  ) {
    const size = tpSize(ctx.tp);
    if (vocab % size !== 0) {
      throw new RangeError(
        `Vocabulary ${vocab} does not split across tp=${size}: pad it with checkModelLayout()`,
      );
    }
    const local = vocab / size;
    this.vocabStart = tpRank(ctx.tp) * local;
    this.specs = [
      {
        name: "wte",
        shape: [local, dim],
        full: [vocab, dim],
        split: splitOn(ctx.tp, 0),
        ...(opts.tie ? { tie: opts.tie } : {}),
      },
      { name: "wpe", shape: [ctxLen, dim] },
    ];
    this.#c = ctx;
    this.#C = dim;
    this.#ctx = ctxLen;
    this.#arena = new Arena(ctx.backend, ctx.pool, "embedding");
  }

  #full(step: Step): [number, number] {
    const T = step.T * seqFactor(this.#c.tp);
    if (T > this.#ctx) {
      throw new RangeError(`Sequence length ${T} exceeds the context ${this.#ctx}`);
    }
    return [step.B, T];
  }

  #drop(t: Tensor, step: Step): void {
    const d = step.dropout;
    if (!d || d.p === 0) return;
    const rows = step.B * step.T;
    const rowOffset = d.seqOffset * step.T * seqFactor(this.#c.tp) +
      (this.#c.tp.sequenceParallel ? tpRank(this.#c.tp) * rows : 0);
    this.#c.backend.dropout(t, t, rows, this.#C, d.p, dropoutKey(d, this.#salt), rowOffset);
  }

  /**
   * Compute the output and keep what backward needs.
   *
   * @param ids the token ids `[B*T_full]`
   * @param step the shape and slot of the pass
   * @returns the embeddings
   */
  async forward(ids: Tensor, step: Step): Promise<Tensor> {
    const slot = slotOf(step);
    const [B, T] = this.#full(step);
    const C = this.#C;
    const { backend: be, tp, store } = this.#c;
    const dt = this.#c.dtype ?? "f32";
    const x = this.#arena.get(slot, "x", B * T * C, dt);
    be.embeddingForward(x, ids, store.value("wte"), B * T, C, this.vocabStart);
    // Positions past..past+T-1 when decoding with a cache.
    const at = step.cache?.past ?? 0;
    if (tpRank(tp) === 0) be.addRows(x, be.view(store.value("wpe"), at * C, T * C), B, T * C);
    this.#ids[slot] = ids;
    let y = x;
    if (!tp.sequenceParallel) {
      await reduceFromRegion.forward(be, tp, x);
    } else {
      y = this.#arena.get(slot, "y", step.B * step.T * C, dt);
      await reduceScatterToSequence.forward(be, tp, y, x);
    }
    this.#drop(y, step);
    return y;
  }

  /**
   * Add into the parameter gradients.
   *
   * @param dy the output's gradient (overwritten: dropout's mask is applied in place)
   * @param step the shape and slot of the matching forward
   * @returns `null`: the input is token ids
   */
  async backward(dy: Tensor | null, step: Step): Promise<null> {
    const slot = slotOf(step);
    const ids = saved(this.#ids, slot, "VocabParallelEmbedding");
    if (!dy) throw new TypeError("VocabParallelEmbedding.backward needs dy");
    const [B, T] = this.#full(step);
    const C = this.#C;
    const { backend: be, tp, store } = this.#c;
    this.#drop(dy, step);
    let dx = dy;
    if (tp.sequenceParallel) {
      dx = this.#arena.get(GRAD_SLOT, "dx", B * T * C, this.#c.dtype ?? "f32");
      await reduceScatterToSequence.backward(be, tp, dx, dy);
    } else {
      await reduceFromRegion.backward(be, tp, dy);
    }
    be.embeddingBackward(store.grad("wte"), dx, ids, B * T, C, this.vocabStart);
    be.sumRows(be.view(store.grad("wpe"), 0, T * C), dx, B, T * C, true);
    return null;
  }
}
