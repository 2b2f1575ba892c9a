// The distributed sampler: a replica's rows of a batch are the serial batch's rows, and every
// replica's stream stays where the serial one is.
import assert from "node:assert/strict";
import { AdditionTask, replicaRows, replicaShare, WindowSampler } from "../../data/mod.ts";

const sources = {
  "random windows": (seed: number) =>
    new WindowSampler(Int32Array.from({ length: 500 }, (_, i) => (i * 7) % 53), 8, 16, seed),
  "the addition task": (seed: number) => new AdditionTask({ digits: 2 }).trainBatches(8, seed),
};

for (const [name, make] of Object.entries(sources)) {
  Deno.test(`${name}: rows [from, to) of each batch are the serial rows; the position matches`, () => {
    const serial = make(3);
    const shares = [{ from: 0, to: 3 }, { from: 3, to: 8 }, { from: 5, to: 5 }];
    const parts = shares.map(() => make(3));
    for (let step = 0; step < 4; step++) {
      const whole = serial.next();
      for (const [i, rows] of shares.entries()) {
        const b = parts[i]!.next(rows);
        const T = whole.T;
        assert.equal(b.B, rows.to - rows.from);
        assert.deepEqual(b.inputs, whole.inputs.slice(rows.from * T, rows.to * T));
        assert.deepEqual(b.targets, whole.targets.slice(rows.from * T, rows.to * T));
        assert.deepEqual(parts[i]!.getState(), serial.getState());
      }
    }
  });
}

Deno.test("a row range outside the batch is refused", () => {
  const s = sources["random windows"](1);
  assert.throws(() => s.next({ from: 2, to: 9 }), /Rows \[2, 9\) are not a range of a batch of 8/);
  assert.throws(() => s.next({ from: 3, to: 2 }), /not a range/);
});

Deno.test("replicaRows: each replica's rows of the drawn batches tile the global batch in order", () => {
  for (const [rows, draws, replicas] of [[8, 1, 2], [2, 4, 2], [3, 4, 4], [6, 2, 3], [4, 3, 1]]) {
    const seen: number[] = [];
    for (let d = 0; d < replicas!; d++) {
      for (const [i, r] of replicaRows(rows!, draws!, d, replicas!).entries()) {
        for (let k = r.from; k < r.to; k++) seen.push(i * rows! + k);
      }
    }
    assert.deepEqual(seen, Array.from({ length: rows! * draws! }, (_, k) => k));
  }
  assert.throws(() => replicaRows(3, 1, 0, 2), /does not split over 2 data-parallel replicas/);
});

Deno.test("replicaShare cuts the rows replicaRows names out of whole batches", () => {
  const make = sources["the addition task"];
  const whole = [make(4).next(), make(5).next()];
  const share = replicaShare(whole, 1, 4);
  assert.equal(share.length, 1);
  assert.deepEqual(share[0]!.inputs, whole[0]!.inputs.slice(4 * whole[0]!.T));
});
