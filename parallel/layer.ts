/**
 * What every layer shares: the step it is told about, where it finds its parameters, the
 * memory its activations live in, and how a rank's parameter is cut from the serial tensor.
 * A layer built on a tensor-parallel group of one rank is the serial layer.
 *
 * A layer has an explicit `forward` that keeps what its `backward` needs, and a `backward`
 * that takes dY, adds into its parameters' gradients and returns dX. Activations are kept per
 * `slot` (one per micro-batch in flight; slot 0 is enough without pipelining) in buffers
 * allocated once per shape and reused. A tensor returned by `forward` stays valid until the
 * next `forward` of that layer on the same slot; one returned by `backward` until the next
 * `backward` of that layer, or of any layer sharing its {@linkcode ActivationPool}. A layer
 * keeps a reference to its input, so the caller must keep it unchanged until `backward`.
 *
 * A layer looks its parameters and gradients up in its {@linkcode ParamStore} each time it
 * runs, so the store may hand out a different buffer each time (ZeRO stage 3 gathers a layer's
 * parameters just before it runs; stage 2 gives its gradients a bucket in flight).
 *
 * With sequence parallelism, a layer between the parallel regions (layernorm, residual add)
 * sees only this rank's rows: the step then carries the LOCAL sequence share `T = T_full / tp`,
 * so that `B * T` is the number of rows this rank holds; the parallel layers multiply by tp
 * where they need the whole sequence.
 *
 * @module
 */

import { type Backend, dropoutHash, type Tensor, type TensorDType } from "../kernels/mod.ts";
import type { ParamSpec, TensorSplit } from "../optim/mod.ts";
import { Buffers, checkSlot } from "./_arena.ts";
import { type TensorParallel, tpRank, tpSize } from "./mappings.ts";

/** Dropout of one pass: the probability and where this micro-batch sits in the step's batch. */
export interface StepDropout {
  /** Probability of dropping an element, in [0, 1). */
  readonly p: number;
  /** The step's key: a pure function of (seed, step), the same on every rank. */
  readonly key: number;
  /** Index of this micro-batch's first sequence in the step's global batch. */
  readonly seqOffset: number;
}

/** What a layer is told about the pass it takes part in. */
export interface Step {
  /** Sequences in the micro-batch. */
  readonly B: number;
  /** Tokens per sequence (this rank's share with sequence parallelism). */
  readonly T: number;
  /** Which saved-activation set to use (a micro-batch in flight); default 0. */
  readonly slot?: number;
  /** Targets `[B*T_full]` (i32, negative = ignored), for the head's forward and backward. */
  readonly targets?: Tensor;
  /** How many targets are >= 0 (the loss is their mean); needed with `targets`. */
  readonly count?: number;
  /** Multiplies the loss gradient (gradient accumulation, loss scaling); default 1. */
  readonly gradScale?: number;
  /** Dropout in training; absent in evaluation. */
  readonly dropout?: StepDropout;
  /** Decoding with a key/value cache (evaluation only; see {@linkcode StepCache}). */
  readonly cache?: StepCache;
}

/**
 * A pass of decoding: each sequence's `T` tokens of this pass sit at positions
 * `past..past+T-1`, the key/value cache of every attention layer holds the earlier positions,
 * and the pass adds its own. `past = 0` starts new sequences.
 */
export interface StepCache {
  /** Positions already in the cache. */
  readonly past: number;
  /** Positions the cache holds (the model's ctx). */
  readonly capacity: number;
}

/** Where a layer finds its parameters and their gradients, by name. */
export interface ParamStore {
  /** The parameter tensor named `name` (this rank's piece). */
  value(name: string): Tensor;
  /** The gradient tensor of `name`, same shape. */
  grad(name: string): Tensor;
}

/** A layer with an explicit forward and backward. */
export interface Layer {
  /** The parameters this layer reads (a tied weight appears in each layer that uses it). */
  readonly specs: readonly ParamSpec[];
  /**
   * Compute the output and keep what backward needs.
   *
   * @param x the input (token ids for an embedding)
   * @param step the shape and slot of the pass
   * @returns the output (the loss `[1]` for a head given targets)
   */
  forward(x: Tensor, step: Step): Promise<Tensor>;
  /**
   * Add this layer's parameter gradients into the gradient views and return dX.
   *
   * @param dy the gradient of the output (ignored by a head, which starts from the loss)
   * @param step the same shape and slot as the matching forward
   * @returns the gradient of the input, or `null` when the input is token ids
   */
  backward(dy: Tensor | null, step: Step): Promise<Tensor | null>;
}

/**
 * Memory that the layers of one model share for what is transient (backward scratch, the
 * activations of checkpointed blocks and of evaluation), and the meter of every activation
 * byte its layers allocate.
 */
export class ActivationPool {
  #buffers: Buffers;
  #bytes = 0;

  /**
   * Create an empty pool.
   *
   * @param backend the backend that allocates the buffers
   */
  constructor(backend: Backend) {
    this.#buffers = new Buffers(backend, this);
  }

  /** Bytes allocated so far by the pool and by every layer using it (never freed). */
  get bytes(): number {
    return this.#bytes;
  }

  /**
   * Count `n` more bytes.
   *
   * @param n bytes
   */
  add(n: number): void {
    this.#bytes += n;
  }

  /**
   * A buffer of exactly `length` elements for (slot, name), allocated once.
   *
   * @param slot the slot
   * @param name the buffer's name (role and purpose)
   * @param length elements
   * @param dtype element type
   * @returns the buffer
   */
  get(slot: number, name: string, length: number, dtype: TensorDType = "f32"): Tensor {
    return this.#buffers.get(slot, name, length, dtype);
  }
}

/** What every layer is built with. */
export interface LayerContext {
  /** The backend every op runs on. */
  readonly backend: Backend;
  /** The tensor-parallel group (`comm: null` or a group of one for a serial layer). */
  readonly tp: TensorParallel;
  /** Where the parameters live. */
  readonly store: ParamStore;
  /** Transient memory shared with the model's other layers. */
  readonly pool?: ActivationPool;
  /** Element type of the activations the layers keep; default `"f32"`. */
  readonly dtype?: TensorDType;
}

/** The slot of a step, checked. */
export function slotOf(step: Step): number {
  const s = step.slot ?? 0;
  checkSlot(s);
  return s;
}

/** The tensor a forward saved on `slot` for the backward. */
export function saved<T>(list: (T | undefined)[], slot: number, what: string): T {
  const t = list[slot];
  if (t === undefined) {
    throw new RangeError(`${what}: backward on slot ${slot} before any forward on it`);
  }
  return t;
}

/** Rows of the full sequence a rank holds under sequence parallelism (1 otherwise). */
export function seqFactor(tp: TensorParallel): number {
  return tp.sequenceParallel ? tpSize(tp) : 1;
}

/**
 * The split of a tensor cut across the group on `axis` (absent for a group of one).
 *
 * @param tp the tensor-parallel group
 * @param axis the cut dimension of the serial shape
 * @param blocks equal blocks the axis holds (q | k | v), default 1
 * @returns the split, or undefined when the group has one rank
 */
export function splitOn(
  tp: TensorParallel,
  axis: number,
  blocks?: number,
): TensorSplit | undefined {
  const parts = tpSize(tp);
  if (parts === 1) return undefined;
  return blocks === undefined || blocks === 1
    ? { axis, parts, index: tpRank(tp) }
    : { axis, parts, index: tpRank(tp), blocks };
}

/**
 * A 32-bit salt for a layer's dropout site, from its name (so that every layer draws its own
 * masks, and the same layer draws the same ones on every layout).
 *
 * @param site e.g. `"h.3.attn.resid"`
 * @returns the salt
 */
export function dropoutSalt(site: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < site.length; i++) h = Math.imul(h ^ site.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

/**
 * The key of one dropout site in one step.
 *
 * @param d the step's dropout
 * @param salt the site's salt
 * @returns the key to pass to the backend's dropout ops
 */
export function dropoutKey(d: StepDropout, salt: number): number {
  return dropoutHash(d.key, salt);
}

function dims(shape: readonly number[], axis: number): [number, number, number] {
  if (!Number.isInteger(axis) || axis < 0 || axis >= shape.length) {
    throw new RangeError(`Split axis ${axis} is outside a tensor of shape [${shape}]`);
  }
  let outer = 1, inner = 1;
  for (let i = 0; i < axis; i++) outer *= shape[i]!;
  for (let i = axis + 1; i < shape.length; i++) inner *= shape[i]!;
  return [outer, shape[axis]!, inner];
}

function pieces(shape: readonly number[], s: TensorSplit): [number, number, number, number] {
  const [outer, len, inner] = dims(shape, s.axis);
  const blocks = s.blocks ?? 1;
  if (len % (blocks * s.parts) !== 0) {
    throw new RangeError(
      `Cannot split dimension ${s.axis} (${len}) of [${shape}] into ${blocks} blocks of ` +
        `${s.parts} equal parts`,
    );
  }
  return [outer, blocks, len / (blocks * s.parts), inner];
}

/**
 * This rank's piece of a serial tensor.
 *
 * @example The q | k | v columns of a [2, 6] c_attn weight on rank 1 of 2
 * ```ts
 * import { shardTensor } from "./layer.ts";
 * const full = Float32Array.from({ length: 12 }, (_, i) => i);
 * const s = shardTensor(full, [2, 6], { axis: 1, parts: 2, index: 1, blocks: 3 });
 * console.assert(s.join() === "1,3,5,7,9,11");
 * ```
 *
 * @param full the serial tensor, row-major
 * @param shape its shape
 * @param split how it is cut (absent: the whole tensor)
 * @returns a new array with this rank's piece
 */
export function shardTensor(
  full: Float32Array,
  shape: readonly number[],
  split: TensorSplit | undefined,
): Float32Array {
  if (split === undefined || split.parts === 1) return full.slice();
  const [outer, blocks, part, inner] = pieces(shape, split);
  const run = part * inner;
  const out = new Float32Array(outer * blocks * run);
  for (let o = 0; o < outer; o++) {
    for (let b = 0; b < blocks; b++) {
      const src = ((o * blocks + b) * split.parts + split.index) * run;
      out.set(full.subarray(src, src + run), (o * blocks + b) * run);
    }
  }
  return out;
}

/**
 * Put every rank's piece back together: the inverse of {@linkcode shardTensor}.
 *
 * @param shards one piece per rank, in rank order
 * @param shape the serial shape
 * @param split how it was cut (its `index` is ignored)
 * @returns the serial tensor
 */
export function unshardTensor(
  shards: readonly Float32Array[],
  shape: readonly number[],
  split: TensorSplit | undefined,
): Float32Array {
  if (split === undefined || shards.length === 1) return shards[0]!.slice();
  const [outer, blocks, part, inner] = pieces(shape, { ...split, parts: shards.length });
  const run = part * inner;
  const out = new Float32Array(outer * blocks * shards.length * run);
  shards.forEach((s, rank) => {
    for (let o = 0; o < outer; o++) {
      for (let b = 0; b < blocks; b++) {
        const dst = ((o * blocks + b) * shards.length + rank) * run;
        out.set(s.subarray((o * blocks + b) * run, (o * blocks + b + 1) * run), dst);
      }
    }
  });
  return out;
}
