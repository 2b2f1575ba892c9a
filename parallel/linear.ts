/**
 * Column- and row-parallel linear layers over GPT-2's `[in, out]` weights (`y = x W + b`). On
 * a tensor-parallel group of one rank both are the serial linear layer.
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

import type { Tensor } from "../kernels/mod.ts";
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
import {
  copyToRegion,
  gatherFromSequence,
  reduceFromRegion,
  reduceScatterToSequence,
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
export interface LinearOptions {
  /** Whether the layer has a bias `${name}.bias`; default true. */
  bias?: boolean;
  /** Standard deviation of the initial weights; default 0.02 (GPT-2). */
  std?: number;
  /** The column blocks the output holds (GPT-2's c_attn: 3, q | k | v); default 1. */
  blocks?: number;
  /** Key of the layer's buffers in the shared pool (e.g. `"attn.c_attn"`); default its name. */
  role?: string;
}

/**
 * `Y_i[N, out/tp] = X[N, in] W_i[in, out/tp] + b_i`: this rank's columns of the output.
 * Parameters `${name}.weight` `[in, out/tp]` and `${name}.bias` `[out/tp]` (for c_attn, the
 * rank's part of each of the q, k and v blocks).
 */
export class ColumnParallelLinear implements Layer {
  /** This rank's parameters. */
  readonly specs: readonly ParamSpec[];
  /** Output features on this rank (out / tp). */
  readonly outLocal: number;
  #c: LayerContext;
  #w: string;
  #b: string | null;
  #in: number;
  #arena: Arena;
  #x: (Tensor | undefined)[] = [];

  /**
   * Build the layer.
   *
   * @param ctx backend, tensor-parallel group, parameter store, pool and activation type
   * @param name the parameter prefix, e.g. `"h.0.mlp.c_fc"`
   * @param inDim input features
   * @param outDim output features of the serial layer
   * @param opts bias, initial scale, column blocks, pool role
   */
  constructor(
    ctx: LayerContext,
    name: string,
    inDim: number,
    outDim: number,
    opts: LinearOptions = {},
  ) {
    this.outLocal = split(`Output features of ${name}`, outDim, tpSize(ctx.tp));
    const bias = opts.bias ?? true;
    const blocks = opts.blocks ?? 1;
    this.#w = `${name}.weight`;
    this.#b = bias ? `${name}.bias` : null;
    this.specs = [
      {
        name: this.#w,
        shape: [inDim, this.outLocal],
        full: [inDim, outDim],
        split: splitOn(ctx.tp, 1, blocks),
        init: { kind: "normal", std: opts.std ?? 0.02 },
      },
      ...(bias
        ? [{
          name: `${name}.bias`,
          shape: [this.outLocal],
          full: [outDim],
          split: splitOn(ctx.tp, 0, blocks),
          init: { kind: "zeros" } as const,
        }]
        : []),
    ];
    this.#c = ctx;
    this.#in = inDim;
    this.#arena = new Arena(ctx.backend, ctx.pool, opts.role ?? name);
  }

  /**
   * Compute the output and keep what backward needs.
   *
   * @param x the input `[B*T, in]` (this rank's rows with sequence parallelism)
   * @param step the shape and slot of the pass
   * @returns this rank's output columns `[B*T_full, out/tp]`
   */
  async forward(x: Tensor, step: Step): Promise<Tensor> {
    const slot = slotOf(step);
    const { backend: be, tp, store } = this.#c;
    const dt = this.#c.dtype ?? "f32";
    const N = step.B * step.T * seqFactor(tp);
    let xs = x;
    if (tp.sequenceParallel) {
      xs = this.#arena.get(slot, "xfull", N * this.#in, dt);
      await gatherFromSequence.forward(be, tp, xs, x);
    } else {
      await copyToRegion.forward(be, tp, x);
    }
    const y = this.#arena.get(slot, "y", N * this.outLocal, dt);
    const b = this.#b === null ? null : store.value(this.#b);
    be.matmul(y, xs, store.value(this.#w), b, N, this.outLocal, this.#in);
    this.#x[slot] = xs;
    return y;
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
    const x = saved(this.#x, slot, "ColumnParallelLinear");
    if (!dy) throw new TypeError("ColumnParallelLinear.backward needs dy");
    const { backend: be, tp, store } = this.#c;
    const dt = this.#c.dtype ?? "f32";
    const n = step.B * step.T;
    const N = n * seqFactor(tp);
    const dxFull = this.#arena.get(GRAD_SLOT, "dxfull", N * this.#in, dt);
    be.matmul(dxFull, dy, store.value(this.#w), null, N, this.#in, this.outLocal, {
      transB: true,
    });
    be.matmul(store.grad(this.#w), x, dy, null, this.#in, this.outLocal, N, {
      transA: true,
      accumulate: true,
    });
    if (this.#b !== null) be.sumRows(store.grad(this.#b), dy, N, this.outLocal, true);
    if (!tp.sequenceParallel) {
      await copyToRegion.backward(be, tp, dxFull);
      return dxFull;
    }
    const dx = this.#arena.get(GRAD_SLOT, "dx", n * this.#in, dt);
    await gatherFromSequence.backward(be, tp, dx, dxFull);
    return dx;
  }
}

/**
 * `Y[N, out] = sum_i X_i[N, in/tp] W_i[in/tp, out] + b`: the input arrives split by columns
 * (the output of a column-parallel layer), the output is whole (or, with sequence
 * parallelism, this rank's rows). Parameters `${name}.weight` `[in/tp, out]` and
 * `${name}.bias` `[out]` (replicated; under sequence parallelism its gradient is partial).
 */
export class RowParallelLinear implements Layer {
  /** This rank's parameters. */
  readonly specs: readonly ParamSpec[];
  /** Input features on this rank (in / tp). */
  readonly inLocal: number;
  #c: LayerContext;
  #w: string;
  #b: string | null;
  #out: number;
  #arena: Arena;
  #x: (Tensor | undefined)[] = [];

  /**
   * Build the layer.
   *
   * @param ctx backend, tensor-parallel group, parameter store, pool and activation type
   * @param name the parameter prefix, e.g. `"h.0.mlp.c_proj"`
   * @param inDim input features of the serial layer
   * @param outDim output features
   * @param opts bias, initial scale, pool role
   */
  constructor(
    ctx: LayerContext,
    name: string,
    inDim: number,
    outDim: number,
    opts: LinearOptions = {},
  ) {
    this.inLocal = split(`Input features of ${name}`, inDim, tpSize(ctx.tp));
    const bias = opts.bias ?? true;
    this.#w = `${name}.weight`;
    this.#b = bias ? `${name}.bias` : null;
    this.specs = [
      {
        name: this.#w,
        shape: [this.inLocal, outDim],
        full: [inDim, outDim],
        split: splitOn(ctx.tp, 0),
        init: { kind: "normal", std: opts.std ?? 0.02 },
      },
      ...(bias
        ? [{
          name: `${name}.bias`,
          shape: [outDim],
          init: { kind: "zeros" } as const,
          ...(ctx.tp.sequenceParallel && tpSize(ctx.tp) > 1 ? { partial: true } : {}),
        }]
        : []),
    ];
    this.#c = ctx;
    this.#out = outDim;
    this.#arena = new Arena(ctx.backend, ctx.pool, opts.role ?? name);
  }

  /**
   * Compute the output and keep what backward needs.
   *
   * @param x the input `[B*T_full, in/tp]`
   * @param step the shape and slot of the pass
   * @returns the output `[B*T, out]` (this rank's rows with sequence parallelism)
   */
  async forward(x: Tensor, step: Step): Promise<Tensor> {
    const slot = slotOf(step);
    const { backend: be, tp, store } = this.#c;
    const dt = this.#c.dtype ?? "f32";
    const n = step.B * step.T;
    const N = n * seqFactor(tp);
    const partial = this.#arena.get(slot, "partial", N * this.#out, dt);
    be.matmul(partial, x, store.value(this.#w), null, N, this.#out, this.inLocal);
    this.#x[slot] = x;
    let y = partial;
    if (tp.sequenceParallel) {
      y = this.#arena.get(slot, "y", n * this.#out, dt);
      await reduceScatterToSequence.forward(be, tp, y, partial);
    } else {
      await reduceFromRegion.forward(be, tp, partial);
    }
    if (this.#b !== null) be.addRows(y, store.value(this.#b), n, this.#out);
    return y;
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
    const x = saved(this.#x, slot, "RowParallelLinear");
    if (!dy) throw new TypeError("RowParallelLinear.backward needs dy");
    const { backend: be, tp, store } = this.#c;
    const dt = this.#c.dtype ?? "f32";
    const n = step.B * step.T;
    const N = n * seqFactor(tp);
    if (this.#b !== null) be.sumRows(store.grad(this.#b), dy, n, this.#out, true);
    let dyFull = dy;
    if (tp.sequenceParallel) {
      dyFull = this.#arena.get(GRAD_SLOT, "dyfull", N * this.#out, dt);
      await reduceScatterToSequence.backward(be, tp, dyFull, dy);
    } else {
      await reduceFromRegion.backward(be, tp, dy);
    }
    const w = store.value(this.#w);
    const dx = this.#arena.get(GRAD_SLOT, "dx", N * this.inLocal, dt);
    be.matmul(dx, dyFull, w, null, N, this.inLocal, this.#out, { transB: true });
    be.matmul(store.grad(this.#w), x, dyFull, null, this.inLocal, this.#out, N, {
      transA: true,
      accumulate: true,
    });
    return dx;
  }
}
