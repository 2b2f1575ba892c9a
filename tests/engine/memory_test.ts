import assert from "node:assert/strict";
import { runWorkers } from "../../collectives/mod.ts";
import type { EngineConfig } from "../../engine/mod.ts";
import { activationBytes, estimateMemory } from "../../engine/estimate.ts";
import type { EngineRankResult } from "./_engine_rank.ts";

// A model big enough that alignment and bucket padding stay small next to the parameters.
const shape = { vocab: 12, ctx: 8, dim: 64, layers: 2, heads: 4 };

function config(extra: Partial<EngineConfig>): EngineConfig {
  return {
    model: shape,
    train_batch_size: 8,
    optimizer: { type: "AdamW", params: { lr: 1e-3 } },
    gradient_clipping: 1,
    ...extra,
  };
}

async function ranks(size: number, c: EngineConfig, steps = 2): Promise<EngineRankResult[]> {
  return await runWorkers<EngineRankResult>({
    size,
    module: new URL("./_engine_rank.ts", import.meta.url),
    data: { config: c, steps },
    timeoutMs: 60_000,
  });
}

Deno.test("measured model-state bytes per rank at ZeRO 0, 1, 2 and 3 over dp = 4 agree with the estimator within 5%", async () => {
  for (const precision of ["fp32", "bf16"] as const) {
    for (const stage of [0, 1, 2, 3] as const) {
      const threshold = 1000;
      const [r] = await ranks(
        4,
        config({
          data_parallel_size: 4,
          zero_optimization: {
            stage,
            reduce_bucket_size: 20_000,
            stage3_param_persistence_threshold: threshold,
          },
          ...(precision === "bf16" ? { bf16: { enabled: true } } : {}),
        }),
        1,
      );
      const m = r!.memory;
      const measured = m.params_bytes + m.grads_bytes + m.optimizer_bytes;
      const est = estimateMemory({
        shape,
        dp: 4,
        zeroStage: stage,
        precision,
        persistenceThreshold: threshold,
      });
      const ratio = measured / est.modelStatesBytesPerRank;
      assert.ok(
        ratio >= 1 && ratio < 1.05,
        `${precision} stage ${stage}: measured ${measured} bytes, estimated ` +
          `${est.modelStatesBytesPerRank} (ratio ${ratio.toFixed(4)}: padding only adds)`,
      );
    }
  }
});

Deno.test("tensor and pipeline parallelism each hold at most 0.6x one rank's parameter bytes per rank", async () => {
  const [one] = await ranks(1, config({}), 1);
  const tp = await ranks(2, config({ tensor_model_parallel_size: 2 }), 1);
  const pp = await ranks(
    2,
    config({ pipeline_model_parallel_size: 2, gradient_accumulation_steps: 2 }),
    1,
  );
  const single = one!.memory.params_bytes;
  for (const [what, rs] of [["tp 2", tp], ["pp 2", pp]] as const) {
    for (const r of rs) {
      const f = r.memory.params_bytes / single;
      assert.ok(f <= 0.6, `${what}: a rank holds ${f.toFixed(3)} of one rank's parameter bytes`);
    }
  }
});

Deno.test("activation checkpointing lowers the measured activation peak, and ZeRO-3 the parameters", async () => {
  const [plain] = await ranks(1, config({}), 1);
  const [ckpt] = await ranks(1, config({ activation_checkpointing: { every_n_blocks: 1 } }), 1);
  assert.ok(
    ckpt!.memory.activations_peak_bytes < 0.8 * plain!.memory.activations_peak_bytes,
    `checkpointed ${ckpt!.memory.activations_peak_bytes} vs ${
      plain!.memory.activations_peak_bytes
    }`,
  );
  const z0 = await ranks(2, config({ data_parallel_size: 2 }), 1);
  const z3 = await ranks(
    2,
    config({
      data_parallel_size: 2,
      zero_optimization: { stage: 3, stage3_param_persistence_threshold: 100 },
    }),
    1,
  );
  assert.ok(z3[0]!.memory.params_bytes < 0.6 * z0[0]!.memory.params_bytes);
  assert.ok(z3[0]!.memory.grads_bytes < 0.6 * z0[0]!.memory.grads_bytes);
});

Deno.test("measured activation bytes agree with the estimator within 1% on one rank, tp, sp, pp and checkpointing", async () => {
  const layouts = [
    { tp: 1, pp: 1, sp: false, ck: 0, precision: "fp32" },
    { tp: 1, pp: 1, sp: false, ck: 1, precision: "bf16" },
    { tp: 2, pp: 1, sp: true, ck: 0, precision: "bf16" },
    { tp: 2, pp: 2, sp: true, ck: 1, precision: "fp32" },
  ] as const;
  for (const l of layouts) {
    const m = l.pp > 1 ? 4 : 1;
    const rs = await ranks(
      l.tp * l.pp,
      config({
        tensor_model_parallel_size: l.tp,
        pipeline_model_parallel_size: l.pp,
        sequence_parallel: l.sp,
        gradient_accumulation_steps: m,
        ...(l.ck ? { activation_checkpointing: { every_n_blocks: l.ck } } : {}),
        ...(l.precision === "bf16" ? { bf16: { enabled: true } } : {}),
      }),
      1,
    );
    const est = activationBytes(shape, {
      tp: l.tp,
      pp: l.pp,
      sequenceParallel: l.sp,
      microBatch: 8 / m,
      seqLen: 8,
      precision: l.precision,
      checkpointActivations: l.ck,
      microBatches: m,
    });
    rs.forEach((r, rank) => {
      const want = est.stages[Math.floor(rank / l.tp)]!.totalBytes;
      const got = r.memory.activations_peak_bytes;
      assert.ok(
        Math.abs(got / want - 1) < 0.01,
        `${JSON.stringify(l)} rank ${rank}: measured ${got}, estimated ${want}`,
      );
    });
  }
});
