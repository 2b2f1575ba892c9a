// The Gemm implementations available on this machine, for the tests.

import { blasLoadError, loadBlas } from "../../kernels/cpu/blas.ts";
import { type Gemm, tsGemm } from "../../kernels/cpu/gemm.ts";

/** Every Gemm that loads here, with the reason each missing one is skipped. */
export async function availableGemms(): Promise<{ gemms: Gemm[]; skipped: string[] }> {
  const gemms: Gemm[] = [tsGemm];
  const skipped: string[] = [];
  const blas = loadBlas();
  if (blas) gemms.push(blas);
  else skipped.push(`blas (no BLAS library found: ${blasLoadError()})`);
  try {
    const wasm = await import("../../kernels/cpu/wasm_gemm.ts");
    gemms.push(wasm.createWasmGemm());
  } catch (e) {
    skipped.push(`wasm (${e instanceof Error ? e.message.split("\n")[0] : e})`);
  }
  return { gemms, skipped };
}
