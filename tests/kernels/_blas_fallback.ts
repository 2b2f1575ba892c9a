// Run with LOOM_BLAS_LIB set: prints the cpu backend's gemm, description and the load error.
import { blasLoadError, createCpuBackend } from "../../kernels/mod.ts";

const be = createCpuBackend();
console.log(
  JSON.stringify({ gemm: be.gemm.name, description: be.description, why: blasLoadError() }),
);
