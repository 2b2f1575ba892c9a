import assert from "node:assert/strict";
import { runWorkers } from "../../collectives/mod.ts";
import { createReferenceBackend, type Tensor } from "../../kernels/mod.ts";
import { CausalSelfAttention, Embedding, Head, type Layer, Linear, Mlp } from "../../models/mod.ts";
import { gpt2ShardKind, unshardTensor } from "../../parallel/mod.ts";
import { DIMS, fullInputs, fullParams, type LayerResult } from "./_tp_data.ts";

// Float32 everywhere; the parallel layers sum the same products in a different order (split
// matmul reductions, all-reduce order), so results agree to a few float32 ulps of the values'
// scale: 2e-5 relative to the largest magnitude.
const TOL = 2e-5;

async function serial(): Promise<Record<string, LayerResult>> {
  const be = createReferenceBackend();
  const { B, T, C, H, F, V, ctx } = DIMS;
  const full = fullParams();
  const values = new Map<string, Tensor>();
  const grads = new Map<string, Tensor>();
  const store = {
    value(name: string): Tensor {
      let t = values.get(name);
      if (!t) {
        const [a] = full.get(name)!;
        t = be.alloc(a.length);
        be.write(t, a);
        values.set(name, t);
        grads.set(name, be.alloc(a.length));
      }
      return t;
    },
    grad(name: string): Tensor {
      this.value(name);
      return grads.get(name)!;
    },
  };
  const inp = fullInputs();
  const tensor = (a: Float32Array | Int32Array) => {
    const t = be.alloc(a.length, a instanceof Int32Array ? "i32" : "f32");
    be.write(t, a);
    return t;
  };
  const step = { B, T, slot: 0 };
  const cases: [string, () => Layer, Tensor, Tensor | null][] = [
    ["column", () => new Linear(be, store, "h.0.mlp.c_fc", C, F), tensor(inp.x), tensor(inp.dyF)],
    ["row", () => new Linear(be, store, "h.0.mlp.c_proj", F, C), tensor(inp.xF), tensor(inp.dy)],
    [
      "attention",
      () => CausalSelfAttention.create(be, store, "h.0.attn", C, H),
      tensor(inp.x),
      tensor(inp.dy),
    ],
    ["mlp", () => Mlp.create(be, store, "h.0.mlp", C, F), tensor(inp.x), tensor(inp.dy)],
    ["embedding", () => new Embedding(be, store, V, ctx, C), tensor(inp.ids), tensor(inp.dy)],
    ["head", () => new Head(be, store, V, C), tensor(inp.x), null],
  ];
  const out: Record<string, LayerResult> = {};
  for (const [name, make, x, dy] of cases) {
    for (const g of grads.values()) be.fill(g, 0);
    const layer = make();
    const s = name === "head" ? { ...step, targets: tensor(inp.targets), count: inp.count } : step;
    const y = Float32Array.from(await be.read(await layer.forward(x, s)));
    const dx = await layer.backward(dy, s);
    const g: Record<string, Float32Array> = {};
    for (const p of layer.specs) g[p.name] = Float32Array.from(await be.read(store.grad(p.name)));
    out[name] = { y, dx: dx === null ? null : Float32Array.from(await be.read(dx)), grads: g };
  }
  return out;
}

function close(actual: Float32Array, expected: Float32Array, what: string): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  let scale = 0;
  for (const v of expected) scale = Math.max(scale, Math.abs(v));
  let worst = 0;
  for (let i = 0; i < actual.length; i++) {
    worst = Math.max(worst, Math.abs(actual[i]! - expected[i]!));
  }
  assert.ok(worst <= TOL * Math.max(scale, 1e-3), `${what}: max error ${worst} at scale ${scale}`);
}

/** Which way each case's output and input gradient are split across ranks. */
const SPLIT: Record<string, { y: "cols" | "rows" | "none"; dx: "cols" | "rows" | "none" }> = {
  column: { y: "cols", dx: "rows" },
  row: { y: "rows", dx: "cols" },
  attention: { y: "rows", dx: "rows" },
  mlp: { y: "rows", dx: "rows" },
  embedding: { y: "rows", dx: "none" },
  head: { y: "none", dx: "rows" },
};

function assemble(
  parts: Float32Array[],
  how: "cols" | "rows" | "none",
  sp: boolean,
  width: number,
) {
  if (how === "cols") {
    return unshardTensor(parts, [parts[0]!.length / (width / parts.length), width], {
      kind: "columns",
    });
  }
  if (how === "rows" && sp) {
    return unshardTensor(parts, [parts.length * parts[0]!.length], { kind: "rows" });
  }
  for (const p of parts.slice(1)) assert.deepEqual(p, parts[0], "replicated values differ");
  return parts[0]!;
}

const WIDTH: Record<string, [number, number]> = {
  column: [DIMS.F, DIMS.C],
  row: [DIMS.C, DIMS.F],
  attention: [DIMS.C, DIMS.C],
  mlp: [DIMS.C, DIMS.C],
  embedding: [DIMS.C, DIMS.C],
  head: [1, DIMS.C],
};

const expected = serial();

for (const size of [2, 4]) {
  for (const sp of [false, true]) {
    Deno.test(
      `tensor-parallel layers on ${size} workers${
        sp ? " with sequence parallelism" : ""
      } match the serial layers`,
      async () => {
        const ref = await expected;
        const ranks = await runWorkers<Record<string, LayerResult>>({
          size,
          module: new URL("./_tp_rank.ts", import.meta.url),
          data: { sp },
          timeoutMs: 20_000,
        });
        for (const r of ranks) {
          assert.deepEqual([...r.mappings!.y], [], "last-dim and row mappings that differ");
        }
        for (const name of Object.keys(ref)) {
          const r = ranks.map((x) => x[name]!);
          const [wy, wdx] = WIDTH[name]!;
          close(assemble(r.map((x) => x.y), SPLIT[name]!.y, sp, wy), ref[name]!.y, `${name} y`);
          if (ref[name]!.dx !== null) {
            const dx = assemble(r.map((x) => x.dx!), SPLIT[name]!.dx, sp, wdx);
            close(dx, ref[name]!.dx!, `${name} dx`);
          }
          for (const [p, g] of Object.entries(ref[name]!.grads)) {
            const shape = fullParams().get(p)![1];
            const got = unshardTensor(r.map((x) => x.grads[p]!), shape, gpt2ShardKind(p));
            close(got, g, `${name} grad ${p}`);
          }
        }
      },
    );
  }
}
