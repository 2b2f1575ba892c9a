/**
 * The engine: ONE {@linkcode Engine} per rank for every layout, as DeepSpeed's `initialize`
 * makes one per process. `initialize(config, { world, backend })` validates the whole
 * configuration, lays out the grid (a world of one rank is the serial run), builds this rank's
 * share of the GPT (its tensor-parallel pieces of the pipeline chunks it holds, nothing more),
 * its optimizer, the pipeline schedule and (for fp16) the loss scaler, and returns the engine:
 * `trainBatch`, `evalBatch`, `logits`, `generate`, `save`, `load`.
 *
 * Every rank of the world calls every method with the same arguments. Evaluation, logits and
 * generation run through the parallel model; saving streams each rank's own pieces into its
 * shard of an atomic checkpoint directory, and loading reads them back at any layout.
 *
 * @module
 */
import {
  type Communicator,
  gatherJson,
  recvJson,
  sendJson,
  sharedArray,
  soloCommunicator,
} from "../collectives/mod.ts";
import type { Batch } from "../data/mod.ts";
import {
  type Backend,
  createCpuBackend,
  dropoutHash,
  Rng,
  type Tensor,
  type TensorDType,
} from "../kernels/mod.ts";
import { decode, type GenerateOptions, Gpt, gptParamSpecs, stageParts } from "../models/mod.ts";
import {
  adamwRule,
  clipFactor,
  DynamicLossScaler,
  learningRate,
  type ParamSlot,
  sgdRule,
  type TensorSplit,
  Zero,
  type ZeroPiece,
} from "../optim/mod.ts";
import {
  buildForwardSchedule,
  buildGrid,
  chooseSchedule,
  countedSumSquares,
  createGroups,
  type GradGroups,
  type Grid,
  type GridGroups,
  microBatchCount,
  type PipelineSchedule,
  type PipelineStats,
  runPipeline,
  type ScheduleName,
  syncModelParallelGrads,
  type TensorParallel,
  unshardTensor,
} from "../parallel/mod.ts";
import { type EngineConfig, type ResolvedEngineConfig, resolveEngineConfig } from "./config.ts";
import type { PipelineSnapshot, StageTrace } from "./report.ts";
import {
  checkCheckpointModel,
  CHECKPOINT_FORMAT,
  type CheckpointFileEntry,
  type CheckpointIndex,
  type CheckpointMeta,
  type CheckpointPiece,
  CheckpointReader,
  type CheckpointTensorEntry,
  checkShardFile,
  commitCheckpoint,
  createShardWriter,
  pendingCheckpoint,
  prepareCheckpoint,
  selectCheckpoint,
  shardFileName,
  shardProblem,
} from "./checkpoint.ts";

/** What one optimizer step reports (the same on every rank). */
export interface TrainStepResult {
  /** 1-based number of the step just taken. */
  step: number;
  /** Mean loss over the global batch. */
  loss: number;
  /** Learning rate used. */
  lr: number;
  /** Global gradient norm before clipping (of the unscaled gradients). */
  gradNorm: number;
  /** Whether the update was skipped (fp16 overflow). */
  skipped: boolean;
  /** Tokens in the step (the whole global batch). */
  tokens: number;
  /** The loss scale the step used (1 without fp16). */
  lossScale: number;
  /**
   * Most micro-batches whose activations this rank held at once, summed over its chunks
   * (1F1B: at most pp - stage; GPipe: all of them).
   */
  peakMicroBatches: number;
  /** Where this rank's step went, in milliseconds (with `wall_clock_breakdown`). */
  timings?: StepTimings;
}

/** Mean milliseconds per training step of one rank, by phase (see `Engine.phasesPerRank`). */
export interface RankPhases {
  /** Global rank. */
  rank: number;
  /** Steps averaged over. */
  steps: number;
  /** Forward passes (with the tensor-parallel all-reduces inside them). */
  forward_ms: number;
  /** Backward passes (with the reductions they overlap). */
  backward_ms: number;
  /** Waiting for pipeline peers: the bubble and the transfers. */
  pipeline_idle_ms: number;
  /** Gradient reductions after backward, model-parallel sums and the norm. */
  reduce_ms: number;
  /** The optimizer step (with ZeRO's all-gathers). */
  step_ms: number;
}

/** Where a step went on this rank, in milliseconds (DeepSpeed's `wall_clock_breakdown`). */
export interface StepTimings {
  /** Forward passes of every micro-batch. */
  forwardMs: number;
  /** Backward passes (with the gradient reductions they overlapped). */
  backwardMs: number;
  /** Waiting for pipeline peers (the bubble and transfers). */
  pipelineIdleMs: number;
  /** Gradient reductions left after backward, model-parallel sums and the global norm. */
  reduceMs: number;
  /** The optimizer step (with the parameters' all-gathers). */
  stepMs: number;
}

/** What one rank holds, in bytes, measured from its allocations. */
export interface RankMemory {
  /** Parameters used in compute (what the rank holds between steps). */
  params_bytes: number;
  /** Gradients (between steps). */
  grads_bytes: number;
  /** Optimizer state: fp32 master weights when separate, and the moments (between steps). */
  optimizer_bytes: number;
  /**
   * Every activation buffer its layers allocated in training steps (kept per micro-batch in
   * flight, the shared recompute and backward scratch).
   */
  activations_peak_bytes: number;
  /**
   * Peak of what lives only inside a step: buckets in flight, gathered layers of ZeRO-3,
   * fp32 copies of gradient slices, the kernels' 16-bit widening scratch, pipeline buffers,
   * and the buffers of evaluation passes.
   */
  transient_peak_bytes: number;
  /** The sum. */
  total_bytes: number;
}

function breakdown(
  pipe: PipelineStats,
  pipeMs: number,
  reduceMs: number,
  stepMs: number,
): StepTimings {
  return {
    forwardMs: pipe.forwardMs,
    backwardMs: pipe.computeMs - pipe.forwardMs,
    pipelineIdleMs: pipeMs - pipe.computeMs,
    reduceMs,
    stepMs,
  };
}

function wireBytes(wire: "float32" | "float16" | "bfloat16"): number {
  return wire === "float32" ? 4 : 2;
}

/** A checked parallel layout (what {@linkcode checkParallelLayout} returns). */
export interface ParallelLayout {
  /** Ranks in the world: tp * pp * dp. */
  worldSize: number;
  /** Tensor-parallel size. */
  tp: number;
  /** Pipeline stages. */
  pp: number;
  /** Data-parallel replicas. */
  dp: number;
  /** Model chunks per stage. */
  virtualStages: number;
  /** Whether sequence parallelism is on. */
  sequenceParallel: boolean;
  /** The pipeline schedule. */
  schedule: ScheduleName;
  /** Micro-batches each pipeline runs per optimizer step. */
  microBatches: number;
  /** Sequences per micro-batch. */
  microBatchSize: number;
}

/**
 * Check a configuration's parallel layout before any rank starts: the grid (world size a
 * multiple of tp * pp), the model split (heads over tp, layers over pp x virtual stages,
 * vocabulary over tp), the batch arithmetic (global batch = micro-batch x micro-batches x dp),
 * sequence parallelism (sequence length a multiple of tp) and the pipeline schedule.
 *
 * @example
 * ```ts
 * import { checkParallelLayout } from "./engine.ts";
 * const l = checkParallelLayout({
 *   model: { vocab: 12, ctx: 11, dim: 32, layers: 2, heads: 4 },
 *   train_batch_size: 64,
 *   gradient_accumulation_steps: 4,
 *   tensor_model_parallel_size: 2,
 *   pipeline_model_parallel_size: 2,
 * });
 * console.assert(l.worldSize === 4 && l.schedule === "1f1b" && l.microBatchSize === 16);
 * ```
 *
 * @param config the configuration (Megatron's parallel keys set)
 * @param opts a pipeline schedule to use instead of the default, and the tokens per sequence
 *   of the data (default: the model's context)
 * @returns the layout
 * @throws {RangeError} with what to change for a layout that cannot work
 */
export function checkParallelLayout(
  config: EngineConfig | ResolvedEngineConfig,
  opts: { schedule?: ScheduleName; seqLen?: number } = {},
): ParallelLayout {
  const c = "batchSize" in config ? config : resolveEngineConfig(config);
  const grid = buildGrid({ worldSize: c.tp * c.pp * c.dp, tp: c.tp, pp: c.pp });
  const m = microBatchCount({ globalBatch: c.batchSize, microBatch: c.microBatch, dp: c.dp });
  const schedule = chooseSchedule({ pp: c.pp, m, v: c.virtualStages, requested: opts.schedule });
  const T = opts.seqLen ?? c.model.ctx;
  if (c.sequenceParallel && T % c.tp !== 0) {
    throw new RangeError(
      `Sequence parallelism splits each sequence of ${T} tokens across tp=${c.tp}: the ` +
        `sequence length must be a multiple of tp (or drop sequence parallelism)`,
    );
  }
  return {
    worldSize: grid.worldSize,
    tp: c.tp,
    pp: c.pp,
    dp: c.dp,
    virtualStages: c.virtualStages,
    sequenceParallel: c.sequenceParallel,
    schedule: schedule.name as ScheduleName,
    microBatches: m,
    microBatchSize: c.microBatch,
  };
}

/** Options of {@linkcode initialize}. */
export interface InitializeOptions {
  /** The communicator of every rank (its size must be tp * pp * dp); default a world of one. */
  world?: Communicator;
  /** This rank's backend; default the CPU backend. */
  backend?: Backend;
  /** A pipeline schedule to use instead of the default (1F1B; interleaved when v > 1). */
  schedule?: ScheduleName;
  /** Tokens per sequence of the training data, checked against the layout; default the context. */
  seqLen?: number;
  /** Timeout of every collective in milliseconds; default 60 000. */
  timeoutMs?: number;
}

/** Checkpoints kept by default: the one just saved and the one before it. */
export const DEFAULT_KEEP = 2;

/** Where a save has got to (see {@linkcode SaveOptions.onProgress}). */
export interface SaveProgress {
  /**
   * `"shard"`: this rank has written one more tensor of its shard; `"commit"`: every shard is
   * fsynced and rank 0 is about to write the index and make the checkpoint visible (rank 0
   * only).
   */
  phase: "shard" | "commit";
  /** Tensors of this rank's shard written so far. */
  written: number;
  /** Tensors in this rank's shard. */
  total: number;
}

/** Options of {@linkcode Engine.save}. */
export interface SaveOptions {
  /**
   * Checkpoints to keep in the run directory, this one included (default
   * {@linkcode DEFAULT_KEEP}; 0 keeps every one). Older ones are deleted once this one and
   * `latest` are in place.
   */
  keep?: number;
  /**
   * The real vocabulary, when the model's is padded (e.g. to a multiple of tp): the rows from
   * here on of `wte` (and an untied head) are recorded as padding, so that the checkpoint
   * loads at another padding. Default: the model's vocabulary (no padding).
   */
  vocab?: number;
  /** Called as the save proceeds (e.g. to report progress); awaited. */
  onProgress?: (p: SaveProgress) => void | Promise<void>;
}

/** Options of {@linkcode Engine.load}. */
export interface LoadOptions {
  /**
   * Given a run directory whose latest checkpoint is damaged, load the newest intact earlier
   * one instead, with a warning (default true). A checkpoint directory named directly is
   * never replaced by another.
   */
  fallback?: boolean;
}

// The GPT's tensors whose axis 0 is the vocabulary.
const VOCAB_TENSORS = new Set(["wte", "lm_head.weight"]);

// What a rank tells rank 0 about its shard once it is on disk.
interface ShardReport {
  file: { name: string; entry: CheckpointFileEntry } | null;
  tensors: [string, Omit<CheckpointTensorEntry, "pieces">][];
  pieces: [string, CheckpointPiece][];
}

const SAVE_TAG = 0x3000_0000;

const DTYPES: Record<"fp32" | "fp16" | "bf16", TensorDType> = {
  fp32: "f32",
  fp16: "f16",
  bf16: "bf16",
};

function prefixOf(kind: string): string {
  return kind === "params" ? "" : `optimizer.${kind}.`;
}

/** One rank's engine. Every rank of the world calls every method with the same arguments. */
export class Engine {
  /** The resolved configuration. */
  readonly config: ResolvedEngineConfig;
  /** The configuration as given (saved with checkpoints). */
  readonly rawConfig: EngineConfig;
  /** The checked layout. */
  readonly layout: ParallelLayout;
  /** The rank grid. */
  readonly grid: Grid;
  /** This rank's groups. */
  readonly groups: GridGroups;
  /** The world. */
  readonly world: Communicator;
  /** This rank's backend. */
  readonly backend: Backend;
  /** This rank's share of the model. */
  readonly model: Gpt;
  /**
   * This rank's ZeRO over the data-parallel group (stage 0 is plain data parallelism): where
   * its parameters, gradients and optimizer state live, and the optimizer's step.
   */
  readonly zero: Zero;
  /** The loss scaler (fp16 only). */
  readonly lossScaler: DynamicLossScaler | null;
  /** The engine's random stream (seeded from the config; saved in checkpoints). */
  readonly rng: Rng;
  /** The training schedule of the pipeline. */
  readonly schedule: PipelineSchedule;
  /** Steps taken (including skipped ones); the next step's schedule index. */
  step = 0;
  readonly #timeoutMs: number;
  readonly #tp: TensorParallel;
  readonly #gg: GradGroups;
  readonly #stats: Tensor;
  #manifest: Map<string, { full: readonly number[]; split?: TensorSplit; ranks: number[] }> | null =
    null;
  #pipePeak = 0;
  #lastPipe: { step: number; stats: PipelineStats } | null = null;
  readonly #phases = {
    steps: 0,
    forwardMs: 0,
    backwardMs: 0,
    pipelineIdleMs: 0,
    reduceMs: 0,
    stepMs: 0,
  };
  #trainActivations = 0;
  /** The checkpoint directory this engine last saved or loaded (null before). */
  checkpointPath: string | null = null;

  private constructor(
    config: EngineConfig,
    c: ResolvedEngineConfig,
    layout: ParallelLayout,
    groups: GridGroups,
    world: Communicator,
    backend: Backend,
    schedule: PipelineSchedule,
    opts: InitializeOptions,
  ) {
    this.rawConfig = structuredClone(config);
    this.config = c;
    this.layout = layout;
    this.grid = groups.grid;
    this.groups = groups;
    this.world = world;
    this.backend = backend;
    this.schedule = schedule;
    this.#timeoutMs = opts.timeoutMs ?? 60_000;
    const be = backend;
    this.#tp = {
      comm: groups.tp.size > 1 ? groups.tp : null,
      sequenceParallel: c.sequenceParallel,
      timeoutMs: this.#timeoutMs,
    };
    const o = c.optimizer;
    const rule = o.kind === "sgd"
      ? sgdRule({ momentum: o.momentum, weightDecay: o.weightDecay })
      : adamwRule({ beta1: o.beta1, beta2: o.beta2, eps: o.eps, weightDecay: o.weightDecay });
    // On the CPU, the buffers that collectives touch live in the world's shared arena, where
    // the all-reduces and reduce-scatters fold in SIMD straight between the ranks' buffers.
    const fromHost = (be as {
      fromHost?: (a: Float32Array | Uint16Array, dtype?: "f16" | "bf16") => Tensor;
    }).fromHost;
    const buffers = fromHost !== undefined && c.dp * c.tp > 1
      ? {
        alloc: (n: number, dtype: TensorDType) =>
          dtype === "f32"
            ? fromHost.call(be, sharedArray(Float32Array, n))
            : fromHost.call(be, sharedArray(Uint16Array, n), dtype as "f16" | "bf16"),
      }
      : undefined;
    const z = c.zero;
    const dtype = DTYPES[c.precision];
    let zero: Zero | null = null;
    this.model = new Gpt(be, c.model, {
      seed: c.seed,
      tp: this.#tp,
      parts: stageParts(c.model.layers, c.pp, c.virtualStages, groups.coords.pp),
      pipelined: c.pp > 1,
      dtype,
      checkpointEvery: c.checkpointActivations,
      store: (perLayer) =>
        zero = new Zero(be, perLayer, {
          stage: z.stage,
          dp: groups.dp,
          rule,
          bucketSize: z.reduceBucketSize,
          dtype,
          persistenceThreshold: z.paramPersistenceThreshold,
          prefetchSize: z.prefetchBucketSize,
          maxLiveParameters: z.maxLiveParameters,
          overlap: z.overlapComm,
          buffers,
          timeoutMs: this.#timeoutMs,
        }),
      gate: {
        acquire: (l, phase, next) => zero!.acquire(l, phase, next),
        release: (l, phase) => zero!.release(l, phase),
      },
    });
    this.zero = zero!;
    this.lossScaler = c.lossScaler
      ? new DynamicLossScaler({
        dynamic: c.lossScaler.dynamic,
        initialScale: c.lossScaler.initialScale,
        growthInterval: c.lossScaler.window,
        hysteresis: c.lossScaler.hysteresis,
        consecutiveHysteresis: c.lossScaler.consecutiveHysteresis,
        minScale: c.lossScaler.minScale,
      })
      : null;
    this.rng = new Rng(c.seed);
    this.#gg = {
      tp: this.#tp,
      embedding: groups.embedding !== null && groups.embedding.size > 1 ? groups.embedding : null,
      timeoutMs: this.#timeoutMs,
    };
    // Per step: the loss of each micro-batch, then the gradients' sum of squares.
    this.#stats = be.alloc(layout.microBatches + 1);
  }

  /**
   * Validate `config`, lay out the grid, and build this rank's engine. Collective over
   * `opts.world`.
   *
   * @param config the configuration
   * @param opts the world, the backend, the schedule
   * @returns the engine
   */
  static async create(config: EngineConfig, opts: InitializeOptions = {}): Promise<Engine> {
    const c = resolveEngineConfig(config);
    const layout = checkParallelLayout(c, { schedule: opts.schedule, seqLen: opts.seqLen });
    const world = opts.world ?? soloCommunicator();
    if (world.size !== layout.worldSize) {
      throw new RangeError(
        `The layout tp=${layout.tp} x pp=${layout.pp} x dp=${layout.dp} needs ` +
          `${layout.worldSize} ranks, the world has ${world.size}`,
      );
    }
    const schedule = chooseSchedule({
      pp: c.pp,
      m: layout.microBatches,
      v: c.virtualStages,
      requested: layout.schedule,
    });
    const grid = buildGrid({ worldSize: world.size, tp: c.tp, pp: c.pp });
    const groups = await createGroups(world, grid);
    const backend = opts.backend ?? createCpuBackend();
    return new Engine(config, c, layout, groups, world, backend, schedule, opts);
  }

  /** Whether this rank leads (world rank 0: it logs, evaluates and writes). */
  get isLeader(): boolean {
    return this.world.rank === 0;
  }

  /**
   * The learning rate of the next step.
   *
   * @returns the rate from the schedule
   */
  currentLr(): number {
    // As DeepSpeed, the schedule advances with the steps taken, not with skipped ones.
    return learningRate(this.zero.steps, this.config.schedule);
  }

  #opts(): { timeoutMs: number } {
    return { timeoutMs: this.#timeoutMs };
  }

  /** Whether this rank holds the last pipeline stage and leads its tensor group. */
  get #reportsLoss(): boolean {
    return this.groups.coords.pp === this.grid.pp - 1 && this.groups.coords.tp === 0;
  }

  #actSize(B: number, T: number): number {
    return (B * T * this.config.model.dim) / (this.config.sequenceParallel ? this.config.tp : 1);
  }

  /**
   * One optimizer step over the global batch. Each rank passes its data-parallel replica's share
   * of it (`batchSize / dp` sequences, as any number of batches: what `replicaRows` lets a
   * sampler build, or `replicaShare` cuts out of the whole batch), the same on every rank of the
   * replica; at dp 1 that is the whole batch. Its rows are split into the layout's micro-batches,
   * `microBatchSize` rows each: replica `d` trains on the global batch's micro-batches
   * `[d * m, (d + 1) * m)`. Collective.
   *
   * @param batches this replica's share of the global batch
   * @returns the step's figures (the same on every rank)
   */
  async trainBatch(batches: readonly Batch[]): Promise<TrainStepResult> {
    const T = batches[0]?.T ?? 0;
    const c = this.config;
    let rows = 0;
    for (const b of batches) {
      if (b.T !== T) {
        throw new RangeError(
          `trainBatch needs sequences of one length, got batches of ${T} and ${b.T} tokens`,
        );
      }
      rows += b.B;
    }
    if (c.sequenceParallel && T % c.tp !== 0) {
      throw new RangeError(
        `Sequence parallelism splits each sequence of ${T} tokens across tp=${c.tp}: the ` +
          `sequence length must be a multiple of tp`,
      );
    }
    const share = c.batchSize / this.layout.dp;
    if (rows !== share) {
      throw new RangeError(
        `trainBatch needs this data-parallel replica's share of the global batch: ` +
          `${c.batchSize} / dp ${this.layout.dp} = ${share} sequences, got ${rows} ` +
          `(replicaShare cuts it out of the whole batch)`,
      );
    }
    const inputs = new Int32Array(rows * T), targets = new Int32Array(rows * T);
    let at = 0;
    for (const b of batches) {
      inputs.set(b.inputs.subarray(0, b.B * T), at);
      targets.set(b.targets.subarray(0, b.B * T), at);
      at += b.B * T;
    }
    const be = this.backend;
    const { microBatches: m, microBatchSize: B, dp } = this.layout;
    const d = this.groups.coords.dp;
    const n = B * T;
    const lossScale = this.lossScaler?.scale ?? 1;
    const zero = this.zero;
    zero.beginStep(m);
    const stats = this.#stats;
    // Every rank draws the same masks: the key is a function of (seed, step) only.
    const dropout = c.dropout > 0
      ? { p: c.dropout, key: dropoutHash(c.seed >>> 0, this.step) }
      : undefined;
    const chunks = this.model.parts.map((_, ci) =>
      this.model.chunk(ci, {
        B,
        T,
        batch: (mb) => ({
          inputs: inputs.subarray(mb * n, (mb + 1) * n),
          targets: targets.subarray(mb * n, (mb + 1) * n),
        }),
        gradScale: lossScale / (m * dp),
        seqOffset: d * m * B,
        dropout,
        onLoss: (mb, loss) => be.copy(be.view(stats, mb, 1), loss),
      })
    );
    const t0 = performance.now();
    const pipe = await runPipeline({
      schedule: this.schedule,
      // Only a pipeline has a schedule to show (pipelineTrace); the timings need no trace.
      trace: this.grid.pp > 1,
      comm: this.groups.pp,
      chunks,
      activationSize: this.#actSize(B, T),
      wire: this.model.wire,
      timeoutMs: this.#timeoutMs,
    });
    // Data parallelism first (the buckets' reductions), then the model-parallel sums on the
    // pieces each rank holds, then the norm over the pieces each rank owns.
    this.#pipePeak = Math.max(
      this.#pipePeak,
      pipe.peakBuffers * this.#actSize(B, T) * wireBytes(this.model.wire),
    );
    const t1 = performance.now();
    this.#lastPipe = { step: this.step + 1, stats: pipe };
    await zero.finishBackward();
    await syncModelParallelGrads(be, this.#gg, zero.gradPieces(true));
    const sq = be.view(stats, m, 1);
    countedSumSquares(be, this.#tp, zero.gradPieces(), sq);
    const host = await be.read(stats);
    // [loss, sum of squares] over the world: the loss from the ranks that hold it, each
    // gradient element once (every data-parallel rank owns its slice of each bucket).
    const sums = new Float32Array([0, host[m]!]);
    if (this.#reportsLoss) { for (let i = 0; i < m; i++) sums[0] += host[i]!; }
    await this.world.allReduce(sums, "sum", this.#opts());
    const loss = sums[0]! / (m * dp);
    const gradNorm = Math.sqrt(sums[1]!) / lossScale;
    const lr = this.currentLr();
    this.step++;
    const tokens = rows * T * this.layout.dp;
    const peakMicroBatches = chunks.reduce((a, ch) => a + ch.peakSlots, 0);
    const base = { step: this.step, loss, lr, gradNorm, tokens, lossScale, peakMicroBatches };
    if (this.lossScaler && !this.lossScaler.update(Number.isFinite(gradNorm))) {
      const t = this.#addPhases(breakdown(pipe, t1 - t0, performance.now() - t1, 0));
      return { ...base, skipped: true, ...(c.wallClockBreakdown ? { timings: t } : {}) };
    }
    const factor = (1 / lossScale) * (c.clip > 0 ? clipFactor(gradNorm, c.clip) : 1);
    this.#trainActivations = Math.max(this.#trainActivations, this.model.pool.bytes);
    const t2 = performance.now();
    await zero.step(lr, factor);
    const t3 = performance.now();
    const t = this.#addPhases(breakdown(pipe, t1 - t0, t2 - t1, t3 - t2));
    return { ...base, skipped: false, ...(c.wallClockBreakdown ? { timings: t } : {}) };
  }

  async #forwardOnly(
    inputs: Int32Array,
    targets: Int32Array | null,
    B: number,
    T: number,
    past?: number,
  ): Promise<Tensor | null> {
    let out: Tensor | null = null;
    const chunks = this.model.parts.map((_, ci) =>
      this.model.chunk(ci, {
        B,
        T,
        past,
        eval: true,
        batch: () => ({ inputs, targets }),
        onLoss: (_, t) => out = t,
        onLogits: (_, t) => out = t,
      })
    );
    await runPipeline({
      schedule: buildForwardSchedule({ pp: this.grid.pp, m: 1, v: this.config.virtualStages }),
      comm: this.groups.pp,
      chunks,
      activationSize: this.#actSize(B, T),
      wire: this.model.wire,
      timeoutMs: this.#timeoutMs,
    });
    return out;
  }

  /**
   * The mean loss of the model on a batch, without touching gradients; the data-parallel
   * replicas share the rows. Collective; every rank gets the same value.
   *
   * @param batch inputs and targets
   * @returns the loss
   */
  async evalBatch(batch: Batch): Promise<number> {
    // Each data-parallel replica scores its share of the rows; the loss is their mean over
    // every counted target.
    const { B, T } = batch;
    const [start, n] = this.#share(B);
    const v = new Float32Array(2);
    if (n > 0) {
      const targets = batch.targets.subarray(start * T, (start + n) * T);
      const loss = await this.#forwardOnly(
        batch.inputs.subarray(start * T, (start + n) * T),
        targets,
        n,
        T,
      );
      if (loss !== null && this.#reportsLoss) {
        let count = 0;
        for (const t of targets) if (t >= 0) count++;
        v[0] = (await this.backend.read(loss))[0]! * count;
        v[1] = count;
      }
    } else await this.#idleForward(T);
    await this.world.allReduce(v, "sum", this.#opts());
    return v[1]! > 0 ? v[0]! / v[1]! : 0;
  }

  // A replica with no rows of a small batch still runs a forward, on one row of padding whose
  // result nobody reads, where its peers need it: ZeRO 3 gathers every layer's parameters
  // over the data-parallel ranks.
  async #idleForward(T: number, past?: number): Promise<void> {
    if (this.config.zero.stage < 3 || this.grid.dp === 1) return;
    const shard = await this.#forwardOnly(new Int32Array(T), null, 1, T, past);
    if (shard !== null) await this.model.fullLogits(shard, T);
  }

  // This data-parallel replica's rows of an evaluation batch of B: [first row, rows].
  #share(B: number): [number, number] {
    const per = Math.ceil(B / this.grid.dp);
    const start = this.groups.coords.dp * per;
    return [start, Math.max(0, Math.min(per, B - start))];
  }

  /**
   * The model's logits for a batch, on the host of every rank; the data-parallel replicas share
   * the rows. Collective.
   *
   * @param inputs token ids [B, T]
   * @param B sequences
   * @param T tokens per sequence
   * @param past decoding: positions of every row already in the key/value cache, the inputs
   *   following them (0 starts new rows)
   * @returns logits [B, T, V]
   */
  async logits(inputs: Int32Array, B: number, T: number, past?: number): Promise<Float32Array> {
    if (past !== undefined && this.model.tp.sequenceParallel) {
      return await this.#logitsFromHistory(inputs, B, T, past);
    }
    // Each data-parallel replica computes its share of the rows; the last stage gathers them
    // over the replicas and hands the whole to the other stages.
    const V = this.config.model.vocab;
    const [start, n] = this.#share(B);
    const per = Math.ceil(B / this.grid.dp);
    const mine = new Float32Array(per * T * V);
    if (n > 0) {
      const shard = await this.#forwardOnly(
        inputs.subarray(start * T, (start + n) * T),
        null,
        n,
        T,
        past,
      );
      if (shard !== null) {
        const full = await this.model.fullLogits(shard, n * T);
        mine.set(await this.backend.read(full));
      }
    } else await this.#idleForward(T, past);
    let all = mine;
    if (this.grid.dp > 1) {
      all = new Float32Array(this.grid.dp * mine.length);
      await this.groups.dp.allGather(mine, all, this.#opts());
    }
    const out = all.length === B * T * V ? all : all.slice(0, B * T * V);
    if (this.grid.pp > 1) await this.groups.pp.broadcast(out, this.grid.pp - 1, this.#opts());
    return out;
  }

  // Sequence parallelism splits every sequence over the tensor group, which a cache of one
  // token at a time cannot: decoding then runs the whole prefix each pass (padded to a multiple
  // of tp; causal attention leaves the earlier positions alone), remembered here.
  #history: Int32Array | null = null;
  async #logitsFromHistory(
    inputs: Int32Array,
    B: number,
    T: number,
    past: number,
  ): Promise<Float32Array> {
    const { ctx, vocab: V } = this.config.model;
    const tp = this.grid.tp;
    if (past === 0 || this.#history === null || this.#history.length !== B * ctx) {
      this.#history = new Int32Array(B * ctx);
    }
    const h = this.#history;
    for (let b = 0; b < B; b++) h.set(inputs.subarray(b * T, (b + 1) * T), b * ctx + past);
    const n = past + T, L = Math.ceil(n / tp) * tp;
    if (L > ctx) {
      throw new RangeError(
        `Decoding ${n} positions with sequence parallelism needs ${L} (a multiple of tp ${tp}), ` +
          `more than the model's ctx ${ctx}`,
      );
    }
    const ids = new Int32Array(B * L);
    for (let b = 0; b < B; b++) ids.set(h.subarray(b * ctx, b * ctx + n), b * L);
    const all = await this.logits(ids, B, L);
    const out = new Float32Array(B * T * V);
    for (let b = 0; b < B; b++) {
      out.set(all.subarray((b * L + past) * V, (b * L + n) * V), b * T * V);
    }
    return out;
  }

  /**
   * Decoding through the parallel model, with a key/value cache on every stage, greedy or
   * sampled (see {@linkcode decode}). Collective.
   *
   * @param prompts token ids per row
   * @param maxNew the most tokens to add per row
   * @param opts a stop token, temperature, top-k and seed
   * @returns the generated tokens per row
   */
  generate(
    prompts: readonly (readonly number[])[],
    maxNew: number,
    opts: GenerateOptions = {},
  ): Promise<number[][]> {
    return decode(
      (ids, B, T, past) => this.logits(ids, B, T, past),
      this.config.model,
      prompts,
      maxNew,
      opts,
    );
  }

  /**
   * What this rank holds, in bytes, from its real allocations.
   *
   * @returns the figures
   */
  memory(): RankMemory {
    const z = this.zero.memory();
    // Activations: what training steps allocated; what evaluation added to the same pool lives
    // only inside an evaluation call, so it counts as transient.
    const pool = this.model.pool.bytes;
    const act = this.#trainActivations > 0 ? this.#trainActivations : pool;
    const transient = z.transientPeak + (this.backend.scratchBytes?.() ?? 0) + this.#pipePeak +
      (pool - act);
    return {
      params_bytes: z.params,
      grads_bytes: z.grads,
      optimizer_bytes: z.optimizer,
      activations_peak_bytes: act,
      transient_peak_bytes: transient,
      total_bytes: z.params + z.grads + z.optimizer + act + transient,
    };
  }

  #addPhases(t: StepTimings): StepTimings {
    const p = this.#phases;
    p.steps++;
    p.forwardMs += t.forwardMs;
    p.backwardMs += t.backwardMs;
    p.pipelineIdleMs += t.pipelineIdleMs;
    p.reduceMs += t.reduceMs;
    p.stepMs += t.stepMs;
    return t;
  }

  /**
   * Where every rank's training steps went, on world rank 0 (null elsewhere): the mean
   * milliseconds per step this engine ran of forward, backward, waiting for pipeline peers,
   * gradient reductions and the optimizer step. Collective over the world.
   *
   * @returns on rank 0, one entry per rank
   */
  async phasesPerRank(): Promise<(RankPhases)[] | null> {
    const p = this.#phases, n = Math.max(1, p.steps);
    const round = (v: number) => Math.round(v / n * 1000) / 1000;
    const mine: RankPhases = {
      rank: this.world.rank,
      steps: p.steps,
      forward_ms: round(p.forwardMs),
      backward_ms: round(p.backwardMs),
      pipeline_idle_ms: round(p.pipelineIdleMs),
      reduce_ms: round(p.reduceMs),
      step_ms: round(p.stepMs),
    };
    return await gatherJson(this.world, mine, 0, this.#opts()) as RankPhases[] | null;
  }

  /**
   * The pipeline's last training step as every stage ran it: each forward and backward with its
   * times (from the ranks of data-parallel and tensor-parallel index 0), on world rank 0; null
   * elsewhere, with one stage, or before a step. Collective over the world.
   *
   * @returns on rank 0, the stages' traces
   */
  async pipelineTrace(): Promise<PipelineSnapshot | null> {
    if (this.grid.pp === 1) return null;
    const last = this.#lastPipe;
    const { tp, dp, pp } = this.groups.coords;
    const mine: StageTrace | null = last !== null && tp === 0 && dp === 0
      ? {
        rank: this.world.rank,
        stage: pp,
        wall_ms: last.stats.wallMs,
        entries: (last.stats.trace ?? []).map((e) => [
          e.kind === "forward" ? "f" : "b",
          e.mb,
          e.chunk,
          Math.round(e.start * 1000) / 1000,
          Math.round(e.end * 1000) / 1000,
        ]),
      }
      : null;
    const all = await gatherJson(this.world, mine, 0, this.#opts()) as (StageTrace | null)[] | null;
    if (all === null || last === null) return null;
    const stages = all.filter((s): s is StageTrace => s !== null).sort((a, b) => a.stage - b.stage);
    return {
      schedule: this.schedule.name,
      pp: this.grid.pp,
      virtual_stages: this.layout.virtualStages,
      micro_batches: this.layout.microBatches,
      step: last.step,
      stages,
    };
  }

  /**
   * Every rank's {@linkcode Engine.memory}, in world rank order. Collective.
   *
   * @returns the figures of each rank
   */
  async memoryPerRank(): Promise<(RankMemory & { rank: number })[]> {
    const keys = [
      "params_bytes",
      "grads_bytes",
      "optimizer_bytes",
      "activations_peak_bytes",
      "transient_peak_bytes",
      "total_bytes",
    ] as const;
    const mine = this.memory();
    // Each count as two float32 halves (of 2^24), exact far beyond float32's 24-bit mantissa.
    const words = new Float32Array(2 * keys.length);
    keys.forEach((k, i) => {
      words[2 * i] = Math.floor(mine[k] / 2 ** 24);
      words[2 * i + 1] = mine[k] % 2 ** 24;
    });
    const all = new Float32Array(words.length * this.world.size);
    await this.world.allGather(words, all, this.#opts());
    return Array.from({ length: this.world.size }, (_, r) => {
      const m = { rank: r } as RankMemory & { rank: number };
      keys.forEach((k, i) => {
        const at = r * words.length + 2 * i;
        m[k] = all[at]! * 2 ** 24 + all[at + 1]!;
      });
      return m;
    });
  }

  /** The optimizer state buffers a checkpoint holds besides the parameters. */
  #stateKinds(): readonly string[] {
    return this.zero.rule.state;
  }

  #piece(kind: string, slot: ParamSlot): Promise<Float32Array> {
    return this.zero.read(kind, slot.name);
  }

  // Which ranks hold a piece of each saved tensor (data-parallel replica 0, no mirrors), with
  // the serial shape and split: every rank sends its list to rank 0 once.
  async #gatherManifest(): Promise<void> {
    if (this.#manifest !== null) return;
    const mine = this.model.layout.slots.filter((s) => !s.mirror).map((s) => ({
      name: s.name,
      full: s.full,
      split: s.split,
    }));
    const manifest = new Map<
      string,
      { full: readonly number[]; split?: TensorSplit; ranks: number[] }
    >();
    const add = (rank: number, list: typeof mine) => {
      for (const e of list) {
        const m = manifest.get(e.name) ?? { full: e.full, split: e.split, ranks: [] };
        m.ranks.push(rank);
        manifest.set(e.name, m);
      }
    };
    const w = this.world;
    const holders = Array.from({ length: w.size }, (_, r) => r)
      .filter((r) => this.grid.coordsOf(r).dp === 0);
    if (w.rank === 0) {
      for (const r of holders) {
        if (r === 0) add(0, mine);
        else {
          add(r, await recvJson(w, r, SAVE_TAG - 1, this.#opts()) as typeof mine);
        }
      }
    } else if (holders.includes(w.rank)) {
      await sendJson(w, mine, 0, SAVE_TAG - 1, this.#opts());
    }
    this.#manifest = manifest;
  }

  // Put every tensor of `kinds` (parameters, optimizer state buffers) together from the ranks'
  // pieces, one at a time, and hand each to `sink` on rank 0 before the next is gathered.
  async #gather(
    kinds: readonly string[],
    sink: (name: string, data: Float32Array) => Promise<void>,
  ): Promise<void> {
    await this.#gatherManifest();
    const serial = gptParamSpecs(this.config.model);
    const w = this.world;
    const mineByName = new Map(
      this.model.layout.slots.filter((s) => !s.mirror).map((s) => [s.name, s]),
    );
    const holder = this.groups.coords.dp === 0;
    let tag = SAVE_TAG;
    for (const kind of kinds) {
      for (const s of serial) {
        tag++;
        const slot = mineByName.get(s.name);
        const piece = slot ? await this.#piece(kind, slot) : null;
        // A split tensor comes from every tensor rank of its stage, a replicated one from the
        // first of them.
        const sends = slot !== undefined && holder &&
          (slot.split !== undefined || this.groups.coords.tp === 0);
        if (w.rank !== 0) {
          if (sends) await w.send(piece!, 0, tag, this.#opts());
          continue;
        }
        const m = this.#manifest!.get(s.name);
        if (!m) throw new Error(`No rank holds parameter "${s.name}"`);
        const from = m.split ? m.ranks : m.ranks.slice(0, 1);
        const size = m.full.reduce((a, b) => a * b, 1) / from.length;
        const pieces: Float32Array[] = [];
        for (const r of from) {
          if (r === 0) pieces.push(piece!);
          else {
            const buf = new Float32Array(size);
            await w.recv(buf, r, tag, this.#opts());
            pieces.push(buf);
          }
        }
        await sink(prefixOf(kind) + s.name, unshardTensor(pieces, m.full, m.split));
      }
    }
  }

  /**
   * The serial tensors of the model (and, with `state`, of the optimizer's buffers as
   * `optimizer.<buffer>.<name>`), put together on rank 0 from every rank's pieces. Collective;
   * `null` on the other ranks.
   *
   * @param state also gather the optimizer state
   * @returns name to serial values on rank 0
   */
  async gatherTensors(state = false): Promise<Map<string, Float32Array> | null> {
    const kinds = ["params", ...(state ? this.#stateKinds() : [])];
    const out = new Map<string, Float32Array>();
    await this.#gather(kinds, (name, data) => {
      out.set(name, data);
      return Promise.resolve();
    });
    return this.isLeader ? out : null;
  }

  // Every rank learns whether any rank failed (`err` is this rank's failure): a failing rank
  // rethrows its error, the others say how many ranks failed. Collective.
  async #agree(err: unknown, what: string): Promise<void> {
    const v = new Float32Array([err === null ? 0 : 1]);
    await this.world.allReduce(v, "sum", this.#opts());
    if (err !== null) throw err;
    if (v[0]! > 0) {
      throw new Error(`Saving the checkpoint failed on ${v[0]} other rank(s) (${what})`);
    }
  }

  // The pieces this rank writes: at ZeRO 0 data-parallel replica 0 writes its parameters and
  // state whole; at stages 1-3 every rank writes the slices it owns. A tensor that is not
  // split comes from the first tensor-parallel rank only, and a mirror (a tied copy held on
  // another stage) from nowhere: every element of every tensor is written exactly once.
  #shardPlan(): { kind: string; name: string; piece: ZeroPiece; shape: readonly number[] }[] {
    const z = this.zero;
    const c = this.groups.coords;
    if (z.stage === 0 && c.dp !== 0) return [];
    const pieces = z.statePieces().filter((q) =>
      !q.slot.mirror && ((q.slot.split?.parts ?? 1) > 1 || c.tp === 0)
    );
    return ["params", ...this.#stateKinds()].flatMap((kind) =>
      pieces.map((piece) => ({
        kind,
        name: prefixOf(kind) + piece.slot.name,
        piece,
        shape: piece.n === piece.slot.size ? piece.slot.shape : [piece.n],
      }))
    );
  }

  // Write this rank's shard into `dir` and say what is in it.
  async #writeShard(dir: string, opts: SaveOptions): Promise<ShardReport> {
    const plan = this.#shardPlan();
    const report: ShardReport = { file: null, tensors: [], pieces: [] };
    if (plan.length === 0) return report;
    const name = shardFileName(this.world.rank);
    try {
      await Deno.stat(dir);
    } catch {
      throw new Error(
        `${dir}, made by rank 0 for this save, is not visible on rank ${this.world.rank}: the ` +
          `run directory must be on a file system every rank sees`,
      );
    }
    const w = await createShardWriter(`${dir}/${name}`, plan.map((p) => ({ key: p.name, ...p })));
    let written = 0;
    // One buffer for every piece: nothing else is allocated while the shard streams out.
    const scratch = new Float32Array(plan.reduce((a, p) => Math.max(a, p.piece.n), 0));
    try {
      for (const p of plan) {
        await this.zero.readPieceInto(p.kind, p.piece, scratch);
        await w.write(p.name, scratch.subarray(0, p.piece.n));
        written++;
        await opts.onProgress?.({ phase: "shard", written, total: plan.length });
      }
    } catch (e) {
      w.abort();
      throw e;
    }
    const { bytes, sha256 } = await w.finish();
    const c = this.groups.coords;
    report.file = { name, entry: { rank: this.world.rank, coords: c, bytes, sha256 } };
    const z = this.zero;
    for (const p of plan) {
      const s = p.piece.slot;
      const split = (s.split?.parts ?? 1) > 1 ? s.split! : null;
      report.tensors.push([p.name, {
        shape: [...s.full],
        dtype: "F32",
        split: split && { axis: split.axis, parts: split.parts, blocks: split.blocks ?? 1 },
        local: [...s.shape],
        vocabRows: VOCAB_TENSORS.has(s.name),
      }]);
      report.pieces.push([p.name, {
        file: name,
        key: p.name,
        part: split?.index ?? 0,
        start: p.piece.global - s.offset,
        n: p.piece.n,
        dpRank: c.dp,
        bucket: z.layout.bucketOf(s.name).index,
      }]);
    }
    return report;
  }

  /**
   * Save a checkpoint of every rank's state into the run directory `dir`, as
   * `dir/checkpoints/step-<NNNNNNNN>/` (see `checkpoint.ts`): each rank streams the pieces it
   * owns (fp32 parameters, the master weights when kept, and each optimizer state buffer) into
   * its own shard file, in parallel, one tensor at a time, nothing gathered; rank 0 then
   * writes the index from the ranks' small reports, renames the finished directory into place
   * and points `dir/latest` at it, and deletes the checkpoints beyond `opts.keep`. A save
   * interrupted at any point leaves the previous checkpoint and `latest` as they were. It
   * loads at any layout. Collective.
   *
   * @param dir the run directory (created if needed; it must be on a file system every rank
   *   sees)
   * @param extra run state to keep with the checkpoint (e.g. the data position)
   * @param extraConfig more configuration to write into config.json
   * @param opts how many checkpoints to keep, the real vocabulary, a progress hook
   * @returns the checkpoint directory
   */
  async save(
    dir: string,
    extra: Record<string, unknown> = {},
    extraConfig: Record<string, unknown> = {},
    opts: SaveOptions = {},
  ): Promise<string> {
    const keep = opts.keep ?? DEFAULT_KEEP;
    if (!Number.isInteger(keep) || keep < 0) {
      throw new RangeError(`keep must be an integer >= 0 (0: every checkpoint), got ${keep}`);
    }
    const m = this.config.model;
    const vocab = opts.vocab ?? m.vocab;
    if (!Number.isInteger(vocab) || vocab < 1 || vocab > m.vocab) {
      throw new RangeError(
        `The real vocabulary must be an integer in [1, ${m.vocab}] (the model's), got ${vocab}`,
      );
    }
    const meta: CheckpointMeta = {
      step: this.step,
      optimizerSteps: this.zero.steps,
      rng: this.rng.getState(),
      lossScaler: this.lossScaler?.getState() ?? null,
      extra,
    };
    const pending = pendingCheckpoint(dir, this.step);
    let err: unknown = null;
    if (this.isLeader) {
      try {
        await prepareCheckpoint(pending);
      } catch (e) {
        err = e;
      }
    }
    await this.#agree(err, "making the checkpoint directory");
    let report: ShardReport | null = null;
    try {
      report = await this.#writeShard(pending.tmp, opts);
    } catch (e) {
      err = e;
    }
    await this.#agree(err, "writing the shards");
    const tag = SAVE_TAG - 3;
    if (!this.isLeader) {
      await gatherJson(this.world, report, 0, this.#opts(), tag);
    } else {
      try {
        const index: CheckpointIndex = {
          format: CHECKPOINT_FORMAT,
          step: this.step,
          meta,
          model: m,
          vocab,
          optimizer: this.zero.rule.kind,
          state: [...this.#stateKinds()],
          layout: {
            worldSize: this.world.size,
            tp: this.layout.tp,
            pp: this.layout.pp,
            dp: this.layout.dp,
            virtualStages: this.layout.virtualStages,
            zeroStage: this.zero.stage,
            precision: this.config.precision,
          },
          zero: {
            stage: this.zero.stage,
            dp: this.zero.dpSize,
            reduceBucketSize: this.config.zero.reduceBucketSize,
          },
          files: {},
          tensors: {},
        };
        const reports = await gatherJson(this.world, report, 0, this.#opts(), tag);
        for (const rep of reports as ShardReport[]) {
          if (rep.file) index.files[rep.file.name] = rep.file.entry;
          for (const [name, t] of rep.tensors) index.tensors[name] ??= { ...t, pieces: [] };
          for (const [name, q] of rep.pieces) index.tensors[name]!.pieces.push(q);
        }
        for (const [name, f] of Object.entries(index.files)) {
          const problem = await shardProblem(pending.tmp, name, f);
          if (problem !== null) {
            throw new Error(
              `The shard of rank ${f.rank} does not check out on rank 0 (${problem}): the run ` +
                `directory must be on a file system every rank sees`,
            );
          }
        }
        await opts.onProgress?.({ phase: "commit", written: 0, total: 0 });
        await commitCheckpoint(
          pending,
          index,
          { ...extraConfig, engine: this.rawConfig, layout: this.layout },
          keep,
        );
      } catch (e) {
        err = e;
      }
    }
    await this.#agree(err, "committing the checkpoint on rank 0");
    this.checkpointPath = pending.final;
    return pending.final;
  }

  // Check every shard of a checkpoint against its index, the files shared out over the ranks
  // (each read once, in chunks); every rank learns which files are damaged. Collective.
  async #verifyShards(dir: string, index: CheckpointIndex): Promise<string | null> {
    const names = Object.keys(index.files).sort();
    if (names.length === 0) return null;
    const w = this.world;
    const bad = new Float32Array(names.length);
    let err: unknown = null;
    for (let i = w.rank; i < names.length; i += w.size) {
      try {
        if (await checkShardFile(dir, names[i]!, index.files[names[i]!]!) !== null) bad[i] = 1;
      } catch (e) {
        err ??= e;
        bad[i] = 1;
      }
    }
    await w.allReduce(bad, "sum", this.#opts());
    const problems: string[] = [];
    for (let i = 0; i < names.length; i++) {
      if (bad[i] === 0) continue;
      const name = names[i]!;
      // What a look at the file shows (the same on every rank), else its checksum failed.
      problems.push(
        (await shardProblem(dir, name, index.files[name]!)) ??
          `${dir}/${name} fails its SHA-256 check: it is corrupt` +
            (err !== null && i % w.size === w.rank ? ` (${(err as Error).message})` : ""),
      );
    }
    return problems.length > 0 ? problems.join("; ") : null;
  }

  /**
   * Load a checkpoint saved by {@linkcode Engine.save} at any layout (another dp, tp, pp,
   * number of virtual stages, ZeRO stage or precision, a vocabulary padded otherwise). `dir`
   * is a run directory (the checkpoint `latest` names; if it is damaged, with a warning, the
   * newest intact earlier one unless `opts.fallback` is false) or a checkpoint directory.
   * Every shard's length and SHA-256 are verified first (the files shared out over the ranks):
   * nothing of a damaged checkpoint is loaded. Then every rank reads the pieces of the tensors
   * it holds, one tensor at a time. Collective.
   *
   * @param dir a run directory or a checkpoint directory
   * @param opts whether to fall back to an earlier checkpoint
   * @returns the `extra` state saved with it
   * @throws {TypeError} naming the damaged files when there is no intact checkpoint, or what
   *   differs when it is of another model shape or optimizer
   */
  async load(dir: string, opts: LoadOptions = {}): Promise<Record<string, unknown>> {
    const lead = this.isLeader;
    const { dir: chosen, index } = await selectCheckpoint(dir, {
      fallback: opts.fallback,
      check: (d, idx) => checkCheckpointModel(idx, this.config.model, this.zero.rule.kind, d),
      verify: (d, idx) => this.#verifyShards(d, idx),
      warn: (msg) => {
        if (lead) console.warn(`warning: ${msg}`);
      },
    });
    const r = await CheckpointReader.open(chosen, index);
    // One buffer for every tensor saved at this rank's split (the rest are put together anew).
    const slots = this.model.layout.slots;
    const scratch = new Float32Array(slots.reduce((a, s) => Math.max(a, s.size), 0));
    try {
      for (const s of slots) {
        this.zero.write(s.name, await r.local(s.name, s.full, s.split, scratch));
        for (const key of this.#stateKinds()) {
          const v = await r.local(`optimizer.${key}.${s.name}`, s.full, s.split, scratch);
          this.zero.writeState(key, s.name, v);
        }
      }
    } finally {
      r.close();
    }
    const meta = index.meta;
    this.step = meta.step;
    this.zero.steps = meta.optimizerSteps;
    this.rng.setState(meta.rng);
    if (this.lossScaler && meta.lossScaler) this.lossScaler.setState(meta.lossScaler);
    this.checkpointPath = chosen;
    await this.world.barrier(this.#opts());
    return meta.extra;
  }
}

/**
 * Validate `config` and build this rank's engine (DeepSpeed's `initialize`). Without a world
 * it is a one-rank run. Collective over `opts.world`.
 *
 * @example
 * ```ts
 * import { initialize } from "./engine.ts";
 * import { createReferenceBackend } from "../kernels/mod.ts";
 * const engine = await initialize({
 *   model: { vocab: 8, ctx: 4, dim: 8, layers: 1, heads: 2 },
 *   train_micro_batch_size_per_gpu: 2,
 * }, { backend: createReferenceBackend() });
 * const batch = {
 *   inputs: new Int32Array([1, 2, 3, 4, 4, 3, 2, 1]),
 *   targets: new Int32Array([2, 3, 4, 5, 3, 2, 1, 0]),
 *   B: 2,
 *   T: 4,
 * };
 * const r = await engine.trainBatch([batch]);
 * console.assert(r.step === 1 && r.loss > 0);
 * ```
 *
 * @param config the configuration
 * @param opts the world, the backend, the schedule
 * @returns the engine
 */
export function initialize(config: EngineConfig, opts: InitializeOptions = {}): Promise<Engine> {
  return Engine.create(config, opts);
}
