import assert from "node:assert/strict";
import {
  type EngineConfig,
  fillAuto,
  type ResolvedEngineConfig,
  resolveEngineConfig,
} from "../../engine/mod.ts";

const model = { vocab: 12, ctx: 11, dim: 16, layers: 1, heads: 2 };

const fixtures = new URL("./fixtures/", import.meta.url);
const examples = new URL("../../examples/", import.meta.url);
// deno-lint-ignore no-explicit-any
const readJson = async (url: URL): Promise<any> => JSON.parse(await Deno.readTextFile(url));

/** The defaults of `zero` for a given stage. */
const zeroDefaults = (stage: 0 | 1 | 2 | 3): ResolvedEngineConfig["zero"] => ({
  stage,
  reduceBucketSize: 2 ** 20,
  allgatherBucketSize: 2 ** 20,
  overlapComm: stage === 3,
  reduceScatter: true,
  allgatherPartitions: true,
  prefetchBucketSize: 2 ** 22,
  paramPersistenceThreshold: 1e5,
  maxLiveParameters: 2 ** 24,
  gather16bitWeightsOnModelSave: false,
});

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
    kind: "WarmupCosineLR",
    lr: 2e-3,
    warmup: 10,
    warmupType: "log",
    totalSteps: 100,
    warmupMinRatio: 0,
    cosMinRatio: 0.5,
  });
  assert.equal(c.precision, "fp16");
  assert.deepEqual(c.lossScaler, {
    dynamic: true,
    initialScale: 256,
    window: 1000,
    hysteresis: 2,
    consecutiveHysteresis: false,
    minScale: 1,
  });
  assert.deepEqual(c.lossScaling, { initialScale: 256, growthInterval: 1000, minScale: 1 });
  assert.deepEqual(c.zero, zeroDefaults(0));
  assert.deepEqual(
    [c.checkpointActivations, c.dropout, c.stepsPerPrint, c.wallClockBreakdown, c.ignoredKeys],
    [0, 0, 10, false, []],
  );
  const d = resolveEngineConfig({
    model,
    train_micro_batch_size_per_gpu: 4,
    gradient_accumulation_steps: 3,
  });
  assert.equal(d.batchSize, 12);
  assert.deepEqual(d.schedule, { kind: "constant", lr: 1e-3, warmup: 0, totalSteps: 1 });
  assert.deepEqual([d.precision, d.lossScaler, d.lossScaling], ["fp32", null, null]);
  // DeepSpeed's fused Adam decays by 0 unless told; PyTorch's AdamW (torch_adam) by 0.01.
  assert.equal(d.optimizer.weightDecay, 0);
  const t = resolveEngineConfig({
    model,
    optimizer: { type: "Adam", params: { torch_adam: true } },
  });
  assert.deepEqual([t.optimizer.kind, t.optimizer.weightDecay, t.ignoredKeys], ["adamw", 0.01, []]);
});

Deno.test("resolveEngineConfig() keeps Loom's schedule kinds as they were", () => {
  const c = resolveEngineConfig({
    model,
    optimizer: { type: "AdamW", params: { lr: 2e-3 } },
    scheduler: {
      type: "cosine",
      params: { warmup_num_steps: 10, total_num_steps: 100, cos_min_ratio: 0.5 },
    },
  });
  assert.deepEqual(c.schedule, {
    kind: "cosine",
    lr: 2e-3,
    warmup: 10,
    totalSteps: 100,
    minLr: 1e-3,
  });
  const l = resolveEngineConfig({
    model,
    scheduler: { type: "linear", params: { total_num_steps: 50, cos_min_ratio: 0.5 } },
  });
  assert.deepEqual(l.schedule, { kind: "linear", lr: 1e-3, warmup: 0, totalSteps: 50, minLr: 0 });
  assert.deepEqual(l.ignoredKeys, ["scheduler.params.cos_min_ratio"]);
});

Deno.test("resolveEngineConfig() resolves DeepSpeed's schedulers with their defaults, and says which rate wins", () => {
  const sch = (type: string, params: Record<string, unknown>, lr?: number) =>
    resolveEngineConfig({
      model,
      optimizer: { type: "AdamW", params: lr === undefined ? {} : { lr } },
      scheduler: { type, params } as EngineConfig["scheduler"],
    });
  const w = sch("WarmupLR", {}, 0.02);
  assert.deepEqual(w.schedule, {
    kind: "WarmupLR",
    lr: 0.02, // no warmup_max_lr: the optimizer's rate (DeepSpeed since #7360)
    minLr: 0,
    warmup: 1000,
    warmupType: "log",
  });
  assert.deepEqual(w.ignoredKeys, []);
  const m = sch("WarmupLR", { warmup_max_lr: 0.005, warmup_type: "linear" }, 0.02);
  assert.equal(m.schedule.lr, 0.005, "warmup_max_lr wins over optimizer.params.lr");
  assert.deepEqual(m.ignoredKeys, ["optimizer.params.lr"]);
  const d = sch("WarmupDecayLR", { total_num_steps: 500, warmup_min_lr: 1e-5 }, 0.02);
  assert.deepEqual(d.schedule, {
    kind: "WarmupDecayLR",
    lr: 0.001, // WarmupDecayLR's own default, whatever the optimizer says
    minLr: 1e-5,
    warmup: 1000,
    warmupType: "log",
    totalSteps: 500,
  });
  assert.deepEqual(d.ignoredKeys, ["optimizer.params.lr"]);
  const c = sch("WarmupCosineLR", { total_num_steps: 500, warmup_min_ratio: 0.1 }, 0.02);
  assert.deepEqual(c.schedule, {
    kind: "WarmupCosineLR",
    lr: 0.02,
    warmup: 1000,
    warmupType: "log",
    totalSteps: 500,
    warmupMinRatio: 0.1,
    cosMinRatio: 0.0001,
  });
  assert.throws(
    () => sch("WarmupCosineLR", { total_num_steps: 500, warmup_max_lr: 1 }),
    /"scheduler.params.warmup_max_lr" is not a parameter of WarmupCosineLR.*peaks at optimizer.params.lr/,
  );
  assert.throws(
    () => sch("WarmupLR", { cos_min_ratio: 0.1 }),
    /"scheduler.params.cos_min_ratio" is not a parameter of WarmupLR \(it is one of WarmupCosineLR/,
  );
  assert.throws(() => sch("WarmupLR", { warmup_type: "exp" }), /must be "log" or "linear"/);
  assert.throws(() => sch("WarmupDecayLR", {}), /total_num_steps/);
  assert.throws(() => sch("WarmupLR", { last_batch_iteration: 7 }), /resume a run/);
  assert.deepEqual(sch("WarmupLR", { last_batch_iteration: -1 }).ignoredKeys, [
    "scheduler.params.last_batch_iteration",
  ]);
});

Deno.test("resolveEngineConfig() names the bad key and the fix", () => {
  const bad = (c: Record<string, unknown>, re: RegExp, type?: ErrorConstructor) =>
    assert.throws(() => resolveEngineConfig({ model, ...c } as EngineConfig), (e: Error) => {
      assert.match(e.message, re);
      if (type) assert.ok(e instanceof type, `${e.name}: ${e.message}`);
      return true;
    });
  bad(
    { zero_optimization: { stage: 2, bucket: 1 } },
    /Unknown config key "zero_optimization.bucket"/,
    TypeError,
  );
  bad({ zero_optimisation: {} }, /Unknown config key "zero_optimisation"/, TypeError);
  bad(
    { zero_optimization: { stage: 4 } },
    /"zero_optimization.stage" must be 0, 1, 2 or 3/,
    RangeError,
  );
  bad({ zero_optimization: { reduce_bucket_size: 2.5 } }, /reduce_bucket_size" must be an integer/);
  bad({ optimizer: { type: "Lion" } }, /Unknown optimizer type "Lion"/, RangeError);
  bad({ optimizer: { type: "AdamW", params: { lr: -1 } } }, /optimizer.params.lr/, RangeError);
  bad(
    { optimizer: { type: "Adam", params: { adam_w_mode: false } } },
    /Adam with L2 regularisation.*which Loom does not have: set adam_w_mode to true/,
    RangeError,
  );
  bad({ optimizer: { type: "AdamW", params: { max_grad_norm: 1 } } }, /"gradient_clipping"/);
  bad(
    { optimizer: { type: "AdamW", params: { bias_correction: false } } },
    /bias_correction" must be true/,
  );
  bad({ optimizer: { type: "AdamW", params: { momentum: 0.9 } } }, /optimizer.params.momentum/);
  bad({ scheduler: { type: "OneCycle" } }, /Unknown scheduler type "OneCycle"/);
  bad({ scheduler: { type: "WarmupCosineLR" } }, /total_num_steps/);
  bad({ gradient_accumulation_steps: "2" }, /must be an integer/, TypeError);
  bad({ fp16: { enabled: true }, bf16: { enabled: true } }, /both true/, RangeError);
  bad(
    { fp16: { enabled: true, fp16_master_weights_and_grads: true } },
    /keeps master weights.*fp32/,
  );
  bad({ fp16: { enabled: true, hysteresis: 0 } }, /"fp16.hysteresis" must be an integer >= 1/);
  bad({ fp16: { enabled: true, loss_scale: -1 } }, /"fp16.loss_scale"/);
  bad({ dropout: 1 }, /"dropout" must be below 1/, RangeError);
  bad({ dropout: 1.5 }, /"dropout" must be in \[0, 1\]/, RangeError);
  bad(
    { activation_checkpointing: { every: 2 } },
    /Unknown config key "activation_checkpointing.every"/,
  );
  bad({ steps_per_print: 0 }, /"steps_per_print" must be an integer >= 1/);
  bad({ tensor_model_parallel_size: 3 }, /Cannot split 2 attention heads across tp=3/);
  bad({ pipeline_model_parallel_size: 2 }, /Cannot split 1 layers into pp=2 stages/);
  bad({ sequence_parallel: "yes" }, /"sequence_parallel" must be true/, TypeError);
  bad(
    { tensor_parallel: { autotp_size: 2 }, tensor_model_parallel_size: 1 },
    /"tensor_parallel.autotp_size" \(2\) and "tensor_model_parallel_size" \(1\)/,
  );
  bad(
    { zero_optimization: { stage3_max_live_parameters: 5, max_live_parameters: 6 } },
    /one setting/,
  );
  assert.throws(() => resolveEngineConfig({ model: { ...model, heads: 3 } }), /not divisible/);
});

Deno.test("resolveEngineConfig() shows all four batch numbers, given and derived, when they do not fit", () => {
  const bad = (c: Partial<EngineConfig>, re: RegExp) =>
    assert.throws(() => resolveEngineConfig({ model, ...c }), (e: Error) => {
      assert.ok(e instanceof RangeError);
      assert.match(e.message, re);
      return true;
    });
  bad(
    { train_batch_size: 10, train_micro_batch_size_per_gpu: 4 },
    /train_batch_size \(10, given\) must equal train_micro_batch_size_per_gpu \(4, given\) x gradient_accumulation_steps \(2.5, derived as 10 \/ \(4 x 1\)\) x data_parallel_size \(1, default\): give a train_batch_size that is a multiple of train_micro_batch_size_per_gpu x data_parallel_size \(4\)/,
  );
  bad(
    { train_batch_size: 30, gradient_accumulation_steps: 4, data_parallel_size: 2 },
    /\(30, given\).*\(3.75, derived as 30 \/ \(4 x 2\)\).*\(4, given\).*\(2, given\).*gradient_accumulation_steps x data_parallel_size \(8\)/,
  );
  bad(
    { train_batch_size: 32, train_micro_batch_size_per_gpu: 4, gradient_accumulation_steps: 2 },
    /\(32, given\).*\(4, given\).*\(2, given\).*\(1, default\): change one of the three/,
  );
});

Deno.test("resolveEngineConfig() reads zero_optimization with Loom's bucket sizes and DeepSpeed's stage-3 defaults", () => {
  const z = (zero: Record<string, unknown>, extra: Partial<EngineConfig> = {}) =>
    resolveEngineConfig({ model, zero_optimization: zero, ...extra } as EngineConfig);
  assert.deepEqual(z({ stage: 3 }).zero, zeroDefaults(3));
  const c = z({
    stage: 2,
    reduce_bucket_size: 5e8, // DeepSpeed writes sizes as floats
    allgather_bucket_size: 2e8,
    overlap_comm: false,
    reduce_scatter: false,
    allgather_partitions: false,
    prefetch_bucket_size: 1e6, // the name without stage3_, as DeepSpeed also accepts
    stage3_param_persistence_threshold: 0,
    stage3_max_live_parameters: 3e7,
    stage3_gather_fp16_weights_on_model_save: true, // the old name
    contiguous_gradients: true,
    sub_group_size: 1e12,
    round_robin_gradients: false,
    stage3_max_reuse_distance: 1e9,
    cpu_offload: false,
    offload_optimizer: { device: "none", pin_memory: true },
  });
  assert.deepEqual(c.zero, {
    stage: 2,
    reduceBucketSize: 5e8,
    allgatherBucketSize: 2e8,
    overlapComm: false,
    reduceScatter: false,
    allgatherPartitions: false,
    prefetchBucketSize: 1e6,
    paramPersistenceThreshold: 0,
    maxLiveParameters: 3e7,
    gather16bitWeightsOnModelSave: true,
  });
  assert.deepEqual(c.ignoredKeys, [
    "zero_optimization.offload_optimizer.device",
    "zero_optimization.offload_optimizer.pin_memory",
    "zero_optimization.contiguous_gradients",
    "zero_optimization.sub_group_size",
    "zero_optimization.round_robin_gradients",
    "zero_optimization.cpu_offload",
    "zero_optimization.stage3_max_reuse_distance",
    "zero_optimization.allgather_bucket_size",
    "zero_optimization.reduce_scatter",
    "zero_optimization.allgather_partitions",
    "zero_optimization.stage3_gather_fp16_weights_on_model_save",
  ]);
  for (const block of ["offload_optimizer", "offload_param"]) {
    for (const device of ["cpu", "nvme"]) {
      assert.throws(
        () => z({ stage: 3, [block]: { device, pin_memory: true } }),
        new RegExp(
          `"zero_optimization.${block}.device" is "${device}": Loom has no CPU or NVMe offload.*` +
            `drop the block or set its device to "none"; ZeRO stage 3 already shards`,
        ),
      );
    }
  }
  assert.throws(() => z({ cpu_offload: true }), /"zero_optimization.cpu_offload" must be false/);
  assert.throws(
    () => z({ stage: 3 }, { model: { ...model, layers: 2 }, pipeline_model_parallel_size: 2 }),
    /stage" 3 shards the parameters.*pipeline_model_parallel_size=2.*DeepSpeed refuses ZeRO-3 with pipeline parallelism too.*stage 1 or 2/,
  );
  const p = z({ stage: 2 }, { model: { ...model, layers: 2 }, pipeline_model_parallel_size: 2 });
  assert.deepEqual([p.zero.stage, p.pp], [2, 2]);
});

Deno.test("resolveEngineConfig() reads fp16, bf16, activation checkpointing and the Loom keys", () => {
  const r = (c: Partial<EngineConfig>) => resolveEngineConfig({ model, ...c });
  const s = r({
    fp16: { enabled: true, loss_scale: 128, loss_scale_window: 50, auto_cast: false },
  });
  assert.deepEqual(s.lossScaler, {
    dynamic: false,
    initialScale: 128,
    window: 50,
    hysteresis: 2,
    consecutiveHysteresis: false,
    minScale: 1,
  });
  assert.deepEqual(s.lossScaling, {
    initialScale: 128,
    growthInterval: 50,
    minScale: 1,
    dynamic: false,
  });
  assert.deepEqual(s.ignoredKeys, ["fp16.auto_cast", "fp16.loss_scale_window"]);
  const h = r({
    fp16: { enabled: true, hysteresis: 3, consecutive_hysteresis: true, min_loss_scale: 4 },
  });
  assert.deepEqual(
    [h.lossScaler?.hysteresis, h.lossScaler?.consecutiveHysteresis, h.lossScaler?.minScale],
    [3, true, 4],
  );
  const off = r({ fp16: { enabled: false, initial_scale_power: 12 } });
  assert.deepEqual([off.precision, off.lossScaler, off.ignoredKeys], [
    "fp32",
    null,
    ["fp16.initial_scale_power"],
  ]);
  // Loss scaling is no longer refused for parallel layouts.
  const par = r({ tensor_model_parallel_size: 2, fp16: { enabled: true } });
  assert.deepEqual([par.tp, par.precision], [2, "fp16"]);
  assert.deepEqual([
    r({ bf16: { enabled: true } }).precision,
    r({ bf16: { enabled: true } }).lossScaler,
  ], [
    "bf16",
    null,
  ]);
  assert.equal(r({ bfloat16: { enabled: true } } as Partial<EngineConfig>).precision, "bf16");
  const a = r({
    activation_checkpointing: {
      partition_activations: false,
      number_checkpoints: null,
      profile: true,
    },
    dropout: 0.1,
    steps_per_print: 50,
    wall_clock_breakdown: true,
    prescale_gradients: false,
  });
  assert.deepEqual(
    [a.checkpointActivations, a.dropout, a.stepsPerPrint, a.wallClockBreakdown],
    [1, 0.1, 50, true],
  );
  assert.deepEqual(a.ignoredKeys, [
    "activation_checkpointing.partition_activations",
    "activation_checkpointing.number_checkpoints",
    "activation_checkpointing.profile",
    "prescale_gradients",
  ]);
  assert.equal(r({ activation_checkpointing: { every_n_blocks: 3 } }).checkpointActivations, 3);
  assert.equal(r({ activation_checkpointing: { every_n_blocks: 0 } }).checkpointActivations, 0);
});

Deno.test("resolveEngineConfig() reads Megatron's parallel keys and DeepSpeed's autotp_size", () => {
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
  assert.equal(resolveEngineConfig({ model, tensor_parallel: { autotp_size: 2 } }).tp, 2);
  assert.equal(resolveEngineConfig({ model, tensor_parallel: { autotp_size: 0 } }).tp, 1);
});

Deno.test('fillAuto() fills "auto" from the given values and the hidden size, and refuses the rest', () => {
  const cfg = {
    model: { ...model, dim: 32 },
    train_batch_size: "auto",
    optimizer: { type: "AdamW", params: { lr: "auto", betas: "auto" } },
    zero_optimization: {
      stage: 3,
      reduce_bucket_size: "auto",
      stage3_prefetch_bucket_size: "auto",
      stage3_param_persistence_threshold: "auto",
    },
  } as unknown as EngineConfig;
  const auto = {
    train_batch_size: 16,
    "optimizer.params.lr": 0.01,
    "optimizer.params.betas": [0.9, 0.95],
  };
  const filled = fillAuto(cfg, auto);
  assert.deepEqual(filled, {
    model: { ...model, dim: 32 },
    train_batch_size: 16,
    optimizer: { type: "AdamW", params: { lr: 0.01, betas: [0.9, 0.95] } },
    zero_optimization: {
      stage: 3,
      reduce_bucket_size: 32 * 32,
      stage3_prefetch_bucket_size: Math.floor(0.9 * 32 * 32),
      stage3_param_persistence_threshold: 320,
    },
  });
  assert.equal((cfg as unknown as Record<string, unknown>).train_batch_size, "auto", "a copy");
  const c = resolveEngineConfig(cfg, { auto });
  assert.deepEqual([c.batchSize, c.optimizer.beta2, c.zero.reduceBucketSize], [16, 0.95, 1024]);
  assert.equal(
    resolveEngineConfig(cfg, { auto: { ...auto, "zero_optimization.reduce_bucket_size": 4096 } })
      .zero
      .reduceBucketSize,
    4096,
  );
  assert.throws(
    () => resolveEngineConfig(cfg, { auto: { train_batch_size: 16 } }),
    (e: Error) =>
      e instanceof TypeError &&
      /"optimizer.params.lr" is "auto" and nothing fills it in: write its value in the config, or leave "auto" for train.ts to fill from --lr/
        .test(e.message),
  );
  // Stage 2: the Trainer fills only reduce_bucket_size from the hidden size.
  const z2 = {
    model,
    zero_optimization: {
      stage: 2,
      reduce_bucket_size: "auto",
      stage3_prefetch_bucket_size: "auto",
    },
  } as unknown as EngineConfig;
  assert.throws(
    () => resolveEngineConfig(z2),
    /"zero_optimization.stage3_prefetch_bucket_size" is "auto"/,
  );
});

// The values the Hugging Face Trainer would fill in, for a run on one rank.
const hfAuto = {
  train_batch_size: 16,
  train_micro_batch_size_per_gpu: 8,
  gradient_accumulation_steps: 2,
  gradient_clipping: 1,
  "fp16.enabled": true,
  "bf16.enabled": false,
  "optimizer.params.lr": 5e-5,
  "optimizer.params.betas": [0.9, 0.999],
  "optimizer.params.eps": 1e-8,
  "optimizer.params.weight_decay": 0,
  "scheduler.params.warmup_min_lr": 0,
  "scheduler.params.warmup_max_lr": 5e-5,
  "scheduler.params.warmup_num_steps": 10,
};

/** A fixture with its offload blocks set to device "none", the fix the error asks for. */
// deno-lint-ignore no-explicit-any
const withoutOffload = (json: any) => {
  const c = structuredClone(json);
  for (const b of ["offload_optimizer", "offload_param"]) {
    if (c.zero_optimization[b]) c.zero_optimization[b].device = "none";
  }
  return c;
};

Deno.test("the transformers ZeRO-2 config is refused for its CPU offload, and resolves without it", async () => {
  const json = await readJson(new URL("transformers_ds_config_zero2.json", fixtures));
  assert.throws(
    () => resolveEngineConfig({ model, ...json }, { auto: hfAuto }),
    /"zero_optimization.offload_optimizer.device" is "cpu": .*drop the block or set its device to "none"/,
  );
  const c = resolveEngineConfig({ model, ...withoutOffload(json) }, { auto: hfAuto });
  assert.deepEqual([c.batchSize, c.microBatch, c.accumulation, c.dp, c.clip], [16, 8, 2, 1, 1]);
  assert.deepEqual(c.optimizer, {
    kind: "adamw",
    beta1: 0.9,
    beta2: 0.999,
    eps: 1e-8,
    weightDecay: 0,
    momentum: 0.9,
  });
  assert.deepEqual(c.schedule, {
    kind: "WarmupLR",
    lr: 5e-5,
    minLr: 0,
    warmup: 10,
    warmupType: "log",
  });
  assert.equal(c.precision, "fp16");
  assert.deepEqual(c.lossScaler, {
    dynamic: true,
    initialScale: 65536,
    window: 1000,
    hysteresis: 2,
    consecutiveHysteresis: false,
    minScale: 1,
  });
  assert.deepEqual(c.zero, {
    ...zeroDefaults(2),
    reduceBucketSize: 2e8,
    allgatherBucketSize: 2e8,
    overlapComm: true,
  });
  assert.deepEqual([c.stepsPerPrint, c.wallClockBreakdown], [2000, false]);
  assert.deepEqual(c.ignoredKeys, [
    "optimizer.params.lr",
    "zero_optimization.offload_optimizer.device",
    "zero_optimization.offload_optimizer.pin_memory",
    "zero_optimization.contiguous_gradients",
    "zero_optimization.allgather_bucket_size",
    "zero_optimization.reduce_scatter",
    "zero_optimization.allgather_partitions",
  ]);
});

Deno.test("the transformers ZeRO-3 config resolves its hidden-size autos from model.dim", async () => {
  const json = await readJson(new URL("transformers_ds_config_zero3.json", fixtures));
  const m = { ...model, dim: 32 };
  const auto = hfAuto;
  assert.throws(
    () => resolveEngineConfig({ model: m, ...json }, { auto }),
    /"zero_optimization.offload_optimizer.device" is "cpu"/,
  );
  const c = resolveEngineConfig({ model: m, ...withoutOffload(json) }, { auto });
  assert.deepEqual(c.zero, {
    stage: 3,
    reduceBucketSize: 32 * 32,
    allgatherBucketSize: 2 ** 20,
    overlapComm: true,
    reduceScatter: true,
    allgatherPartitions: true,
    prefetchBucketSize: 921,
    paramPersistenceThreshold: 320,
    maxLiveParameters: 1e9,
    gather16bitWeightsOnModelSave: true,
  });
  assert.deepEqual([c.precision, c.lossScaler?.initialScale, c.schedule.kind], [
    "fp16",
    65536,
    "WarmupLR",
  ]);
  assert.deepEqual(c.ignoredKeys, [
    "optimizer.params.lr",
    "zero_optimization.offload_optimizer.device",
    "zero_optimization.offload_optimizer.pin_memory",
    "zero_optimization.offload_param.device",
    "zero_optimization.offload_param.pin_memory",
    "zero_optimization.contiguous_gradients",
    "zero_optimization.sub_group_size",
    "zero_optimization.stage3_max_reuse_distance",
    "zero_optimization.stage3_gather_fp16_weights_on_model_save",
  ]);
});

Deno.test("the DeepSpeedExamples CIFAR config (fp16, WarmupLR, ZeRO 0) resolves as written", async () => {
  const json = await readJson(new URL("dse_cifar_ds_config.json", fixtures));
  const c = resolveEngineConfig({ model, ...json });
  assert.deepEqual([c.batchSize, c.microBatch, c.accumulation, c.clip], [16, 16, 1, 1]);
  assert.deepEqual(c.optimizer, {
    kind: "adamw",
    beta1: 0.8,
    beta2: 0.999,
    eps: 1e-8,
    weightDecay: 3e-7,
    momentum: 0.9,
  });
  assert.deepEqual(c.schedule, {
    kind: "WarmupLR",
    lr: 0.001,
    minLr: 0,
    warmup: 1000,
    warmupType: "log",
  });
  assert.deepEqual(c.lossScaler, {
    dynamic: true,
    initialScale: 2 ** 15,
    window: 500,
    hysteresis: 2,
    consecutiveHysteresis: false,
    minScale: 1,
  });
  assert.deepEqual(c.zero, {
    ...zeroDefaults(0),
    reduceBucketSize: 5e7,
    allgatherBucketSize: 5e7,
    overlapComm: true,
  });
  assert.deepEqual([c.stepsPerPrint, c.wallClockBreakdown], [2000, false]);
  assert.deepEqual(c.ignoredKeys, [
    "optimizer.params.lr",
    "fp16.fp16_master_weights_and_grads",
    "zero_optimization.contiguous_gradients",
    "zero_optimization.cpu_offload",
    "zero_optimization.allgather_bucket_size",
    "zero_optimization.reduce_scatter",
    "zero_optimization.allgather_partitions",
    "prescale_gradients",
  ]);
});

Deno.test("the DeepSpeedExamples AutoTP config (bf16, WarmupDecayLR, autotp_size 4) resolves", async () => {
  const json = await readJson(new URL("dse_tensor_parallel_ds_config.json", fixtures));
  const c = resolveEngineConfig({
    model: { vocab: 16, ctx: 11, dim: 32, layers: 2, heads: 4 },
    ...json,
  }, {
    auto: {
      "bf16.enabled": true,
      "optimizer.params.lr": 1e-3,
      "optimizer.params.betas": [0.9, 0.95],
      "optimizer.params.eps": 1e-8,
      "optimizer.params.weight_decay": 0.1,
      "scheduler.params.total_num_steps": 1000,
      "scheduler.params.warmup_min_lr": 0,
      "scheduler.params.warmup_max_lr": 1e-3,
      "scheduler.params.warmup_num_steps": 100,
      gradient_accumulation_steps: 4,
      gradient_clipping: 1,
      train_batch_size: 32,
      train_micro_batch_size_per_gpu: 8,
    },
  });
  assert.deepEqual([c.tp, c.batchSize, c.microBatch, c.accumulation], [4, 32, 8, 4]);
  assert.deepEqual([c.precision, c.lossScaler, c.lossScaling], ["bf16", null, null]);
  assert.deepEqual(c.schedule, {
    kind: "WarmupDecayLR",
    lr: 1e-3,
    minLr: 0,
    warmup: 100,
    warmupType: "log",
    totalSteps: 1000,
  });
  assert.deepEqual(c.zero, { ...zeroDefaults(2), gather16bitWeightsOnModelSave: true });
  assert.deepEqual([c.stepsPerPrint, c.optimizer.weightDecay, c.optimizer.beta2], [1, 0.1, 0.95]);
  assert.deepEqual(c.ignoredKeys, [
    "optimizer.params.lr",
    "zero_optimization.gather_16bit_weights_on_model_save",
  ]);
});

Deno.test("the example configs resolve for train.ts's default task", async () => {
  // train.ts's default GPT for 3-digit addition.
  const gpt = { vocab: 14, ctx: 11, dim: 64, layers: 2, heads: 8 };
  const want = {
    ds_zero1: { stage: 1, precision: "fp32", accumulation: 1 },
    ds_zero2: { stage: 2, precision: "fp32", accumulation: 1 },
    ds_zero3: { stage: 3, precision: "fp32", accumulation: 2 },
    ds_fp16: { stage: 1, precision: "fp16", accumulation: 1 },
    ds_bf16: { stage: 2, precision: "bf16", accumulation: 1 },
  };
  for (const [name, w] of Object.entries(want)) {
    const json = await readJson(new URL(`${name}.json`, examples));
    for (const k of ["model", "tensor_model_parallel_size", "pipeline_model_parallel_size"]) {
      assert.ok(!(k in json), `${name} has no ${k} (train.ts refuses it in --config)`);
    }
    assert.ok(!JSON.stringify(json).includes('"auto"'), `${name} has no "auto"`);
    const c = resolveEngineConfig({ model: gpt, ...json });
    assert.deepEqual(
      [c.zero.stage, c.precision, c.accumulation, c.batchSize, c.clip],
      [w.stage, w.precision, w.accumulation, 128, 1],
      name,
    );
    assert.deepEqual(c.optimizer, {
      kind: "adamw",
      beta1: 0.9,
      beta2: 0.98,
      eps: 1e-8,
      weightDecay: 0.1,
      momentum: 0.9,
    });
    assert.deepEqual(c.schedule, {
      kind: "WarmupCosineLR",
      lr: 0.01,
      warmup: 200,
      warmupType: "linear",
      totalSteps: 2500,
      warmupMinRatio: 0,
      cosMinRatio: 0.05,
    });
    assert.equal(c.stepsPerPrint, 100);
    // train.ts --dp 2 splits the same batch.
    assert.equal(resolveEngineConfig({ model: gpt, ...json, data_parallel_size: 2 }).dp, 2);
  }
});
