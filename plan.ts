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

type Kind = "int" | "count" | "list" | "string" | "bool";
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
  layouts: EstimateInput[];
}

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
  if (values.help) return { help: true, json: false, layouts: [] };
  const v: Record<string, number | number[] | string | boolean | undefined> = {};
  for (const [name, raw] of Object.entries(values)) {
    if (raw === undefined) continue;
    const o = OPTIONS[name]!;
    if (o.kind === "bool") v[name] = raw as boolean;
    else if (o.kind === "string") {
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
  for (const tp of (v.tp as number[] | undefined) ?? [1]) {
    for (const pp of (v.pp as number[] | undefined) ?? [1]) {
      for (const dp of (v.dp as number[] | undefined) ?? [1]) {
        for (const zeroStage of stages) {
          const input = {
            ...(shape
              ? {
                shape,
                microBatch: (v["micro-batch"] as number | undefined) ?? 1,
                seqLen: (v["seq-len"] as number | undefined) ?? shape.ctx,
                checkpointActivations: (v["checkpoint-activations"] as number | undefined) ?? 0,
                sequenceParallel: (v["sequence-parallel"] as boolean | undefined) ?? false,
                persistenceThreshold: (v["persistence-threshold"] as number | undefined) ?? 0,
                ...(v["micro-batches"] !== undefined
                  ? { microBatches: v["micro-batches"] as number }
                  : {}),
              }
              : { params: v.params as number }),
            dp,
            tp,
            pp,
            zeroStage: zeroStage as ZeroStage,
            precision,
            optimizer: (v.optimizer as OptimizerKind | undefined) ?? "adamw",
          };
          estimateMemory(input); // every layout is checked before anything is printed
          layouts.push(input);
        }
      }
    }
  }
  return { help: false, json: v.json === true, layouts };
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
 * The human-readable table: one row per layout, GiB per rank of the largest rank.
 *
 * @param estimates the estimates, one per layout
 * @returns the text
 */
export function formatTable(estimates: MemoryEstimate[]): string {
  const gib = (b: number | null) => b === null ? "-" : (b / 2 ** 30).toFixed(2);
  const first = estimates[0]!;
  const l = first.layout;
  const what = first.shape
    ? `${first.params.toLocaleString("en-US")} parameters (V=${first.shape.vocab}, ` +
      `ctx=${first.shape.ctx}, C=${first.shape.dim}, L=${first.shape.layers}, ` +
      `H=${first.shape.heads}); micro-batch ${l.microBatch} x ${l.seqLen} tokens` +
      (l.checkpointActivations ? `, checkpointing every ${l.checkpointActivations} blocks` : "") +
      (l.sequenceParallel ? ", sequence parallel" : "")
    : `${first.params.toLocaleString("en-US")} parameters (activations need the shape flags)`;
  const piped = estimates.some((e) => e.layout.pp > 1);
  type Column = [string, (e: MemoryEstimate) => string];
  const columns: Column[] = [
    ["zero", (e) => String(e.layout.zeroStage)],
    ["dp", (e) => String(e.layout.dp)],
    ["tp", (e) => String(e.layout.tp)],
    ["pp", (e) => String(e.layout.pp)],
    ...(piped ? [["stage", (e) => String(e.largestStage)] satisfies Column] : []),
    ["params/rank", (e) => e.modelStates.params.toLocaleString("en-US")],
    ["params", (e) => gib(e.modelStates.paramsBytes)],
    ["grads", (e) => gib(e.modelStates.gradsBytes)],
    ["optimizer", (e) => gib(e.modelStates.optimizerBytes)],
    ["states", (e) => gib(e.modelStatesBytesPerRank)],
    ["activations", (e) => gib(e.activationsBytesPerRank)],
    ["total", (e) => gib(e.totalBytesPerRank)],
  ];
  const rows = estimates.map((e) => columns.map(([, f]) => f(e)));
  const head = columns.map(([h]) => h);
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (r: string[]) => r.map((c, i) => c.padStart(widths[i]!)).join("  ");
  return [
    `Model: ${what}`,
    `Precision ${l.precision}, optimizer ${l.optimizer}. GiB per rank, for the rank that holds ` +
    `the most` + (piped ? " (stage: the pipeline stage with the largest total)." : "."),
    "",
    line(head),
    ...rows.map(line),
  ].join("\n");
}

/**
 * Run the CLI: parse, estimate every layout, print the table or JSON lines.
 *
 * @param argv the arguments
 * @returns the estimates (none for --help)
 */
export function main(argv: string[]): MemoryEstimate[] {
  const args = parsePlanArgs(argv);
  if (args.help) {
    console.log(helpText());
    return [];
  }
  const estimates = args.layouts.map((l) => estimateMemory(l));
  if (args.json) { for (const e of estimates) console.log(JSON.stringify(estimateRecord(e))); }
  else console.log(formatTable(estimates));
  return estimates;
}

if (import.meta.main) {
  try {
    main(Deno.args);
  } catch (e) {
    if (e instanceof TypeError || e instanceof RangeError) {
      console.error(`error: ${e.message}`);
      Deno.exit(2);
    }
    throw e;
  }
}
