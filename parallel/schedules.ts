/**
 * Pipeline schedules as plain data. A schedule is a pure function of (stages `pp`,
 * micro-batches `m`, virtual chunks per stage `v`) to each stage's ordered list of steps:
 * `forward(mb, chunk)`, `backward(mb, chunk)`, and the point-to-point exchanges they imply.
 *
 * Stage `s` holds `v` model chunks; chunk `c` of stage `s` is virtual stage `c * pp + s` of the
 * model's `pp * v` consecutive slices. Activations flow from virtual stage `k` to `k + 1` and
 * gradients back. The sends after one compute step and the receives before the next are posted
 * together as one exchange (e.g. `sendForwardRecvBackward`), which is what lets blocking
 * point-to-point run without deadlock.
 *
 * - `"none"`: one stage, forward then backward of each micro-batch (gradient accumulation).
 * - `"gpipe"`: all forwards, then all backwards; every stage holds all `m` micro-batches.
 * - `"1f1b"`: stage `s` runs `pp - s - 1` warm-up forwards, then one forward / one backward,
 *   then the remaining backwards; at most `pp - s` micro-batches hold activations.
 * - `"interleaved"`: Megatron's interleaved 1F1B over `v` chunks per stage; needs `m % pp == 0`.
 *   The bubble shrinks to about `1/v` of 1F1B's.
 *
 * @module
 */

/** The schedules {@linkcode buildSchedule} knows. */
export type ScheduleName = "none" | "gpipe" | "1f1b" | "interleaved";

/** Direction of a point-to-point transfer: activations go forward, gradients backward. */
export type Direction = "forward" | "backward";

/** One half of a point-to-point transfer, as seen by the stage that runs it. */
export interface P2POp {
  /** Send or receive. */
  readonly op: "send" | "recv";
  /** Activations (`"forward"`) or their gradients (`"backward"`). */
  readonly dir: Direction;
  /** Micro-batch. */
  readonly mb: number;
  /** This stage's chunk that produces (send) or consumes (recv) the data. */
  readonly chunk: number;
  /** The other stage (its pipeline rank). */
  readonly peer: number;
}

/** The name of an exchange, for the verbs of `p2p.ts`. */
export type P2PVerb =
  | "sendForward"
  | "recvForward"
  | "sendBackward"
  | "recvBackward"
  | "sendForwardRecvBackward"
  | "sendBackwardRecvForward"
  | "sendForwardRecvForward"
  | "sendBackwardRecvBackward"
  | "exchange";

/** One step of a stage's list. */
export type PipelineStep =
  | { readonly kind: "forward"; readonly mb: number; readonly chunk: number }
  | { readonly kind: "backward"; readonly mb: number; readonly chunk: number }
  | { readonly kind: "p2p"; readonly verb: P2PVerb; readonly ops: readonly P2POp[] };

/** Every stage's list of steps. */
export interface PipelineSchedule {
  /** Which schedule (`"forward"`: forwards only, for evaluation). */
  readonly name: ScheduleName | "forward";
  /** Pipeline stages. */
  readonly pp: number;
  /** Micro-batches per optimizer step. */
  readonly m: number;
  /** Model chunks per stage. */
  readonly v: number;
  /** `stages[s]` is stage s's ordered list. */
  readonly stages: readonly (readonly PipelineStep[])[];
}

/** Sizes a schedule is built for. */
export interface ScheduleOptions {
  /** Pipeline stages. */
  pp: number;
  /** Micro-batches per optimizer step. */
  m: number;
  /** Model chunks per stage (virtual pipeline size); default 1. */
  v?: number;
}

function positiveInt(name: string, x: number): number {
  if (!Number.isInteger(x) || x < 1) {
    throw new RangeError(`${name} must be a positive integer, got ${x}`);
  }
  return x;
}

type Compute = { kind: "forward" | "backward"; mb: number; chunk: number };

/** Compute steps grouped into units; communication happens only between units. */
type Unit = Compute[];

function computeOrder(
  name: ScheduleName | "forward",
  pp: number,
  m: number,
  v: number,
  s: number,
): Unit[] {
  const F = (mb: number, chunk = 0): Compute => ({ kind: "forward", mb, chunk });
  const B = (mb: number, chunk = 0): Compute => ({ kind: "backward", mb, chunk });
  const out: Unit[] = [];
  if (name === "forward") {
    for (let i = 0; i < m; i++) for (let c = 0; c < v; c++) out.push([F(i, c)]);
  } else if (name === "none") {
    for (let i = 0; i < m; i++) out.push([F(i)], [B(i)]);
  } else if (name === "gpipe") {
    for (let i = 0; i < m; i++) out.push([F(i)]);
    for (let i = 0; i < m; i++) out.push([B(i)]);
  } else if (name === "1f1b") {
    const warm = Math.min(pp - s - 1, m);
    for (let i = 0; i < warm; i++) out.push([F(i)]);
    for (let i = 0; i < m - warm; i++) out.push([F(warm + i)], [B(i)]);
    for (let i = m - warm; i < m; i++) out.push([B(i)]);
  } else {
    // Steady state runs forward and backward back to back, with one exchange per pair (sends
    // of both, receives of the next pair's inputs), as Megatron's interleaved schedule does.
    // Virtual micro-batch k: groups of pp micro-batches run through chunk 0, then chunk 1, ...
    const total = m * v;
    const mbOf = (k: number) => Math.floor(k / (pp * v)) * pp + (k % pp);
    const chunkOf = (k: number, fwd: boolean) => {
      const c = Math.floor((k % (pp * v)) / pp);
      return fwd ? c : v - 1 - c;
    };
    const warm = m === pp ? total : Math.min((pp - s - 1) * 2 + (v - 1) * pp, total);
    for (let k = 0; k < warm; k++) out.push([F(mbOf(k), chunkOf(k, true))]);
    for (let i = 0; i < total - warm; i++) {
      const k = warm + i;
      out.push([F(mbOf(k), chunkOf(k, true)), B(mbOf(i), chunkOf(i, false))]);
    }
    for (let i = total - warm; i < total; i++) out.push([B(mbOf(i), chunkOf(i, false))]);
  }
  return out;
}

function verbOf(ops: readonly P2POp[]): P2PVerb {
  const sig = ops.map((o) => `${o.op}:${o.dir}`).sort().join(",");
  switch (sig) {
    case "send:forward":
      return "sendForward";
    case "recv:forward":
      return "recvForward";
    case "send:backward":
      return "sendBackward";
    case "recv:backward":
      return "recvBackward";
    case "recv:backward,send:forward":
      return "sendForwardRecvBackward";
    case "recv:forward,send:backward":
      return "sendBackwardRecvForward";
    case "recv:forward,send:forward":
      return "sendForwardRecvForward";
    case "recv:backward,send:backward":
      return "sendBackwardRecvBackward";
    default:
      return "exchange";
  }
}

/**
 * Build every stage's step list for one schedule.
 *
 * @example 1F1B on 2 stages, 3 micro-batches: stage 0 warms up with one forward
 * ```ts
 * import { buildSchedule } from "./schedules.ts";
 * const s = buildSchedule("1f1b", { pp: 2, m: 3 });
 * const compute = s.stages[0].filter((x) => x.kind !== "p2p");
 * console.assert(compute.map((x) => x.kind[0] + x.mb).join(" ") === "f0 f1 b0 f2 b1 b2");
 * ```
 *
 * @param name the schedule
 * @param opts stages, micro-batches and chunks per stage
 * @returns the schedule
 */
export function buildSchedule(name: ScheduleName, opts: ScheduleOptions): PipelineSchedule {
  const pp = positiveInt("pp", opts.pp);
  const m = positiveInt("m (micro-batches)", opts.m);
  const v = positiveInt("v (virtual stages)", opts.v ?? 1);
  if (name === "none" && pp !== 1) {
    throw new RangeError(
      `Schedule "none" runs one stage, got pp=${pp}: use "gpipe", "1f1b" or "interleaved"`,
    );
  }
  if (name !== "interleaved" && v !== 1) {
    throw new RangeError(
      `Schedule "${name}" runs one chunk per stage, got v=${v}: use "interleaved" or v=1`,
    );
  }
  if (name === "interleaved") {
    if (pp < 2 || v < 2) {
      throw new RangeError(
        `The interleaved schedule needs pp >= 2 and v >= 2 virtual stages, got pp=${pp}, v=${v}: ` +
          `use "1f1b" for v=1`,
      );
    }
    if (m % pp !== 0) {
      throw new RangeError(
        `The interleaved schedule needs the number of micro-batches (${m}) to be a multiple of ` +
          `pp=${pp}: choose m in {${pp}, ${2 * pp}, ...} or use "1f1b"`,
      );
    }
  } else if (!["none", "gpipe", "1f1b"].includes(name)) {
    throw new RangeError(`Unknown schedule "${name}": use none, gpipe, 1f1b or interleaved`);
  }
  return steps(name, pp, m, v);
}

/**
 * The forward-only schedule of an evaluation pass: every micro-batch goes through every virtual
 * stage in order, each stage receiving, computing and sending in turn.
 *
 * @param opts stages, micro-batches and chunks per stage
 * @returns the schedule (named `"forward"`)
 */
export function buildForwardSchedule(opts: ScheduleOptions): PipelineSchedule {
  const pp = positiveInt("pp", opts.pp);
  const m = positiveInt("m (micro-batches)", opts.m);
  return steps("forward", pp, m, positiveInt("v (virtual stages)", opts.v ?? 1));
}

function steps(name: ScheduleName | "forward", pp: number, m: number, v: number): PipelineSchedule {
  const V = pp * v;
  const stages: PipelineStep[][] = [];
  for (let s = 0; s < pp; s++) {
    const steps: PipelineStep[] = [];
    let pending: P2POp[] = [];
    const flush = () => {
      if (pending.length > 0) steps.push({ kind: "p2p", verb: verbOf(pending), ops: pending });
      pending = [];
    };
    const prev = (s - 1 + pp) % pp;
    const next = (s + 1) % pp;
    for (const unit of computeOrder(name, pp, m, v, s)) {
      for (const { kind, mb, chunk } of unit) {
        const k = chunk * pp + s;
        if (kind === "forward" && k > 0) {
          pending.push({ op: "recv", dir: "forward", mb, chunk, peer: prev });
        }
        if (kind === "backward" && k < V - 1) {
          pending.push({ op: "recv", dir: "backward", mb, chunk, peer: next });
        }
      }
      flush();
      for (const { kind, mb, chunk } of unit) {
        const k = chunk * pp + s;
        steps.push({ kind, mb, chunk });
        if (kind === "forward" && k < V - 1) {
          pending.push({ op: "send", dir: "forward", mb, chunk, peer: next });
        }
        if (kind === "backward" && k > 0) {
          pending.push({ op: "send", dir: "backward", mb, chunk, peer: prev });
        }
      }
    }
    flush();
    stages.push(steps);
  }
  return { name, pp, m, v, stages };
}

/** What {@linkcode chooseSchedule} decides from. */
export interface ChooseOptions extends ScheduleOptions {
  /** A schedule the user asked for; checked, not overridden. */
  requested?: ScheduleName;
}

/**
 * The one place a schedule is chosen: the requested one if given, otherwise `"none"` for one
 * stage, `"interleaved"` when `v > 1`, else `"1f1b"`. Throws for impossible combinations.
 *
 * @param opts sizes and an optional request
 * @returns the built schedule
 */
export function chooseSchedule(opts: ChooseOptions): PipelineSchedule {
  const v = opts.v ?? 1;
  const name: ScheduleName = opts.requested ??
    (opts.pp === 1 ? "none" : v > 1 ? "interleaved" : "1f1b");
  return buildSchedule(name, { pp: opts.pp, m: opts.m, v });
}
