/**
 * The rank grid: how `world = tp * dp * pp` ranks are laid out, and the groups each rank
 * belongs to. One order, Megatron's `tp-dp-pp` with tensor-parallel ranks innermost (so the
 * ranks of a tensor group are neighbours and share a node):
 *
 * ```
 * rank = tpRank + tp * (dpRank + dp * ppRank)
 * ```
 *
 * Nothing here is global: {@linkcode buildGrid} returns plain data and
 * {@linkcode createGroups} returns the sub-communicators for one rank.
 *
 * @module
 */

import type { Communicator } from "../collectives/mod.ts";

/** The order in which ranks are laid out, innermost first. */
export const GRID_ORDER = "tp-dp-pp";

/** A rank's place in the grid. */
export interface RankCoords {
  /** Index in the tensor-parallel group, 0 <= tp < grid.tp. */
  readonly tp: number;
  /** Index in the data-parallel group, 0 <= dp < grid.dp. */
  readonly dp: number;
  /** Pipeline stage, 0 <= pp < grid.pp. */
  readonly pp: number;
}

/** The groups one rank belongs to, each as the sorted list of its global ranks. */
export interface RankGroups {
  /** Ranks that split each layer's tensors with this one (same dp, pp). */
  readonly tp: readonly number[];
  /** Ranks holding the same parameters (same tp, pp): gradients are all-reduced here. */
  readonly dp: readonly number[];
  /** Ranks forming one pipeline (same tp, dp), in stage order. */
  readonly pp: readonly number[];
  /**
   * First and last stage of this rank's pipeline (tied embeddings are summed here); for a
   * rank on a middle stage, the empty list. With one stage, just this rank.
   */
  readonly embedding: readonly number[];
  /** Ranks holding one full model replica (same dp): tp * pp ranks. */
  readonly modelParallel: readonly number[];
}

/** Sizes of the grid's axes. */
export interface GridOptions {
  /** Total number of ranks. */
  worldSize: number;
  /** Tensor-parallel size; default 1. */
  tp?: number;
  /** Pipeline-parallel size; default 1. */
  pp?: number;
}

/** A rank grid: sizes, the rank <-> coordinates map and every group. */
export interface Grid {
  /** Total number of ranks. */
  readonly worldSize: number;
  /** Tensor-parallel size. */
  readonly tp: number;
  /** Data-parallel size (inferred: worldSize / (tp * pp)). */
  readonly dp: number;
  /** Pipeline-parallel size. */
  readonly pp: number;
  /** Always {@linkcode GRID_ORDER}. */
  readonly order: string;
  /** The global rank at `coords`. */
  rankOf(coords: RankCoords): number;
  /** The coordinates of global rank `rank`. */
  coordsOf(rank: number): RankCoords;
  /** The groups global rank `rank` belongs to. */
  groupsOf(rank: number): RankGroups;
  /** Every group of one kind, each a list of global ranks, in a fixed order. */
  allGroups(kind: keyof RankGroups): number[][];
}

function positiveInt(name: string, v: number): number {
  if (!Number.isInteger(v) || v < 1) {
    throw new RangeError(`${name} must be a positive integer, got ${v}`);
  }
  return v;
}

/**
 * Lay out `worldSize` ranks as tp x dp x pp, tensor-parallel innermost.
 *
 * @example Eight ranks as tp=2, pp=2 (dp=2 inferred)
 * ```ts
 * import { buildGrid } from "./grid.ts";
 * const g = buildGrid({ worldSize: 8, tp: 2, pp: 2 });
 * console.assert(g.dp === 2);
 * console.assert(g.groupsOf(5).tp.join() === "4,5");
 * console.assert(g.groupsOf(5).pp.join() === "1,5");
 * ```
 *
 * @param opts world size and the tensor- and pipeline-parallel sizes
 * @returns the grid
 */
export function buildGrid(opts: GridOptions): Grid {
  const worldSize = positiveInt("worldSize", opts.worldSize);
  const tp = positiveInt("tp", opts.tp ?? 1);
  const pp = positiveInt("pp", opts.pp ?? 1);
  if (worldSize % (tp * pp) !== 0) {
    throw new RangeError(
      `Cannot lay out ${worldSize} ranks as tp=${tp} x pp=${pp}: the world size must be a ` +
        `multiple of tp * pp = ${tp * pp} (the data-parallel size is world / (tp * pp))`,
    );
  }
  const dp = worldSize / (tp * pp);
  const rankOf = (c: RankCoords): number => {
    if (
      !Number.isInteger(c.tp) || c.tp < 0 || c.tp >= tp || !Number.isInteger(c.dp) || c.dp < 0 ||
      c.dp >= dp || !Number.isInteger(c.pp) || c.pp < 0 || c.pp >= pp
    ) {
      throw new RangeError(
        `Coordinates (tp=${c.tp}, dp=${c.dp}, pp=${c.pp}) are outside the grid ` +
          `tp=${tp} x dp=${dp} x pp=${pp}`,
      );
    }
    return c.tp + tp * (c.dp + dp * c.pp);
  };
  const coordsOf = (rank: number): RankCoords => {
    if (!Number.isInteger(rank) || rank < 0 || rank >= worldSize) {
      throw new RangeError(`Rank ${rank} is outside the world of ${worldSize} ranks`);
    }
    return { tp: rank % tp, dp: Math.floor(rank / tp) % dp, pp: Math.floor(rank / (tp * dp)) };
  };
  const groupsOf = (rank: number): RankGroups => {
    const c = coordsOf(rank);
    const tpGroup = range(tp).map((t) => rankOf({ ...c, tp: t }));
    const dpGroup = range(dp).map((d) => rankOf({ ...c, dp: d }));
    const ppGroup = range(pp).map((p) => rankOf({ ...c, pp: p }));
    const first = ppGroup[0]!;
    const last = ppGroup[pp - 1]!;
    const embedding = pp === 1 ? [rank] : c.pp === 0 || c.pp === pp - 1 ? [first, last] : [];
    const modelParallel: number[] = [];
    for (let p = 0; p < pp; p++) {
      for (let t = 0; t < tp; t++) modelParallel.push(rankOf({ tp: t, dp: c.dp, pp: p }));
    }
    modelParallel.sort((a, b) => a - b);
    return { tp: tpGroup, dp: dpGroup, pp: ppGroup, embedding, modelParallel };
  };
  const allGroups = (kind: keyof RankGroups): number[][] => {
    const seen = new Map<string, number[]>();
    for (let r = 0; r < worldSize; r++) {
      const g = groupsOf(r)[kind];
      if (g.length > 0 && !seen.has(g.join())) seen.set(g.join(), [...g]);
    }
    return [...seen.values()];
  };
  return { worldSize, tp, dp, pp, order: GRID_ORDER, rankOf, coordsOf, groupsOf, allGroups };
}

function range(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i);
}

/** One rank's communicators, one per group of {@linkcode RankGroups}. */
export interface GridGroups {
  /** The grid they were made for. */
  readonly grid: Grid;
  /** This rank's coordinates. */
  readonly coords: RankCoords;
  /** Tensor-parallel group (rank in it = coords.tp). */
  readonly tp: Communicator;
  /** Data-parallel group (rank in it = coords.dp). */
  readonly dp: Communicator;
  /** Pipeline group (rank in it = coords.pp). */
  readonly pp: Communicator;
  /** First and last stage of the pipeline; `null` on middle stages. */
  readonly embedding: Communicator | null;
  /** One full model replica: tp * pp ranks. */
  readonly modelParallel: Communicator;
}

/**
 * Make this rank's sub-communicators from the world communicator with `split()`. Collective:
 * every rank of `world` must call it with the same grid.
 *
 * @param world the communicator of all `grid.worldSize` ranks
 * @param grid the layout
 * @returns this rank's groups
 */
export async function createGroups(world: Communicator, grid: Grid): Promise<GridGroups> {
  if (world.size !== grid.worldSize) {
    throw new RangeError(
      `The grid is for ${grid.worldSize} ranks but the communicator has ${world.size}: ` +
        `build the grid with worldSize = ${world.size}`,
    );
  }
  const rank = world.rank;
  const coords = grid.coordsOf(rank);
  const groups = grid.groupsOf(rank);
  const colorOf = (kind: keyof RankGroups, g: readonly number[]): number =>
    g.length === 0
      ? -1
      : grid.allGroups(kind).findIndex((x) => x[0] === g[0] && x.join() === g.join());
  const must = (c: Communicator | null, kind: string): Communicator => {
    if (c === null) throw new Error(`split() gave no ${kind} group to rank ${rank}`);
    return c;
  };
  const tp = must(await world.split(colorOf("tp", groups.tp), coords.tp), "tp");
  const dp = must(await world.split(colorOf("dp", groups.dp), coords.dp), "dp");
  const pp = must(await world.split(colorOf("pp", groups.pp), coords.pp), "pp");
  const embedding = await world.split(colorOf("embedding", groups.embedding), coords.pp);
  const modelParallel = must(
    await world.split(colorOf("modelParallel", groups.modelParallel), rank),
    "model-parallel",
  );
  return { grid, coords, tp, dp, pp, embedding, modelParallel };
}

/** A model's shape and parallel layout, checked by {@linkcode checkModelLayout}. */
export interface ModelLayoutOptions {
  /** Attention heads. */
  heads: number;
  /** Transformer layers. */
  layers: number;
  /** Vocabulary size (tokens). */
  vocab: number;
  /** Tensor-parallel size; default 1. */
  tp?: number;
  /** Pipeline-parallel size; default 1. */
  pp?: number;
  /** Virtual pipeline chunks per stage (interleaving); default 1. */
  virtualStages?: number;
  /**
   * The padded vocabulary is a multiple of `vocabDivisibleBy * tp`; default 1 (Megatron's
   * `make_vocab_size_divisible_by` is 128).
   */
  vocabDivisibleBy?: number;
}

/** What {@linkcode checkModelLayout} found. */
export interface ModelLayout {
  /** The vocabulary to build the model with, on every layout (a multiple of tp). */
  readonly paddedVocab: number;
  /** paddedVocab - vocab: rows no token ever uses. */
  readonly vocabPadding: number;
  /** Vocabulary rows held by each tensor-parallel rank. */
  readonly vocabPerRank: number;
  /** Heads held by each tensor-parallel rank. */
  readonly headsPerRank: number;
  /** Transformer layers in each model chunk (layers / (pp * virtualStages)). */
  readonly layersPerChunk: number;
  /** Notes for the user, e.g. that the vocabulary was padded. */
  readonly notes: readonly string[];
}

/**
 * Check that a model splits over tp and pp (x virtual stages), and pad the vocabulary to a
 * multiple of tp as Megatron does. A padded vocabulary changes the softmax, so build the model
 * with `paddedVocab` on every layout (one rank too) to get the same numbers.
 *
 * @example Vocabulary 65 over tp=2 is padded to 66
 * ```ts
 * import { checkModelLayout } from "./grid.ts";
 * const l = checkModelLayout({ heads: 4, layers: 4, vocab: 65, tp: 2, pp: 2 });
 * console.assert(l.paddedVocab === 66 && l.layersPerChunk === 2);
 * ```
 *
 * @param opts model sizes and the layout
 * @returns padded vocabulary and the per-rank sizes
 */
export function checkModelLayout(opts: ModelLayoutOptions): ModelLayout {
  const heads = positiveInt("heads", opts.heads);
  const layers = positiveInt("layers", opts.layers);
  const vocab = positiveInt("vocab", opts.vocab);
  const tp = positiveInt("tp", opts.tp ?? 1);
  const pp = positiveInt("pp", opts.pp ?? 1);
  const v = positiveInt("virtualStages", opts.virtualStages ?? 1);
  const div = positiveInt("vocabDivisibleBy", opts.vocabDivisibleBy ?? 1);
  if (heads % tp !== 0) {
    throw new RangeError(
      `Cannot split ${heads} attention heads across tp=${tp} ranks: choose a tp that divides ` +
        `the number of heads`,
    );
  }
  if (layers % (pp * v) !== 0) {
    const what = v === 1 ? `pp=${pp} stages` : `pp=${pp} stages x ${v} virtual stages`;
    throw new RangeError(
      `Cannot split ${layers} layers into ${what}: the number of layers must be a multiple of ` +
        `${pp * v}`,
    );
  }
  const unit = div * tp;
  const paddedVocab = Math.ceil(vocab / unit) * unit;
  const notes: string[] = [];
  if (paddedVocab !== vocab) {
    notes.push(
      `Vocabulary padded from ${vocab} to ${paddedVocab} (a multiple of ${unit}) so that it ` +
        `splits across tp=${tp}; the ${paddedVocab - vocab} extra rows are never used as targets`,
    );
  }
  return {
    paddedVocab,
    vocabPadding: paddedVocab - vocab,
    vocabPerRank: paddedVocab / tp,
    headsPerRank: heads / tp,
    layersPerChunk: layers / (pp * v),
    notes,
  };
}

/** Batch sizes, checked by {@linkcode microBatchCount}. */
export interface BatchOptions {
  /** Samples per optimizer step across all data-parallel ranks. */
  globalBatch: number;
  /** Samples per micro-batch on one rank. */
  microBatch: number;
  /** Data-parallel size. */
  dp: number;
}

/**
 * The number of micro-batches each pipeline runs per optimizer step:
 * `globalBatch = microBatch * m * dp`.
 *
 * @param opts global batch, micro-batch and data-parallel size
 * @returns m, the micro-batches per step
 */
export function microBatchCount(opts: BatchOptions): number {
  const g = positiveInt("globalBatch", opts.globalBatch);
  const b = positiveInt("microBatch", opts.microBatch);
  const dp = positiveInt("dp", opts.dp);
  if (g % (b * dp) !== 0) {
    throw new RangeError(
      `A global batch of ${g} does not split into micro-batches of ${b} over dp=${dp} ranks: ` +
        `it must be a multiple of microBatch * dp = ${b * dp}`,
    );
  }
  return g / (b * dp);
}
