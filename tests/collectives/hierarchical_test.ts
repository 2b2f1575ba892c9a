// Two "nodes" (two processes on loopback) of two Worker ranks each: shared memory inside a node,
// TCP between the node leaders. Every op is checked against a serial reference by the ranks.
import assert from "node:assert/strict";
import type { BatteryReport } from "./_tcp/battery.ts";
import { runNodes } from "../../collectives/launch.ts";

Deno.test({
  name: "a job of 2 nodes x 2 Worker ranks runs every op hierarchically and matches serial sums",
  sanitizeOps: true,
  sanitizeResources: true,
  async fn() {
    const ranks = await runNodes<BatteryReport>({
      nnodes: 2,
      nprocPerNode: 2,
      module: new URL("./_tcp/battery.ts", import.meta.url),
      data: { sizes: [0, 1, 7, 30_001] },
      timeoutMs: 30_000,
    });
    assert.deepEqual(ranks.map((r) => r.rank), [0, 1, 2, 3]);
    for (const r of ranks) {
      assert.equal(r.transport, "hierarchical");
      assert.equal(r.size, 4);
      assert.deepEqual(r.failures, [], `rank ${r.rank}`);
      assert.ok(r.checks >= 40, `rank ${r.rank} ran ${r.checks} checks`);
    }
  },
});

Deno.test({
  name: "a job of 1 node x 3 Worker ranks runs over shared memory",
  sanitizeOps: true,
  sanitizeResources: true,
  async fn() {
    const ranks = await runNodes<BatteryReport>({
      nnodes: 1,
      nprocPerNode: 3,
      module: new URL("./_tcp/battery.ts", import.meta.url),
      data: { sizes: [0, 5] },
    });
    assert.deepEqual(ranks.map((r) => [r.rank, r.transport, r.failures.length]), [
      [0, "shm", 0],
      [1, "shm", 0],
      [2, "shm", 0],
    ]);
  },
});
