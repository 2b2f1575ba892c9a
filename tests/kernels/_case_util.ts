// The pieces every op case file shares: the case interface and tensors from a seeded Rng.

import type { Backend, HostArray, Tensor } from "../../kernels/mod.ts";
import type { Rng } from "../../kernels/mod.ts";

/** One op case. */
export interface OpCase {
  /** What the case covers, read after the backend's name in the test name. */
  name: string;
  /** Run the case on `be` with inputs drawn from `rng`; returns the outputs to compare. */
  run(be: Backend, rng: Rng): Promise<Record<string, HostArray>>;
  /** Tolerance override: |got - want| <= tol * (1 + |want|). */
  tol?: number;
  /**
   * `false` for a case that picks its tensors' dtypes itself, which ops_test.ts then does not
   * rerun in 16-bit storage.
   */
  storage16?: boolean;
}

/** A new f32 tensor of n uniform values in [-scale, scale). */
export function rand(be: Backend, rng: Rng, n: number, scale = 1): Tensor {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = (rng.uniform() * 2 - 1) * scale;
  const t = be.alloc(n);
  be.write(t, a);
  return t;
}

/** A new i32 tensor holding `values`. */
export function ints(be: Backend, values: number[]): Tensor {
  const t = be.alloc(values.length, "i32");
  be.write(t, new Int32Array(values));
  return t;
}

/** Read tensors together (on WebGPU they share one readback, ~10 ms each on its own). */
export async function read(
  be: Backend,
  named: Record<string, Tensor>,
): Promise<Record<string, HostArray>> {
  const entries = Object.entries(named);
  const arrays = await Promise.all(entries.map(([, t]) => be.read(t)));
  return Object.fromEntries(entries.map(([k], i) => [k, arrays[i]!]));
}

/** NaN equals NaN; -0 differs from 0. */
export function sameValue(a: number, b: number): boolean {
  return Object.is(a, b) || (Number.isNaN(a) && Number.isNaN(b));
}
