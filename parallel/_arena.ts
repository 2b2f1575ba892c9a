// Activation storage for layers: tensors allocated once per (slot, name) and reused across
// steps; a view of the requested length is cached, so a steady shape allocates nothing.
//
// Two kinds of storage are transient and shared by all blocks of a model through an
// ActivationPool: backward scratch (GRAD_SLOT: the gradients a layer hands to the one below,
// consumed before the next layer's backward starts) and the activations of checkpointed blocks
// and of evaluation (RECOMPUTE_SLOT: recomputed right before each block's backward). A layer's
// pooled buffers are keyed by its role (e.g. "attn.c_attn", given by the block), so that block i
// and block j use the same memory for the same role. Every byte any arena allocates is counted
// by its pool, which is how the engine measures activation memory.

import type { Backend, Tensor, TensorDType } from "../kernels/mod.ts";

interface Entry {
  base: Tensor;
  views: Map<number, Tensor>;
}

/** Slot of backward scratch (gradients with respect to activations). */
export const GRAD_SLOT: number = -1;
/** Slot of the activations that checkpointed blocks and evaluation recompute. */
export const RECOMPUTE_SLOT: number = 1024;

const BYTES: Record<string, number> = { f32: 4, i32: 4, f16: 2, bf16: 2 };

/** Bytes of one element of `dtype`. */
export function bytesPer(dtype: TensorDType): number {
  return BYTES[dtype] ?? 4;
}

/** Counts the bytes a set of buffers allocated. */
export interface ByteMeter {
  /** Add `n` bytes. */
  add(n: number): void;
}

/** Buffers by (slot, name), growing when a longer one is asked for. */
export class Buffers {
  #be: Backend;
  #meter: ByteMeter | null;
  #slots = new Map<number, Map<string, Entry>>();

  constructor(be: Backend, meter: ByteMeter | null = null) {
    this.#be = be;
    this.#meter = meter;
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
      const n = Math.max(length, 1);
      e = { base: this.#be.alloc(n, dtype), views: new Map() };
      this.#meter?.add(n * bytesPer(dtype));
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
export interface BufferSource extends ByteMeter {
  get(slot: number, name: string, length: number, dtype?: TensorDType): Tensor;
}

/** Per-layer storage; transient slots go to the shared pool when one is given. */
export class Arena {
  #own: Buffers;
  #pool: BufferSource | null;
  #role: string;

  constructor(be: Backend, pool?: BufferSource | null, role = "") {
    this.#pool = pool ?? null;
    this.#own = new Buffers(be, this.#pool);
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

/** Throw unless `slot` is a usable slot number. */
export function checkSlot(slot: number): void {
  if (!Number.isInteger(slot) || slot < 0 || slot > RECOMPUTE_SLOT) {
    throw new RangeError(`slot must be an integer in [0, 1024], got ${slot}`);
  }
}
