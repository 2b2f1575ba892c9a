// The Gemm implementations available on this machine, for the tests.

import { type Gemm, tsGemm } from "../../kernels/cpu/gemm.ts";

/** Every Gemm that loads here, with the reason each missing one is skipped. */
export async function availableGemms(): Promise<{ gemms: Gemm[]; skipped: string[] }> {
  const gemms: Gemm[] = [tsGemm];
  const skipped: string[] = [];
  return await Promise.resolve({ gemms, skipped });
}
