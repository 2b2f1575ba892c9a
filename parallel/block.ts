/**
 * The pre-LN transformer block: `r = x + drop(attn(ln_1(x)))`, `y = r + drop(mlp(ln_2(r)))`,
 * with the attention and MLP split across the tensor group (two all-reduces in forward and two
 * in backward; with sequence parallelism each becomes an all-gather plus a reduce-scatter, and
 * the layernorms and residual adds run on this rank's rows only). With one rank it is the
 * serial block.
 *
 * Activation checkpointing: the block keeps only its input per micro-batch and recomputes its
 * inner activations (in the pool's shared recompute slot) right before its backward. Dropout
 * masks are pure functions of position, so the recomputation draws the same ones.
 *
 * @module
 */

import type { Tensor } from "../kernels/mod.ts";
import type { ParamSpec } from "../optim/mod.ts";
import { Arena, GRAD_SLOT, RECOMPUTE_SLOT } from "./_arena.ts";
import { Mlp, SelfAttention } from "./attention.ts";
import {
  dropoutKey,
  dropoutSalt,
  type Layer,
  type LayerContext,
  saved,
  seqFactor,
  slotOf,
  type Step,
} from "./layer.ts";
import { LayerNorm } from "./layernorm.ts";
import { tpRank } from "./mappings.ts";

/** Options of {@linkcode TransformerBlock}. */
export interface BlockOptions {
  /** MLP hidden width (serial); default 4 * dim. */
  hidden?: number;
  /** Layernorm epsilon; default 1e-5. */
  eps?: number;
  /** Standard deviation of the residual projections' initial weights; default 0.02. */
  projStd?: number;
  /** Recompute the block's activations in backward instead of keeping them. */
  checkpoint?: boolean;
}

/** GPT-2's block `h.${index}`. */
export class TransformerBlock implements Layer {
  /** This rank's parameters (layernorms replicated, the projections split). */
  readonly specs: readonly ParamSpec[];
  /** Normalisation before attention. */
  readonly ln1: LayerNorm;
  /** The attention. */
  readonly attn: SelfAttention;
  /** Normalisation before the MLP. */
  readonly ln2: LayerNorm;
  /** The MLP. */
  readonly mlp: Mlp;
  /** Whether the block recomputes its activations in backward. */
  readonly checkpoint: boolean;
  #c: LayerContext;
  #C: number;
  #salts: [number, number];
  #arena: Arena;
  #x: (Tensor | undefined)[] = [];

  /**
   * Build the block.
   *
   * @param ctx backend, tensor-parallel group, parameter store, pool and activation type
   * @param index the block's index (its parameters are `h.${index}.*`)
   * @param dim the model width C
   * @param heads attention heads (a multiple of tp)
   * @param opts MLP width, epsilon, initial scale of the projections, checkpointing
   */
  constructor(
    ctx: LayerContext,
    index: number,
    dim: number,
    heads: number,
    opts: BlockOptions = {},
  ) {
    const p = `h.${index}`;
    const eps = opts.eps ?? 1e-5;
    const proj = { projStd: opts.projStd };
    this.ln1 = new LayerNorm(ctx, `${p}.ln_1`, dim, eps, "ln_1");
    this.attn = new SelfAttention(ctx, `${p}.attn`, dim, heads, proj);
    this.ln2 = new LayerNorm(ctx, `${p}.ln_2`, dim, eps, "ln_2");
    this.mlp = new Mlp(ctx, `${p}.mlp`, dim, opts.hidden ?? 4 * dim, proj);
    this.specs = [...this.ln1.specs, ...this.attn.specs, ...this.ln2.specs, ...this.mlp.specs];
    this.checkpoint = opts.checkpoint ?? false;
    this.#c = ctx;
    this.#C = dim;
    this.#salts = [dropoutSalt(`${p}.attn.resid`), dropoutSalt(`${p}.mlp.resid`)];
    this.#arena = new Arena(ctx.backend, ctx.pool, "block");
  }

  // Dropout of a residual branch `t` [rows, C] (this rank's rows), in place or into `out`.
  #drop(out: Tensor, t: Tensor, step: Step, which: 0 | 1): void {
    const d = step.dropout!;
    const rows = step.B * step.T;
    const rowOffset = d.seqOffset * step.T * seqFactor(this.#c.tp) +
      (this.#c.tp.sequenceParallel ? tpRank(this.#c.tp) * rows : 0);
    this.#c.backend.dropout(
      out,
      t,
      rows,
      this.#C,
      d.p,
      dropoutKey(d, this.#salts[which]),
      rowOffset,
    );
  }

  async #forward(x: Tensor, step: Step, slot: number): Promise<Tensor> {
    const n = step.B * step.T * this.#C;
    const be = this.#c.backend;
    const dt = this.#c.dtype ?? "f32";
    const drop = (step.dropout?.p ?? 0) > 0;
    const a = await this.attn.forward(await this.ln1.forward(x, step), step);
    if (drop) this.#drop(a, a, step, 0);
    const r = this.#arena.get(slot, "r", n, dt);
    be.add(r, x, a, n);
    const m = await this.mlp.forward(await this.ln2.forward(r, step), step);
    if (drop) this.#drop(m, m, step, 1);
    const y = this.#arena.get(slot, "y", n, dt);
    be.add(y, r, m, n);
    return y;
  }

  /**
   * Compute the output and keep what backward needs.
   *
   * @param x the input `[B*T, C]` (this rank's rows with sequence parallelism)
   * @param step the shape and slot of the pass
   * @returns the output, same shape
   */
  async forward(x: Tensor, step: Step): Promise<Tensor> {
    const slot = slotOf(step);
    if (!this.checkpoint || slot === RECOMPUTE_SLOT) return await this.#forward(x, step, slot);
    const y = await this.#forward(x, { ...step, slot: RECOMPUTE_SLOT }, RECOMPUTE_SLOT);
    const out = this.#arena.get(slot, "out", y.length, y.dtype);
    this.#c.backend.copy(out, y);
    this.#x[slot] = x;
    return out;
  }

  /**
   * Add into the parameter gradients and return the input's gradient.
   *
   * @param dy the output's gradient
   * @param step the shape and slot of the matching forward
   * @returns the input's gradient
   */
  async backward(dy: Tensor | null, step: Step): Promise<Tensor> {
    if (!dy) throw new TypeError("TransformerBlock.backward needs dy");
    if (this.checkpoint) {
      const x = saved(this.#x, slotOf(step), "TransformerBlock");
      step = { ...step, slot: RECOMPUTE_SLOT };
      await this.#forward(x, step, RECOMPUTE_SLOT);
    }
    const n = step.B * step.T * this.#C;
    const be = this.#c.backend;
    const dt = this.#c.dtype ?? "f32";
    const drop = (step.dropout?.p ?? 0) > 0;
    // dr carries the residual stream's gradient; it becomes dx once ln_1 has added into it.
    // With a pool, dy may be the dr of the block above: the same buffer.
    const dr = this.#arena.get(GRAD_SLOT, "dr", n, dt);
    if (dr !== dy) be.copy(dr, dy);
    let branch = dr;
    if (drop) {
      branch = this.#arena.get(GRAD_SLOT, "dbranch", n, dt);
      this.#drop(branch, dr, step, 1);
    }
    this.ln2.backwardAdd(dr, await this.mlp.backward(branch, step), step);
    if (drop) this.#drop(branch, dr, step, 0);
    this.ln1.backwardAdd(dr, await this.attn.backward(branch, step), step);
    return dr;
  }
}
