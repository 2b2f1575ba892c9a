/**
 * Causal self-attention and the MLP, with heads and hidden width split across the tensor group.
 * GPT-2's `c_attn` maps C to `[q | k | v]`, each in head order, so rank i's column piece is its
 * part of each of the three blocks, which is exactly the `[q_i | k_i | v_i]` layout of its
 * `H/tp` heads. `c_proj` is row-parallel: its rows are the attention channels in head order.
 * One all-reduce in forward (after `c_proj`) and one in backward (before `c_attn`'s input).
 * With one rank these are the serial layers.
 *
 * Dropout on the attention probabilities draws each mask element from its global position
 * (sequence in the step's batch, head, query, key), so every layout drops the same elements.
 *
 * @module
 */

import type { AttentionDropout, Tensor } from "../kernels/mod.ts";
import type { ParamSpec } from "../optim/mod.ts";
import { Arena, GRAD_SLOT, RECOMPUTE_SLOT } from "./_arena.ts";
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
import { ColumnParallelLinear, RowParallelLinear } from "./linear.ts";
import { tpRank, tpSize } from "./mappings.ts";

/** The layer's own slot of its key/value cache (not a micro-batch's, not pooled). */
const KV_SLOT = RECOMPUTE_SLOT + 1;

/** Options of {@linkcode SelfAttention} and {@linkcode Mlp}. */
export interface ProjectionOptions {
  /** Standard deviation of the output projection's initial weights; default 0.02. */
  projStd?: number;
}

/** `c_proj(attention(c_attn(x)))` over this rank's `H/tp` heads. */
export class SelfAttention implements Layer {
  /** This rank's pieces of `${name}.c_attn.*` and `${name}.c_proj.*`. */
  readonly specs: readonly ParamSpec[];
  /** The q | k | v projection (column-parallel). */
  readonly cAttn: ColumnParallelLinear;
  /** The output projection (row-parallel). */
  readonly cProj: RowParallelLinear;
  #c: LayerContext;
  #C: number;
  #H: number;
  #heads: number;
  #salt: number;
  #arena: Arena;
  #qkv: (Tensor | undefined)[] = [];

  /**
   * Build the layer.
   *
   * @param ctx backend, tensor-parallel group, parameter store, pool and activation type
   * @param name the prefix, e.g. `"h.0.attn"`
   * @param dim the model width C
   * @param heads the number of heads H (a multiple of tp)
   * @param opts the output projection's initial scale
   */
  constructor(
    ctx: LayerContext,
    name: string,
    dim: number,
    heads: number,
    opts: ProjectionOptions = {},
  ) {
    const size = tpSize(ctx.tp);
    if (!Number.isInteger(heads) || heads < 1 || heads % size !== 0 || dim % heads !== 0) {
      throw new RangeError(
        `Cannot split ${heads} heads of width ${dim} across tp=${size}: heads must divide ` +
          `the width and be a multiple of tp`,
      );
    }
    this.cAttn = new ColumnParallelLinear(ctx, `${name}.c_attn`, dim, 3 * dim, {
      blocks: 3,
      role: "attn.c_attn",
    });
    this.cProj = new RowParallelLinear(ctx, `${name}.c_proj`, dim, dim, {
      std: opts.projStd,
      role: "attn.c_proj",
    });
    this.specs = [...this.cAttn.specs, ...this.cProj.specs];
    this.#c = ctx;
    this.#C = dim / size;
    this.#H = heads / size;
    this.#heads = heads;
    this.#salt = dropoutSalt(`${name}.probs`);
    this.#arena = new Arena(ctx.backend, ctx.pool, "attn");
  }

  #drop(step: Step): AttentionDropout | undefined {
    const d = step.dropout;
    if (!d || d.p === 0) return undefined;
    return {
      p: d.p,
      key: dropoutKey(d, this.#salt),
      seqOffset: d.seqOffset,
      headOffset: tpRank(this.#c.tp) * this.#H,
      heads: this.#heads,
    };
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
    const B = step.B, T = step.T * seqFactor(this.#c.tp);
    const dt = this.#c.dtype ?? "f32";
    const qkv = await this.cAttn.forward(x, step);
    const y = this.#arena.get(slot, "y", B * T * this.#C, dt);
    const cache = step.cache;
    if (cache !== undefined) {
      if (this.#c.tp.sequenceParallel) {
        throw new RangeError(
          "Decoding with a key/value cache splits no sequence: build the model without " +
            "sequence parallelism",
        );
      }
      // This layer's cache of k | v for every position, kept between the passes of a decode.
      const kv = this.#arena.get(KV_SLOT, "kv", B * cache.capacity * 2 * this.#C, dt);
      this.#c.backend.attentionCached(
        y,
        kv,
        qkv,
        B,
        T,
        cache.past,
        cache.capacity,
        this.#C,
        this.#H,
      );
      return await this.cProj.forward(y, step);
    }
    const att = this.#arena.get(slot, "att", B * this.#H * T * T, dt);
    this.#c.backend.attentionForward(y, att, qkv, B, T, this.#C, this.#H, this.#drop(step));
    this.#qkv[slot] = qkv;
    return await this.cProj.forward(y, step);
  }

  /**
   * Add into the parameter gradients and return the input's gradient.
   *
   * @param dy the output's gradient
   * @param step the shape and slot of the matching forward
   * @returns the input's gradient
   */
  async backward(dy: Tensor | null, step: Step): Promise<Tensor> {
    const slot = slotOf(step);
    const qkv = saved(this.#qkv, slot, "SelfAttention");
    const B = step.B, T = step.T * seqFactor(this.#c.tp);
    const be = this.#c.backend;
    const dt = this.#c.dtype ?? "f32";
    const dyAtt = await this.cProj.backward(dy, step);
    const dqkv = this.#arena.get(GRAD_SLOT, "dqkv", B * T * 3 * this.#C, dt);
    be.fill(dqkv, 0);
    const att = this.#arena.get(slot, "att", B * this.#H * T * T, dt);
    be.attentionBackward(dqkv, dyAtt, qkv, att, B, T, this.#C, this.#H, this.#drop(step));
    return await this.cAttn.backward(dqkv, step);
  }
}

/** The GELU MLP `c_proj(gelu(c_fc(x)))` with the hidden width split across the group. */
export class Mlp implements Layer {
  /** This rank's pieces of `${name}.c_fc.*` and `${name}.c_proj.*`. */
  readonly specs: readonly ParamSpec[];
  /** The expansion (column-parallel). */
  readonly cFc: ColumnParallelLinear;
  /** The projection (row-parallel). */
  readonly cProj: RowParallelLinear;
  #c: LayerContext;
  #hidden: number;
  #arena: Arena;
  #h: (Tensor | undefined)[] = [];

  /**
   * Build the layer.
   *
   * @param ctx backend, tensor-parallel group, parameter store, pool and activation type
   * @param name the prefix, e.g. `"h.0.mlp"`
   * @param dim the model width C
   * @param hidden the serial hidden width (GPT-2: 4C), a multiple of tp
   * @param opts the output projection's initial scale
   */
  constructor(
    ctx: LayerContext,
    name: string,
    dim: number,
    hidden: number,
    opts: ProjectionOptions = {},
  ) {
    this.cFc = new ColumnParallelLinear(ctx, `${name}.c_fc`, dim, hidden, { role: "mlp.c_fc" });
    this.cProj = new RowParallelLinear(ctx, `${name}.c_proj`, hidden, dim, {
      std: opts.projStd,
      role: "mlp.c_proj",
    });
    this.specs = [...this.cFc.specs, ...this.cProj.specs];
    this.#c = ctx;
    this.#hidden = this.cFc.outLocal;
    this.#arena = new Arena(ctx.backend, ctx.pool, "mlp");
  }

  #n(step: Step): number {
    return step.B * step.T * seqFactor(this.#c.tp) * this.#hidden;
  }

  /**
   * Compute the output and keep what backward needs.
   *
   * @param x the input `[B*T, C]`
   * @param step the shape and slot of the pass
   * @returns the output, same shape
   */
  async forward(x: Tensor, step: Step): Promise<Tensor> {
    const slot = slotOf(step);
    const n = this.#n(step);
    const h = await this.cFc.forward(x, step);
    const g = this.#arena.get(slot, "g", n, this.#c.dtype ?? "f32");
    this.#c.backend.geluForward(g, h, n);
    this.#h[slot] = h;
    return await this.cProj.forward(g, step);
  }

  /**
   * Add into the parameter gradients and return the input's gradient.
   *
   * @param dy the output's gradient
   * @param step the shape and slot of the matching forward
   * @returns the input's gradient
   */
  async backward(dy: Tensor | null, step: Step): Promise<Tensor> {
    const slot = slotOf(step);
    const h = saved(this.#h, slot, "Mlp");
    const n = this.#n(step);
    const be = this.#c.backend;
    const dg = await this.cProj.backward(dy, step);
    const dh = this.#arena.get(GRAD_SLOT, "dh", n, this.#c.dtype ?? "f32");
    be.fill(dh, 0);
    be.geluBackward(dh, h, dg, n);
    return await this.cFc.backward(dh, step);
  }
}
