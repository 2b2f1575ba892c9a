// A Worker rank of plan.ts's calibration: how long a fixed mix of products and element-wise
// work takes on one BLAS thread while the world's other ranks run the same mix at once.
import type { Communicator } from "../collectives/mod.ts";
import { createCpuBackend } from "../kernels/mod.ts";

export async function main(comm: Communicator, data: unknown): Promise<number> {
  const { reps } = data as { reps: number };
  const be = createCpuBackend({ threads: 1 });
  try {
    const M = 512, N = 768, K = 256, E = 1 << 19;
    const a = be.alloc(M * K), b = be.alloc(K * N), c = be.alloc(M * N);
    const x = be.alloc(E), y = be.alloc(E);
    be.fill(a, 0.5);
    be.fill(b, 0.25);
    be.fill(x, 0.1);
    const mix = async () => {
      for (let i = 0; i < 4; i++) be.matmul(c, a, b, null, M, N, K);
      be.geluForward(y, x, E);
      be.add(x, x, y, E);
      await be.read(be.view(c, 0, 1));
    };
    await mix();
    await comm.barrier();
    const t0 = performance.now();
    for (let i = 0; i < reps; i++) await mix();
    const ms = performance.now() - t0;
    await comm.barrier();
    return ms;
  } finally {
    be.dispose();
  }
}
