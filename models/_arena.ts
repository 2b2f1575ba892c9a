// Activation storage for layers: tensors allocated once per (slot, name) and reused across
// steps; a view of the requested length is cached, so a steady shape allocates nothing.

import type { Backend, Tensor, TensorDType } from "../kernels/mod.ts";

interface Entry {
  base: Tensor;
  views: Map<number, Tensor>;
}

/** Slot used for scratch that backward passes share (gradients w.r.t. activations). */
export const GRAD_SLOT = -1;

/** Per-layer activation buffers keyed by slot (a micro-batch in flight) and name. */
export class Arena {
  #be: Backend;
  #slots = new Map<number, Map<string, Entry>>();

  constructor(be: Backend) {
    this.#be = be;
  }

  /** A tensor of exactly `length` elements for (slot, name); contents persist between calls. */
  get(slot: number, name: string, length: number, dtype: TensorDType = "f32"): Tensor {
    let named = this.#slots.get(slot);
    if (!named) {
      named = new Map();
      this.#slots.set(slot, named);
    }
    let e = named.get(name);
    if (!e || e.base.length < length) {
      e = { base: this.#be.alloc(Math.max(length, 1), dtype), views: new Map() };
      named.set(name, e);
    }
    let v = e.views.get(length);
    if (!v) {
      v = length === e.base.length ? e.base : this.#be.view(e.base, 0, length);
      e.views.set(length, v);
    }
    return v;
  }
}

/** Throw unless `slot` is a usable slot number. */
export function checkSlot(slot: number): void {
  if (!Number.isInteger(slot) || slot < 0 || slot > 1023) {
    throw new RangeError(`slot must be an integer in [0, 1023], got ${slot}`);
  }
}
