// Child of bench/memory.ts: train train.ts's default task with the layout given for a few steps
// (every rank a Worker of this process), then print this process's peak resident set and what
// each rank's engine measured.
import type { Communicator } from "../collectives/mod.ts";
import { AdditionTask, replicaShare } from "../data/mod.ts";
import { type EngineConfig, initialize, type RankMemory } from "../engine/mod.ts";
import { createCpuBackend } from "../kernels/mod.ts";
import { onEveryRank } from "./_child.ts";

/** The run a child makes. */
export interface MemoryRun {
  config: EngineConfig;
  steps: number;
}

/** One rank: train, then report its memory. */
export async function main(world: Communicator | undefined, run: MemoryRun): Promise<RankMemory> {
  const engine = await initialize(run.config, {
    world,
    backend: createCpuBackend({ threads: 1 }),
  });
  const task = new AdditionTask({ digits: 3 });
  const src = task.trainBatches(engine.config.batchSize, 1);
  for (let i = 0; i < run.steps; i++) {
    await engine.trainBatch(replicaShare([src.next()], engine.groups.coords.dp, engine.layout.dp));
  }
  return engine.memory();
}

if (import.meta.main) {
  const run: MemoryRun = JSON.parse(Deno.args[0]!);
  const perRank = await onEveryRank(run.config, new URL(import.meta.url), run, main);
  const status = await Deno.readTextFile("/proc/self/status");
  const hwm = status.split("\n").find((l) => l.startsWith("VmHWM"))!;
  console.log(JSON.stringify({ vmhwm_kib: Number(hwm.split(/\s+/)[1]), perRank }));
}
