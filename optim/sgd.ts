/**
 * Stochastic gradient descent with momentum and optional L2 weight decay over a flat buffer.
 *
 * @module
 */
import type { Backend, Tensor } from "../kernels/backend.ts";
import type { FlatLayout } from "./layout.ts";
import { type DecayRange, decayRanges, type Optimizer, type UpdateRule } from "./optimizer.ts";
import { checkBuffer, checkNumber } from "./_checks.ts";

/** Hyper-parameters of {@linkcode SGD}. */
export interface SGDOptions {
  /** Momentum factor; default 0.9 (0 gives plain SGD). */
  momentum?: number;
  /** L2 weight decay added to the gradient of slots with `decay: true`; default 0. */
  weightDecay?: number;
}

/**
 * SGD's update rule (see {@linkcode SGD}), checked once.
 *
 * @param opts hyper-parameters
 * @returns the rule
 */
export function sgdRule(opts: SGDOptions = {}): UpdateRule {
  const mu = opts.momentum ?? 0.9;
  const wd = opts.weightDecay ?? 0;
  checkNumber("SGD momentum", mu, 0, 1);
  checkNumber("SGD weightDecay", wd, 0, 10);
  return {
    kind: "sgd",
    state: ["momentum"],
    update(be, p, g, [b], n, decay, lr) {
      be.scale(b!, mu, n);
      be.axpy(b!, g, 1, n);
      if (decay && wd > 0) be.axpy(b!, p, wd, n);
      be.axpy(p, b!, -lr, n);
    },
  };
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
  readonly #rule: UpdateRule;

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
    this.#rule = sgdRule(opts);
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
    for (const r of this.#views) {
      this.#rule.update(this.#backend, r.p, r.g, [r.b], r.n, r.decay, lr, this.steps + 1);
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
