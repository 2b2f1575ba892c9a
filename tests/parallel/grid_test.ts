import assert from "node:assert/strict";
import { buildGrid, checkModelLayout, microBatchCount } from "../../parallel/mod.ts";

Deno.test("buildGrid() places tensor-parallel ranks innermost, then data, then pipeline", () => {
  const g = buildGrid({ worldSize: 16, tp: 2, pp: 4 });
  assert.equal(g.dp, 2);
  assert.equal(g.order, "tp-dp-pp");
  for (let r = 0; r < 16; r++) {
    const c = g.coordsOf(r);
    assert.equal(r, c.tp + 2 * (c.dp + 2 * c.pp));
    assert.equal(g.rankOf(c), r);
  }
  assert.deepEqual(g.allGroups("tp"), Array.from({ length: 8 }, (_, i) => [2 * i, 2 * i + 1]));
  assert.deepEqual(g.groupsOf(5).dp, [5, 7]);
  assert.deepEqual(g.groupsOf(5).pp, [1, 5, 9, 13]);
  assert.deepEqual(g.groupsOf(1).embedding, [1, 13]);
  assert.deepEqual(g.groupsOf(5).embedding, []);
  assert.deepEqual(g.groupsOf(6).modelParallel, [2, 3, 6, 7, 10, 11, 14, 15]);
});

Deno.test("buildGrid() groups of each kind partition the world", () => {
  for (const [worldSize, tp, pp] of [[8, 2, 2], [8, 1, 8], [12, 3, 2], [4, 4, 1], [6, 1, 1]]) {
    const g = buildGrid({ worldSize, tp, pp });
    for (const kind of ["tp", "dp", "pp", "modelParallel"] as const) {
      const all = g.allGroups(kind).flat().sort((a, b) => a - b);
      assert.deepEqual(all, Array.from({ length: worldSize }, (_, i) => i), kind);
      for (let r = 0; r < worldSize; r++) assert.ok(g.groupsOf(r)[kind].includes(r));
    }
    assert.equal(g.allGroups("tp").length, worldSize / tp);
    assert.equal(g.allGroups("pp").length, worldSize / pp);
  }
});

Deno.test("buildGrid() rejects a world that is not a multiple of tp * pp", () => {
  assert.throws(() => buildGrid({ worldSize: 6, tp: 4, pp: 1 }), /multiple of tp \* pp = 4/);
  assert.throws(() => buildGrid({ worldSize: 8, tp: 0 }), RangeError);
  assert.throws(() => buildGrid({ worldSize: 8 }).coordsOf(8), /outside the world/);
});

Deno.test("checkModelLayout() pads the vocabulary to a multiple of tp and says so", () => {
  const l = checkModelLayout({ heads: 4, layers: 8, vocab: 50257, tp: 4, pp: 2, virtualStages: 2 });
  assert.equal(l.paddedVocab, 50260);
  assert.equal(l.vocabPadding, 3);
  assert.equal(l.vocabPerRank, 12565);
  assert.equal(l.layersPerChunk, 2);
  assert.match(l.notes[0]!, /padded from 50257 to 50260/);
  const m = checkModelLayout({ heads: 4, layers: 2, vocab: 50257, tp: 2, vocabDivisibleBy: 128 });
  assert.equal(m.paddedVocab, 50432);
  assert.deepEqual(checkModelLayout({ heads: 2, layers: 2, vocab: 64, tp: 2 }).notes, []);
});

Deno.test("checkModelLayout() rejects heads or layers that do not split", () => {
  assert.throws(() => checkModelLayout({ heads: 6, layers: 4, vocab: 8, tp: 4 }), /6 attention/);
  assert.throws(() => checkModelLayout({ heads: 4, layers: 6, vocab: 8, pp: 4 }), /multiple of 4/);
  assert.throws(
    () => checkModelLayout({ heads: 4, layers: 4, vocab: 8, pp: 2, virtualStages: 4 }),
    /2 virtual stages|4 virtual stages/,
  );
});

Deno.test("microBatchCount() checks global = micro * m * dp", () => {
  assert.equal(microBatchCount({ globalBatch: 32, microBatch: 2, dp: 2 }), 8);
  assert.throws(
    () => microBatchCount({ globalBatch: 30, microBatch: 4, dp: 2 }),
    /multiple of microBatch \* dp = 8/,
  );
});
