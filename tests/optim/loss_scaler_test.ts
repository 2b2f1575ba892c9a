import assert from "node:assert/strict";
import { DynamicLossScaler } from "../../optim/mod.ts";

Deno.test("DynamicLossScaler backs off and skips on overflow, grows after a window of good steps", () => {
  const s = new DynamicLossScaler({ initialScale: 8, growthInterval: 3, minScale: 2 });
  assert.equal(s.update(true), true);
  assert.equal(s.update(true), true);
  assert.equal(s.scale, 8);
  assert.equal(s.update(true), true);
  assert.equal(s.scale, 16);
  assert.equal(s.update(false), false);
  assert.equal(s.scale, 8);
  assert.equal(s.update(false), false);
  assert.equal(s.update(false), false);
  assert.equal(s.update(false), false);
  assert.equal(s.scale, 2, "never below minScale");
  assert.equal(s.skipped, 4);
  const saved = s.getState();
  const t = new DynamicLossScaler();
  t.setState(saved);
  assert.deepEqual(t.getState(), { scale: 2, goodSteps: 0, skipped: 4 });
  assert.throws(() => new DynamicLossScaler({ backoffFactor: 2 }), /backoffFactor/);
});
