/**
 * Kernels: the {@linkcode Backend} contract and its implementations (reference TypeScript,
 * a fast CPU backend, WebGPU), the 16-bit float conversions ({@linkcode roundHalf},
 * {@linkcode widenHalf}) and the dropout hash ({@linkcode dropoutHash}).
 *
 * @module
 */
export * from "./backend.ts";
export * from "./half.ts";
export * from "./dropout.ts";
export * from "./rng.ts";
export * from "./reference.ts";
export * from "./cpu/mod.ts";
export * from "./webgpu/mod.ts";
