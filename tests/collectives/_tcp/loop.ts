// A rank module that all-reduces until something fails; global rank 0 prints GO after 20 ops.
import type { Communicator } from "../../../collectives/communicator.ts";

/**
 * Loop over all-reduces until one fails, then rethrow.
 *
 * @param comm the communicator
 * @returns never returns normally
 */
export async function main(comm: Communicator): Promise<number> {
  const b = new Float32Array(10_000);
  for (let i = 0;; i++) {
    await comm.allReduce(b, "sum", { timeoutMs: 20_000 });
    if (i === 20 && comm.rank === 0) console.log("GO");
  }
}
