/**
 * WebAssembly: a small binary encoder ({@linkcode ModuleBuilder}, the instruction writer
 * {@linkcode Code}, LEB128 and value types) and the engine's relaxed SIMD probe
 * ({@linkcode hasRelaxedSimd}). The CPU kernels and the shared-memory folds generate their
 * modules with it; it imports nothing.
 *
 * @module
 */
export * from "./encode.ts";
