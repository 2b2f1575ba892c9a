/**
 * Learning-rate schedules as pure functions of the step. Two families:
 *
 * - Loom's own shapes (`"cosine"`, `"linear"`, `"constant"`, train.ts's `--schedule`): linear
 *   warmup, then cosine or linear decay to a floor, or a constant rate.
 * - DeepSpeed's schedulers (`"WarmupLR"`, `"WarmupDecayLR"`, `"WarmupCosineLR"`), computed as
 *   `deepspeed/runtime/lr_schedules.py` computes them, with DeepSpeed's step indexing.
 *
 * {@linkcode learningRate} is the one entry point for both.
 *
 * @module
 */

/** Loom's decay shapes after a linear warmup. */
export type ScheduleKind = "cosine" | "linear" | "constant";

/** DeepSpeed's scheduler types that Loom computes. */
export type DeepSpeedScheduleKind = "WarmupLR" | "WarmupDecayLR" | "WarmupCosineLR";

/** How a DeepSpeed warmup rises: DeepSpeed's default is `"log"`. */
export type WarmupType = "log" | "linear";

/** A Loom schedule: linear warmup, then cosine, linear or constant. */
export interface LoomSchedule {
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

/**
 * DeepSpeed's `WarmupLR`: from `minLr` up to `lr` over the warmup, then constant at `lr`.
 * `WarmupDecayLR` adds a linear decay from `lr` back to `minLr` at `totalSteps`.
 */
export interface WarmupLRSchedule {
  /** `"WarmupLR"` (no decay) or `"WarmupDecayLR"` (linear decay to `minLr`). */
  kind: "WarmupLR" | "WarmupDecayLR";
  /** Peak: DeepSpeed's `warmup_max_lr`. */
  lr: number;
  /** Start (and, for WarmupDecayLR, end): DeepSpeed's `warmup_min_lr`. */
  minLr: number;
  /**
   * DeepSpeed's `warmup_num_steps`. DeepSpeed warms up over `max(2, warmup)` steps; 0 (which
   * DeepSpeed refuses) means no warmup here.
   */
  warmup: number;
  /** `"log"` (DeepSpeed's default) or `"linear"`. */
  warmupType: WarmupType;
  /** DeepSpeed's `total_num_steps`: where WarmupDecayLR reaches `minLr`; unused by WarmupLR. */
  totalSteps?: number;
}

/**
 * DeepSpeed's `WarmupCosineLR`: a ratio of the optimizer's rate `lr` that rises from
 * `warmupMinRatio` to 1 over the warmup, then follows a cosine down to `cosMinRatio`.
 */
export interface WarmupCosineLRSchedule {
  /** Always `"WarmupCosineLR"`. */
  kind: "WarmupCosineLR";
  /** The optimizer's learning rate (the ratio 1). */
  lr: number;
  /** DeepSpeed's `warmup_num_steps` (`max(2, warmup)` steps; 0 here means no warmup). */
  warmup: number;
  /** `"log"` (DeepSpeed's default) or `"linear"`. */
  warmupType: WarmupType;
  /** DeepSpeed's `total_num_steps`: where the cosine reaches `cosMinRatio`. */
  totalSteps: number;
  /** DeepSpeed's `warmup_min_ratio` (default 0). */
  warmupMinRatio: number;
  /** DeepSpeed's `cos_min_ratio` (default 0.0001). */
  cosMinRatio: number;
}

/** Any schedule {@linkcode learningRate} computes. */
export type Schedule = LoomSchedule | WarmupLRSchedule | WarmupCosineLRSchedule;

/** Loom's schedule kinds, for command-line checks. */
export const SCHEDULE_KINDS: readonly ScheduleKind[] = ["cosine", "linear", "constant"];

/** DeepSpeed's scheduler types that {@linkcode learningRate} computes. */
export const DEEPSPEED_SCHEDULE_KINDS: readonly DeepSpeedScheduleKind[] = [
  "WarmupLR",
  "WarmupDecayLR",
  "WarmupCosineLR",
];

function isDeepSpeed(s: Schedule): s is WarmupLRSchedule | WarmupCosineLRSchedule {
  return (DEEPSPEED_SCHEDULE_KINDS as readonly string[]).includes(s.kind);
}

function check(ok: boolean, what: string, v: unknown): void {
  if (!ok) throw new RangeError(`${what}, got ${v}`);
}

/**
 * Check a schedule's values; throws a `RangeError` that names the bad field.
 *
 * @example
 * ```ts
 * import { validateSchedule } from "./schedule.ts";
 * validateSchedule({ kind: "WarmupLR", lr: 1e-3, minLr: 0, warmup: 100, warmupType: "log" });
 * ```
 *
 * @param s the schedule
 * @throws {RangeError} for an unknown kind or a value out of range
 */
export function validateSchedule(s: Schedule): void {
  if (!isDeepSpeed(s) && !SCHEDULE_KINDS.includes(s.kind)) {
    throw new RangeError(
      `Unknown schedule "${s.kind}": use one of ${
        [...SCHEDULE_KINDS, ...DEEPSPEED_SCHEDULE_KINDS].join(", ")
      }`,
    );
  }
  check(Number.isFinite(s.lr) && s.lr >= 0, "Learning rate must be a finite number >= 0", s.lr);
  check(Number.isInteger(s.warmup) && s.warmup >= 0, "Warmup must be an integer >= 0", s.warmup);
  if (!isDeepSpeed(s)) {
    check(
      Number.isInteger(s.totalSteps) && s.totalSteps >= 1,
      "Total steps must be an integer >= 1",
      s.totalSteps,
    );
    if (s.minLr !== undefined) {
      check(
        Number.isFinite(s.minLr) && s.minLr >= 0 && s.minLr <= s.lr,
        `Minimum learning rate must be in [0, lr=${s.lr}]`,
        s.minLr,
      );
    }
    return;
  }
  check(
    s.warmupType === "log" || s.warmupType === "linear",
    'Warmup type must be "log" or "linear"',
    s.warmupType,
  );
  if (s.kind === "WarmupCosineLR") {
    check(
      Number.isInteger(s.totalSteps) && s.totalSteps >= 1,
      "Total steps must be an integer >= 1",
      s.totalSteps,
    );
    check(
      s.warmupMinRatio >= 0 && s.warmupMinRatio <= 1,
      "warmup_min_ratio must be in [0, 1]",
      s.warmupMinRatio,
    );
    check(
      s.cosMinRatio >= 0 && s.cosMinRatio <= 1,
      "cos_min_ratio must be in [0, 1]",
      s.cosMinRatio,
    );
    return;
  }
  check(Number.isFinite(s.minLr) && s.minLr >= 0, "warmup_min_lr must be a number >= 0", s.minLr);
  if (s.kind === "WarmupDecayLR") {
    check(
      s.totalSteps !== undefined && Number.isInteger(s.totalSteps) && s.totalSteps >= 1,
      "WarmupDecayLR needs total steps, an integer >= 1",
      s.totalSteps,
    );
  }
}

/** DeepSpeed's warmup fraction at scheduler iteration `i` (0 <= i < w), `w >= 2`. */
function warmupGamma(i: number, w: number, type: WarmupType): number {
  // As lr_schedules.py: `inverse_log_warm_up * log(i + 1)`, or `i / w` for linear.
  return type === "log" ? (1 / Math.log(w)) * Math.log(i + 1) : i / w;
}

/** The rate of a DeepSpeed schedule after `i` scheduler steps (`last_batch_iteration = i`). */
function deepSpeedRate(i: number, s: WarmupLRSchedule | WarmupCosineLRSchedule): number {
  // DeepSpeed raises warmup_num_steps to at least 2; 0 is Loom's "no warmup".
  const w = s.warmup === 0 ? 0 : Math.max(2, s.warmup);
  if (s.kind === "WarmupCosineLR") {
    if (i < 0 && w > 0) return 0; // get_lr() before the first scheduler step
    let ratio: number;
    if (w > 0 && i < w) {
      ratio = s.warmupMinRatio + warmupGamma(i, w, s.warmupType) * (1 - s.warmupMinRatio);
    } else {
      const p = Math.min(1, (i - w + 1) / Math.max(1, s.totalSteps - w));
      const c = (1 + Math.cos(Math.PI * p)) / 2;
      ratio = Math.max(0, s.cosMinRatio + (1 - s.cosMinRatio) * c);
    }
    return s.lr * ratio;
  }
  if (i < 0 && w > 0) return s.minLr; // get_lr() before the first scheduler step
  let gamma: number;
  if (w > 0 && i < w) gamma = warmupGamma(i, w, s.warmupType);
  else if (s.kind === "WarmupLR") gamma = 1;
  else {
    const t = s.totalSteps ?? 1;
    gamma = Math.min(1, Math.max(0, (t - i) / Math.max(1, t - w)));
  }
  return s.minLr + (s.lr - s.minLr) * gamma;
}

/**
 * The learning rate of optimizer step `step` (0-based: the first optimizer step is step 0).
 *
 * Loom's kinds: during warmup the rate rises linearly, `lr * (step + 1) / warmup`; afterwards
 * it follows the kind: constant `lr`; cosine `min + (lr - min) (1 + cos(pi p)) / 2`; linear
 * `lr - (lr - min) p`, where `p` goes from 0 at the end of warmup to 1 at the last step and
 * stays 1 beyond it.
 *
 * DeepSpeed's kinds follow `lr_schedules.py` exactly, including its indexing: DeepSpeed sets
 * the rate of a step before it and advances its scheduler after it, so step `s` runs at the
 * scheduler's rate for `last_batch_iteration = s - 1`, and step 0 at the rate it had before
 * any scheduler step (`warmup_min_lr` for WarmupLR and WarmupDecayLR, 0 for WarmupCosineLR).
 * With `W = max(2, warmup)` and `i = s - 1`, the warmup fraction is `log(i + 1) / log(W)`
 * (log) or `i / W` (linear) while `i < W`; then WarmupLR stays at 1, WarmupDecayLR falls as
 * `(T - i) / (T - W)` to 0 at `i = T`, and WarmupCosineLR's ratio is
 * `cmin + (1 - cmin) (1 + cos(pi min(1, (i - W + 1) / (T - W)))) / 2`. WarmupLR and
 * WarmupDecayLR scale the fraction between `warmup_min_lr` and `warmup_max_lr`;
 * WarmupCosineLR multiplies the optimizer's rate by `wmin + fraction (1 - wmin)` in warmup.
 * DeepSpeed does not advance its scheduler on a step skipped for overflow: pass the count of
 * steps taken, not of steps attempted, to keep in step with it.
 *
 * @example
 * ```ts
 * import { learningRate } from "./schedule.ts";
 * const s = { kind: "cosine" as const, lr: 1e-3, warmup: 10, totalSteps: 100, minLr: 0 };
 * console.assert(learningRate(4, s) === 5e-4);
 * console.assert(learningRate(99, s) === 0);
 * const d = { kind: "WarmupLR" as const, lr: 1e-3, minLr: 0, warmup: 100, warmupType: "linear" as const };
 * console.assert(learningRate(0, d) === 0 && learningRate(51, d) === 5e-4);
 * ```
 *
 * @param step the 0-based step
 * @param s the schedule
 * @returns the learning rate
 */
export function learningRate(step: number, s: Schedule): number {
  if (isDeepSpeed(s)) return deepSpeedRate(step - 1, s);
  if (step < s.warmup) return (s.lr * (step + 1)) / s.warmup;
  if (s.kind === "constant") return s.lr;
  const min = s.minLr ?? 0.1 * s.lr;
  const span = s.totalSteps - 1 - s.warmup;
  const p = span <= 0 ? 1 : Math.min(1, (step - s.warmup) / span);
  if (s.kind === "linear") return s.lr - (s.lr - min) * p;
  return min + 0.5 * (s.lr - min) * (1 + Math.cos(Math.PI * p));
}
