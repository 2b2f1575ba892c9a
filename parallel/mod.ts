/**
 * Megatron-style parallelism, each layout tested equal to one rank:
 *
 * - the rank grid (`buildGrid`, `createGroups`): tp x dp x pp, tensor-parallel innermost
 *   (`rank = tp + TP * (dp + DP * pp)`), and the checks that a model and batch fit it;
 * - pipeline schedules as data (`buildSchedule`, `chooseSchedule`: none, GPipe, 1F1B,
 *   interleaved 1F1B), an event simulator and a text timeline, the p2p verbs and the executor
 *   (`runPipeline`);
 * - tensor- and sequence-parallel layers built from matched communication pairs
 *   (`ColumnParallelLinear`, `RowParallelLinear`, `VocabParallelEmbedding`,
 *   `VocabParallelHead` with a cross-entropy that never gathers the logits,
 *   `ParallelSelfAttention`, `ParallelMlp`, `ParallelBlock`);
 * - a GPT over all three axes (`ParallelGptTrainer`).
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
 * @example Train on 8 Workers (the rank module)
 * ```ts ignore
 * // rank.ts, started by runWorkers({ size: 8, module: new URL("./rank.ts", import.meta.url) })
 * import type { Communicator } from "../collectives/mod.ts";
 * import { createCpuBackend } from "../kernels/mod.ts";
 * import { initialValue } from "../models/mod.ts";
 * import { AdamW } from "../optim/mod.ts";
 * import { ParallelGptTrainer } from "./mod.ts";
 *
 * export async function main(world: Communicator) {
 *   const be = createCpuBackend({ threads: 1 });
 *   const config = { vocab: 64, ctx: 64, dim: 128, layers: 4, heads: 4 };
 *   const trainer = await ParallelGptTrainer.create({
 *     world, backend: be, config, tp: 2, pp: 2, sequenceParallel: true,
 *     microBatches: 4, microBatchSize: 8, seqLen: 64,
 *     init: (spec) => initialValue(spec, config.layers, 1234),
 *     optimizer: (layout, p, g) => new AdamW(be, layout, p, g),
 *     maxGradNorm: 1,
 *   });
 *   for (let step = 0; step < 100; step++) {
 *     const { loss } = await trainer.trainStep((j) => myBatch(step, j), 3e-4);
 *   }
 *   return await trainer.gatherParams(); // the serial tensors, on rank 0
 * }
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
