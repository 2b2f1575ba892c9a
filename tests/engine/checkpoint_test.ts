import assert from "node:assert/strict";
import { AdditionTask } from "../../data/mod.ts";
import { CHECKPOINT_FILE, type EngineConfig, initialize } from "../../engine/mod.ts";
import { createCpuBackend } from "../../kernels/mod.ts";

const task = new AdditionTask({ digits: 2, heldOut: 20 });
const config: EngineConfig = {
  model: { vocab: 12, ctx: task.seqLen, dim: 16, layers: 2, heads: 2 },
  train_batch_size: 8,
  gradient_clipping: 1,
  optimizer: { type: "AdamW", params: { lr: 3e-3, weight_decay: 0.1 } },
  scheduler: { type: "WarmupCosineLR", params: { warmup_num_steps: 2, total_num_steps: 8 } },
  seed: 7,
};
const backend = () => createCpuBackend({ threads: 1 });

Deno.test("8 steps straight equal 4 steps, save, load into a new engine, 4 steps: bit for bit", async () => {
  const dir = await Deno.makeTempDir();
  const straight = await initialize(config, { backend: backend() });
  const s0 = task.trainBatches(8, 1);
  const want: number[] = [];
  for (let i = 0; i < 8; i++) want.push((await straight.trainBatch([s0.next()])).loss);

  const first = await initialize(config, { backend: backend() });
  const s1 = task.trainBatches(8, 1);
  const got: number[] = [];
  for (let i = 0; i < 4; i++) got.push((await first.trainBatch([s1.next()])).loss);
  await first.save(dir, { data: s1.getState() }, { note: "half way" });

  const second = await initialize({ ...config, seed: 99 }, { backend: backend() }); // different init, overwritten
  const extra = await second.load(dir);
  assert.equal(second.step, 4);
  const s2 = task.trainBatches(8, 12345);
  s2.setState(extra.data as ReturnType<typeof s2.getState>);
  for (let i = 0; i < 4; i++) got.push((await second.trainBatch([s2.next()])).loss);

  assert.deepEqual(got, want);
  assert.deepEqual(await second.model.getParams(), await straight.model.getParams());
  const cfg = JSON.parse(await Deno.readTextFile(`${dir}/config.json`));
  assert.equal(cfg.note, "half way");
  assert.equal(cfg.engine.seed, 7);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("load() rejects a checkpoint of another shape, a corrupt file and a missing one", async () => {
  const dir = await Deno.makeTempDir();
  const engine = await initialize(config, { backend: backend() });
  await engine.save(dir);
  const wider = await initialize({ ...config, model: { ...config.model, dim: 32 } }, {
    backend: backend(),
  });
  await assert.rejects(() => wider.load(dir), /another model shape: dim 16 there vs 32 here/);
  const sgd = await initialize({ ...config, optimizer: { type: "SGD" } }, { backend: backend() });
  await assert.rejects(() => sgd.load(dir), /optimizer "adamw"/);

  const path = `${dir}/${CHECKPOINT_FILE}`;
  const bytes = await Deno.readFile(path);
  await Deno.writeFile(path, bytes.subarray(0, bytes.length - 100));
  await assert.rejects(() => engine.load(dir), /Corrupt safetensors file/);
  await Deno.writeFile(path, new Uint8Array([255, 255, 255, 255, 0, 0, 0, 0, 123]));
  await assert.rejects(() => engine.load(dir), /Corrupt safetensors file/);
  await Deno.remove(path);
  await assert.rejects(() => engine.load(dir), /No checkpoint/);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("a checkpoint holds the parameters under GPT-2 names and the AdamW moments", async () => {
  const { readSafetensors, toFloat32 } = await import("../../models/mod.ts");
  const dir = await Deno.makeTempDir();
  const engine = await initialize(config, { backend: backend() });
  await engine.trainBatch([task.trainBatches(8, 1).next()]);
  await engine.save(dir);
  const file = await readSafetensors(`${dir}/${CHECKPOINT_FILE}`);
  const params = await engine.model.getParams();
  for (const [name, value] of params) {
    assert.deepEqual(toFloat32(file.tensors.get(name)!), value);
    assert.ok(file.tensors.has(`optimizer.m.${name}`) && file.tensors.has(`optimizer.v.${name}`));
  }
  assert.equal(JSON.parse(file.metadata.state).step, 1);
  await Deno.remove(dir, { recursive: true });
});
