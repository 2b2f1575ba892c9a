// Rank module for the world tests.
import type { Communicator } from "../../../collectives/mod.ts";

export interface WorldData {
  failRank?: number;
  crashRank?: number;
  exitRank?: number;
}

export async function main(comm: Communicator, data: WorldData): Promise<unknown> {
  if (comm.rank === data.failRank) throw new Error(`rank ${comm.rank} gives up`);
  if (comm.rank === data.exitRank) Deno.exit(3);
  if (comm.rank === data.crashRank) {
    // An error nobody awaits: it escapes to the Worker's global scope.
    setTimeout(() => {
      throw new Error("crash outside main");
    }, 0);
    await new Promise(() => {});
  }
  const buf = new Int32Array([comm.rank]);
  await comm.allReduce(buf, "sum", { timeoutMs: 10_000 });
  return {
    rank: comm.rank,
    size: comm.size,
    name: comm.name,
    transport: comm.transport,
    sum: buf[0],
  };
}
