import assert from "node:assert/strict";
import { runWorkers } from "../../collectives/mod.ts";
import { AdditionTask } from "../../data/mod.ts";
import { type EngineConfig, initialize } from "../../engine/mod.ts";
import { createCpuBackend } from "../../kernels/mod.ts";
import type { EngineRankResult } from "./_engine_rank.ts";

const model = { vocab: 12, ctx: 8, dim: 32, layers: 2, heads: 4 };

function config(extra: Partial<EngineConfig>): EngineConfig {
  return {
    model,
    train_batch_size: 16,
    seed: 5,
    optimizer: { type: "AdamW", params: { lr: 3e-3, weight_decay: 0.1 } },
    gradient_clipping: 1,
    ...extra,
  };
}

async function oneRank(c: EngineConfig, steps: number) {
  const e = await initialize(c, { backend: createCpuBackend({ gemm: "ts" }) });
  const src = new AdditionTask({ digits: 2, heldOut: 10 }).trainBatches(16, 3);
  const losses: number[] = [];
  for (let i = 0; i < steps; i++) losses.push((await e.trainBatch([src.next()])).loss);
  return { losses, memory: e.memory(), engine: e };
}

// Tolerance. A 16-bit run rounds every stored activation, parameter copy and gradient: bf16
// keeps 8 significant bits (relative error 2^-9), fp16 11. Over 20 AdamW steps the losses of
// this recipe stay within 3% (bf16) and 1% (fp16) of the fp32 run's; a 16-bit path that
// dropped a rounding or mixed up a buffer moves them by far more (or to NaN).
const STEPS = 20;
const TOL = { bf16: 0.03, fp16: 0.01 };

Deno.test("fp16 and bf16 runs track the fp32 run, with half the bytes of parameters and gradients", async () => {
  const fp32 = await oneRank(config({}), STEPS);
  assert.ok(fp32.losses.at(-1)! < fp32.losses[0]! - 0.3, "the fp32 run learns");
  for (const p of ["bf16", "fp16"] as const) {
    const half = await oneRank(
      config(p === "bf16" ? { bf16: { enabled: true } } : { fp16: { enabled: true } }),
      STEPS,
    );
    let worst = 0;
    half.losses.forEach((l, i) => worst = Math.max(worst, Math.abs(l / fp32.losses[i]! - 1)));
    assert.ok(worst < TOL[p], `${p}: losses differ from fp32 by up to ${worst}`);
    assert.notDeepEqual(half.losses, fp32.losses, `${p} computes the same as fp32`);
    assert.equal(half.memory.params_bytes, fp32.memory.params_bytes / 2);
    assert.equal(half.memory.grads_bytes, fp32.memory.grads_bytes / 2);
    // The fp32 master weights come on top of the two moments.
    assert.equal(half.memory.optimizer_bytes, fp32.memory.optimizer_bytes * 1.5);
    assert.ok(half.memory.activations_peak_bytes < 0.6 * fp32.memory.activations_peak_bytes);
    if (p === "fp16") assert.equal(half.engine.lossScaler?.scale, 2 ** 16);
    else assert.equal(half.engine.lossScaler, null, "bf16 runs without loss scaling");
  }
});

async function ranks(size: number, c: EngineConfig, steps: number, ignoreRank?: number) {
  return await runWorkers<EngineRankResult>({
    size,
    module: new URL("./_engine_rank.ts", import.meta.url),
    data: { config: c, steps, ignoreRank },
    timeoutMs: 60_000,
  });
}

Deno.test("ZeRO-2 over 2 ranks in bf16 tracks the fp32 run and sends half the bytes", async () => {
  const zero = { zero_optimization: { stage: 2, reduce_bucket_size: 4096 } };
  const fp32 = await ranks(2, config({ data_parallel_size: 2, ...zero }), 8);
  const bf16 = await ranks(
    2,
    config({ data_parallel_size: 2, ...zero, bf16: { enabled: true } }),
    8,
  );
  for (let i = 0; i < 8; i++) {
    const rel = Math.abs(bf16[0]!.losses[i]! / fp32[0]!.losses[i]! - 1);
    assert.ok(rel < TOL.bf16, `step ${i}: bf16 loss differs from fp32 by ${rel}`);
  }
  assert.equal(bf16[0]!.wireBytes * 2, fp32[0]!.wireBytes);
  assert.equal(bf16[1]!.losses.join(), bf16[0]!.losses.join(), "every rank reports the same loss");
});

Deno.test("an fp16 overflow on one rank's data skips the step on every rank and lowers the scale", async () => {
  // Rank 0's rows score nothing (its gradients are 0), rank 1's overflow at a scale of 2^40.
  const c = config({
    data_parallel_size: 2,
    zero_optimization: { stage: 2, reduce_bucket_size: 4096 },
    fp16: { enabled: true, initial_scale_power: 40, hysteresis: 1 },
  });
  const rs = await ranks(2, c, 3, 0);
  for (const r of rs) {
    assert.deepEqual(r.skipped.slice(0, 2), [true, true]);
    assert.deepEqual(r.scales.slice(0, 3), [2 ** 40, 2 ** 39, 2 ** 38]);
  }
});
