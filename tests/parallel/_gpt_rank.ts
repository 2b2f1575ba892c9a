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
  /** AdamW's moments, put together the same way (world rank 0 only). */
  moments: { m: Map<string, Float32Array>; v: Map<string, Float32Array> } | null;
}

/** A saved run to continue from: serial tensors, moments and the optimizer step count. */
export interface Resume {
  params: Map<string, Float32Array>;
  m: Map<string, Float32Array>;
  v: Map<string, Float32Array>;
  steps: number;
}

export async function main(
  comm: Communicator,
  d: {
    tp: number;
    pp: number;
    v: number;
    sp: boolean;
    schedule: ScheduleName;
    /** Steps [from, to) of the recipe to run; default all. */
    steps?: [number, number];
    resume?: Resume;
    /** Give the head its own weight instead of reusing wte. */
    untied?: boolean;
  },
): Promise<GptRankResult> {
  const be = createReferenceBackend();
  const dp = comm.size / (d.tp * d.pp);
  const trainer = await ParallelGptTrainer.create({
    world: comm,
    backend: be,
    config: { ...CFG, tied: !d.untied },
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
  if (d.resume) {
    trainer.load(trainer.params, d.resume.params);
    const st = trainer.optimizer.stateTensors();
    trainer.load(st.m!, d.resume.m);
    trainer.load(st.v!, d.resume.v);
    trainer.optimizer.steps = d.resume.steps;
  }
  const losses: number[] = [];
  const norms: number[] = [];
  const peaks: number[] = [];
  const [from, to] = d.steps ?? [0, STEPS];
  for (let step = from; step < to; step++) {
    const r = await trainer.trainStep((j) => microBatch(step, j), LR);
    losses.push(r.loss);
    norms.push(r.gradNorm);
    peaks.push(r.peakActivations);
  }
  const params = await trainer.gatherParams();
  const st = trainer.optimizer.stateTensors();
  const m = await trainer.gather(st.m!);
  const v = await trainer.gather(st.v!);
  const moments = m && v ? { m, v } : null;
  return { coords: trainer.groups.coords, losses, norms, peaks, params, moments };
}
