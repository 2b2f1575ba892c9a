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
      data: { sizes: [0, 1, 7, 30_001, 100_003] }, // the last takes the leaders' TCP ring
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

Deno.test({
  name: "killing one node mid-all-reduce makes the other node fail naming a lost rank",
  sanitizeOps: true,
  sanitizeResources: true,
  async fn() {
    const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = l.addr.port;
    l.close();
    const node = (n: number) =>
      new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", new URL("../../collectives/_node_process.ts", import.meta.url).href]
          .concat(["--nnodes=2", `--node-rank=${n}`, "--nproc-per-node=2"])
          .concat(["--master-addr=127.0.0.1", `--master-port=${port}`]),
        env: {
          LOOM_RANK_MODULE: new URL("./_tcp/loop.ts", import.meta.url).href,
          LOOM_RANK_DATA: "null",
        },
        stdout: "piped",
        stderr: "null",
      }).spawn();
    const survivor = node(0), victim = node(1);
    const reader = survivor.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let out = "";
    while (!out.includes("GO")) {
      const { value, done } = await reader.read();
      if (done) break;
      out += value;
    }
    assert.ok(out.includes("GO"), out);
    const killedAt = performance.now();
    victim.kill("SIGKILL");
    await victim.stdout.cancel();
    await victim.status;
    while (true) {
      const { value, done } = await reader.read();
      if (done) break;
      out += value;
    }
    const status = await survivor.status;
    const elapsed = performance.now() - killedAt;
    assert.equal(status.code, 1, out);
    assert.ok(elapsed < 10_000, `the surviving node took ${elapsed} ms`);
    // Global ranks 2 and 3 lived on the killed node.
    assert.match(out, /peer-lost.*world rank [23]|peer-lost \(rank [23]\)/);
  },
});
