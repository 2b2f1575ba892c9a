/**
 * Plan a run's memory: model states (parameters, gradients, optimizer state, by the ZeRO
 * paper's formulas) and activations per rank, for one layout or several, before starting it.
 *
 * ```sh
 * deno run -A plan.ts --params 7.5e9 --dp 64 --zero-stage 2              # ZeRO-2, 64 ranks
 * deno run -A plan.ts --params 7.5e9 --dp 1,4,16,64,256,1024 --zero-stage 0,1,2,3 --json
 *                                               # Table 1 of the ZeRO paper, as JSON lines
 * deno run -A plan.ts --vocab 50257 --ctx 1024 --dim 768 --layers 12 --heads 12 \
 *   --micro-batch 8 --checkpoint-activations 1          # GPT-2 small, one rank, checkpointed
 * deno run -A plan.ts --vocab 50257 --ctx 1024 --dim 768 --layers 12 --heads 12 \
 *   --tp 2 --pp 2 --dp 2 --zero-stage 1 --precision bf16 --micro-batches 8
 * deno run -A plan.ts --help                            # every option, with defaults
 * ```
 *
 * Give either `--params N` (model states only: a rank holds N / (tp * pp) parameters) or the
 * model's shape (`--vocab --ctx --dim --layers --heads`, optionally `--hidden`, `--untied`),
 * which gives exact per-stage parameter counts and activations. `--dp`, `--tp`, `--pp` and
 * `--zero-stage` take comma lists; every combination is one layout.
 *
 * Output: a table with GiB (2^30 bytes) per rank, one row per layout, for the largest rank.
 * With `--json`: JSON lines, one object per layout and line, in the order of the table, with
 * the inputs (`params`, `dp`, `tp`, `pp`, `zero_stage`, `precision`, `optimizer`,
 * `checkpoint_activations`, ...), the largest rank's parts in bytes (`params_bytes`,
 * `grads_bytes`, `optimizer_bytes`, `model_states_bytes_per_rank`, `activations_bytes_per_rank`
 * (null without a shape), `total_bytes_per_rank`) and `stages`, the figures of each pipeline
 * stage. A bad option prints `error: ...` and exits with code 2 before any work.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { runWorkers } from "./collectives/mod.ts";
import {
  calibrate,
  type Calibration,
  type LinkRates,
  predictStepTime,
  type StepTimeEstimate,
} from "./engine/step_time.ts";
import { createCpuBackend } from "./kernels/mod.ts";
import {
  type EstimateInput,
  estimateMemory,
  type MemoryEstimate,
  type ModelShape,
  type OptimizerKind,
  type Precision,
  type ZeroStage,
} from "./engine/estimate.ts";

export type { EstimateInput, MemoryEstimate, ModelShape } from "./engine/estimate.ts";

type Kind = "int" | "count" | "list" | "string" | "bool" | "path" | "float";
interface OptionSpec {
  kind: Kind;
  dflt: string | number | boolean | null;
  help: string;
  choices?: readonly string[];
}

const SHAPE = ["vocab", "ctx", "dim", "layers", "heads"] as const;

/** Every option of plan.ts, its type, default and help (also what --help prints). */
const OPTIONS: Record<string, OptionSpec> = {
  params: {
    kind: "count",
    dflt: null,
    help: "parameters of the model, e.g. 7.5e9 (instead of the shape flags)",
  },
  vocab: { kind: "int", dflt: null, help: "vocabulary size (shape)" },
  ctx: { kind: "int", dflt: null, help: "context length (shape)" },
  dim: { kind: "int", dflt: null, help: "model width (shape)" },
  layers: { kind: "int", dflt: null, help: "transformer blocks (shape)" },
  heads: { kind: "int", dflt: null, help: "attention heads (shape)" },
  hidden: { kind: "int", dflt: null, help: "MLP width (shape; default 4 * --dim)" },
  untied: { kind: "bool", dflt: false, help: "an output head of its own instead of wte" },
  dp: { kind: "list", dflt: "1", help: "data-parallel sizes, a comma list" },
  tp: { kind: "list", dflt: "1", help: "tensor-parallel sizes, a comma list" },
  pp: { kind: "list", dflt: "1", help: "pipeline stages, a comma list" },
  "zero-stage": { kind: "list", dflt: "0", help: "ZeRO stages 0-3, a comma list like 0,1,2,3" },
  precision: {
    kind: "string",
    dflt: null,
    help: "parameters, gradients and activations (default: fp16 with --params, as the " +
      "ZeRO paper; fp32 with the shape, as train.ts trains)",
    choices: ["fp32", "fp16", "bf16"],
  },
  optimizer: { kind: "string", dflt: "adamw", help: "optimizer", choices: ["adamw", "sgd"] },
  "micro-batch": { kind: "int", dflt: 1, help: "sequences per micro-batch B (with the shape)" },
  "seq-len": { kind: "int", dflt: null, help: "tokens per sequence (default: --ctx)" },
  "checkpoint-activations": {
    kind: "int",
    dflt: 0,
    help: "activation checkpointing: every N blocks keep only their input (0: off)",
  },
  "sequence-parallel": { kind: "bool", dflt: false, help: "sequence parallelism with --tp" },
  "persistence-threshold": {
    kind: "int",
    dflt: 0,
    help: "ZeRO-3: parameters below this many elements stay whole on every rank (DeepSpeed's " +
      "stage3_param_persistence_threshold; 0, as the paper counts)",
  },
  "micro-batches": {
    kind: "int",
    dflt: null,
    help: "micro-batches per step, which caps those in flight (default: 1F1B's pp - stage)",
  },
  ranks: {
    kind: "int",
    dflt: null,
    help: "plan every layout of this many ranks (dp x tp x pp, tp dividing the heads, pp the " +
      "blocks) instead of the --dp, --tp and --pp lists",
  },
  nodes: {
    kind: "int",
    dflt: 1,
    help: "nodes the ranks are spread over, equally, in the grid's tp-dp-pp order; groups " +
      "that span nodes run at the node link",
  },
  "node-gbps": {
    kind: "float",
    dflt: 12.5,
    help: "GB/s between nodes, per node (the default is a 100 Gb/s network)",
  },
  "node-latency-us": {
    kind: "float",
    dflt: 5,
    help: "microseconds per message between nodes",
  },
  batch: {
    kind: "int",
    dflt: null,
    help: "sequences per step over every replica (with the shape): predicts the step time, " +
      "the micro-batch being batch / (micro-batches x dp)",
  },
  "virtual-stages": { kind: "list", dflt: "1", help: "virtual stages per rank, a comma list" },
  "pipeline-schedule": {
    kind: "string",
    dflt: "1f1b",
    help: "schedule of a pipeline of one chunk per rank (more chunks: interleaved)",
    choices: ["1f1b", "gpipe"],
  },
  memory: {
    kind: "float",
    dflt: null,
    help: "GiB each rank has: the fastest layout that fits is marked",
  },
  calibrate: {
    kind: "bool",
    dflt: false,
    help: "measure this machine's rates again (about 15 s) and save them",
  },
  calibration: {
    kind: "path",
    dflt: null,
    help: "the calibration file (default $XDG_CACHE_HOME/loom/calibration.json, or " +
      "~/.cache/loom/calibration.json)",
  },
  json: { kind: "bool", dflt: false, help: "print JSON lines, one object per layout" },
  help: { kind: "bool", dflt: false, help: "show this help" },
};

/** The parsed command line: the layouts to estimate, or help. */
export interface PlanArgs {
  /** Whether --help was given (then nothing else is checked). */
  help: boolean;
  /** Whether to print JSON lines. */
  json: boolean;
  /** One input of `estimateMemory()` per layout, in output order. */
  layouts: PlanLayout[];
  /** Sequences per step (then step times are predicted), or null. */
  batch: number | null;
  /** GiB per rank, or null. */
  memoryGiB: number | null;
  /** Measure the machine again. */
  calibrate: boolean;
  /** The calibration file, or null for the default. */
  calibration: string | null;
  /** Nodes the ranks are spread over. */
  nodes: number;
  /** The link between nodes. */
  nodeLink: LinkRates;
}

/** A layout to plan: the memory estimate's input and its virtual stages. */
export type PlanLayout = EstimateInput & { virtualStages?: number; schedule?: string };

/**
 * The --help text.
 *
 * @returns the text
 */
export function helpText(): string {
  const lines = [
    "Estimate the memory per rank of training a GPT: model states (ZeRO paper) and activations.",
    "",
    "Usage: deno run -A plan.ts (--params N | --vocab V --ctx T --dim C --layers L --heads H)",
    "         [--dp N,..] [--tp N,..] [--pp N,..] [--zero-stage S,..] [options]",
    "",
    "Options (--name value or --name=value):",
  ];
  for (const [name, o] of Object.entries(OPTIONS)) {
    const arg = o.kind === "bool"
      ? ""
      : o.choices
      ? ` ${o.choices.join("|")}`
      : o.kind === "list"
      ? " N,.."
      : " N";
    const d = o.dflt === null || o.kind === "bool" ? "" : ` (default: ${o.dflt})`;
    let line = `  --${name}${arg}`.padEnd(30);
    for (const word of `${o.help}${d}`.split(" ")) {
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

function number(name: string, s: string, kind: Kind): number {
  const v = Number(s.trim());
  if (s.trim() === "" || !Number.isFinite(v)) {
    throw new TypeError(
      `--${name} expects ${kind === "count" ? "a number" : "an integer"}, got "${s}"`,
    );
  }
  if (!Number.isSafeInteger(v)) throw new RangeError(`--${name} must be an integer, got ${s}`);
  const min = name === "checkpoint-activations" || name === "zero-stage" ? 0 : 1;
  if (v < min) throw new RangeError(`--${name} must be at least ${min}, got ${v}`);
  return v;
}

/**
 * Parse and check the command line. Unknown options, values of the wrong type or out of
 * range, both or neither of --params and the shape: errors that name the option. Every
 * layout is checked here (a model that does not split over tp and pp is an error too).
 *
 * @param argv the arguments
 * @returns the layouts, or help
 * @throws {TypeError} for an unknown option or a value of the wrong type
 * @throws {RangeError} for a value out of range
 */
export function parsePlanArgs(argv: string[]): PlanArgs {
  const spec: Record<string, { type: "string" | "boolean" }> = {};
  for (const [name, o] of Object.entries(OPTIONS)) {
    spec[name] = { type: o.kind === "bool" ? "boolean" : "string" };
  }
  let values: Record<string, string | boolean | undefined>;
  try {
    values = parseArgs({ args: argv, options: spec, strict: true, allowPositionals: false }).values;
  } catch (e) {
    throw new TypeError(`${(e as Error).message}. Run with --help to see the options.`);
  }
  if (values.help) {
    return {
      help: true,
      json: false,
      layouts: [],
      batch: null,
      memoryGiB: null,
      calibrate: false,
      calibration: null,
      nodes: 1,
      nodeLink: { alphaMs: 0, bytesPerMs: 1 },
    };
  }
  const v: Record<string, number | number[] | string | boolean | undefined> = {};
  for (const [name, raw] of Object.entries(values)) {
    if (raw === undefined) continue;
    const o = OPTIONS[name]!;
    if (o.kind === "bool") v[name] = raw as boolean;
    else if (o.kind === "path") v[name] = raw as string;
    else if (o.kind === "float") {
      const x = Number(raw);
      if (!(x > 0) || !Number.isFinite(x)) {
        throw new RangeError(`--${name} must be a positive number, got "${raw}"`);
      }
      v[name] = x;
    } else if (o.kind === "string") {
      if (!o.choices!.includes(raw as string)) {
        throw new RangeError(`--${name} must be one of ${o.choices!.join(", ")}, got "${raw}"`);
      }
      v[name] = raw as string;
    } else if (o.kind === "list") {
      const items = (raw as string).split(",").map((s) => number(name, s, "int"));
      if (new Set(items).size !== items.length) {
        throw new RangeError(`--${name} lists a value twice: ${raw}`);
      }
      v[name] = items;
    } else v[name] = number(name, raw as string, o.kind);
  }
  const stages = (v["zero-stage"] as number[] | undefined) ?? [0];
  for (const z of stages) {
    if (z > 3) throw new RangeError(`--zero-stage must be 0, 1, 2 or 3, got ${z}`);
  }
  const shapeGiven = SHAPE.filter((k) => v[k] !== undefined);
  let shape: ModelShape | undefined;
  if (shapeGiven.length > 0 || v.hidden !== undefined || v.untied !== undefined) {
    const missing = SHAPE.filter((k) => v[k] === undefined);
    if (missing.length > 0) {
      throw new TypeError(
        `The model shape needs ${missing.map((k) => `--${k}`).join(", ")} as well ` +
          `(or give --params alone)`,
      );
    }
    if (v.params !== undefined) {
      throw new TypeError("Give either --params or the model shape, not both");
    }
    shape = {
      vocab: v.vocab as number,
      ctx: v.ctx as number,
      dim: v.dim as number,
      layers: v.layers as number,
      heads: v.heads as number,
      ...(v.hidden !== undefined ? { hidden: v.hidden as number } : {}),
      ...(v.untied ? { tied: false } : {}),
    };
  } else if (v.params === undefined) {
    throw new TypeError(
      "Give --params N or the model shape (--vocab --ctx --dim --layers --heads); " +
        "run with --help to see the options",
    );
  } else {
    for (
      const k of [
        "micro-batch",
        "seq-len",
        "checkpoint-activations",
        "sequence-parallel",
        "micro-batches",
        "persistence-threshold",
        "batch",
      ]
    ) {
      if (v[k] !== undefined) {
        throw new TypeError(
          `--${k} needs the model shape: give --vocab --ctx --dim --layers --heads`,
        );
      }
    }
  }
  if (shape && v["seq-len"] !== undefined && (v["seq-len"] as number) > shape.ctx) {
    throw new RangeError(`--seq-len ${v["seq-len"]} exceeds --ctx ${shape.ctx}`);
  }
  const precision = (v.precision as Precision | undefined) ?? (shape ? "fp32" : "fp16");
  const layouts: PlanArgs["layouts"] = [];
  const batch = v.batch as number | undefined;
  const ranks = v.ranks as number | undefined;
  if (ranks !== undefined && (v.dp !== undefined || v.tp !== undefined || v.pp !== undefined)) {
    throw new TypeError("Give either --ranks or the --dp, --tp and --pp lists, not both");
  }
  // Every (tp, pp, dp) to plan: the lists' combinations, or every factorization of --ranks.
  const grids: [number, number, number][] = [];
  if (ranks !== undefined) {
    for (let tp = 1; tp <= ranks; tp++) {
      for (let pp = 1; tp * pp <= ranks; pp++) {
        if (ranks % (tp * pp) !== 0) continue;
        if (shape && (shape.heads % tp !== 0 || shape.layers % pp !== 0)) continue;
        grids.push([tp, pp, ranks / (tp * pp)]);
      }
    }
  } else {
    for (const tp of (v.tp as number[] | undefined) ?? [1]) {
      for (const pp of (v.pp as number[] | undefined) ?? [1]) {
        for (const dp of (v.dp as number[] | undefined) ?? [1]) grids.push([tp, pp, dp]);
      }
    }
  }
  const enumerate = ranks !== undefined;
  const nodes = (v.nodes as number | undefined) ?? 1;
  for (const [tp, pp, dp] of grids) {
    if ((tp * pp * dp) % nodes !== 0) {
      throw new RangeError(
        `${tp * pp * dp} ranks (tp ${tp} x pp ${pp} x dp ${dp}) do not split evenly over ` +
          `--nodes ${nodes}: give a rank count that is a multiple of the nodes`,
      );
    }
    for (const vs of (v["virtual-stages"] as number[] | undefined) ?? [1]) {
      if (vs > 1 && pp === 1) continue;
      if (shape && shape.layers % (pp * vs) !== 0) {
        if (enumerate) continue;
        throw new RangeError(
          `${shape.layers} blocks do not split into ${pp} stages x ${vs} virtual stages`,
        );
      }
      const m = (v["micro-batches"] as number | undefined) ?? (pp > 1 ? 4 * pp : 1);
      let microBatch = (v["micro-batch"] as number | undefined) ?? 1;
      if (batch !== undefined) {
        if (batch % (m * dp) !== 0) {
          if (enumerate) continue;
          throw new RangeError(
            `--batch ${batch} does not split into ${m} micro-batches over dp ${dp}: give a ` +
              `multiple of ${m * dp}`,
          );
        }
        microBatch = batch / (m * dp);
      }
      for (const zeroStage of stages) {
        if (enumerate && zeroStage > 0 && dp === 1) continue;
        const input: PlanLayout = {
          ...(shape
            ? {
              shape,
              microBatch,
              seqLen: (v["seq-len"] as number | undefined) ?? shape.ctx,
              checkpointActivations: (v["checkpoint-activations"] as number | undefined) ?? 0,
              sequenceParallel: (v["sequence-parallel"] as boolean | undefined) ?? false,
              persistenceThreshold: (v["persistence-threshold"] as number | undefined) ?? 0,
              ...(v["micro-batches"] !== undefined || batch !== undefined
                ? { microBatches: m }
                : {}),
            }
            : { params: v.params as number }),
          dp,
          tp,
          pp,
          virtualStages: vs,
          schedule: pp === 1
            ? "none"
            : vs > 1
            ? "interleaved"
            : (v["pipeline-schedule"] as string | undefined) ?? "1f1b",
          zeroStage: zeroStage as ZeroStage,
          precision,
          optimizer: (v.optimizer as OptimizerKind | undefined) ?? "adamw",
        };
        estimateMemory(input); // every layout is checked before anything is printed
        layouts.push(input);
      }
    }
  }
  if (layouts.length === 0) {
    throw new RangeError(
      `No layout of ${ranks} ranks fits this model and batch: tp must divide the heads, pp ` +
        `the blocks, and micro-batches x dp the batch`,
    );
  }
  return {
    help: false,
    json: v.json === true,
    layouts,
    batch: batch ?? null,
    memoryGiB: (v.memory as number | undefined) ?? null,
    calibrate: v.calibrate === true,
    calibration: (v.calibration as string | undefined) ?? null,
    nodes,
    nodeLink: {
      alphaMs: ((v["node-latency-us"] as number | undefined) ?? 5) / 1000,
      bytesPerMs: ((v["node-gbps"] as number | undefined) ?? 12.5) * 1e6,
    },
  };
}

function snake(o: object): Record<string, unknown> {
  return Object.fromEntries(
    Object.entries(o).map(([k, v]) => [k.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`), v]),
  );
}

/**
 * One layout's estimate as the JSON object `--json` prints (snake_case, bytes).
 *
 * @param e the estimate
 * @returns the record
 */
export function estimateRecord(e: MemoryEstimate): Record<string, unknown> {
  const l = e.layout;
  return {
    params: e.params,
    dp: l.dp,
    tp: l.tp,
    pp: l.pp,
    zero_stage: l.zeroStage,
    precision: l.precision,
    optimizer: l.optimizer,
    checkpoint_activations: l.checkpointActivations,
    sequence_parallel: l.sequenceParallel,
    micro_batch: e.shape ? l.microBatch : null,
    seq_len: e.shape ? l.seqLen : null,
    micro_batches: l.microBatches,
    shape: e.shape,
    params_per_rank: e.modelStates.params,
    params_bytes: e.modelStates.paramsBytes,
    grads_bytes: e.modelStates.gradsBytes,
    optimizer_bytes: e.modelStates.optimizerBytes,
    model_states_bytes_per_rank: e.modelStatesBytesPerRank,
    activations_bytes_per_rank: e.activationsBytesPerRank,
    total_bytes_per_rank: e.totalBytesPerRank,
    largest_stage: e.largestStage,
    stages: e.stages.map((s) => ({
      stage: s.stage,
      params: s.modelStates.params,
      params_bytes: s.modelStates.paramsBytes,
      grads_bytes: s.modelStates.gradsBytes,
      optimizer_bytes: s.modelStates.optimizerBytes,
      model_states_bytes: s.modelStates.totalBytes,
      activations_bytes: s.activations?.totalBytes ?? null,
      micro_batches_in_flight: s.activations?.inFlight ?? null,
      activation_parts: s.activations
        ? {
          per_micro_batch: snake(s.activations.perMicroBatch),
          recompute: s.activations.once.recompute,
          scratch: s.activations.once.scratch,
          block: snake(s.activations.block),
        }
        : null,
      total_bytes: s.totalBytes,
    })),
  };
}

/**
 * The human-readable table: one row per layout, GiB per rank of the largest rank, and with a
 * batch the predicted step in milliseconds (its parts), tokens/s and the fastest that fits.
 *
 * @param rows the planned layouts
 * @returns the text
 */
export function formatTable(rows: PlanRow[]): string {
  const gib = (b: number | null) => b === null ? "-" : (b / 2 ** 30).toFixed(2);
  const first = rows[0]!.estimate;
  const l = first.layout;
  const what = first.shape
    ? `${first.params.toLocaleString("en-US")} parameters (V=${first.shape.vocab}, ` +
      `ctx=${first.shape.ctx}, C=${first.shape.dim}, L=${first.shape.layers}, ` +
      `H=${first.shape.heads}); ${l.seqLen} tokens per sequence` +
      (l.checkpointActivations ? `, checkpointing every ${l.checkpointActivations} blocks` : "") +
      (l.sequenceParallel ? ", sequence parallel" : "")
    : `${first.params.toLocaleString("en-US")} parameters (activations need the shape flags)`;
  const piped = rows.some((r) => r.estimate.layout.pp > 1);
  const timed = rows.some((r) => r.time !== null);
  const ms = (x: number) => x >= 100 ? x.toFixed(0) : x.toFixed(1);
  type Column = [string, (r: PlanRow) => string];
  const e = (f: (e: MemoryEstimate) => string) => (r: PlanRow) => f(r.estimate);
  const columns: Column[] = [
    ["layout", (r) => r.name],
    ["zero", e((e) => String(e.layout.zeroStage))],
    ["dp", e((e) => String(e.layout.dp))],
    ["tp", e((e) => String(e.layout.tp))],
    ["pp", e((e) => String(e.layout.pp))],
    ...(piped ? [["stage", e((e) => String(e.largestStage))] satisfies Column] : []),
    ...(timed ? [["mb", e((e) => String(e.layout.microBatch))] satisfies Column] : []),
    ["params/rank", e((e) => e.modelStates.params.toLocaleString("en-US"))],
    ["params", e((e) => gib(e.modelStates.paramsBytes))],
    ["grads", e((e) => gib(e.modelStates.gradsBytes))],
    ["optimizer", e((e) => gib(e.modelStates.optimizerBytes))],
    ["states", e((e) => gib(e.modelStatesBytesPerRank))],
    ["activations", e((e) => gib(e.activationsBytesPerRank))],
    ["total", e((e) => gib(e.totalBytesPerRank))],
    ...(timed
      ? [
        ["step ms", (r) => r.time ? ms(r.time.stepMs) : "-"],
        ["compute", (r) => r.time ? ms(r.time.computeMs) : "-"],
        ["comm", (r) => r.time ? ms(r.time.tpCommMs + r.time.ppCommMs + r.time.dpCommMs) : "-"],
        ["bubble", (r) => r.time ? ms(r.time.bubbleMs) : "-"],
        ["optim", (r) => r.time ? ms(r.time.optimizerMs) : "-"],
        ["tokens/s", (r) => r.time ? Math.round(r.time.tokensPerS).toLocaleString("en-US") : "-"],
      ] satisfies Column[]
      : []),
    ...(rows.some((r) => r.fits !== null)
      ? [["fits", (r) => r.fits === null ? "-" : r.fits ? "yes" : "no"]] satisfies Column[]
      : []),
    ["", (r) => r.fastest ? "<- fastest that fits" : ""],
  ];
  const cells = rows.map((r) => columns.map(([, f]) => f(r)));
  const head = columns.map(([h]) => h);
  const widths = head.map((h, i) => Math.max(h.length, ...cells.map((r) => r[i]!.length)));
  const line = (r: string[]) =>
    r.map((c, i) => i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!)).join("  ").trimEnd();
  return [
    `Model: ${what}`,
    `Precision ${l.precision}, optimizer ${l.optimizer}. GiB per rank, for the rank that holds ` +
    `the most` + (piped ? " (stage: the pipeline stage with the largest total)." : ".") +
    (timed
      ? " Step: predicted milliseconds from this machine's calibration (comm: tensor, " +
        "pipeline and data-parallel collectives; mb: sequences per micro-batch)."
      : ""),
    "",
    line(head),
    ...cells.map(line),
  ].join("\n");
}

/** One planned layout: its memory, its predicted step (with `--batch`), its name. */
export interface PlanRow {
  /** The layout's name, e.g. `dp2.tp1.pp1.zero1.fp32` (what bench/planner.ts prints). */
  name: string;
  /** Memory per rank. */
  estimate: MemoryEstimate;
  /** The predicted step, or null without `--batch`. */
  time: StepTimeEstimate | null;
  /** Whether it fits `--memory` (null without it). */
  fits: boolean | null;
  /** Whether it is the fastest layout that fits. */
  fastest: boolean;
}

/**
 * A layout's name: `dp.tp.pp`, the schedule of a pipeline, virtual stages above 1, the ZeRO
 * stage, the precision, and activation checkpointing when on.
 *
 * @param l the layout
 * @returns e.g. `dp1.tp1.pp2.1f1b.zero0.fp32`
 */
export function layoutName(l: {
  dp?: number;
  tp?: number;
  pp?: number;
  virtualStages?: number;
  schedule?: string;
  zeroStage?: number;
  precision?: string;
  checkpointActivations?: number;
}): string {
  const pp = l.pp ?? 1, v = l.virtualStages ?? 1;
  return [
    `dp${l.dp ?? 1}`,
    `tp${l.tp ?? 1}`,
    `pp${pp}`,
    ...(pp > 1 ? [v > 1 ? `interleaved${v}` : l.schedule ?? "1f1b"] : []),
    `zero${l.zeroStage ?? 0}`,
    l.precision ?? "fp32",
    ...(l.checkpointActivations ? [`ckpt${l.checkpointActivations}`] : []),
  ].join(".");
}

/**
 * The default calibration file: `$XDG_CACHE_HOME/loom/calibration.json`, else
 * `~/.cache/loom/calibration.json`.
 *
 * @returns the path
 */
export function defaultCalibrationPath(): string {
  const base = Deno.env.get("XDG_CACHE_HOME") ?? `${Deno.env.get("HOME") ?? "."}/.cache`;
  return `${base}/loom/calibration.json`;
}

/**
 * This machine's calibration: read from `path`, or measured (and saved there) when the file is
 * missing, from another machine (another core count), or `fresh` is asked.
 *
 * @param path the file
 * @param fresh measure again
 * @param log progress lines
 * @returns the calibration
 */
export async function machineCalibration(
  path: string,
  fresh: boolean,
  log: (l: string) => void = () => {},
): Promise<Calibration> {
  if (!fresh) {
    try {
      const c = JSON.parse(await Deno.readTextFile(path)) as Calibration;
      if (c.version === 2 && c.cores === navigator.hardwareConcurrency && c.sharing) return c;
      log(`${path} is from another machine (${c.cores} cores): measuring this one`);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) {
        log(`${path} cannot be read (${(e as Error).message}): measuring again`);
      } else log(`no calibration yet in ${path}: measuring this machine (about 15 s)`);
    }
  }
  const c = await calibrate({
    backend: (threads) => createCpuBackend({ threads }),
    allReduceMs: async (k, sizes) =>
      (await runWorkers<number[]>({
        size: k,
        module: new URL("./engine/_link_rank.ts", import.meta.url),
        data: { sizes },
      }))[0]!,
    sharedMs: async (k) =>
      await runWorkers<number>({
        size: k,
        module: new URL("./engine/_compute_rank.ts", import.meta.url),
        data: { reps: 12 },
      }),
    log,
  });
  await Deno.mkdir(path.replace(/\/[^/]*$/, "") || ".", { recursive: true });
  await Deno.writeTextFile(path, JSON.stringify(c, null, 1) + "\n");
  log(`saved ${path}`);
  return c;
}

/**
 * Plan every layout: memory, and with a batch the predicted step, the fit and the fastest.
 *
 * @param args the parsed command line
 * @param cal the machine's calibration (needed with a batch)
 * @returns one row per layout
 */
export function planRows(args: PlanArgs, cal: Calibration | null): PlanRow[] {
  const rows: PlanRow[] = args.layouts.map((l) => {
    const estimate = estimateMemory(l);
    const sh = l.shape;
    const time = args.batch !== null && sh && cal
      ? predictStepTime({
        vocab: sh.vocab,
        seqLen: estimate.layout.seqLen,
        dim: sh.dim,
        layers: sh.layers,
        heads: sh.heads,
        hidden: sh.hidden,
        batch: args.batch,
        dp: estimate.layout.dp,
        tp: estimate.layout.tp,
        pp: estimate.layout.pp,
        virtualStages: l.virtualStages ?? 1,
        schedule: l.schedule === "gpipe" ? "gpipe" : "1f1b",
        microBatches: estimate.layout.microBatches ?? undefined,
        zeroStage: estimate.layout.zeroStage,
        half: estimate.layout.precision !== "fp32",
        checkpointActivations: estimate.layout.checkpointActivations,
        nodes: args.nodes,
        nodeLink: args.nodeLink,
      }, cal)
      : null;
    const fits = args.memoryGiB === null
      ? null
      : estimate.totalBytesPerRank <= args.memoryGiB * 2 ** 30;
    return {
      name: layoutName({ ...l, precision: estimate.layout.precision }),
      estimate,
      time,
      fits,
      fastest: false,
    };
  });
  const candidates = rows.filter((r) => r.time !== null && r.fits !== false);
  if (candidates.length > 0) {
    candidates.reduce((a, b) => (b.time!.stepMs < a.time!.stepMs ? b : a)).fastest = true;
  }
  return rows;
}

/**
 * Run the CLI: parse, estimate every layout (and predict its step with `--batch`), print the
 * table or JSON lines.
 *
 * @param argv the arguments
 * @returns the rows (none for --help)
 */
export async function main(argv: string[]): Promise<PlanRow[]> {
  const args = parsePlanArgs(argv);
  if (args.help) {
    console.log(helpText());
    return [];
  }
  const cal = args.batch !== null || args.calibrate
    ? await machineCalibration(
      args.calibration ?? defaultCalibrationPath(),
      args.calibrate,
      (l) => console.error(l),
    )
    : null;
  const rows = planRows(args, cal);
  if (args.json) {
    for (const r of rows) console.log(JSON.stringify(planRecord(r)));
  } else console.log(formatTable(rows));
  return rows;
}

/**
 * A row as the JSON object `--json` prints: the memory record, plus `layout` and, with a
 * batch, `predicted_ms` and its parts (`compute_ms`, `tp_comm_ms`, `pp_comm_ms`,
 * `bubble_ms`, `dp_comm_ms`, `optimizer_ms`), `tokens_per_s`, `threads`, `fits` and `fastest`.
 *
 * @param r the row
 * @returns the record
 */
export function planRecord(r: PlanRow): Record<string, unknown> {
  const t = r.time;
  const ms = (x: number) => Math.round(x * 100) / 100;
  return {
    layout: r.name,
    ...estimateRecord(r.estimate),
    ...(t
      ? {
        predicted_ms: ms(t.stepMs),
        compute_ms: ms(t.computeMs),
        tp_comm_ms: ms(t.tpCommMs),
        pp_comm_ms: ms(t.ppCommMs),
        bubble_ms: ms(t.bubbleMs),
        dp_comm_ms: ms(t.dpCommMs),
        optimizer_ms: ms(t.optimizerMs),
        tokens_per_s: Math.round(t.tokensPerS),
        threads: t.threads,
      }
      : {}),
    fits: r.fits,
    fastest: r.fastest,
  };
}

if (import.meta.main) {
  try {
    await main(Deno.args);
  } catch (e) {
    if (e instanceof TypeError || e instanceof RangeError) {
      console.error(`error: ${e.message}`);
      Deno.exit(2);
    }
    throw e;
  }
}
