// Rank side of the trainer's input checks: each bad layout must fail before any collective.

import type { Communicator } from "../../collectives/mod.ts";
import { createReferenceBackend } from "../../kernels/mod.ts";
import { AdamW } from "../../optim/mod.ts";
import { ParallelGptTrainer, type ParallelTrainerOptions } from "../../parallel/mod.ts";

export async function main(comm: Communicator): Promise<string[]> {
  const be = createReferenceBackend();
  const base: ParallelTrainerOptions = {
    world: comm,
    backend: be,
    config: { vocab: 16, ctx: 8, dim: 8, layers: 2, heads: 2 },
    tp: 2,
    microBatches: 2,
    microBatchSize: 1,
    seqLen: 8,
    init: (s) => new Float32Array(s.shape.reduce((a, b) => a * b, 1)),
    optimizer: (layout, p, g) => new AdamW(be, layout, p, g),
  };
  const bad: Partial<ParallelTrainerOptions>[] = [
    { config: { ...base.config, vocab: 15 } },
    { config: { ...base.config, heads: 1 } },
    { pp: 2, tp: 1, virtualStages: 2 },
    { sequenceParallel: true, seqLen: 7 },
    { tp: 3 },
    { pp: 2, tp: 1, schedule: "interleaved", virtualStages: 1 },
  ];
  const out: string[] = [];
  for (const b of bad) {
    try {
      await ParallelGptTrainer.create({ ...base, ...b });
      out.push("no error");
    } catch (e) {
      out.push(`${(e as Error).name}: ${(e as Error).message}`);
    }
  }
  return out;
}
