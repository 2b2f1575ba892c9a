/**
 * Parallel causal self-attention: heads split across the tensor group. GPT-2's `c_attn` maps C
 * to `[q | k | v]`, each in head order, so rank i's column shard is its part of each of the
 * three blocks (see `gpt2ShardKind`), which is exactly the `[q_i | k_i | v_i]` layout of its
 * `H/tp` heads. `c_proj` is row-parallel: its rows are the attention channels in head order.
 * One all-reduce in forward (after `c_proj`) and one in backward (before `c_attn`'s input).
 *
 * @module
 */

import type { Backend, Tensor } from "../kernels/mod.ts";
import type { ParamSpec } from "../optim/mod.ts";
import { Arena, GRAD_SLOT, saved, slotOf } from "./_arena.ts";
import type { ParallelLayer, ParallelStep, ParamSource } from "./layer.ts";
import { ColumnParallelLinear, RowParallelLinear } from "./linear.ts";
import { type TensorParallel, tpSize } from "./mappings.ts";

/** `c_proj(attention(c_attn(x)))` over this rank's `H/tp` heads. */
export class ParallelSelfAttention implements ParallelLayer {
  /** This rank's shards of `${name}.c_attn.*` and `${name}.c_proj.*`. */
  readonly specs: readonly ParamSpec[];
  /** The q | k | v projection (column-parallel). */
  readonly cAttn: ColumnParallelLinear;
  /** The output projection (row-parallel). */
  readonly cProj: RowParallelLinear;
  #be: Backend;
  #tp: TensorParallel;
  #C: number;
  #H: number;
  #arena: Arena;
  #qkv = new Map<number, Tensor>();

  /**
   * Build the layer.
   *
   * @param backend the backend
   * @param tp the tensor-parallel group
   * @param store where this rank's shards live
   * @param name the prefix, e.g. `"h.0.attn"`
   * @param dim the model width C
   * @param heads the number of heads H (a multiple of tp)
   */
  constructor(
    backend: Backend,
    tp: TensorParallel,
    store: ParamSource,
    name: string,
    dim: number,
    heads: number,
  ) {
    const size = tpSize(tp);
    if (!Number.isInteger(heads) || heads % size !== 0 || dim % heads !== 0) {
      throw new RangeError(
        `Cannot split ${heads} heads of width ${dim} across tp=${size}: heads must divide ` +
          `the width and be a multiple of tp`,
      );
    }
    this.cAttn = new ColumnParallelLinear(backend, tp, store, `${name}.c_attn`, dim, 3 * dim);
    this.cProj = new RowParallelLinear(backend, tp, store, `${name}.c_proj`, dim, dim);
    this.specs = [...this.cAttn.specs, ...this.cProj.specs];
    this.#be = backend;
    this.#tp = tp;
    this.#C = dim / size;
    this.#H = heads / size;
    this.#arena = new Arena(backend);
  }

  #shape(step: ParallelStep): [number, number] {
    return [step.B, step.T * (this.#tp.sequenceParallel ? tpSize(this.#tp) : 1)];
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
    const [B, T] = this.#shape(step);
    const qkv = await this.cAttn.forward(x, step);
    const y = this.#arena.get(slot, "y", B * T * this.#C);
    const att = this.#arena.get(slot, "att", B * this.#H * T * T);
    this.#be.attentionForward(y, att, qkv, B, T, this.#C, this.#H);
    this.#qkv.set(slot, qkv);
    return await this.cProj.forward(y, step);
  }

  /**
   * Add into the parameter gradients and return the input's gradient.
   *
   * @param dy the output's gradient
   * @param step the shape and slot of the matching forward
   * @returns the input's gradient
   */
  async backward(dy: Tensor | null, step: ParallelStep): Promise<Tensor> {
    const slot = slotOf(step);
    const qkv = saved(this.#qkv, slot, "ParallelSelfAttention");
    const [B, T] = this.#shape(step);
    const dyAtt = await this.cProj.backward(dy, step);
    const dqkv = this.#arena.get(GRAD_SLOT, "dqkv", B * T * 3 * this.#C);
    this.#be.fill(dqkv, 0);
    const att = this.#arena.get(slot, "att", B * this.#H * T * T);
    this.#be.attentionBackward(dqkv, dyAtt, qkv, att, B, T, this.#C, this.#H);
    return await this.cAttn.backward(dqkv, step);
  }
}

/** The GELU MLP `c_proj(gelu(c_fc(x)))` with the hidden width split across the group. */
export class ParallelMlp implements ParallelLayer {
  /** This rank's shards of `${name}.c_fc.*` and `${name}.c_proj.*`. */
  readonly specs: readonly ParamSpec[];
  /** The expansion (column-parallel). */
  readonly cFc: ColumnParallelLinear;
  /** The projection (row-parallel). */
  readonly cProj: RowParallelLinear;
  #be: Backend;
  #tp: TensorParallel;
  #hidden: number;
  #arena: Arena;
  #h = new Map<number, Tensor>();

  /**
   * Build the layer.
   *
   * @param backend the backend
   * @param tp the tensor-parallel group
   * @param store where this rank's shards live
   * @param name the prefix, e.g. `"h.0.mlp"`
   * @param dim the model width C
   * @param hidden the serial hidden width (GPT-2: 4C), a multiple of tp
   */
  constructor(
    backend: Backend,
    tp: TensorParallel,
    store: ParamSource,
    name: string,
    dim: number,
    hidden: number,
  ) {
    this.cFc = new ColumnParallelLinear(backend, tp, store, `${name}.c_fc`, dim, hidden);
    this.cProj = new RowParallelLinear(backend, tp, store, `${name}.c_proj`, hidden, dim);
    this.specs = [...this.cFc.specs, ...this.cProj.specs];
    this.#be = backend;
    this.#tp = tp;
    this.#hidden = this.cFc.outLocal;
    this.#arena = new Arena(backend);
  }

  #n(step: ParallelStep): number {
    return step.B * step.T * (this.#tp.sequenceParallel ? tpSize(this.#tp) : 1) * this.#hidden;
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
    const n = this.#n(step);
    const h = await this.cFc.forward(x, step);
    const g = this.#arena.get(slot, "g", n);
    this.#be.geluForward(g, h, n);
    this.#h.set(slot, h);
    return await this.cProj.forward(g, step);
  }

  /**
   * Add into the parameter gradients and return the input's gradient.
   *
   * @param dy the output's gradient
   * @param step the shape and slot of the matching forward
   * @returns the input's gradient
   */
  async backward(dy: Tensor | null, step: ParallelStep): Promise<Tensor> {
    const slot = slotOf(step);
    const h = saved(this.#h, slot, "ParallelMlp");
    const n = this.#n(step);
    const dg = await this.cProj.backward(dy, step);
    const dh = this.#arena.get(GRAD_SLOT, "dh", n);
    this.#be.fill(dh, 0);
    this.#be.geluBackward(dh, h, dg, n);
    return await this.cFc.backward(dh, step);
  }
}
