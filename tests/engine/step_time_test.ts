// The planner's time model: its formulas, each against the number it states, and the way a
// layout's step adds up, on a fixed calibration (so nothing here depends on the machine).
import assert from "node:assert/strict";
import {
  calibrate,
  type Calibration,
  matmulGflops,
  predictStepTime,
  ringAllReduceMs,
  ringHalfMs,
  type StepTimeInput,
  theoreticalBubble,
} from "../../engine/step_time.ts";
import { layoutName, parsePlanArgs, planRows } from "../../plan.ts";

const RATES = {
  matmul: [[16, 10], [256, 50]] as [number, number][],
  elementNs: 1,
  attentionNs: 10,
  adamwNs: 5,
  opOverheadMs: 0,
  halfFactor: 3,
  halfMatmul: [[16, 5], [256, 25]] as [number, number][],
  halfAttentionNs: 20,
};
const CAL: Calibration = {
  version: 2,
  measured: "fixed",
  cores: 2,
  compute: {
    "1": RATES,
    "2": { ...RATES, matmul: [[16, 20], [256, 100]], halfMatmul: [[16, 10], [256, 50]] },
  },
  links: {
    "2": { alphaMs: 0.01, bytesPerMs: 1e6 },
    "4": { alphaMs: 0.02, bytesPerMs: 5e5 },
  },
  sharing: { "2": 1, "4": 1 },
};
const MODEL: StepTimeInput = {
  vocab: 64,
  seqLen: 128,
  dim: 256,
  layers: 4,
  heads: 8,
  batch: 16,
  dp: 1,
  tp: 1,
  pp: 1,
};

function close(a: number, b: number, what: string): void {
  assert.ok(Math.abs(a - b) <= 1e-9 * Math.max(1, Math.abs(b)), `${what}: ${a} vs ${b}`);
}

Deno.test("ring all-reduce: 2(n-1) latencies and 2(n-1)/n of the bytes; a reduce-scatter or all-gather half of it", () => {
  const link = { alphaMs: 0.5, bytesPerMs: 1000 };
  close(ringAllReduceMs(8000, 4, link), 6 * 0.5 + 1.5 * 8, "n = 4");
  close(ringAllReduceMs(8000, 2, link), 2 * 0.5 + 8, "n = 2");
  assert.equal(ringAllReduceMs(8000, 1, link), 0);
  close(ringHalfMs(8000, 4, link), (6 * 0.5 + 1.5 * 8) / 2, "half");
});

Deno.test("the bubble is (p-1)/(m+p-1), interleaved (p-1)/(v m+p-1), and the pipeline's step follows it", () => {
  close(theoreticalBubble(4, 8), 3 / 11, "1F1B");
  close(theoreticalBubble(4, 8, 2), 3 / 19, "interleaved");
  // The simulated schedule's idle share is the theory's, but for the small imbalance of the
  // embedding on the first stage and the head on the last.
  for (const v of [1, 2]) {
    const t = predictStepTime({ ...MODEL, pp: 2, virtualStages: v, microBatches: 8 }, CAL);
    const pipeline = t.computeMs + t.ppCommMs + t.bubbleMs;
    const share = t.bubbleMs / pipeline, theory = theoreticalBubble(2, 8, v);
    assert.ok(Math.abs(share / theory - 1) < 0.03, `bubble share, v = ${v}: ${share} vs ${theory}`);
  }
  // GPipe and 1F1B idle alike; each interleaved chunk sends and receives its own activation.
  const gpipe = predictStepTime({ ...MODEL, pp: 2, microBatches: 8, schedule: "gpipe" }, CAL);
  const f1b = predictStepTime({ ...MODEL, pp: 2, microBatches: 8 }, CAL);
  close(gpipe.stepMs, f1b.stepMs, "gpipe and 1f1b");
  const il = predictStepTime({ ...MODEL, pp: 2, virtualStages: 2, microBatches: 8 }, CAL);
  close(il.ppCommMs, 2 * f1b.ppCommMs, "interleaved transfers");
});

Deno.test("matmul rates interpolate on the smallest dimension and stay flat past the ladder", () => {
  assert.equal(matmulGflops(RATES, 1000, 1000, 256), 50);
  assert.equal(matmulGflops(RATES, 1000, 4096, 8192), 50);
  close(matmulGflops(RATES, 64, 1000, 1000), 30, "halfway in log scale");
  close(matmulGflops(RATES, 8, 1000, 1000), 5, "below the ladder: proportional");
});

Deno.test("tensor parallelism adds two all-reduces per block in forward and two in backward, of n C values", () => {
  const one = predictStepTime(MODEL, CAL);
  const tp = predictStepTime({ ...MODEL, tp: 2 }, CAL);
  assert.equal(one.tpCommMs, 0);
  const n = MODEL.batch * MODEL.seqLen;
  close(tp.tpCommMs, 4 * MODEL.layers * ringAllReduceMs(n * 256 * 4, 2, CAL.links["2"]!), "tp");
  assert.ok(tp.computeMs < one.computeMs, "each rank computes its half");
});

Deno.test("data parallelism: ZeRO 0 all-reduces the gradients, 1 adds the parameters' all-gather, 2 reduce-scatters, 3 gathers every block twice more", () => {
  const at = (zeroStage: 0 | 1 | 2 | 3) =>
    predictStepTime({ ...MODEL, dp: 2, zeroStage }, CAL).dpCommMs;
  const ar = at(0);
  assert.ok(ar > 0);
  close(at(1), ar * 1.5, "ZeRO 1: all-reduce + all-gather (half an all-reduce)");
  close(at(2), ar, "ZeRO 2: reduce-scatter + all-gather = one all-reduce");
  close(at(3), ar * 2, "ZeRO 3, one micro-batch: + a gather in forward and one in backward");
  assert.ok(
    predictStepTime({ ...MODEL, dp: 2, zeroStage: 1 }, CAL).optimizerMs <
      predictStepTime({ ...MODEL, dp: 2, zeroStage: 0 }, CAL).optimizerMs,
    "ZeRO 1 steps only the rank's share",
  );
});

Deno.test("checkpointing runs every block's forward again; 16-bit activations cost the measured factor", () => {
  const plain = predictStepTime(MODEL, CAL);
  const ck = predictStepTime({ ...MODEL, checkpointActivations: 1 }, CAL);
  assert.ok(ck.computeMs > plain.computeMs * 1.2 && ck.computeMs < plain.computeMs * 1.5);
  assert.ok(predictStepTime({ ...MODEL, half: true }, CAL).computeMs > plain.computeMs);
  // 16-bit products and attention run at their own measured rates: where those equal the
  // float32 ones and the element-wise factor is 1, 16 bits compute in the same time.
  const same = (r: typeof RATES) => ({
    ...r,
    halfMatmul: r.matmul,
    halfAttentionNs: r.attentionNs,
    halfFactor: 1,
  });
  const even = { ...CAL, compute: { "1": same(CAL.compute["1"]!), "2": same(CAL.compute["2"]!) } };
  close(predictStepTime({ ...MODEL, half: true }, even).computeMs, plain.computeMs, "same rates");
  // One rank takes both cores (threads 2): the faster rates.
  assert.equal(plain.threads, 2);
  assert.equal(predictStepTime({ ...MODEL, dp: 2 }, CAL).threads, 1);
});

Deno.test("plan.ts plans every layout of --ranks, names them, and marks the fastest that fits", () => {
  const args = parsePlanArgs([
    "--vocab",
    "64",
    "--ctx",
    "128",
    "--dim",
    "256",
    "--layers",
    "4",
    "--heads",
    "8",
    "--batch",
    "16",
    "--ranks",
    "4",
    "--zero-stage",
    "0,1",
    "--memory",
    "0.05",
  ]);
  const rows = planRows(args, CAL);
  const names = rows.map((r) => r.name);
  assert.ok(names.includes("dp4.tp1.pp1.zero1.fp32"));
  assert.ok(names.includes("dp1.tp2.pp2.1f1b.zero0.fp32"));
  assert.ok(!names.includes("dp1.tp4.pp1.zero1.fp32"), "no ZeRO without data parallelism");
  const fastest = rows.filter((r) => r.fastest);
  assert.equal(fastest.length, 1);
  for (const r of rows) {
    if (r.fits) assert.ok(r.time!.stepMs >= fastest[0]!.time!.stepMs);
  }
  assert.equal(fastest[0]!.fits, true);
  assert.equal(
    layoutName({ dp: 1, tp: 1, pp: 2, virtualStages: 2, zeroStage: 0, precision: "bf16" }),
    "dp1.tp1.pp2.interleaved2.zero0.bf16",
  );
  assert.throws(() => parsePlanArgs(["--params", "1e9", "--batch", "8"]), /needs the model shape/);
  assert.throws(
    () =>
      parsePlanArgs([
        "--vocab",
        "64",
        "--ctx",
        "8",
        "--dim",
        "8",
        "--layers",
        "2",
        "--heads",
        "2",
        "--ranks",
        "2",
        "--dp",
        "2",
      ]),
    /either --ranks or/,
  );
});

Deno.test("ranks computing at once on one machine run slower by the measured sharing, and take turns beyond its cores", () => {
  const alone = predictStepTime({ ...MODEL, dp: 2 }, CAL);
  const shared = predictStepTime({ ...MODEL, dp: 2 }, { ...CAL, sharing: { "2": 1.5, "4": 1 } });
  close(shared.computeMs, 1.5 * alone.computeMs, "sharing 1.5");
  const four = predictStepTime({ ...MODEL, dp: 4 }, CAL);
  const quarter = predictStepTime({ ...MODEL, dp: 4, ranksHere: 2 }, CAL);
  close(four.computeMs, 2 * quarter.computeMs, "4 ranks on 2 cores take turns");
});

Deno.test("over several nodes a group that spans them runs at the node link; one inside a node keeps shared memory", () => {
  const node = { alphaMs: 0.5, bytesPerMs: 1e5 };
  const n = MODEL.batch * MODEL.seqLen / 2;
  // tp 2 x dp 2 on 2 nodes: each tp pair sits in one node, each dp pair spans both.
  const two = predictStepTime({ ...MODEL, tp: 2, dp: 2, nodes: 2, nodeLink: node }, CAL);
  const one = predictStepTime({ ...MODEL, tp: 2, dp: 2 }, CAL);
  close(two.tpCommMs, 4 * MODEL.layers * ringAllReduceMs(n * 256 * 4, 2, CAL.links["2"]!), "tp");
  close(two.tpCommMs, one.tpCommMs, "tp inside a node is unchanged");
  // On one node the gradients' all-reduce of G bytes costs 2 alpha + G / bandwidth at shared
  // memory; across nodes the node's latency, and the node's bandwidth halved: both tp ranks'
  // dp groups leave the node at once.
  const gradBytes = (one.dpCommMs - 2 * 0.01) * 1e6;
  close(two.dpCommMs, 2 * 0.5 + gradBytes / (1e5 / 2), "dp across nodes");
  // Both ranks per node compute on their own node's cores, not on one machine's.
  close(
    two.computeMs,
    predictStepTime({ ...MODEL, tp: 2, dp: 2, ranksHere: 2 }, CAL).computeMs,
    "ranks per node",
  );
  assert.throws(
    () => predictStepTime({ ...MODEL, dp: 3, nodes: 2, nodeLink: node }, CAL),
    /split evenly/,
  );
  assert.throws(() => predictStepTime({ ...MODEL, dp: 2, nodes: 2 }, CAL), /nodeLink/);
  assert.throws(
    () => parsePlanArgs(["--params", "1e9", "--dp", "3", "--nodes", "2"]),
    /multiple of the nodes/,
  );
});

Deno.test("calibrate() reads the sharing of ranks from the fastest of three rounds: one burst does not price every layout", async () => {
  // Alone a rank takes 100 ms; two ranks at once take 120 ms each, except in the first round,
  // where a neighbour's burst makes it 190; four ranks take 200 (2 turns of 100 on 2 cores)
  // except in the last round.
  const calls: number[] = [];
  const sharedMs = (k: number) => {
    calls.push(k);
    const round = calls.filter((x) => x === k).length - 1;
    if (k === 1) return Promise.resolve([round === 1 ? 150 : 100]);
    if (k === 2) return Promise.resolve(round === 0 ? [190, 190] : [120, 120]);
    return Promise.resolve(round === 2 ? [300, 300, 300, 300] : [200, 200, 200, 200]);
  };
  const c = await calibrate({
    backend: () => {
      throw new Error("no compute rates are measured with threads: []");
    },
    threads: [],
    allReduceMs: (_k, sizes) => Promise.resolve(sizes.map((b) => 0.01 + b / 1e7)),
    sharedMs,
  });
  assert.deepEqual(calls, [1, 2, 4, 1, 2, 4, 1, 2, 4]);
  close(c.sharing["2"]!, 1.2, "two ranks");
  // navigator.hardwareConcurrency cores: four ranks take 4 / cores turns.
  close(c.sharing["4"]!, Math.max(1, 2 / Math.max(1, 4 / c.cores)), "four ranks");
});
