/**
 * The engine: ONE `Engine` per rank for every layout (`initialize(config, { world, backend })`,
 * DeepSpeed and Megatron config keys, `trainBatch` / `evalBatch` / `logits` / `save` / `load`),
 * sharded, atomic checkpoints that load at any layout, the training loop of a run (`runTraining`),
 * and the run records (metrics.jsonl, the HTML report, progress line).
 *
 * @example
 * ```ts
 * import { initialize } from "./mod.ts";
 * import { createReferenceBackend } from "../kernels/mod.ts";
 * const engine = await initialize(
 *   { model: { vocab: 8, ctx: 4, dim: 8, layers: 1, heads: 2 }, train_batch_size: 1 },
 *   { backend: createReferenceBackend() },
 * );
 * console.assert(engine.model.numParams > 0);
 * ```
 *
 * @module
 */
export * from "./config.ts";
export * from "./engine.ts";
export * from "./checkpoint.ts";
export * from "./metrics.ts";
export * from "./report.ts";
export * from "./progress.ts";
export * from "./run.ts";
export * from "./signals.ts";
export * from "./estimate.ts";
export * from "./step_time.ts";
export type * from "../kernels/backend.ts";
export type { Rng } from "../kernels/rng.ts";
export type * from "../models/mod.ts";
export type * from "../optim/mod.ts";
export type { Batch, DatasetDescriptor } from "../data/mod.ts";
export type * from "../collectives/communicator.ts";
export type * from "../parallel/mod.ts";
