/**
 * Column- and row-parallel linear layers over GPT-2's `[in, out]` weights (`y = x W + b`).
 *
 * ColumnParallelLinear: `W = [W_1 ... W_p]` split by columns, so rank i computes
 * `Y_i = X W_i + b_i`: its input passes {@linkcode copyToRegion} (or, with sequence
 * parallelism, {@linkcode gatherFromSequence}), its output stays split.
 *
 * RowParallelLinear: `W = [W_1; ...; W_p]` split by rows and `X = [X_1 ... X_p]` by columns, so
 * `Y = sum_i X_i W_i + b`: the partial products pass {@linkcode reduceFromRegion} (or
 * {@linkcode reduceScatterToSequence}) and the bias, replicated, is added after the sum.
 *
 * A column-parallel layer followed by a row-parallel one (attention, MLP) communicates once in
 * forward and once in backward.
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
  reduceFromRegion,
  reduceScatterToSequence,
  type TensorParallel,
  tpSize,
} from "./mappings.ts";

function split(what: string, n: number, tp: number): number {
  if (!Number.isInteger(n) || n < 1 || n % tp !== 0) {
    throw new RangeError(
      `${what} (${n}) must be a positive multiple of the tensor-parallel size ${tp}`,
    );
  }
  return n / tp;
}

/** Options of the parallel linears. */
export interface ParallelLinearOptions {
  /** Whether the layer has a bias `${name}.bias`; default true. */
  bias?: boolean;
}

/**
 * `Y_i[N, out/tp] = X[N, in] W_i[in, out/tp] + b_i`: this rank's columns of the output.
 * Parameters `${name}.weight` `[in, out/tp]` and `${name}.bias` `[out/tp]` (this rank's shard;
 * for c_attn, the rank's part of each of the q, k and v blocks).
 */
export class ColumnParallelLinear implements ParallelLayer {
  /** This rank's parameters. */
  readonly specs: readonly ParamSpec[];
  /** Output features on this rank (out / tp). */
  readonly outLocal: number;
  #be: Backend;
  #tp: TensorParallel;
  #w: Tensor;
  #dw: Tensor;
  #b: Tensor | null;
  #db: Tensor | null;
  #in: number;
  #arena: Arena;
  #x = new Map<number, Tensor>();

  /**
   * Build the layer.
   *
   * @param backend the backend
   * @param tp the tensor-parallel group
   * @param store where this rank's shards live
   * @param name the parameter prefix, e.g. `"h.0.mlp.c_fc"`
   * @param inDim input features
   * @param outDim output features of the serial layer
   * @param opts whether there is a bias
   */
  constructor(
    backend: Backend,
    tp: TensorParallel,
    store: ParamSource,
    name: string,
    inDim: number,
    outDim: number,
    opts: ParallelLinearOptions = {},
  ) {
    this.outLocal = split(`Output features of ${name}`, outDim, tpSize(tp));
    const bias = opts.bias ?? true;
    this.specs = [
      { name: `${name}.weight`, shape: [inDim, this.outLocal] },
      ...(bias ? [{ name: `${name}.bias`, shape: [this.outLocal] }] : []),
    ];
    this.#be = backend;
    this.#tp = tp;
    this.#in = inDim;
    this.#w = store.value(`${name}.weight`);
    this.#dw = store.grad(`${name}.weight`);
    this.#b = bias ? store.value(`${name}.bias`) : null;
    this.#db = bias ? store.grad(`${name}.bias`) : null;
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
    const N = step.B * step.T * (sp ? tpSize(this.#tp) : 1);
    let xs = x;
    if (sp) {
      xs = this.#arena.get(slot, "xfull", N * this.#in);
      await gatherFromSequence.forward(this.#be, this.#tp, xs, x);
    } else {
      await copyToRegion.forward(this.#be, this.#tp, x);
    }
    const y = this.#arena.get(slot, "y", N * this.outLocal);
    this.#be.matmul(y, xs, this.#w, this.#b, N, this.outLocal, this.#in);
    this.#x.set(slot, xs);
    return y;
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
    const x = saved(this.#x, slot, "ColumnParallelLinear");
    if (!dy) throw new TypeError("ColumnParallelLinear.backward needs dy");
    const sp = this.#tp.sequenceParallel === true;
    const n = step.B * step.T;
    const N = n * (sp ? tpSize(this.#tp) : 1);
    const be = this.#be;
    const dxFull = this.#arena.get(GRAD_SLOT, "dxfull", N * this.#in);
    be.matmul(dxFull, dy, this.#w, null, N, this.#in, this.outLocal, { transB: true });
    be.matmul(this.#dw, x, dy, null, this.#in, this.outLocal, N, {
      transA: true,
      accumulate: true,
    });
    if (this.#db) be.sumRows(this.#db, dy, N, this.outLocal, true);
    if (!sp) {
      await copyToRegion.backward(be, this.#tp, dxFull);
      return dxFull;
    }
    const dx = this.#arena.get(GRAD_SLOT, "dx", n * this.#in);
    await gatherFromSequence.backward(be, this.#tp, dx, dxFull);
    return dx;
  }
}

/**
 * `Y[N, out] = sum_i X_i[N, in/tp] W_i[in/tp, out] + b`: the input arrives split by columns
 * (the output of a column-parallel layer), the output is whole (or, with sequence
 * parallelism, this rank's rows). Parameters `${name}.weight` `[in/tp, out]` and
 * `${name}.bias` `[out]` (replicated; under sequence parallelism its gradient is partial).
 */
export class RowParallelLinear implements ParallelLayer {
  /** This rank's parameters. */
  readonly specs: readonly ParamSpec[];
  /** Input features on this rank (in / tp). */
  readonly inLocal: number;
  #be: Backend;
  #tp: TensorParallel;
  #w: Tensor;
  #dw: Tensor;
  #b: Tensor | null;
  #db: Tensor | null;
  #out: number;
  #arena: Arena;
  #x = new Map<number, Tensor>();

  /**
   * Build the layer.
   *
   * @param backend the backend
   * @param tp the tensor-parallel group
   * @param store where this rank's shards live
   * @param name the parameter prefix, e.g. `"h.0.mlp.c_proj"`
   * @param inDim input features of the serial layer
   * @param outDim output features
   * @param opts whether there is a bias
   */
  constructor(
    backend: Backend,
    tp: TensorParallel,
    store: ParamSource,
    name: string,
    inDim: number,
    outDim: number,
    opts: ParallelLinearOptions = {},
  ) {
    this.inLocal = split(`Input features of ${name}`, inDim, tpSize(tp));
    const bias = opts.bias ?? true;
    this.specs = [
      { name: `${name}.weight`, shape: [this.inLocal, outDim] },
      ...(bias ? [{ name: `${name}.bias`, shape: [outDim] }] : []),
    ];
    this.#be = backend;
    this.#tp = tp;
    this.#out = outDim;
    this.#w = store.value(`${name}.weight`);
    this.#dw = store.grad(`${name}.weight`);
    this.#b = bias ? store.value(`${name}.bias`) : null;
    this.#db = bias ? store.grad(`${name}.bias`) : null;
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
    const be = this.#be;
    const partial = this.#arena.get(slot, "partial", N * this.#out);
    be.matmul(partial, x, this.#w, null, N, this.#out, this.inLocal);
    this.#x.set(slot, x);
    let y = partial;
    if (sp) {
      y = this.#arena.get(slot, "y", n * this.#out);
      await reduceScatterToSequence.forward(be, this.#tp, y, partial);
    } else {
      await reduceFromRegion.forward(be, this.#tp, partial);
    }
    if (this.#b) be.addRows(y, this.#b, n, this.#out);
    return y;
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
    const x = saved(this.#x, slot, "RowParallelLinear");
    if (!dy) throw new TypeError("RowParallelLinear.backward needs dy");
    const sp = this.#tp.sequenceParallel === true;
    const n = step.B * step.T;
    const N = n * (sp ? tpSize(this.#tp) : 1);
    const be = this.#be;
    if (this.#db) be.sumRows(this.#db, dy, n, this.#out, true);
    let dyFull = dy;
    if (sp) {
      dyFull = this.#arena.get(GRAD_SLOT, "dyfull", N * this.#out);
      await reduceScatterToSequence.backward(be, this.#tp, dyFull, dy);
    } else {
      await reduceFromRegion.backward(be, this.#tp, dy);
    }
    const dx = this.#arena.get(GRAD_SLOT, "dx", N * this.inLocal);
    be.matmul(dx, dyFull, this.#w, null, N, this.inLocal, this.#out, { transB: true });
    be.matmul(this.#dw, x, dyFull, null, this.inLocal, this.#out, N, {
      transA: true,
      accumulate: true,
    });
    return dx;
  }
}
