/**
 * Kernels: the {@linkcode Backend} contract and its implementations (reference TypeScript,
 * a fast CPU backend, WebGPU).
 *
 * @module
 */
export * from "./backend.ts";
export * from "./rng.ts";
export * from "./reference.ts";
export * from "./cpu/mod.ts";
export * from "./webgpu/mod.ts";
