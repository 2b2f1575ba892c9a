// Two "nodes" (two processes on loopback) of two Worker ranks each: shared memory inside a node,
// TCP between the node leaders. Every op is checked against a serial reference by the ranks.
import assert from "node:assert/strict";
import type { BatteryReport } from "./_tcp/battery.ts";
import type { LaunchConfig } from "../../collectives/launch.ts";

const NODE = new URL("./_tcp/node.ts", import.meta.url).pathname;

function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = l.addr.port;
  l.close();
  return port;
}

Deno.test({
  name: "a job of 2 nodes x 2 Worker ranks runs every op hierarchically and matches serial sums",
  sanitizeOps: true,
  sanitizeResources: true,
  async fn() {
    const port = freePort();
    const nodes = [0, 1].map((n) =>
      new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", NODE, "--nnodes", "2", `--node-rank=${n}`, "--nproc-per-node", "2"]
          .concat(["--master-addr", "127.0.0.1", "--master-port", String(port)]),
        stdout: "piped",
        stderr: "piped",
      }).output()
    );
    const outs = await Promise.all(nodes);
    const ranks: BatteryReport[] = [];
    for (const [n, out] of outs.entries()) {
      const text = new TextDecoder().decode(out.stdout);
      assert.equal(out.code, 0, `node ${n}: ${text}\n${new TextDecoder().decode(out.stderr)}`);
      const { config, results } = JSON.parse(text.trim().split("\n").at(-1)!) as {
        config: LaunchConfig;
        results: BatteryReport[];
      };
      assert.equal(config.worldSize, 4);
      assert.deepEqual(config.ranks, [2 * n, 2 * n + 1]);
      ranks.push(...results);
    }
    assert.deepEqual(ranks.map((r) => r.rank), [0, 1, 2, 3]);
    for (const r of ranks) {
      assert.equal(r.transport, "hierarchical");
      assert.equal(r.size, 4);
      assert.deepEqual(r.failures, [], `rank ${r.rank}`);
      assert.ok(r.checks >= 40, `rank ${r.rank} ran ${r.checks} checks`);
    }
  },
});
