// Rank module for the arena tests: every rank allocates blocks of varied sizes at the same time,
// fills them with its rank, frees some, allocates again, and checks after a barrier that no other
// rank wrote into its blocks. Returns the failures.
import type { Communicator } from "../../../collectives/mod.ts";
import { defaultArena, freeShared, sharedArray } from "../../../collectives/mod.ts";

export async function main(comm: Communicator, data: { rounds: number }): Promise<string[]> {
  const fails: string[] = [];
  const mine: Int32Array[] = [];
  await comm.barrier();
  const before = defaultArena().usedBytes;
  await comm.barrier();
  for (let i = 0; i < data.rounds; i++) {
    const len = 1 + ((i * 7919 + comm.rank * 104729) % 5000);
    const a = sharedArray(Int32Array, len);
    if (a.some((v) => v !== 0)) fails.push(`block ${i} was not zeroed`);
    if (a.byteOffset % 64 !== 0) fails.push(`block ${i} is not 64-byte aligned`);
    a.fill(comm.rank + 1);
    mine.push(a);
    if (i % 3 === 2) freeShared(mine.splice(i % mine.length, 1)[0]!);
  }
  await comm.barrier();
  for (const a of mine) {
    if (a.some((v) => v !== comm.rank + 1)) {
      fails.push(`a block of rank ${comm.rank} was overwritten`);
    }
  }
  await comm.barrier();
  for (const a of mine) freeShared(a);
  await comm.barrier();
  const after = defaultArena().usedBytes;
  if (after !== before) fails.push(`${after - before} bytes are still in use after freeing`);
  return fails;
}
