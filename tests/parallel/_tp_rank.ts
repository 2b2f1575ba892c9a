// Rank side of the tensor-parallel layer tests: build every parallel layer from shards of the
// same full weights the serial test uses, run forward and backward, and send back outputs,
// input gradients and parameter gradients.

import type { Communicator } from "../../collectives/mod.ts";
import { createReferenceBackend, type Tensor } from "../../kernels/mod.ts";
import {
  allReduceSequenceParallelGrads,
  ColumnParallelLinear,
  gpt2ShardKind,
  isSequenceParallelPartial,
  type ParallelLayer,
  ParallelMlp,
  ParallelSelfAttention,
  RowParallelLinear,
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
  return out;
}
