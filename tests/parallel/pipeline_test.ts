import assert from "node:assert/strict";
import { runWorkers } from "../../collectives/mod.ts";
import { buildGrid, buildSchedule, runPipeline, type ScheduleName } from "../../parallel/mod.ts";
import type { PipeResult } from "./_pipe_rank.ts";
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

async function pipelined(
  world: number,
  tp: number,
  pp: number,
  name: ScheduleName,
  m: number,
  v = 1,
  overlap = false,
): Promise<PipeResult[]> {
  return await runWorkers<PipeResult>({
    size: world,
    module: new URL("./_pipe_rank.ts", import.meta.url),
    data: { tp, pp, name, m, v, overlap },
    timeoutMs: 20_000,
  });
}

function assertMatchesSerial(ranks: PipeResult[], pp: number, m: number, v: number): void {
  const ref = serialRun(pp * v, m);
  for (const r of ranks) {
    for (const c of r.chunks) {
      // Same float64 operations in the same order per chunk: bit-for-bit equal.
      assert.deepEqual(c.dw, ref[c.k]!.dw, `stage ${r.coords.pp} virtual stage ${c.k} dw`);
      assert.deepEqual(c.db, ref[c.k]!.db);
      assert.equal(c.loss, ref[c.k]!.loss);
      assert.equal(c.saved, 0, "activations left after the step");
    }
  }
}

const PIPELINES: [number, ScheduleName, number, number, boolean][] = [
  [2, "gpipe", 4, 1, false],
  [2, "1f1b", 3, 1, false],
  [4, "1f1b", 8, 1, false],
  [4, "1f1b", 8, 1, true],
  [4, "gpipe", 2, 1, false],
  [2, "interleaved", 4, 2, false],
  [4, "interleaved", 4, 2, false],
  [4, "interleaved", 8, 2, true],
];

for (const [pp, name, m, v, overlap] of PIPELINES) {
  const how = overlap ? ", overlapped transfers" : "";
  Deno.test(
    `runPipeline() with ${name} on ${pp} workers (m=${m}, v=${v}${how}) gives the serial gradients`,
    async () => {
      const ranks = await pipelined(pp, 1, pp, name, m, v, overlap);
      assertMatchesSerial(ranks, pp, m, v);
      const last = ranks.find((r) => r.coords.pp === pp - 1)!;
      const first = ranks.find((r) => r.coords.pp === 0)!;
      assert.deepEqual(first.tied, [1 + pp], "tied gradients summed over first and last stage");
      assert.deepEqual(last.tied, [1 + pp]);
    },
  );
}

Deno.test("createGroups() on 8 workers (tp=2, pp=2, dp=2) makes the grid's groups and runs 1F1B in each pipeline", async () => {
  const ranks = await pipelined(8, 2, 2, "1f1b", 4);
  const grid = buildGrid({ worldSize: 8, tp: 2, pp: 2 });
  ranks.forEach((r, rank) => {
    assert.deepEqual(r.coords, grid.coordsOf(rank));
    const groups = grid.groupsOf(rank);
    for (const kind of ["tp", "dp", "pp", "modelParallel"] as const) {
      assert.equal(
        r.sums[kind],
        groups[kind].reduce((a, b) => a + b, 0),
        `${kind} of rank ${rank}`,
      );
    }
  });
  assertMatchesSerial(ranks, 2, 4, 1);
});

Deno.test("p2p verbs move activations forward and gradients backward between 2 workers", async () => {
  const [first, second] = await runWorkers<number[]>({
    size: 2,
    module: new URL("./_p2p_rank.ts", import.meta.url),
    timeoutMs: 10_000,
  });
  assert.deepEqual(second, [10, 11]);
  assert.deepEqual(first, [-10, -11]);
});
