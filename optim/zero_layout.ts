/**
 * ZeRO's layout as data: one pure function places a rank's parameters in a flat buffer in
 * backward order (a parameter sits where its gradient becomes complete: at the earliest layer
 * that uses it, which runs its backward last), groups them into gradient buckets of about
 * `bucketSize` elements that never span two layers, and pads every bucket so that it divides
 * by the data-parallel size. Rank `r`'s shard is the `r`-th equal slice of every bucket, so a
 * bucket's reduce-scatter leaves each rank exactly its shard of it, and an all-gather of the
 * slices rebuilds it. The data-parallel code (which bucket is full, what to reduce) and the
 * optimizer (which elements a rank updates) both read this, and neither knows the other.
 *
 * @module
 */
import type { FlatLayout, ParamSlot, ParamSpec } from "./layout.ts";

/** One gradient bucket: a range of the flat buffer holding whole parameters of one layer. */
export interface ZeroBucket {
  /** Index in backward order. */
  readonly index: number;
  /** First element (a multiple of the alignment). */
  readonly start: number;
  /** Elements, padded to a multiple of `dp * align`. */
  readonly length: number;
  /** Elements of each rank's slice: `length / dp`. */
  readonly shard: number;
  /** Where this bucket's slice sits in every rank's shard buffer. */
  readonly shardOffset: number;
  /** The parameters it holds, in buffer order. */
  readonly slots: readonly ParamSlot[];
  /**
   * How many times its parameters are used by the model's layers (a tied weight twice): the
   * bucket is complete when that many layer backwards that use it have run.
   */
  readonly uses: number;
  /** The index (in forward order) of the layer whose parameters it holds. */
  readonly layer: number;
  /** ZeRO stage 3 keeps it gathered (every parameter below the persistence threshold). */
  readonly persistent: boolean;
}

/** A rank's ZeRO layout: a {@linkcode FlatLayout} in backward order, and its buckets. */
export interface ZeroLayout extends FlatLayout {
  /** The data-parallel size it is sharded over. */
  readonly dp: number;
  /** Buckets in backward order. */
  readonly buckets: readonly ZeroBucket[];
  /** Elements of each rank's shard: the sum of the buckets' slices. */
  readonly shardSize: number;
  /** The bucket holding a parameter. */
  bucketOf(name: string): ZeroBucket;
  /** The buckets whose parameters a layer (by forward index) uses. */
  bucketsOfLayer(layer: number): readonly ZeroBucket[];
}

/** Options of {@linkcode buildZeroLayout}. */
export interface ZeroLayoutOptions {
  /** Data-parallel size. */
  dp: number;
  /**
   * Elements per gradient bucket (a larger parameter gets a bucket of its own); 0: one
   * parameter per bucket.
   */
  bucketSize: number;
  /** Element alignment of every parameter and slice start; default 64. */
  align?: number;
  /**
   * Parameters smaller than this go to buckets of their own per layer, marked persistent
   * (ZeRO-3 keeps them gathered); default 0 (none).
   */
  persistenceThreshold?: number;
}

function positive(name: string, v: number): number {
  if (!Number.isInteger(v) || v < 1) {
    throw new RangeError(`${name} must be a positive integer, got ${v}`);
  }
  return v;
}

/**
 * Lay out a rank's parameters for ZeRO.
 *
 * @example Two layers, two ranks: each bucket splits in two equal slices
 * ```ts
 * import { buildZeroLayout } from "./zero_layout.ts";
 * const z = buildZeroLayout([
 *   [{ name: "a", shape: [100] }],
 *   [{ name: "b", shape: [10] }, { name: "a", shape: [100] }],
 * ], { dp: 2, bucketSize: 1000, align: 4 });
 * console.assert(z.slots[0].name === "b" && z.buckets.length === 2);
 * console.assert(z.bucketOf("a").uses === 2 && z.buckets.every((b) => b.length % 8 === 0));
 * ```
 *
 * @param layers each layer's parameters, layers in forward order (a tied weight listed by
 *   every layer that uses it, with the same shape)
 * @param opts data-parallel size, bucket size, alignment, persistence threshold
 * @returns the layout
 * @throws {TypeError} when one name is declared with two shapes
 */
export function buildZeroLayout(
  layers: readonly (readonly ParamSpec[])[],
  opts: ZeroLayoutOptions,
): ZeroLayout {
  const dp = positive("dp", opts.dp);
  if (!Number.isInteger(opts.bucketSize) || opts.bucketSize < 0) {
    throw new RangeError(`bucketSize must be an integer >= 0, got ${opts.bucketSize}`);
  }
  const bucketSize = opts.bucketSize;
  const align = positive("align", opts.align ?? 64);
  const threshold = opts.persistenceThreshold ?? 0;
  const size = (s: ParamSpec) => s.shape.reduce((a, b) => a * b, 1);
  // Each parameter's home: the first layer (in forward order) that uses it; its uses.
  const home = new Map<string, { spec: ParamSpec; layer: number; uses: number }>();
  layers.forEach((list, layer) => {
    for (const s of list) {
      const h = home.get(s.name);
      if (!h) home.set(s.name, { spec: s, layer, uses: 1 });
      else {
        if (h.spec.shape.join() !== s.shape.join()) {
          throw new TypeError(
            `Parameter "${s.name}" is used with shapes [${h.spec.shape}] and [${s.shape}]`,
          );
        }
        h.uses++;
      }
    }
  });
  const slots: ParamSlot[] = [];
  const buckets: ZeroBucket[] = [];
  const unit = dp * align;
  let offset = 0;
  let shardOffset = 0;
  const close = (
    group: { spec: ParamSpec; uses: number }[],
    layer: number,
    persistent: boolean,
  ) => {
    if (group.length === 0) return;
    const start = offset;
    const mine: ParamSlot[] = [];
    let uses = 0;
    for (const { spec, uses: u } of group) {
      const n = size(spec);
      const slot: ParamSlot = {
        ...spec,
        shape: [...spec.shape],
        full: [...(spec.full ?? spec.shape)],
        decay: spec.decay ?? spec.shape.length >= 2,
        offset,
        size: n,
      };
      mine.push(slot);
      slots.push(slot);
      uses += u;
      offset += Math.ceil(n / align) * align;
    }
    const length = Math.ceil((offset - start) / unit) * unit;
    offset = start + length;
    buckets.push({
      index: buckets.length,
      start,
      length,
      shard: length / dp,
      shardOffset,
      slots: mine,
      uses,
      layer,
      persistent,
    });
    shardOffset += length / dp;
  };
  for (let layer = layers.length - 1; layer >= 0; layer--) {
    const own = [...home.values()].filter((h) => h.layer === layer);
    // A tied parameter gets a bucket of its own, so that its copies on other stages are
    // bucketed (and sharded) alike and can be summed slice by slice.
    for (const h of own.filter((h) => h.spec.tie !== undefined)) close([h], layer, false);
    // Within a layer, the parameters that decay first: an update then covers each bucket's
    // slice in about two runs of one decay flag.
    const decays = (h: { spec: ParamSpec }) => h.spec.decay ?? h.spec.shape.length >= 2;
    const rest = own.filter((h) => h.spec.tie === undefined)
      .sort((a, b) => Number(decays(b)) - Number(decays(a)));
    for (const persistent of threshold > 0 ? [true, false] : [false]) {
      let group: { spec: ParamSpec; uses: number }[] = [];
      let n = 0;
      for (const h of rest) {
        if (threshold > 0 && (size(h.spec) < threshold) !== persistent) continue;
        const k = size(h.spec);
        if (group.length > 0 && n + k > bucketSize) {
          close(group, layer, persistent);
          group = [];
          n = 0;
        }
        group.push(h);
        n += k;
      }
      close(group, layer, persistent);
    }
  }
  const byName = new Map(slots.map((s) => [s.name, s]));
  const bucketByName = new Map<string, ZeroBucket>();
  for (const b of buckets) for (const s of b.slots) bucketByName.set(s.name, b);
  const byLayer = layers.map((list) => {
    const set = new Set<ZeroBucket>();
    for (const s of list) set.add(bucketByName.get(s.name)!);
    return [...set];
  });
  return {
    dp,
    slots,
    buckets,
    size: offset,
    numParams: slots.reduce((a, s) => a + s.size, 0),
    shardSize: shardOffset,
    get(name: string): ParamSlot {
      const s = byName.get(name);
      if (!s) throw new RangeError(`No parameter named "${name}" in this layout`);
      return s;
    },
    bucketOf(name: string): ZeroBucket {
      const b = bucketByName.get(name);
      if (!b) throw new RangeError(`No parameter named "${name}" in this layout`);
      return b;
    },
    bucketsOfLayer(layer: number): readonly ZeroBucket[] {
      const b = byLayer[layer];
      if (!b) throw new RangeError(`No layer ${layer} in this layout`);
      return b;
    },
  };
}
