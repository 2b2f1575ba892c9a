/**
 * The flat-buffer layout: every parameter tensor of a rank is a view (offset, shape) into one
 * contiguous buffer; gradients and optimizer moments use the same layout. A gradient bucket or
 * a ZeRO shard is then a range, and a checkpoint is a list of (name, offset, shape).
 *
 * @module
 */

/** A parameter to place in the flat buffer. */
export interface ParamSpec {
  /** Unique name, e.g. `"h.0.attn.c_attn.weight"`. */
  name: string;
  /** Shape, row-major. */
  shape: readonly number[];
  /** Whether AdamW applies weight decay (default: true for 2-D and larger tensors). */
  decay?: boolean;
}

/** A parameter's place in the flat buffer. */
export interface ParamSlot {
  /** Unique name. */
  readonly name: string;
  /** Shape, row-major. */
  readonly shape: readonly number[];
  /** Whether AdamW applies weight decay. */
  readonly decay: boolean;
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
      name: spec.name,
      shape: [...spec.shape],
      decay: spec.decay ?? spec.shape.length >= 2,
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
