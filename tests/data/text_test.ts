import assert from "node:assert/strict";
import { loadTextDataset, sequentialBatches, WindowSampler } from "../../data/mod.ts";

async function tempText(text: string): Promise<string> {
  const path = await Deno.makeTempFile({ suffix: ".txt" });
  await Deno.writeTextFile(path, text);
  return path;
}

Deno.test("WindowSampler gives the same batches for the same seed and resumes from a saved state", () => {
  const tokens = Int32Array.from({ length: 500 }, (_, i) => (i * 7) % 31);
  const a = new WindowSampler(tokens, 4, 16, 42), b = new WindowSampler(tokens, 4, 16, 42);
  for (let i = 0; i < 5; i++) assert.deepEqual(a.next(), b.next());
  const saved = a.getState();
  const later = [a.next(), a.next()];
  const c = new WindowSampler(tokens, 4, 16, 7);
  c.setState(saved);
  assert.deepEqual([c.next(), c.next()], later);
  assert.notDeepEqual(
    new WindowSampler(tokens, 4, 16, 43).next(),
    new WindowSampler(tokens, 4, 16, 42).next(),
  );
});

Deno.test("targets are the inputs shifted by one token", () => {
  const tokens = Int32Array.from({ length: 100 }, (_, i) => i);
  const { inputs, targets, B, T } = new WindowSampler(tokens, 3, 10, 1).next();
  for (let i = 0; i < B * T; i++) assert.equal(targets[i], inputs[i] + 1);
  const val = sequentialBatches(tokens, 2, 10, 100);
  assert.equal(val.length, 4); // 99 usable targets make 4 whole batches of 2 x 10
  assert.deepEqual(Array.from(val[1].inputs.subarray(0, 3)), [20, 21, 22]);
});

Deno.test("loadTextDataset() splits a text file into training and validation tokens", async () => {
  const text = "the quick brown fox jumps over the lazy dog. ".repeat(40);
  const path = await tempText(text);
  const ds = await loadTextDataset(path, { seqLen: 32 });
  assert.equal(ds.train.length + ds.val.length, [...text].length);
  assert.equal(ds.val.length, Math.floor([...text].length * 0.1));
  assert.equal(ds.tokenizer.decode(ds.train) + ds.tokenizer.decode(ds.val), text);
  assert.ok(ds.validationBatches(8, 10).length > 0);
  await Deno.remove(path);
});

Deno.test("loadTextDataset() explains a missing, empty or too short file", async () => {
  await assert.rejects(
    () => loadTextDataset("/nonexistent/loom.txt", { seqLen: 8 }),
    /does not exist/,
  );
  const empty = await tempText("  \n");
  await assert.rejects(() => loadTextDataset(empty, { seqLen: 8 }), /is empty/);
  const short = await tempText("abcdefghij");
  await assert.rejects(
    () => loadTextDataset(short, { seqLen: 64 }),
    /too few for a sequence length of 64/,
  );
  const bad = await Deno.makeTempFile();
  await Deno.writeFile(bad, new Uint8Array([0x61, 0xff, 0xfe, 0x62]));
  await assert.rejects(() => loadTextDataset(bad, { seqLen: 1 }), /not valid UTF-8/);
  for (const p of [empty, short, bad]) await Deno.remove(p);
});
