import assert from "node:assert/strict";
import { AdditionTask, WindowSampler } from "../../data/mod.ts";
import { type EngineConfig, initialize } from "../../engine/mod.ts";
import { createCpuBackend, createReferenceBackend } from "../../kernels/mod.ts";

const model = { vocab: 12, ctx: 11, dim: 16, layers: 1, heads: 2 };

function tokens(n: number): Int32Array {
  return Int32Array.from({ length: n }, (_, i) => (i * 5 + (i >> 3)) % 12);
}

Deno.test("trainBatch() over 2 micro-batches of 4 equals one batch of 8", async () => {
  const src = new WindowSampler(tokens(400), 8, 8, 3);
  const batches = [src.next(), src.next(), src.next()];
  const halves = batches.map((b) =>
    [0, 1].map((h) => ({
      inputs: b.inputs.slice(h * 32, (h + 1) * 32),
      targets: b.targets.slice(h * 32, (h + 1) * 32),
      B: 4,
      T: 8,
    }))
  );
  const cfg = (accum: number): EngineConfig => ({
    model,
    train_batch_size: 8,
    gradient_accumulation_steps: accum,
    gradient_clipping: 0.5,
    optimizer: { type: "AdamW", params: { lr: 1e-2 } },
  });
  const one = await initialize(cfg(1), { backend: createReferenceBackend({ precision: "f64" }) });
  const two = await initialize(cfg(2), { backend: createReferenceBackend({ precision: "f64" }) });
  for (let i = 0; i < 3; i++) {
    const a = await one.trainBatch([batches[i]]);
    const b = await two.trainBatch(halves[i]);
    assert.ok(Math.abs(a.loss - b.loss) < 1e-10, `step ${i}: ${a.loss} vs ${b.loss}`);
    assert.ok(Math.abs(a.gradNorm - b.gradNorm) < 1e-9);
  }
  const pa = await one.model.getParams();
  const pb = await two.model.getParams();
  for (const [name, a] of pa) {
    const b = pb.get(name)!;
    for (let i = 0; i < a.length; i++) assert.ok(Math.abs(a[i] - b[i]) < 1e-9, `${name}[${i}]`);
  }
});

Deno.test("fp16 overflows skip steps; the scale drops after hysteresis overflows, as DeepSpeed", async () => {
  const task = new AdditionTask({ digits: 1, heldOut: 5 });
  const engine = await initialize({
    model: { ...model, ctx: task.seqLen },
    train_batch_size: 4,
    // A loss scale of 2^40 overflows every float16 gradient (the largest is 65504).
    fp16: { enabled: true, initial_scale_power: 40, hysteresis: 2, loss_scale_window: 2 },
  }, { backend: createCpuBackend({ gemm: "ts" }) });
  const scaler = engine.lossScaler!;
  const src = task.trainBatches(4, 1);
  const before = await engine.model.getParams();
  const first = await engine.trainBatch([src.next()]);
  assert.equal(first.skipped, true);
  assert.equal(first.lossScale, 2 ** 40);
  assert.equal(scaler.scale, 2 ** 40, "the first overflow only spends the hysteresis");
  const second = await engine.trainBatch([src.next()]);
  assert.equal(second.skipped, true);
  assert.equal(scaler.scale, 2 ** 39, "the second overflow halves the scale");
  assert.equal(scaler.skipped, 2);
  assert.deepEqual(await engine.model.getParams(), before, "skipped steps change nothing");
  assert.equal(engine.zero.steps, 0);
  assert.equal(engine.step, 2);
  assert.equal(engine.currentLr(), first.lr, "the schedule does not advance on skipped steps");
});

Deno.test("on one rank every ZeRO stage trains like stage 0", async () => {
  const task = new AdditionTask({ digits: 2, heldOut: 10 });
  const run = async (stage: 0 | 1 | 2 | 3) => {
    const e = await initialize({
      model: { ...model, ctx: task.seqLen },
      train_batch_size: 8,
      gradient_clipping: 0.5,
      zero_optimization: { stage, reduce_bucket_size: 500, stage3_param_persistence_threshold: 50 },
    }, { backend: createCpuBackend({ gemm: "ts" }) });
    const src = task.trainBatches(8, 2);
    const losses: number[] = [];
    for (let i = 0; i < 3; i++) losses.push((await e.trainBatch([src.next()])).loss);
    return { losses, params: await e.gatherTensors() };
  };
  const want = await run(0);
  for (const stage of [1, 2] as const) {
    const got = await run(stage);
    assert.deepEqual(got.losses, want.losses, `stage ${stage}`);
    assert.deepEqual(got.params, want.params, `stage ${stage}`);
  }
  // Stage 3 keeps the small parameters in buckets of their own: the global norm sums the same
  // squares in another order (float32 rounding, about 1e-7 relative).
  const got = await run(3);
  got.losses.forEach((l, i) => assert.ok(Math.abs(l / want.losses[i]! - 1) < 1e-6));
  for (const [name, w] of want.params!) {
    const g = got.params!.get(name)!;
    for (let i = 0; i < w.length; i++) assert.ok(Math.abs(g[i]! - w[i]!) < 1e-6, name);
  }
});
