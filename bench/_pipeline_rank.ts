// Rank side of bench/pipeline.ts: one pipeline stage of a GPT on the CPU backend, a few warm-up
// steps, then timed steps; reports per-step wall, compute and idle time of this stage.

import type { Communicator } from "../collectives/mod.ts";
import { createCpuBackend } from "../kernels/mod.ts";
import { FlatParams, initialValue } from "../models/mod.ts";
import { buildLayout } from "../optim/mod.ts";
import {
  buildChunkLayers,
  buildSchedule,
  gptActivationSize,
  GptChunk,
  type ParallelGptConfig,
  runPipeline,
  type ScheduleName,
  serialSpecs,
  shardSpecs,
  stageParts,
  type TraceEntry,
} from "../parallel/mod.ts";

export interface BenchRankInput {
  cfg: ParallelGptConfig;
  schedule: ScheduleName;
  v: number;
  m: number;
  B: number;
  T: number;
  warmup: number;
  steps: number;
  overlap: boolean;
}

export interface BenchRankResult {
  stage: number;
  wallMs: number[];
  idleMs: number[];
  /** Compute steps of the last timed step. */
  trace: TraceEntry[];
}

export async function main(comm: Communicator, d: BenchRankInput): Promise<BenchRankResult> {
  const be = createCpuBackend({ threads: 1 });
  const pp = comm.size;
  const parts = stageParts(d.cfg.layers, pp, d.v, comm.rank);
  const serial = serialSpecs(d.cfg, parts);
  const layout = buildLayout(shardSpecs(serial, 1));
  const store = new FlatParams(be, layout);
  for (const s of serial) {
    be.write(store.params, initialValue(s, d.cfg.layers, 1), layout.get(s.name).offset);
  }
  const tp = { comm: null };
  const layers = parts.map((p) => buildChunkLayers(be, tp, store, d.cfg, p));
  const schedule = buildSchedule(d.schedule, { pp, m: d.m, v: d.v });
  const n = d.B * d.T;
  const batch = (mb: number) => ({
    inputs: Int32Array.from({ length: n }, (_, i) => (i * 7 + mb * 13) % d.cfg.vocab),
    targets: Int32Array.from({ length: n }, (_, i) => (i * 5 + mb * 3 + 1) % d.cfg.vocab),
  });
  const wallMs: number[] = [];
  const idleMs: number[] = [];
  let trace: TraceEntry[] = [];
  for (let step = 0; step < d.warmup + d.steps; step++) {
    store.zeroGrad();
    const chunks = parts.map((p, c) =>
      new GptChunk(be, tp, layers[c]!, p, { B: d.B, T: d.T, batch, gradScale: 1 / d.m })
    );
    await comm.barrier();
    const stats = await runPipeline({
      schedule,
      comm,
      chunks,
      activationSize: gptActivationSize(d.B, d.T, d.cfg.dim, tp),
      trace: true,
      overlap: d.overlap,
    });
    trace = [...stats.trace!];
    if (step >= d.warmup) {
      wallMs.push(stats.wallMs);
      idleMs.push(stats.idleMs);
    }
  }
  return { stage: comm.rank, wallMs, idleMs, trace };
}
