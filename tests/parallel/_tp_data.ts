// Shared numbers and code of the tensor-parallel layer tests: sizes, full (serial) weights and
// inputs, and the cases, run the same way on one rank (the serial layers) and on every rank of
// a tensor-parallel group (each holding the pieces its layers' specs declare).

import { type Backend, createReferenceBackend, type Tensor } from "../../kernels/mod.ts";
import { allReduceT, type ParamSpec, type TensorSplit } from "../../optim/mod.ts";
import {
  ColumnParallelLinear,
  type Layer,
  type LayerContext,
  Mlp,
  RowParallelLinear,
  SelfAttention,
  shardTensor,
  type TensorParallel,
  tpRank,
  tpSize,
  VocabParallelEmbedding,
  VocabParallelHead,
} from "../../parallel/mod.ts";

export const DIMS = { B: 2, T: 4, C: 8, H: 4, F: 32, V: 16, ctx: 8 };

export interface LayerResult {
  y: Float32Array;
  dx: Float32Array | null;
  grads: Record<string, Float32Array>;
  /** How each parameter was split on this rank (as its layer declared it). */
  splits: Record<string, TensorSplit | undefined>;
}

function wave(n: number, seed: number, scale: number): Float32Array {
  return Float32Array.from({ length: n }, (_, i) => Math.sin(0.731 * i + seed) * scale);
}

/** Every serial parameter the cases use, GPT-2 names and shapes. */
export function fullParams(): Map<string, [Float32Array, number[]]> {
  const { C, F, V, ctx } = DIMS;
  const specs: [string, number[]][] = [
    ["h.0.attn.c_attn.weight", [C, 3 * C]],
    ["h.0.attn.c_attn.bias", [3 * C]],
    ["h.0.attn.c_proj.weight", [C, C]],
    ["h.0.attn.c_proj.bias", [C]],
    ["h.0.mlp.c_fc.weight", [C, F]],
    ["h.0.mlp.c_fc.bias", [F]],
    ["h.0.mlp.c_proj.weight", [F, C]],
    ["h.0.mlp.c_proj.bias", [C]],
    ["wte", [V, C]],
    ["wpe", [ctx, C]],
    ["ln_f.weight", [C]],
    ["ln_f.bias", [C]],
  ];
  const m = new Map<string, [Float32Array, number[]]>();
  specs.forEach(([name, shape], i) => {
    const n = shape.reduce((a, b) => a * b, 1);
    const a = wave(n, 1.7 * i + 0.3, 0.4);
    if (name === "ln_f.weight") { for (let j = 0; j < n; j++) a[j] = 1 + a[j]!; }
    m.set(name, [a, shape]);
  });
  return m;
}

/** Inputs and output gradients, full size. */
export function fullInputs() {
  const { B, T, C, F, V } = DIMS;
  const N = B * T;
  const ids = Int32Array.from({ length: N }, (_, i) => (i * 7 + 3) % V);
  const targets = Int32Array.from({ length: N }, (_, i) => (i === 5 ? -1 : (i * 5 + 1) % V));
  return {
    x: wave(N * C, 0.5, 1),
    xF: wave(N * F, 0.9, 1),
    dy: wave(N * C, 2.1, 0.5),
    dyF: wave(N * F, 2.9, 0.5),
    ids,
    targets,
    count: targets.filter((t) => t >= 0).length,
  };
}

/**
 * Run every case on this rank: build the layer, give it the pieces of the full weights its
 * specs declare, run forward and backward on this rank's part of the inputs, sum the partial
 * gradients over the group, and return outputs, input gradients and parameter gradients.
 */
export async function runCases(
  tp: TensorParallel,
  be: Backend = createReferenceBackend(),
): Promise<Record<string, LayerResult>> {
  const size = tpSize(tp), rank = tpRank(tp);
  const { B, T, C, H, F, V, ctx } = DIMS;
  const N = B * T;
  const full = fullParams();
  let specs = new Map<string, ParamSpec>();
  const values = new Map<string, Tensor>();
  const grads = new Map<string, Tensor>();
  const store = {
    value(name: string): Tensor {
      let t = values.get(name);
      if (!t) {
        const spec = specs.get(name)!;
        const piece = shardTensor(full.get(name)![0], spec.full ?? spec.shape, spec.split);
        t = be.alloc(piece.length);
        be.write(t, piece);
        values.set(name, t);
        grads.set(name, be.alloc(piece.length));
      }
      return t;
    },
    grad(name: string): Tensor {
      this.value(name);
      return grads.get(name)!;
    },
  };
  const c: LayerContext = { backend: be, tp, store };
  const inp = fullInputs();
  const sp = tp.sequenceParallel === true && size > 1;
  const rowsOf = (a: Float32Array, width: number) =>
    sp ? a.slice(rank * (N / size) * width, (rank + 1) * (N / size) * width) : a;
  const colsOf = (a: Float32Array, width: number) =>
    shardTensor(a, [N, width], size > 1 ? { axis: 1, parts: size, index: rank } : undefined);
  const tensor = (a: Float32Array | Int32Array) => {
    const t = be.alloc(a.length, a instanceof Int32Array ? "i32" : "f32");
    be.write(t, a);
    return t;
  };
  const step = { B, T: sp ? T / size : T, slot: 0 };
  const targets = tensor(inp.targets);
  const cases: [string, () => Layer, Tensor, Tensor | null][] = [
    [
      "column",
      () => new ColumnParallelLinear(c, "h.0.mlp.c_fc", C, F),
      tensor(rowsOf(inp.x, C)),
      tensor(colsOf(inp.dyF, F)),
    ],
    [
      "row",
      () => new RowParallelLinear(c, "h.0.mlp.c_proj", F, C),
      tensor(colsOf(inp.xF, F)),
      tensor(rowsOf(inp.dy, C)),
    ],
    [
      "attention",
      () => new SelfAttention(c, "h.0.attn", C, H),
      tensor(rowsOf(inp.x, C)),
      tensor(rowsOf(inp.dy, C)),
    ],
    ["mlp", () => new Mlp(c, "h.0.mlp", C, F), tensor(rowsOf(inp.x, C)), tensor(rowsOf(inp.dy, C))],
    [
      "embedding",
      () => new VocabParallelEmbedding(c, V, ctx, C),
      tensor(inp.ids),
      tensor(rowsOf(inp.dy, C)),
    ],
    ["head", () => new VocabParallelHead(c, V, C), tensor(rowsOf(inp.x, C)), null],
  ];
  const out: Record<string, LayerResult> = {};
  for (const [name, make, x, dy] of cases) {
    values.clear();
    grads.clear();
    const layer = make();
    specs = new Map(layer.specs.map((p) => [p.name, p]));
    const s = name === "head" ? { ...step, targets, count: inp.count } : step;
    const y = Float32Array.from(await be.read(await layer.forward(x, s)));
    const dx = await layer.backward(dy, s);
    const g: Record<string, Float32Array> = {};
    const splits: Record<string, TensorSplit | undefined> = {};
    for (const p of layer.specs) {
      if (p.partial) await allReduceT(be, tp, store.grad(p.name));
      g[p.name] = Float32Array.from(await be.read(store.grad(p.name)));
      splits[p.name] = p.split;
    }
    out[name] = {
      y,
      dx: dx === null ? null : Float32Array.from(await be.read(dx)),
      grads: g,
      splits,
    };
  }
  return out;
}
