// Rank side of the GPT equivalence tests: this rank's engine for the same seeded GPT, trained
// for a few steps with the grid's tensor, sequence, pipeline and data parallelism.

import type { Communicator } from "../../collectives/mod.ts";
import { type EngineConfig, initialize } from "../../engine/mod.ts";
import { replicaShare } from "../../data/mod.ts";
import { createReferenceBackend } from "../../kernels/mod.ts";
import type { ScheduleName } from "../../parallel/mod.ts";
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
  /** The serial parameters put together from every rank's pieces (world rank 0 only). */
  params: Map<string, Float32Array> | null;
}

/** The engine configuration of the equivalence recipe for a layout. */
export function recipe(
  world: number,
  d: { tp: number; pp: number; v: number; sp: boolean; untied?: boolean },
): EngineConfig {
  const dp = world / (d.tp * d.pp);
  return {
    model: { ...CFG, tied: !d.untied },
    seed: SEED,
    train_batch_size: MICRO * MICROS,
    train_micro_batch_size_per_gpu: MICRO,
    gradient_accumulation_steps: MICROS / dp,
    gradient_clipping: MAX_NORM,
    optimizer: { type: "AdamW", params: { lr: LR, weight_decay: WEIGHT_DECAY } },
    scheduler: { type: "WarmupLR", params: { warmup_num_steps: 0, warmup_max_lr: LR } },
    tensor_model_parallel_size: d.tp,
    pipeline_model_parallel_size: d.pp,
    virtual_pipeline_model_parallel_size: d.v,
    sequence_parallel: d.sp,
    data_parallel_size: dp,
  };
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
    /** Continue from the checkpoint in this directory. */
    resume?: string;
    /** Save a checkpoint into this directory at the end. */
    save?: string;
    /** Give the head its own weight instead of reusing wte. */
    untied?: boolean;
  },
): Promise<GptRankResult> {
  const engine = await initialize(recipe(comm.size, d), {
    world: comm,
    backend: createReferenceBackend(),
    schedule: d.schedule,
    timeoutMs: 30_000,
  });
  if (d.resume) await engine.load(d.resume);
  const losses: number[] = [];
  const norms: number[] = [];
  const peaks: number[] = [];
  const [from, to] = d.steps ?? [0, STEPS];
  for (let step = from; step < to; step++) {
    const batches = Array.from({ length: MICROS }, (_, j) => ({
      ...microBatch(step, j),
      B: MICRO,
      T,
    }));
    const r = await engine.trainBatch(
      replicaShare(batches, engine.groups.coords.dp, engine.layout.dp),
    );
    losses.push(r.loss);
    norms.push(r.gradNorm);
    peaks.push(r.peakMicroBatches);
  }
  if (d.save) await engine.save(d.save);
  const params = await engine.gatherTensors();
  return { coords: engine.groups.coords, losses, norms, peaks, params };
}
