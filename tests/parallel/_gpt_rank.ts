// Rank side of the GPT equivalence tests: this rank's shards of the same seeded GPT, trained
// for a few steps with the grid's tensor, sequence, pipeline and data parallelism.

import type { Communicator } from "../../collectives/mod.ts";
import { createReferenceBackend } from "../../kernels/mod.ts";
import { initialValue } from "../../models/mod.ts";
import { AdamW } from "../../optim/mod.ts";
import { ParallelGptTrainer, type ScheduleName } from "../../parallel/mod.ts";
import {
  CFG,
  LR,
  MAX_NORM,
  MICRO,
  microBatch,
  MICROS,
  SEED,
  STEPS,
  T,
  WEIGHT_DECAY,
} from "./_gpt_data.ts";

export interface GptRankResult {
  coords: { tp: number; dp: number; pp: number };
  losses: number[];
  norms: number[];
  peaks: number[];
  /** The serial parameters put together from every rank's shards (world rank 0 only). */
  params: Map<string, Float32Array> | null;
}

export async function main(
  comm: Communicator,
  d: { tp: number; pp: number; v: number; sp: boolean; schedule: ScheduleName },
): Promise<GptRankResult> {
  const be = createReferenceBackend();
  const dp = comm.size / (d.tp * d.pp);
  const trainer = await ParallelGptTrainer.create({
    world: comm,
    backend: be,
    config: CFG,
    tp: d.tp,
    pp: d.pp,
    virtualStages: d.v,
    schedule: d.schedule,
    sequenceParallel: d.sp,
    microBatches: MICROS / dp,
    microBatchSize: MICRO,
    seqLen: T,
    init: (spec) => initialValue(spec, CFG.layers, SEED),
    optimizer: (layout, params, grads) =>
      new AdamW(be, layout, params, grads, { weightDecay: WEIGHT_DECAY }),
    maxGradNorm: MAX_NORM,
    timeoutMs: 30_000,
  });
  const losses: number[] = [];
  const norms: number[] = [];
  const peaks: number[] = [];
  for (let step = 0; step < STEPS; step++) {
    const r = await trainer.trainStep((j) => microBatch(step, j), LR);
    losses.push(r.loss);
    norms.push(r.gradNorm);
    peaks.push(r.peakActivations);
  }
  return {
    coords: trainer.groups.coords,
    losses,
    norms,
    peaks,
    params: await trainer.gatherParams(),
  };
}
