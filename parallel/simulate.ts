/**
 * An event simulator for pipeline schedules: runs every stage's step list with blocking
 * point-to-point (an exchange step posts all its sends and receives, and completes once each
 * has met its partner on the peer stage), gives compute steps a duration, and reports the
 * timeline, idle time and peak activation memory. Also draws the timeline as text.
 *
 * @module
 */

import type { PipelineSchedule, PipelineStep } from "./schedules.ts";

/** Durations of the simulated compute steps (any unit). */
export interface SimulateOptions {
  /** Time of one forward of one chunk; default 1 / v. */
  forwardTime?: number;
  /** Time of one backward of one chunk; default 2 / v. */
  backwardTime?: number;
  /**
   * Time of each compute step, overriding the two above (e.g. times measured in a real run).
   *
   * @param stage the stage
   * @param kind forward or backward
   * @param mb the micro-batch
   * @param chunk the chunk on that stage
   * @returns the duration
   */
  duration?: (stage: number, kind: "forward" | "backward", mb: number, chunk: number) => number;
}

/** A compute step placed in time. */
export interface Interval {
  /** Start time. */
  readonly start: number;
  /** End time. */
  readonly end: number;
  /** Forward or backward. */
  readonly kind: "forward" | "backward";
  /** Micro-batch. */
  readonly mb: number;
  /** Chunk on this stage. */
  readonly chunk: number;
}

/** One stage's simulated run. */
export interface StageRun {
  /** Compute steps in order, with times. */
  readonly intervals: readonly Interval[];
  /** Time spent computing. */
  readonly busy: number;
  /** Most (micro-batch, chunk) pairs whose forward ran and backward had not, at any time. */
  readonly peakInFlight: number;
}

/** The result of {@linkcode simulateSchedule}. */
export interface Simulation {
  /** The schedule that ran. */
  readonly schedule: PipelineSchedule;
  /** Time at which the last stage finished. */
  readonly makespan: number;
  /** Per stage. */
  readonly stages: readonly StageRun[];
  /** Mean over stages of (idle time / makespan). */
  readonly bubbleFraction: number;
}

/** Thrown when the step lists cannot all finish. */
export class DeadlockError extends Error {
  /** Index of the step each stage was stuck on (its list length if it finished). */
  readonly stuckAt: readonly number[];
  /**
   * Build the error.
   *
   * @param message what is stuck
   * @param stuckAt step index per stage
   */
  constructor(message: string, stuckAt: readonly number[]) {
    super(message);
    this.name = "DeadlockError";
    this.stuckAt = stuckAt;
  }
}

function key(dir: string, mb: number, virtualStage: number): string {
  return `${dir}:${mb}:${virtualStage}`;
}

/**
 * Run a schedule in simulation. Throws a {@linkcode DeadlockError} if the stages block each
 * other, and a `RangeError` if a send has no matching receive (or the reverse), a forward or
 * backward runs before its input exists, or a micro-batch's backward precedes its forward.
 *
 * @param schedule the schedule
 * @param opts compute durations
 * @returns the timeline
 */
export function simulateSchedule(
  schedule: PipelineSchedule,
  opts: SimulateOptions = {},
): Simulation {
  const { pp, v, m } = schedule;
  const tf = opts.forwardTime ?? 1 / v;
  const tb = opts.backwardTime ?? 2 / v;
  const V = pp * v;
  // Global transfer id of a p2p op: activations leaving virtual stage k, gradients leaving k.
  const transferOf = (s: number, o: { op: string; dir: string; mb: number; chunk: number }) => {
    const k = o.chunk * pp + s;
    const sender = o.op === "send" ? k : o.dir === "forward" ? k - 1 : k + 1;
    return key(o.dir, o.mb, sender);
  };
  const posted = new Map<string, { send?: number; recv?: number; sendStage?: number }>();
  // Per directed pair "from>to", the transfers in the order each side posts them: a transport
  // that delivers messages between two ranks in order (shared memory, TCP) needs both equal.
  const sendOrder = new Map<string, string[]>();
  const recvOrder = new Map<string, string[]>();
  const push = (m: Map<string, string[]>, k: string, id: string) => {
    const l = m.get(k);
    if (l) l.push(id);
    else m.set(k, [id]);
  };
  const pos = new Array<number>(pp).fill(0);
  const clock = new Array<number>(pp).fill(0);
  const postedStep = new Array<number>(pp).fill(-1);
  const intervals: Interval[][] = Array.from({ length: pp }, () => []);
  const fEnd = new Map<string, number>();
  const bEnd = new Map<string, number>();
  const arrived = new Map<string, number>();
  let progress = true;
  while (progress) {
    progress = false;
    for (let s = 0; s < pp; s++) {
      while (pos[s]! < schedule.stages[s]!.length) {
        const step: PipelineStep = schedule.stages[s]![pos[s]!]!;
        if (step.kind === "p2p") {
          if (postedStep[s] !== pos[s]) {
            for (const o of step.ops) {
              const id = transferOf(s, o);
              const k = o.chunk * pp + s;
              if (o.op === "send" && !(o.dir === "forward" ? fEnd : bEnd).has(`${o.mb}:${k}`)) {
                throw new RangeError(`Stage ${s} sends ${id} before computing it`);
              }
              const e = posted.get(id) ?? {};
              if (e[o.op] !== undefined) {
                throw new RangeError(`Stage ${s} posts ${o.op} of ${id} a second time`);
              }
              e[o.op] = clock[s]!;
              if (o.op === "send") e.sendStage = s;
              posted.set(id, e);
              if (o.op === "send") push(sendOrder, `${s}>${o.peer}`, id);
              else push(recvOrder, `${o.peer}>${s}`, id);
            }
            postedStep[s] = pos[s]!;
          }
          let done = clock[s]!;
          let all = true;
          for (const o of step.ops) {
            const e = posted.get(transferOf(s, o))!;
            if (e.send === undefined || e.recv === undefined) {
              all = false;
              break;
            }
            done = Math.max(done, e.send, e.recv);
            if (o.op === "recv") {
              if (e.sendStage !== o.peer) {
                throw new RangeError(`Stage ${s} receives ${transferOf(s, o)} from the wrong peer`);
              }
              arrived.set(`${s}:${transferOf(s, o)}`, done);
            }
          }
          if (!all) break;
          clock[s] = done;
        } else {
          const k = step.chunk * pp + s;
          const id = `${step.mb}:${k}`;
          let start = clock[s]!;
          if (step.kind === "forward") {
            if (k > 0) {
              const a = arrived.get(`${s}:${key("forward", step.mb, k - 1)}`);
              const f = fEnd.get(`${step.mb}:${k - 1}`);
              if (a === undefined || f === undefined) {
                throw new RangeError(
                  `Stage ${s} runs forward(mb ${step.mb}, chunk ${step.chunk}) before receiving its input`,
                );
              }
              start = Math.max(start, f);
            }
            clock[s] = start + (opts.duration?.(s, "forward", step.mb, step.chunk) ?? tf);
            fEnd.set(id, clock[s]!);
          } else {
            if (!fEnd.has(id)) {
              throw new RangeError(
                `Stage ${s} runs backward(mb ${step.mb}, chunk ${step.chunk}) before its forward`,
              );
            }
            if (k < V - 1) {
              const a = arrived.get(`${s}:${key("backward", step.mb, k + 1)}`);
              const b = bEnd.get(`${step.mb}:${k + 1}`);
              if (a === undefined || b === undefined) {
                throw new RangeError(
                  `Stage ${s} runs backward(mb ${step.mb}, chunk ${step.chunk}) before receiving its gradient`,
                );
              }
              start = Math.max(start, b);
            }
            clock[s] = start + (opts.duration?.(s, "backward", step.mb, step.chunk) ?? tb);
            bEnd.set(id, clock[s]!);
          }
          intervals[s]!.push({
            start,
            end: clock[s]!,
            kind: step.kind,
            mb: step.mb,
            chunk: step.chunk,
          });
        }
        pos[s]!++;
        progress = true;
      }
    }
  }
  if (pos.some((p, s) => p < schedule.stages[s]!.length)) {
    const where = pos.map((p, s) => `stage ${s} at step ${p}/${schedule.stages[s]!.length}`);
    throw new DeadlockError(`Schedule "${schedule.name}" deadlocks: ${where.join(", ")}`, pos);
  }
  for (const [id, e] of posted) {
    if (e.send === undefined || e.recv === undefined) {
      throw new RangeError(`Transfer ${id} has a ${e.send === undefined ? "recv" : "send"} only`);
    }
  }
  for (const [pair, sends] of sendOrder) {
    const recvs = recvOrder.get(pair) ?? [];
    const i = sends.findIndex((id, j) => recvs[j] !== id);
    if (i >= 0 || sends.length !== recvs.length) {
      throw new RangeError(
        `Stages ${pair.replace(">", " -> ")} send and receive in different orders (message ${i}: ` +
          `sent ${sends[i]}, received ${recvs[i]}): an in-order transport would mismatch`,
      );
    }
  }
  for (let mb = 0; mb < m; mb++) {
    for (let k = 0; k < V; k++) {
      if (!fEnd.has(`${mb}:${k}`) || !bEnd.has(`${mb}:${k}`)) {
        throw new RangeError(
          `Micro-batch ${mb} misses a forward or backward on virtual stage ${k}`,
        );
      }
    }
  }
  const makespan = Math.max(...clock);
  const stages = intervals.map((iv): StageRun => {
    let live = 0;
    let peak = 0;
    for (const x of iv) {
      live += x.kind === "forward" ? 1 : -1;
      peak = Math.max(peak, live);
    }
    return { intervals: iv, busy: iv.reduce((a, x) => a + x.end - x.start, 0), peakInFlight: peak };
  });
  const bubbleFraction = stages.reduce((a, st) => a + (makespan - st.busy) / makespan, 0) / pp;
  return { schedule, makespan, stages, bubbleFraction };
}

/**
 * Draw a simulation as text, one row per stage, one column per `unit` of time: `F3` is the
 * forward of micro-batch 3 (`F3b` its chunk 1 when v > 1), `B3` its backward, `.` idle.
 *
 * @example GPipe on 2 stages
 * ```ts
 * import { buildSchedule, renderTimeline, simulateSchedule } from "./mod.ts";
 * const sim = simulateSchedule(buildSchedule("gpipe", { pp: 2, m: 2 }), {
 *   forwardTime: 1,
 *   backwardTime: 1,
 * });
 * console.log(renderTimeline(sim));
 * ```
 *
 * @param sim the simulation
 * @param unit the time of one column; default the shortest step
 * @returns the drawing, lines joined by "\n"
 */
export function renderTimeline(sim: Simulation, unit?: number): string {
  const all = sim.stages.flatMap((s) => s.intervals);
  const u = unit ?? Math.min(...all.map((x) => x.end - x.start));
  const cols = Math.round(sim.makespan / u);
  const label = (x: Interval) =>
    (x.kind === "forward" ? "F" : "B") + x.mb +
    (sim.schedule.v > 1 ? String.fromCharCode(97 + x.chunk) : "");
  const width = Math.max(...all.map((x) => label(x).length)) + 1;
  const lines = [
    `${sim.schedule.name} pp=${sim.schedule.pp} m=${sim.schedule.m} v=${sim.schedule.v}: ` +
    `bubble ${(sim.bubbleFraction * 100).toFixed(1)}%`,
  ];
  sim.stages.forEach((st, s) => {
    const cells = new Array<string>(cols).fill(".".padEnd(width));
    for (const x of st.intervals) {
      const a = Math.round(x.start / u);
      const b = Math.round(x.end / u);
      for (let c = a; c < b; c++) cells[c] = (c === a ? label(x) : "-").padEnd(width);
    }
    lines.push(`stage ${s} | ${cells.join("")}`);
  });
  return lines.join("\n");
}
