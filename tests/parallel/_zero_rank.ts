// Rank side of the ZeRO equivalence tests, and the recipe both sides share: one World runs
// several cases in turn (each a fresh engine over the whole world), so that a group of checks
// pays for starting its Workers once. The one-rank reference runs `train()` in the test process.

import type { Communicator } from "../../collectives/mod.ts";
import { type Engine, type EngineConfig, initialize, type ZeroConfig } from "../../engine/mod.ts";
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

/** One case: a layout and the recipe's knobs; everything else is the shared recipe. */
export interface Case {
  tp?: number;
  pp?: number;
  sp?: boolean;
  schedule?: ScheduleName;
  /** DeepSpeed's `zero_optimization` block; default none (stage 0). */
  zero?: ZeroConfig;
  /** Dropout probability; default 0. */
  dropout?: number;
  /** `activation_checkpointing.every_n_blocks`; default off. */
  every?: number;
  /** Sequences per micro-batch; default MICRO (the global batch stays MICRO * MICROS). */
  micro?: number;
  /** Data without ignored targets (see `microBatch`). */
  clean?: boolean;
  /** The case must be refused by `initialize`: report the error and what ran before it. */
  refused?: boolean;
  /** Steps [from, to) of the recipe to run; default all STEPS. */
  steps?: [number, number];
  /** Continue from the checkpoint in this directory. */
  resume?: string;
  /** Save a checkpoint into this directory at the end. */
  save?: string;
}

/** What a rank of one case reports. */
export interface CaseResult {
  losses: number[];
  norms: number[];
  /** The serial parameters put together from every rank's pieces (world rank 0 only). */
  params: Map<string, Float32Array> | null;
  /** This rank's ZeRO layout, to show which code paths the case took. */
  buckets: {
    /** Gradient buckets. */
    count: number;
    /** Buckets holding a single parameter. */
    solo: number;
    /** Stage 3: buckets kept whole (every parameter below the persistence threshold). */
    persistent: number;
    /** The most elements a layer gathers at stage 3 (its buckets that are not persistent). */
    maxLayerGather: number;
  };
  /** Gradient reductions in the last step. */
  reductions: number;
  /** Blocks of this rank that recompute their activations in backward. */
  checkpointed: number;
  /** Whether the engine overlapped the gradient reductions with backward. */
  overlap: boolean;
  /** For a refused case: `name: message`, and the communicator calls made before it. */
  error?: string;
  calls?: string[];
}

/** The engine configuration of the shared recipe for a case on `world` ranks. */
export function recipe(world: number, c: Case): EngineConfig {
  const tp = c.tp ?? 1, pp = c.pp ?? 1;
  const dp = world / (tp * pp);
  const micro = c.micro ?? MICRO;
  const config: EngineConfig = {
    model: CFG,
    seed: SEED,
    train_batch_size: MICRO * MICROS,
    train_micro_batch_size_per_gpu: micro,
    gradient_accumulation_steps: (MICRO * MICROS) / (micro * dp),
    gradient_clipping: MAX_NORM,
    optimizer: { type: "AdamW", params: { lr: LR, weight_decay: WEIGHT_DECAY } },
    scheduler: { type: "WarmupLR", params: { warmup_num_steps: 0, warmup_max_lr: LR } },
    tensor_model_parallel_size: tp,
    pipeline_model_parallel_size: pp,
    sequence_parallel: c.sp ?? false,
    data_parallel_size: dp,
  };
  if (c.zero) config.zero_optimization = c.zero;
  if (c.dropout) config.dropout = c.dropout;
  if (c.every) config.activation_checkpointing = { every_n_blocks: c.every };
  return config;
}

/** Build the case's engine over `world` (none: one rank in this thread). */
export function engineFor(c: Case, world?: Communicator): Promise<Engine> {
  return initialize(recipe(world?.size ?? 1, c), {
    world,
    backend: createReferenceBackend(),
    ...(c.schedule ? { schedule: c.schedule } : {}),
    timeoutMs: 30_000,
  });
}

/** Train the recipe's steps: every rank passes the same global batch. */
export async function train(engine: Engine, c: Case): Promise<CaseResult> {
  if (c.resume) await engine.load(c.resume);
  const losses: number[] = [];
  const norms: number[] = [];
  const [from, to] = c.steps ?? [0, STEPS];
  for (let step = from; step < to; step++) {
    const batches = Array.from({ length: MICROS }, (_, j) => ({
      ...microBatch(step, j, { ignore: !c.clean }),
      B: MICRO,
      T,
    }));
    const r = await engine.trainBatch(
      replicaShare(batches, engine.groups.coords.dp, engine.layout.dp),
    );
    losses.push(r.loss);
    norms.push(r.gradNorm);
  }
  const z = engine.zero;
  const layers = engine.model.layers.length;
  let maxLayerGather = 0;
  for (let l = 0; l < layers; l++) {
    const n = z.layout.bucketsOfLayer(l).filter((b) => !b.persistent)
      .reduce((a, b) => a + b.length, 0);
    maxLayerGather = Math.max(maxLayerGather, n);
  }
  const reductions = z.commStats().reductions;
  if (c.save) await engine.save(c.save);
  const params = await engine.gatherTensors();
  return {
    losses,
    norms,
    params,
    buckets: {
      count: z.layout.buckets.length,
      solo: z.layout.buckets.filter((b) => b.slots.length === 1).length,
      persistent: z.layout.buckets.filter((b) => b.persistent).length,
      maxLayerGather,
    },
    reductions,
    checkpointed: engine.model.layers
      .filter((l) => (l as { checkpoint?: boolean }).checkpoint === true).length,
    overlap: engine.config.zero.overlapComm,
  };
}

// The world as the engine sees it, recording every call made on it (or on groups split off it).
function recording(comm: Communicator, calls: string[]): Communicator {
  return new Proxy(comm, {
    get(target, key, receiver) {
      const v = Reflect.get(target, key, receiver);
      if (typeof v !== "function") return v;
      return (...args: unknown[]) => {
        calls.push(String(key));
        return v.apply(target, args);
      };
    },
  });
}

export async function main(comm: Communicator, cases: Case[]): Promise<CaseResult[]> {
  const out: CaseResult[] = [];
  for (const c of cases) {
    if (c.refused) {
      const calls: string[] = [];
      let error = "no error";
      try {
        await engineFor(c, recording(comm, calls));
      } catch (e) {
        error = `${(e as Error).name}: ${(e as Error).message}`;
      }
      out.push({
        losses: [],
        norms: [],
        params: null,
        buckets: { count: 0, solo: 0, persistent: 0, maxLayerGather: 0 },
        reductions: 0,
        checkpointed: 0,
        overlap: false,
        error,
        calls,
      });
      // The ranks leave a refused case together before the next one starts.
      await comm.barrier();
      continue;
    }
    out.push(await train(await engineFor(c, comm), c));
  }
  return out;
}
