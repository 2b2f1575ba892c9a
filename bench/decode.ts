/**
 * Decoding with the key/value cache against the same decoding without it: the held-out score of
 * the addition task (1,000 problems, 128 at a time) on a GPT of width 512 and 8 blocks (25M
 * parameters), once through the cache, once re-running every row's whole prefix at each pass,
 * in the same sitting, on one BLAS thread.
 *
 * ```sh
 * deno run -A bench/decode.ts            # a line per way, then the speed-up
 * deno run -A bench/decode.ts --json     # one JSON object
 * ```
 *
 * Both ways give the same answers (the script checks it).
 *
 * @module
 */
import { AdditionTask, type LogitsFn } from "../data/mod.ts";
import { initialize } from "../engine/mod.ts";
import { createCpuBackend } from "../kernels/mod.ts";

const task = new AdditionTask({ digits: 3 });
const V = task.tokenizer.vocabSize;
const engine = await initialize({
  model: { vocab: V, ctx: task.seqLen, dim: 512, layers: 8, heads: 8 },
  train_batch_size: 128,
}, { backend: createCpuBackend({ threads: 1 }) });

const cached: LogitsFn = (inputs, B, T, past) => engine.logits(inputs, B, T, past);
// Without the cache: remember every row's tokens and run the whole prefix each pass.
let rows: Int32Array[] = [];
const recompute: LogitsFn = async (inputs, B, T, past = 0) => {
  if (past === 0) rows = Array.from({ length: B }, () => new Int32Array(0));
  const n = past + T;
  const ids = new Int32Array(B * n);
  for (let b = 0; b < B; b++) {
    const r = new Int32Array(n);
    r.set(rows[b]!);
    r.set(inputs.subarray(b * T, (b + 1) * T), past);
    rows[b] = r;
    ids.set(r, b * n);
  }
  const all = await engine.logits(ids, B, n);
  const out = new Float32Array(B * T * V);
  for (let b = 0; b < B; b++) out.set(all.subarray((b * n + past) * V, (b * n + n) * V), b * T * V);
  return out;
};

const timeScore = async (logits: LogitsFn) => {
  const t0 = performance.now();
  const s = await task.score(logits, 128);
  return { s, seconds: (performance.now() - t0) / 1000 };
};
const a = await timeScore(cached);
const b = await timeScore(recompute);
const same = JSON.stringify(a.s.samples) === JSON.stringify(b.s.samples) &&
  a.s.correct === b.s.correct;
if (!same) throw new Error("decoding with and without the cache gave different answers");
const rec = {
  params: engine.model.fullParams,
  problems: a.s.total,
  cached_s: Math.round(a.seconds * 100) / 100,
  recomputed_s: Math.round(b.seconds * 100) / 100,
  speedup: Math.round(b.seconds / a.seconds * 100) / 100,
};
if (Deno.args.includes("--json")) console.log(JSON.stringify(rec));
else {
  console.log(`with the key/value cache:   ${rec.cached_s} s`);
  console.log(`re-running every prefix:    ${rec.recomputed_s} s`);
  console.log(`speed-up: ${rec.speedup}x (${rec.problems} problems, ${rec.params} parameters)`);
}
