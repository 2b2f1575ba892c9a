/**
 * The main job: train a GPT on the embedded default task (multi-digit addition, scored by
 * exact match on held-out problems) or on any UTF-8 text file, on one rank or on many (tensor,
 * sequence, pipeline and data parallel): Workers of this process, or a job of several processes
 * and nodes started with node flags, torchrun, srun or mpirun.
 *
 * ```sh
 * deno run -A train.ts                              # the default: learns 3-digit addition
 * deno run -A train.ts --tp 2 --pp 2                # the same on 4 ranks (tensor x pipeline)
 * deno run -A train.ts --nnodes 2 --node-rank 0 --nproc-per-node 2 --master-addr 10.0.0.1
 * deno run -A train.ts --data book.txt --ctx 128    # a character-level model of a text
 * deno run -A train.ts --resume runs/add-...        # continue a saved run
 * deno run -A train.ts --help                       # every option, with defaults
 * ```
 *
 * Each run writes to its `--out` directory: `metrics.jsonl`, `summary.json`, `report.html` (see
 * engine/report.ts; `ranks.jsonl` holds what it draws of every rank), and its checkpoints
 * (`checkpoints/step-<N>/`, one shard per rank, the last `--keep` of them, and `latest` naming
 * the newest).
 *
 * @module
 */
import { parseArgs } from "node:util";
import {
  AdditionTask,
  type Dataset,
  describeDataset,
  loadTextDataset,
  TOKENIZER_KINDS,
  tokenizerFromJSON,
  type TokenizerJSON,
} from "./data/mod.ts";
import { RankFailedError } from "./collectives/world.ts";
import { CollectiveError } from "./collectives/communicator.ts";
import { chooseTransport, type LaunchConfig, parseLaunch } from "./collectives/launch.ts";
import {
  checkParallelLayout,
  checkpointRunDir,
  type EngineConfig,
  fillAuto,
  readCheckpointConfig,
  resolveEngineConfig,
  runTraining,
  type TrainSummary,
  watchSignals,
} from "./engine/mod.ts";
import { SCHEDULE_KINDS } from "./optim/mod.ts";
import { checkModelLayout, type ScheduleName } from "./parallel/mod.ts";

export type { TrainSummary };

const PIPELINE_SCHEDULES: readonly ScheduleName[] = ["none", "gpipe", "1f1b", "interleaved"];

type Kind = "int" | "float" | "string" | "bool";
interface OptionSpec {
  kind: Kind;
  dflt: string | number | boolean | null;
  help: string;
  choices?: readonly string[];
  /** Saved with the run and taken from it on --resume. */
  saved?: boolean;
}

/** Every option of train.ts, its type, default and help (also what --help prints). */
const OPTIONS: Record<string, OptionSpec> = {
  dim: { kind: "int", dflt: 64, help: "model width", saved: true },
  layers: { kind: "int", dflt: 2, help: "transformer blocks", saved: true },
  heads: { kind: "int", dflt: 8, help: "attention heads (must divide --dim)", saved: true },
  ctx: {
    kind: "int",
    dflt: null,
    help: "context length (default: the task's 11 for addition, 64 with --data)",
    saved: true,
  },
  batch: { kind: "int", dflt: 128, help: "sequences per optimizer step", saved: true },
  accum: {
    kind: "int",
    dflt: 1,
    help: "gradient accumulation: micro-batches per step (must divide --batch)",
    saved: true,
  },
  steps: { kind: "int", dflt: 2500, help: "total optimizer steps of the run", saved: true },
  lr: {
    kind: "float",
    dflt: null,
    help: "peak learning rate (default: 0.01 for addition, 0.003 with --data)",
    saved: true,
  },
  schedule: {
    kind: "string",
    dflt: "cosine",
    help: "learning-rate schedule after warmup (gpipe, 1f1b or interleaved here mean " +
      "--pipeline-schedule)",
    choices: [...SCHEDULE_KINDS, ...PIPELINE_SCHEDULES.filter((n) => n !== "none")],
    saved: true,
  },
  warmup: {
    kind: "int",
    dflt: 200,
    help: "warmup steps, linear (at most a tenth of --steps unless given)",
    saved: true,
  },
  "min-lr-ratio": {
    kind: "float",
    dflt: 0.05,
    help: "cosine floor as a fraction of --lr",
    saved: true,
  },
  optimizer: {
    kind: "string",
    dflt: "adamw",
    help: "optimizer",
    choices: ["adamw", "sgd"],
    saved: true,
  },
  "weight-decay": {
    kind: "float",
    dflt: 0.1,
    help: "decoupled weight decay (2-D weights only)",
    saved: true,
  },
  clip: {
    kind: "float",
    dflt: 1,
    help: "clip gradients to this global norm (0: off)",
    saved: true,
  },
  seed: { kind: "int", dflt: 0, help: "seed of initialisation and data order", saved: true },
  data: {
    kind: "string",
    dflt: null,
    help: "a UTF-8 text file to train on (default: the embedded addition task)",
    saved: true,
  },
  tokenizer: {
    kind: "string",
    dflt: "char",
    help: "tokenizer for --data",
    choices: TOKENIZER_KINDS,
    saved: true,
  },
  digits: { kind: "int", dflt: 3, help: "digits per operand of the addition task", saved: true },
  tp: { kind: "int", dflt: 1, help: "tensor-parallel ranks (must divide --heads)" },
  pp: { kind: "int", dflt: 1, help: "pipeline stages (must divide --layers)" },
  dp: {
    kind: "int",
    dflt: 1,
    help: "data-parallel replicas; the run starts tp * pp * dp ranks as Workers (in a job of " +
      "several processes or nodes: default and must be its ranks / (tp * pp))",
  },
  "virtual-stages": {
    kind: "int",
    dflt: 1,
    help: "model chunks per pipeline stage (interleaved 1F1B when > 1)",
  },
  "pipeline-schedule": {
    kind: "string",
    dflt: null,
    help: "pipeline schedule (default: 1f1b, interleaved with --virtual-stages > 1)",
    choices: PIPELINE_SCHEDULES,
  },
  "sequence-parallel": {
    kind: "bool",
    dflt: false,
    help: "sequence parallelism with --tp (the sequence length must be a multiple of --tp)",
  },
  "micro-batches": {
    kind: "int",
    dflt: null,
    help: "micro-batches per step on each pipeline (default: 4 * --pp with --pp > 1, else " +
      "--accum); --batch must be a multiple of micro-batches * --dp",
  },
  "zero-stage": {
    kind: "int",
    dflt: 0,
    help: "ZeRO stage over the data-parallel ranks: 1 shards the optimizer state, 2 also the " +
      "gradients, 3 also the parameters (DeepSpeed's zero_optimization.stage)",
    saved: true,
  },
  precision: {
    kind: "string",
    dflt: "fp32",
    help: "storage of parameters used in compute, activations, gradients and the wire: fp16 " +
      "(with dynamic loss scaling) and bf16 keep fp32 master weights and optimizer state",
    choices: ["fp32", "fp16", "bf16"],
    saved: true,
  },
  "checkpoint-activations": {
    kind: "int",
    dflt: 0,
    help: "activation checkpointing: recompute every N-th block in backward (the flag alone " +
      "means every block; 0: off)",
    saved: true,
  },
  dropout: {
    kind: "float",
    dflt: 0,
    help: "dropout probability on embeddings, attention probabilities and residual branches " +
      "(masks are a function of position, so every layout drops the same elements)",
    saved: true,
  },
  backend: {
    kind: "string",
    dflt: "auto",
    help: "compute backend (auto: WebGPU on a hardware adapter, else CPU)",
    choices: ["auto", "cpu", "webgpu"],
  },
  gemm: {
    kind: "string",
    dflt: "auto",
    help: "CPU matrix-product path",
    choices: ["auto", "blas", "wasm", "ts"],
  },
  threads: {
    kind: "int",
    dflt: 0,
    help: "BLAS threads of each rank (0: the machine's cores shared between the ranks on it)",
  },
  config: {
    kind: "string",
    dflt: null,
    help: "a JSON file of engine settings with DeepSpeed's keys (fp16, gradient_clipping, " +
      "optimizer, scheduler, ...) that override the flags",
    saved: true,
  },
  out: { kind: "string", dflt: null, help: "run directory (default: runs/<task>-<time>)" },
  resume: { kind: "string", dflt: null, help: "continue the run saved in this directory" },
  "eval-every": {
    kind: "int",
    dflt: 250,
    help: "evaluate (validation loss, held-out score) every N steps (0: only at the end)",
  },
  "save-every": {
    kind: "int",
    dflt: 0,
    help: "also checkpoint every N steps (0: only at the end)",
  },
  keep: { kind: "int", dflt: 2, help: "checkpoints to keep in --out (0: every one)" },
  "stop-after": {
    kind: "int",
    dflt: 0,
    help: "stop (and checkpoint) after this step, keeping the --steps schedule (0: run to the end)",
  },
  nnodes: {
    kind: "int",
    dflt: null,
    help: "nodes of the job: start this same command on each with its --node-rank (torchrun, " +
      "srun and mpirun set the job from their environment instead)",
  },
  "node-rank": { kind: "int", dflt: null, help: "this node's index in 0..nnodes-1" },
  "nproc-per-node": {
    kind: "int",
    dflt: null,
    help: "ranks per node (Workers of this process over shared memory; nodes talk over TCP)",
  },
  "master-addr": {
    kind: "string",
    dflt: null,
    help: "address of node 0 that every node can reach (MASTER_ADDR)",
  },
  "master-port": {
    kind: "int",
    dflt: null,
    help: "port global rank 0 listens on (MASTER_PORT; default 29500)",
  },
  temperature: {
    kind: "float",
    dflt: 0,
    help: "the end-of-run sample of a --data run: 0 takes the most likely token, above 0 samples",
  },
  "top-k": {
    kind: "int",
    dflt: 0,
    help: "with --temperature, sample among the k most likely tokens (0: all of them)",
  },
  dashboard: {
    kind: "int",
    dflt: null,
    help: "serve the live report on http://127.0.0.1:PORT/ while the run trains (0: any free port)",
  },
  transport: {
    kind: "string",
    dflt: null,
    help: "what the ranks of a job of one process per rank talk over: tcp or mpi (default: mpi " +
      "under mpirun when libmpi loads, else tcp)",
  },
  "max-restarts": {
    kind: "int",
    dflt: 0,
    help: "after a rank fails, start this node's ranks again from the last checkpoint, up to " +
      "N times (torchrun, srun and mpirun jobs: use the launcher's own restarts)",
  },
  timeout: {
    kind: "float",
    dflt: 60,
    help: "seconds a collective waits for a peer before every rank fails naming it",
  },
  quiet: { kind: "bool", dflt: false, help: "print only the summary" },
  help: { kind: "bool", dflt: false, help: "show this help" },
};

/** The parsed options, with defaults applied. */
export type TrainOptions = Record<string, string | number | boolean | null>;

/**
 * The --help text.
 *
 * @returns the text
 */
export function helpText(): string {
  const lines = [
    "Train a GPT with Loom on one rank, or on tp * pp * dp ranks: Workers of this process, or a",
    "job of several processes and nodes (node flags below, or torchrun, srun or mpirun).",
    "",
    "Usage: deno run -A train.ts [options]",
    "",
    "With no options it learns 3-digit addition (a task embedded in the code, no download) and",
    "reports exact-match accuracy on held-out problems.",
    "",
    "Options (--name value or --name=value):",
  ];
  const metavar: Record<string, string> = {
    data: "FILE",
    config: "FILE",
    out: "DIR",
    resume: "DIR",
  };
  for (const [name, o] of Object.entries(OPTIONS)) {
    const arg = o.kind === "bool"
      ? ""
      : ` ${metavar[name] ?? (o.choices ? o.choices.join("|") : o.kind.toUpperCase())}`;
    const d = o.dflt === null || o.kind === "bool" ? "" : ` (default: ${o.dflt})`;
    const flag = `  --${name}${arg}`;
    const text = `${o.help}${d}`;
    let line = flag.length <= 29 ? flag.padEnd(30) : (lines.push(flag), " ".repeat(30));
    for (const word of text.split(" ")) {
      if (line.length + word.length > 99 && line.trim() !== "") {
        lines.push(line.trimEnd());
        line = " ".repeat(30);
      }
      line += word + " ";
    }
    lines.push(line.trimEnd());
  }
  return lines.join("\n");
}

/**
 * Parse and check the command line. Unknown options, values of the wrong type and values out
 * of range are errors that name the option; nothing else happens before this succeeds.
 *
 * @param argv the arguments
 * @returns the options given (without defaults) and the options with defaults
 */
export function parseTrainArgs(argv: string[]): { given: TrainOptions; all: TrainOptions } {
  const spec: Record<string, { type: "string" | "boolean" }> = {};
  for (const [name, o] of Object.entries(OPTIONS)) {
    spec[name] = { type: o.kind === "bool" ? "boolean" : "string" };
  }
  // `--checkpoint-activations` alone means every block.
  const args = argv.flatMap((a, i) =>
    a === "--checkpoint-activations" && (i + 1 >= argv.length || argv[i + 1]!.startsWith("--"))
      ? [a, "1"]
      : [a]
  );
  let values: Record<string, string | boolean | undefined>;
  try {
    values = parseArgs({ args, options: spec, strict: true, allowPositionals: false }).values;
  } catch (e) {
    throw new TypeError(`${(e as Error).message}. Run with --help to see the options.`);
  }
  const given: TrainOptions = {};
  for (const [name, raw] of Object.entries(values)) {
    if (raw === undefined) continue;
    const o = OPTIONS[name];
    if (o.kind === "bool") {
      given[name] = raw as boolean;
    } else if (o.kind === "string") {
      const s = raw as string;
      if (o.choices && !o.choices.includes(s)) {
        throw new RangeError(`--${name} must be one of ${o.choices.join(", ")}, got "${s}"`);
      }
      if (s === "") throw new TypeError(`--${name} needs a value`);
      given[name] = s;
    } else {
      const s = (raw as string).trim();
      const v = Number(s);
      if (s === "" || !Number.isFinite(v) || (o.kind === "int" && !Number.isInteger(v))) {
        throw new TypeError(
          `--${name} expects ${o.kind === "int" ? "an integer" : "a number"}, got "${raw}"`,
        );
      }
      if (v < 0) throw new RangeError(`--${name} must not be negative, got ${v}`);
      given[name] = v;
    }
  }
  const all: TrainOptions = {};
  for (const [name, o] of Object.entries(OPTIONS)) all[name] = given[name] ?? o.dflt;
  if (given.schedule !== undefined && PIPELINE_SCHEDULES.includes(given.schedule as "1f1b")) {
    const p = given["pipeline-schedule"];
    if (p !== undefined && p !== given.schedule) {
      throw new RangeError(
        `--schedule ${given.schedule} and --pipeline-schedule ${p} disagree: give one of them`,
      );
    }
    given["pipeline-schedule"] = given.schedule;
    delete given.schedule;
    all["pipeline-schedule"] = given["pipeline-schedule"];
    all.schedule = OPTIONS.schedule.dflt;
  }
  for (
    const k of [
      "dim",
      "layers",
      "heads",
      "batch",
      "accum",
      "steps",
      "digits",
      "tp",
      "pp",
      "dp",
      "virtual-stages",
    ]
  ) {
    if ((all[k] as number) < 1) throw new RangeError(`--${k} must be at least 1, got ${all[k]}`);
  }
  if (
    all.dashboard !== null && ((all.dashboard as number) < 0 || (all.dashboard as number) > 65535)
  ) {
    throw new RangeError(`--dashboard must be a TCP port (0..65535), got ${all.dashboard}`);
  }
  if ((all.threads as number) < 0) {
    throw new RangeError(`--threads must be 0 (every core) or more, got ${all.threads}`);
  }
  if (given.ctx !== undefined && (given.ctx as number) < 1) {
    throw new RangeError(`--ctx must be at least 1, got ${given.ctx}`);
  }
  if ((all.batch as number) % (all.accum as number) !== 0) {
    throw new RangeError(`--batch ${all.batch} must be a multiple of --accum ${all.accum}`);
  }
  if ((all.dim as number) % (all.heads as number) !== 0) {
    throw new RangeError(`--dim ${all.dim} must be a multiple of --heads ${all.heads}`);
  }
  if (given.warmup === undefined) {
    all.warmup = Math.min(all.warmup as number, Math.floor((all.steps as number) / 10));
  }
  if ((all.warmup as number) >= (all.steps as number) && (all.warmup as number) > 0) {
    throw new RangeError(`--warmup ${all.warmup} must be less than --steps ${all.steps}`);
  }
  if (![0, 1, 2, 3].includes(all["zero-stage"] as number)) {
    throw new RangeError(`--zero-stage must be 0, 1, 2 or 3, got ${all["zero-stage"]}`);
  }
  if ((all.dropout as number) >= 1) {
    throw new RangeError(`--dropout must be a probability in [0, 1), got ${all.dropout}`);
  }
  if ((all["min-lr-ratio"] as number) > 1) {
    throw new RangeError(`--min-lr-ratio must be in [0, 1], got ${all["min-lr-ratio"]}`);
  }
  if (given["micro-batches"] !== undefined && (given["micro-batches"] as number) < 1) {
    throw new RangeError(`--micro-batches must be at least 1, got ${given["micro-batches"]}`);
  }
  const ranks = (all.tp as number) * (all.pp as number) * (all.dp as number);
  if (ranks > 1 && all.backend === "webgpu") {
    throw new RangeError(
      "A run over several ranks computes on the CPU backend: drop --backend webgpu (or use " +
        "--tp 1 --pp 1 --dp 1)",
    );
  }
  if (given.tokenizer !== undefined && given.data === undefined && given.resume === undefined) {
    throw new RangeError("--tokenizer applies to --data: give a text file with --data");
  }
  return { given, all };
}

/** Read a JSON file of engine settings and lay it over the flags' settings. */
async function readEngineConfigFile(
  path: string,
  base: EngineConfig,
): Promise<Partial<EngineConfig>> {
  let json: Record<string, unknown>;
  try {
    json = JSON.parse(await Deno.readTextFile(path));
  } catch (e) {
    throw new TypeError(`--config ${path}: ${(e as Error).message}`);
  }
  if (json === null || typeof json !== "object" || Array.isArray(json)) {
    throw new TypeError(`--config ${path} must hold a JSON object of engine settings`);
  }
  if (json.model !== undefined) {
    throw new TypeError(
      `--config ${path}: give the model's shape with --dim, --layers, --heads and --ctx, ` +
        `not as "model"`,
    );
  }
  const flags: Record<string, string> = {
    tensor_model_parallel_size: "--tp",
    pipeline_model_parallel_size: "--pp",
    virtual_pipeline_model_parallel_size: "--virtual-stages",
    sequence_parallel: "--sequence-parallel",
    data_parallel_size: "--dp",
  };
  for (const [key, flag] of Object.entries(flags)) {
    if (json[key] !== undefined) {
      throw new TypeError(`--config ${path}: give the layout with ${flag}, not as "${key}"`);
    }
  }
  const tpBlock = json.tensor_parallel as Record<string, unknown> | undefined;
  if (tpBlock?.autotp_size !== undefined && tpBlock.autotp_size !== 1) {
    throw new TypeError(
      `--config ${path}: give the tensor-parallel size with --tp, not as ` +
        `"tensor_parallel.autotp_size"`,
    );
  }
  // The file's batch sizes replace the flags' (DeepSpeed derives the third from two).
  const batchKeys = [
    "train_batch_size",
    "train_micro_batch_size_per_gpu",
    "gradient_accumulation_steps",
  ] as const;
  const fromFlags: Record<string, unknown> = { ...base };
  if (batchKeys.some((k) => json[k] !== undefined && json[k] !== "auto")) {
    for (const k of batchKeys) if (json[k] === undefined) delete fromFlags[k];
  }
  let merged: EngineConfig;
  try {
    // "auto" (the Hugging Face Trainer's convention) takes the flags' value.
    merged = fillAuto(
      { ...fromFlags, ...json } as unknown as EngineConfig,
      autoValues(base, json),
    );
    resolveEngineConfig(merged);
  } catch (e) {
    if (e instanceof TypeError) throw new TypeError(`--config ${path}: ${e.message}`);
    if (e instanceof RangeError) throw new RangeError(`--config ${path}: ${e.message}`);
    throw e;
  }
  return merged;
}

/** What `"auto"` in a --config file means: the value the flags give, by dotted key path. */
function autoValues(
  base: EngineConfig,
  json: Record<string, unknown>,
): Record<string, number | boolean | string | number[]> {
  const out: Record<string, number | boolean | string | number[]> = {};
  const walk = (v: unknown, path: string) => {
    if (v !== null && typeof v === "object" && !Array.isArray(v)) {
      for (const [k, x] of Object.entries(v)) walk(x, path ? `${path}.${k}` : k);
    } else if (["number", "boolean", "string"].includes(typeof v) || Array.isArray(v)) {
      out[path] = v as number;
    }
  };
  walk(base, "");
  // The micro-batch the file's accumulation (if it gives one) leaves of the flags' batch.
  const batch = base.train_batch_size!;
  const accum = typeof json.gradient_accumulation_steps === "number"
    ? json.gradient_accumulation_steps
    : base.gradient_accumulation_steps ?? 1;
  const dp = base.data_parallel_size ?? 1;
  const lr = base.optimizer?.params?.lr ?? 1e-3;
  Object.assign(out, {
    train_micro_batch_size_per_gpu: batch / (accum * dp),
    "fp16.enabled": base.fp16?.enabled === true,
    "bf16.enabled": base.bf16?.enabled === true,
    "optimizer.params.eps": 1e-8,
    "optimizer.params.betas": base.optimizer?.params?.betas ?? [0.9, 0.999],
    "scheduler.params.warmup_min_lr": 0,
    "scheduler.params.warmup_max_lr": lr,
  });
  return out;
}

/** Bytes the run needs, roughly: parameters, gradients, two moments and the activations. */
function memoryEstimate(o: TrainOptions, vocab: number, T: number): number {
  const C = o.dim as number, L = o.layers as number, H = o.heads as number;
  const rows = ((o.batch as number) / (o.accum as number)) * T;
  const params = vocab * C + T * C + L * 12 * C * C + 2 * vocab * C;
  const perLayer = 2 * (20 * C + H * T);
  return 4 * (4 * params + rows * (L * perLayer + 3 * vocab + 6 * C));
}

function defaultOut(o: TrainOptions): string {
  const t = new Date().toISOString().replace(/[:.]/g, "-").slice(0, 19);
  const what = o.data ? String(o.data).split("/").pop()!.replace(/\.[^.]*$/, "") : "addition";
  return `runs/${what}-${t}`;
}

/** Options of {@linkcode main}. */
export interface MainOptions {
  /** `false` keeps the run silent (tests); default true. */
  print?: boolean;
  /** The environment (torchrun's, SLURM's or Open MPI's variables, LOOM_FAULT); default this process's. */
  env?: Record<string, string | undefined>;
  /** A shared flag the caller sets to stop the run at the next step boundary (see `RunOptions.stop`). */
  stop?: Int32Array;
}

// Where this process sits in the job, and the data-parallel size that fills it.
function placeInJob(job: LaunchConfig, given: TrainOptions, o: TrainOptions): void {
  if (job.source === "default") return;
  const tp = o.tp as number, pp = o.pp as number;
  const from = job.source === "flags"
    ? `${job.nnodes} node(s) x --nproc-per-node ${job.nprocPerNode}`
    : `${job.source}'s world of ${job.worldSize}`;
  if (given.dp === undefined) {
    if (job.worldSize % (tp * pp) !== 0) {
      throw new RangeError(
        `The job has ${job.worldSize} ranks (${from}), which tp ${tp} x pp ${pp} does not ` +
          `divide: give --tp and --pp whose product divides ${job.worldSize}`,
      );
    }
    o.dp = job.worldSize / (tp * pp);
  } else if (tp * pp * (given.dp as number) !== job.worldSize) {
    throw new RangeError(
      `tp ${tp} x pp ${pp} x dp ${given.dp} = ${tp * pp * (given.dp as number)} ranks, but the ` +
        `job has ${job.worldSize} (${from}): drop --dp (it then fills the job) or change it`,
    );
  }
  if (job.nnodes > 1 && job.nprocPerNode % tp !== 0) {
    throw new RangeError(
      `Tensor-parallel groups stay inside a node: ${job.nprocPerNode} ranks per node is not a ` +
        `multiple of --tp ${tp}`,
    );
  }
  if (job.mode === "process" && (o["max-restarts"] as number) > 0) {
    throw new RangeError(
      `Under ${job.source} every rank is a process the launcher starts, so it restarts them: ` +
        `drop --max-restarts and use the launcher's (torchrun --max-restarts N, srun --requeue); ` +
        `a restarted train.ts continues from its --out`,
    );
  }
}

// "R@S": global rank R fails after step S (tests of restarts and lost ranks).
function parseFault(v: string | undefined): { rank: number; step: number } | undefined {
  if (v === undefined || v === "") return undefined;
  const m = /^(\d+)@(\d+)$/.exec(v.trim());
  if (m === null) {
    throw new TypeError(`LOOM_FAULT must look like RANK@STEP (e.g. 1@5), got "${v}"`);
  }
  return { rank: Number(m[1]), step: Number(m[2]) };
}

/**
 * Run the main job with the given command-line arguments: check them, read the data, turn
 * both into a run (see `runTraining` in engine/run.ts), and run it. With `--tp`, `--pp` or
 * `--dp` above 1 the layout is checked before tp * pp * dp ranks start as Workers of this
 * process; rank 0 logs and writes the run directory.
 *
 * @param argv the arguments
 * @param opts printing
 * @returns the summary, or null for --help
 */
export async function main(argv: string[], opts: MainOptions = {}): Promise<TrainSummary | null> {
  const print = opts.print ?? true;
  const env = opts.env ?? Deno.env.toObject();
  const job = parseLaunch(argv, env);
  let { given, all: o } = parseTrainArgs(job.rest);
  if (o.help) {
    if (print) console.log(helpText());
    return null;
  }
  placeInJob(job, given, o);
  const transport = chooseTransport(job, env, (o.transport as string | null) ?? undefined);
  const fault = parseFault(env.LOOM_FAULT);
  // A job the launcher restarted (torchrun, srun --requeue) continues from its run directory.
  const restarts = Number(env.TORCHELASTIC_RESTART_COUNT ?? env.SLURM_RESTART_COUNT ?? 0);
  if (o.resume === null && restarts > 0 && o.out !== null) {
    try {
      await readCheckpointConfig(String(o.out));
      o.resume = o.out;
    } catch {
      // No checkpoint yet: the restarted job starts over.
    }
  }

  // Resuming: saved options fill in what is not given on this command line.
  let savedTokenizer: TokenizerJSON | null = null;
  if (o.resume !== null) {
    const cfg = await readCheckpointConfig(String(o.resume));
    const run = cfg.run as TrainOptions | undefined;
    if (!run || typeof run !== "object") {
      throw new TypeError(`${o.resume}/config.json has no "run" section: not a train.ts run`);
    }
    const merged: TrainOptions = {};
    for (const [name, spec] of Object.entries(OPTIONS)) {
      merged[name] = given[name] ?? (spec.saved && name in run ? run[name] : o[name]);
    }
    for (const k of ["dim", "layers", "heads", "ctx", "digits", "tokenizer", "optimizer"]) {
      if (given[k] !== undefined && run[k] !== given[k] && !(k === "ctx" && run[k] === null)) {
        throw new TypeError(
          `--${k} ${given[k]} differs from the checkpoint in ${o.resume} (${run[k]}): ` +
            `a resumed run keeps its model shape; drop --${k}`,
        );
      }
    }
    if (merged.out === null) merged.out = await checkpointRunDir(String(o.resume));
    savedTokenizer = (cfg.tokenizer as TokenizerJSON | undefined) ?? null;
    given = { ...given };
    o = merged;
  }

  // Data, before anything heavy: read once here, handed to every rank.
  let ds: Dataset;
  if (o.data !== null) {
    const reuse = savedTokenizer ? await tokenizerFromJSON(savedTokenizer) : undefined;
    ds = await loadTextDataset(String(o.data), {
      seqLen: (o.ctx as number | null) ?? 64,
      tokenizer: o.tokenizer as "char",
      reuse,
    });
  } else {
    const task = new AdditionTask({ digits: o.digits as number });
    if (o.ctx !== null && (o.ctx as number) < task.seqLen) {
      throw new RangeError(
        `The ${task.digits}-digit addition task needs --ctx of at least ${task.seqLen}, ` +
          `got ${o.ctx}`,
      );
    }
    ds = task;
  }
  const ctx = (o.ctx as number | null) ?? ds.seqLen;
  const tp = o.tp as number, pp = o.pp as number, dp = o.dp as number;
  const v = o["virtual-stages"] as number;
  // Megatron pads the vocabulary to a multiple of tp; the extra rows are never targets.
  const shape = checkModelLayout({
    heads: o.heads as number,
    layers: o.layers as number,
    vocab: ds.tokenizer.vocabSize,
    tp,
    pp,
    virtualStages: v,
  });
  const vocab = shape.paddedVocab;
  const need = memoryEstimate(o, vocab, ctx);
  const avail = Deno.systemMemoryInfo().available;
  if (need > 0.8 * avail) {
    throw new RangeError(
      `This model and batch need about ${(need / 2 ** 30).toFixed(1)} GiB but only ` +
        `${(avail / 2 ** 30).toFixed(1)} GiB of memory is available: lower --batch (or raise ` +
        `--accum), --ctx, --dim or --layers`,
    );
  }

  const steps = o.steps as number;
  const lr = (o.lr as number | null) ?? (o.data === null ? 1e-2 : 3e-3);
  const config: EngineConfig = {
    model: {
      vocab,
      ctx,
      dim: o.dim as number,
      layers: o.layers as number,
      heads: o.heads as number,
    },
    train_batch_size: o.batch as number,
    gradient_accumulation_steps: o.accum as number,
    gradient_clipping: o.clip as number,
    optimizer: {
      type: o.optimizer === "sgd" ? "SGD" : "AdamW",
      params: o.optimizer === "sgd"
        ? { lr, weight_decay: o["weight-decay"] as number }
        : { lr, weight_decay: o["weight-decay"] as number, betas: [0.9, 0.98] },
    },
    scheduler: {
      // Loom's own shapes (linear warmup from lr / warmup), as --schedule names them.
      type: o.schedule as "cosine",
      params: {
        warmup_num_steps: o.warmup as number,
        total_num_steps: steps,
        cos_min_ratio: o["min-lr-ratio"] as number,
      },
    },
    seed: o.seed as number,
    zero_optimization: { stage: o["zero-stage"] as 0 },
    ...(o.precision === "fp16" ? { fp16: { enabled: true } } : {}),
    ...(o.precision === "bf16" ? { bf16: { enabled: true } } : {}),
    ...((o["checkpoint-activations"] as number) > 0
      ? { activation_checkpointing: { every_n_blocks: o["checkpoint-activations"] as number } }
      : {}),
    ...((o.dropout as number) > 0 ? { dropout: o.dropout as number } : {}),
  };
  const parallel = tp * pp * dp > 1;
  if (parallel) {
    const m = (o["micro-batches"] as number | null) ?? (pp > 1 ? 4 * pp : o.accum as number);
    Object.assign(config, {
      gradient_accumulation_steps: m,
      data_parallel_size: dp,
      tensor_model_parallel_size: tp,
      pipeline_model_parallel_size: pp,
      virtual_pipeline_model_parallel_size: v,
      sequence_parallel: Boolean(o["sequence-parallel"]),
    });
    if ((o.batch as number) % (m * dp) !== 0) {
      throw new RangeError(
        `--batch ${o.batch} does not split into ${m} micro-batches on each of ${dp} ` +
          `data-parallel replicas: give a --batch that is a multiple of ${m * dp}, or another ` +
          `--micro-batches`,
      );
    }
  }

  if (o.config !== null) {
    Object.assign(config, await readEngineConfigFile(String(o.config), config));
  }
  resolveEngineConfig(config); // every config error before the backend starts
  const schedule = (o["pipeline-schedule"] as ScheduleName | null) ?? undefined;
  checkParallelLayout(config, { schedule, seqLen: ds.seqLen });
  const out = String(o.out ?? defaultOut(o));
  return await runTraining({
    config,
    data: describeDataset(ds),
    steps,
    stopAt: (o["stop-after"] as number) > 0 ? o["stop-after"] as number : steps,
    evalEvery: o["eval-every"] as number,
    saveEvery: o["save-every"] as number,
    drawAccum: o.accum as number,
    dataSeed: (o.seed as number) + 1,
    out,
    resume: o.resume as string | null,
    backend: o.backend as "auto",
    gemm: o.gemm as "auto",
    threads: o.threads as number,
    schedule,
    print,
    quiet: Boolean(o.quiet),
    saveConfig: { ...o, ctx, out, resume: null, "stop-after": 0, transport: null, dashboard: null },
    notes: shape.notes,
    launch: job.source === "default" ? undefined : job,
    transport,
    dashboard: o.dashboard as number | null,
    sampling: {
      temperature: o.temperature as number,
      ...((o["top-k"] as number) > 0 ? { topK: o["top-k"] as number } : {}),
      seed: o.seed as number,
    },
    keep: o.keep as number,
    maxRestarts: o["max-restarts"] as number,
    timeoutMs: Math.round((o.timeout as number) * 1000),
    stop: opts.stop,
    fault,
  });
}

if (import.meta.main) {
  // SIGINT and SIGTERM: every rank checkpoints at the next step boundary and the run stops; a
  // second signal exits at once.
  const signals = await watchSignals();
  try {
    await main(Deno.args, { stop: signals.stop });
    signals.close();
  } catch (e) {
    if (e instanceof TypeError || e instanceof RangeError) {
      console.error(`error: ${e.message}`);
      Deno.exit(2);
    }
    if (e instanceof RankFailedError || e instanceof CollectiveError) {
      // A rank's error (the same on every rank for a bad checkpoint, a diverging loss, ...).
      console.error(`error: ${e.message.split("\n")[0]}`);
      Deno.exit(1);
    }
    throw e;
  }
}
