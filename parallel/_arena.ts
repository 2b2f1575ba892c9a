// Activation buffers of parallel layers, allocated once per (slot, name, length) and reused.

import type { Backend, Tensor, TensorDType } from "../kernels/mod.ts";
import type { ParallelStep } from "./layer.ts";

/** Slot for gradient scratch shared by backward passes. */
export const GRAD_SLOT = -1;

export class Arena {
  #be: Backend;
  #t = new Map<string, Tensor>();
  constructor(be: Backend) {
    this.#be = be;
  }
  get(slot: number, name: string, length: number, dtype: TensorDType = "f32"): Tensor {
    const k = `${slot}:${name}:${length}:${dtype}`;
    let t = this.#t.get(k);
    if (!t) {
      t = this.#be.alloc(Math.max(1, length), dtype);
      if (length === 0) t = this.#be.view(t, 0, 0);
      this.#t.set(k, t);
    }
    return t;
  }
}

export function slotOf(step: ParallelStep): number {
  const s = step.slot ?? 0;
  if (!Number.isInteger(s) || s < 0 || s > 1023) {
    throw new RangeError(`slot must be an integer in [0, 1023], got ${s}`);
  }
  return s;
}

export function saved<T>(list: Map<number, T>, slot: number, what: string): T {
  const t = list.get(slot);
  if (t === undefined) throw new RangeError(`${what}: backward on slot ${slot} before its forward`);
  return t;
}
