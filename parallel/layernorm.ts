/**
 * Layer normalisation over the last axis. Its parameters are replicated on every
 * tensor-parallel rank; under sequence parallelism each rank normalises only its own rows, so
 * its gradients are partial sums over the tensor group (declared `partial` on the specs).
 *
 * @module
 */

import type { Tensor } from "../kernels/mod.ts";
import type { ParamSpec } from "../optim/mod.ts";
import { Arena, GRAD_SLOT } from "./_arena.ts";
import { type Layer, type LayerContext, saved, slotOf, type Step } from "./layer.ts";
import { tpSize } from "./mappings.ts";

/** `y = (x - mean) * rstd * weight + bias` per row; parameters `${name}.weight`, `${name}.bias`. */
export class LayerNorm implements Layer {
  /** The parameters. */
  readonly specs: readonly ParamSpec[];
  #c: LayerContext;
  #w: string;
  #b: string;
  #C: number;
  #eps: number;
  #arena: Arena;
  #x: (Tensor | undefined)[] = [];

  /**
   * Create the layer.
   *
   * @param ctx backend, tensor-parallel group, parameter store, pool and activation type
   * @param name the parameter prefix, e.g. `"h.0.ln_1"`
   * @param dim the normalised size C
   * @param eps the variance epsilon, default 1e-5
   * @param role key of its buffers in the shared pool; default its name
   */
  constructor(ctx: LayerContext, name: string, dim: number, eps = 1e-5, role = name) {
    const partial = ctx.tp.sequenceParallel === true && tpSize(ctx.tp) > 1;
    this.#w = `${name}.weight`;
    this.#b = `${name}.bias`;
    this.specs = [
      { name: this.#w, shape: [dim], init: { kind: "ones" }, ...(partial ? { partial } : {}) },
      { name: this.#b, shape: [dim], init: { kind: "zeros" }, ...(partial ? { partial } : {}) },
    ];
    this.#c = ctx;
    this.#C = dim;
    this.#eps = eps;
    this.#arena = new Arena(ctx.backend, ctx.pool, role);
  }

  /**
   * Normalise every row and keep what backward needs. Mean and inverse deviation are kept in
   * float32 (one number per row), the output in the activation type.
   *
   * @param x the input `[B*T, C]`
   * @param step the shape and slot of the pass
   * @returns the output, same shape
   */
  forward(x: Tensor, step: Step): Promise<Tensor> {
    const slot = slotOf(step);
    const N = step.B * step.T;
    const a = this.#arena;
    const { backend: be, store } = this.#c;
    const y = a.get(slot, "y", N * this.#C, this.#c.dtype ?? "f32");
    be.layernormForward(
      y,
      a.get(slot, "mean", N),
      a.get(slot, "rstd", N),
      x,
      store.value(this.#w),
      store.value(this.#b),
      N,
      this.#C,
      this.#eps,
    );
    this.#x[slot] = x;
    return Promise.resolve(y);
  }

  /**
   * Add the input gradient into `dx` (a residual stream's gradient) and the parameter
   * gradients into the store.
   *
   * @param dx the buffer to add into, `[B*T, C]`
   * @param dy the gradient of the output
   * @param step the same shape and slot as the matching forward
   */
  backwardAdd(dx: Tensor, dy: Tensor, step: Step): void {
    const slot = slotOf(step);
    const x = saved(this.#x, slot, "LayerNorm");
    const N = step.B * step.T;
    const a = this.#arena;
    const { backend: be, store } = this.#c;
    be.layernormBackward(
      dx,
      store.grad(this.#w),
      store.grad(this.#b),
      dy,
      x,
      store.value(this.#w),
      a.get(slot, "mean", N),
      a.get(slot, "rstd", N),
      N,
      this.#C,
    );
  }

  /**
   * Add parameter gradients and return dX.
   *
   * @param dy the gradient of the output
   * @param step the same shape and slot as the matching forward
   * @returns the gradient of the input
   */
  backward(dy: Tensor | null, step: Step): Promise<Tensor> {
    if (!dy) throw new TypeError("LayerNorm.backward needs dy");
    const dx = this.#arena.get(GRAD_SLOT, "dx", step.B * step.T * this.#C, this.#c.dtype ?? "f32");
    this.#c.backend.fill(dx, 0);
    this.backwardAdd(dx, dy, step);
    return Promise.resolve(dx);
  }
}
