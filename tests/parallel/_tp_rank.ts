// Rank side of the tensor-parallel layer tests: build every parallel layer from shards of the
// same full weights the serial test uses, run forward and backward, and send back outputs,
// input gradients and parameter gradients.

import type { Communicator } from "../../collectives/mod.ts";
import { createReferenceBackend, type Tensor } from "../../kernels/mod.ts";
import {
  allReduceSequenceParallelGrads,
  ColumnParallelLinear,
  gatherFromRegion,
  gpt2ShardKind,
  isSequenceParallelPartial,
  type ParallelLayer,
  ParallelMlp,
  ParallelSelfAttention,
  RowParallelLinear,
  scatterToRegion,
  scatterToSequence,
  shardTensor,
  type TensorParallel,
  VocabParallelEmbedding,
  VocabParallelHead,
} from "../../parallel/mod.ts";
import { DIMS, fullInputs, fullParams, type LayerResult } from "./_tp_data.ts";

export async function main(
  comm: Communicator,
  data: { sp: boolean },
): Promise<Record<string, LayerResult>> {
  const be = createReferenceBackend();
  const tp: TensorParallel = { comm, sequenceParallel: data.sp, timeoutMs: 20_000 };
  const size = comm.size;
  const rank = comm.rank;
  const { B, T, C, H, F, V, ctx } = DIMS;
  const full = fullParams();
  const values = new Map<string, Tensor>();
  const grads = new Map<string, Tensor>();
  const store = {
    value(name: string): Tensor {
      let t = values.get(name);
      if (!t) {
        const [arr, shape] = full.get(name)!;
        const s = shardTensor(arr, shape, gpt2ShardKind(name), size, rank);
        t = be.alloc(s.length);
        be.write(t, s);
        values.set(name, t);
        grads.set(name, be.alloc(s.length));
      }
      return t;
    },
    grad(name: string): Tensor {
      this.value(name);
      return grads.get(name)!;
    },
  };
  const inp = fullInputs();
  const N = B * T;
  const rowsOf = (a: Float32Array, width: number) =>
    data.sp ? a.slice(rank * (N / size) * width, (rank + 1) * (N / size) * width) : a;
  const tensor = (a: Float32Array | Int32Array) => {
    const t = be.alloc(a.length, a instanceof Int32Array ? "i32" : "f32");
    be.write(t, a);
    return t;
  };
  const step = { B, T: data.sp ? T / size : T, slot: 0 };
  const targets = tensor(inp.targets);
  const cases: [string, () => ParallelLayer, Tensor, Tensor | null][] = [
    [
      "column",
      () => new ColumnParallelLinear(be, tp, store, "h.0.mlp.c_fc", C, F),
      tensor(rowsOf(inp.x, C)),
      tensor(shardTensor(inp.dyF, [N, F], { kind: "columns" }, size, rank)),
    ],
    [
      "row",
      () => new RowParallelLinear(be, tp, store, "h.0.mlp.c_proj", F, C),
      tensor(shardTensor(inp.xF, [N, F], { kind: "columns" }, size, rank)),
      tensor(rowsOf(inp.dy, C)),
    ],
    [
      "attention",
      () => new ParallelSelfAttention(be, tp, store, "h.0.attn", C, H),
      tensor(rowsOf(inp.x, C)),
      tensor(rowsOf(inp.dy, C)),
    ],
    [
      "mlp",
      () => new ParallelMlp(be, tp, store, "h.0.mlp", C, F),
      tensor(rowsOf(inp.x, C)),
      tensor(rowsOf(inp.dy, C)),
    ],
    [
      "embedding",
      () => new VocabParallelEmbedding(be, tp, store, V, ctx, C),
      tensor(inp.ids),
      tensor(rowsOf(inp.dy, C)),
    ],
    ["head", () => new VocabParallelHead(be, tp, store, V, C), tensor(rowsOf(inp.x, C)), null],
  ];
  const out: Record<string, LayerResult> = {};
  for (const [name, make, x, dy] of cases) {
    for (const g of grads.values()) be.fill(g, 0);
    const layer = make();
    const s = name === "head" ? { ...step, targets, count: inp.count } : step;
    const y = Float32Array.from(await be.read(await layer.forward(x, s)));
    const dx = await layer.backward(dy, s);
    const partial = layer.specs.filter((p) => isSequenceParallelPartial(p.name));
    await allReduceSequenceParallelGrads(be, tp, partial.map((p) => store.grad(p.name)));
    const g: Record<string, Float32Array> = {};
    for (const p of layer.specs) g[p.name] = Float32Array.from(await be.read(store.grad(p.name)));
    out[name] = { y, dx: dx === null ? null : Float32Array.from(await be.read(dx)), grads: g };
  }
  out.mappings = { y: await checkMappings(be, tp, inp.xF), dx: null, grads: {} };
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
  const local = shardTensor(full, [N, F], { kind: "columns" }, size, rank);
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
