import assert from "node:assert/strict";
import { runWorkers } from "../../collectives/mod.ts";
import type { EngineConfig } from "../../engine/mod.ts";
import { estimateMemory } from "../../engine/estimate.ts";
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
