// Rank side of bench/pipeline.ts: one pipeline stage of a GPT on the CPU backend, a few warm-up
// steps, then timed steps; reports per-step wall, compute and idle time of this stage.

import type { Communicator } from "../collectives/mod.ts";
import { createCpuBackend } from "../kernels/mod.ts";
import { Gpt, type GptConfig, stageParts } from "../models/mod.ts";
import { buildSchedule, runPipeline, type ScheduleName, type TraceEntry } from "../parallel/mod.ts";

export interface BenchRankInput {
  cfg: GptConfig;
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
  const model = new Gpt(be, d.cfg, { seed: 1, parts, pipelined: pp > 1 });
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
    model.zeroGrad();
    const chunks = parts.map((_, c) =>
      model.chunk(c, { B: d.B, T: d.T, batch, gradScale: 1 / d.m, onLoss: () => {} })
    );
    await comm.barrier();
    const stats = await runPipeline({
      schedule,
      comm,
      chunks,
      activationSize: d.B * d.T * d.cfg.dim,
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
