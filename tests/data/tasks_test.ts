import assert from "node:assert/strict";
import { AdditionTask, type LogitsFn } from "../../data/mod.ts";

/** Decode a row's problem from its token ids. */
function problemOf(task: AdditionTask, inputs: Int32Array, row: number): [number, number] {
  const text = task.tokenizer.decode(inputs.subarray(row * task.seqLen, (row + 1) * task.seqLen));
  const m = /^(\d+)\+(\d+)=/.exec(text);
  assert.ok(m, `row ${row} is not a problem: ${text}`);
  return [Number(m[1]), Number(m[2])];
}

Deno.test("addition rows hold the prompt, the reversed sum, and -1 targets on the prompt", () => {
  const task = new AdditionTask({ digits: 3, heldOut: 50 });
  assert.equal(task.prompt(7, 45), "007+045=");
  assert.equal(task.answer(999, 1), "0001");
  assert.equal(task.answer(123, 456), "9750");
  const { inputs, targets, B, T } = task.trainBatches(16, 3).next();
  assert.equal(T, 11);
  for (let r = 0; r < B; r++) {
    const [a, b] = problemOf(task, inputs, r);
    const row = targets.subarray(r * T, (r + 1) * T);
    assert.deepEqual(Array.from(row.subarray(0, task.promptLen - 1)), new Array(7).fill(-1));
    assert.equal(task.tokenizer.decode(row.subarray(task.promptLen - 1)), task.answer(a, b));
    for (let t = 0; t + 1 < T; t++) {
      if (row[t] >= 0) assert.equal(row[t], inputs[r * T + t + 1], "targets are shifted inputs");
    }
  }
});

Deno.test("addition batches are deterministic by seed and never contain a held-out problem", () => {
  const task = new AdditionTask({ digits: 2, heldOut: 500 });
  assert.equal(new Set(task.heldOut.map(([a, b]) => a * 100 + b)).size, 500);
  const s1 = task.trainBatches(64, 9), s2 = task.trainBatches(64, 9);
  let seen = 0;
  for (let i = 0; i < 100; i++) {
    const b1 = s1.next();
    assert.deepEqual(b1, s2.next());
    for (let r = 0; r < b1.B; r++) {
      const [a, b] = problemOf(task, b1.inputs, r);
      assert.ok(!task.isHeldOut(a, b), `${a}+${b} is held out but was drawn for training`);
      seen++;
    }
  }
  assert.equal(seen, 6400);
  const saved = s1.getState();
  const next = s1.next();
  s2.setState(saved);
  assert.deepEqual(s2.next(), next);
  // The same seed picks the same held-out problems.
  assert.deepEqual(new AdditionTask({ digits: 2, heldOut: 500 }).heldOut, task.heldOut);
});

/**
 * Logits of a model that adds perfectly except when a + b is divisible by 7; it reads the
 * problems from the rows it was given (the prompts first, then a token per pass, as with a
 * key/value cache).
 */
function oracle(task: AdditionTask): LogitsFn {
  const V = task.tokenizer.vocabSize;
  let rows: number[][] = [];
  return (inputs, B, T, past = 0) => {
    if (past === 0) rows = Array.from({ length: B }, () => []);
    const out = new Float32Array(B * T * V);
    for (let r = 0; r < B; r++) {
      rows[r]!.push(...inputs.subarray(r * T, (r + 1) * T));
      assert.equal(rows[r]!.length, past + T, "each pass follows the cached positions");
      const [a, b] = problemOf(task, Int32Array.from(rows[r]!), 0);
      const ans = task.tokenizer.encode(task.answer(a, b));
      for (let t = 0; t < T; t++) {
        const k = past + t - (task.promptLen - 1);
        if (k < 0 || k >= ans.length) continue;
        const wrong = (a + b) % 7 === 0 && k === 0;
        out[(r * T + t) * V + (wrong ? (ans[k] % 10) + 1 : ans[k])] = 5;
      }
    }
    return Promise.resolve(out);
  };
}

Deno.test("score() counts exact matches of greedy decoding on the held-out problems", async () => {
  const task = new AdditionTask({ digits: 3, heldOut: 300 });
  const expectedWrong = task.heldOut.filter(([a, b]) => (a + b) % 7 === 0).length;
  const s = await task.score(oracle(task), 64);
  assert.equal(s.total, 300);
  assert.equal(s.correct, 300 - expectedWrong);
  assert.ok(s.samples.length > 0);
  for (const x of s.samples) {
    assert.equal(x.correct, x.predicted === x.expected);
    const [a, b] = x.prompt.slice(0, -1).split("+").map(Number);
    assert.equal(x.expected, String(a + b));
  }
  assert.equal((await task.score(oracle(task), 50, 100)).total, 100);
});
