/**
 * Loom: distributed training of deep-learning models in TypeScript, on Deno.
 *
 * Each module can be imported on its own (`./collectives/mod.ts`, `./kernels/mod.ts`, ...);
 * this entry point gathers them under namespaces.
 *
 * @example Import the collectives
 * ```ts
 * import { collectives } from "./mod.ts";
 * console.assert(typeof collectives.CollectiveError === "function");
 * ```
 *
 * @module
 */
export * as collectives from "./collectives/mod.ts";
export * as kernels from "./kernels/mod.ts";
export * as optim from "./optim/mod.ts";
export * as parallel from "./parallel/mod.ts";
export * as models from "./models/mod.ts";
export * as data from "./data/mod.ts";
export * as engine from "./engine/mod.ts";
export * as wasm from "./wasm/mod.ts";
