// Rank side of the resharding tests, and the recipe both sides share: one World runs several
// jobs in turn (each a fresh engine over the whole world) that train, save and load
// checkpoints; the one-rank runs call `runJob` in the test process.

import type { Communicator } from "../../collectives/mod.ts";
import { type Engine, type EngineConfig, initialize } from "../../engine/mod.ts";
import { replicaShare } from "../../data/mod.ts";
import { createReferenceBackend } from "../../kernels/mod.ts";
import { CFG, LR, MAX_NORM, MICRO, MICROS, SEED, T, WEIGHT_DECAY } from "../parallel/_gpt_data.ts";

/** One job: a layout, the steps it trains, and what it loads and saves. */
export interface Job {
  tp?: number;
  pp?: number;
  /** Virtual pipeline stages (model chunks per stage). */
  v?: number;
  /** ZeRO stage; default 0. */
  zero?: 0 | 1 | 2 | 3;
  precision?: "fp32" | "bf16";
  /** The model's vocabulary (rows); default CFG.vocab. */
  vocab?: number;
  /** Tokens the data uses, passed to save as the real vocabulary; default the model's. */
  realVocab?: number;
  /** Steps [from, to) of the recipe. */
  steps: [number, number];
  /** Load this run or checkpoint directory first. */
  resume?: string;
  /** Save into this run directory at the end. */
  save?: string;
}

/** What rank 0 of a job reports (the other ranks: losses and norms only). */
export interface JobResult {
  losses: number[];
  norms: number[];
  /** Every serial tensor with the optimizer state right after loading. */
  loaded: Map<string, Float32Array> | null;
  /** Every serial tensor with the optimizer state right after saving. */
  saved: Map<string, Float32Array> | null;
  /** The checkpoint directory saved. */
  checkpoint: string | null;
  /** The serial parameters at the end. */
  final: Map<string, Float32Array> | null;
}

/** The engine configuration of the recipe for a job on `world` ranks. */
export function recipe(world: number, j: Job): EngineConfig {
  const tp = j.tp ?? 1, pp = j.pp ?? 1;
  const dp = world / (tp * pp);
  const stage = j.zero ?? 0;
  return {
    model: { ...CFG, vocab: j.vocab ?? CFG.vocab },
    seed: SEED,
    train_batch_size: MICRO * MICROS,
    train_micro_batch_size_per_gpu: MICRO,
    gradient_accumulation_steps: MICROS / dp,
    gradient_clipping: MAX_NORM,
    optimizer: { type: "AdamW", params: { lr: LR, weight_decay: WEIGHT_DECAY } },
    scheduler: { type: "WarmupLR", params: { warmup_num_steps: 0, warmup_max_lr: LR } },
    tensor_model_parallel_size: tp,
    pipeline_model_parallel_size: pp,
    virtual_pipeline_model_parallel_size: j.v ?? 1,
    data_parallel_size: dp,
    // Small buckets: the blocks' weights get buckets of their own, split over the dp ranks.
    zero_optimization: {
      stage,
      reduce_bucket_size: 1000,
      ...(stage === 3 ? { stage3_param_persistence_threshold: 100 } : {}),
    },
    ...(j.precision === "bf16" ? { bf16: { enabled: true } } : {}),
  };
}

/**
 * Global micro-batch `j` of step `step`: a deterministic token stream over `vocab` tokens.
 *
 * @returns inputs and targets of MICRO sequences of T tokens
 */
export function microBatch(step: number, j: number, vocab: number) {
  const n = MICRO * T;
  const inputs = new Int32Array(n), targets = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    inputs[i] = (step * 7 + j * 5 + i * 3 + ((i * i) >> 3)) % vocab;
    targets[i] = (inputs[i]! * 5 + 2 + (i % 2)) % vocab;
  }
  return { inputs, targets, B: MICRO, T };
}

/** Build a job's engine over `world` (none: one rank in this thread). */
export function engineFor(j: Job, world?: Communicator): Promise<Engine> {
  return initialize(recipe(world?.size ?? 1, j), {
    world,
    backend: createReferenceBackend(),
    timeoutMs: 30_000,
  });
}

/** Run a job on its engine. */
export async function runJob(engine: Engine, j: Job): Promise<JobResult> {
  let loaded: Map<string, Float32Array> | null = null;
  if (j.resume) {
    await engine.load(j.resume);
    loaded = await engine.gatherTensors(true);
  }
  const vocab = j.realVocab ?? engine.config.model.vocab;
  const losses: number[] = [], norms: number[] = [];
  for (let step = j.steps[0]; step < j.steps[1]; step++) {
    const r = await engine.trainBatch(replicaShare(
      Array.from({ length: MICROS }, (_, k) => microBatch(step, k, vocab)),
      engine.groups.coords.dp,
      engine.layout.dp,
    ));
    losses.push(r.loss);
    norms.push(r.gradNorm);
  }
  let saved: Map<string, Float32Array> | null = null;
  let checkpoint: string | null = null;
  if (j.save) {
    checkpoint = await engine.save(j.save, { job: j.steps }, {}, { vocab });
    saved = await engine.gatherTensors(true);
  }
  const final = await engine.gatherTensors();
  return { losses, norms, loaded, saved, checkpoint, final };
}

export async function main(comm: Communicator, jobs: Job[]): Promise<JobResult[]> {
  const out: JobResult[] = [];
  for (const j of jobs) out.push(await runJob(await engineFor(j, comm), j));
  return out;
}
