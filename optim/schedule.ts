/**
 * Learning-rate schedules as pure functions of the step: linear warmup, then cosine or linear
 * decay to a floor, or a constant rate.
 *
 * @module
 */

/** The decay shapes after warmup. */
export type ScheduleKind = "cosine" | "linear" | "constant";

/** A learning-rate schedule. */
export interface Schedule {
  /** Shape after warmup. */
  kind: ScheduleKind;
  /** Peak learning rate (reached at the end of warmup). */
  lr: number;
  /** Warmup steps (linear from lr/warmup to lr); 0 for none. */
  warmup: number;
  /** Total steps of the run (the decay ends there). */
  totalSteps: number;
  /** Floor of the decay; default 0.1 * lr for cosine and linear. */
  minLr?: number;
}

/** The schedule kinds, for command-line checks. */
export const SCHEDULE_KINDS: readonly ScheduleKind[] = ["cosine", "linear", "constant"];

/**
 * Check a schedule's values; throws a `RangeError` that names the bad field.
 *
 * @param s the schedule
 */
export function validateSchedule(s: Schedule): void {
  if (!SCHEDULE_KINDS.includes(s.kind)) {
    throw new RangeError(
      `Unknown schedule "${s.kind}": use one of ${SCHEDULE_KINDS.join(", ")}`,
    );
  }
  if (!(Number.isFinite(s.lr) && s.lr >= 0)) {
    throw new RangeError(`Learning rate must be a finite number >= 0, got ${s.lr}`);
  }
  if (!(Number.isInteger(s.warmup) && s.warmup >= 0)) {
    throw new RangeError(`Warmup must be an integer >= 0, got ${s.warmup}`);
  }
  if (!(Number.isInteger(s.totalSteps) && s.totalSteps >= 1)) {
    throw new RangeError(`Total steps must be an integer >= 1, got ${s.totalSteps}`);
  }
  if (s.minLr !== undefined && !(Number.isFinite(s.minLr) && s.minLr >= 0 && s.minLr <= s.lr)) {
    throw new RangeError(`Minimum learning rate must be in [0, lr=${s.lr}], got ${s.minLr}`);
  }
}

/**
 * The learning rate of step `step` (0-based: the first optimizer step is step 0).
 *
 * During warmup the rate rises linearly, `lr * (step + 1) / warmup`; afterwards it follows the
 * kind: constant `lr`; cosine `min + (lr - min) (1 + cos(pi p)) / 2`; linear
 * `lr - (lr - min) p`, where `p` goes from 0 at the end of warmup to 1 at the last step and
 * stays 1 beyond it.
 *
 * @example
 * ```ts
 * import { learningRate } from "./schedule.ts";
 * const s = { kind: "cosine" as const, lr: 1e-3, warmup: 10, totalSteps: 100, minLr: 0 };
 * console.assert(learningRate(4, s) === 5e-4);
 * console.assert(learningRate(99, s) === 0);
 * ```
 *
 * @param step the 0-based step
 * @param s the schedule
 * @returns the learning rate
 */
export function learningRate(step: number, s: Schedule): number {
  if (step < s.warmup) return (s.lr * (step + 1)) / s.warmup;
  if (s.kind === "constant") return s.lr;
  const min = s.minLr ?? 0.1 * s.lr;
  const span = s.totalSteps - 1 - s.warmup;
  const p = span <= 0 ? 1 : Math.min(1, (step - s.warmup) / span);
  if (s.kind === "linear") return s.lr - (s.lr - min) * p;
  return min + 0.5 * (s.lr - min) * (1 + Math.cos(Math.PI * p));
}
