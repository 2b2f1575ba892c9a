import assert from "node:assert/strict";
import { createReferenceBackend } from "../../kernels/reference.ts";
import { AdamW, buildLayout, decayRanges } from "../../optim/mod.ts";

function close(actual: ArrayLike<number>, expected: number[], tol: number): void {
  assert.equal(actual.length, expected.length);
  for (let i = 0; i < expected.length; i++) {
    assert.ok(
      Math.abs(actual[i] - expected[i]) <= tol,
      `element ${i}: got ${actual[i]}, expected ${expected[i]} (tol ${tol})`,
    );
  }
}

Deno.test("AdamW matches two hand-computed steps on a 3-element model", async () => {
  // A weight [2] with decay and a bias [1] without, packed with no alignment gap.
  const layout = buildLayout([
    { name: "w", shape: [2], decay: true },
    { name: "b", shape: [1], decay: false },
  ], { align: 1 });
  const be = createReferenceBackend({ precision: "f64" });
  const params = be.alloc(3), grads = be.alloc(3);
  be.write(params, new Float32Array([1.0, -2.0, 0.5]));
  const opt = new AdamW(be, layout, params, grads, {
    beta1: 0.9,
    beta2: 0.999,
    eps: 1e-8,
    weightDecay: 0.5,
  });

  // Step 1, g = [0.5, -1, 2]: m = 0.1 g, v = 0.001 g^2, so m/(1-0.9) = g and
  // sqrt(v/(1-0.999)) = |g|: the update is sign(g) (up to eps).
  //   p0 = 1.0  - 0.1 * (1  + 0.5 * 1.0)  = 0.85
  //   p1 = -2.0 - 0.1 * (-1 + 0.5 * -2.0) = -1.8
  //   p2 = 0.5  - 0.1 * 1 (no decay)      = 0.4
  be.write(grads, new Float32Array([0.5, -1.0, 2.0]));
  opt.step(0.1);
  close(await be.read(params), [0.85, -1.8, 0.4], 1e-7);

  // Step 2, g = [0.25, 0, -1]:
  //   m = 0.9 [0.05, -0.1, 0.2] + 0.1 g = [0.07, -0.09, 0.08]
  //   v = 0.999 [0.00025, 0.001, 0.004] + 0.001 g^2 = [0.00031225, 0.000999, 0.004996]
  //   bias corrections: 1 - 0.9^2 = 0.19, 1 - 0.999^2 = 0.001999
  //   mhat = [0.3684210526, -0.4736842105, 0.4210526316]
  //   sqrt(vhat) = [0.3952253807, 0.7069298939, 1.5809015228]
  //   update = mhat / sqrt(vhat) = [0.9321796152, -0.6700582447, 0.2663370380]
  //   p0 = 0.85 - 0.1 * (0.9321796152 + 0.5 * 0.85)  = 0.7142820385
  //   p1 = -1.8 - 0.1 * (-0.6700582447 + 0.5 * -1.8) = -1.6429941755
  //   p2 = 0.4  - 0.1 * 0.2663370380                 = 0.3733662962
  be.write(grads, new Float32Array([0.25, 0.0, -1.0]));
  opt.step(0.1);
  assert.equal(opt.steps, 2);
  close(await be.read(opt.m), [0.07, -0.09, 0.08], 1e-7);
  close(await be.read(opt.v), [0.00031225, 0.000999, 0.004996], 1e-9);
  close(await be.read(params), [0.7142820385, -1.6429941755, 0.3733662962], 1e-7);
});

Deno.test("AdamW decays only the slots flagged for decay, one range per run of equal flags", async () => {
  const layout = buildLayout([
    { name: "wte", shape: [3, 4] },
    { name: "ln.weight", shape: [4] },
    { name: "ln.bias", shape: [4] },
    { name: "fc.weight", shape: [4, 4] },
    { name: "fc.bias", shape: [4] },
  ]);
  assert.deepEqual(
    decayRanges(layout).map((r) => [r.offset, r.length, r.decay]),
    [[0, 12, true], [64, 68, false], [192, 16, true], [256, 4, false]],
  );
  const be = createReferenceBackend();
  const params = be.alloc(layout.size), grads = be.alloc(layout.size);
  be.fill(params, 2); // zero gradients: only weight decay moves a parameter
  const opt = new AdamW(be, layout, params, grads, { weightDecay: 0.25 });
  opt.step(0.1);
  const p = await be.read(params);
  for (const s of layout.slots) {
    const want = s.decay ? 2 * (1 - 0.1 * 0.25) : 2;
    for (let i = 0; i < s.size; i++) {
      assert.ok(Math.abs(p[s.offset + i] - want) < 1e-6, `${s.name}[${i}] = ${p[s.offset + i]}`);
    }
  }
});

Deno.test("AdamW rejects buffers smaller than the layout and bad hyper-parameters", () => {
  const layout = buildLayout([{ name: "w", shape: [100] }]);
  const be = createReferenceBackend();
  assert.throws(() => new AdamW(be, layout, be.alloc(10), be.alloc(128)), /needs 128/);
  assert.throws(
    () => new AdamW(be, layout, be.alloc(128), be.alloc(128), { beta1: 1.5 }),
    RangeError,
  );
});
