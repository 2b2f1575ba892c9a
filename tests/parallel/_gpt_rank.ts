// Rank side of the GPT equivalence tests: this rank's shards of the same seeded GPT, trained
// for a few steps with the grid's tensor, sequence, pipeline and data parallelism.

import type { Communicator } from "../../collectives/mod.ts";
import { createReferenceBackend } from "../../kernels/mod.ts";
import { FlatParams, initialValue } from "../../models/mod.ts";
import { AdamW, buildLayout, clipFactor } from "../../optim/mod.ts";
import {
  buildChunkLayers,
  buildGrid,
  buildSchedule,
  createGroups,
  globalGradNorm,
  gpt2ShardKind,
  gptActivationSize,
  GptChunk,
  runPipeline,
  type ScheduleName,
  serialSpecs,
  shardSpecs,
  shardTensor,
  stageParts,
  syncGradients,
  type TensorParallel,
} from "../../parallel/mod.ts";
import {
  CFG,
  LR,
  MAX_NORM,
  MICRO,
  microBatch,
  MICROS,
  SEED,
  STEPS,
  T,
  WEIGHT_DECAY,
} from "./_gpt_data.ts";

export interface GptRankResult {
  coords: { tp: number; dp: number; pp: number };
  /** Per step: sum of this rank's micro-batch losses (last stage only, else 0). */
  lossSums: number[];
  norms: number[];
  params: Record<string, Float32Array>;
}

export async function main(
  comm: Communicator,
  d: { tp: number; pp: number; v: number; sp: boolean; schedule: ScheduleName },
): Promise<GptRankResult> {
  const be = createReferenceBackend();
  const grid = buildGrid({ worldSize: comm.size, tp: d.tp, pp: d.pp });
  const g = await createGroups(comm, grid);
  const tp: TensorParallel = { comm: g.tp, sequenceParallel: d.sp, timeoutMs: 30_000 };
  const parts = stageParts(CFG.layers, d.pp, d.v, g.coords.pp);
  const serial = serialSpecs(CFG, parts);
  const layout = buildLayout(shardSpecs(serial, d.tp));
  const store = new FlatParams(be, layout);
  for (const s of serial) {
    const full = initialValue(s, CFG.layers, SEED);
    const shard = shardTensor(full, s.shape, gpt2ShardKind(s.name), d.tp, g.coords.tp);
    be.write(store.params, shard, layout.get(s.name).offset);
  }
  const chunkLayers = parts.map((p) => buildChunkLayers(be, tp, store, CFG, p));
  const opt = new AdamW(be, layout, store.params, store.grads, { weightDecay: WEIGHT_DECAY });
  const m = MICROS / grid.dp;
  const schedule = buildSchedule(d.schedule, { pp: d.pp, m, v: d.v });
  const groups = {
    tp,
    dp: g.dp,
    embedding: g.embedding,
    modelParallel: g.modelParallel,
    stage: g.coords.pp,
    pp: d.pp,
  };
  const lossSums: number[] = [];
  const norms: number[] = [];
  for (let step = 0; step < STEPS; step++) {
    store.zeroGrad();
    const chunks = parts.map((p, c) =>
      new GptChunk(be, tp, chunkLayers[c]!, p, {
        B: MICRO,
        T,
        batch: (mb) => microBatch(step, g.coords.dp * m + mb),
        gradScale: 1 / MICROS,
      })
    );
    await runPipeline({
      schedule,
      comm: g.pp,
      chunks,
      activationSize: gptActivationSize(MICRO, T, CFG.dim, tp),
      timeoutMs: 30_000,
    });
    await syncGradients(be, groups, layout, store.grads);
    const norm = await globalGradNorm(be, groups, layout, store.grads);
    const f = clipFactor(norm, MAX_NORM);
    if (f !== 1) be.scale(store.grads, f, layout.size);
    opt.step(LR);
    norms.push(norm);
    let sum = 0;
    for (const c of chunks) for (const l of c.losses.values()) sum += l;
    lossSums.push(sum);
  }
  const all = Float32Array.from(await be.read(store.params));
  const params: Record<string, Float32Array> = {};
  for (const s of layout.slots) params[s.name] = all.slice(s.offset, s.offset + s.size);
  return { coords: g.coords, lossSums, norms, params };
}
