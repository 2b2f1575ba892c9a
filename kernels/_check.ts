// Argument checks shared by the host backends.

import type { AdamWParams } from "./backend.ts";

/** Throw a RangeError unless every size is a non-negative integer. */
export function size(op: string, sizes: Record<string, number>): void {
  for (const [k, v] of Object.entries(sizes)) {
    if (!Number.isInteger(v) || v < 0) {
      throw new RangeError(`${op}: ${k} must be a non-negative integer, got ${v}`);
    }
  }
}

/** Throw unless C divides into H heads. */
export function checkHeads(op: string, B: number, T: number, C: number, H: number): void {
  size(op, { B, T, C, H });
  if (H === 0 || C % H !== 0) {
    throw new RangeError(`${op}: C (${C}) must be a multiple of the number of heads H (${H})`);
  }
}

/** Throw when a target is past the vocabulary. */
export function checkTarget(op: string, tg: number, n: number, V: number): void {
  if (tg >= V) {
    throw new RangeError(`${op}: targets[${n}] = ${tg} is outside the vocabulary [0, ${V})`);
  }
}

/** Throw on AdamW hyper-parameters that are not usable. */
export function checkAdamW(p: AdamWParams): void {
  if (!Number.isInteger(p.step) || p.step < 1) {
    throw new RangeError(`adamw: step must be an integer >= 1 (1-based), got ${p.step}`);
  }
  for (const k of ["lr", "beta1", "beta2", "eps", "weightDecay"] as const) {
    if (!Number.isFinite(p[k])) throw new RangeError(`adamw: ${k} must be finite, got ${p[k]}`);
  }
}
