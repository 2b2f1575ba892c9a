import assert from "node:assert/strict";
import { createReferenceBackend } from "../../kernels/reference.ts";
import { buildLayout, SGD } from "../../optim/mod.ts";

Deno.test("SGD with momentum and weight decay matches a plain loop over three steps", async () => {
  const layout = buildLayout([
    { name: "w", shape: [2, 3] },
    { name: "b", shape: [3] },
  ], { align: 8 });
  const be = createReferenceBackend({ precision: "f64" });
  const params = be.alloc(layout.size), grads = be.alloc(layout.size);
  // Parameters and gradients are zero in the alignment padding, as the layout promises.
  const inSlot = (i: number) => layout.slots.some((s) => i >= s.offset && i < s.offset + s.size);
  const p0 = new Float32Array(layout.size).map((_, i) => inSlot(i) ? Math.sin(i + 1) : 0);
  be.write(params, p0);
  const opt = new SGD(be, layout, params, grads, { momentum: 0.9, weightDecay: 0.1 });

  const p = Array.from(p0), buf = new Array(p0.length).fill(0);
  const decay = new Array(p0.length).fill(false);
  for (const s of layout.slots) for (let i = 0; i < s.size; i++) decay[s.offset + i] = s.decay;
  for (let step = 0; step < 3; step++) {
    const g = new Float32Array(layout.size).map((_, i) => inSlot(i) ? Math.cos(i * (step + 2)) : 0);
    be.write(grads, g);
    opt.step(0.05);
    for (let i = 0; i < p.length; i++) {
      buf[i] = 0.9 * buf[i] + g[i] + (decay[i] ? 0.1 * p[i] : 0);
      p[i] -= 0.05 * buf[i];
    }
  }
  const got = await be.read(params);
  // Padding between slots is folded into the neighbouring range; it must stay zero.
  for (let i = 0; i < p.length; i++) {
    const want = inSlot(i) ? p[i] : 0;
    if (!inSlot(i)) assert.equal(got[i], 0, `padding element ${i} moved`);
    else assert.ok(Math.abs(got[i] - want) < 1e-6, `element ${i}: ${got[i]} vs ${want}`);
  }
  assert.equal(opt.steps, 3);
});
