/**
 * Rebuild a run's `report.html` from its records, or overlay several runs in one report (their
 * curves in one chart each, so two layouts or two precisions compare at a glance).
 *
 * ```sh
 * deno run -A tools/report.ts RUN_DIR                      # writes RUN_DIR/report.html
 * deno run -A tools/report.ts RUN_A RUN_B --out ab.html    # one page, both runs
 * ```
 *
 * With several runs and no `--out`, the page goes to `report.html` in the current directory.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { readRun, renderReport } from "../engine/report.ts";

const USAGE = "usage: deno run -A tools/report.ts RUN_DIR [RUN_DIR ...] [--out FILE]\n" +
  "  one run: writes RUN_DIR/report.html; several: --out FILE (default ./report.html)";

/**
 * Run the tool.
 *
 * @param argv the arguments
 * @returns the exit status (0 done, 2 bad input)
 */
export async function main(argv: readonly string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: [...argv],
      options: { out: { type: "string" }, help: { type: "boolean", default: false } },
      allowPositionals: true,
      strict: true,
    });
  } catch (e) {
    console.error(`error: ${(e as Error).message}\n${USAGE}`);
    return 2;
  }
  const { values, positionals } = parsed;
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  if (positionals.length === 0) {
    console.error(`error: give at least one run directory\n${USAGE}`);
    return 2;
  }
  const runs = [];
  for (const dir of positionals) {
    try {
      runs.push(await readRun(dir));
    } catch (e) {
      if (e instanceof Deno.errors.NotFound || e instanceof SyntaxError) {
        console.error(`error: ${(e as Error).message}`);
        return 2;
      }
      throw e;
    }
  }
  // Two runs of the same name (runs/a/x, runs/b/x) are told apart by their paths.
  const names = runs.map((r) => r.name);
  runs.forEach((r, i) => {
    if (names.indexOf(r.name) !== i || names.lastIndexOf(r.name) !== i) r.name = positionals[i]!;
  });
  const out = values.out ?? (runs.length === 1 ? `${positionals[0]}/report.html` : "report.html");
  await Deno.writeTextFile(out, renderReport(runs));
  console.log(`wrote ${out}: ${runs.map((r) => `${r.name} (${r.steps.length} steps)`).join(", ")}`);
  return 0;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
