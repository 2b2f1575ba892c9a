/**
 * Dynamic loss scaling for half-precision training: multiply the loss by a large scale so small
 * gradients survive, divide the gradients back, skip the step and halve the scale when a
 * gradient overflowed, and grow the scale again after a run of good steps.
 *
 * @module
 */

/** Options of {@linkcode DynamicLossScaler} (DeepSpeed's fp16 block in parentheses). */
export interface LossScalerOptions {
  /** Starting scale; default 2^16 (`initial_scale_power: 16`). */
  initialScale?: number;
  /** Good steps before the scale grows (`loss_scale_window`); default 1000. */
  growthInterval?: number;
  /** Factor on growth; default 2. */
  growthFactor?: number;
  /** Factor on overflow; default 0.5. */
  backoffFactor?: number;
  /** The scale never drops below this (`min_loss_scale`); default 1. */
  minScale?: number;
}

/** The state a checkpoint keeps. */
export interface LossScalerState {
  /** The current scale. */
  scale: number;
  /** Good steps since the last change. */
  goodSteps: number;
  /** Steps skipped so far. */
  skipped: number;
}

/**
 * A dynamic loss scaler. Per step: scale the loss by {@linkcode DynamicLossScaler.scale},
 * backpropagate, then call {@linkcode DynamicLossScaler.update} with whether every gradient
 * is finite (a finite global sum of squares says so); it returns whether to take the step.
 * Divide the gradients by the scale used for the step (read `scale` before `update`).
 *
 * @example
 * ```ts
 * import { DynamicLossScaler } from "./loss_scaler.ts";
 * const s = new DynamicLossScaler({ initialScale: 1024, growthInterval: 2 });
 * console.assert(s.update(false) === false && s.scale === 512);
 * console.assert(s.update(true) && s.update(true) && s.scale === 1024);
 * ```
 */
export class DynamicLossScaler {
  /** The current loss scale. */
  scale: number;
  /** Consecutive finite steps since the last change of scale. */
  goodSteps = 0;
  /** Steps skipped because of overflow. */
  skipped = 0;
  readonly #interval: number;
  readonly #growth: number;
  readonly #backoff: number;
  readonly #min: number;

  /**
   * Create a scaler.
   *
   * @param opts the scaling policy
   */
  constructor(opts: LossScalerOptions = {}) {
    this.scale = opts.initialScale ?? 65536;
    this.#interval = opts.growthInterval ?? 1000;
    this.#growth = opts.growthFactor ?? 2;
    this.#backoff = opts.backoffFactor ?? 0.5;
    this.#min = opts.minScale ?? 1;
    if (!(this.scale > 0 && Number.isFinite(this.scale))) {
      throw new RangeError(`initialScale must be a finite number > 0, got ${this.scale}`);
    }
    if (!(Number.isInteger(this.#interval) && this.#interval >= 1)) {
      throw new RangeError(`growthInterval must be an integer >= 1, got ${this.#interval}`);
    }
    if (!(this.#growth >= 1)) {
      throw new RangeError(`growthFactor must be >= 1, got ${this.#growth}`);
    }
    if (!(this.#backoff > 0 && this.#backoff < 1)) {
      throw new RangeError(`backoffFactor must be in (0, 1), got ${this.#backoff}`);
    }
    if (!(this.#min > 0)) throw new RangeError(`minScale must be > 0, got ${this.#min}`);
  }

  /**
   * Record the outcome of a step and adjust the scale.
   *
   * @param finite whether every gradient was finite
   * @returns true to take the optimizer step, false to skip it
   */
  update(finite: boolean): boolean {
    if (!finite) {
      this.scale = Math.max(this.#min, this.scale * this.#backoff);
      this.goodSteps = 0;
      this.skipped++;
      return false;
    }
    this.goodSteps++;
    if (this.goodSteps >= this.#interval) {
      this.scale *= this.#growth;
      this.goodSteps = 0;
    }
    return true;
  }

  /**
   * The state to checkpoint.
   *
   * @returns a plain object
   */
  getState(): LossScalerState {
    return { scale: this.scale, goodSteps: this.goodSteps, skipped: this.skipped };
  }

  /**
   * Restore a checkpointed state.
   *
   * @param s the state from {@linkcode DynamicLossScaler.getState}
   */
  setState(s: LossScalerState): void {
    if (!(s.scale > 0) || !(s.goodSteps >= 0) || !(s.skipped >= 0)) {
      throw new RangeError(`Corrupt loss-scaler state: ${JSON.stringify(s)}`);
    }
    this.scale = s.scale;
    this.goodSteps = s.goodSteps;
    this.skipped = s.skipped;
  }
}
