/**
 * What the layout benchmarks share: the model of issue 10's throughput table (a character GPT
 * of width 256, 4 blocks of 8 heads, 128 tokens per sequence, 16 sequences per step) on about
 * 300 KB of generated text, and one `train.ts` run of a layout with what it measured.
 *
 * @module
 */
import type { RankPhases } from "../engine/mod.ts";
import { median } from "./_median.ts";

/** The model's train.ts flags. */
export const MODEL = ["--ctx", "128", "--dim", "256", "--layers", "4", "--heads", "8"];
/** Sequences per step. */
export const BATCH = 16;
/** Tokens per sequence. */
export const CTX = 128;
/** Steps per run: the last 20 are measured. */
export const STEPS = 30;

/** Text of about 300 KB from a seeded generator: words of a small vocabulary. */
export function text(): string {
  const words = ("the of and to in is was that for on with as by at from his her they which " +
    "one all were when there been have has had would more will their what about said each " +
    "time could people into first water long little very after words called just where most " +
    "know through back much before line right too means old any same tell boy follow came " +
    "want show also around form three small set put end does another well large must big")
    .split(" ");
  let x = 12345, out = "";
  while (out.length < 300_000) {
    x = (x * 1103515245 + 12345) >>> 0;
    out += words[x % words.length] + ((x >>> 8) % 13 === 0 ? ".\n" : " ");
  }
  return out;
}

/** The value of `name` among train.ts flags, or `dflt`. */
export function flag(args: string[], name: string, dflt: string): string {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1]! : dflt;
}

/** What one run measured. */
export interface LayoutRun {
  /** Milliseconds per step: the median wall time of the last 20 steps. */
  ms: number;
  /** Tokens per second at that step time. */
  tokensPerS: number;
  /** The vocabulary train.ts built from the text. */
  vocab: number;
  /** Every rank's mean milliseconds per step by phase, over the whole run. */
  phases: RankPhases[];
}

/**
 * Train the model with a layout's flags on `data` for {@linkcode STEPS} steps. With `copies`
 * above 1, that many independent runs train at once and their tokens/s add up: two one-rank runs
 * of half the batch each are what two ranks could reach on this machine with no communication at
 * all, the ceiling of `--dp 2`.
 *
 * @param data the text file
 * @param layout train.ts flags of the layout
 * @param copies independent runs at once
 * @returns what the run measured (with copies, every copy's ranks in turn)
 */
export async function runLayout(
  data: string,
  layout: string[],
  copies = 1,
): Promise<LayoutRun> {
  if (copies > 1) {
    const all = await Promise.all(Array.from({ length: copies }, () => runLayout(data, layout)));
    const tokensPerS = all.reduce((a, r) => a + r.tokensPerS, 0);
    return {
      ms: BATCH * CTX * 1000 / tokensPerS,
      tokensPerS,
      vocab: all[0]!.vocab,
      phases: all.flatMap((r, i) => r.phases.map((p) => ({ ...p, rank: i }))),
    };
  }
  const out = await Deno.makeTempDir({ prefix: "loom-layout-" });
  try {
    const r = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", new URL("../train.ts", import.meta.url).pathname, "--data", data]
        .concat([...MODEL, "--batch", String(BATCH), "--steps", String(STEPS)])
        .concat(["--eval-every", "0", "--out", out, ...layout]),
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stdout = new TextDecoder().decode(r.stdout);
    if (r.code !== 0) {
      throw new Error(
        `train.ts ${layout.join(" ")} failed:\n${new TextDecoder().decode(r.stderr)}`,
      );
    }
    const vocab = Number(/vocab (\d+)\)/.exec(stdout)?.[1]);
    const steps = (await Deno.readTextFile(`${out}/metrics.jsonl`)).trim().split("\n")
      .map((l) => JSON.parse(l)).filter((r) => r.kind === undefined);
    const ranks = (await Deno.readTextFile(`${out}/ranks.jsonl`)).trim().split("\n");
    // The median of the last 20 steps' wall times: a neighbour's burst on a shared machine
    // lengthens a few steps, which a mean would carry and a median does not.
    const ms = median(steps.slice(-20).map((r) => r.step_wall_ms as number));
    const tokensPerStep = steps.at(-1)!.tokens - steps.at(-2)!.tokens;
    return {
      ms,
      tokensPerS: tokensPerStep * 1000 / ms,
      vocab,
      phases: JSON.parse(ranks.at(-1)!).phases ?? [],
    };
  } finally {
    await Deno.remove(out, { recursive: true });
  }
}

/**
 * Run every layout `passes` times, the layouts in turn in each pass, and keep each layout's
 * fastest run: on a shared machine a neighbour's burst slows one run, not every pass.
 *
 * @param data the text file
 * @param layouts train.ts flags of each layout
 * @param passes runs of each layout
 * @param copies independent runs at once of each layout (default 1; see {@linkcode runLayout})
 * @returns each layout's fastest run, in order
 */
export async function bestRuns(
  data: string,
  layouts: string[][],
  passes: number,
  copies: number[] = [],
): Promise<LayoutRun[]> {
  const best: (LayoutRun | null)[] = layouts.map(() => null);
  for (let p = 0; p < passes; p++) {
    for (const [i, layout] of layouts.entries()) {
      const r = await runLayout(data, layout, copies[i] ?? 1);
      if (best[i] === null || r.ms < best[i]!.ms) best[i] = r;
    }
  }
  return best as LayoutRun[];
}
