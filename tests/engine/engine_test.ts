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

Deno.test("fp16 loss scaling by powers of two leaves the training unchanged", async () => {
  const task = new AdditionTask({ digits: 2, heldOut: 10 });
  const cfg = (fp16: boolean): EngineConfig => ({
    model: { ...model, ctx: task.seqLen },
    train_batch_size: 16,
    optimizer: { type: "AdamW", params: { lr: 3e-3 } },
    fp16: { enabled: fp16, initial_scale_power: 10 },
  });
  const plain = await initialize(cfg(false), { backend: createCpuBackend({ gemm: "ts" }) });
  const scaled = await initialize(cfg(true), { backend: createCpuBackend({ gemm: "ts" }) });
  const s1 = task.trainBatches(16, 5), s2 = task.trainBatches(16, 5);
  for (let i = 0; i < 4; i++) {
    const a = await plain.trainBatch([s1.next()]), b = await scaled.trainBatch([s2.next()]);
    assert.equal(a.loss, b.loss);
    assert.equal(b.skipped, false);
  }
  assert.deepEqual(await plain.model.getParams(), await scaled.model.getParams());
  assert.equal(scaled.lossScaler?.scale, 1024);
});

Deno.test("an overflowing gradient skips the step and halves the loss scale", async () => {
  const task = new AdditionTask({ digits: 1, heldOut: 5 });
  const engine = await initialize({
    model: { ...model, ctx: task.seqLen },
    train_batch_size: 4,
    // 2^140 overflows float32 in the loss gradient.
    fp16: { enabled: true, initial_scale_power: 140 },
  }, { backend: createCpuBackend({ gemm: "ts" }) });
  const before = await engine.model.getParams();
  const r = await engine.trainBatch([task.trainBatches(4, 1).next()]);
  assert.equal(r.skipped, true);
  assert.equal(engine.lossScaler?.scale, 2 ** 139);
  assert.deepEqual(await engine.model.getParams(), before);
  assert.equal(engine.optimizer.steps, 0);
});
