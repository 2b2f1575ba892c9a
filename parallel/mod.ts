/**
 * Megatron-style parallelism: the rank grid (tp x dp x pp, tensor-parallel innermost),
 * pipeline schedules as pure data and their executor, and tensor/sequence-parallel layers.
 *
 * @example Lay out 8 ranks
 * ```ts
 * import { buildGrid } from "./mod.ts";
 * const grid = buildGrid({ worldSize: 8, tp: 2, pp: 2 });
 * console.assert(grid.coordsOf(7).pp === 1);
 * ```
 *
 * @module
 */
export * from "./grid.ts";
export * from "./schedules.ts";
export * from "./simulate.ts";
export * from "./p2p.ts";
export * from "./pipeline.ts";
export * from "./layer.ts";
export * from "./mappings.ts";
export * from "./linear.ts";
export * from "./embedding.ts";
export * from "./cross_entropy.ts";
export * from "./attention.ts";
export * from "./block.ts";
export * from "./gpt.ts";
export * from "./trainer.ts";
