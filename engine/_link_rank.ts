// A Worker rank of plan.ts's calibration: the median milliseconds of a float32 all-reduce of
// each byte size over the world's shared arena (what the engine's buckets and tensor-parallel
// sums use).
import { type Communicator, freeShared, sharedArray } from "../collectives/mod.ts";

export async function main(comm: Communicator, data: unknown): Promise<number[]> {
  const { sizes } = data as { sizes: number[] };
  const out: number[] = [];
  for (const bytes of sizes) {
    const buf = sharedArray(Float32Array, Math.max(1, bytes / 4));
    buf.fill(1);
    const reps = bytes >= 1 << 22 ? 10 : 60;
    for (let i = 0; i < 3; i++) await comm.allReduce(buf);
    const times: number[] = [];
    for (let i = 0; i < reps; i++) {
      await comm.barrier();
      const t0 = performance.now();
      await comm.allReduce(buf);
      times.push(performance.now() - t0);
    }
    // Every rank takes the slowest rank's time for each repetition.
    const t = new Float32Array(times);
    await comm.allReduce(t, "max");
    out.push([...t].sort((a, b) => a - b)[Math.floor(reps / 2)]!);
    freeShared(buf);
  }
  return out;
}
