/**
 * Pipeline schedules on a GPT: step time and the measured bubble (the time each stage sits idle
 * inside a step, over the step, averaged over stages) next to the theory, (p-1)/(m+p-1) for
 * GPipe and 1F1B and 1/v of that for interleaved 1F1B, plus what the event simulator predicts
 * for the same schedule with uniform stages, and for the last timed step the measured bubble
 * next to the simulator replaying that step's measured compute times (the difference is what
 * communication and waking up cost; the replay's excess over theory is uneven compute).
 *
 * ```sh
 * deno run -A bench/pipeline.ts [--json] [--pp 2,4] [--m 8] [--steps 5] [--dim 128] [--batch 8]
 *   [--timeline] [--overlap]
 * ```
 *
 * `--overlap` runs the executor with `overlap: true` (receives awaited where used, sends at the end).
 * Each stage is a Worker on the CPU backend (one BLAS thread). With pp = 4 on a 2-core machine
 * the Workers share cores, so those figures are reported but not comparable with the theory.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { runWorkers } from "../collectives/mod.ts";
import type { GptConfig } from "../models/mod.ts";
import {
  buildSchedule,
  renderTimeline,
  type ScheduleName,
  simulateSchedule,
} from "../parallel/mod.ts";
import type { BenchRankInput, BenchRankResult } from "./_pipeline_rank.ts";

const args = parseArgs({
  args: Deno.args,
  options: {
    json: { type: "boolean" },
    pp: { type: "string", default: "2,4" },
    m: { type: "string", default: "8" },
    steps: { type: "string", default: "5" },
    dim: { type: "string", default: "128" },
    timeline: { type: "boolean" },
    overlap: { type: "boolean" },
    batch: { type: "string", default: "8" },
    help: { type: "boolean" },
  },
  strict: true,
}).values;

if (args.help) {
  console.log(
    "deno run -A bench/pipeline.ts [--json] [--pp 2,4] [--m 8] [--steps 5] [--dim 128] " +
      "[--batch 8] [--timeline] [--overlap]",
  );
  Deno.exit(0);
}

function int(name: string, s: string): number {
  const x = Number(s);
  if (!Number.isInteger(x) || x < 1) {
    console.error(`--${name} must be a positive integer, got ${s}`);
    Deno.exit(2);
  }
  return x;
}

const ppList = String(args.pp).split(",").map((s) => int("pp", s));
const m = int("m", String(args.m));
const steps = int("steps", String(args.steps));
const dim = int("dim", String(args.dim));
const cfg: GptConfig = { vocab: 64, ctx: 64, dim, layers: 8, heads: 4 };
const B = int("batch", String(args.batch));
const T = 64;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

const cores = navigator.hardwareConcurrency;
const load = Deno.loadavg()[0]!;
if (!args.json) {
  console.log(
    `${cores} cores, load average ${load.toFixed(2)} (figures are noisy when it exceeds the cores)`,
  );
}
for (const pp of ppList) {
  const runs: [ScheduleName, number][] = [["gpipe", 1], ["1f1b", 1]];
  if (m % pp === 0 && cfg.layers % (2 * pp) === 0) runs.push(["interleaved", 2]);
  for (const [schedule, v] of runs) {
    const input: BenchRankInput = {
      cfg,
      schedule,
      v,
      m,
      B,
      T,
      warmup: 2,
      steps,
      overlap: Boolean(args.overlap),
    };
    const ranks = await runWorkers<BenchRankResult>({
      size: pp,
      module: new URL("./_pipeline_rank.ts", import.meta.url),
      data: input,
      timeoutMs: 120_000,
    });
    const perStep = ranks[0]!.wallMs.map((_, i) => Math.max(...ranks.map((r) => r.wallMs[i]!)));
    const bubbles = ranks[0]!.wallMs.map((_, i) =>
      ranks.reduce((a, r) => a + r.idleMs[i]! / r.wallMs[i]!, 0) / pp
    );
    const theory = (pp - 1) / (m + pp - 1) / v;
    const built = buildSchedule(schedule, { pp, m, v });
    const sim = simulateSchedule(built);
    // The same schedule replayed with the compute times measured in the last step: what the
    // bubble would be with free communication, given this machine's uneven step times.
    const dur = new Map<string, number>();
    for (const r of ranks) {
      for (const t of r.trace) dur.set(`${r.stage}:${t.kind}:${t.mb}:${t.chunk}`, t.end - t.start);
    }
    const replay = simulateSchedule(built, {
      duration: (s, kind, mb, chunk) => dur.get(`${s}:${kind}:${mb}:${chunk}`)!,
    });
    const lastWall = ranks.reduce((a, r) => a + r.idleMs.at(-1)! / r.wallMs.at(-1)!, 0) / pp;
    const row = {
      pp,
      m,
      v,
      schedule,
      step_ms: Number(median(perStep).toFixed(1)),
      bubble_measured: Number(median(bubbles).toFixed(3)),
      bubble_theory: Number(theory.toFixed(3)),
      bubble_simulated: Number(sim.bubbleFraction.toFixed(3)),
      bubble_last_step: Number(lastWall.toFixed(3)),
      bubble_replayed_last_step: Number(replay.bubbleFraction.toFixed(3)),
      comparable: pp <= cores,
      cores,
      load: Number(load.toFixed(2)),
    };
    if (args.json) console.log(JSON.stringify(row));
    else {
      console.log(
        `pp=${pp} m=${m} ${schedule.padEnd(11)} v=${v}  step ${row.step_ms.toFixed(1)} ms  ` +
          `bubble ${row.bubble_measured.toFixed(3)} (theory ${row.bubble_theory.toFixed(3)}, ` +
          `simulated ${row.bubble_simulated.toFixed(3)}; last step ${row.bubble_last_step} vs ` +
          `${row.bubble_replayed_last_step} replaying its compute times)${
            row.comparable ? "" : `  [${pp} Workers on ${cores} cores: not comparable]`
          }`,
      );
      if (args.timeline) {
        console.log(renderTimeline(sim));
        // The last timed step as it ran, one column per median forward time.
        const measured = {
          schedule: built,
          makespan: Math.max(...ranks.map((r) => r.wallMs.at(-1)!)),
          stages: ranks.map((r) => ({
            intervals: r.trace,
            busy: r.trace.reduce((a, t) => a + t.end - t.start, 0),
            peakInFlight: 0,
          })),
          bubbleFraction: lastWall,
        };
        const fwd = ranks.flatMap((r) => r.trace.filter((t) => t.kind === "forward"));
        const unit = median(fwd.map((t) => t.end - t.start));
        console.log(renderTimeline(measured, unit).replace(/^[^:]*:/, "measured:"));
      }
    }
  }
}
