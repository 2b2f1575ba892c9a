/**
 * The planner against real runs: for every layout that fits on this machine (one rank; dp 2;
 * tp 2; pp 2 with GPipe, 1F1B and interleaved; ZeRO 1-3 at dp 2; fp32 and bf16), plan.ts's
 * predicted step time beside the one `train.ts` measures, in the same sitting, after a fresh
 * calibration.
 *
 * ```sh
 * deno run -A bench/planner.ts            # a table
 * deno run -A bench/planner.ts --json     # one object per layout: layout, predicted_ms, measured_ms
 * ```
 *
 * The model is the one of issue 10's throughput table (`bench/_layouts.ts`): a character GPT
 * of width 256, 4 blocks of 8 heads, 128 tokens per sequence, 16 sequences per step, on ~300 KB
 * of generated text. A layout's measured time is the median wall time of the last 20 of 30
 * steps (`step_wall_ms` in metrics.jsonl), so start-up and the first steps' compilation do not
 * count and a neighbour's burst on a shared machine lengthens few of the steps it reads, the
 * fastest of `--passes` runs (default 2; the layouts take turns); the calibration keeps the
 * faster of two readings of each rate in the same way.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { machineCalibration, parsePlanArgs, planRows } from "../plan.ts";
import { BATCH, bestRuns, flag, MODEL, text } from "./_layouts.ts";

/** The layouts, as train.ts flags. */
const LAYOUTS: string[][] = [
  [],
  ["--dp", "2"],
  ["--tp", "2"],
  ["--pp", "2", "--pipeline-schedule", "gpipe"],
  ["--pp", "2", "--pipeline-schedule", "1f1b"],
  ["--pp", "2", "--virtual-stages", "2", "--pipeline-schedule", "interleaved"],
  ["--dp", "2", "--zero-stage", "1"],
  ["--dp", "2", "--zero-stage", "2"],
  ["--dp", "2", "--zero-stage", "3"],
  ["--precision", "bf16"],
  ["--dp", "2", "--zero-stage", "2", "--precision", "bf16"],
];

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      json: { type: "boolean", default: false },
      calibration: { type: "string" },
      passes: { type: "string", default: "2" },
    },
  });
  const dir = await Deno.makeTempDir({ prefix: "loom-planner-" });
  const data = `${dir}/text.txt`;
  await Deno.writeTextFile(data, text());
  const cal = await machineCalibration(
    values.calibration ?? `${dir}/calibration.json`,
    values.calibration === undefined,
    (l) => console.error(l),
  );
  const rows: { layout: string; predicted_ms: number; measured_ms: number; error: number }[] = [];
  const runs = await bestRuns(data, LAYOUTS, Number(values.passes));
  for (const [i, layout] of LAYOUTS.entries()) {
    const m = runs[i]!;
    const pp = flag(layout, "--pp", "1"), v = flag(layout, "--virtual-stages", "1");
    const plan = parsePlanArgs([
      "--vocab",
      String(m.vocab),
      ...MODEL,
      "--batch",
      String(BATCH),
      "--dp",
      flag(layout, "--dp", "1"),
      "--tp",
      flag(layout, "--tp", "1"),
      "--pp",
      pp,
      "--virtual-stages",
      v,
      "--zero-stage",
      flag(layout, "--zero-stage", "0"),
      "--precision",
      flag(layout, "--precision", "fp32"),
      ...(pp !== "1" && v === "1"
        ? ["--pipeline-schedule", flag(layout, "--pipeline-schedule", "1f1b")]
        : []),
    ]);
    const [row] = planRows(plan, cal);
    const predicted = row!.time!.stepMs;
    const rec = {
      layout: row!.name,
      predicted_ms: Math.round(predicted * 10) / 10,
      measured_ms: Math.round(m.ms * 10) / 10,
      error: Math.round((predicted / m.ms - 1) * 1000) / 1000,
    };
    rows.push(rec);
    if (values.json) console.log(JSON.stringify(rec));
  }
  if (!values.json) {
    const w = Math.max(...rows.map((r) => r.layout.length));
    console.log(`${"layout".padEnd(w)}  predicted ms  measured ms   error`);
    for (const r of rows) {
      console.log(
        `${r.layout.padEnd(w)}  ${r.predicted_ms.toFixed(1).padStart(12)}  ` +
          `${r.measured_ms.toFixed(1).padStart(11)}  ${(100 * r.error).toFixed(1).padStart(5)}%`,
      );
    }
  }
  await Deno.remove(dir, { recursive: true });
}
