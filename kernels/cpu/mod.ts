/**
 * The CPU backend and its matrix-product paths: OpenBLAS through FFI, WebAssembly SIMD, plain
 * TypeScript, all behind one {@linkcode Gemm} interface.
 *
 * @example Create the backend and see which path it picked
 * ```ts
 * import { createCpuBackend } from "./mod.ts";
 * const be = createCpuBackend({ threads: 1 });
 * console.log(be.description);
 * ```
 *
 * @module
 */
export type {
  AdamWParams,
  Backend,
  HostArray,
  MatmulOptions,
  Tensor,
  TensorDType,
} from "../backend.ts";
export { type CpuBackend, type CpuBackendOptions, createCpuBackend } from "./backend.ts";
export { checkGemmArgs, type Gemm, tsGemm } from "./gemm.ts";
export {
  type BlasGemm,
  type BlasInfo,
  blasLoadError,
  getBlasThreads,
  loadBlas,
  setBlasThreads,
} from "./blas.ts";
export { createWasmGemm, type WasmGemmOptions } from "./wasm_gemm.ts";
