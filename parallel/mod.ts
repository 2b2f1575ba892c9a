/**
 * Megatron-style parallelism, each layout tested equal to one rank:
 *
 * - the rank grid (`buildGrid`, `createGroups`): tp x dp x pp, tensor-parallel innermost
 *   (`rank = tp + TP * (dp + DP * pp)`), and the checks that a model and batch fit it;
 * - pipeline schedules as data (`buildSchedule`, `chooseSchedule`: none, GPipe, 1F1B,
 *   interleaved 1F1B, and the forward-only schedule of evaluation), an event simulator and a
 *   text timeline, the p2p verbs and the executor (`runPipeline`);
 * - the layers models are built from, tensor- and sequence-parallel through matched
 *   communication pairs, each the serial layer on one rank (`ColumnParallelLinear`,
 *   `RowParallelLinear`, `LayerNorm`, `VocabParallelEmbedding`, `VocabParallelHead` with a
 *   cross-entropy that never gathers the logits, `SelfAttention`, `Mlp`, `TransformerBlock`),
 *   each declaring how its parameters are split, partial or tied;
 * - the gradient work model parallelism needs, read from those declarations (`grads.ts`).
 *
 * @example Draw 1F1B on 4 stages
 * ```ts
 * import { buildSchedule, renderTimeline, simulateSchedule } from "./mod.ts";
 * console.log(renderTimeline(simulateSchedule(buildSchedule("1f1b", { pp: 4, m: 8 }))));
 * ```
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
export * from "./layernorm.ts";
export * from "./embedding.ts";
export * from "./cross_entropy.ts";
export * from "./attention.ts";
export * from "./block.ts";
export * from "./grads.ts";
export { GRAD_SLOT, RECOMPUTE_SLOT } from "./_arena.ts";
