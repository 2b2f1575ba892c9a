// Finite-difference checks in float64 (the reference backend with f64 storage) of every layer
// and of the whole GPT. Central differences with h = 1e-5 have a truncation error near h^2
// and a rounding error near 1e-16 / h, so 1e-6 of the tensor's largest gradient is a tight
// bound that any indexing or sign mistake breaks by orders of magnitude.

import assert from "node:assert/strict";
import { type Backend, createReferenceBackend, Rng, type Tensor } from "../../kernels/mod.ts";
import { FlatParams, Gpt, type GptConfig, gptParamSpecs, mergeSpecs } from "../../models/mod.ts";
import {
  ActivationPool,
  ColumnParallelLinear,
  type Layer,
  type LayerContext,
  LayerNorm,
  Mlp,
  RowParallelLinear,
  SelfAttention,
  type Step,
  TransformerBlock,
  VocabParallelEmbedding,
  VocabParallelHead,
} from "../../parallel/mod.ts";

const H = 1e-5;
const TOL = 1e-6;
const SAMPLES = 10;

const CFG: GptConfig = { vocab: 7, ctx: 5, dim: 8, layers: 2, heads: 2, hidden: 12, tied: false };

function setup(seed = 1): { be: Backend; store: FlatParams; rng: Rng; ctx: LayerContext } {
  const be = createReferenceBackend({ precision: "f64" });
  const store = new FlatParams(be, gptParamSpecs(CFG));
  const rng = new Rng(seed);
  const p = be.hostView(store.params) as Float64Array;
  for (const s of store.layout.slots) {
    const v = p.subarray(s.offset, s.offset + s.size);
    for (let i = 0; i < v.length; i++) {
      v[i] = /ln_.\.weight$/.test(s.name) ? 1 + 0.3 * rng.normal() : 0.5 * rng.normal();
    }
  }
  return { be, store, rng, ctx: { backend: be, tp: { comm: null }, store } };
}

function host(be: Backend, t: Tensor): Float64Array {
  return be.hostView(t) as Float64Array;
}

function sample(rng: Rng, n: number): number[] {
  if (n <= SAMPLES) return [...Array(n).keys()];
  return Array.from({ length: SAMPLES }, () => rng.int(n));
}

function close(what: string, num: number, ana: number, scale: number): void {
  assert.ok(
    Math.abs(num - ana) <= TOL * scale + 1e-10,
    `${what}: finite difference ${num} vs backward ${ana} (scale ${scale})`,
  );
}

function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]));
  return m;
}

/**
 * Check a layer's parameter gradients (sampled), its input gradient (when x is f32), and that
 * backward leaves every other gradient untouched. The objective is sum(r * y) for a random r,
 * so dy = r; for a head with targets, the output is the loss itself and r = [1].
 */
async function checkLayer(
  be: Backend,
  store: FlatParams,
  rng: Rng,
  layer: Layer,
  x: Tensor,
  step: Step,
): Promise<void> {
  const y0 = await layer.forward(x, step);
  const r = new Float64Array(y0.length).map(() => rng.normal());
  if (step.targets) r.fill(1);
  const rT = be.alloc(r.length);
  be.write(rT, r);
  const objective = async () => {
    const y = host(be, await layer.forward(x, step));
    let s = 0;
    for (let i = 0; i < y.length; i++) s += y[i] * r[i];
    return s;
  };
  store.zeroGrad();
  await layer.forward(x, step);
  const dxT = await layer.backward(rT, step);
  const dx = dxT ? host(be, dxT).slice() : null;
  const grads = host(be, store.grads).slice();
  const params = host(be, store.params);

  const mine = new Set(mergeSpecs([layer.specs]).map((s) => s.name));
  for (const slot of store.layout.slots) {
    const g = grads.subarray(slot.offset, slot.offset + slot.size);
    if (!mine.has(slot.name)) {
      assert.equal(maxAbs(g), 0, `backward wrote into ${slot.name}, which the layer does not use`);
      continue;
    }
    const scale = maxAbs(g);
    assert.ok(scale > 0, `${slot.name}: gradient is all zero`);
    for (const i of sample(rng, slot.size)) {
      const k = slot.offset + i;
      const keep = params[k];
      params[k] = keep + H;
      const up = await objective();
      params[k] = keep - H;
      const down = await objective();
      params[k] = keep;
      close(`${slot.name}[${i}]`, (up - down) / (2 * H), g[i], scale);
    }
  }
  if (x.dtype === "f32") {
    assert.ok(dx, "backward must return dx for a float input");
    const xs = host(be, x);
    const scale = maxAbs(dx);
    for (const i of sample(rng, xs.length)) {
      const keep = xs[i];
      xs[i] = keep + H;
      const up = await objective();
      xs[i] = keep - H;
      const down = await objective();
      xs[i] = keep;
      close(`dx[${i}]`, (up - down) / (2 * H), dx[i], scale);
    }
  }
}

const B = 2;
const T = 3;
const C = CFG.dim;

function input(be: Backend, rng: Rng, n: number): Tensor {
  const t = be.alloc(n);
  be.write(t, new Float64Array(n).map(() => rng.normal()));
  return t;
}

function tokens(be: Backend, values: number[]): Tensor {
  const t = be.alloc(values.length, "i32");
  be.write(t, new Int32Array(values));
  return t;
}

Deno.test("column- and row-parallel linears on one rank match finite differences in float64", async () => {
  const { be, store, rng, ctx } = setup();
  const col = new ColumnParallelLinear(ctx, "h.0.mlp.c_fc", C, 12);
  await checkLayer(be, store, rng, col, input(be, rng, B * T * C), { B, T });
  const row = new RowParallelLinear(ctx, "h.0.mlp.c_proj", 12, C);
  await checkLayer(be, store, rng, row, input(be, rng, B * T * 12), { B, T });
});

Deno.test("LayerNorm backward matches finite differences in float64", async () => {
  const { be, store, rng, ctx } = setup();
  const layer = new LayerNorm(ctx, "h.0.ln_1", C);
  await checkLayer(be, store, rng, layer, input(be, rng, B * T * C), { B, T });
});

Deno.test("SelfAttention backward matches finite differences in float64", async () => {
  const { be, store, rng, ctx } = setup();
  const layer = new SelfAttention(ctx, "h.1.attn", C, CFG.heads);
  await checkLayer(be, store, rng, layer, input(be, rng, B * T * C), { B, T });
});

Deno.test("Mlp backward matches finite differences in float64", async () => {
  const { be, store, rng, ctx } = setup();
  const layer = new Mlp(ctx, "h.0.mlp", C, 12);
  await checkLayer(be, store, rng, layer, input(be, rng, B * T * C), { B, T });
});

Deno.test("TransformerBlock backward matches finite differences in float64", async () => {
  const { be, store, rng, ctx } = setup();
  const layer = new TransformerBlock(ctx, 1, C, CFG.heads, { hidden: 12 });
  await checkLayer(be, store, rng, layer, input(be, rng, B * T * C), { B, T });
});

Deno.test("Embedding backward matches finite differences in float64", async () => {
  const { be, store, rng, ctx } = setup();
  const layer = new VocabParallelEmbedding(ctx, CFG.vocab, CFG.ctx, C);
  // token 3 repeats, so the scatter-add must accumulate
  await checkLayer(be, store, rng, layer, tokens(be, [3, 1, 3, 0, 6, 3]), { B, T });
});

Deno.test("Head backward (untied, ignored targets) matches finite differences", async () => {
  const { be, store, rng, ctx } = setup();
  const layer = new VocabParallelHead(ctx, CFG.vocab, C, { tied: false });
  const targets = tokens(be, [2, -1, 6, 0, 0, -1]);
  await checkLayer(be, store, rng, layer, input(be, rng, B * T * C), {
    B,
    T,
    targets,
    count: 4,
  });
});

Deno.test("Head backward (tied to wte) matches finite differences", async () => {
  const { be, store, rng, ctx } = setup();
  const layer = new VocabParallelHead(ctx, CFG.vocab, C, { tied: true });
  const targets = tokens(be, [2, 5, 6, 0, 1, 4]);
  await checkLayer(be, store, rng, layer, input(be, rng, B * T * C), {
    B,
    T,
    targets,
    count: 6,
  });
});

async function checkGpt(config: GptConfig): Promise<void> {
  const be = createReferenceBackend({ precision: "f64" });
  const gpt = new Gpt(be, config, { seed: 3 });
  const rng = new Rng(9);
  const store = gpt.store as FlatParams;
  const p = host(be, store.params);
  // Larger weights than the 0.02 init, so every path carries a sizeable gradient.
  for (const s of gpt.layout.slots) {
    const v = p.subarray(s.offset, s.offset + s.size);
    for (let i = 0; i < v.length; i++) {
      v[i] = /ln_.\.weight$/.test(s.name) ? 1 + 0.3 * rng.normal() : 0.4 * rng.normal();
    }
  }
  const Tn = 4;
  const V = config.vocab;
  const inputs = new Int32Array(B * Tn).map(() => rng.int(V));
  const targets = new Int32Array(B * Tn).map(() => rng.int(V));
  targets[1] = -1;
  const loss = async () => (await be.read(await gpt.forward(inputs, targets, B, Tn)))[0];
  await loss();
  gpt.zeroGrad();
  await gpt.backward();
  const g = host(be, store.grads).slice();
  for (const slot of gpt.layout.slots) {
    const gs = g.subarray(slot.offset, slot.offset + slot.size);
    const scale = maxAbs(gs);
    assert.ok(scale > 0, `${slot.name}: gradient is all zero`);
    for (const i of sample(rng, slot.size)) {
      const k = slot.offset + i;
      const keep = p[k];
      p[k] = keep + H;
      const up = await loss();
      p[k] = keep - H;
      const down = await loss();
      p[k] = keep;
      close(`${slot.name}[${i}]`, (up - down) / (2 * H), gs[i], scale);
    }
  }
}

Deno.test("the whole GPT (tied) matches finite differences in float64", async () => {
  await checkGpt({ vocab: 7, ctx: 5, dim: 8, layers: 2, heads: 2 });
});

Deno.test("the whole GPT (untied, hidden 12) matches finite differences in float64", async () => {
  await checkGpt({ vocab: 9, ctx: 4, dim: 6, layers: 1, heads: 3, hidden: 12, tied: false });
});

Deno.test("a block keeps activations per slot, so micro-batches can interleave", async () => {
  const { be, store, rng, ctx } = setup();
  const block = new TransformerBlock(ctx, 0, C, CFG.heads, { hidden: 12 });
  const x0 = input(be, rng, B * T * C);
  const x1 = input(be, rng, B * T * C);
  const dy = input(be, rng, B * T * C);
  // alone: forward then backward of slot 0
  store.zeroGrad();
  await block.forward(x0, { B, T });
  const dxAlone = host(be, (await block.backward(dy, { B, T }))!).slice();
  const gAlone = host(be, store.grads).slice();
  // interleaved: forward slot 0, forward slot 1 (other data), backward slot 0
  store.zeroGrad();
  await block.forward(x0, { B, T, slot: 0 });
  await block.forward(x1, { B, T, slot: 1 });
  const dx = host(be, (await block.backward(dy, { B, T, slot: 0 }))!);
  assert.deepEqual(dx, dxAlone);
  assert.deepEqual(host(be, store.grads), gAlone);
});

Deno.test("backward adds into the gradients: a second pass at half scale gives 1.5 times", async () => {
  const be = createReferenceBackend({ precision: "f64" });
  const gpt = new Gpt(be, { vocab: 5, ctx: 4, dim: 4, layers: 1, heads: 1 }, { seed: 2 });
  const ids = new Int32Array([1, 2, 3, 4]);
  const tg = new Int32Array([2, 3, 4, 0]);
  await gpt.forward(ids, tg, 1, 4);
  gpt.zeroGrad();
  await gpt.backward();
  const grads = (gpt.store as FlatParams).grads;
  const once = host(be, grads).slice();
  await gpt.forward(ids, tg, 1, 4);
  await gpt.backward(0.5);
  const g = host(be, grads);
  for (let i = 0; i < g.length; i++) assert.ok(Math.abs(g[i] - 1.5 * once[i]) < 1e-12);
});

Deno.test("a checkpointed block with a shared pool matches finite differences", async () => {
  const { be, store, rng, ctx } = setup();
  const pool = new ActivationPool(be);
  const layer = new TransformerBlock({ ...ctx, pool }, 1, C, CFG.heads, {
    hidden: 12,
    checkpoint: true,
  });
  await checkLayer(be, store, rng, layer, input(be, rng, B * T * C), { B, T });
});
