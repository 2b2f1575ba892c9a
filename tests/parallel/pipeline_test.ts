import assert from "node:assert/strict";
import { buildSchedule, runPipeline } from "../../parallel/mod.ts";
import { B, N, serialRun, ToyChunk } from "./_toy.ts";

Deno.test("runPipeline() with one stage accumulates gradients like the serial loop", async () => {
  const ref = serialRun(1, 4);
  const chunk = new ToyChunk(0, 1);
  const stats = await runPipeline({
    schedule: buildSchedule("none", { pp: 1, m: 4 }),
    comm: null,
    chunks: [chunk],
    activationSize: B * N,
  });
  assert.deepEqual(chunk.dw, ref[0]!.dw);
  assert.deepEqual(chunk.db, ref[0]!.db);
  assert.equal(chunk.loss, ref[0]!.loss);
  assert.equal(chunk.saved, 0);
  assert.ok(stats.computeMs <= stats.wallMs);
});

Deno.test("runPipeline() rejects a chunk count or group that does not fit the schedule", async () => {
  await assert.rejects(
    runPipeline({
      schedule: buildSchedule("1f1b", { pp: 2, m: 2 }),
      comm: null,
      chunks: [new ToyChunk(0, 2)],
      activationSize: B * N,
    }),
    /pp=2 stages but the pipeline group has no ranks/,
  );
  await assert.rejects(
    runPipeline({
      schedule: buildSchedule("none", { pp: 1, m: 2 }),
      comm: null,
      chunks: [],
      activationSize: B * N,
    }),
    /v=1 chunks per stage but 0/,
  );
});
