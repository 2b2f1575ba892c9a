import assert from "node:assert/strict";
import { DynamicLossScaler } from "../../optim/mod.ts";

Deno.test("DynamicLossScaler backs off and skips on overflow, grows after a window of good steps", () => {
  // hysteresis 1 (the default): every overflow halves the scale.
  const s = new DynamicLossScaler({ initialScale: 8, growthInterval: 3, minScale: 2 });
  assert.equal(s.update(true), true);
  assert.equal(s.update(true), true);
  assert.equal(s.update(true), true);
  assert.equal(s.scale, 8, "3 good steps since the start are not yet past the window");
  assert.equal(s.update(true), true);
  assert.equal(s.scale, 16, "the good step after 3 good steps grows the scale");
  assert.equal(s.update(false), false);
  assert.equal(s.scale, 8);
  assert.equal(s.update(false), false);
  assert.equal(s.update(false), false);
  assert.equal(s.scale, 2);
  assert.equal(s.skipped, 3);
  assert.throws(() => new DynamicLossScaler({ backoffFactor: 2 }), /backoffFactor/);
  assert.throws(
    () => new DynamicLossScaler({ hysteresis: 0 }),
    /hysteresis must be an integer >= 1/,
  );
});

Deno.test("DynamicLossScaler counts hysteresis as DeepSpeed does through a forced run of overflows", () => {
  const s = new DynamicLossScaler({ initialScale: 1024, growthInterval: 2, hysteresis: 2 });
  // [finite, returned, skipped, hysteresis left, scale, good steps since the last overflow]
  const run: [boolean, boolean, number, number, number, number][] = [
    [false, false, 1, 1, 1024, 0], // the first overflow uses up the budget
    [false, false, 2, 1, 512, 0], // the second halves the scale
    [true, true, 2, 1, 512, 1], // no refill without consecutive_hysteresis
    [false, false, 3, 1, 256, 0], // so the next overflow halves at once
    [true, true, 3, 1, 256, 1],
    [true, true, 3, 1, 256, 2],
    [true, true, 3, 2, 512, 3], // 2 good steps since the overflow: grow, and refill
    [false, false, 4, 1, 512, 0],
    [true, true, 4, 1, 512, 1],
    [true, true, 4, 1, 512, 2],
    [true, true, 4, 2, 1024, 3],
    [true, true, 4, 2, 1024, 4],
    [true, true, 4, 2, 2048, 5], // and every 2 good steps after that
  ];
  run.forEach(([finite, take, skipped, left, scale, good], i) => {
    assert.equal(s.update(finite), take, `update ${i}`);
    assert.deepEqual(
      [s.skipped, s.hysteresis, s.scale, s.goodSteps],
      [skipped, left, scale, good],
      `update ${i}`,
    );
  });
  assert.deepEqual(s.getState(), {
    scale: 2048,
    goodSteps: 5,
    skipped: 4,
    hysteresis: 2,
    iteration: 13,
    lastOverflow: 7,
  });
});

Deno.test("DynamicLossScaler with consecutive_hysteresis refills the budget after every good step", () => {
  const s = new DynamicLossScaler({ initialScale: 64, hysteresis: 3, consecutiveHysteresis: true });
  for (let i = 0; i < 5; i++) {
    assert.equal(s.update(false), false);
    assert.equal(s.update(false), false);
    assert.equal(s.update(true), true);
  }
  assert.deepEqual([s.scale, s.skipped, s.hysteresis], [64, 10, 3], "two overflows never reach 3");
  s.update(false), s.update(false), s.update(false);
  assert.deepEqual([s.scale, s.hysteresis], [32, 1]);
});

Deno.test("a static loss scale never changes, and an overflow still skips the step", () => {
  const s = new DynamicLossScaler({
    initialScale: 128,
    dynamic: false,
    growthInterval: 1,
    minScale: 128,
  });
  for (let i = 0; i < 20; i++) assert.equal(s.update(i % 3 !== 0), i % 3 !== 0);
  assert.deepEqual([s.scale, s.skipped, s.dynamic], [128, 7, false]);
});

Deno.test("an overflow at min_loss_scale throws a RangeError that says what to do", () => {
  const s = new DynamicLossScaler({ initialScale: 4, minScale: 2, hysteresis: 2 });
  s.update(false); // budget
  s.update(false); // 4 -> 2
  assert.equal(s.scale, 2);
  const before = s.getState();
  assert.throws(
    () => s.update(false),
    (e: Error) =>
      e instanceof RangeError &&
      /cannot fall below min_loss_scale.*lower the learning rate.*gradient_clipping/.test(
        e.message,
      ),
  );
  assert.deepEqual(s.getState(), before, "the state is left as it was");
});

Deno.test("DynamicLossScaler's state round-trips through a checkpoint, old saves included", () => {
  const s = new DynamicLossScaler({ initialScale: 256, growthInterval: 3, hysteresis: 2 });
  for (const f of [true, false, true, true]) s.update(f);
  const t = new DynamicLossScaler({ growthInterval: 3, hysteresis: 2 });
  t.setState(s.getState());
  assert.deepEqual(t.getState(), s.getState());
  for (const f of [true, true, false, false, true]) assert.equal(t.update(f), s.update(f));
  assert.deepEqual(t.getState(), s.getState());
  // A state saved before the hysteresis counter and the overflow step were kept.
  const old = new DynamicLossScaler({ growthInterval: 3, hysteresis: 2 });
  old.setState({ scale: 2, goodSteps: 2, skipped: 4 });
  assert.deepEqual(old.getState(), {
    scale: 2,
    goodSteps: 2,
    skipped: 4,
    hysteresis: 2,
    iteration: 6,
    lastOverflow: 3,
  });
  old.update(true);
  assert.equal(old.scale, 2, "2 good steps since the last overflow");
  old.update(true);
  assert.equal(old.scale, 4, "then 3: grow");
  assert.throws(() => old.setState({ scale: 0, goodSteps: 0, skipped: 0 }), /Corrupt/);
  assert.throws(
    () => old.setState({ scale: 1, goodSteps: 5, skipped: 0, iteration: 3, lastOverflow: -1 }),
    /Corrupt/,
  );
});
