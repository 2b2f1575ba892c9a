import assert from "node:assert/strict";
import { Engine, type EngineConfig, resolveEngineConfig } from "../../engine/mod.ts";
import { createReferenceBackend } from "../../kernels/mod.ts";

const model = { vocab: 12, ctx: 11, dim: 16, layers: 1, heads: 2 };

Deno.test("resolveEngineConfig() reads DeepSpeed's keys and derives the missing batch size", () => {
  const c = resolveEngineConfig({
    model,
    train_batch_size: 32,
    train_micro_batch_size_per_gpu: 8,
    gradient_clipping: 1,
    optimizer: { type: "AdamW", params: { lr: 2e-3, betas: [0.8, 0.95], weight_decay: 0.1 } },
    scheduler: {
      type: "WarmupCosineLR",
      params: { warmup_num_steps: 10, total_num_steps: 100, cos_min_ratio: 0.5 },
    },
    fp16: { enabled: true, initial_scale_power: 8 },
  });
  assert.equal(c.accumulation, 4);
  assert.equal(c.clip, 1);
  assert.deepEqual(
    [c.optimizer.kind, c.optimizer.beta1, c.optimizer.beta2, c.optimizer.weightDecay],
    ["adamw", 0.8, 0.95, 0.1],
  );
  assert.deepEqual(c.schedule, {
    kind: "cosine",
    lr: 2e-3,
    warmup: 10,
    totalSteps: 100,
    minLr: 1e-3,
  });
  assert.equal(c.lossScaling?.initialScale, 256);
  const d = resolveEngineConfig({
    model,
    train_micro_batch_size_per_gpu: 4,
    gradient_accumulation_steps: 3,
  });
  assert.equal(d.batchSize, 12);
  assert.equal(d.schedule.kind, "constant");
});

Deno.test("resolveEngineConfig() names the bad key and the fix", () => {
  const bad = (c: Partial<EngineConfig>, re: RegExp) =>
    assert.throws(() => resolveEngineConfig({ model, ...c } as EngineConfig), re);
  bad(
    { train_batch_size: 10, train_micro_batch_size_per_gpu: 4 },
    /train_batch_size \(10\) must equal/,
  );
  bad({ zero_optimization: {} } as Partial<EngineConfig>, /Unknown config key "zero_optimization"/);
  bad({ optimizer: { type: "Lion" } }, /Unknown optimizer type "Lion"/);
  bad({ optimizer: { type: "AdamW", params: { lr: -1 } } }, /optimizer.params.lr/);
  bad({ scheduler: { type: "OneCycle" } }, /Unknown scheduler type/);
  bad({ scheduler: { type: "WarmupCosineLR" } }, /total_num_steps/);
  bad({ gradient_accumulation_steps: "2" as unknown as number }, /must be an integer/);
  bad({ bf16: { enabled: true } }, /bf16 is not implemented/);
  bad({ tensor_model_parallel_size: 3 }, /Cannot split 2 attention heads across tp=3/);
  bad({ pipeline_model_parallel_size: 2 }, /Cannot split 1 layers into pp=2 stages/);
  bad({ tensor_model_parallel_size: 2, fp16: { enabled: true } }, /fp16 loss scaling/);
  bad({ sequence_parallel: "yes" as unknown as boolean }, /"sequence_parallel" must be true/);
  assert.throws(() => resolveEngineConfig({ model: { ...model, heads: 3 } }), /not divisible/);
});

Deno.test("resolveEngineConfig() reads Megatron's parallel keys; the one-rank Engine refuses them", () => {
  const c = resolveEngineConfig({
    model: { ...model, layers: 4 },
    train_batch_size: 32,
    gradient_accumulation_steps: 4,
    tensor_model_parallel_size: 2,
    pipeline_model_parallel_size: 2,
    virtual_pipeline_model_parallel_size: 2,
    sequence_parallel: true,
    data_parallel_size: 2,
  });
  assert.deepEqual(
    [c.tp, c.pp, c.dp, c.virtualStages, c.sequenceParallel, c.microBatch],
    [2, 2, 2, 2, true, 4],
  );
  assert.equal(resolveEngineConfig({ model, sequence_parallel: true }).sequenceParallel, false);
  assert.throws(
    () => new Engine({ model, tensor_model_parallel_size: 2 }, createReferenceBackend()),
    /Engine trains on one rank.*ParallelEngine/,
  );
});
