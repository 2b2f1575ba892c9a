// A process killed (SIGKILL) in the middle of a save, while its shard is half written or once
// every shard is on disk but before the checkpoint is renamed into place, leaves `latest` and
// the previous checkpoint as they were: the run loads from it, and the next save clears what
// the interrupted one left.

import assert from "node:assert/strict";
import {
  initialize,
  listCheckpoints,
  readCheckpointIndex,
  verifyCheckpoint,
} from "../../engine/mod.ts";
import { createCpuBackend } from "../../kernels/mod.ts";
import { config, task } from "./_ckpt_child.ts";

const child = new URL("./_ckpt_child.ts", import.meta.url).pathname;

async function killMidSave(dir: string, phase: "shard" | "commit"): Promise<string> {
  const marker = `${dir}.paused`;
  const proc = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", child, dir, phase, marker],
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const deadline = Date.now() + 60_000;
  let where: string | null = null;
  while (where === null) {
    try {
      where = await Deno.readTextFile(marker);
    } catch {
      if (Date.now() > deadline) {
        proc.kill("SIGKILL");
        throw new Error(`the child did not reach the ${phase} phase of its save`);
      }
      await new Promise((r) => setTimeout(r, 25));
    }
  }
  proc.kill("SIGKILL");
  const status = await proc.status;
  await proc.stderr.cancel();
  assert.equal(status.signal, "SIGKILL");
  await Deno.remove(marker);
  return where;
}

for (const phase of ["shard", "commit"] as const) {
  Deno.test(`a save killed in its ${phase} phase leaves latest and the previous checkpoint loadable`, async () => {
    const dir = await Deno.makeTempDir();
    try {
      const where = await killMidSave(dir, phase);
      assert.match(where, phase === "shard" ? /^shard 5\/\d+$/ : /^commit/);
      assert.equal(await Deno.readTextFile(`${dir}/latest`), "checkpoints/step-00000001\n");
      assert.deepEqual((await listCheckpoints(dir)).map((c) => c.step), [1]);
      const left = [];
      for await (const e of Deno.readDir(`${dir}/checkpoints`)) left.push(e.name);
      assert.deepEqual(left.sort(), [".tmp-step-00000002", "step-00000001"]);
      const index = await readCheckpointIndex(`${dir}/checkpoints/step-00000001`);
      assert.equal(await verifyCheckpoint(`${dir}/checkpoints/step-00000001`, index), null);

      const engine = await initialize(config, { backend: createCpuBackend({ threads: 1 }) });
      await engine.load(dir);
      assert.equal(engine.step, 1);
      // The run goes on; its next save clears the interrupted one's directory.
      await engine.trainBatch([task.trainBatches(8, 2).next()]);
      await engine.save(dir);
      const after = [];
      for await (const e of Deno.readDir(`${dir}/checkpoints`)) after.push(e.name);
      assert.deepEqual(after.sort(), ["step-00000001", "step-00000002"]);
      assert.equal(await Deno.readTextFile(`${dir}/latest`), "checkpoints/step-00000002\n");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}
