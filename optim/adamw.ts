/**
 * AdamW over a flat parameter buffer: bias-corrected moments and decoupled weight decay that
 * applies only to the slots whose layout flag says so (not to biases and norms).
 *
 * @module
 */
import type { Backend, Tensor } from "../kernels/backend.ts";
import type { FlatLayout } from "./layout.ts";
import { type DecayRange, decayRanges, type Optimizer, type UpdateRule } from "./optimizer.ts";
import { checkBuffer, checkNumber } from "./_checks.ts";

/** Hyper-parameters of {@linkcode AdamW} (PyTorch's defaults except `weightDecay`). */
export interface AdamWOptions {
  /** First-moment decay; default 0.9. */
  beta1?: number;
  /** Second-moment decay; default 0.999. */
  beta2?: number;
  /** Denominator epsilon; default 1e-8. */
  eps?: number;
  /** Decoupled weight decay for slots with `decay: true`; default 0.01. */
  weightDecay?: number;
}

/**
 * AdamW's update rule (see {@linkcode AdamW}), checked once.
 *
 * @param opts hyper-parameters
 * @returns the rule
 */
export function adamwRule(opts: AdamWOptions = {}): UpdateRule {
  const beta1 = opts.beta1 ?? 0.9;
  const beta2 = opts.beta2 ?? 0.999;
  const eps = opts.eps ?? 1e-8;
  const wd = opts.weightDecay ?? 0.01;
  checkNumber("AdamW beta1", beta1, 0, 0.999999);
  checkNumber("AdamW beta2", beta2, 0, 0.999999999);
  checkNumber("AdamW eps", eps, 0, 1);
  checkNumber("AdamW weightDecay", wd, 0, 10);
  return {
    kind: "adamw",
    state: ["m", "v"],
    update(be, p, g, [m, v], n, decay, lr, step) {
      be.adamw(p, g, m!, v!, n, { lr, beta1, beta2, eps, weightDecay: decay ? wd : 0, step });
    },
  };
}

/**
 * AdamW: for each element, `m = b1 m + (1-b1) g`, `v = b2 v + (1-b2) g^2`,
 * `p -= lr (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps) + lr wd p` with `wd = 0` on slots
 * without decay. One `backend.adamw` call per contiguous range of equal decay flag.
 *
 * @example One step on a two-tensor model
 * ```ts
 * import { AdamW, buildLayout } from "./mod.ts";
 * import { createReferenceBackend } from "../kernels/reference.ts";
 * const backend = createReferenceBackend();
 * const layout = buildLayout([{ name: "w", shape: [4, 4] }, { name: "b", shape: [4] }]);
 * const params = backend.alloc(layout.size), grads = backend.alloc(layout.size);
 * const opt = new AdamW(backend, layout, params, grads, { weightDecay: 0.1 });
 * opt.step(1e-3);
 * ```
 */
export class AdamW implements Optimizer {
  /** Always `"adamw"`. */
  readonly kind = "adamw";
  /** Steps taken so far. */
  steps = 0;
  /** First moments, same layout as the parameters. */
  readonly m: Tensor;
  /** Second moments, same layout as the parameters. */
  readonly v: Tensor;
  /** The ranges updated, each with its decay flag. */
  readonly ranges: readonly DecayRange[];
  readonly #backend: Backend;
  readonly #views: { p: Tensor; g: Tensor; m: Tensor; v: Tensor; n: number; decay: boolean }[];
  readonly #rule: UpdateRule;

  /**
   * Create the optimizer and its zeroed moments.
   *
   * @param backend the backend holding the buffers
   * @param layout the flat parameter layout (its `decay` flags choose where decay applies)
   * @param params the flat parameter buffer
   * @param grads the flat gradient buffer
   * @param opts hyper-parameters
   */
  constructor(
    backend: Backend,
    layout: FlatLayout,
    params: Tensor,
    grads: Tensor,
    opts: AdamWOptions = {},
  ) {
    checkBuffer("parameter", params, layout);
    checkBuffer("gradient", grads, layout);
    this.#rule = adamwRule(opts);
    this.#backend = backend;
    this.m = backend.alloc(layout.size);
    this.v = backend.alloc(layout.size);
    this.ranges = decayRanges(layout);
    this.#views = this.ranges.map((r) => ({
      p: backend.view(params, r.offset, r.length),
      g: backend.view(grads, r.offset, r.length),
      m: backend.view(this.m, r.offset, r.length),
      v: backend.view(this.v, r.offset, r.length),
      n: r.length,
      decay: r.decay,
    }));
  }

  /**
   * Take one step with learning rate `lr`.
   *
   * @param lr the learning rate of this step (from a schedule)
   */
  step(lr: number): void {
    checkNumber("AdamW learning rate", lr, 0, Infinity);
    const t = this.steps + 1;
    for (const r of this.#views) {
      this.#rule.update(this.#backend, r.p, r.g, [r.m, r.v], r.n, r.decay, lr, t);
    }
    this.steps = t;
  }

  /**
   * The moments, for checkpoints.
   *
   * @returns `{ m, v }`
   */
  stateTensors(): Record<string, Tensor> {
    return { m: this.m, v: this.v };
  }
}
