import assert from "node:assert/strict";
import { RankFailedError, runWorkers, startWorkers } from "../../collectives/mod.ts";
import type { WorldData } from "./_workers/world.ts";

const opt = { sanitizeOps: true, sanitizeResources: true };
const mod = new URL("./_workers/world.ts", import.meta.url);

Deno.test({
  name: "runWorkers() returns every rank's result in rank order",
  ...opt,
  fn: async () => {
    const res = await runWorkers({ size: 3, module: mod, data: {} satisfies WorldData });
    assert.deepEqual(
      res,
      [0, 1, 2].map((rank) => ({ rank, size: 3, name: "world", transport: "shm", sum: 3 })),
    );
  },
});

Deno.test({
  name: "runWorkers() rejects naming a rank whose main throws and stops the others",
  ...opt,
  fn: async () => {
    const err = await runWorkers({ size: 3, module: mod, data: { failRank: 1 } }).catch((e) => e);
    assert.ok(err instanceof RankFailedError);
    // Rank 1 fails first; the others fail later, naming rank 1 as lost.
    assert.equal(err.rank, 1);
    assert.match(err.message, /rank 1 failed: rank 1 gives up/);
  },
});

Deno.test({
  name: "an uncaught error in a rank's Worker fails that rank, not the parent",
  ...opt,
  fn: async () => {
    const world = startWorkers({ size: 2, module: mod, data: { crashRank: 0 }, timeoutMs: 5_000 });
    try {
      await assert.rejects(world.results[0]!, /rank 0 failed: uncaught in its Worker/);
      const other = await world.results[1]!.catch((e) => e);
      assert.ok(other instanceof RankFailedError);
      assert.equal(other.reason, "peer-lost");
      assert.equal(other.peer, 0);
    } finally {
      world.close();
    }
  },
});

Deno.test({
  name: "a rank that calls Deno.exit() fails, and its peers do not wait for it",
  ...opt,
  fn: async () => {
    const t0 = performance.now();
    const err = await runWorkers({ size: 3, module: mod, data: { exitRank: 2 }, timeoutMs: 20_000 })
      .catch((e) => e);
    assert.ok(err instanceof RankFailedError);
    assert.equal(err.rank, 2);
    assert.match(err.message, /Deno.exit\(3\) ended the rank's Worker/);
    assert.ok(performance.now() - t0 < 10_000, "well before the 20 s timeout");
  },
});

Deno.test({
  name: "world size 8 runs on 2 cores",
  ...opt,
  fn: async () => {
    const res = await runWorkers<{ sum: number }>({ size: 8, module: mod, data: {} });
    assert.deepEqual(res.map((r) => r.sum), Array(8).fill(28));
  },
});

Deno.test({
  name: "a module without main, a relative path, a bad size or unclonable data are refused",
  ...opt,
  fn: async () => {
    await assert.rejects(
      runWorkers({ size: 1, module: new URL("./_workers/no_main.ts", import.meta.url) }),
      /exports no main function/,
    );
    assert.throws(() => startWorkers({ size: 2, module: "./rank.ts" }), TypeError);
    assert.throws(() => startWorkers({ size: 0, module: mod }), RangeError);
    assert.throws(() => startWorkers({ size: 2.5, module: mod }), RangeError);
    assert.throws(
      () => startWorkers({ size: 2, module: mod, data: { f: () => 1 } }),
      (e: Error) => e instanceof TypeError && /structured-clonable/.test(e.message),
    );
  },
});
