import assert from "node:assert/strict";
import { createReferenceBackend } from "../../kernels/reference.ts";
import { clipFactor, clipGradNorm, sumOfSquares } from "../../optim/mod.ts";

Deno.test("clipGradNorm() scales a gradient of norm 13 down to norm 1 and returns 13", async () => {
  const be = createReferenceBackend();
  const g = be.alloc(4);
  be.write(g, new Float32Array([3, 4, 0, 12]));
  const norm = await clipGradNorm(be, g, 1);
  assert.ok(Math.abs(norm - 13) < 1e-6);
  const out = await be.read(g);
  const expected = [3 / 13, 4 / 13, 0, 12 / 13];
  for (let i = 0; i < 4; i++) assert.ok(Math.abs(out[i] - expected[i]) < 1e-6);
});

Deno.test("clipGradNorm() leaves a gradient within the threshold untouched", async () => {
  const be = createReferenceBackend();
  const g = be.alloc(3);
  be.write(g, new Float32Array([0.1, -0.2, 0.3]));
  await clipGradNorm(be, g, 5);
  assert.deepEqual(Array.from(await be.read(g)), Array.from(new Float32Array([0.1, -0.2, 0.3])));
  assert.equal(clipFactor(2, Infinity), 1);
  assert.equal(clipFactor(4, 2), 0.5);
  await assert.rejects(() => clipGradNorm(be, g, 0), /maxNorm must be > 0/);
});

Deno.test("sumOfSquares() reports an overflowed gradient as non-finite", async () => {
  const be = createReferenceBackend();
  const g = be.alloc(2);
  be.write(g, new Float32Array([1, Infinity]));
  assert.equal(Number.isFinite(await sumOfSquares(be, g)), false);
});
