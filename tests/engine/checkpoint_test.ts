import assert from "node:assert/strict";
import { AdditionTask } from "../../data/mod.ts";
import {
  CheckpointReader,
  checkpointRunDir,
  type EngineConfig,
  initialize,
  listCheckpoints,
  readCheckpointConfig,
  readCheckpointIndex,
  readCheckpointTensors,
  shardFileName,
} from "../../engine/mod.ts";
import { createCpuBackend } from "../../kernels/mod.ts";
import { openSafetensors, SafetensorsWriter } from "../../models/mod.ts";

const task = new AdditionTask({ digits: 2, heldOut: 20 });
const config: EngineConfig = {
  model: { vocab: 12, ctx: task.seqLen, dim: 16, layers: 2, heads: 2 },
  train_batch_size: 8,
  gradient_clipping: 1,
  optimizer: { type: "AdamW", params: { lr: 3e-3, weight_decay: 0.1 } },
  scheduler: { type: "WarmupCosineLR", params: { warmup_num_steps: 2, total_num_steps: 8 } },
  seed: 7,
};
const backend = () => createCpuBackend({ threads: 1 });
const shard0 = shardFileName(0);

async function trained(steps: number, c: EngineConfig = config) {
  const engine = await initialize(c, { backend: backend() });
  const src = task.trainBatches(8, 1);
  for (let i = 0; i < steps; i++) await engine.trainBatch([src.next()]);
  return engine;
}

Deno.test("8 steps straight equal 4 steps, save, load into a new engine, 4 steps: bit for bit", async () => {
  const dir = await Deno.makeTempDir();
  const straight = await initialize(config, { backend: backend() });
  const s0 = task.trainBatches(8, 1);
  const want: number[] = [];
  for (let i = 0; i < 8; i++) want.push((await straight.trainBatch([s0.next()])).loss);

  const first = await initialize(config, { backend: backend() });
  const s1 = task.trainBatches(8, 1);
  const got: number[] = [];
  for (let i = 0; i < 4; i++) got.push((await first.trainBatch([s1.next()])).loss);
  const path = await first.save(dir, { data: s1.getState() }, { note: "half way" });
  assert.equal(path, `${dir}/checkpoints/step-00000004`);
  assert.equal(first.checkpointPath, path);

  const second = await initialize({ ...config, seed: 99 }, { backend: backend() }); // different init, overwritten
  const extra = await second.load(dir);
  assert.equal(second.step, 4);
  assert.equal(second.checkpointPath, path);
  const s2 = task.trainBatches(8, 12345);
  s2.setState(extra.data as ReturnType<typeof s2.getState>);
  for (let i = 0; i < 4; i++) got.push((await second.trainBatch([s2.next()])).loss);

  assert.deepEqual(got, want);
  assert.deepEqual(await second.model.getParams(), await straight.model.getParams());
  const cfg = JSON.parse(await Deno.readTextFile(`${path}/config.json`));
  assert.equal(cfg.note, "half way");
  assert.equal(cfg.engine.seed, 7);
  assert.deepEqual(await readCheckpointConfig(dir), cfg, "the run directory follows latest");
  assert.deepEqual(await readCheckpointConfig(path), cfg);
  assert.equal(await checkpointRunDir(path), dir);
  assert.equal(await checkpointRunDir(`${path}/`), dir);
  assert.equal(await checkpointRunDir(dir), dir);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("the layout on disk: latest, the step directory, its index, config and shard", async () => {
  const dir = await Deno.makeTempDir();
  const engine = await trained(1);
  await engine.save(dir);
  assert.equal(await Deno.readTextFile(`${dir}/latest`), "checkpoints/step-00000001\n");
  const names = [];
  for await (const e of Deno.readDir(`${dir}/checkpoints/step-00000001`)) names.push(e.name);
  assert.deepEqual(names.sort(), ["config.json", "index.json", shard0]);
  const entries = [];
  for await (const e of Deno.readDir(`${dir}/checkpoints`)) entries.push(e.name);
  assert.deepEqual(entries, ["step-00000001"], "no temporary directory is left");
  const index = await readCheckpointIndex(`${dir}/checkpoints/step-00000001`);
  assert.equal(index.format, "loom-checkpoint-2");
  assert.equal(index.step, 1);
  assert.equal(index.vocab, 12);
  assert.deepEqual(index.state, ["m", "v"]);
  assert.deepEqual(index.layout, {
    worldSize: 1,
    tp: 1,
    pp: 1,
    dp: 1,
    virtualStages: 1,
    zeroStage: 0,
    precision: "fp32",
  });
  const f = index.files[shard0]!;
  const bytes = await Deno.readFile(`${dir}/checkpoints/step-00000001/${shard0}`);
  assert.equal(f.bytes, bytes.length);
  const sha = Array.from(
    new Uint8Array(await crypto.subtle.digest("SHA-256", bytes)),
    (b) => b.toString(16).padStart(2, "0"),
  ).join("");
  assert.equal(f.sha256, sha, "the checksum computed while streaming is the file's");
  const wte = index.tensors["wte"]!;
  assert.deepEqual(wte.shape, [12, 16]);
  assert.equal(wte.vocabRows, true);
  assert.deepEqual(wte.pieces.map((q) => [q.file, q.key, q.part, q.start, q.n]), [
    [shard0, "wte", 0, 0, 192],
  ]);
  assert.equal(index.tensors["optimizer.v.h.1.mlp.c_fc.weight"]!.pieces.length, 1);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("a checkpoint holds the parameters under GPT-2 names and the AdamW moments", async () => {
  const dir = await Deno.makeTempDir();
  const engine = await trained(1);
  await engine.save(dir);
  const tensors = await readCheckpointTensors(dir);
  const params = await engine.model.getParams();
  const state = (await engine.gatherTensors(true))!;
  for (const [name, value] of params) {
    assert.deepEqual(tensors.get(name), value);
    assert.deepEqual(tensors.get(`optimizer.m.${name}`), state.get(`optimizer.m.${name}`));
    assert.deepEqual(tensors.get(`optimizer.v.${name}`), state.get(`optimizer.v.${name}`));
  }
  assert.equal(tensors.size, 3 * params.size);
  // The shard itself is a plain safetensors file.
  const f = await openSafetensors(`${dir}/checkpoints/step-00000001/${shard0}`);
  assert.deepEqual(f.entries.get("h.0.attn.c_attn.weight")?.shape, [16, 48]);
  f.close();
  await Deno.remove(dir, { recursive: true });
});

Deno.test("load() rejects a checkpoint of another shape or optimizer and a missing one", async () => {
  const dir = await Deno.makeTempDir();
  const engine = await initialize(config, { backend: backend() });
  await engine.save(dir);
  const wider = await initialize({ ...config, model: { ...config.model, dim: 32 } }, {
    backend: backend(),
  });
  await assert.rejects(() => wider.load(dir), /another model shape: dim 16 there vs 32 here/);
  const sgd = await initialize({ ...config, optimizer: { type: "SGD" } }, { backend: backend() });
  await assert.rejects(() => sgd.load(dir), /optimizer "adamw"/);
  const smaller = await initialize({ ...config, model: { ...config.model, vocab: 10 } }, {
    backend: backend(),
  });
  await assert.rejects(() => smaller.load(dir), /another model shape: vocab 12 there vs 10 here/);
  const empty = await Deno.makeTempDir();
  await assert.rejects(() => engine.load(empty), /No checkpoint in/);
  await assert.rejects(() => engine.load(`${empty}/nope`), /No checkpoint in .* does not exist/);
  await assert.rejects(() => readCheckpointConfig(empty), /No checkpoint/);
  for (const d of [dir, empty]) await Deno.remove(d, { recursive: true });
});

async function flipByte(path: string, at: number): Promise<void> {
  const f = await Deno.open(path, { read: true, write: true });
  const b = new Uint8Array(1);
  await f.seek(at, Deno.SeekMode.Start);
  await f.read(b);
  b[0] ^= 0x40;
  await f.seek(at, Deno.SeekMode.Start);
  await f.write(b);
  f.close();
}

Deno.test("a corrupt or truncated shard is reported by name and nothing of it is loaded", async () => {
  const dir = await Deno.makeTempDir();
  const saved = await trained(2);
  const ckpt = await saved.save(dir);
  const shard = `${ckpt}/${shard0}`;
  const fresh = await initialize(config, { backend: backend() });
  const before = await fresh.model.getParams();
  const size = (await Deno.stat(shard)).size;

  await flipByte(shard, Math.floor(size / 2)); // a bit inside a tensor's values
  for (const target of [ckpt, dir]) {
    await assert.rejects(
      () => fresh.load(target),
      (e: Error) =>
        /damaged and was not loaded/.test(e.message) &&
        e.message.includes(`${shard0} fails its SHA-256 check`),
    );
  }
  assert.equal(fresh.step, 0);
  assert.deepEqual(await fresh.model.getParams(), before, "not loaded");
  await flipByte(shard, Math.floor(size / 2));

  const bytes = await Deno.readFile(shard);
  await Deno.writeFile(shard, bytes.subarray(0, bytes.length - 100));
  await assert.rejects(
    () => fresh.load(ckpt),
    new RegExp(`${shard0} is ${size - 100} bytes, the index says ${size} \\(truncated\\)`),
  );
  await Deno.remove(shard);
  await assert.rejects(() => fresh.load(ckpt), new RegExp(`${shard0} is missing`));
  await assert.rejects(() => readCheckpointTensors(ckpt), /is missing/);
  assert.deepEqual(await fresh.model.getParams(), before, "not loaded");

  await Deno.writeFile(shard, bytes);
  await fresh.load(ckpt);
  assert.equal(fresh.step, 2);
  await Deno.writeTextFile(`${ckpt}/index.json`, "{ not json");
  await assert.rejects(() => fresh.load(ckpt), /index.json is not JSON/);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("a damaged latest checkpoint gives way to the previous one, with a warning", async () => {
  const dir = await Deno.makeTempDir();
  const engine = await trained(1);
  const first = await engine.save(dir);
  await engine.trainBatch([task.trainBatches(8, 5).next()]);
  const second = await engine.save(dir);
  const bytes = await Deno.readFile(`${second}/${shard0}`);
  await Deno.writeFile(`${second}/${shard0}`, bytes.subarray(0, 1000));
  const warnings: string[] = [];
  const warn = console.warn;
  console.warn = (m: string) => warnings.push(m);
  const fresh = await initialize(config, { backend: backend() });
  try {
    await fresh.load(dir);
  } finally {
    console.warn = warn;
  }
  assert.equal(fresh.step, 1);
  assert.equal(fresh.checkpointPath, first);
  assert.equal(warnings.length, 1);
  assert.match(warnings[0]!, /step-00000002 is damaged .*rank-00000.safetensors is 1000 bytes/);
  assert.match(warnings[0]!, /trying .*step-00000001 instead/);
  await assert.rejects(() => fresh.load(dir, { fallback: false }), /damaged and was not loaded/);
  // Both damaged: an error naming both, nothing loaded.
  await flipByte(`${first}/${shard0}`, 5000);
  console.warn = () => {};
  try {
    await assert.rejects(
      () => fresh.load(dir),
      (e: Error) =>
        /No intact checkpoint/.test(e.message) && e.message.includes("step-00000002") &&
        e.message.includes("step-00000001/rank-00000.safetensors fails its SHA-256 check"),
    );
  } finally {
    console.warn = warn;
  }
  await Deno.remove(dir, { recursive: true });
});

Deno.test("keep K deletes the oldest checkpoints once the new one is in place; 0 keeps all", async () => {
  const dir = await Deno.makeTempDir();
  const engine = await trained(0);
  const src = task.trainBatches(8, 1);
  for (let i = 0; i < 4; i++) {
    await engine.trainBatch([src.next()]);
    await engine.save(dir);
  }
  assert.deepEqual((await listCheckpoints(dir)).map((c) => c.step), [4, 3]);
  await engine.trainBatch([src.next()]);
  await engine.save(dir, {}, {}, { keep: 1 });
  assert.deepEqual((await listCheckpoints(dir)).map((c) => c.step), [5]);
  await engine.trainBatch([src.next()]);
  await engine.save(dir, {}, {}, { keep: 0 });
  await engine.trainBatch([src.next()]);
  await engine.save(dir, {}, {}, { keep: 0 });
  assert.deepEqual((await listCheckpoints(dir)).map((c) => c.step), [7, 6, 5]);
  // Saving twice at one step replaces that checkpoint.
  await engine.save(dir, { again: true }, {}, { keep: 0 });
  assert.deepEqual((await listCheckpoints(dir)).map((c) => c.step), [7, 6, 5]);
  assert.equal(await Deno.readTextFile(`${dir}/latest`), "checkpoints/step-00000007\n");
  const fresh = await initialize(config, { backend: backend() });
  assert.deepEqual(await fresh.load(dir), { again: true });
  await assert.rejects(() => engine.save(dir, {}, {}, { keep: -1 }), /keep must be an integer/);
  await assert.rejects(() => engine.save(dir, {}, {}, { vocab: 13 }), /real vocabulary/);
  // A run directory that cannot be made: the save fails and leaves the run as it was.
  const file = await Deno.makeTempFile();
  await assert.rejects(() => engine.save(file), /Not a directory/);
  await Deno.remove(file);
  assert.equal(await Deno.readTextFile(`${dir}/latest`), "checkpoints/step-00000007\n");
  await Deno.remove(dir, { recursive: true });
});

Deno.test("a vocabulary padded for tp loads at another padding: rows trimmed or zero-filled", async () => {
  const dir = await Deno.makeTempDir();
  // Saved with 12 rows of which 10 are the real vocabulary.
  const padded = await trained(2);
  const ckpt = await padded.save(dir, {}, {}, { vocab: 10 });
  const want = (await padded.gatherTensors(true))!;
  const ten = await initialize({ ...config, model: { ...config.model, vocab: 10 } }, {
    backend: backend(),
  });
  await ten.load(dir);
  const got = (await ten.gatherTensors(true))!;
  for (const name of ["wte", "optimizer.m.wte", "optimizer.v.wte"]) {
    assert.deepEqual(got.get(name), want.get(name)!.slice(0, 10 * 16), name);
  }
  assert.deepEqual(got.get("h.0.attn.c_attn.weight"), want.get("h.0.attn.c_attn.weight"));
  const src = task.trainBatches(8, 9);
  const r = await ten.trainBatch([src.next()]);
  assert.ok(Number.isFinite(r.loss) && r.loss > 0);
  // And up: 10 real rows into a model of 14, the new rows zero.
  await ten.save(dir);
  const wide = await initialize({ ...config, model: { ...config.model, vocab: 14 } }, {
    backend: backend(),
  });
  await wide.load(dir);
  const w = (await wide.gatherTensors(true))!;
  const t = (await ten.gatherTensors(true))!;
  for (const name of ["wte", "optimizer.m.wte", "optimizer.v.wte"]) {
    assert.deepEqual(w.get(name)!.subarray(0, 160), t.get(name), name);
    assert.ok(w.get(name)!.subarray(160).every((x) => x === 0), `${name}: padded rows are zero`);
  }
  const index = await readCheckpointIndex(ckpt);
  assert.equal(index.vocab, 10);
  assert.equal(index.model.vocab, 12);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("a checkpoint of the earlier single-file format still loads", async () => {
  const dir = await Deno.makeTempDir();
  const engine = await trained(3);
  const tensors = (await engine.gatherTensors(true))!;
  const names = [...tensors.keys()];
  const w2 = await SafetensorsWriter.create(
    `${dir}/checkpoint.safetensors`,
    names.map((name) => {
      const base = name.replace(/^optimizer\.[mv]\./, "");
      const slot = engine.model.layout.get(base);
      return { name, dtype: "F32" as const, shape: slot.full };
    }),
    {
      format: "loom-checkpoint-1",
      model: JSON.stringify(engine.config.model),
      optimizer: "adamw",
      state: JSON.stringify({
        step: 3,
        optimizerSteps: 3,
        rng: engine.rng.getState(),
        lossScaler: null,
        extra: { old: 1 },
      }),
    },
  );
  for (const name of names) await w2.write(name, tensors.get(name)!);
  await w2.close();
  const fresh = await initialize(config, { backend: backend() });
  assert.deepEqual(await fresh.load(dir), { old: 1 });
  assert.equal(fresh.step, 3);
  assert.deepEqual(await fresh.gatherTensors(true), tensors);
  const r = await CheckpointReader.open(dir);
  assert.deepEqual(await r.serial("wpe"), tensors.get("wpe"));
  r.close();
  await Deno.remove(dir, { recursive: true });
});

Deno.test("Zero's pieces: every element once, read and written on the rank alone", async () => {
  for (const stage of [0, 1, 3] as const) {
    const engine = await trained(1, {
      ...config,
      zero_optimization: { stage, reduce_bucket_size: 500 },
      bf16: { enabled: true },
    });
    const z = engine.zero;
    const whole = (await engine.gatherTensors(true))!;
    const count = new Map<string, number>();
    for (const q of z.statePieces()) {
      count.set(q.slot.name, (count.get(q.slot.name) ?? 0) + q.n);
      const at = q.global - q.slot.offset;
      for (const kind of ["params", "m", "v"]) {
        const name = kind === "params" ? q.slot.name : `optimizer.${kind}.${q.slot.name}`;
        assert.deepEqual(
          await z.readPiece(kind, q),
          whole.get(name)!.slice(at, at + q.n),
          `stage ${stage}: ${name}`,
        );
      }
    }
    for (const s of z.layout.slots) assert.equal(count.get(s.name), s.size, s.name);
    const q = z.statePieces()[0]!;
    z.writePiece("v", q, new Float32Array(q.n).fill(0.25));
    assert.ok((await z.readPiece("v", q)).every((x) => x === 0.25));
    z.writePiece("params", q, new Float32Array(q.n).fill(0.5));
    assert.ok((await z.readPiece("params", q)).every((x) => x === 0.5), "fp32 master weights");
    assert.throws(
      () => z.writePiece("m", { ...q }, new Float32Array(q.n)),
      /not one of this rank's statePieces/,
    );
    assert.throws(() => z.writePiece("m", q, new Float32Array(1)), /elements, got 1 values/);
    await assert.rejects(() => z.readPiece("momentum", q), /No optimizer state "momentum"/);
  }
});
