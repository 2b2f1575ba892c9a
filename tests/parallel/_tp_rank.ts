// Rank side of the tensor-parallel layer tests: the shared cases on this rank's pieces, and the
// mapping pairs no layer uses.

import type { Communicator } from "../../collectives/mod.ts";
import { createReferenceBackend, type Tensor } from "../../kernels/mod.ts";
import {
  gatherFromRegion,
  scatterToRegion,
  scatterToSequence,
  shardTensor,
  type TensorParallel,
} from "../../parallel/mod.ts";
import { DIMS, fullInputs, type LayerResult, runCases } from "./_tp_data.ts";

export async function main(
  comm: Communicator,
  data: { sp: boolean },
): Promise<Record<string, LayerResult>> {
  const be = createReferenceBackend();
  const tp: TensorParallel = { comm, sequenceParallel: data.sp, timeoutMs: 20_000 };
  const out = await runCases(tp, be);
  out.mappings = {
    y: await checkMappings(be, tp, fullInputs().xF),
    dx: null,
    grads: {},
    splits: {},
  };
  return out;
}

/** The last-dimension and row pairs that no layer above uses, checked by exact copies. */
async function checkMappings(
  be: ReturnType<typeof createReferenceBackend>,
  tp: TensorParallel,
  full: Float32Array,
): Promise<Float32Array> {
  const size = tp.comm!.size;
  const rank = tp.comm!.rank;
  const { B, T, F } = DIMS;
  const N = B * T;
  const local = shardTensor(full, [N, F], { axis: 1, parts: size, index: rank });
  const rows = full.slice(rank * (N / size) * F, (rank + 1) * (N / size) * F);
  const t = (a: Float32Array) => {
    const x = be.alloc(a.length);
    be.write(x, a);
    return x;
  };
  const read = async (x: Tensor) => Float32Array.from(await be.read(x));
  const bad: number[] = [];
  const same = (a: Float32Array, b: Float32Array, i: number) => {
    if (a.length !== b.length || a.some((v, j) => v !== b[j])) bad.push(i);
  };
  const fullT = be.alloc(N * F);
  const localT = be.alloc(N * F / size);
  await gatherFromRegion.forward(be, tp, fullT, t(local), N, F);
  same(await read(fullT), full, 1);
  await gatherFromRegion.backward(be, tp, localT, t(full), N, F);
  same(await read(localT), local, 2);
  await scatterToRegion.forward(be, tp, localT, t(full), N, F);
  same(await read(localT), local, 3);
  await scatterToRegion.backward(be, tp, fullT, t(local), N, F);
  same(await read(fullT), full, 4);
  await scatterToSequence.forward(be, tp, localT, t(full));
  same(await read(localT), rows, 5);
  await scatterToSequence.backward(be, tp, fullT, t(rows));
  same(await read(fullT), full, 6);
  return Float32Array.from(bad);
}
