/**
 * The engine over many ranks: {@linkcode ParallelEngine} trains one rank's share of the GPT
 * with tensor, sequence, pipeline and data parallelism (`ParallelGptTrainer`), behind the same
 * surface as the one-rank {@linkcode Engine}: `trainBatch` takes the step's whole global batch
 * (every rank passes the same one), `save` writes the same serial checkpoint a one-rank run
 * writes (so a run continues on any layout), `load` reads one. Evaluation runs on world rank
 * 0 on a serial copy of the model that {@linkcode ParallelEngine.syncModel} fills in.
 *
 * {@linkcode checkParallelLayout} checks a configuration's layout (grid, model split, batch
 * arithmetic, schedule) without starting anything, so a launcher can refuse a layout before
 * it starts any rank.
 *
 * @module
 */
import type { Communicator } from "../collectives/communicator.ts";
import type { Batch } from "../data/mod.ts";
import type { Backend } from "../kernels/mod.ts";
import { initialValue } from "../models/mod.ts";
import type { Gpt } from "../models/mod.ts";
import { AdamW, learningRate, SGD } from "../optim/mod.ts";
import { buildGrid, microBatchCount } from "../parallel/grid.ts";
import { chooseSchedule, type ScheduleName } from "../parallel/schedules.ts";
import { ParallelGptTrainer } from "../parallel/trainer.ts";
import { type EngineConfig, type ResolvedEngineConfig, resolveEngineConfig } from "./config.ts";
import { Engine, type TrainStepResult } from "./engine.ts";

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
 * import { checkParallelLayout } from "./parallel.ts";
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
  config: EngineConfig,
  opts: { schedule?: ScheduleName; seqLen?: number } = {},
): ParallelLayout {
  const c = resolveEngineConfig(config);
  const grid = buildGrid({ worldSize: c.tp * c.pp * c.dp, tp: c.tp, pp: c.pp });
  const m = microBatchCount({ globalBatch: c.batchSize, microBatch: c.microBatch, dp: c.dp });
  const schedule = chooseSchedule({
    pp: c.pp,
    m,
    v: c.virtualStages,
    requested: opts.schedule,
  });
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
    schedule: schedule.name,
    microBatches: m,
    microBatchSize: c.microBatch,
  };
}

/** Options of {@linkcode ParallelEngine.create}. */
export interface ParallelEngineOptions {
  /** The communicator of every rank (its size must be tp * pp * dp). */
  world: Communicator;
  /** This rank's backend. */
  backend: Backend;
  /** A pipeline schedule to use instead of the default (1F1B; interleaved when v > 1). */
  schedule?: ScheduleName;
  /** Tokens per sequence of the data; default the model's context. */
  seqLen?: number;
  /** Timeout of every training collective in milliseconds; default 60 000. */
  timeoutMs?: number;
  /**
   * Timeout in milliseconds of the waits while rank 0 evaluates or writes alone; default
   * 1 800 000.
   */
  leaderTimeoutMs?: number;
}

/**
 * One rank's engine in a parallel run. Every rank of the world calls every method except
 * `evalBatch` and `logits`, which only rank 0 calls, after {@linkcode ParallelEngine.syncModel}.
 */
export class ParallelEngine {
  /** The resolved configuration. */
  readonly config: ResolvedEngineConfig;
  /** The checked layout. */
  readonly layout: ParallelLayout;
  /** This rank's backend. */
  readonly backend: Backend;
  /** The world. */
  readonly world: Communicator;
  /** This rank's share of the model and its training step. */
  readonly trainer: ParallelGptTrainer;
  /**
   * The whole model on one rank: on world rank 0 it holds the trained weights after
   * {@linkcode ParallelEngine.syncModel}; it also reads checkpoints.
   */
  readonly serial: Engine;
  readonly #timeoutMs: number;
  readonly #leaderTimeoutMs: number;
  readonly #seqLen: number;

  private constructor(
    layout: ParallelLayout,
    serial: Engine,
    trainer: ParallelGptTrainer,
    o: ParallelEngineOptions,
    config: ResolvedEngineConfig,
  ) {
    this.layout = layout;
    this.serial = serial;
    this.trainer = trainer;
    this.backend = o.backend;
    this.world = o.world;
    this.config = config;
    this.#timeoutMs = o.timeoutMs ?? 60_000;
    this.#leaderTimeoutMs = o.leaderTimeoutMs ?? 1_800_000;
    this.#seqLen = o.seqLen ?? config.model.ctx;
  }

  /**
   * Check the layout, build this rank's share of the model (each shard the slice of the
   * one-rank model's initial tensor) and its optimizer. Collective over `opts.world`.
   *
   * @param config the configuration, with Megatron's parallel keys
   * @param opts the world, the backend and the schedule
   * @returns the engine
   */
  static async create(config: EngineConfig, opts: ParallelEngineOptions): Promise<ParallelEngine> {
    const layout = checkParallelLayout(config, { schedule: opts.schedule, seqLen: opts.seqLen });
    if (opts.world.size !== layout.worldSize) {
      throw new RangeError(
        `The layout tp=${layout.tp} x pp=${layout.pp} x dp=${layout.dp} needs ` +
          `${layout.worldSize} ranks, the world has ${opts.world.size}`,
      );
    }
    const c = resolveEngineConfig(config);
    const serialConfig: EngineConfig = { ...config, train_batch_size: c.batchSize };
    for (
      const k of [
        "tensor_model_parallel_size",
        "pipeline_model_parallel_size",
        "virtual_pipeline_model_parallel_size",
        "sequence_parallel",
        "data_parallel_size",
        "train_micro_batch_size_per_gpu",
        "gradient_accumulation_steps",
      ] as const
    ) delete serialConfig[k];
    const serial = new Engine(serialConfig, opts.backend);
    const be = opts.backend;
    const o = c.optimizer;
    const trainer = await ParallelGptTrainer.create({
      world: opts.world,
      backend: be,
      config: c.model,
      tp: c.tp,
      pp: c.pp,
      virtualStages: c.virtualStages,
      schedule: layout.schedule,
      sequenceParallel: c.sequenceParallel,
      microBatches: layout.microBatches,
      microBatchSize: layout.microBatchSize,
      seqLen: opts.seqLen ?? c.model.ctx,
      init: (spec) => initialValue(spec, c.model.layers, c.seed),
      optimizer: (fl, params, grads) =>
        o.kind === "sgd"
          ? new SGD(be, fl, params, grads, { momentum: o.momentum, weightDecay: o.weightDecay })
          : new AdamW(be, fl, params, grads, {
            beta1: o.beta1,
            beta2: o.beta2,
            eps: o.eps,
            weightDecay: o.weightDecay,
          }),
      maxGradNorm: c.clip > 0 ? c.clip : undefined,
      timeoutMs: opts.timeoutMs ?? 60_000,
    });
    return new ParallelEngine(layout, serial, trainer, opts, c);
  }

  /** Whether this rank leads (world rank 0: it logs, evaluates and writes). */
  get isLeader(): boolean {
    return this.world.rank === 0;
  }

  /** The one-rank model (weights current on rank 0 after {@linkcode ParallelEngine.syncModel}). */
  get model(): Gpt {
    return this.serial.model;
  }

  /** Steps taken; the next step's schedule index. */
  get step(): number {
    return this.serial.step;
  }
  set step(n: number) {
    this.serial.step = n;
  }

  /**
   * The learning rate of the next step.
   *
   * @returns the rate from the schedule
   */
  currentLr(): number {
    return learningRate(this.step, this.config.schedule);
  }

  /**
   * One optimizer step over the global batch, given as any number of batches of whole
   * sequences (e.g. as a one-rank run draws them): their rows are split into the layout's
   * micro-batches, `microBatchSize` rows each, data-parallel replica `d` taking micro-batches
   * `[d * m, (d + 1) * m)`. Every rank passes the same batches. Collective.
   *
   * @param batches the global batch
   * @returns the step's figures (the same on every rank)
   */
  async trainBatch(batches: readonly Batch[]): Promise<TrainStepResult> {
    const T = this.#seqLen;
    let rows = 0;
    for (const b of batches) {
      if (b.T !== T) {
        throw new RangeError(`trainBatch needs sequences of ${T} tokens, got a batch of ${b.T}`);
      }
      rows += b.B;
    }
    if (rows !== this.config.batchSize) {
      throw new RangeError(
        `trainBatch needs the global batch of ${this.config.batchSize} sequences, got ${rows}`,
      );
    }
    const inputs = new Int32Array(rows * T), targets = new Int32Array(rows * T);
    let at = 0;
    for (const b of batches) {
      inputs.set(b.inputs.subarray(0, b.B * T), at);
      targets.set(b.targets.subarray(0, b.B * T), at);
      at += b.B * T;
    }
    const n = this.layout.microBatchSize * T;
    const lr = this.currentLr();
    const r = await this.trainer.trainStep(
      (j) => ({
        inputs: inputs.subarray(j * n, (j + 1) * n),
        targets: targets.subarray(j * n, (j + 1) * n),
      }),
      lr,
    );
    this.step++;
    return {
      step: this.step,
      loss: r.loss,
      lr,
      gradNorm: r.gradNorm,
      skipped: false,
      tokens: rows * T,
    };
  }

  /**
   * Put the trained weights together in {@linkcode ParallelEngine.serial} on rank 0 (for
   * evaluation or sampling). Collective.
   */
  async syncModel(): Promise<void> {
    const full = await this.trainer.gatherParams();
    if (full) this.serial.model.setParams(full);
  }

  /**
   * Run `fn` on rank 0 while the other ranks wait for it (with the long leader timeout).
   * Collective.
   *
   * @param fn the work of rank 0
   * @returns what `fn` returned on rank 0, null elsewhere
   */
  async leaderOnly<T>(fn: () => Promise<T>): Promise<T | null> {
    const out = this.isLeader ? await fn() : null;
    await this.world.barrier({ timeoutMs: this.#leaderTimeoutMs });
    return out;
  }

  /**
   * The mean loss of the model on a batch (rank 0, after {@linkcode ParallelEngine.syncModel}).
   *
   * @param batch inputs and targets
   * @returns the loss
   */
  evalBatch(batch: Batch): Promise<number> {
    return this.serial.evalBatch(batch);
  }

  /**
   * The model's logits for a batch (rank 0, after {@linkcode ParallelEngine.syncModel}).
   *
   * @param inputs token ids [B, T]
   * @param B sequences
   * @param T tokens per sequence
   * @returns logits [B, T, V]
   */
  logits(inputs: Int32Array, B: number, T: number): Promise<Float32Array> {
    return this.serial.logits(inputs, B, T);
  }

  /**
   * Save the one-rank checkpoint ({@linkcode Engine.save}'s format) from rank 0: the weights
   * and the optimizer state put together from every rank's shards. Collective.
   *
   * @param dir the directory (created if needed)
   * @param extra run state to keep with the checkpoint (e.g. the data position)
   * @param extraConfig more configuration to write into config.json
   */
  async save(
    dir: string,
    extra: Record<string, unknown> = {},
    extraConfig: Record<string, unknown> = {},
  ): Promise<void> {
    const params = await this.trainer.gatherParams();
    const mine = this.trainer.optimizer.stateTensors();
    const full = this.serial.optimizer.stateTensors();
    const state = new Map<string, Map<string, Float32Array> | null>();
    for (const key of Object.keys(mine)) state.set(key, await this.trainer.gather(mine[key]!));
    await this.leaderOnly(async () => {
      const s = this.serial;
      s.model.setParams(params!);
      for (const [key, tensors] of state) writeByName(s, full[key]!, tensors!);
      s.optimizer.steps = this.trainer.optimizer.steps;
      await s.save(dir, extra, { ...extraConfig, layout: this.layout });
    });
  }

  /**
   * Load a checkpoint saved by {@linkcode Engine.save} or {@linkcode ParallelEngine.save}
   * (from any layout): every rank reads it and takes its shards. Collective.
   *
   * @param dir the directory
   * @returns the `extra` state saved with it
   */
  async load(dir: string): Promise<Record<string, unknown>> {
    const s = this.serial;
    const extra = await s.load(dir);
    const t = this.trainer;
    t.load(t.params, await s.model.getParams());
    const mine = t.optimizer.stateTensors();
    for (const [key, tensor] of Object.entries(s.optimizer.stateTensors())) {
      t.load(mine[key]!, splitByName(s, Float32Array.from(await this.backend.read(tensor))));
    }
    t.optimizer.steps = s.optimizer.steps;
    await this.world.barrier({ timeoutMs: this.#leaderTimeoutMs });
    return extra;
  }
}

function writeByName(
  s: Engine,
  buf: ReturnType<Engine["optimizer"]["stateTensors"]>[string],
  tensors: Map<string, Float32Array>,
): void {
  for (const slot of s.model.layout.slots) {
    s.backend.write(buf!, tensors.get(slot.name)!, slot.offset);
  }
}

function splitByName(s: Engine, flat: Float32Array): Map<string, Float32Array> {
  const out = new Map<string, Float32Array>();
  for (const slot of s.model.layout.slots) {
    out.set(slot.name, flat.subarray(slot.offset, slot.offset + slot.size));
  }
  return out;
}
