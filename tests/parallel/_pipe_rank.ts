// Rank side of the pipeline tests: lay out the grid, make the groups, run the toy model's
// chunks of this stage with the executor and send back gradients, losses and group sums.

import type { Communicator } from "../../collectives/mod.ts";
import {
  buildGrid,
  buildSchedule,
  createGroups,
  runPipeline,
  type ScheduleName,
} from "../../parallel/mod.ts";
import { B, N, ToyChunk } from "./_toy.ts";

export interface PipeResult {
  coords: { tp: number; dp: number; pp: number };
  chunks: { k: number; dw: Float64Array; db: Float64Array; loss: number; saved: number }[];
  sums: Record<string, number>;
  tied: number[];
  peakBuffers: number;
}

export async function main(
  comm: Communicator,
  d: { tp: number; pp: number; name: ScheduleName; m: number; v: number; overlap: boolean },
): Promise<PipeResult> {
  const grid = buildGrid({ worldSize: comm.size, tp: d.tp, pp: d.pp });
  const g = await createGroups(comm, grid);
  const sums: Record<string, number> = {};
  for (const kind of ["tp", "dp", "pp", "modelParallel"] as const) {
    const buf = new Float32Array([comm.rank]);
    await g[kind].allReduce(buf);
    sums[kind] = buf[0]!;
  }
  const tiedBuf = new Float32Array([g.coords.pp + 1]);
  if (g.embedding !== null && g.embedding.size > 1) await g.embedding.allReduce(tiedBuf);
  const schedule = buildSchedule(d.name, { pp: d.pp, m: d.m, v: d.v });
  const V = d.pp * d.v;
  const chunks = Array.from({ length: d.v }, (_, c) => new ToyChunk(c * d.pp + g.coords.pp, V));
  const stats = await runPipeline({
    schedule,
    comm: g.pp,
    chunks,
    activationSize: B * N,
    timeoutMs: 20_000,
    overlap: d.overlap,
  });
  return {
    coords: g.coords,
    chunks: chunks.map((c) => ({ k: c.k, dw: c.dw, db: c.db, loss: c.loss, saved: c.saved })),
    sums,
    tied: [...tiedBuf],
    peakBuffers: stats.peakBuffers,
  };
}
