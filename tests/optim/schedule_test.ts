import assert from "node:assert/strict";
import { learningRate, type Schedule, validateSchedule } from "../../optim/mod.ts";

Deno.test("learningRate() warms up linearly, then follows a cosine down to the floor", () => {
  const s: Schedule = { kind: "cosine", lr: 1, warmup: 4, totalSteps: 14, minLr: 0.1 };
  assert.deepEqual([0, 1, 2, 3].map((i) => learningRate(i, s)), [0.25, 0.5, 0.75, 1]);
  assert.equal(learningRate(4, s), 1);
  // Halfway through the decay (step 4 + 9/2) the cosine is at the middle of [0.1, 1].
  assert.ok(Math.abs(learningRate(8.5, s) - 0.55) < 1e-12);
  assert.ok(Math.abs(learningRate(13, s) - 0.1) < 1e-12);
  assert.ok(Math.abs(learningRate(100, s) - 0.1) < 1e-12);
  for (let i = 5; i < 14; i++) assert.ok(learningRate(i, s) < learningRate(i - 1, s));
});

Deno.test("learningRate() is constant after warmup for the constant kind and linear for linear", () => {
  const c: Schedule = { kind: "constant", lr: 0.5, warmup: 2, totalSteps: 10 };
  assert.deepEqual([0, 1, 2, 9, 50].map((i) => learningRate(i, c)), [0.25, 0.5, 0.5, 0.5, 0.5]);
  const l: Schedule = { kind: "linear", lr: 1, warmup: 0, totalSteps: 11, minLr: 0 };
  assert.ok(Math.abs(learningRate(5, l) - 0.5) < 1e-12);
  assert.equal(learningRate(10, l), 0);
});

/**
 * The rate each optimizer step ran at under DeepSpeed v0.19.5's lr_schedules.py: the rate of
 * the optimizer's param group before step 0, 1, ..., with `scheduler.step()` after each step
 * (as DeepSpeed's engine does), traced with the constructor arguments in the comments.
 */
const DEEPSPEED: [Schedule, number[]][] = [
  [
    // WarmupLR(opt(lr=0.02), warmup_min_lr=0.001, warmup_max_lr=0.01, warmup_num_steps=5)
    { kind: "WarmupLR", lr: 0.01, minLr: 0.001, warmup: 5, warmupType: "log" },
    [
      0.001,
      0.001,
      0.0048760890226605385,
      0.007143455750373869,
      0.008752178045321076,
      0.010000000000000002,
      0.010000000000000002,
      0.010000000000000002,
    ],
  ],
  [
    // WarmupLR(opt(lr=0.02), warmup_min_lr=0, warmup_max_lr=0.01, warmup_num_steps=4, "linear")
    { kind: "WarmupLR", lr: 0.01, minLr: 0, warmup: 4, warmupType: "linear" },
    [0.0, 0.0, 0.0025, 0.005, 0.0075, 0.01, 0.01, 0.01],
  ],
  [
    // WarmupDecayLR(opt(lr=0.02), total_num_steps=10, warmup_min_lr=0.001, warmup_max_lr=0.01,
    // warmup_num_steps=4): decays to warmup_min_lr, then stays there
    { kind: "WarmupDecayLR", lr: 0.01, minLr: 0.001, warmup: 4, warmupType: "log", totalSteps: 10 },
    [
      0.001,
      0.001,
      0.0055000000000000005,
      0.008132331253245204,
      0.010000000000000002,
      0.010000000000000002,
      0.0085,
      0.007,
      0.0055000000000000005,
      0.004,
      0.0025,
      0.001,
      0.001,
      0.001,
    ],
  ],
  [
    // WarmupDecayLR(opt(lr=0.02), total_num_steps=4, warmup_num_steps=1, "linear"): 1 means 2,
    // and the default warmup_max_lr is 0.001, not the optimizer's rate
    { kind: "WarmupDecayLR", lr: 0.001, minLr: 0, warmup: 1, warmupType: "linear", totalSteps: 4 },
    [0.0, 0.0, 0.0005, 0.001, 0.0005, 0.0],
  ],
  [
    // WarmupCosineLR(opt(lr=0.02), total_num_steps=10, warmup_num_steps=4,
    // warmup_min_ratio=0.1, cos_min_ratio=0.05)
    {
      kind: "WarmupCosineLR",
      lr: 0.02,
      warmup: 4,
      warmupType: "log",
      totalSteps: 10,
      warmupMinRatio: 0.1,
      cosMinRatio: 0.05,
    },
    [
      0.0,
      0.002,
      0.011000000000000001,
      0.016264662506490408,
      0.02,
      0.01872724133595217,
      0.01525,
      0.0105,
      0.005750000000000002,
      0.0022727586640478325,
      0.001,
      0.001,
      0.001,
      0.001,
    ],
  ],
  [
    // WarmupCosineLR(opt(lr=0.01), total_num_steps=8, warmup_num_steps=3, "linear",
    // cos_min_ratio=0.05)
    {
      kind: "WarmupCosineLR",
      lr: 0.01,
      warmup: 3,
      warmupType: "linear",
      totalSteps: 8,
      warmupMinRatio: 0,
      cosMinRatio: 0.05,
    },
    [
      0.0,
      0.0,
      0.003333333333333333,
      0.006666666666666666,
      0.009092830723281,
      0.006717830723281001,
      0.003782169276719,
      0.0014071692767190004,
      0.0005,
      0.0005,
    ],
  ],
];

Deno.test("learningRate() follows DeepSpeed's WarmupLR, WarmupDecayLR and WarmupCosineLR step by step", () => {
  for (const [s, want] of DEEPSPEED) {
    validateSchedule(s);
    const got = want.map((_, step) => learningRate(step, s));
    for (let i = 0; i < want.length; i++) {
      assert.ok(
        Math.abs(got[i]! - want[i]!) <= 1e-15,
        `${JSON.stringify(s)} step ${i}: ${got[i]} vs DeepSpeed's ${want[i]}`,
      );
    }
  }
});

Deno.test("learningRate() with warmup_num_steps 0 starts at the peak (DeepSpeed refuses 0)", () => {
  const w: Schedule = { kind: "WarmupLR", lr: 0.01, minLr: 0, warmup: 0, warmupType: "log" };
  assert.deepEqual([0, 1, 5].map((i) => learningRate(i, w)), [0.01, 0.01, 0.01]);
  const d: Schedule = {
    kind: "WarmupDecayLR",
    lr: 0.01,
    minLr: 0,
    warmup: 0,
    warmupType: "log",
    totalSteps: 4,
  };
  assert.deepEqual([0, 1, 3, 5, 9].map((i) => learningRate(i, d)), [0.01, 0.01, 0.005, 0, 0]);
  const c: Schedule = {
    kind: "WarmupCosineLR",
    lr: 0.01,
    warmup: 0,
    warmupType: "log",
    totalSteps: 4,
    warmupMinRatio: 0,
    cosMinRatio: 0,
  };
  assert.equal(learningRate(0, c), 0.01);
  assert.ok(Math.abs(learningRate(2, c) - 0.005) < 1e-15);
  assert.equal(learningRate(100, c), 0);
});

Deno.test("validateSchedule() names the bad field", () => {
  const ok: Schedule = { kind: "cosine", lr: 1e-3, warmup: 0, totalSteps: 10 };
  validateSchedule(ok);
  assert.throws(() => validateSchedule({ ...ok, kind: "step" as "cosine" }), /Unknown schedule/);
  assert.throws(() => validateSchedule({ ...ok, warmup: 1.5 }), /Warmup/);
  assert.throws(() => validateSchedule({ ...ok, minLr: 1 }), /Minimum learning rate/);
  const w: Schedule = { kind: "WarmupLR", lr: 1e-3, minLr: 0, warmup: 10, warmupType: "log" };
  assert.throws(
    () => validateSchedule({ ...w, warmupType: "exp" as "log" }),
    /Warmup type must be "log" or "linear"/,
  );
  assert.throws(() => validateSchedule({ ...w, kind: "WarmupDecayLR" }), /needs total steps/);
  assert.throws(
    () =>
      validateSchedule({
        kind: "WarmupCosineLR",
        lr: 1e-3,
        warmup: 10,
        warmupType: "log",
        totalSteps: 100,
        warmupMinRatio: 0,
        cosMinRatio: 2,
      }),
    /cos_min_ratio must be in \[0, 1\]/,
  );
});
