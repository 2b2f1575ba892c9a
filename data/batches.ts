/**
 * Batches for next-token prediction: inputs [B, T] and targets [B, T] as Int32Arrays, drawn
 * deterministically from a seed, with a savable position.
 *
 * @module
 */
import { Rng } from "../kernels/rng.ts";

/** One batch: `targets[b, t]` is the token after `inputs[b, t]`, or -1 where not scored. */
export interface Batch {
  /** Token ids, [B, T] row-major. */
  inputs: Int32Array;
  /** Next-token ids, [B, T]; -1 marks a position the loss ignores. */
  targets: Int32Array;
  /** Batch size. */
  B: number;
  /** Sequence length. */
  T: number;
}

/** Where a batch stream stands, for a checkpoint. */
export interface BatchState {
  /** Batches drawn so far. */
  batches: number;
  /** The sampler's RNG state. */
  rng: number[];
}

/**
 * Rows `[from, to)` of a batch: what one data-parallel replica reads of it (a distributed
 * sampler's share).
 */
export interface RowRange {
  /** First row. */
  readonly from: number;
  /** One past the last row. */
  readonly to: number;
}

/**
 * An endless deterministic stream of training batches. Every rank of a job draws the same
 * stream, and each reads only the rows it trains on: `next(rows)` moves the stream past a whole
 * batch (the position is the same on every rank) but builds only the rows asked for.
 */
export interface BatchSource {
  /** Batch size. */
  readonly B: number;
  /** Sequence length. */
  readonly T: number;
  /**
   * The next batch, or only its rows `rows` (a batch of `rows.to - rows.from` rows).
   *
   * @param rows the rows to build; default all `B`
   */
  next(rows?: RowRange): Batch;
  /** The position, to save. */
  getState(): BatchState;
  /** Go back to a saved position. */
  setState(s: BatchState): void;
}

/**
 * Check a row range against a batch of `B` rows (all rows when absent).
 *
 * @param rows the range
 * @param B the batch's rows
 * @returns the range
 * @throws {RangeError} when it is not inside `[0, B]`
 */
export function checkRows(rows: RowRange | undefined, B: number): RowRange {
  if (rows === undefined) return { from: 0, to: B };
  const { from, to } = rows;
  if (!Number.isInteger(from) || !Number.isInteger(to) || from < 0 || to > B || from > to) {
    throw new RangeError(`Rows [${from}, ${to}) are not a range of a batch of ${B} rows`);
  }
  return rows;
}

/**
 * Random windows of a token stream: each row starts at a uniformly drawn offset.
 *
 * @example
 * ```ts
 * import { WindowSampler } from "./batches.ts";
 * const s = new WindowSampler(Int32Array.from({ length: 100 }, (_, i) => i), 2, 8, 1);
 * const b = s.next();
 * console.assert(b.targets[0] === b.inputs[0] + 1);
 * ```
 */
export class WindowSampler implements BatchSource {
  /** Batch size. */
  readonly B: number;
  /** Sequence length. */
  readonly T: number;
  readonly #tokens: Int32Array;
  readonly #rng: Rng;
  #batches = 0;

  /**
   * A sampler over `tokens`.
   *
   * @param tokens the token stream (at least T + 1 long)
   * @param B batch size
   * @param T sequence length
   * @param seed the sampler's seed
   */
  constructor(tokens: Int32Array, B: number, T: number, seed: number) {
    checkBT(B, T);
    if (tokens.length < T + 1) {
      throw new RangeError(
        `The data has ${tokens.length} tokens, too few for a sequence length of ${T} ` +
          `(need at least ${T + 1}): lower --ctx or use more text`,
      );
    }
    this.#tokens = tokens;
    this.B = B;
    this.T = T;
    this.#rng = new Rng(seed);
  }

  /**
   * The next batch, or only some of its rows.
   *
   * @param rows the rows to build; default all
   * @returns inputs and targets
   */
  next(rows?: RowRange): Batch {
    const { T } = this;
    const { from, to } = checkRows(rows, this.B);
    const inputs = new Int32Array((to - from) * T), targets = new Int32Array((to - from) * T);
    const span = this.#tokens.length - T;
    for (let b = 0; b < this.B; b++) {
      const start = this.#rng.int(span);
      if (b < from || b >= to) continue;
      inputs.set(this.#tokens.subarray(start, start + T), (b - from) * T);
      targets.set(this.#tokens.subarray(start + 1, start + T + 1), (b - from) * T);
    }
    this.#batches++;
    return { inputs, targets, B: to - from, T };
  }

  /**
   * The position.
   *
   * @returns batches drawn and the RNG state
   */
  getState(): BatchState {
    return { batches: this.#batches, rng: this.#rng.getState() };
  }

  /**
   * Restore a position.
   *
   * @param s a state from {@linkcode WindowSampler.getState}
   */
  setState(s: BatchState): void {
    this.#rng.setState(s.rng);
    this.#batches = s.batches;
  }
}

/**
 * Consecutive non-overlapping windows of a token stream, as fixed evaluation batches.
 *
 * @param tokens the token stream
 * @param B batch size
 * @param T sequence length
 * @param maxBatches at most this many batches
 * @returns the batches (possibly fewer rows in none: only whole batches are made)
 */
export function sequentialBatches(
  tokens: Int32Array,
  B: number,
  T: number,
  maxBatches: number,
): Batch[] {
  checkBT(B, T);
  const out: Batch[] = [];
  let pos = 0;
  while (out.length < maxBatches && pos + B * T + 1 <= tokens.length) {
    const inputs = new Int32Array(B * T), targets = new Int32Array(B * T);
    for (let b = 0; b < B; b++, pos += T) {
      inputs.set(tokens.subarray(pos, pos + T), b * T);
      targets.set(tokens.subarray(pos + 1, pos + T + 1), b * T);
    }
    out.push({ inputs, targets, B, T });
  }
  return out;
}

function checkBT(B: number, T: number): void {
  if (!Number.isInteger(B) || B < 1) {
    throw new RangeError(`Batch size must be an integer >= 1, got ${B}`);
  }
  if (!Number.isInteger(T) || T < 1) {
    throw new RangeError(`Sequence length must be an integer >= 1, got ${T}`);
  }
}

/**
 * Where data-parallel replica `replica` of `replicas` finds its rows when the global batch is
 * drawn as `draws` batches of `rows` rows each: the replica trains on the global rows
 * `[replica * n, (replica + 1) * n)`, n = draws x rows / replicas, and this gives that range's
 * part of each drawn batch (empty where it has none). Pass each to `BatchSource.next` so that
 * the replica builds only its own rows.
 *
 * @example Four draws of 2 rows over two replicas
 * ```ts
 * import { replicaRows } from "./batches.ts";
 * const r = replicaRows(2, 4, 1, 2);
 * console.assert(r[0]!.to === r[0]!.from && r[2]!.from === 0 && r[3]!.to === 2);
 * ```
 *
 * @param rows rows per drawn batch
 * @param draws batches drawn per step
 * @param replica this replica, 0 <= replica < replicas
 * @param replicas the data-parallel size
 * @returns one row range per drawn batch
 * @throws {RangeError} when the global batch does not split evenly over the replicas
 */
export function replicaRows(
  rows: number,
  draws: number,
  replica: number,
  replicas: number,
): RowRange[] {
  const total = rows * draws;
  if (total % replicas !== 0 || !(replica >= 0 && replica < replicas)) {
    throw new RangeError(
      `A global batch of ${draws} x ${rows} rows does not split over ${replicas} data-parallel ` +
        `replicas (or replica ${replica} is out of range)`,
    );
  }
  const n = total / replicas, lo = replica * n, hi = lo + n;
  return Array.from({ length: draws }, (_, i) => {
    const from = Math.min(Math.max(lo - i * rows, 0), rows);
    const to = Math.max(Math.min(hi - i * rows, rows), from);
    return { from, to };
  });
}

/**
 * Cut a replica's share out of the whole global batch (what {@linkcode replicaRows} builds
 * directly): the batches `Engine.trainBatch` takes on that replica's ranks.
 *
 * @param batches the global batch, as drawn
 * @param replica this replica
 * @param replicas the data-parallel size
 * @returns the replica's rows, as batches (empty ones left out)
 */
export function replicaShare(
  batches: readonly Batch[],
  replica: number,
  replicas: number,
): Batch[] {
  if (replicas === 1) return [...batches];
  const B = batches[0]?.B ?? 0;
  if (batches.some((b) => b.B !== B)) {
    throw new RangeError("replicaShare needs batches of one size");
  }
  return replicaRows(B, batches.length, replica, replicas).flatMap((r, i) => {
    if (r.to === r.from) return [];
    const b = batches[i]!;
    return [{
      inputs: b.inputs.slice(r.from * b.T, r.to * b.T),
      targets: b.targets.slice(r.from * b.T, r.to * b.T),
      B: r.to - r.from,
      T: b.T,
    }];
  });
}
