// Child of atomic_test.ts: save a checkpoint of a small run into the run directory given, take
// one more step and start a second save that pauses (forever) at the phase given, after writing
// a marker file, so that the test can kill this process in the middle of the save.
//
//   deno run -A tests/engine/_ckpt_child.ts RUN_DIR shard|commit MARKER

import { AdditionTask } from "../../data/mod.ts";
import { type EngineConfig, initialize } from "../../engine/mod.ts";
import { createCpuBackend } from "../../kernels/mod.ts";

export const task = new AdditionTask({ digits: 2, heldOut: 20 });
export const config: EngineConfig = {
  model: { vocab: 12, ctx: task.seqLen, dim: 32, layers: 2, heads: 2 },
  train_batch_size: 8,
  optimizer: { type: "AdamW", params: { lr: 3e-3 } },
  seed: 3,
};

if (import.meta.main) {
  const [dir, phase, marker] = Deno.args as [string, "shard" | "commit", string];
  const engine = await initialize(config, { backend: createCpuBackend({ threads: 1 }) });
  const src = task.trainBatches(8, 1);
  await engine.trainBatch([src.next()]);
  await engine.save(dir);
  await engine.trainBatch([src.next()]);
  await engine.save(dir, {}, {}, {
    onProgress: async (p) => {
      if (p.phase === phase && (phase === "commit" || p.written === 5)) {
        await Deno.writeTextFile(marker, `${p.phase} ${p.written}/${p.total}`);
        await new Promise((resolve) => setTimeout(resolve, 600_000));
      }
    },
  });
  console.error("the save was not interrupted");
  Deno.exit(1);
}
