/**
 * Loss scaling for half-precision training, with DeepSpeed's semantics: multiply the loss by a
 * large scale so small gradients survive, divide the gradients back, and skip the step when a
 * gradient overflowed. A dynamic scale halves after `hysteresis` overflows and doubles after
 * every `loss_scale_window` good steps since the last overflow; a static scale never changes.
 *
 * @module
 */

/** Options of {@linkcode DynamicLossScaler} (DeepSpeed's fp16 block in parentheses). */
export interface LossScalerOptions {
  /** Starting scale; default 2^16 (`initial_scale_power: 16`, or `loss_scale` when static). */
  initialScale?: number;
  /** Good steps since the last overflow before the scale grows (`loss_scale_window`); 1000. */
  growthInterval?: number;
  /** Factor on growth; default 2. */
  growthFactor?: number;
  /** Factor on overflow; default 0.5. */
  backoffFactor?: number;
  /** The scale never drops below this (`min_loss_scale`); default 1. */
  minScale?: number;
  /** False for a static scale (`loss_scale` other than 0): it never changes; default true. */
  dynamic?: boolean;
  /**
   * Overflows it takes to lower the scale (`hysteresis`, DeepSpeed's "delayed shift"): an
   * overflow first uses up this budget, and only the overflow that finds one left lowers the
   * scale. Default 1 (every overflow lowers it); DeepSpeed's fp16 block defaults to 2.
   */
  hysteresis?: number;
  /** Refill the hysteresis budget after every good step (`consecutive_hysteresis`); false. */
  consecutiveHysteresis?: boolean;
}

/** The state a checkpoint keeps. */
export interface LossScalerState {
  /** The current scale. */
  scale: number;
  /** Good steps since the last overflow (or since the start). */
  goodSteps: number;
  /** Steps skipped so far. */
  skipped: number;
  /** Overflows left before the scale drops (DeepSpeed's `cur_hysteresis`); absent in old saves. */
  hysteresis?: number;
  /** Updates so far (DeepSpeed's `cur_iter`); absent in old saves. */
  iteration?: number;
  /** The update that last overflowed, -1 for none (`last_overflow_iter`); absent in old saves. */
  lastOverflow?: number;
}

/**
 * A loss scaler. Per step: scale the loss by {@linkcode DynamicLossScaler.scale},
 * backpropagate, then call {@linkcode DynamicLossScaler.update} with whether every gradient
 * is finite (a finite global sum of squares says so); it returns whether to take the step.
 * Divide the gradients by the scale used for the step (read `scale` before `update`).
 *
 * As DeepSpeed's `DynamicLossScaler` (`deepspeed/runtime/fp16/loss_scaler.py`, the scaler of
 * its ZeRO optimizers): on an overflow the step is skipped; if the hysteresis budget is down
 * to one the scale is multiplied by `backoffFactor` (not below `minScale`), otherwise the
 * budget shrinks by one. On a good step, with `k` good steps since the last overflow before
 * this one, the scale grows by `growthFactor` when `k > 0` and `k` is a multiple of
 * `growthInterval` (so the first growth comes on good step `growthInterval + 1`), and the
 * budget is refilled then (or after every good step with `consecutiveHysteresis`). An
 * overflow while the scale is already at `minScale` throws, as DeepSpeed stops the run.
 *
 * @example
 * ```ts
 * import { DynamicLossScaler } from "./loss_scaler.ts";
 * const s = new DynamicLossScaler({ initialScale: 1024, growthInterval: 2, hysteresis: 2 });
 * console.assert(s.update(false) === false && s.scale === 1024); // the budget absorbs it
 * console.assert(s.update(false) === false && s.scale === 512);
 * console.assert(s.update(true) && s.update(true) && s.scale === 512);
 * console.assert(s.update(true) && s.scale === 1024); // 2 good steps since the overflow
 * ```
 */
export class DynamicLossScaler {
  /** The current loss scale. */
  scale: number;
  /** Good steps since the last overflow (or since the start). */
  goodSteps = 0;
  /** Steps skipped because of overflow. */
  skipped = 0;
  readonly #interval: number;
  readonly #growth: number;
  readonly #backoff: number;
  readonly #min: number;
  readonly #dynamic: boolean;
  readonly #hysteresis: number;
  readonly #consecutive: boolean;
  #left: number;
  #iteration = 0;
  #lastOverflow = -1;

  /**
   * Create a scaler.
   *
   * @param opts the scaling policy
   * @throws {RangeError} for an option out of range
   */
  constructor(opts: LossScalerOptions = {}) {
    this.scale = opts.initialScale ?? 65536;
    this.#interval = opts.growthInterval ?? 1000;
    this.#growth = opts.growthFactor ?? 2;
    this.#backoff = opts.backoffFactor ?? 0.5;
    this.#min = opts.minScale ?? 1;
    this.#dynamic = opts.dynamic ?? true;
    this.#hysteresis = opts.hysteresis ?? 1;
    this.#consecutive = opts.consecutiveHysteresis ?? false;
    this.#left = this.#hysteresis;
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
    if (!(Number.isInteger(this.#hysteresis) && this.#hysteresis >= 1)) {
      throw new RangeError(
        `hysteresis must be an integer >= 1 (1 lowers the scale on every overflow), got ` +
          this.#hysteresis,
      );
    }
  }

  /** Whether the scale adapts (false for a static `loss_scale`). */
  get dynamic(): boolean {
    return this.#dynamic;
  }

  /** Overflows left before the scale drops (DeepSpeed's `cur_hysteresis`). */
  get hysteresis(): number {
    return this.#left;
  }

  /**
   * Record the outcome of a step and adjust the scale.
   *
   * @param finite whether every gradient was finite
   * @returns true to take the optimizer step, false to skip it
   * @throws {RangeError} when a step overflows while the scale is already at the minimum
   */
  update(finite: boolean): boolean {
    if (!finite) {
      if (this.#dynamic) {
        if (this.#hysteresis === 1 || this.#left === 1) {
          if (this.scale <= this.#min) {
            throw new RangeError(
              `fp16 loss scale: update ${this.#iteration} overflowed with the scale already at ` +
                `min_loss_scale (${this.#min}), and the loss scale cannot fall below ` +
                `min_loss_scale (DeepSpeed stops the run here too). The gradients overflow even ` +
                `at the smallest scale, which usually means training diverged: lower the ` +
                `learning rate or warm up longer, turn on gradient_clipping, check the data ` +
                `for inf/NaN, or train in bf16, which needs no loss scaling. Lowering ` +
                `fp16.min_loss_scale lets the scale back off further; raising it does not help.`,
            );
          }
          this.scale = Math.max(this.#min, this.scale * this.#backoff);
        } else {
          this.#left--;
        }
      }
      this.#lastOverflow = this.#iteration++;
      this.goodSteps = 0;
      this.skipped++;
      return false;
    }
    if (this.#dynamic) {
      if (this.#consecutive) this.#left = this.#hysteresis;
      const stable = this.#iteration - this.#lastOverflow - 1;
      if (stable > 0 && stable % this.#interval === 0) {
        if (!this.#consecutive) this.#left = this.#hysteresis;
        this.scale *= this.#growth;
      }
    }
    this.#iteration++;
    this.goodSteps = this.#iteration - this.#lastOverflow - 1;
    return true;
  }

  /**
   * The state to checkpoint.
   *
   * @returns a plain object
   */
  getState(): Required<LossScalerState> {
    return {
      scale: this.scale,
      goodSteps: this.goodSteps,
      skipped: this.skipped,
      hysteresis: this.#left,
      iteration: this.#iteration,
      lastOverflow: this.#lastOverflow,
    };
  }

  /**
   * Restore a checkpointed state. A state saved before the hysteresis counter existed gets a
   * full budget, and its last overflow is placed `goodSteps` updates back.
   *
   * @param s the state from {@linkcode DynamicLossScaler.getState}
   * @throws {RangeError} for a corrupt state
   */
  setState(s: LossScalerState): void {
    const iteration = s.iteration ?? s.goodSteps + s.skipped;
    const lastOverflow = s.lastOverflow ?? iteration - s.goodSteps - 1;
    const left = s.hysteresis ?? this.#hysteresis;
    const count = (n: unknown, min: number) => Number.isInteger(n) && (n as number) >= min;
    if (
      !(s.scale > 0 && Number.isFinite(s.scale)) || !count(s.goodSteps, 0) ||
      !count(s.skipped, 0) || !count(iteration, 0) || !count(lastOverflow, -1) ||
      lastOverflow >= iteration || s.goodSteps !== iteration - lastOverflow - 1 ||
      !count(left, 1)
    ) {
      throw new RangeError(`Corrupt loss-scaler state: ${JSON.stringify(s)}`);
    }
    this.scale = s.scale;
    this.goodSteps = s.goodSteps;
    this.skipped = s.skipped;
    this.#iteration = iteration;
    this.#lastOverflow = lastOverflow;
    this.#left = left;
  }
}
