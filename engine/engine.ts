/**
 * The engine: `initialize(config)` validates the whole configuration, builds the GPT, the
 * optimizer, the schedule and (for fp16) the loss scaler, and returns an {@linkcode Engine}
 * with `trainBatch`, `evalBatch`, `save` and `load`.
 *
 * @module
 */
import type { Batch } from "../data/mod.ts";
import type { Backend, Tensor } from "../kernels/mod.ts";
import { Rng } from "../kernels/mod.ts";
import { Gpt } from "../models/mod.ts";
import {
  AdamW,
  clipFactor,
  DynamicLossScaler,
  learningRate,
  type Optimizer,
  SGD,
} from "../optim/mod.ts";
import { type EngineConfig, type ResolvedEngineConfig, resolveEngineConfig } from "./config.ts";
import { type CheckpointMeta, readCheckpoint, writeCheckpoint } from "./checkpoint.ts";

/** What one optimizer step reports. */
export interface TrainStepResult {
  /** 1-based number of the step just taken. */
  step: number;
  /** Mean loss over the micro-batches. */
  loss: number;
  /** Learning rate used. */
  lr: number;
  /** Global gradient norm before clipping (NaN when neither clipping nor fp16 needs it). */
  gradNorm: number;
  /** Whether the update was skipped (fp16 overflow). */
  skipped: boolean;
  /** Tokens in the step (all micro-batches). */
  tokens: number;
}

/** Options of {@linkcode initialize}. */
export interface InitializeOptions {
  /** The backend to build on. */
  backend: Backend;
}

/**
 * A GPT under training on one rank: {@linkcode Engine.trainBatch} is the one place where a
 * step's forward, backward, gradient reduction and update happen. Layouts over several ranks
 * (tensor, sequence, pipeline, data parallel) use `ParallelEngine`, which keeps the same
 * surface.
 */
export class Engine {
  /** The resolved configuration. */
  readonly config: ResolvedEngineConfig;
  /** The configuration as given (saved with checkpoints). */
  readonly rawConfig: EngineConfig;
  /** The backend. */
  readonly backend: Backend;
  /** The model. */
  readonly model: Gpt;
  /** The optimizer. */
  readonly optimizer: Optimizer;
  /** The loss scaler (fp16 only). */
  readonly lossScaler: DynamicLossScaler | null;
  /** The engine's random stream (seeded from the config; saved in checkpoints). */
  readonly rng: Rng;
  /** Steps taken (including skipped ones); the next step's schedule index. */
  step = 0;
  readonly #scratch: Tensor;

  /**
   * Build the engine (use {@linkcode initialize}).
   *
   * @param config the configuration
   * @param backend the backend
   */
  constructor(config: EngineConfig, backend: Backend) {
    this.config = resolveEngineConfig(config);
    const { tp, pp, dp } = this.config;
    if (tp * pp * dp !== 1) {
      throw new RangeError(
        `Engine trains on one rank; for tensor_model_parallel_size=${tp}, ` +
          `pipeline_model_parallel_size=${pp}, data_parallel_size=${dp} use ParallelEngine ` +
          `on every rank (engine/parallel.ts)`,
      );
    }
    this.rawConfig = structuredClone(config);
    this.backend = backend;
    const c = this.config;
    this.model = new Gpt(backend, c.model, { seed: c.seed });
    const { params, grads } = this.model.store;
    const o = c.optimizer;
    this.optimizer = o.kind === "sgd"
      ? new SGD(backend, this.model.layout, params, grads, {
        momentum: o.momentum,
        weightDecay: o.weightDecay,
      })
      : new AdamW(backend, this.model.layout, params, grads, {
        beta1: o.beta1,
        beta2: o.beta2,
        eps: o.eps,
        weightDecay: o.weightDecay,
      });
    this.lossScaler = c.lossScaling ? new DynamicLossScaler(c.lossScaling) : null;
    this.rng = new Rng(c.seed);
    this.#scratch = backend.alloc(c.accumulation + 1);
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
   * One optimizer step over `gradient_accumulation_steps` micro-batches: forward and backward
   * of each (gradients summed, each scaled by 1/accumulation), then for fp16 the overflow
   * check and unscaling, clipping by global norm, and the update. The losses and the gradient
   * norm come back in one readback.
   *
   * @param micro the micro-batches, `gradient_accumulation_steps` of them
   * @returns the step's figures
   */
  async trainBatch(micro: readonly Batch[]): Promise<TrainStepResult> {
    const c = this.config;
    if (micro.length !== c.accumulation) {
      throw new RangeError(
        `trainBatch needs ${c.accumulation} micro-batches (gradient_accumulation_steps), ` +
          `got ${micro.length}`,
      );
    }
    const be = this.backend, model = this.model;
    const lossScale = this.lossScaler?.scale ?? 1;
    model.zeroGrad();
    let tokens = 0;
    for (let i = 0; i < micro.length; i++) {
      const b = micro[i];
      const loss = await model.forward(b.inputs, b.targets, b.B, b.T);
      be.copy(be.view(this.#scratch, i, 1), loss);
      await model.backward(lossScale / c.accumulation);
      tokens += b.B * b.T;
    }
    const needNorm = c.clip > 0 || this.lossScaler !== null;
    const grads = model.store.grads;
    if (needNorm) {
      be.sumSquares(be.view(this.#scratch, c.accumulation, 1), grads, grads.length);
    }
    const host = await be.read(this.#scratch);
    let loss = 0;
    for (let i = 0; i < c.accumulation; i++) loss += host[i];
    loss /= c.accumulation;
    const gradNorm = needNorm ? Math.sqrt(host[c.accumulation]) / lossScale : NaN;
    const lr = this.currentLr();
    this.step++;
    if (this.lossScaler && !this.lossScaler.update(Number.isFinite(gradNorm))) {
      return { step: this.step, loss, lr, gradNorm, skipped: true, tokens };
    }
    const factor = (1 / lossScale) * (c.clip > 0 ? clipFactor(gradNorm, c.clip) : 1);
    if (factor !== 1) be.scale(grads, factor, grads.length);
    this.optimizer.step(lr);
    return { step: this.step, loss, lr, gradNorm, skipped: false, tokens };
  }

  /**
   * The mean loss of the model on a batch, without touching gradients.
   *
   * @param batch inputs and targets
   * @returns the loss
   */
  async evalBatch(batch: Batch): Promise<number> {
    const loss = await this.model.forward(batch.inputs, batch.targets, batch.B, batch.T);
    return (await this.backend.read(loss))[0];
  }

  /**
   * The model's logits for a batch, on the host.
   *
   * @param inputs token ids [B, T]
   * @param B sequences
   * @param T tokens per sequence
   * @returns logits [B, T, V]
   */
  async logits(inputs: Int32Array, B: number, T: number): Promise<Float32Array> {
    const t = await this.model.logits(inputs, B, T);
    return Float32Array.from(await this.backend.read(t));
  }

  /**
   * Save a checkpoint into `dir`: `checkpoint.safetensors` (parameters under GPT-2 names,
   * optimizer state as `optimizer.<buffer>.<name>`, and the step, RNG and loss-scaler state
   * plus `extra` in its metadata) and `config.json` (this configuration plus `extraConfig`).
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
    const meta: CheckpointMeta = {
      step: this.step,
      optimizerSteps: this.optimizer.steps,
      rng: this.rng.getState(),
      lossScaler: this.lossScaler?.getState() ?? null,
      extra,
    };
    await writeCheckpoint(dir, this, meta, { ...extraConfig, engine: this.rawConfig });
  }

  /**
   * Load a checkpoint saved by {@linkcode Engine.save}, after checking that it matches this
   * model's shape and optimizer.
   *
   * @param dir the directory
   * @returns the `extra` state saved with it
   */
  async load(dir: string): Promise<Record<string, unknown>> {
    const meta = await readCheckpoint(dir, this);
    this.step = meta.step;
    this.optimizer.steps = meta.optimizerSteps;
    this.rng.setState(meta.rng);
    if (this.lossScaler && meta.lossScaler) this.lossScaler.setState(meta.lossScaler);
    return meta.extra;
  }
}

/**
 * Validate `config` and build an engine on `opts.backend`.
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
 * @param opts the backend
 * @returns the engine
 */
export function initialize(config: EngineConfig, opts: InitializeOptions): Promise<Engine> {
  return Promise.resolve(new Engine(config, opts.backend));
}
