/**
 * The engine's configuration. It speaks DeepSpeed's JSON keys where DeepSpeed has one
 * (`train_batch_size`, `train_micro_batch_size_per_gpu`, `gradient_accumulation_steps`,
 * `gradient_clipping`, `optimizer`, `scheduler`, `fp16`, `bf16`) and Megatron's words for the
 * parallel sizes (`tensor_model_parallel_size`, `pipeline_model_parallel_size`). Everything is
 * validated up front, and each bad value gets a message that names the key and the fix.
 *
 * @module
 */
import { type GptConfig, type ResolvedGptConfig, resolveGptConfig } from "../models/config.ts";
import type { LossScalerOptions, Schedule } from "../optim/mod.ts";
import { checkModelLayout } from "../parallel/grid.ts";

/** DeepSpeed's `optimizer` block. */
export interface OptimizerConfig {
  /** `"AdamW"` (also accepted: `"Adam"`, meaning AdamW here) or `"SGD"`. */
  type: string;
  /** Hyper-parameters. */
  params?: {
    /** Learning rate (the peak of the schedule); default 1e-3. */
    lr?: number;
    /** AdamW's [beta1, beta2]; default [0.9, 0.999]. */
    betas?: [number, number];
    /** AdamW's epsilon; default 1e-8. */
    eps?: number;
    /** Weight decay (only on 2-D weights); default 0.01 for AdamW, 0 for SGD. */
    weight_decay?: number;
    /** SGD momentum; default 0.9. */
    momentum?: number;
  };
}

/** DeepSpeed's `scheduler` block. */
export interface SchedulerConfig {
  /**
   * `"WarmupCosineLR"` (warmup then cosine), `"WarmupDecayLR"` (warmup then linear decay to
   * 0) or `"WarmupLR"` (warmup then constant).
   */
  type: string;
  /** Parameters. */
  params?: {
    /** Warmup steps; default 0. */
    warmup_num_steps?: number;
    /** Total steps of the run (cosine and linear decay end there). */
    total_num_steps?: number;
    /** Cosine floor as a fraction of the peak; default 0.1. */
    cos_min_ratio?: number;
    /** Peak learning rate, overriding the optimizer's `lr`. */
    warmup_max_lr?: number;
    /** Only `"linear"` warmup is implemented. */
    warmup_type?: string;
  };
}

/** DeepSpeed's `fp16` block: dynamic loss scaling. */
export interface Fp16Config {
  /** Whether loss scaling is on. */
  enabled?: boolean;
  /** The first scale is 2^this; default 16. */
  initial_scale_power?: number;
  /** Good steps before the scale doubles; default 1000. */
  loss_scale_window?: number;
  /** Lowest scale; default 1. */
  min_loss_scale?: number;
}

/** The engine configuration (DeepSpeed and Megatron keys, plus the model). */
export interface EngineConfig {
  /** The GPT's shape. */
  model: GptConfig;
  /** Sequences per optimizer step, over all micro-batches and data-parallel ranks. */
  train_batch_size?: number;
  /** Sequences per micro-batch on one rank. */
  train_micro_batch_size_per_gpu?: number;
  /** Micro-batches per optimizer step; default 1. */
  gradient_accumulation_steps?: number;
  /** Clip gradients to this global norm; 0 (default) for no clipping. */
  gradient_clipping?: number;
  /** The optimizer; default AdamW with lr 1e-3. */
  optimizer?: OptimizerConfig;
  /** The learning-rate schedule; default constant. */
  scheduler?: SchedulerConfig;
  /** Dynamic loss scaling. */
  fp16?: Fp16Config;
  /** bfloat16 (not implemented by the backends yet: only `enabled: false` is accepted). */
  bf16?: { enabled?: boolean };
  /** Seed of the initialisation; default 0. */
  seed?: number;
  /** Megatron's tensor-parallel size: ranks splitting every layer; default 1. */
  tensor_model_parallel_size?: number;
  /** Megatron's pipeline-parallel size: stages the layers are split into; default 1. */
  pipeline_model_parallel_size?: number;
  /** Megatron's model chunks per pipeline stage (interleaved 1F1B when > 1); default 1. */
  virtual_pipeline_model_parallel_size?: number;
  /** Megatron's sequence parallelism (with tensor parallelism); default false. */
  sequence_parallel?: boolean;
  /** Data-parallel ranks; default 1. */
  data_parallel_size?: number;
}

/** A validated configuration with every default filled in. */
export interface ResolvedEngineConfig {
  /** The GPT. */
  model: ResolvedGptConfig;
  /** Sequences per optimizer step (global). */
  batchSize: number;
  /** Sequences per micro-batch. */
  microBatch: number;
  /** Micro-batches per step. */
  accumulation: number;
  /** Global-norm clip (0: off). */
  clip: number;
  /** The optimizer. */
  optimizer: {
    kind: "adamw" | "sgd";
    beta1: number;
    beta2: number;
    eps: number;
    weightDecay: number;
    momentum: number;
  };
  /** The schedule (its `lr` is the peak rate). */
  schedule: Schedule;
  /** Loss-scaler options when fp16 is enabled, else null. */
  lossScaling: LossScalerOptions | null;
  /** Seed. */
  seed: number;
  /** Tensor-parallel size. */
  tp: number;
  /** Pipeline-parallel size. */
  pp: number;
  /** Data-parallel size. */
  dp: number;
  /** Model chunks per pipeline stage. */
  virtualStages: number;
  /** Sequence parallelism (only when tp > 1). */
  sequenceParallel: boolean;
}

const TOP_KEYS = [
  "model",
  "train_batch_size",
  "train_micro_batch_size_per_gpu",
  "gradient_accumulation_steps",
  "gradient_clipping",
  "optimizer",
  "scheduler",
  "fp16",
  "bf16",
  "seed",
  "tensor_model_parallel_size",
  "pipeline_model_parallel_size",
  "virtual_pipeline_model_parallel_size",
  "sequence_parallel",
  "data_parallel_size",
];

function unknownKeys(where: string, obj: object | undefined, keys: readonly string[]): void {
  if (obj === undefined) return;
  if (obj === null || typeof obj !== "object" || Array.isArray(obj)) {
    throw new TypeError(`Config "${where}" must be an object, got ${JSON.stringify(obj)}`);
  }
  for (const k of Object.keys(obj)) {
    if (!keys.includes(k)) {
      throw new TypeError(
        `Unknown config key "${where ? where + "." : ""}${k}": the keys are ` +
          keys.join(", "),
      );
    }
  }
}

function int(key: string, v: unknown, min: number, dflt?: number): number {
  if (v === undefined && dflt !== undefined) return dflt;
  if (typeof v !== "number") {
    throw new TypeError(`Config "${key}" must be an integer, got ${JSON.stringify(v)}`);
  }
  if (!Number.isInteger(v) || v < min) {
    throw new RangeError(`Config "${key}" must be an integer >= ${min}, got ${v}`);
  }
  return v;
}

function num(key: string, v: unknown, lo: number, hi: number, dflt: number): number {
  if (v === undefined) return dflt;
  if (typeof v !== "number") {
    throw new TypeError(`Config "${key}" must be a number, got ${JSON.stringify(v)}`);
  }
  if (!Number.isFinite(v) || v < lo || v > hi) {
    throw new RangeError(`Config "${key}" must be in [${lo}, ${hi}], got ${v}`);
  }
  return v;
}

/**
 * Validate a configuration and fill in its defaults. The batch sizes follow DeepSpeed:
 * `train_batch_size = train_micro_batch_size_per_gpu * gradient_accumulation_steps *
 * data_parallel_size`; give any two and the third is derived.
 *
 * @example
 * ```ts
 * import { resolveEngineConfig } from "./config.ts";
 * const c = resolveEngineConfig({
 *   model: { vocab: 12, ctx: 11, dim: 32, layers: 1, heads: 2 },
 *   train_batch_size: 64,
 *   gradient_accumulation_steps: 2,
 *   scheduler: { type: "WarmupCosineLR", params: { total_num_steps: 100 } },
 * });
 * console.assert(c.microBatch === 32 && c.schedule.kind === "cosine");
 * ```
 *
 * @param config the configuration
 * @returns the resolved configuration
 * @throws {TypeError} for an unknown key or a value of the wrong type
 * @throws {RangeError} for a value out of range or sizes that do not fit together
 */
export function resolveEngineConfig(config: EngineConfig): ResolvedEngineConfig {
  unknownKeys("", config, TOP_KEYS);
  if (config.model === undefined) {
    throw new TypeError('Config needs "model": { vocab, ctx, dim, layers, heads }');
  }
  const model = resolveGptConfig(config.model);
  const tp = int("tensor_model_parallel_size", config.tensor_model_parallel_size, 1, 1);
  const pp = int("pipeline_model_parallel_size", config.pipeline_model_parallel_size, 1, 1);
  const dp = int("data_parallel_size", config.data_parallel_size, 1, 1);
  const virtualStages = int(
    "virtual_pipeline_model_parallel_size",
    config.virtual_pipeline_model_parallel_size,
    1,
    1,
  );
  const spFlag = config.sequence_parallel ?? false;
  if (typeof spFlag !== "boolean") {
    throw new TypeError(
      `Config "sequence_parallel" must be true or false, got ${JSON.stringify(spFlag)}`,
    );
  }
  const layout = checkModelLayout({
    heads: model.heads,
    layers: model.layers,
    vocab: model.vocab,
    tp,
    pp,
    virtualStages,
  });
  if (layout.vocabPadding > 0) {
    throw new RangeError(
      `The vocabulary of ${model.vocab} does not split across tensor_model_parallel_size=${tp}: ` +
        `build the model with the padded vocabulary ${layout.paddedVocab} (train.ts pads it)`,
    );
  }
  if (model.hidden % tp !== 0) {
    throw new RangeError(
      `The MLP width ${model.hidden} must be a multiple of tensor_model_parallel_size=${tp}`,
    );
  }

  const given = {
    batch: config.train_batch_size,
    micro: config.train_micro_batch_size_per_gpu,
    accum: config.gradient_accumulation_steps,
  };
  let batch: number, micro: number, accum: number;
  if (given.batch !== undefined) {
    batch = int("train_batch_size", given.batch, 1);
    if (given.micro !== undefined) {
      micro = int("train_micro_batch_size_per_gpu", given.micro, 1);
      accum = int("gradient_accumulation_steps", given.accum, 1, batch / (micro * dp));
    } else {
      accum = int("gradient_accumulation_steps", given.accum, 1, 1);
      micro = batch / (accum * dp);
    }
  } else {
    micro = int("train_micro_batch_size_per_gpu", given.micro, 1, 8);
    accum = int("gradient_accumulation_steps", given.accum, 1, 1);
    batch = micro * accum * dp;
  }
  if (!Number.isInteger(micro) || !Number.isInteger(accum) || batch !== micro * accum * dp) {
    throw new RangeError(
      `train_batch_size (${batch}) must equal train_micro_batch_size_per_gpu (${micro}) x ` +
        `gradient_accumulation_steps (${accum}) x data_parallel_size (${dp})`,
    );
  }
  const clip = num("gradient_clipping", config.gradient_clipping, 0, Infinity, 0);

  const opt = config.optimizer ?? { type: "AdamW" };
  unknownKeys("optimizer", opt, ["type", "params"]);
  const type = String(opt.type).toLowerCase();
  if (type !== "adamw" && type !== "adam" && type !== "sgd") {
    throw new RangeError(`Unknown optimizer type "${opt.type}": use "AdamW" or "SGD"`);
  }
  const op = opt.params ?? {};
  unknownKeys("optimizer.params", op, ["lr", "betas", "eps", "weight_decay", "momentum"]);
  const lr = num("optimizer.params.lr", op.lr, 0, 10, 1e-3);
  if (op.betas !== undefined && (!Array.isArray(op.betas) || op.betas.length !== 2)) {
    throw new TypeError(`Config "optimizer.params.betas" must be [beta1, beta2]`);
  }
  const kind = type === "sgd" ? "sgd" : "adamw";
  const optimizer = {
    kind: kind as "adamw" | "sgd",
    beta1: num("optimizer.params.betas[0]", op.betas?.[0], 0, 0.999999, 0.9),
    beta2: num("optimizer.params.betas[1]", op.betas?.[1], 0, 0.999999999, 0.999),
    eps: num("optimizer.params.eps", op.eps, 0, 1, 1e-8),
    weightDecay: num(
      "optimizer.params.weight_decay",
      op.weight_decay,
      0,
      10,
      kind === "sgd" ? 0 : 0.01,
    ),
    momentum: num("optimizer.params.momentum", op.momentum, 0, 1, 0.9),
  };

  const sch = config.scheduler ?? { type: "WarmupLR" };
  unknownKeys("scheduler", sch, ["type", "params"]);
  const sp = sch.params ?? {};
  unknownKeys("scheduler.params", sp, [
    "warmup_num_steps",
    "total_num_steps",
    "cos_min_ratio",
    "warmup_max_lr",
    "warmup_type",
  ]);
  const kinds: Record<string, Schedule["kind"]> = {
    WarmupCosineLR: "cosine",
    WarmupDecayLR: "linear",
    WarmupLR: "constant",
  };
  const sk = kinds[sch.type];
  if (sk === undefined) {
    throw new RangeError(
      `Unknown scheduler type "${sch.type}": use WarmupCosineLR, WarmupDecayLR or WarmupLR`,
    );
  }
  if (sp.warmup_type !== undefined && sp.warmup_type !== "linear") {
    throw new RangeError(`scheduler.params.warmup_type must be "linear", got "${sp.warmup_type}"`);
  }
  const peak = num("scheduler.params.warmup_max_lr", sp.warmup_max_lr, 0, 10, lr);
  const warmup = int("scheduler.params.warmup_num_steps", sp.warmup_num_steps, 0, 0);
  const totalSteps = sk === "constant"
    ? int("scheduler.params.total_num_steps", sp.total_num_steps, 1, Math.max(1, warmup))
    : int("scheduler.params.total_num_steps", sp.total_num_steps, 1);
  const ratio = num("scheduler.params.cos_min_ratio", sp.cos_min_ratio, 0, 1, 0.1);
  const schedule: Schedule = {
    kind: sk,
    lr: peak,
    warmup,
    totalSteps,
    minLr: sk === "cosine" ? peak * ratio : 0,
  };

  unknownKeys("fp16", config.fp16, [
    "enabled",
    "initial_scale_power",
    "loss_scale_window",
    "min_loss_scale",
  ]);
  unknownKeys("bf16", config.bf16, ["enabled"]);
  if (config.bf16?.enabled) {
    throw new RangeError(
      "bf16 is not implemented: the backends compute in float32; set bf16.enabled to false",
    );
  }
  const f = config.fp16;
  const lossScaling = f?.enabled
    ? {
      initialScale: 2 ** int("fp16.initial_scale_power", f.initial_scale_power, 0, 16),
      growthInterval: int("fp16.loss_scale_window", f.loss_scale_window, 1, 1000),
      minScale: num("fp16.min_loss_scale", f.min_loss_scale, 1e-30, Infinity, 1),
    }
    : null;
  const seed = int("seed", config.seed, 0, 0);
  if (lossScaling && tp * pp * dp > 1) {
    throw new RangeError(
      "fp16 loss scaling runs on one rank only: set fp16.enabled to false for a parallel layout",
    );
  }
  return {
    model,
    batchSize: batch,
    microBatch: micro,
    accumulation: accum,
    clip,
    optimizer,
    schedule,
    lossScaling,
    seed,
    tp,
    pp,
    dp,
    virtualStages,
    sequenceParallel: spFlag && tp > 1,
  };
}
