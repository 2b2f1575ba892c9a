import assert from "node:assert/strict";
import { formatDuration, formatProgress, MetricsWriter, readMetrics } from "../../engine/mod.ts";

Deno.test("formatProgress() shows step, loss, learning rate, tokens/s and ETA", () => {
  const line = formatProgress({
    step: 120,
    total: 2000,
    loss: 1.23456,
    lr: 1e-3,
    tokensPerS: 25000.4,
    elapsed: 12,
    stepsThisRun: 120,
  });
  assert.equal(line, "step  120/2000 | loss 1.2346 | lr 1.00e-3 | 25,000 tok/s | ETA 3m08s");
  assert.equal(formatDuration(42.2), "42s");
  assert.equal(formatDuration(NaN), "?");
  assert.equal(formatDuration(119.6), "2m00s", "seconds round before minutes split off");
  assert.equal(formatDuration(59.7), "1m00s");
});

Deno.test("MetricsWriter appends JSON lines that readMetrics() reads back", async () => {
  const path = await Deno.makeTempFile();
  let w = await MetricsWriter.open(path, false);
  await w.write({ step: 1, loss: 2.5, lr: 1e-3, tokens_per_s: 100 });
  w.close();
  w = await MetricsWriter.open(path, true);
  await w.write({ step: 1, kind: "eval", val_loss: 2.4, heldout_accuracy: 0.5 });
  w.close();
  assert.deepEqual(await readMetrics(path), [
    { step: 1, loss: 2.5, lr: 1e-3, tokens_per_s: 100 },
    { step: 1, kind: "eval", val_loss: 2.4, heldout_accuracy: 0.5 },
  ]);
  await Deno.remove(path);
});
