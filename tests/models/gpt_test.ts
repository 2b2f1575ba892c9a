import assert from "node:assert/strict";
import { type Backend, createCpuBackend, createReferenceBackend, Rng } from "../../kernels/mod.ts";
import type { Communicator } from "../../collectives/mod.ts";
import {
  decodeSafetensors,
  encodeSafetensors,
  exportGpt2,
  FlatParams,
  Gpt,
  gpt2Config,
  type GptConfig,
  gptParamSpecs,
  importGpt2,
  initialValue,
  loadGpt2Model,
  mergeSpecs,
  resolveGptConfig,
  type SafetensorsInput,
  saveGpt2,
  stageParts,
} from "../../models/mod.ts";
import type { Layer } from "../../parallel/mod.ts";

const SMALL: GptConfig = { vocab: 11, ctx: 6, dim: 8, layers: 2, heads: 2 };

Deno.test("resolveGptConfig() fills defaults and explains bad values", () => {
  const c = resolveGptConfig(SMALL);
  assert.deepEqual(c, { ...SMALL, tied: true, hidden: 32, lnEps: 1e-5 });
  assert.throws(() => resolveGptConfig({ ...SMALL, dim: 10, heads: 4 }), (e: Error) => {
    assert.ok(e instanceof RangeError);
    assert.match(e.message, /dim 10 is not divisible by heads 4.*e\.g\. 12/);
    return true;
  });
  assert.throws(() => resolveGptConfig({ ...SMALL, layers: 0 }), /"layers" must be a positive/);
  assert.throws(
    () => resolveGptConfig({ ...SMALL, vocab: "11" as unknown as number }),
    (e: Error) => e instanceof TypeError && /"vocab" must be a number/.test(e.message),
  );
  assert.throws(
    () => resolveGptConfig({ ...SMALL, n_embd: 8 } as unknown as GptConfig),
    /Unknown GPT config key "n_embd"/,
  );
  assert.throws(() => resolveGptConfig({ ...SMALL, lnEps: 0 }), /"lnEps" must be a positive/);
});

Deno.test("parameters use GPT-2 names, order and [in, out] shapes", () => {
  const names = gptParamSpecs({ ...SMALL, layers: 1 }).map((s) => `${s.name}:${s.shape}`);
  assert.deepEqual(names, [
    "wte:11,8",
    "wpe:6,8",
    "h.0.ln_1.weight:8",
    "h.0.ln_1.bias:8",
    "h.0.attn.c_attn.weight:8,24",
    "h.0.attn.c_attn.bias:24",
    "h.0.attn.c_proj.weight:8,8",
    "h.0.attn.c_proj.bias:8",
    "h.0.ln_2.weight:8",
    "h.0.ln_2.bias:8",
    "h.0.mlp.c_fc.weight:8,32",
    "h.0.mlp.c_fc.bias:32",
    "h.0.mlp.c_proj.weight:32,8",
    "h.0.mlp.c_proj.bias:8",
    "ln_f.weight:8",
    "ln_f.bias:8",
  ]);
  const untied = gptParamSpecs({ ...SMALL, tied: false });
  assert.equal(untied.at(-1)!.name, "lm_head.weight");
  assert.deepEqual(untied.at(-1)!.shape, [11, 8]);
  const gpt = new Gpt(createReferenceBackend(), SMALL);
  assert.equal(
    gpt.numParams,
    11 * 8 + 6 * 8 + 2 * (4 * 8 + 8 * 24 + 24 + 64 + 8 + 256 + 32 + 256 + 8) + 16,
  );
});

Deno.test("the full model's declared parameters are GPT-2's, in GPT-2's order", () => {
  const gpt = new Gpt(createReferenceBackend(), { ...SMALL, tied: false });
  const declared = gpt.layout.slots.map((s) => `${s.name}:${s.shape}`);
  const table = gptParamSpecs({ ...SMALL, tied: false }).map((s) => `${s.name}:${s.shape}`);
  assert.deepEqual(declared, table);
  assert.equal(gpt.fullParams, gpt.numParams);
});

Deno.test("a pipeline stage holds its blocks, and a tied last stage its own mirror of wte", () => {
  const be = createReferenceBackend();
  const cfg = { ...SMALL, layers: 4 };
  const names = (stage: number) =>
    new Gpt(be, cfg, { parts: stageParts(4, 2, 1, stage), pipelined: true }).layout.slots;
  const first = names(0);
  assert.deepEqual(first.slice(0, 2).map((s) => s.name), ["wte", "wpe"]);
  assert.equal(first[0]!.tie, "embedding");
  assert.ok(!first[0]!.mirror);
  assert.ok(first.every((s) => !s.name.startsWith("h.2") && !s.name.startsWith("ln_f")));
  const last = names(1);
  const wte = last.find((s) => s.name === "wte")!;
  assert.ok(wte.tie === "embedding" && wte.mirror === true);
  assert.ok(last.some((s) => s.name === "h.3.mlp.c_proj.bias"));
  assert.ok(!last.some((s) => s.name === "wpe" || s.name.startsWith("h.1.")));
  assert.throws(() => stageParts(4, 3, 1, 0), /4 layers do not split into 3 pipeline chunks/);
});

Deno.test("each layer declares how its parameters are split, partial or tied", () => {
  // A tensor-parallel group of two, seen from rank 1 (declaring needs no communication).
  const comm = { rank: 1, size: 2 } as unknown as Communicator;
  const gpt = new Gpt(createReferenceBackend(), { ...SMALL, vocab: 12 }, {
    tp: { comm, sequenceParallel: true },
    seed: null,
  });
  const by = new Map(gpt.layout.slots.map((s) => [s.name, s]));
  assert.deepEqual(by.get("h.0.attn.c_attn.weight")!.split, {
    axis: 1,
    parts: 2,
    index: 1,
    blocks: 3,
  });
  assert.deepEqual(by.get("h.0.attn.c_attn.weight")!.shape, [8, 12]);
  assert.deepEqual(by.get("h.0.attn.c_attn.weight")!.full, [8, 24]);
  assert.deepEqual(by.get("h.0.mlp.c_proj.weight")!.split, { axis: 0, parts: 2, index: 1 });
  assert.deepEqual(by.get("wte")!.split, { axis: 0, parts: 2, index: 1 });
  assert.equal(by.get("h.0.mlp.c_proj.bias")!.split, undefined);
  assert.equal(by.get("h.0.mlp.c_proj.bias")!.partial, true);
  assert.equal(by.get("h.1.ln_2.weight")!.partial, true);
  assert.equal(by.get("ln_f.bias")!.partial, true);
  assert.equal(by.get("wpe")!.partial, undefined);
  assert.equal(by.get("h.0.mlp.c_fc.bias")!.partial, undefined);
});

Deno.test("initialisation is deterministic, GPT-2 style, and per tensor", async () => {
  const be = createReferenceBackend();
  const cfg = { vocab: 64, ctx: 16, dim: 32, layers: 4, heads: 4 };
  const a = await new Gpt(be, cfg, { seed: 7 }).getParams();
  const b = await new Gpt(be, cfg, { seed: 7 }).getParams();
  const c = await new Gpt(be, cfg, { seed: 8 }).getParams();
  for (const [name, v] of a) {
    assert.deepEqual(v, b.get(name), `${name} differs between two runs with seed 7`);
  }
  assert.notDeepEqual(a.get("wte"), c.get("wte"));
  const std = (v: Float32Array) => Math.sqrt(v.reduce((s, x) => s + x * x, 0) / v.length);
  assert.ok(Math.abs(std(a.get("wte")!) - 0.02) < 0.002);
  assert.ok(Math.abs(std(a.get("h.0.mlp.c_fc.weight")!) - 0.02) < 0.002);
  const proj = 0.02 / Math.sqrt(8);
  assert.ok(Math.abs(std(a.get("h.1.mlp.c_proj.weight")!) - proj) < 0.1 * proj);
  assert.ok(a.get("h.2.attn.c_attn.bias")!.every((x) => x === 0));
  assert.ok(a.get("ln_f.weight")!.every((x) => x === 1));
  assert.ok(a.get("h.3.ln_2.bias")!.every((x) => x === 0));
  // Another model shape draws the same values for a tensor of the same name and shape, so a
  // rank can initialise only its own tensors (or slices of them).
  const d = await new Gpt(be, { ...cfg, layers: 2 }, { seed: 7 }).getParams();
  assert.deepEqual(d.get("wte"), a.get("wte"));
  assert.deepEqual(initialValue({ name: "wte", shape: [64, 32] }, 7), a.get("wte"));
});

Deno.test("the loss is the mean over targets >= 0 and starts near log(vocab)", async () => {
  const be = createReferenceBackend();
  const gpt = new Gpt(be, SMALL, { seed: 1 });
  const ids = new Int32Array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0, 1]);
  const all = new Int32Array([2, 3, 4, 5, 6, 7, 8, 9, 10, 0, 1, 2]);
  const loss = (await be.read(await gpt.forward(ids, all, 2, 6)))[0];
  assert.ok(Math.abs(loss - Math.log(11)) < 0.05, `initial loss ${loss}`);
  // per-position losses through logits, then the mean over the kept positions
  const logits = await be.read(await gpt.logits(ids, 2, 6));
  const per = [...all].map((t, n) => {
    const row = logits.subarray(n * 11, n * 11 + 11);
    const m = Math.max(...row);
    let sum = 0;
    for (const x of row) sum += Math.exp(x - m);
    const lse = m + Math.log(sum);
    return lse - row[t];
  });
  const masked = all.slice();
  masked[0] = -1;
  masked[7] = -100;
  const want = per.filter((_, n) => n !== 0 && n !== 7).reduce((s, x) => s + x, 0) / 10;
  const got = (await be.read(await gpt.forward(ids, masked, 2, 6)))[0];
  assert.ok(Math.abs(got - want) < 1e-6, `${got} vs ${want}`);
});

Deno.test("forward() rejects tokens outside the vocabulary and too long sequences", async () => {
  const gpt = new Gpt(createReferenceBackend(), SMALL);
  const t = new Int32Array(6);
  await assert.rejects(
    () => gpt.forward(new Int32Array([0, 1, 11, 0, 0, 0]), t, 1, 6),
    /inputs\[2\] = 11 is outside the vocabulary \[0, 11\)/,
  );
  await assert.rejects(() => gpt.forward(new Int32Array(7), new Int32Array(7), 1, 7), /ctx/);
  await assert.rejects(() => gpt.forward(new Int32Array(5), t, 1, 6), /5 tokens but B \* T = 6/);
  await assert.rejects(() => new Gpt(createReferenceBackend(), SMALL).backward(), /forward\(\)/);
});

Deno.test("logits() for evaluation does not disturb a pending backward", async () => {
  const be = createReferenceBackend();
  const rng = new Rng(5);
  const ids = new Int32Array(12).map(() => rng.int(11));
  const tg = new Int32Array(12).map(() => rng.int(11));
  for (const checkpoint of [false, true]) {
    const a = new Gpt(be, SMALL, { seed: 3, checkpointEvery: checkpoint ? 1 : 0 });
    await a.forward(ids, tg, 2, 6);
    await a.backward();
    const b = new Gpt(be, SMALL, { seed: 3, checkpointEvery: checkpoint ? 1 : 0 });
    await b.forward(ids, tg, 2, 6);
    await b.logits(new Int32Array(3).fill(4), 1, 3);
    await b.backward();
    assert.deepEqual(await b.getGrads(), await a.getGrads(), `checkpoint: ${checkpoint}`);
  }
});

Deno.test("a gate is called around every layer's forward and backward, in order", async () => {
  const calls: string[] = [];
  const gpt = new Gpt(createReferenceBackend(), SMALL, {
    gate: {
      acquire: (layer, phase) =>
        void calls.push(`+${phase[0]}${gpt.layers.indexOf(layer as Layer)}`),
      release: async (layer, phase) => {
        await Promise.resolve();
        calls.push(`-${phase[0]}${gpt.layers.indexOf(layer as Layer)}`);
      },
    },
  });
  const t = new Int32Array(6).fill(1);
  await gpt.forward(t, t, 1, 6);
  await gpt.backward();
  const fwd = [0, 1, 2, 3].flatMap((i) => [`+f${i}`, `-f${i}`]);
  const bwd = [3, 2, 1, 0].flatMap((i) => [`+b${i}`, `-b${i}`]);
  assert.deepEqual(calls, [...fwd, ...bwd]);
  assert.deepEqual(gpt.layers[3].specs.map((s) => s.name), ["ln_f.weight", "ln_f.bias", "wte"]);
});

Deno.test("generate() appends the argmax of the last position, window by window", async () => {
  const be = createReferenceBackend();
  const gpt = new Gpt(be, { ...SMALL, ctx: 4 }, { seed: 11 });
  const p = await gpt.getParams();
  // sharpen the output so the argmax is well defined
  p.set("wte", p.get("wte")!.map((x) => x * 50));
  gpt.setParams(p);
  const prompts = [[1, 2, 3], [4]];
  const out = await gpt.generate(prompts, 3);
  // the same decisions, one row at a time, from logits()
  for (let r = 0; r < prompts.length; r++) {
    const seq = [...prompts[r]];
    for (let k = 0; k < 3; k++) {
      const win = seq.slice(-4);
      const lg = await be.read(await gpt.logits(new Int32Array(win), 1, win.length));
      const last = lg.subarray((win.length - 1) * 11, win.length * 11);
      seq.push(last.indexOf(Math.max(...last)));
    }
    assert.deepEqual(out[r], seq.slice(prompts[r].length));
  }
  const stopped = await gpt.generate([[1, 2, 3]], 3, { stop: out[0][0] });
  assert.deepEqual(stopped, [[out[0][0]]]);
  await assert.rejects(() => gpt.generate([[]], 1), /Prompt 0 is empty/);
});

Deno.test("GPT-2 export then import restores every parameter, and the config is inferred", async () => {
  const be = createReferenceBackend();
  const a = new Gpt(be, { ...SMALL, tied: false }, { seed: 4 });
  const bytes = encodeSafetensors(await exportGpt2(a), { heads: "2" });
  const file = decodeSafetensors(bytes);
  const cfg = gpt2Config(file);
  assert.deepEqual(cfg, { ...SMALL, tied: false });
  const b = new Gpt(be, cfg, { seed: 99 });
  importGpt2(b, file);
  assert.deepEqual(await b.getParams(), await a.getParams());
  const noHeads = decodeSafetensors(encodeSafetensors(await exportGpt2(a)));
  assert.throws(
    () => gpt2Config(noHeads),
    /heads/,
  );
});

Deno.test("importGpt2() accepts Hugging Face names and rejects wrong shapes by name", async () => {
  const be = createReferenceBackend();
  const src = new Gpt(be, SMALL, { seed: 4 });
  const tensors = await exportGpt2(src);
  // Hugging Face style: "transformer." prefix, mask buffers, a stored tied head
  const hf = new Map<string, SafetensorsInput>();
  for (const [n, t] of tensors) hf.set(`transformer.${n}`, t);
  hf.set("transformer.h.0.attn.bias", { shape: [1, 1, 6, 6], data: new Float32Array(36) });
  hf.set("lm_head.weight", tensors.get("wte")!);
  const dst = new Gpt(be, SMALL, { seed: 5 });
  importGpt2(dst, decodeSafetensors(encodeSafetensors(hf)));
  assert.deepEqual(await dst.getParams(), await src.getParams());

  const bad = new Map(tensors);
  bad.set("h.1.mlp.c_fc.weight", { shape: [32, 8], data: new Float32Array(256) });
  assert.throws(
    () => importGpt2(dst, decodeSafetensors(encodeSafetensors(bad))),
    (e: Error) =>
      e instanceof TypeError &&
      e.message.includes(
        `"h.1.mlp.c_fc.weight" has shape [32,8] in the file but the model needs [8,32]`,
      ),
  );
  const missing = new Map(tensors);
  missing.delete("h.1.ln_2.bias");
  assert.throws(
    () => importGpt2(dst, decodeSafetensors(encodeSafetensors(missing))),
    /lack "h.1.ln_2.bias"/,
  );
  const one = new Gpt(be, { ...SMALL, layers: 1 });
  assert.throws(
    () => importGpt2(one, decodeSafetensors(encodeSafetensors(tensors))),
    /tensors the model does not: h\.1\./,
  );
  importGpt2(one, decodeSafetensors(encodeSafetensors(tensors)), { strict: false });
});

Deno.test("the GPT on the cpu backend matches the reference backend over three SGD steps", async () => {
  const cfg = { vocab: 23, ctx: 8, dim: 16, layers: 2, heads: 4 };
  const rng = new Rng(1);
  const ids = new Int32Array(3 * 8).map(() => rng.int(23));
  const tg = new Int32Array(3 * 8).map(() => rng.int(23));
  const run = async (gpt: Gpt) => {
    const losses: number[] = [];
    for (let s = 0; s < 3; s++) {
      losses.push((await gpt.backend.read(await gpt.forward(ids, tg, 3, 8)))[0]);
      gpt.zeroGrad();
      await gpt.backward();
      const store = gpt.store as FlatParams;
      gpt.backend.axpy(store.params, store.grads, -0.5, gpt.layout.size);
    }
    return { losses, params: await gpt.getParams() };
  };
  const cpu = createCpuBackend();
  try {
    const want = await run(new Gpt(createReferenceBackend(), cfg, { seed: 2 }));
    const got = await run(new Gpt(cpu, cfg, { seed: 2 }));
    assert.ok(want.losses[2] < want.losses[0] - 0.01, `loss did not fall: ${want.losses}`);
    // float32 on both sides, different summation orders: 1e-5 relative on the loss, 1e-4 on
    // parameters relative to the tensor's largest entry
    for (let s = 0; s < 3; s++) {
      assert.ok(Math.abs(got.losses[s] - want.losses[s]) <= 1e-5 * want.losses[s]);
    }
    for (const [name, w] of want.params) {
      const g = got.params.get(name)!;
      const scale = Math.max(...w.map(Math.abs));
      for (let i = 0; i < w.length; i++) {
        assert.ok(Math.abs(g[i] - w[i]) <= 1e-4 * scale, `${name}[${i}]: ${g[i]} vs ${w[i]}`);
      }
    }
  } finally {
    cpu.dispose();
  }
});

/** A backend that counts the elements it allocates. */
function counting(be: Backend): { be: Backend; allocated: () => number } {
  let n = 0;
  const wrapped = Object.create(be) as Backend;
  wrapped.alloc = (length: number, dtype?: "f32" | "i32") => {
    n += length;
    return be.alloc(length, dtype);
  };
  return { be: wrapped, allocated: () => n };
}

Deno.test("activation checkpointing gives identical gradients with less memory", async () => {
  const cfg = { vocab: 13, ctx: 8, dim: 16, layers: 4, heads: 2 };
  const rng = new Rng(3);
  const ids = new Int32Array(2 * 8).map(() => rng.int(13));
  const tg = new Int32Array(2 * 8).map(() => rng.int(13));
  const run = async (checkpoint: boolean) => {
    const c = counting(createReferenceBackend());
    const gpt = new Gpt(c.be, cfg, { seed: 4, checkpointEvery: checkpoint ? 1 : 0 });
    const before = c.allocated();
    const loss = (await c.be.read(await gpt.forward(ids, tg, 2, 8)))[0];
    await gpt.backward();
    // a second step allocates nothing more
    const after = c.allocated();
    await gpt.forward(ids, tg, 2, 8);
    await gpt.backward();
    assert.equal(c.allocated(), after, "a repeated step of the same shape allocated");
    return { loss, grads: await gpt.getGrads(), activations: after - before };
  };
  const plain = await run(false);
  const ckpt = await run(true);
  assert.equal(ckpt.loss, plain.loss);
  assert.deepEqual(ckpt.grads, plain.grads);
  assert.ok(
    ckpt.activations < 0.6 * plain.activations,
    `checkpointed ${ckpt.activations} vs ${plain.activations} activation elements`,
  );
});

Deno.test("an untied head in the file is detected and not silently dropped", async () => {
  const be = createReferenceBackend();
  const untied = new Gpt(be, { ...SMALL, tied: false }, { seed: 6 });
  const file = decodeSafetensors(encodeSafetensors(await exportGpt2(untied), { heads: "2" }));
  assert.equal(gpt2Config(file).tied, false);
  const tied = new Gpt(be, SMALL);
  assert.throws(() => importGpt2(tied, file), /differs from wte.*tied: false/);
  importGpt2(tied, file, { strict: false });
  assert.deepEqual((await tied.getParams()).get("wte"), (await untied.getParams()).get("wte"));
});

Deno.test("saveGpt2() then loadGpt2Model() rebuilds the same model from the file alone", async () => {
  const be = createReferenceBackend();
  const a = new Gpt(be, { ...SMALL, hidden: 24 }, { seed: 12 });
  const path = await Deno.makeTempFile({ suffix: ".safetensors" });
  try {
    await saveGpt2(a, path);
    const b = await loadGpt2Model(be, path);
    assert.deepEqual(b.config, a.config);
    assert.deepEqual(await b.getParams(), await a.getParams());
  } finally {
    await Deno.remove(path);
  }
});

Deno.test("a Gpt can keep its parameters in a store of the caller's", async () => {
  const be = createReferenceBackend();
  const a = new Gpt(be, SMALL, { seed: 21 });
  const flat = a.store as FlatParams;
  const b = new Gpt(be, SMALL, {
    seed: null,
    store: (layers) =>
      new FlatParams(be, mergeSpecs(layers), { params: flat.params, grads: flat.grads }),
  });
  assert.equal((b.store as FlatParams).params, flat.params);
  assert.deepEqual(await b.getParams(), await a.getParams());
  assert.throws(
    () => new FlatParams(be, mergeSpecs(a.layers.map((l) => l.specs)), { params: be.alloc(10) }),
    /params buffer is f32 with 10 elements but the layout needs \d+ f32 elements/,
  );
});

Deno.test("generate() with the key/value cache equals window-by-window greedy decoding, before and past ctx; sampling is seeded, and top-k 1 is greedy", async () => {
  const be = createReferenceBackend();
  const gpt = new Gpt(be, { ...SMALL, ctx: 7 }, { seed: 5 });
  const p = await gpt.getParams();
  p.set("wte", p.get("wte")!.map((x) => x * 30));
  gpt.setParams(p);
  const prompts = [[1, 2, 3], [4], [5, 6, 7, 8, 9]];
  const out = await gpt.generate(prompts, 9); // rows reach 12, 10 and 14 tokens: past ctx 7
  for (let r = 0; r < prompts.length; r++) {
    const seq = [...prompts[r]!];
    for (let k = 0; k < 9; k++) {
      const win = seq.slice(-7);
      const lg = await be.read(await gpt.logits(new Int32Array(win), 1, win.length));
      const last = Array.from(lg.subarray((win.length - 1) * 11, win.length * 11));
      seq.push(last.indexOf(Math.max(...last)));
    }
    assert.deepEqual(out[r], seq.slice(prompts[r]!.length), `row ${r}`);
  }
  assert.deepEqual(await gpt.generate(prompts, 9, { temperature: 1, topK: 1 }), out);
  const a = await gpt.generate(prompts, 9, { temperature: 2, seed: 3 });
  assert.deepEqual(await gpt.generate(prompts, 9, { temperature: 2, seed: 3 }), a);
  const others = await Promise.all(
    [4, 5, 6].map((seed) => gpt.generate(prompts, 9, { temperature: 2, seed })),
  );
  assert.ok(others.some((o) => JSON.stringify(o) !== JSON.stringify(a)), "seeds differ");
  for (const row of a) for (const t of row) assert.ok(t >= 0 && t < 11);
  await assert.rejects(() => gpt.generate(prompts, 1, { temperature: -1 }), /temperature/);
  await assert.rejects(() => gpt.generate(prompts, 1, { temperature: 1, topK: 0 }), /topK/);
});
