/**
 * What the memory benchmarks share: running a measurement in a child process of its own (so
 * its peak resident set is the run's alone) and, inside it, the layout's ranks as Workers.
 *
 * @module
 */
import type { Communicator } from "../collectives/mod.ts";
import { runWorkers } from "../collectives/world.ts";
import type { EngineConfig } from "../engine/mod.ts";

/**
 * Run `deno run -A script ...args` and parse the JSON object on the last line it prints.
 *
 * @param script the child module
 * @param args its arguments
 * @param what the run, for the error when it fails
 * @returns the parsed object
 */
export async function runChild<T>(script: URL, args: string[], what: string): Promise<T> {
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", script.pathname, ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const line = new TextDecoder().decode(r.stdout).trim().split("\n").at(-1) ?? "";
  if (r.code !== 0 || !line.startsWith("{")) {
    throw new Error(`the ${what} run failed:\n${new TextDecoder().decode(r.stderr)}`);
  }
  return JSON.parse(line);
}

/**
 * Run `main` on every rank of the configuration's layout (Workers of this process running
 * `module`, or here for one rank) and return each rank's result.
 *
 * @param config the engine configuration (its tp, pp and dp sizes)
 * @param module the module whose `main(world, data)` each Worker runs
 * @param data what every rank gets
 * @param main this module's rank function, for a one-rank layout
 * @returns each rank's result
 */
export async function onEveryRank<T, D>(
  config: Partial<EngineConfig>,
  module: URL,
  data: D,
  main: (world: Communicator | undefined, data: D) => Promise<T>,
): Promise<T[]> {
  const size = (config.tensor_model_parallel_size ?? 1) *
    (config.pipeline_model_parallel_size ?? 1) * (config.data_parallel_size ?? 1);
  if (size === 1) return [await main(undefined, data)];
  return await runWorkers<T>({ size, module, data, timeoutMs: 600_000 });
}
