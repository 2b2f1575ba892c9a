import assert from "node:assert/strict";
import { RankFailedError, runWorkers, startWorkers } from "../../collectives/mod.ts";
import type { OpsData } from "./_workers/ops.ts";
import type { FaultsData, Outcome } from "./_workers/faults.ts";

// Reductions fold in rank order 0..n-1 on every path, so results are compared exactly with a
// serial left-to-right fold (rounded to the dtype after every step), floats included.
const opt = { sanitizeOps: true, sanitizeResources: true };
const ops = new URL("./_workers/ops.ts", import.meta.url);
const faults = new URL("./_workers/faults.ts", import.meta.url);
const ALL = ["float32", "int32", "float16", "bfloat16"] as const;

function runOps(size: number, data: OpsData, extra: { slotBytes?: number } = {}) {
  return runWorkers<string[]>({ size, module: ops, data, timeoutMs: 20_000, ...extra });
}

for (
  const [size, data] of [
    [1, { sizes: [0, 1, 5, 1000], dtypes: [...ALL] }],
    [2, { sizes: [0, 1, 5, 1001, 40001], dtypes: [...ALL] }],
    [3, { sizes: [0, 1, 7, 1001, 20003], dtypes: ["float32", "int32", "bfloat16"] }],
    [3, { sizes: [1, 20003], dtypes: ["float32", "float16"], shared: true }],
    [4, { sizes: [40001], dtypes: ["float32", "int32"], shared: true }],
    [4, { sizes: [0, 1, 6, 999], dtypes: ["float32", "int32", "float16"] }],
    [2, { sizes: [1, 7, 70001], dtypes: [...ALL], shared: "arena", specials: true }],
    [3, { sizes: [5, 70001], dtypes: ["float32", "int32"], shared: "arena", specials: true }],
    [4, { sizes: [70001], dtypes: ["float32", "int32"], shared: "arena" }],
    [3, { sizes: [70001], dtypes: ["float32"], shared: "mixed" }],
    [8, { sizes: [0, 1, 13, 17001], dtypes: ["float32", "int32"] }],
  ] as [number, OpsData][]
) {
  Deno.test({
    name: `every op matches a serial reference on ${size} Workers` +
      (data.shared === "arena"
        ? ", buffers in the arena (SIMD folds)"
        : data.shared === "mixed"
        ? ", arena and plain buffers mixed"
        : data.shared
        ? ", buffers read in place"
        : ""),
    ...opt,
    fn: async () => {
      const res = await runOps(size, data);
      assert.deepEqual(res, Array.from({ length: size }, () => []));
    },
  });
}

Deno.test({
  name: "ops split into many chunks when the staging slot is small, sizes not dividing by 3",
  ...opt,
  fn: async () => {
    const res = await runOps(3, { sizes: [1, 1000, 5003], dtypes: ["float32", "float16"] }, {
      slotBytes: 4096,
    });
    assert.deepEqual(res, [[], [], []]);
  },
});

Deno.test({
  name: "allReduce(), allGather() and reduceScatter() of several MiB match the reference",
  ...opt,
  fn: async () => {
    const res = await runOps(2, {
      sizes: [1_500_007],
      dtypes: ["float32"],
      ops: ["allReduce", "allGather", "reduceScatter", "sendRecv"],
      shared: true,
    });
    assert.deepEqual(res, [[], []]);
  },
});

Deno.test({
  name: "split() builds sub-groups ordered by key, of sub-groups, with a rank sitting out",
  ...opt,
  fn: async () => {
    type R = {
      subRank: number;
      subSize: number;
      subName: string;
      sum: number;
      count: number;
      gathered: number[];
      otherSum: number | null;
      all: number;
    };
    const res = await runWorkers<R>({
      size: 5,
      module: new URL("./_workers/split.ts", import.meta.url),
      timeoutMs: 10_000,
    });
    for (let r = 0; r < 5; r++) {
      const even = r % 2 === 0;
      const group = even ? [4, 2, 0] : [3, 1];
      assert.equal(res[r]!.subSize, group.length);
      assert.equal(res[r]!.subRank, group.indexOf(r));
      assert.equal(res[r]!.subName, `world/split(${r % 2})`);
      assert.equal(res[r]!.sum, even ? 6 : 4);
      assert.equal(res[r]!.count, group.length);
      assert.deepEqual(res[r]!.gathered, group);
      assert.equal(res[r]!.otherSum, r === 0 ? null : 10);
      assert.equal(res[r]!.all, 5);
    }
  },
});

Deno.test({
  name: "terminating a Worker mid-allReduce makes every survivor reject naming the lost rank",
  ...opt,
  fn: async () => {
    let ready = 0;
    let resolveReady!: () => void;
    const allReady = new Promise<void>((r) => (resolveReady = r));
    const world = startWorkers<{ first: Outcome; again: Outcome }>({
      size: 4,
      module: faults,
      data: { scenario: "kill-mid-op", timeoutMs: 5_000 } satisfies FaultsData,
      onMessage: () => {
        if (++ready === 4) resolveReady();
      },
    });
    try {
      await allReady;
      await new Promise((r) => setTimeout(r, 100));
      const t0 = performance.now();
      world.terminate(2);
      for (const r of [0, 1, 3]) {
        const { first, again } = await world.results[r]!;
        assert.equal(first.reason, "peer-lost", first.message);
        assert.equal(first.peer, 2);
        assert.equal(first.op, "allReduce");
        assert.match(first.message!, /allReduce on group "world" failed: peer-lost \(rank 2\)/);
        assert.equal(again.reason, "peer-lost");
      }
      // Well within the 5 s timeout: liveness is polled every 10 ms.
      assert.ok(performance.now() - t0 < 5_000);
      await assert.rejects(world.results[2]!, RankFailedError);
    } finally {
      world.close();
    }
  },
});

Deno.test({
  name: "a stalled rank makes the others time out naming it",
  ...opt,
  fn: async () => {
    const res = await runWorkers<{ first?: Outcome }>({
      size: 3,
      module: faults,
      data: { scenario: "stall", victim: 1, timeoutMs: 300 } satisfies FaultsData,
    });
    // The victim's main returns at once, so survivors may see it as exited instead of late.
    for (const r of [0, 2]) {
      const o: Outcome = res[r]!.first!;
      assert.ok(o.reason === "timeout" || o.reason === "peer-lost", o.message);
      assert.equal(o.peer, 1);
    }
  },
});

Deno.test({
  name: "mismatched sizes reject on every rank and the group goes on",
  ...opt,
  fn: async () => {
    const res = await runWorkers<
      { first: Outcome; next: Outcome; sum: number; second: Outcome; after: number[] }
    >({
      size: 3,
      module: faults,
      data: { scenario: "mismatch-size" } satisfies FaultsData,
      timeoutMs: 5_000,
    });
    for (const [r, o] of res.entries()) {
      assert.equal(o.first.reason, "mismatch", `rank ${r}: ${o.first.message}`);
      assert.match(o.first.message!, /allReduce sum of (8|9) float32/);
      assert.ok(o.next.ok);
      assert.equal(o.sum, 6);
      assert.equal(o.second.reason, "mismatch", `rank ${r}: ${o.second.message}`);
      assert.deepEqual(o.after, [3, 2, 3, 3, 3, 4]);
    }
  },
});

Deno.test({
  name: "mismatched ops reject on every rank instead of deadlocking",
  ...opt,
  fn: async () => {
    const res = await runWorkers<{ first: Outcome }>({
      size: 4,
      module: faults,
      data: { scenario: "mismatch-op" } satisfies FaultsData,
      timeoutMs: 5_000,
    });
    for (const o of res) {
      assert.equal(o.first.reason, "mismatch", o.first.message);
      assert.match(o.first.message!, /broadcast/);
    }
  },
});

Deno.test({
  name: "a rank whose main returned early is reported as lost",
  ...opt,
  fn: async () => {
    const res = await runWorkers<{ first?: Outcome }>({
      size: 2,
      module: faults,
      data: { scenario: "exit-early", victim: 0 } satisfies FaultsData,
      timeoutMs: 5_000,
    });
    assert.equal(res[1]!.first!.reason, "peer-lost");
    assert.equal(res[1]!.first!.peer, 0);
    assert.ok(res[1]!.first!.ms! < 3_000, "well before the 5 s timeout");
  },
});

Deno.test({
  name: "send() of messages longer than a chunk resolves before the receiver asks for them",
  ...opt,
  fn: async () => {
    const res = await runWorkers<boolean[]>({
      size: 2,
      module: new URL("./_workers/p2p_large.ts", import.meta.url),
      timeoutMs: 10_000,
    });
    assert.deepEqual(res, [[true], [true, true, true, true, true, true]]);
  },
});

Deno.test({
  name: "recv() matches messages by tag, keeps early ones, and rejects a length mismatch",
  ...opt,
  fn: async () => {
    const res = await runWorkers<{ got?: unknown[]; wrong?: Outcome }>({
      size: 2,
      module: faults,
      data: { scenario: "p2p-tags", timeoutMs: 10_000 } satisfies FaultsData,
    });
    assert.deepEqual(res[1]!.got, [[3, 3, 3], true, [1, 1]]);
    const wrong = res[1]!.wrong!;
    assert.equal(wrong.reason, "mismatch");
    assert.equal(wrong.peer, 0);
    assert.match(wrong.message!, /tag 4 expected 5 int32 but rank 0 sent 4 int32/);
  },
});

Deno.test({
  name: "recv() from a rank that never sends times out naming it",
  ...opt,
  fn: async () => {
    const res = await runWorkers<{ first?: Outcome }>({
      size: 2,
      module: faults,
      data: { scenario: "p2p-timeout", timeoutMs: 200 } satisfies FaultsData,
    });
    const o = res[1]!.first!;
    assert.equal(o.reason, "timeout", o.message);
    assert.equal(o.peer, 0);
    assert.equal(o.op, "recv");
    assert.ok(o.ms! >= 190 && o.ms! < 2_000, `took ${o.ms} ms`);
  },
});

Deno.test({
  name: "close() makes the closing rank's later ops and its peers' pending ops reject",
  ...opt,
  fn: async () => {
    const res = await runWorkers<{ first?: Outcome; after?: Outcome }>({
      size: 2,
      module: faults,
      data: { scenario: "close" } satisfies FaultsData,
    });
    assert.equal(res[0]!.after!.reason, "closed");
    assert.equal(res[1]!.first!.reason, "peer-lost");
    assert.equal(res[1]!.first!.peer, 0);
    assert.match(res[1]!.first!.message!, /closed the group/);
  },
});

Deno.test({
  name: "invalid arguments throw TypeError or RangeError before any communication",
  ...opt,
  fn: async () => {
    const res = await runWorkers<{ checks: Record<string, Outcome>; sum: number }>({
      size: 2,
      module: faults,
      data: { scenario: "bad-args" } satisfies FaultsData,
      timeoutMs: 5_000,
    });
    const types: Record<string, string> = {
      wrongDtype: "TypeError",
      noDtype: "TypeError",
      badOp: "TypeError",
      badRoot: "RangeError",
      badGather: "RangeError",
      mixedTypes: "TypeError",
      badScatter: "RangeError",
      badAllToAll: "RangeError",
      selfSend: "RangeError",
      badPeer: "RangeError",
      badTag: "RangeError",
      badTimeout: "RangeError",
      badColor: "RangeError",
    };
    for (const { checks, sum } of res) {
      for (const [k, t] of Object.entries(types)) {
        assert.equal(checks[k]!.ok, false, k);
        assert.equal(checks[k]!.name, t, `${k}: ${checks[k]!.message}`);
      }
      assert.match(checks.badGather!.message!, /must have group size x input.length/);
      assert.equal(sum, 2);
    }
  },
});
