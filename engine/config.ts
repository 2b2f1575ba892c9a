/**
 * The engine's configuration. It reads DeepSpeed's JSON config as DeepSpeed does (the batch
 * triple, `gradient_clipping`, `optimizer`, `scheduler`, `fp16`, `bf16`, `zero_optimization`,
 * `activation_checkpointing`, `steps_per_print`, ...) with DeepSpeed's defaults, Megatron's
 * words for the parallel sizes (`tensor_model_parallel_size`, `pipeline_model_parallel_size`),
 * and a few keys of Loom's own (`model`, `dropout`, `seed`, `activation_checkpointing.
 * every_n_blocks`). Everything is validated up front, and every key ends in one of three
 * classes:
 *
 * - acted on: resolved into a field of {@linkcode ResolvedEngineConfig};
 * - listed: accepted but not acted on, because it does not change the results here (a tuning
 *   knob such as `zero_optimization.contiguous_gradients`); its dotted path is in
 *   {@linkcode ResolvedEngineConfig.ignoredKeys} so that the engine can say so once;
 * - refused: a key or value that would change the results if it were ignored (CPU offload,
 *   fp16 master weights, Adam with L2 regularisation, ...), or an unknown key. The error names
 *   the dotted key and what to do instead.
 *
 * The Hugging Face Trainer's `"auto"` values are filled from {@linkcode ResolveOptions.auto}
 * (see {@linkcode fillAuto}).
 *
 * @module
 */
import { type GptConfig, type ResolvedGptConfig, resolveGptConfig } from "../models/config.ts";
import type { LossScalerOptions, Schedule, WarmupType } from "../optim/mod.ts";
import { checkModelLayout } from "../parallel/grid.ts";

/** DeepSpeed's `optimizer` block. */
export interface OptimizerConfig {
  /** `"AdamW"`, `"Adam"` (AdamW unless `adam_w_mode` is false) or `"SGD"`; any case. */
  type: string;
  /** Hyper-parameters. */
  params?: {
    /** Learning rate (the peak of the schedule); default 1e-3. */
    lr?: number;
    /** Adam's [beta1, beta2]; default [0.9, 0.999]. */
    betas?: [number, number];
    /** Adam's epsilon; default 1e-8. */
    eps?: number;
    /**
     * Decoupled weight decay (only on 2-D weights). Default as DeepSpeed: 0 for its fused Adam,
     * 0.01 with `torch_adam` (PyTorch's AdamW), 0 for SGD.
     */
    weight_decay?: number;
    /** SGD momentum; default 0.9. */
    momentum?: number;
    /** DeepSpeed: PyTorch's Adam instead of its fused one (listed: same update here). */
    torch_adam?: boolean;
    /** DeepSpeed: AdamW's decoupled decay (true, default); false with `"Adam"` is refused. */
    adam_w_mode?: boolean;
    /** Adam's bias correction: true (listed); false is refused. */
    bias_correction?: boolean;
    /** AMSGrad: false (listed); true is refused. */
    amsgrad?: boolean;
  };
}

/** DeepSpeed's `scheduler` block (and Loom's own schedule kinds). */
export interface SchedulerConfig {
  /**
   * DeepSpeed's `"WarmupLR"`, `"WarmupDecayLR"` or `"WarmupCosineLR"`, computed as DeepSpeed
   * does (see {@linkcode learningRate}), or Loom's `"cosine"`, `"linear"` or `"constant"`
   * (linear warmup, what train.ts's `--schedule` names).
   */
  type: string;
  /** Parameters, named as DeepSpeed names them. */
  params?: {
    /** Warmup steps: default 1000 for DeepSpeed's types, 0 for Loom's. */
    warmup_num_steps?: number;
    /** Total steps of the run (WarmupDecayLR, WarmupCosineLR, cosine, linear). */
    total_num_steps?: number;
    /** WarmupLR, WarmupDecayLR: the starting (and WarmupDecayLR's final) rate; default 0. */
    warmup_min_lr?: number;
    /**
     * WarmupLR, WarmupDecayLR (and Loom's kinds): the peak rate. It wins over
     * `optimizer.params.lr`, as in DeepSpeed, whose scheduler overwrites the optimizer's rate.
     * Default: the optimizer's `lr` for WarmupLR, 0.001 for WarmupDecayLR (DeepSpeed's own
     * default: the optimizer's rate is then unused), the optimizer's `lr` for Loom's kinds.
     */
    warmup_max_lr?: number;
    /** `"log"` (DeepSpeed's default) or `"linear"`; Loom's kinds warm up linearly only. */
    warmup_type?: string;
    /** WarmupCosineLR: the warmup's start as a fraction of the optimizer's `lr`; default 0. */
    warmup_min_ratio?: number;
    /** The cosine floor as a fraction of the peak: 0.0001 for WarmupCosineLR, 0.1 for cosine. */
    cos_min_ratio?: number;
    /** DeepSpeed's resume index: only -1 (a fresh start; listed) is accepted. */
    last_batch_iteration?: number;
  };
}

/** DeepSpeed's `fp16` block: half precision with loss scaling. */
export interface Fp16Config {
  /** Whether fp16 is on; default false. */
  enabled?: boolean;
  /** DeepSpeed casts float inputs to fp16 (listed: Loom's inputs are token ids). */
  auto_cast?: boolean;
  /** 0 (default) for a dynamic loss scale; any other value is a static scale. */
  loss_scale?: number;
  /** The first dynamic scale is 2^this; default 16. */
  initial_scale_power?: number;
  /** Good steps since the last overflow before the scale doubles; default 1000. */
  loss_scale_window?: number;
  /** Overflows it takes to halve the scale; default 2. */
  hysteresis?: number;
  /** Refill the hysteresis after every good step; default false. */
  consecutive_hysteresis?: boolean;
  /** Lowest dynamic scale; default 1. */
  min_loss_scale?: number;
  /** fp16 master weights: false (listed); true is refused (Loom keeps them in fp32). */
  fp16_master_weights_and_grads?: boolean;
}

/** DeepSpeed's `bf16` block (no loss scaling). */
export interface Bf16Config {
  /** Whether bf16 is on; default false. */
  enabled?: boolean;
  /** bf16 master weights: false (listed); true is refused (Loom keeps them in fp32). */
  bf16_master_weights_and_grads?: boolean;
  /** bf16 optimizer moments: false (listed); true is refused (Loom keeps them in fp32). */
  bf16_optimizer_states?: boolean;
}

/** DeepSpeed's `offload_optimizer` / `offload_param` blocks: only `device: "none"` here. */
export interface OffloadConfig {
  /** `"none"` (default); `"cpu"` and `"nvme"` are refused. */
  device?: string;
  /** Listed. */
  nvme_path?: string | null;
  /** Listed. */
  pin_memory?: boolean;
  /** Listed. */
  buffer_count?: number;
  /** Listed (offload_param). */
  buffer_size?: number;
  /** Listed (offload_param). */
  max_in_cpu?: number;
  /** Listed (offload_optimizer). */
  pipeline_read?: boolean;
  /** Listed (offload_optimizer). */
  pipeline_write?: boolean;
  /** Listed (offload_optimizer). */
  fast_init?: boolean;
  /** Listed (offload_optimizer). */
  ratio?: number;
  /** Listed (offload_optimizer). */
  super_offload?: boolean;
  /** Listed (offload_optimizer). */
  cpuadam_cores_perc?: number;
}

/**
 * DeepSpeed's `zero_optimization` block. Each stage-3 key also goes by its name without the
 * `stage3_` prefix, as in DeepSpeed. Keys not named here but known to DeepSpeed as pure tuning
 * knobs are listed (see {@linkcode ResolvedEngineConfig.ignoredKeys}).
 */
export interface ZeroConfig {
  /** 0 (default): plain data parallelism; 1: optimizer state, 2: + gradients, 3: + parameters. */
  stage?: number;
  /** Elements per gradient reduction; Loom's default 2^20 (see `ResolvedEngineConfig.zero`). */
  reduce_bucket_size?: number;
  /** Elements per parameter all-gather; Loom's default 2^20. */
  allgather_bucket_size?: number;
  /** Overlap gradient reduction with the backward pass; default true at stage 3, else false. */
  overlap_comm?: boolean;
  /** Reduce-scatter (true, default) rather than all-reduce the gradients. */
  reduce_scatter?: boolean;
  /** All-gather (true, default) rather than broadcast the updated parameters. */
  allgather_partitions?: boolean;
  /** Stage 3: elements to fetch ahead of use; Loom's default 2^22. */
  stage3_prefetch_bucket_size?: number;
  /** Stage 3: parameters smaller than this stay whole on every rank; default 1e5. */
  stage3_param_persistence_threshold?: number;
  /** Stage 3: most parameter elements gathered at once per rank; Loom's default 2^24. */
  stage3_max_live_parameters?: number;
  /** Stage 3: gather whole 16-bit weights when saving the model; default false. */
  stage3_gather_16bit_weights_on_model_save?: boolean;
  /** The old name of `stage3_gather_16bit_weights_on_model_save`. */
  stage3_gather_fp16_weights_on_model_save?: boolean;
  /** Listed. */
  contiguous_gradients?: boolean;
  /** Listed. */
  sub_group_size?: number;
  /** Listed. */
  round_robin_gradients?: boolean;
  /** Listed. */
  stage3_max_reuse_distance?: number;
  /** Optimizer-state offload: only `device: "none"`. */
  offload_optimizer?: OffloadConfig;
  /** Parameter offload: only `device: "none"`. */
  offload_param?: OffloadConfig;
  /** DeepSpeed's deprecated optimizer offload: only false (listed). */
  cpu_offload?: boolean;
}

/** DeepSpeed's `activation_checkpointing` block; its presence turns checkpointing on. */
export interface ActivationCheckpointingConfig {
  /** Loom: checkpoint every n blocks (keep only their input, recompute in backward); 1. */
  every_n_blocks?: number;
  /** Listed. */
  partition_activations?: boolean;
  /** Listed. */
  cpu_checkpointing?: boolean;
  /** Listed. */
  contiguous_memory_optimization?: boolean;
  /** Listed. */
  number_checkpoints?: number | null;
  /** Listed. */
  synchronize_checkpoint_boundary?: boolean;
  /** Listed. */
  profile?: boolean;
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
  /** Half precision with loss scaling. */
  fp16?: Fp16Config;
  /** bfloat16 (no loss scaling). */
  bf16?: Bf16Config;
  /** DeepSpeed's old name of `bf16`. */
  bfloat16?: Bf16Config;
  /** ZeRO. */
  zero_optimization?: ZeroConfig;
  /** Activation checkpointing (on when present). */
  activation_checkpointing?: ActivationCheckpointingConfig;
  /** Report progress every this many steps; default 10. */
  steps_per_print?: number;
  /** Time forward, backward and step separately; default false. */
  wall_clock_breakdown?: boolean;
  /** Loom: dropout probability in [0, 1); default 0. */
  dropout?: number;
  /** DeepSpeed: scale gradients before the all-reduce (listed: same mean here). */
  prescale_gradients?: boolean;
  /** DeepSpeed: divide gradients by this before the all-reduce (listed: same mean here). */
  gradient_predivide_factor?: number;
  /** DeepSpeed: allow ZeRO with an untested optimizer (listed). */
  zero_allow_untested_optimizer?: boolean;
  /** DeepSpeed's AutoTP: `autotp_size` > 1 is the tensor-parallel size. */
  tensor_parallel?: { autotp_size?: number };
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

/** A value to put in place of `"auto"`. */
export type AutoValue = number | boolean | string | readonly number[];

/** Options of {@linkcode resolveEngineConfig}. */
export interface ResolveOptions {
  /**
   * Values for keys written `"auto"` (the Hugging Face Trainer's convention), by dotted path:
   * `"train_micro_batch_size_per_gpu"`, `"optimizer.params.lr"`, `"optimizer.params.betas"`,
   * `"scheduler.params.total_num_steps"`, `"zero_optimization.reduce_bucket_size"`, ...
   */
  auto?: Readonly<Record<string, AutoValue>>;
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
  /**
   * Loss-scaler options when fp16 is enabled, else null: `initialScale`, `growthInterval`,
   * `minScale`, and `dynamic: false` for a static `loss_scale`. Without the hysteresis.
   *
   * @deprecated Use {@linkcode ResolvedEngineConfig.lossScaler}, which has all of DeepSpeed's
   * fp16 settings.
   */
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
  /**
   * ZeRO, as DeepSpeed's `zero_optimization`, sizes in elements. The default bucket sizes are
   * Loom's 2^20 elements, not DeepSpeed's 5e8: 5e8 elements is a whole small model (2 GB of
   * fp32), which would make a single bucket of any model Loom trains and so overlap nothing;
   * 2^20 elements (4 MiB of fp32) is large enough that a collective costs more than its
   * latency on shared memory and loopback TCP and small enough to overlap with the backward
   * pass. For the same reason stage 3 fetches ahead 2^22 elements (a block of a 25M-parameter
   * GPT) and keeps at most 2^24 gathered, where DeepSpeed's 5e7 and 1e9 would gather a whole
   * Loom-sized model at once and save nothing; the persistence threshold keeps DeepSpeed's 1e5.
   * A size of 0 is accepted, as DeepSpeed accepts it: no batching, one parameter at a time.
   */
  zero: {
    stage: 0 | 1 | 2 | 3;
    reduceBucketSize: number;
    allgatherBucketSize: number;
    overlapComm: boolean;
    reduceScatter: boolean;
    allgatherPartitions: boolean;
    prefetchBucketSize: number;
    paramPersistenceThreshold: number;
    maxLiveParameters: number;
    gather16bitWeightsOnModelSave: boolean;
  };
  /** The precision of compute: fp16 or bf16 when enabled, else fp32. */
  precision: "fp32" | "fp16" | "bf16";
  /**
   * The loss scaler: null unless fp16; `dynamic` is false for a static `loss_scale` (then
   * `initialScale` is that scale). For {@linkcode DynamicLossScaler}: `initialScale`,
   * `growthInterval: window`, `minScale`, `dynamic`, `hysteresis`, `consecutiveHysteresis`.
   */
  lossScaler: null | {
    dynamic: boolean;
    initialScale: number;
    window: number;
    hysteresis: number;
    consecutiveHysteresis: boolean;
    minScale: number;
  };
  /** Activation checkpointing: 0 off, n to checkpoint every n blocks. */
  checkpointActivations: number;
  /** Dropout probability. */
  dropout: number;
  /** Report progress every this many steps. */
  stepsPerPrint: number;
  /** Time forward, backward and step separately. */
  wallClockBreakdown: boolean;
  /**
   * The dotted paths of keys that were accepted but do not change what runs (tuning knobs of
   * DeepSpeed's own kernels and memory, offload blocks set to `"none"`, a learning rate the
   * scheduler overrides, fp16 settings while fp16 is off...), for the engine to list once.
   */
  ignoredKeys: string[];
}

// ---------------------------------------------------------------------------------------------
// Reading values

type Obj = Record<string, unknown>;

function words(s: string): string[] {
  return s.trim().split(/\s+/);
}

function dotted(where: string, k: string): string {
  return where ? `${where}.${k}` : k;
}

function obj(where: string, v: unknown): Obj | undefined {
  if (v === undefined) return undefined;
  if (v === null || typeof v !== "object" || Array.isArray(v)) {
    throw new TypeError(`Config "${where}" must be an object, got ${JSON.stringify(v)}`);
  }
  return v as Obj;
}

function unknownKeys(where: string, o: Obj | undefined, keys: readonly string[]): void {
  if (o === undefined) return;
  for (const k of Object.keys(o)) {
    if (!keys.includes(k)) {
      throw new TypeError(
        `Unknown config key "${dotted(where, k)}": the keys are ${keys.join(", ")}`,
      );
    }
  }
}

function int(key: string, v: unknown, min: number, dflt?: number): number {
  if (v === undefined && dflt !== undefined) return dflt;
  if (v === undefined) {
    throw new TypeError(`Config "${key}" is required: give an integer >= ${min}`);
  }
  if (typeof v !== "number") {
    throw new TypeError(`Config "${key}" must be an integer, got ${JSON.stringify(v)}`);
  }
  // 5e8 and 2e8, as DeepSpeed configs write sizes, are integers too.
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

function bool(key: string, v: unknown, dflt: boolean): boolean {
  if (v === undefined) return dflt;
  if (typeof v !== "boolean") {
    throw new TypeError(`Config "${key}" must be true or false, got ${JSON.stringify(v)}`);
  }
  return v;
}

/** How a listed knob is checked: its type, or the one value Loom implements. */
type Knob = "bool" | "int" | "int?" | "num" | "str?" | { only: boolean; why: string };

/** Check the knobs present in `o` and list their paths. */
function listKnobs(
  ignored: string[],
  where: string,
  o: Obj | undefined,
  knobs: Readonly<Record<string, Knob>>,
): void {
  if (o === undefined) return;
  for (const [k, kind] of Object.entries(knobs)) {
    const v = o[k];
    if (v === undefined) continue;
    const key = dotted(where, k);
    if (kind === "bool") bool(key, v, false);
    else if (kind === "int") int(key, v, 0);
    else if (kind === "int?") {
      if (v !== null) int(key, v, 0);
    } else if (kind === "num") num(key, v, 0, Infinity, 0);
    else if (kind === "str?") {
      if (v !== null && typeof v !== "string") {
        throw new TypeError(`Config "${key}" must be a string or null, got ${JSON.stringify(v)}`);
      }
    } else if (bool(key, v, kind.only) !== kind.only) {
      throw new RangeError(`Config "${key}" must be ${kind.only}: ${kind.why}`);
    }
    ignored.push(key);
  }
}

/** Read a key that also goes by another name (DeepSpeed's aliases); both must agree. */
function aliased(where: string, o: Obj, names: readonly string[]): unknown {
  let found: string | undefined;
  for (const n of names) {
    if (o[n] === undefined) continue;
    if (found !== undefined && o[n] !== o[found]) {
      throw new RangeError(
        `Config "${dotted(where, found)}" (${o[found]}) and "${dotted(where, n)}" (${o[n]}) ` +
          `are one setting: give one of them`,
      );
    }
    found ??= n;
  }
  return found === undefined ? undefined : o[found];
}

// ---------------------------------------------------------------------------------------------
// "auto"

/** The train.ts flag that sets what an "auto" key means, for the message. */
const AUTO_FLAGS: Readonly<Record<string, string>> = {
  train_batch_size: "--batch",
  train_micro_batch_size_per_gpu: "--batch and --accum (it is --batch / --accum / --dp)",
  gradient_accumulation_steps: "--accum",
  gradient_clipping: "--clip",
  seed: "--seed",
  "optimizer.params.lr": "--lr",
  "optimizer.params.weight_decay": "--weight-decay",
  "scheduler.params.warmup_max_lr": "--lr",
  "scheduler.params.warmup_num_steps": "--warmup",
  "scheduler.params.total_num_steps": "--steps",
  "scheduler.params.cos_min_ratio": "--min-lr-ratio",
};

/**
 * Fill in the `"auto"` values of a configuration (the Hugging Face Trainer's convention) and
 * return the filled copy, which can be saved. A key written `"auto"` takes the value of its
 * dotted path in `auto`. Failing that, as the Trainer does from the model's hidden size
 * (`model.dim` here): `zero_optimization.reduce_bucket_size` becomes `dim * dim` and, at ZeRO
 * stage 3, `zero_optimization.stage3_prefetch_bucket_size` becomes
 * `floor(0.9 * dim * dim)` and `zero_optimization.stage3_param_persistence_threshold`
 * `10 * dim`. Any other `"auto"` is refused.
 *
 * @example
 * ```ts
 * import { fillAuto } from "./config.ts";
 * const c = fillAuto(
 *   {
 *     model: { vocab: 12, ctx: 11, dim: 32, layers: 1, heads: 2 },
 *     train_batch_size: "auto",
 *     zero_optimization: { stage: 2, reduce_bucket_size: "auto" },
 *   } as never,
 *   { train_batch_size: 64 },
 * );
 * console.assert(c.train_batch_size === 64 && c.zero_optimization?.reduce_bucket_size === 1024);
 * ```
 *
 * @param config the configuration, as read from JSON
 * @param auto the values for `"auto"`, by dotted key path
 * @returns a deep copy with every `"auto"` replaced
 * @throws {TypeError} for an `"auto"` that nothing fills in
 */
export function fillAuto(
  config: EngineConfig,
  auto: Readonly<Record<string, AutoValue>> = {},
): EngineConfig {
  const c = config as unknown as Obj;
  const dim = (c?.model as Obj | undefined)?.dim;
  const z = c?.zero_optimization as Obj | undefined;
  const stage = z?.stage === "auto" ? auto["zero_optimization.stage"] : z?.stage;
  const hidden: Record<string, number> = {};
  if (typeof dim === "number") {
    hidden["zero_optimization.reduce_bucket_size"] = dim * dim;
    if (stage === 3) {
      hidden["zero_optimization.stage3_prefetch_bucket_size"] = Math.floor(0.9 * dim * dim);
      hidden["zero_optimization.stage3_param_persistence_threshold"] = 10 * dim;
    }
  }
  const walk = (v: unknown, path: string): unknown => {
    if (v === "auto") {
      if (Object.hasOwn(auto, path)) return structuredClone(auto[path]);
      if (Object.hasOwn(hidden, path)) return hidden[path];
      const flag = AUTO_FLAGS[path];
      throw new TypeError(
        `Config "${path}" is "auto" and nothing fills it in: write its value in the config` +
          (flag ? `, or leave "auto" for train.ts to fill from ${flag}` : "") +
          (path.startsWith("zero_optimization.") && typeof dim !== "number"
            ? ` (or give model.dim, from which "auto" ZeRO sizes are computed)`
            : ""),
      );
    }
    if (Array.isArray(v)) return v.map((x, i) => walk(x, `${path}[${i}]`));
    if (v !== null && typeof v === "object") {
      const out: Obj = {};
      for (const [k, x] of Object.entries(v)) out[k] = walk(x, dotted(path, k));
      return out;
    }
    return v;
  };
  return walk(config, "") as EngineConfig;
}

// ---------------------------------------------------------------------------------------------
// The sections

const TOP_KEYS = words(`
  model train_batch_size train_micro_batch_size_per_gpu gradient_accumulation_steps
  gradient_clipping optimizer scheduler fp16 bf16 bfloat16 zero_optimization
  activation_checkpointing steps_per_print wall_clock_breakdown dropout prescale_gradients
  gradient_predivide_factor zero_allow_untested_optimizer tensor_parallel seed
  tensor_model_parallel_size pipeline_model_parallel_size virtual_pipeline_model_parallel_size
  sequence_parallel data_parallel_size`);

/** The batch triple, as DeepSpeed derives it; the error shows all four numbers. */
function batchSizes(
  c: Obj,
  dp: number,
  dpGiven: boolean,
): { batch: number; micro: number; accum: number } {
  const g = {
    batch: c.train_batch_size === undefined
      ? undefined
      : int("train_batch_size", c.train_batch_size, 1),
    micro: c.train_micro_batch_size_per_gpu === undefined
      ? undefined
      : int("train_micro_batch_size_per_gpu", c.train_micro_batch_size_per_gpu, 1),
    accum: c.gradient_accumulation_steps === undefined
      ? undefined
      : int("gradient_accumulation_steps", c.gradient_accumulation_steps, 1),
  };
  const how = { batch: "given", micro: "given", accum: "given" };
  let batch: number, micro: number, accum: number;
  if (g.batch !== undefined && g.micro !== undefined) {
    [batch, micro] = [g.batch, g.micro];
    if (g.accum !== undefined) accum = g.accum;
    else [accum, how.accum] = [batch / (micro * dp), `derived as ${batch} / (${micro} x ${dp})`];
  } else if (g.batch !== undefined) {
    batch = g.batch;
    if (g.accum === undefined) [accum, how.accum] = [1, "default"];
    else accum = g.accum;
    [micro, how.micro] = [batch / (accum * dp), `derived as ${batch} / (${accum} x ${dp})`];
  } else {
    if (g.micro === undefined) [micro, how.micro] = [8, "default"];
    else micro = g.micro;
    if (g.accum === undefined) [accum, how.accum] = [1, "default"];
    else accum = g.accum;
    [batch, how.batch] = [micro * accum * dp, "derived"];
  }
  if (!Number.isInteger(micro) || !Number.isInteger(accum) || batch !== micro * accum * dp) {
    const other = g.micro !== undefined
      ? ["train_micro_batch_size_per_gpu", micro]
      : ["gradient_accumulation_steps", accum];
    const fix = g.micro !== undefined && g.accum !== undefined
      ? "change one of the three, or leave one out to have it derived"
      : `give a train_batch_size that is a multiple of ${other[0]} x data_parallel_size ` +
        `(${Number(other[1]) * dp}), or another ${other[0]}`;
    throw new RangeError(
      `Batch sizes do not fit: train_batch_size (${batch}, ${how.batch}) must equal ` +
        `train_micro_batch_size_per_gpu (${micro}, ${how.micro}) x ` +
        `gradient_accumulation_steps (${accum}, ${how.accum}) x ` +
        `data_parallel_size (${dp}, ${dpGiven ? "given" : "default"}): ${fix}`,
    );
  }
  return { batch, micro, accum };
}

function resolveOptimizer(
  c: Obj,
  ignored: string[],
): { lr: number; lrGiven: boolean; o: ResolvedEngineConfig["optimizer"] } {
  const opt = obj("optimizer", c.optimizer) ?? { type: "AdamW" };
  unknownKeys("optimizer", opt, ["type", "params"]);
  if (typeof opt.type !== "string") {
    throw new TypeError(
      `Config "optimizer.type" must be a string such as "AdamW", got ${JSON.stringify(opt.type)}`,
    );
  }
  const type = opt.type.toLowerCase();
  if (type !== "adamw" && type !== "adam" && type !== "sgd") {
    throw new RangeError(`Unknown optimizer type "${opt.type}": use "AdamW", "Adam" or "SGD"`);
  }
  const kind = type === "sgd" ? "sgd" : "adamw";
  const p = obj("optimizer.params", opt.params) ?? {};
  if (p.max_grad_norm !== undefined) {
    throw new TypeError(
      `Config "optimizer.params.max_grad_norm" is not an optimizer parameter (DeepSpeed refuses ` +
        `it too): set the top-level "gradient_clipping" instead`,
    );
  }
  unknownKeys(
    "optimizer.params",
    p,
    words(
      kind === "sgd"
        ? "lr momentum weight_decay"
        : "lr betas eps weight_decay torch_adam adam_w_mode bias_correction amsgrad",
    ),
  );
  const lr = num("optimizer.params.lr", p.lr, 0, 10, 1e-3);
  if (p.betas !== undefined && (!Array.isArray(p.betas) || p.betas.length !== 2)) {
    throw new TypeError(
      `Config "optimizer.params.betas" must be [beta1, beta2], got ${JSON.stringify(p.betas)}`,
    );
  }
  const betas = p.betas as unknown[] | undefined;
  const torchAdam = bool("optimizer.params.torch_adam", p.torch_adam, false);
  const adamW = bool("optimizer.params.adam_w_mode", p.adam_w_mode, true);
  if (type === "adam" && !adamW) {
    throw new RangeError(
      `Config "optimizer.params.adam_w_mode" false with type "Adam" asks for Adam with L2 ` +
        `regularisation (the weight decay added to the gradient), which Loom does not have: ` +
        `set adam_w_mode to true (AdamW's decoupled weight decay, DeepSpeed's default) or use ` +
        `type "AdamW"`,
    );
  }
  listKnobs(ignored, "optimizer.params", p, {
    adam_w_mode: "bool",
    bias_correction: { only: true, why: "Loom's AdamW always corrects the moments' bias" },
    amsgrad: { only: false, why: "Loom's AdamW has no AMSGrad: remove the key" },
  });
  // torch_adam only changes the default weight decay.
  if (p.torch_adam !== undefined && p.weight_decay !== undefined) {
    ignored.push("optimizer.params.torch_adam");
  }
  // DeepSpeed's fused Adam decays by 0 by default, PyTorch's AdamW (torch_adam) by 0.01.
  const decay = kind === "sgd" ? 0 : torchAdam ? 0.01 : 0;
  return {
    lr,
    lrGiven: p.lr !== undefined,
    o: {
      kind,
      beta1: num("optimizer.params.betas[0]", betas?.[0], 0, 0.999999, 0.9),
      beta2: num("optimizer.params.betas[1]", betas?.[1], 0, 0.999999999, 0.999),
      eps: num("optimizer.params.eps", p.eps, 0, 1, 1e-8),
      weightDecay: num("optimizer.params.weight_decay", p.weight_decay, 0, 10, decay),
      momentum: num("optimizer.params.momentum", p.momentum, 0, 1, 0.9),
    },
  };
}

const WARMUP_LR = "warmup_min_lr warmup_max_lr warmup_num_steps warmup_type last_batch_iteration";
const LOOM_SCHEDULE = "warmup_num_steps total_num_steps cos_min_ratio warmup_max_lr warmup_type";
const SCHEDULER_PARAMS: Readonly<Record<string, readonly string[]>> = {
  WarmupLR: words(WARMUP_LR),
  WarmupDecayLR: words(`total_num_steps ${WARMUP_LR}`),
  WarmupCosineLR: words(
    "total_num_steps warmup_min_ratio warmup_num_steps cos_min_ratio warmup_type " +
      "last_batch_iteration",
  ),
  cosine: words(LOOM_SCHEDULE),
  linear: words(LOOM_SCHEDULE),
  constant: words(LOOM_SCHEDULE),
};

function resolveScheduler(
  c: Obj,
  opt: { lr: number; lrGiven: boolean },
  ignored: string[],
): Schedule {
  const sch = obj("scheduler", c.scheduler);
  // No scheduler: DeepSpeed keeps the optimizer's rate.
  if (sch === undefined) return { kind: "constant", lr: opt.lr, warmup: 0, totalSteps: 1 };
  unknownKeys("scheduler", sch, ["type", "params"]);
  const type = sch.type;
  if (typeof type !== "string" || !Object.hasOwn(SCHEDULER_PARAMS, type)) {
    throw new RangeError(
      `Unknown scheduler type ${JSON.stringify(type)}: use DeepSpeed's WarmupCosineLR, ` +
        `WarmupDecayLR or WarmupLR, or Loom's cosine, linear or constant`,
    );
  }
  const sp = obj("scheduler.params", sch.params) ?? {};
  const allowed = SCHEDULER_PARAMS[type]!;
  for (const k of Object.keys(sp)) {
    if (allowed.includes(k)) continue;
    const owners = Object.keys(SCHEDULER_PARAMS).filter((t) => SCHEDULER_PARAMS[t]!.includes(k));
    throw new TypeError(
      `Config "scheduler.params.${k}" is not a parameter of ${type}` +
        (owners.length ? ` (it is one of ${owners.join(", ")})` : "") +
        `: ${type} takes ${allowed.join(", ")}` +
        (type === "WarmupCosineLR" && k === "warmup_max_lr"
          ? "; WarmupCosineLR peaks at optimizer.params.lr"
          : ""),
    );
  }
  if (sp.last_batch_iteration !== undefined) {
    if (sp.last_batch_iteration !== -1) {
      throw new RangeError(
        `Config "scheduler.params.last_batch_iteration" must be -1 (a fresh start), got ` +
          `${JSON.stringify(sp.last_batch_iteration)}: resume a run from its checkpoint instead`,
      );
    }
    ignored.push("scheduler.params.last_batch_iteration");
  }
  const overridden = () => opt.lrGiven && ignored.push("optimizer.params.lr");

  if (type === "cosine" || type === "linear" || type === "constant") {
    if (sp.warmup_type !== undefined && sp.warmup_type !== "linear") {
      throw new RangeError(
        `Config "scheduler.params.warmup_type" must be "linear" for Loom's ${type}, got ` +
          `${JSON.stringify(sp.warmup_type)}: use DeepSpeed's Warmup* types for a log warmup`,
      );
    }
    if (sp.warmup_type !== undefined) ignored.push("scheduler.params.warmup_type");
    if (sp.warmup_max_lr !== undefined) overridden();
    const peak = num("scheduler.params.warmup_max_lr", sp.warmup_max_lr, 0, 10, opt.lr);
    const warmup = int("scheduler.params.warmup_num_steps", sp.warmup_num_steps, 0, 0);
    const totalSteps = type === "constant"
      ? int("scheduler.params.total_num_steps", sp.total_num_steps, 1, Math.max(1, warmup))
      : int("scheduler.params.total_num_steps", sp.total_num_steps, 1);
    const ratio = num("scheduler.params.cos_min_ratio", sp.cos_min_ratio, 0, 1, 0.1);
    if (type !== "cosine" && sp.cos_min_ratio !== undefined) {
      ignored.push("scheduler.params.cos_min_ratio");
    }
    if (type === "constant" && sp.total_num_steps !== undefined) {
      ignored.push("scheduler.params.total_num_steps");
    }
    return {
      kind: type,
      lr: peak,
      warmup,
      totalSteps,
      minLr: type === "cosine" ? peak * ratio : 0,
    };
  }

  const wt = sp.warmup_type ?? "log";
  if (wt !== "log" && wt !== "linear") {
    throw new RangeError(
      `Config "scheduler.params.warmup_type" must be "log" or "linear", got ${JSON.stringify(wt)}`,
    );
  }
  const warmupType = wt as WarmupType;
  // DeepSpeed refuses 0; Loom takes it as no warmup (train.ts gives 0 for short runs).
  const warmup = int("scheduler.params.warmup_num_steps", sp.warmup_num_steps, 0, 1000);
  if (type === "WarmupCosineLR") {
    return {
      kind: type,
      lr: opt.lr,
      warmup,
      warmupType,
      totalSteps: int("scheduler.params.total_num_steps", sp.total_num_steps, 1),
      warmupMinRatio: num("scheduler.params.warmup_min_ratio", sp.warmup_min_ratio, 0, 1, 0),
      cosMinRatio: num("scheduler.params.cos_min_ratio", sp.cos_min_ratio, 0, 1, 0.0001),
    };
  }
  // WarmupLR takes the optimizer's rate by default (DeepSpeed since #7360, June 2025);
  // WarmupDecayLR keeps its own default of 0.001, so the optimizer's rate goes unused then.
  if (sp.warmup_max_lr !== undefined || type === "WarmupDecayLR") overridden();
  const peak = num(
    "scheduler.params.warmup_max_lr",
    sp.warmup_max_lr,
    0,
    10,
    type === "WarmupLR" ? opt.lr : 0.001,
  );
  const minLr = num("scheduler.params.warmup_min_lr", sp.warmup_min_lr, 0, 10, 0);
  if (type === "WarmupLR") return { kind: type, lr: peak, minLr, warmup, warmupType };
  return {
    kind: "WarmupDecayLR",
    lr: peak,
    minLr,
    warmup,
    warmupType,
    totalSteps: int("scheduler.params.total_num_steps", sp.total_num_steps, 1),
  };
}

function resolvePrecision(c: Obj, ignored: string[]): {
  precision: ResolvedEngineConfig["precision"];
  lossScaler: ResolvedEngineConfig["lossScaler"];
} {
  const f = obj("fp16", c.fp16);
  unknownKeys(
    "fp16",
    f,
    words(`enabled auto_cast loss_scale initial_scale_power loss_scale_window hysteresis
      consecutive_hysteresis min_loss_scale fp16_master_weights_and_grads`),
  );
  if (c.bf16 !== undefined && c.bfloat16 !== undefined) {
    throw new TypeError(`Config has both "bf16" and its old name "bfloat16": keep "bf16"`);
  }
  const bWhere = c.bfloat16 !== undefined ? "bfloat16" : "bf16";
  const b = obj(bWhere, c.bf16 ?? c.bfloat16);
  unknownKeys(bWhere, b, ["enabled", "bf16_master_weights_and_grads", "bf16_optimizer_states"]);
  const fp16 = bool("fp16.enabled", f?.enabled, false);
  const bf16 = bool(`${bWhere}.enabled`, b?.enabled, false);
  if (fp16 && bf16) {
    throw new RangeError(
      `fp16.enabled and ${bWhere}.enabled are both true (DeepSpeed refuses that too): ` +
        `enable one of them`,
    );
  }
  const fp32 = "Loom keeps master weights, gradients and optimizer state in fp32";
  listKnobs(ignored, bWhere, b, {
    bf16_master_weights_and_grads: { only: false, why: fp32 },
    bf16_optimizer_states: { only: false, why: fp32 },
  });
  listKnobs(ignored, "fp16", f, {
    auto_cast: "bool",
    fp16_master_weights_and_grads: { only: false, why: fp32 },
  });
  const lossScale = num("fp16.loss_scale", f?.loss_scale, 0, Number.MAX_VALUE, 0);
  const power = int("fp16.initial_scale_power", f?.initial_scale_power, 0, 16);
  if (power > 1023) {
    throw new RangeError(`Config "fp16.initial_scale_power" must be at most 1023, got ${power}`);
  }
  const scaler = {
    dynamic: lossScale === 0,
    initialScale: lossScale === 0 ? 2 ** power : lossScale,
    window: int("fp16.loss_scale_window", f?.loss_scale_window, 1, 1000),
    hysteresis: int("fp16.hysteresis", f?.hysteresis, 1, 2),
    consecutiveHysteresis: bool("fp16.consecutive_hysteresis", f?.consecutive_hysteresis, false),
    minScale: num("fp16.min_loss_scale", f?.min_loss_scale, Number.MIN_VALUE, Infinity, 1),
  };
  // With fp16 off nothing of the block acts; with a static scale, only the scale does.
  const acts = !fp16 ? [] : lossScale !== 0 ? ["loss_scale"] : [
    "loss_scale",
    "initial_scale_power",
    "loss_scale_window",
    "hysteresis",
    "consecutive_hysteresis",
    "min_loss_scale",
  ];
  for (const k of Object.keys(f ?? {})) {
    if (k !== "enabled" && !acts.includes(k) && !ignored.includes(`fp16.${k}`)) {
      ignored.push(`fp16.${k}`);
    }
  }
  return {
    precision: fp16 ? "fp16" : bf16 ? "bf16" : "fp32",
    lossScaler: fp16 ? scaler : null,
  };
}

const OFFLOAD_KNOBS: Readonly<Record<string, Record<string, Knob>>> = {
  offload_param: {
    nvme_path: "str?",
    pin_memory: "bool",
    buffer_count: "int",
    buffer_size: "int",
    max_in_cpu: "int",
  },
  offload_optimizer: {
    nvme_path: "str?",
    pin_memory: "bool",
    buffer_count: "int",
    pipeline_read: "bool",
    pipeline_write: "bool",
    fast_init: "bool",
    ratio: "num",
    super_offload: "bool",
    cpuadam_cores_perc: "num",
  },
};

const OFFLOAD_FIX = "Loom has no CPU or NVMe offload (it already runs on the host): drop the " +
  'block or set its device to "none"; ZeRO stage 3 already shards the optimizer state, the ' +
  "gradients and the parameters across the data-parallel ranks";

/** DeepSpeed's ZeRO knobs that do not change what runs here. */
const ZERO_KNOBS: Readonly<Record<string, Knob>> = {
  contiguous_gradients: "bool",
  sub_group_size: "int",
  round_robin_gradients: "bool",
  load_from_fp32_weights: "bool",
  ignore_unused_parameters: "bool",
  use_multi_rank_bucket_allreduce: "bool",
  elastic_checkpoint: "bool",
  log_trace_cache_warnings: "bool",
  memory_efficient_linear: "bool",
  override_module_apply: "bool",
  enable_sanity_checks: "bool",
  zero_hpz_partition_size: "int",
  cpu_offload_use_pin_memory: "bool",
  cpu_offload: { only: false, why: OFFLOAD_FIX },
  cpu_offload_param: { only: false, why: OFFLOAD_FIX },
  zero_quantized_weights: { only: false, why: "Loom does not quantize the ZeRO all-gathers" },
  zero_quantized_nontrainable_weights: {
    only: false,
    why: "Loom does not quantize frozen weights",
  },
  zero_quantized_gradients: { only: false, why: "Loom does not quantize the ZeRO gradients" },
};

/** Stage-3 knobs that go by two names, and do not change what runs here. */
const ZERO3_KNOBS: readonly (readonly [string, string, Knob])[] = [
  ["stage3_max_reuse_distance", "max_reuse_distance", "int"],
  ["stage3_model_persistence_threshold", "model_persistence_threshold", "int"],
  ["stage3_module_granularity_threshold", "module_granularity_threshold", "int"],
  ["stage3_use_all_reduce_for_fetch_params", "use_all_reduce_for_fetch_params", "bool"],
  ["stage3_allgather_sequential", "allgather_sequential", "bool"],
];

/** Acted-on stage-3 keys and their other names. */
const ZERO3_NAMES = {
  prefetch: ["stage3_prefetch_bucket_size", "prefetch_bucket_size"],
  persistence: ["stage3_param_persistence_threshold", "param_persistence_threshold"],
  maxLive: ["stage3_max_live_parameters", "max_live_parameters"],
  gather: [
    "stage3_gather_16bit_weights_on_model_save",
    "gather_16bit_weights_on_model_save",
    "stage3_gather_fp16_weights_on_model_save",
  ],
} as const;

function resolveZero(c: Obj, pp: number, ignored: string[]): ResolvedEngineConfig["zero"] {
  const z = obj("zero_optimization", c.zero_optimization) ?? {};
  const W = "zero_optimization";
  unknownKeys(W, z, [
    "stage",
    "reduce_bucket_size",
    "allgather_bucket_size",
    "overlap_comm",
    "reduce_scatter",
    "allgather_partitions",
    ...Object.values(ZERO3_NAMES).flat(),
    "offload_optimizer",
    "offload_param",
    ...Object.keys(ZERO_KNOBS),
    ...ZERO3_KNOBS.flatMap(([a, b]) => [a, b]),
  ]);
  const stage = int(`${W}.stage`, z.stage, 0, 0);
  if (stage > 3) {
    throw new RangeError(`Config "${W}.stage" must be 0, 1, 2 or 3, got ${stage}`);
  }
  if (stage === 3 && pp > 1) {
    throw new RangeError(
      `Config "${W}.stage" 3 shards the parameters, which does not combine with ` +
        `pipeline_model_parallel_size=${pp} (DeepSpeed refuses ZeRO-3 with pipeline ` +
        `parallelism too): use ZeRO stage 1 or 2, which work with pipeline parallelism, or ` +
        `pipeline_model_parallel_size 1`,
    );
  }
  for (const block of ["offload_optimizer", "offload_param"] as const) {
    const where = `${W}.${block}`;
    const o = obj(where, z[block]);
    if (o === undefined) continue;
    unknownKeys(where, o, ["device", ...Object.keys(OFFLOAD_KNOBS[block]!)]);
    const device = o.device ?? "none";
    if (typeof device !== "string") {
      throw new TypeError(
        `Config "${where}.device" must be a string, got ${JSON.stringify(device)}`,
      );
    }
    if (device !== "none") {
      if (device !== "cpu" && device !== "nvme") {
        throw new RangeError(
          `Config "${where}.device" must be "none", "cpu" or "nvme", got "${device}"`,
        );
      }
      throw new RangeError(`Config "${where}.device" is "${device}": ${OFFLOAD_FIX}`);
    }
    if (o.device !== undefined) ignored.push(`${where}.device`);
    listKnobs(ignored, where, o, OFFLOAD_KNOBS[block]!);
  }
  listKnobs(ignored, W, z, ZERO_KNOBS);
  for (const [a, b, kind] of ZERO3_KNOBS) {
    aliased(W, z, [a, b]);
    listKnobs(ignored, W, z, { [a]: kind, [b]: kind });
  }
  const size = (names: readonly string[], dflt: number) =>
    int(`${W}.${names.find((n) => z[n] !== undefined) ?? names[0]}`, aliased(W, z, names), 0, dflt);
  const gather = ZERO3_NAMES.gather.find((n) => z[n] !== undefined) ?? ZERO3_NAMES.gather[0];
  // Read and checked, but they change nothing here: parameters are all-gathered bucket by
  // bucket (the gradient buckets), reduction is always a reduce-scatter and gathering an
  // all-gather (the same numbers either way), and a save always gathers every tensor whole
  // (the fp32 master weights).
  for (const k of ["allgather_bucket_size", "reduce_scatter", "allgather_partitions", gather]) {
    if (z[k] !== undefined) ignored.push(`${W}.${k}`);
  }
  return {
    stage: stage as 0 | 1 | 2 | 3,
    reduceBucketSize: int(`${W}.reduce_bucket_size`, z.reduce_bucket_size, 0, 2 ** 20),
    allgatherBucketSize: int(`${W}.allgather_bucket_size`, z.allgather_bucket_size, 0, 2 ** 20),
    // DeepSpeed's default overlaps at stage 3 only.
    overlapComm: bool(`${W}.overlap_comm`, z.overlap_comm, stage === 3),
    reduceScatter: bool(`${W}.reduce_scatter`, z.reduce_scatter, true),
    allgatherPartitions: bool(`${W}.allgather_partitions`, z.allgather_partitions, true),
    prefetchBucketSize: size(ZERO3_NAMES.prefetch, 2 ** 22),
    paramPersistenceThreshold: size(ZERO3_NAMES.persistence, 1e5),
    maxLiveParameters: size(ZERO3_NAMES.maxLive, 2 ** 24),
    gather16bitWeightsOnModelSave: bool(
      `${W}.${gather}`,
      aliased(W, z, ZERO3_NAMES.gather),
      false,
    ),
  };
}

function resolveCheckpointing(c: Obj, ignored: string[]): number {
  const a = obj("activation_checkpointing", c.activation_checkpointing);
  if (a === undefined) return 0;
  const knobs: Record<string, Knob> = {
    partition_activations: "bool",
    cpu_checkpointing: "bool",
    contiguous_memory_optimization: "bool",
    number_checkpoints: "int?",
    synchronize_checkpoint_boundary: "bool",
    profile: "bool",
  };
  unknownKeys("activation_checkpointing", a, ["every_n_blocks", ...Object.keys(knobs)]);
  listKnobs(ignored, "activation_checkpointing", a, knobs);
  return int("activation_checkpointing.every_n_blocks", a.every_n_blocks, 0, 1);
}

/**
 * Validate a configuration and fill in its defaults, as DeepSpeed reads its JSON config.
 *
 * The batch sizes follow DeepSpeed: `train_batch_size = train_micro_batch_size_per_gpu *
 * gradient_accumulation_steps * data_parallel_size`; give any two and the third is derived
 * (give only `train_batch_size` and the accumulation is 1).
 *
 * The learning rate: for WarmupLR and WarmupDecayLR the scheduler's `warmup_max_lr` wins over
 * `optimizer.params.lr`, as in DeepSpeed (its scheduler writes its rate into the optimizer);
 * WarmupLR without `warmup_max_lr` takes the optimizer's `lr`, WarmupDecayLR takes 0.001.
 * WarmupCosineLR has no rate of its own and scales the optimizer's `lr`. An `lr` that the
 * scheduler overrides is listed in `ignoredKeys`.
 *
 * Values DeepSpeed defaults differently: `gradient_clipping` defaults to 0 (no clipping; newer
 * DeepSpeed clips at 1.0), ZeRO's bucket sizes to 2^20 elements (DeepSpeed: 5e8), and
 * `steps_per_print` to 10, the documented value.
 *
 * @example
 * ```ts
 * import { resolveEngineConfig } from "./config.ts";
 * const c = resolveEngineConfig({
 *   model: { vocab: 12, ctx: 11, dim: 32, layers: 1, heads: 2 },
 *   train_batch_size: 64,
 *   gradient_accumulation_steps: 2,
 *   scheduler: { type: "WarmupCosineLR", params: { total_num_steps: 100 } },
 *   zero_optimization: { stage: 2, contiguous_gradients: true },
 * });
 * console.assert(c.microBatch === 32 && c.schedule.kind === "WarmupCosineLR");
 * console.assert(c.zero.stage === 2 && c.ignoredKeys[0] === "zero_optimization.contiguous_gradients");
 * ```
 *
 * @param config the configuration
 * @param opts the values of keys written `"auto"`
 * @returns the resolved configuration
 * @throws {TypeError} for an unknown key, a value of the wrong type or an unfilled `"auto"`
 * @throws {RangeError} for a value out of range, a setting Loom does not have, or sizes that
 *   do not fit together
 */
export function resolveEngineConfig(
  config: EngineConfig,
  opts: ResolveOptions = {},
): ResolvedEngineConfig {
  if (config === null || typeof config !== "object" || Array.isArray(config)) {
    throw new TypeError(`The config must be an object, got ${JSON.stringify(config)}`);
  }
  unknownKeys("", config as unknown as Obj, TOP_KEYS);
  const c = fillAuto(config, opts.auto) as unknown as Obj;
  if (c.model === undefined) {
    throw new TypeError('Config needs "model": { vocab, ctx, dim, layers, heads }');
  }
  const ignored: string[] = [];
  const model = resolveGptConfig(c.model as GptConfig);

  const tpKey = "tensor_model_parallel_size";
  let tp = int(tpKey, c[tpKey], 1, 1);
  const autotp = obj("tensor_parallel", c.tensor_parallel);
  unknownKeys("tensor_parallel", autotp, ["autotp_size"]);
  if (autotp?.autotp_size !== undefined) {
    const n = int("tensor_parallel.autotp_size", autotp.autotp_size, 0);
    if (n >= 1 && c[tpKey] !== undefined && n !== tp) {
      throw new RangeError(
        `Config "tensor_parallel.autotp_size" (${n}) and "${tpKey}" (${tp}) are both the ` +
          `tensor-parallel size: give one of them`,
      );
    }
    if (n > 1) tp = n;
  }
  const pp = int("pipeline_model_parallel_size", c.pipeline_model_parallel_size, 1, 1);
  const dp = int("data_parallel_size", c.data_parallel_size, 1, 1);
  const virtualStages = int(
    "virtual_pipeline_model_parallel_size",
    c.virtual_pipeline_model_parallel_size,
    1,
    1,
  );
  const spFlag = bool("sequence_parallel", c.sequence_parallel, false);
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

  const { batch, micro, accum } = batchSizes(c, dp, c.data_parallel_size !== undefined);
  const clip = num("gradient_clipping", c.gradient_clipping, 0, Infinity, 0);
  const opt = resolveOptimizer(c, ignored);
  const schedule = resolveScheduler(c, opt, ignored);
  const { precision, lossScaler } = resolvePrecision(c, ignored);
  const zero = resolveZero(c, pp, ignored);
  const checkpointActivations = resolveCheckpointing(c, ignored);
  listKnobs(ignored, "", c, {
    prescale_gradients: "bool",
    gradient_predivide_factor: "num",
    zero_allow_untested_optimizer: "bool",
  });
  const dropout = num("dropout", c.dropout, 0, 1, 0);
  if (dropout === 1) {
    throw new RangeError(`Config "dropout" must be below 1 (1 drops everything), got 1`);
  }
  const lossScaling: LossScalerOptions | null = lossScaler
    ? {
      initialScale: lossScaler.initialScale,
      growthInterval: lossScaler.window,
      minScale: lossScaler.minScale,
      ...(lossScaler.dynamic ? {} : { dynamic: false }),
    }
    : null;
  return {
    model,
    batchSize: batch,
    microBatch: micro,
    accumulation: accum,
    clip,
    optimizer: opt.o,
    schedule,
    lossScaling,
    seed: int("seed", c.seed, 0, 0),
    tp,
    pp,
    dp,
    virtualStages,
    sequenceParallel: spFlag && tp > 1,
    zero,
    precision,
    lossScaler,
    checkpointActivations,
    dropout,
    stepsPerPrint: int("steps_per_print", c.steps_per_print, 1, 10),
    wallClockBreakdown: bool("wall_clock_breakdown", c.wall_clock_breakdown, false),
    ignoredKeys: ignored,
  };
}
