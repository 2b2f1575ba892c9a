/**
 * Stochastic gradient descent with momentum and optional L2 weight decay over a flat buffer.
 *
 * @module
 */
import type { Backend, Tensor } from "../kernels/backend.ts";
import type { FlatLayout } from "./layout.ts";
import { type DecayRange, decayRanges, type Optimizer } from "./optimizer.ts";
import { checkBuffer, checkNumber } from "./_checks.ts";

/** Hyper-parameters of {@linkcode SGD}. */
export interface SGDOptions {
  /** Momentum factor; default 0.9 (0 gives plain SGD). */
  momentum?: number;
  /** L2 weight decay added to the gradient of slots with `decay: true`; default 0. */
  weightDecay?: number;
}

/**
 * SGD with momentum, as PyTorch defines it: `b = mu b + g + wd p` (wd only on slots with
 * decay), then `p -= lr b`. The gradient buffer is left untouched.
 *
 * @example
 * ```ts
 * import { buildLayout, SGD } from "./mod.ts";
 * import { createReferenceBackend } from "../kernels/reference.ts";
 * const backend = createReferenceBackend();
 * const layout = buildLayout([{ name: "w", shape: [4, 4] }]);
 * const params = backend.alloc(layout.size), grads = backend.alloc(layout.size);
 * new SGD(backend, layout, params, grads, { momentum: 0.9 }).step(0.1);
 * ```
 */
export class SGD implements Optimizer {
  /** Always `"sgd"`. */
  readonly kind = "sgd";
  /** Steps taken so far. */
  steps = 0;
  /** The momentum buffer (same layout as the parameters). */
  readonly momentumBuffer: Tensor;
  /** The ranges updated, each with its decay flag. */
  readonly ranges: readonly DecayRange[];
  readonly #backend: Backend;
  readonly #views: { p: Tensor; g: Tensor; b: Tensor; n: number; decay: boolean }[];
  readonly #mu: number;
  readonly #wd: number;

  /**
   * Create the optimizer and its zeroed momentum buffer.
   *
   * @param backend the backend holding the buffers
   * @param layout the flat parameter layout
   * @param params the flat parameter buffer
   * @param grads the flat gradient buffer
   * @param opts hyper-parameters
   */
  constructor(
    backend: Backend,
    layout: FlatLayout,
    params: Tensor,
    grads: Tensor,
    opts: SGDOptions = {},
  ) {
    checkBuffer("parameter", params, layout);
    checkBuffer("gradient", grads, layout);
    this.#mu = opts.momentum ?? 0.9;
    this.#wd = opts.weightDecay ?? 0;
    checkNumber("SGD momentum", this.#mu, 0, 1);
    checkNumber("SGD weightDecay", this.#wd, 0, 10);
    this.#backend = backend;
    this.momentumBuffer = backend.alloc(layout.size);
    this.ranges = decayRanges(layout);
    this.#views = this.ranges.map((r) => ({
      p: backend.view(params, r.offset, r.length),
      g: backend.view(grads, r.offset, r.length),
      b: backend.view(this.momentumBuffer, r.offset, r.length),
      n: r.length,
      decay: r.decay,
    }));
  }

  /**
   * Take one step with learning rate `lr`.
   *
   * @param lr the learning rate of this step
   */
  step(lr: number): void {
    checkNumber("SGD learning rate", lr, 0, Infinity);
    const be = this.#backend;
    for (const r of this.#views) {
      be.scale(r.b, this.#mu, r.n);
      be.axpy(r.b, r.g, 1, r.n);
      if (r.decay && this.#wd > 0) be.axpy(r.b, r.p, this.#wd, r.n);
      be.axpy(r.p, r.b, -lr, r.n);
    }
    this.steps++;
  }

  /**
   * The momentum buffer, for checkpoints.
   *
   * @returns `{ momentum }`
   */
  stateTensors(): Record<string, Tensor> {
    return { momentum: this.momentumBuffer };
  }
}
