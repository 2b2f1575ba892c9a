// Activation storage for layers: tensors allocated once per (slot, name) and reused across
// steps; a view of the requested length is cached, so a steady shape allocates nothing.
//
// Two kinds of storage are transient and can be shared by all blocks of a model through an
// ActivationPool: backward scratch (GRAD_SLOT: the gradients a layer hands to the one below,
// consumed before the next layer's backward starts) and the activations of checkpointed blocks
// (RECOMPUTE_SLOT: recomputed right before each block's backward). A layer's pooled buffers are
// keyed by its role, its parameter prefix without "h.{i}.", so that block i and block j use the
// same memory for the same role.

import type { Backend, Tensor, TensorDType } from "../kernels/mod.ts";

interface Entry {
  base: Tensor;
  views: Map<number, Tensor>;
}

/** Slot of backward scratch (gradients w.r.t. activations). */
export const GRAD_SLOT = -1;
/** Slot of the activations a checkpointed block recomputes. */
export const RECOMPUTE_SLOT = 1024;

/** Buffers by (slot, name), growing when a longer one is asked for. */
export class Buffers {
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
    if (!e || e.base.length < length || e.base.dtype !== dtype) {
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

/** Anything that hands out buffers by (slot, name). */
export interface BufferSource {
  get(slot: number, name: string, length: number, dtype?: TensorDType): Tensor;
}

/** Per-layer storage; transient slots go to a shared pool when one is given. */
export class Arena {
  #own: Buffers;
  #pool: BufferSource | null;
  #role: string;

  constructor(be: Backend, pool?: BufferSource | null, role = "") {
    this.#own = new Buffers(be);
    this.#pool = pool ?? null;
    this.#role = role;
  }

  /** A tensor of exactly `length` elements for (slot, name). */
  get(slot: number, name: string, length: number, dtype: TensorDType = "f32"): Tensor {
    if (this.#pool && (slot === GRAD_SLOT || slot === RECOMPUTE_SLOT)) {
      return this.#pool.get(slot, `${this.#role}/${name}`, length, dtype);
    }
    return this.#own.get(slot, name, length, dtype);
  }
}

/** A layer's role in a block: its parameter prefix without `h.{i}.`. */
export function roleOf(name: string): string {
  return name.replace(/^h\.\d+\./, "");
}

/** Throw unless `slot` is a usable slot number. */
export function checkSlot(slot: number): void {
  if (!Number.isInteger(slot) || slot < 0 || slot > RECOMPUTE_SLOT) {
    throw new RangeError(`slot must be an integer in [0, 1023], got ${slot}`);
  }
}
