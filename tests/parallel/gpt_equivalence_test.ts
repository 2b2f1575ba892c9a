import assert from "node:assert/strict";
import { runWorkers } from "../../collectives/mod.ts";
import { createReferenceBackend } from "../../kernels/mod.ts";
import { type FlatParams, Gpt } from "../../models/mod.ts";
import { AdamW, clipGradNorm } from "../../optim/mod.ts";
import type { ScheduleName } from "../../parallel/mod.ts";
import {
  ATOL,
  CFG,
  LOSS_RTOL,
  LR,
  MAX_NORM,
  MICRO,
  microBatch,
  MICROS,
  NORM_RTOL,
  SEED,
  STEPS,
  T,
  WEIGHT_DECAY,
} from "./_gpt_data.ts";
import type { GptRankResult } from "./_gpt_rank.ts";

// Tolerances: ATOL, LOSS_RTOL and NORM_RTOL of _gpt_data.ts, which says why.

interface Serial {
  losses: number[];
  norms: number[];
  params: Map<string, Float32Array>;
}

async function serialRun(): Promise<Serial> {
  const be = createReferenceBackend();
  const gpt = new Gpt(be, CFG, { seed: SEED });
  const store = gpt.store as FlatParams;
  const opt = new AdamW(be, gpt.layout, store.params, store.grads, {
    weightDecay: WEIGHT_DECAY,
  });
  const losses: number[] = [];
  const norms: number[] = [];
  for (let step = 0; step < STEPS; step++) {
    gpt.zeroGrad();
    let sum = 0;
    for (let j = 0; j < MICROS; j++) {
      const { inputs, targets } = microBatch(step, j);
      sum += (await be.read(await gpt.forward(inputs, targets, MICRO, T)))[0]!;
      await gpt.backward(1 / MICROS);
    }
    norms.push(await clipGradNorm(be, store.grads, MAX_NORM, gpt.layout.size));
    opt.step(LR);
    losses.push(sum / MICROS);
  }
  return { losses, norms, params: await gpt.getParams() };
}

const reference = serialRun();

function maxDiff(a: Float32Array, b: Float32Array): number {
  assert.equal(a.length, b.length);
  let w = 0;
  for (let i = 0; i < a.length; i++) w = Math.max(w, Math.abs(a[i]! - b[i]!));
  return w;
}

async function check(
  world: number,
  layout: { tp: number; pp: number; v?: number; sp?: boolean; schedule: ScheduleName },
): Promise<void> {
  const ref = await reference;
  const ranks = await runWorkers<GptRankResult>({
    size: world,
    module: new URL("./_gpt_rank.ts", import.meta.url),
    data: { v: 1, sp: false, ...layout },
    timeoutMs: 60_000,
  });
  for (const r of ranks) {
    for (let step = 0; step < STEPS; step++) {
      const loss = r.losses[step]!;
      const norm = r.norms[step]!;
      assert.ok(
        Math.abs(loss / ref.losses[step]! - 1) < LOSS_RTOL,
        `step ${step} loss ${loss} vs ${ref.losses[step]}`,
      );
      assert.ok(
        Math.abs(norm / ref.norms[step]! - 1) < NORM_RTOL,
        `step ${step} gradient norm ${norm} vs ${ref.norms[step]}`,
      );
    }
  }
  // Activation memory: 1F1B holds at most pp - stage micro-batches, GPipe all of them.
  const m = MICROS * layout.tp * layout.pp / world;
  for (const r of ranks) {
    const peak = Math.max(...r.peaks);
    if (layout.schedule === "1f1b") assert.ok(peak <= layout.pp - r.coords.pp, `1f1b peak ${peak}`);
    if (layout.schedule === "gpipe") assert.equal(peak, m);
    if (layout.schedule === "none") assert.equal(peak, 1);
  }
  const params = ranks[0]!.params!;
  assert.deepEqual([...params.keys()].sort(), [...ref.params.keys()].sort());
  for (const [name, full] of ref.params) {
    const d = maxDiff(params.get(name)!, full);
    assert.ok(d < ATOL, `${name} differs by ${d}`);
  }
}

const CASES: [
  number,
  { tp: number; pp: number; v?: number; sp?: boolean; schedule: ScheduleName },
][] = [
  [2, { tp: 2, pp: 1, schedule: "none" }],
  [4, { tp: 4, pp: 1, schedule: "none" }],
  [2, { tp: 2, pp: 1, sp: true, schedule: "none" }],
  [4, { tp: 4, pp: 1, sp: true, schedule: "none" }],
  [2, { tp: 1, pp: 2, schedule: "gpipe" }],
  [2, { tp: 1, pp: 2, schedule: "1f1b" }],
  [4, { tp: 1, pp: 4, schedule: "gpipe" }],
  [4, { tp: 1, pp: 4, schedule: "1f1b" }],
  [2, { tp: 1, pp: 2, v: 2, schedule: "interleaved" }],
  [1, { tp: 1, pp: 1, schedule: "none" }],
  [2, { tp: 1, pp: 1, schedule: "none" }],
  [8, { tp: 2, pp: 2, schedule: "1f1b" }],
  [8, { tp: 2, pp: 2, v: 2, sp: true, schedule: "interleaved" }],
];

for (const [world, layout] of CASES) {
  const what = [
    layout.tp > 1 ? `tp=${layout.tp}` : "",
    layout.sp ? "sequence parallel" : "",
    layout.pp > 1 ? `pp=${layout.pp} ${layout.schedule}` : "",
    layout.v ? `v=${layout.v}` : "",
    world / (layout.tp * layout.pp) > 1 ? `dp=${world / (layout.tp * layout.pp)}` : "",
  ].filter((x) => x).join(", ") || "tp=pp=dp=1";
  Deno.test(`GPT with ${what} on ${world} workers trains like one rank for ${STEPS} steps`, async () => {
    await check(world, layout);
  });
}

Deno.test("a run saved after 2 steps on dp=2 x tp=2 x pp=2 continues on tp=4 with sequence parallelism like one rank", async () => {
  const ref = await reference;
  const dir = await Deno.makeTempDir();
  try {
    const first = await runWorkers<GptRankResult>({
      size: 8,
      module: new URL("./_gpt_rank.ts", import.meta.url),
      data: { tp: 2, pp: 2, v: 1, sp: false, schedule: "1f1b", steps: [0, 2], save: dir },
      timeoutMs: 60_000,
    });
    const second = await runWorkers<GptRankResult>({
      size: 4,
      module: new URL("./_gpt_rank.ts", import.meta.url),
      data: { tp: 4, pp: 1, v: 1, sp: true, schedule: "none", steps: [2, STEPS], resume: dir },
      timeoutMs: 60_000,
    });
    const losses = [...first[0]!.losses, ...second[0]!.losses];
    losses.forEach((l, step) => {
      assert.ok(Math.abs(l / ref.losses[step]! - 1) < LOSS_RTOL, `step ${step} loss ${l}`);
    });
    for (const [name, full] of ref.params) {
      const d = maxDiff(second[0]!.params!.get(name)!, full);
      assert.ok(d < ATOL, `${name} differs by ${d}`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("the engine explains layouts that cannot work before any collective", async () => {
  const [messages] = await runWorkers<string[]>({
    size: 2,
    module: new URL("./_bad_rank.ts", import.meta.url),
    timeoutMs: 20_000,
  });
  const expected = [
    /RangeError: .*vocabulary of 15 does not split across tensor_model_parallel_size=2.*padded vocabulary 16/,
    /RangeError: Cannot split 1 attention heads across tp=2/,
    /RangeError: Cannot split 2 layers into pp=2 stages x 2 virtual stages/,
    /RangeError: Sequence parallelism splits each sequence of 7 tokens across tp=2/,
    /RangeError: Cannot split 2 attention heads across tp=3/,
    /RangeError: The interleaved schedule needs pp >= 2 and v >= 2/,
    /RangeError: The layout tp=2 x pp=2 x dp=1 needs 4 ranks, the world has 2/,
  ];
  expected.forEach((re, i) => assert.match(messages![i]!, re));
});

Deno.test("GPT with an untied head on pp=2 x tp=2 trains like one rank for 5 steps", async () => {
  const be = createReferenceBackend();
  const gpt = new Gpt(be, { ...CFG, tied: false }, { seed: SEED });
  const store = gpt.store as FlatParams;
  const opt = new AdamW(be, gpt.layout, store.params, store.grads, {
    weightDecay: WEIGHT_DECAY,
  });
  for (let step = 0; step < STEPS; step++) {
    gpt.zeroGrad();
    for (let j = 0; j < MICROS; j++) {
      const { inputs, targets } = microBatch(step, j);
      await gpt.forward(inputs, targets, MICRO, T);
      await gpt.backward(1 / MICROS);
    }
    await clipGradNorm(be, store.grads, MAX_NORM, gpt.layout.size);
    opt.step(LR);
  }
  const ref = await gpt.getParams();
  const ranks = await runWorkers<GptRankResult>({
    size: 4,
    module: new URL("./_gpt_rank.ts", import.meta.url),
    data: { tp: 2, pp: 2, v: 1, sp: false, schedule: "1f1b", untied: true },
    timeoutMs: 60_000,
  });
  const params = ranks[0]!.params!;
  assert.ok(params.has("lm_head.weight"));
  for (const [name, full] of ref) {
    const d = maxDiff(params.get(name)!, full);
    assert.ok(d < ATOL, `${name} differs by ${d}`);
  }
});
