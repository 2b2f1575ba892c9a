import type { Tensor } from "../kernels/backend.ts";
import type { FlatLayout } from "./layout.ts";

/** Check that a tensor is a float buffer at least as large as the layout. */
export function checkBuffer(what: string, t: Tensor, layout: FlatLayout): void {
  if (t.dtype !== "f32") {
    throw new TypeError(`The ${what} buffer must be f32, got ${t.dtype}`);
  }
  if (t.length < layout.size) {
    throw new RangeError(
      `The ${what} buffer has ${t.length} elements but the layout needs ${layout.size}: ` +
        `allocate it with backend.alloc(layout.size)`,
    );
  }
}

/** Check that a hyper-parameter is a finite number within [lo, hi]. */
export function checkNumber(name: string, x: number, lo: number, hi: number): void {
  if (typeof x !== "number" || !Number.isFinite(x) || x < lo || x > hi) {
    throw new RangeError(`${name} must be a number in [${lo}, ${hi}], got ${x}`);
  }
}
