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

Deno.test("validateSchedule() names the bad field", () => {
  const ok: Schedule = { kind: "cosine", lr: 1e-3, warmup: 0, totalSteps: 10 };
  validateSchedule(ok);
  assert.throws(() => validateSchedule({ ...ok, kind: "step" as "cosine" }), /Unknown schedule/);
  assert.throws(() => validateSchedule({ ...ok, warmup: 1.5 }), /Warmup/);
  assert.throws(() => validateSchedule({ ...ok, minLr: 1 }), /Minimum learning rate/);
});
