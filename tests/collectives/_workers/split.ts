// Rank module for the split tests: builds sub-groups and checks ops inside them.
import type { Communicator } from "../../../collectives/mod.ts";

export async function main(comm: Communicator): Promise<unknown> {
  const r = comm.rank;
  // Even and odd ranks, ordered by descending rank.
  const sub = await comm.split(r % 2, -r);
  if (sub === null) throw new Error("a non-negative color must give a group");
  const buf = new Int32Array([r, 1]);
  await sub.allReduce(buf);
  const gathered = new Int32Array(sub.size);
  await sub.allGather(new Int32Array([r]), gathered);
  // Rank 0 sits out of the second split.
  const other = await comm.split(r === 0 ? -1 : 5);
  let otherSum: number | null = null;
  if (other !== null) {
    const b = new Float32Array([r]);
    await other.allReduce(b);
    otherSum = b[0]!;
    // A split of a split.
    const pair = await other.split(Math.floor(other.rank / 2));
    const p = new Int32Array([r]);
    await pair!.allReduce(p, "max");
    await pair!.close();
    await other.close();
  }
  // The parent group still works after its sub-groups.
  const all = new Int32Array([1]);
  await comm.allReduce(all);
  await sub.close();
  return {
    subRank: sub.rank,
    subSize: sub.size,
    subName: sub.name,
    sum: buf[0],
    count: buf[1],
    gathered: Array.from(gathered),
    otherSum,
    all: all[0],
  };
}
