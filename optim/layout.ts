/**
 * The flat-buffer layout: every parameter tensor of a rank is a view (offset, shape) into one
 * contiguous buffer; gradients and optimizer moments use the same layout. A gradient bucket or
 * a ZeRO shard is then a range, and a checkpoint is a list of (name, offset, shape).
 *
 * @module
 */

/**
 * How a rank's parameter is cut from the serial tensor across the tensor-parallel group.
 * Axis `axis` of the serial shape is divided into `blocks` equal blocks (default 1), and each
 * block into `parts` equal pieces; this rank holds piece `index` of every block (GPT-2's
 * `c_attn`: three blocks q | k | v along the columns).
 */
export interface TensorSplit {
  /** The dimension of the serial shape that is cut. */
  readonly axis: number;
  /** Pieces per block (the tensor-parallel size). */
  readonly parts: number;
  /** The piece this rank holds, 0 <= index < parts. */
  readonly index: number;
  /** Equal blocks the axis is first divided into; default 1. */
  readonly blocks?: number;
}

/** How a parameter's initial value is drawn (each tensor from its own seeded stream). */
export type ParamInit =
  /** All zeros (biases). */
  | { readonly kind: "zeros" }
  /** All ones (layernorm weights). */
  | { readonly kind: "ones" }
  /** Normal with mean 0 and this standard deviation. */
  | { readonly kind: "normal"; readonly std: number };

/**
 * A parameter to place in the flat buffer, as the layer that creates it declares it: its name,
 * this rank's shape, and what gradient sync, the global norm, checkpoints and ZeRO need to know
 * about it. Nothing else (no name pattern) decides those.
 */
export interface ParamSpec {
  /** Unique name, e.g. `"h.0.attn.c_attn.weight"`. */
  name: string;
  /** This rank's shape, row-major. */
  shape: readonly number[];
  /** Whether AdamW applies weight decay (default: true for 2-D and larger tensors). */
  decay?: boolean;
  /** The serial (one-rank) shape; default `shape`. */
  full?: readonly number[];
  /** How this rank's piece is cut from the serial tensor; absent: replicated on every rank. */
  split?: TensorSplit;
  /**
   * The gradient is a partial sum over the tensor-parallel group (a replicated parameter that
   * each rank applied to its own rows only, as under sequence parallelism): sum it there.
   */
  partial?: boolean;
  /**
   * The group of pipeline stages that each hold a copy of this parameter (`"embedding"`: the
   * first and last stage, for a head tied to the token embedding): their gradients are summed
   * there so the copies take the same step.
   */
  tie?: string;
  /**
   * This copy stands in for a tied parameter held elsewhere (the last stage's `wte`): it is
   * not counted in the global gradient norm and not saved.
   */
  mirror?: boolean;
  /** How the initial value is drawn; default normal(0, 0.02). */
  init?: ParamInit;
}

/** A parameter's place in the flat buffer. */
export interface ParamSlot extends Readonly<ParamSpec> {
  /** Shape, row-major. */
  readonly shape: readonly number[];
  /** Whether AdamW applies weight decay. */
  readonly decay: boolean;
  /** The serial shape. */
  readonly full: readonly number[];
  /** First element in the flat buffer (a multiple of the layout's alignment). */
  readonly offset: number;
  /** Number of elements (the product of the shape). */
  readonly size: number;
}

/** Options of {@linkcode buildLayout}. */
export interface LayoutOptions {
  /**
   * Element alignment of every parameter's start; default 64 (256 bytes, WebGPU's storage
   * buffer offset alignment).
   */
  align?: number;
  /** The total size is padded up to a multiple of this (e.g. the data-parallel size); default 1. */
  padTo?: number;
}

/** A computed layout: parameter slots in order, and the padded total size. */
export interface FlatLayout {
  /** Slots in the order given. */
  readonly slots: readonly ParamSlot[];
  /** Total elements including alignment and padding; divisible by `padTo * align`. */
  readonly size: number;
  /** Elements actually holding parameters (excluding padding). */
  readonly numParams: number;
  /** Look a slot up by name; throws a `RangeError` naming the missing parameter. */
  get(name: string): ParamSlot;
}

/**
 * Place parameters one after another in a flat buffer.
 *
 * @example Two tensors, aligned
 * ```ts
 * import { buildLayout } from "./layout.ts";
 * const layout = buildLayout([{ name: "w", shape: [3, 4] }, { name: "b", shape: [4] }]);
 * console.assert(layout.get("b").offset === 64);
 * ```
 *
 * @param specs the parameters, in the order they should be placed
 * @param opts alignment and padding
 * @returns the layout
 */
export function buildLayout(specs: readonly ParamSpec[], opts: LayoutOptions = {}): FlatLayout {
  const align = opts.align ?? 64;
  const padTo = opts.padTo ?? 1;
  if (!Number.isInteger(align) || align < 1) {
    throw new RangeError(`align must be a positive integer, got ${align}`);
  }
  if (!Number.isInteger(padTo) || padTo < 1) {
    throw new RangeError(`padTo must be a positive integer, got ${padTo}`);
  }
  const slots: ParamSlot[] = [];
  const byName = new Map<string, ParamSlot>();
  let offset = 0;
  let numParams = 0;
  for (const spec of specs) {
    if (byName.has(spec.name)) {
      throw new RangeError(`Parameter "${spec.name}" is declared twice: names must be unique`);
    }
    for (const d of spec.shape) {
      if (!Number.isInteger(d) || d < 0) {
        throw new RangeError(
          `Parameter "${spec.name}" has shape [${spec.shape}]: dimensions must be integers >= 0`,
        );
      }
    }
    const size = spec.shape.reduce((a, b) => a * b, 1);
    const slot: ParamSlot = {
      ...spec,
      shape: [...spec.shape],
      decay: spec.decay ?? spec.shape.length >= 2,
      full: [...(spec.full ?? spec.shape)],
      offset,
      size,
    };
    slots.push(slot);
    byName.set(spec.name, slot);
    numParams += size;
    offset += Math.ceil(size / align) * align;
  }
  const unit = align * padTo;
  const size = Math.ceil(offset / unit) * unit;
  return {
    slots,
    size,
    numParams,
    get(name: string): ParamSlot {
      const s = byName.get(name);
      if (!s) throw new RangeError(`No parameter named "${name}" in this layout`);
      return s;
    },
  };
}
