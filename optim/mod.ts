/**
 * Optimizers over flat buffers: the parameter layout, AdamW, SGD, learning-rate schedules,
 * gradient clipping and loss scaling.
 *
 * @module
 */
export * from "./layout.ts";
