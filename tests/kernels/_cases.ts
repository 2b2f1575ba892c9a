// One suite of small op cases, run on every backend by ops_test.ts and compared with the
// reference backend. A case builds its inputs from a seeded Rng (so every backend sees the same
// numbers), runs one or more ops and returns the arrays to compare. Gradient outputs start from
// random values, so that a backward that overwrites instead of adding fails.

import type { MatmulOptions } from "../../kernels/mod.ts";
import { Rng } from "../../kernels/mod.ts";
import { ints, type OpCase, rand, read } from "./_case_util.ts";
import { dropoutCases } from "./_cases_dropout.ts";
import { storageCases } from "./_cases_storage.ts";

export type { OpCase };

function matmulCase(
  M: number,
  N: number,
  K: number,
  opts: MatmulOptions,
  withBias: boolean,
): OpCase {
  const flags = [
    opts.transA ? "transA" : "",
    opts.transB ? "transB" : "",
    opts.accumulate ? "accumulate" : "",
    withBias ? "bias" : "",
  ].filter((s) => s).join(", ");
  return {
    name: `matmul() ${M}x${N}x${K}${flags ? ` (${flags})` : ""}`,
    async run(be, rng) {
      const a = rand(be, rng, M * K), b = rand(be, rng, K * N);
      const out = rand(be, rng, M * N); // old contents: kept under accumulate, else overwritten
      const bias = withBias ? rand(be, rng, N) : null;
      be.matmul(out, a, b, bias, M, N, K, opts);
      return await read(be, { out });
    },
  };
}

const cases: OpCase[] = [];

for (const transA of [false, true]) {
  for (const transB of [false, true]) {
    cases.push(matmulCase(5, 7, 3, { transA, transB }, false));
    cases.push(matmulCase(33, 65, 17, { transA, transB, accumulate: true }, true));
  }
}
cases.push(matmulCase(64, 64, 64, {}, true));
cases.push(matmulCase(1, 130, 70, { accumulate: true }, false));
cases.push(matmulCase(70, 3, 129, { transB: true }, true));

cases.push({
  name: "matmul() on views into one flat buffer",
  async run(be, rng) {
    const flat = rand(be, rng, 200);
    const a = be.view(flat, 3, 4 * 6), b = be.view(flat, 64, 6 * 5), out = be.view(flat, 128, 20);
    be.matmul(out, a, b, be.view(flat, 100, 5), 4, 5, 6, { accumulate: true });
    return await read(be, { flat });
  },
});

cases.push({
  name: "alloc(), fill(), copy(), write() at an offset, view() and read()",
  async run(be) {
    const t = be.alloc(10), u = be.alloc(10), i = be.alloc(4, "i32");
    be.fill(t, 1.5);
    be.write(t, new Float32Array([7, 8, 9]), 4);
    be.copy(u, t);
    be.fill(be.view(u, 8, 2), -2);
    be.write(i, new Int32Array([3, -1, 2 ** 30, 0]));
    const z = be.alloc(5);
    return await read(be, { t, u, i, z, v: be.view(t, 3, 3) });
  },
});

cases.push({
  name: "sumRows() overwrites or accumulates",
  async run(be, rng) {
    const inp = rand(be, rng, 37 * 11), o1 = rand(be, rng, 11), o2 = rand(be, rng, 11);
    be.sumRows(o1, inp, 37, 11);
    be.sumRows(o2, inp, 37, 11, true);
    return await read(be, { o1, o2 });
  },
});

cases.push({
  name: "addRows(), add() (aliased too), axpy() and scale()",
  async run(be, rng) {
    const x = rand(be, rng, 9 * 13), row = rand(be, rng, 13), y = rand(be, rng, 117);
    be.addRows(x, row, 9, 13);
    const s = be.alloc(117);
    be.add(s, x, y, 117);
    be.add(y, y, x, 117);
    be.axpy(s, y, -0.75, 117);
    be.scale(x, 3, 100);
    return await read(be, { x, y, s });
  },
});

cases.push({
  name: "sumSquares() overwrites or accumulates",
  async run(be, rng) {
    const x = rand(be, rng, 1000, 2), o1 = rand(be, rng, 1), o2 = rand(be, rng, 1);
    be.sumSquares(o1, x, 1000);
    be.sumSquares(o2, be.view(x, 10, 333), 333, true);
    return await read(be, { o1, o2 });
  },
});

cases.push({
  name: "embeddingForward() and embeddingBackward() over the whole vocabulary",
  async run(be, rng) {
    const V = 11, C = 6, N = 9, idx = ints(be, [0, 10, 3, 3, 7, 0, 5, 3, 1]);
    const table = rand(be, rng, V * C), out = rand(be, rng, N * C);
    const dout = rand(be, rng, N * C), dtable = rand(be, rng, V * C);
    be.embeddingForward(out, idx, table, N, C);
    be.embeddingBackward(dtable, dout, idx, N, C);
    return await read(be, { out, dtable });
  },
});

cases.push({
  name: "embeddingForward() and embeddingBackward() on a vocabulary shard (vocabStart)",
  async run(be, rng) {
    const rows = 4, start = 4, C = 5, N = 8, idx = ints(be, [0, 4, 7, 8, 5, 5, 3, 11]);
    const table = rand(be, rng, rows * C), out = rand(be, rng, N * C);
    const dout = rand(be, rng, N * C), dtable = rand(be, rng, rows * C);
    be.embeddingForward(out, idx, table, N, C, start);
    be.embeddingBackward(dtable, dout, idx, N, C, start);
    return await read(be, { out, dtable });
  },
});

for (const [N, C] of [[3, 8], [17, 48]]) {
  cases.push({
    name: `layernormForward() and layernormBackward() N=${N} C=${C}`,
    async run(be, rng) {
      const inp = rand(be, rng, N * C, 3), w = rand(be, rng, C), b = rand(be, rng, C);
      const out = be.alloc(N * C), mean = be.alloc(N), rstd = be.alloc(N);
      be.layernormForward(out, mean, rstd, inp, w, b, N, C);
      const dout = rand(be, rng, N * C), dinp = rand(be, rng, N * C);
      const dw = rand(be, rng, C), db = rand(be, rng, C);
      be.layernormBackward(dinp, dw, db, dout, inp, w, mean, rstd, N, C);
      return await read(be, { out, mean, rstd, dinp, dw, db });
    },
  });
}

cases.push({
  name: "geluForward() and geluBackward()",
  async run(be, rng) {
    const n = 301, inp = rand(be, rng, n, 5), out = be.alloc(n);
    be.geluForward(out, inp, n);
    const dout = rand(be, rng, n), dinp = rand(be, rng, n);
    be.geluBackward(dinp, inp, dout, n);
    return await read(be, { out, dinp });
  },
});

cases.push({
  name: "geluForward() and geluBackward() at large and tiny inputs",
  async run(be) {
    const xs = [-100, -30, -9, -1e-3, 0, 1e-6, 9, 30, 100];
    const n = xs.length, inp = be.alloc(n), out = be.alloc(n), dinp = be.alloc(n);
    const dout = be.alloc(n);
    be.write(inp, new Float32Array(xs));
    be.fill(dout, 1);
    be.geluForward(out, inp, n);
    be.geluBackward(dinp, inp, dout, n);
    return await read(be, { out, dinp });
  },
});

for (const [B, T, C, H] of [[1, 1, 4, 1], [2, 5, 12, 3], [2, 17, 32, 4]]) {
  cases.push({
    name: `attentionForward() and attentionBackward() B=${B} T=${T} C=${C} H=${H}`,
    async run(be, rng) {
      const qkv = rand(be, rng, B * T * 3 * C, 2);
      const out = be.alloc(B * T * C), att = rand(be, rng, B * H * T * T);
      be.attentionForward(out, att, qkv, B, T, C, H);
      const dout = rand(be, rng, B * T * C), dqkv = rand(be, rng, B * T * 3 * C);
      be.attentionBackward(dqkv, dout, qkv, att, B, T, C, H);
      return await read(be, { out, att, dqkv });
    },
  });
}

// Decoding: the first P tokens in one pass, then the rest one at a time against the cache, give
// the rows of full causal attention (returned as `cached` beside `full`; ops_test.ts compares
// them with the reference, which this case's own check ties to attentionForward).
for (const [B, T, P, C, H] of [[1, 3, 1, 4, 1], [2, 9, 4, 12, 3], [2, 40, 35, 8, 2]]) {
  cases.push({
    name: `attentionCached() prefill ${P} then one token at a time equals attentionForward() ` +
      `B=${B} T=${T} C=${C} H=${H}`,
    storage16: false,
    async run(be, rng) {
      const all = new Float32Array(B * T * 3 * C);
      for (let i = 0; i < all.length; i++) all[i] = (rng.uniform() * 2 - 1) * 2;
      const qkv = be.alloc(all.length), full = be.alloc(B * T * C), att = be.alloc(B * H * T * T);
      be.write(qkv, all);
      be.attentionForward(full, att, qkv, B, T, C, H);
      const cap = T + 2, cache = rand(be, rng, B * cap * 2 * C); // old contents never read
      const cached = new Float32Array(B * T * C);
      for (let past = 0; past < T; past += past === 0 ? P : 1) {
        const n = past === 0 ? P : 1;
        const part = new Float32Array(B * n * 3 * C);
        for (let b = 0; b < B; b++) {
          part.set(all.subarray((b * T + past) * 3 * C, (b * T + past + n) * 3 * C), b * n * 3 * C);
        }
        const q = be.alloc(part.length), out = be.alloc(B * n * C);
        be.write(q, part);
        be.attentionCached(out, cache, q, B, n, past, cap, C, H);
        const got = await be.read(out);
        for (let b = 0; b < B; b++) {
          cached.set(got.subarray(b * n * C, (b + 1) * n * C), (b * T + past) * C);
        }
      }
      const want = await be.read(full);
      for (let i = 0; i < want.length; i++) {
        if (Math.abs(cached[i]! - want[i]!) > 1e-5 * (1 + Math.abs(want[i]!))) {
          throw new Error(`element ${i}: ${cached[i]} with the cache, ${want[i]} without`);
        }
      }
      const c = be.alloc(cached.length);
      be.write(c, cached);
      return await read(be, { full, cached: c });
    },
  });
}

for (const V of [7, 300]) {
  cases.push({
    name: `crossEntropyForward() and crossEntropyBackward() V=${V}, ignored targets (-1)`,
    async run(be, rng) {
      const N = 6, targets = ints(be, [0, V - 1, -1, 3, -1, 1]);
      const logits = rand(be, rng, N * V, 8), losses = rand(be, rng, N);
      const probs = be.alloc(N * V), dlogits = rand(be, rng, N * V);
      be.crossEntropyForward(losses, probs, logits, targets, N, V);
      be.crossEntropyBackward(dlogits, probs, targets, 1 / 4, N, V);
      return await read(be, { losses, probs, dlogits });
    },
  });
}

cases.push({
  name: "adamw() two steps, with and without weight decay",
  async run(be, rng) {
    const n = 257, param = rand(be, rng, n), m = be.alloc(n), v = be.alloc(n);
    const p = { lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, step: 1 };
    be.adamw(param, rand(be, rng, n), m, v, n, p);
    be.adamw(param, rand(be, rng, n), m, v, n, { ...p, step: 2 });
    const q = rand(be, rng, 10), qm = rand(be, rng, 10, 0.1);
    be.adamw(be.view(q, 2, 8), rand(be, rng, 8), be.view(qm, 2, 8), be.alloc(8), 8, {
      ...p,
      weightDecay: 0,
      step: 5,
    });
    return await read(be, { param, m, v, q, qm });
  },
});

// Shapes that span several of the CPU backend's WebAssembly chunks (8192 elements), rows whose
// length is a multiple of 4 (its vector paths) or not (its scalar ones), and wide rows.
cases.push({
  name: "geluForward(), geluBackward() and adamw() over 20000 elements",
  async run(be, rng) {
    const n = 20000, inp = rand(be, rng, n, 6), out = be.alloc(n);
    be.geluForward(out, inp, n);
    const dout = rand(be, rng, n), dinp = rand(be, rng, n);
    be.geluBackward(dinp, inp, dout, n);
    const m = rand(be, rng, n, 0.1), v = be.alloc(n), param = rand(be, rng, n);
    const p = { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01, step: 3 };
    be.adamw(param, dout, m, v, n, p);
    return await read(be, { out, dinp, param, m, v });
  },
});

for (const [N, C] of [[70, 256], [5, 6], [2, 8200]]) {
  cases.push({
    name: `layernormForward(), layernormBackward() and sumRows() N=${N} C=${C}`,
    async run(be, rng) {
      const inp = rand(be, rng, N * C, 3), w = rand(be, rng, C), b = rand(be, rng, C);
      const out = be.alloc(N * C), mean = be.alloc(N), rstd = be.alloc(N);
      be.layernormForward(out, mean, rstd, inp, w, b, N, C);
      const dout = rand(be, rng, N * C), dinp = rand(be, rng, N * C);
      const dw = rand(be, rng, C), db = rand(be, rng, C), sum = rand(be, rng, C);
      be.layernormBackward(dinp, dw, db, dout, inp, w, mean, rstd, N, C);
      be.sumRows(sum, dout, N, C, true);
      return await read(be, { out, mean, rstd, dinp, dw, db, sum });
    },
  });
}

cases.push({
  name: "sumRows() over 1000 rows of 12",
  async run(be, rng) {
    const inp = rand(be, rng, 1000 * 12), o = rand(be, rng, 12);
    be.sumRows(o, inp, 1000, 12);
    return await read(be, { o });
  },
});

cases.push({
  name: "crossEntropyForward() over 40 rows of 300 (several chunks)",
  async run(be, rng) {
    const N = 40, V = 300;
    const targets = ints(be, Array.from({ length: N }, (_, i) => i % 7 === 3 ? -1 : (i * 37) % V));
    const logits = rand(be, rng, N * V, 8), losses = rand(be, rng, N);
    const probs = be.alloc(N * V), dlogits = rand(be, rng, N * V);
    be.crossEntropyForward(losses, probs, logits, targets, N, V);
    be.crossEntropyBackward(dlogits, probs, targets, 1 / 40, N, V);
    return await read(be, { losses, probs, dlogits });
  },
});

cases.push({
  name: "fill() over 70000 elements, f32 and i32, twice with different values",
  async run(be, rng) {
    const f = rand(be, rng, 70001), i = ints(be, new Array(70001).fill(3));
    be.fill(f, 0.1);
    be.fill(i, -7);
    const { f: f0, i: i0 } = await read(be, { f, i });
    be.fill(f, 0);
    be.fill(i, 2);
    return { f0, i0, ...await read(be, { f, i }) };
  },
});

for (const [B, T, C, H] of [[1, 64, 16, 2], [1, 6, 8, 2]]) {
  cases.push({
    name: `attentionForward() and attentionBackward() B=${B} T=${T} C=${C} H=${H}`,
    async run(be, rng) {
      const qkv = rand(be, rng, B * T * 3 * C, 2);
      const out = be.alloc(B * T * C), att = rand(be, rng, B * H * T * T);
      be.attentionForward(out, att, qkv, B, T, C, H);
      const dout = rand(be, rng, B * T * C), dqkv = rand(be, rng, B * T * 3 * C);
      be.attentionBackward(dqkv, dout, qkv, att, B, T, C, H);
      return await read(be, { out, att, dqkv });
    },
  });
}

// Cases appended last keep the seeds (caseRng(index)) of the ones above.
cases.push(...storageCases, ...dropoutCases);

/** Every op case. */
export const opCases: readonly OpCase[] = cases;

/** A fresh Rng for a case, equal on every backend. */
export function caseRng(index: number): Rng {
  return new Rng(1000 + index);
}
