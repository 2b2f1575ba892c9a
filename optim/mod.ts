/**
 * Optimizers over flat buffers: the parameter layout, AdamW, SGD, learning-rate schedules,
 * gradient clipping and loss scaling.
 *
 * @example Warmup then cosine
 * ```ts
 * import { learningRate } from "./mod.ts";
 * const lr = learningRate(0, { kind: "cosine", lr: 1e-3, warmup: 10, totalSteps: 100 });
 * console.assert(lr === 1e-4);
 * ```
 *
 * @module
 */
export type * from "../kernels/backend.ts";
export * from "./layout.ts";
export * from "./gate.ts";
export * from "./tensor_comm.ts";
export * from "./zero_layout.ts";
export * from "./zero.ts";
export * from "./optimizer.ts";
export * from "./adamw.ts";
export * from "./sgd.ts";
export * from "./schedule.ts";
export * from "./clip.ts";
export * from "./loss_scaler.ts";
