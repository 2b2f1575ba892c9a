/**
 * Multi-rank throughput on this machine: the layouts of issue 10's table side by side in one
 * sitting (one rank on one BLAS thread, one rank on every core, `--dp 2`, `--tp 2`, `--pp 2`),
 * each a `train.ts` run of 30 steps of the model in `bench/_layouts.ts`, measured by the median
 * wall time of its last 20 steps, the fastest of `--passes` runs (default 2, the layouts taking
 * turns). Beside them, the machine's own ceiling for two ranks: two independent one-rank runs of
 * half the batch at once, which share the cores' caches and memory bandwidth as two ranks do but
 * never talk.
 * Each row prints its tokens/s, its speed-up over one rank on one thread, and where every rank's
 * step went (forward, backward, waiting for pipeline peers, gradient reductions, optimizer step).
 *
 * ```sh
 * deno run -A bench/throughput.ts          # a table
 * deno run -A bench/throughput.ts --json   # one object per layout
 * ```
 *
 * @module
 */
import { parseArgs } from "node:util";
import { BATCH, bestRuns, text } from "./_layouts.ts";

/**
 * The layouts: a name, its train.ts flags and how many independent runs train at once. The
 * third row is no layout but the ceiling of `--dp 2` on this machine: two one-rank runs of half
 * the batch each at the same time, with no communication between them, their tokens/s added.
 */
const LAYOUTS: [string, string[], number][] = [
  ["one rank, 1 BLAS thread", ["--threads", "1"], 1],
  ["one rank, every core", [], 1],
  ["2 x one rank, half batch", ["--threads", "1", "--batch", String(BATCH / 2)], 2],
  ["--dp 2", ["--dp", "2"], 1],
  ["--tp 2", ["--tp", "2"], 1],
  ["--pp 2", ["--pp", "2"], 1],
];

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      json: { type: "boolean", default: false },
      passes: { type: "string", default: "2" },
    },
  });
  const dir = await Deno.makeTempDir({ prefix: "loom-throughput-" });
  const data = `${dir}/text.txt`;
  await Deno.writeTextFile(data, text());
  let base = 0;
  const fmt = (x: number) => x.toFixed(1).padStart(7);
  if (!values.json) {
    console.log(
      `${"layout".padEnd(24)} ${"tokens/s".padStart(9)} speed-up  rank  forward backward ` +
        "pipe-idle  reduce     step  (ms per step)",
    );
  }
  const runs = await bestRuns(
    data,
    LAYOUTS.map(([, f]) => f),
    Number(values.passes),
    LAYOUTS.map(([, , n]) => n),
  );
  for (const [i, [name]] of LAYOUTS.entries()) {
    const r = runs[i]!;
    if (base === 0) base = r.tokensPerS;
    const speedup = Math.round(r.tokensPerS / base * 100) / 100;
    if (values.json) {
      console.log(JSON.stringify({
        layout: name,
        tokens_per_s: Math.round(r.tokensPerS),
        speedup,
        ms_per_step: Math.round(r.ms * 10) / 10,
        phases: r.phases,
      }));
      continue;
    }
    r.phases.forEach((p, i) => {
      const head = i === 0
        ? `${name.padEnd(24)} ${Math.round(r.tokensPerS).toLocaleString("en-US").padStart(9)} ` +
          `${speedup.toFixed(2).padStart(7)}x`
        : " ".repeat(43);
      console.log(
        `${head}  ${String(p.rank).padStart(4)} ${fmt(p.forward_ms)} ${fmt(p.backward_ms)}   ` +
          `${fmt(p.pipeline_idle_ms)} ${fmt(p.reduce_ms)}  ${fmt(p.step_ms)}`,
      );
    });
  }
  await Deno.remove(dir, { recursive: true });
}
