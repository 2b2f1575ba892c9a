// Rank side of the engine's multi-rank tests: train a few steps of the addition task with the
// configuration given, and report what the tests check (losses, skipped steps, loss scale,
// memory from the allocations, wire bytes per step).

import type { Communicator } from "../../collectives/mod.ts";
import { AdditionTask, type Batch, replicaShare } from "../../data/mod.ts";
import { type EngineConfig, initialize, type RankMemory } from "../../engine/mod.ts";
import { createCpuBackend } from "../../kernels/mod.ts";

export interface EngineRankResult {
  losses: number[];
  skipped: boolean[];
  scales: number[];
  memory: RankMemory;
  wireBytes: number;
  /** Parameter bytes of this rank's layout, by its declared shapes (no padding). */
  paramElements: number;
}

export async function main(
  comm: Communicator,
  d: { config: EngineConfig; steps: number; ignoreRank?: number },
): Promise<EngineRankResult> {
  const engine = await initialize(d.config, {
    world: comm,
    backend: createCpuBackend({ gemm: "ts" }),
    timeoutMs: 30_000,
  });
  const task = new AdditionTask({ digits: 2, heldOut: 10 });
  const src = task.trainBatches(engine.config.batchSize, 3);
  const losses: number[] = [], skipped: boolean[] = [], scales: number[] = [];
  let wireBytes = 0;
  for (let i = 0; i < d.steps; i++) {
    const batch: Batch = src.next();
    if (d.ignoreRank !== undefined) {
      // The rows data-parallel rank `ignoreRank` trains on score nothing: its gradient is 0.
      const rows = engine.config.batchSize / engine.layout.dp;
      const T = batch.T;
      batch.targets.fill(-1, d.ignoreRank * rows * T, (d.ignoreRank + 1) * rows * T);
    }
    const r = await engine.trainBatch(
      replicaShare([batch], engine.groups.coords.dp, engine.layout.dp),
    );
    losses.push(r.loss);
    skipped.push(r.skipped);
    scales.push(r.lossScale);
    wireBytes = engine.zero.commStats().wireBytes;
  }
  return {
    losses,
    skipped,
    scales,
    memory: engine.memory(),
    wireBytes,
    paramElements: engine.model.numParams,
  };
}
