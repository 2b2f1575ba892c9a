// Every backward of the reference backend against central finite differences in float64.
// Tolerance: |analytic - numeric| <= 1e-6 * (1 + |numeric|) with step h = 1e-5; the truncation
// error is O(h^2) ~ 1e-10 and round-off ~ 1e-16 / h ~ 1e-11, so 1e-6 leaves a wide margin while
// any wrong term (a missing factor, a dropped sum) is off by far more.

import assert from "node:assert/strict";
import { type Backend, createReferenceBackend, Rng, type Tensor } from "../../kernels/mod.ts";

const be: Backend = createReferenceBackend({ precision: "f64" });
const H = 1e-5, TOL = 1e-6;

function host(t: Tensor): Float64Array {
  const a = be.hostView(t);
  assert.ok(a instanceof Float64Array, "an f64 reference backend stores floats as Float64Array");
  return a;
}

function randn(rng: Rng, n: number, scale = 1): Tensor {
  const t = be.alloc(n);
  const a = host(t);
  for (let i = 0; i < n; i++) a[i] = (rng.uniform() * 2 - 1) * scale;
  return t;
}

function ints(values: number[]): Tensor {
  const t = be.alloc(values.length, "i32");
  be.write(t, new Int32Array(values));
  return t;
}

/** loss = sum(out * weights), a scalar whose gradient with respect to out is `weights`. */
function dot(out: Tensor, weights: Tensor): number {
  const a = host(out), w = host(weights);
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * w[i];
  return s;
}

/**
 * Check that `backward` adds d(loss)/d(input) into each gradient: the gradients start with
 * random values, which must remain underneath the added gradient.
 */
function gradcheck(
  rng: Rng,
  loss: () => number,
  backward: () => void,
  pairs: [input: Tensor, grad: Tensor][],
): void {
  const before = pairs.map(([, g]) => {
    const a = host(g);
    for (let i = 0; i < a.length; i++) a[i] = rng.uniform() - 0.5;
    return a.slice();
  });
  backward();
  pairs.forEach(([x, g], p) => {
    const xs = host(x), gs = host(g);
    for (let i = 0; i < xs.length; i++) {
      const keep = xs[i];
      xs[i] = keep + H;
      const up = loss();
      xs[i] = keep - H;
      const down = loss();
      xs[i] = keep;
      const numeric = (up - down) / (2 * H);
      const analytic = gs[i] - before[p][i];
      assert.ok(
        Math.abs(analytic - numeric) <= TOL * (1 + Math.abs(numeric)),
        `input ${p} element ${i}: analytic ${analytic}, numeric ${numeric}`,
      );
    }
  });
}

Deno.test("layernormBackward() matches finite differences for inp, w and b", () => {
  const rng = new Rng(1);
  const N = 3, C = 5;
  const inp = randn(rng, N * C, 2), w = randn(rng, C), b = randn(rng, C), r = randn(rng, N * C);
  const out = be.alloc(N * C), mean = be.alloc(N), rstd = be.alloc(N);
  const dinp = be.alloc(N * C), dw = be.alloc(C), db = be.alloc(C);
  const loss = () => {
    be.layernormForward(out, mean, rstd, inp, w, b, N, C);
    return dot(out, r);
  };
  loss();
  gradcheck(rng, loss, () => be.layernormBackward(dinp, dw, db, r, inp, w, mean, rstd, N, C), [
    [inp, dinp],
    [w, dw],
    [b, db],
  ]);
});

Deno.test("geluBackward() matches finite differences", () => {
  const rng = new Rng(2);
  const n = 12;
  const inp = randn(rng, n, 3), r = randn(rng, n), out = be.alloc(n), dinp = be.alloc(n);
  const loss = () => {
    be.geluForward(out, inp, n);
    return dot(out, r);
  };
  gradcheck(rng, loss, () => be.geluBackward(dinp, inp, r, n), [[inp, dinp]]);
});

Deno.test("attentionBackward() matches finite differences for q, k and v of every head", () => {
  const rng = new Rng(3);
  const B = 2, T = 4, C = 6, NH = 2;
  const qkv = randn(rng, B * T * 3 * C), r = randn(rng, B * T * C);
  const out = be.alloc(B * T * C), att = be.alloc(B * NH * T * T), dqkv = be.alloc(B * T * 3 * C);
  const loss = () => {
    be.attentionForward(out, att, qkv, B, T, C, NH);
    return dot(out, r);
  };
  loss();
  gradcheck(rng, loss, () => be.attentionBackward(dqkv, r, qkv, att, B, T, C, NH), [[qkv, dqkv]]);
});

Deno.test("attentionBackward() with dropout matches finite differences of the dropped forward", () => {
  // The mask is a function of position only, so the forward is a fixed function of qkv.
  const rng = new Rng(7);
  const B = 2, T = 5, C = 6, NH = 2;
  const drop = { p: 0.3, key: 4242, seqOffset: 1, headOffset: 1, heads: 4 };
  const qkv = randn(rng, B * T * 3 * C), r = randn(rng, B * T * C);
  const out = be.alloc(B * T * C), att = be.alloc(B * NH * T * T), dqkv = be.alloc(B * T * 3 * C);
  const loss = () => {
    be.attentionForward(out, att, qkv, B, T, C, NH, drop);
    return dot(out, r);
  };
  loss();
  gradcheck(rng, loss, () => be.attentionBackward(dqkv, r, qkv, att, B, T, C, NH, drop), [
    [qkv, dqkv],
  ]);
});

Deno.test("dropout() is its own backward: the gradient of sum(r * dropout(x)) is dropout(r)", () => {
  const rng = new Rng(8);
  const rows = 4, cols = 6, n = rows * cols;
  const x = randn(rng, n), r = randn(rng, n), out = be.alloc(n), dx = be.alloc(n), g = be.alloc(n);
  const loss = () => {
    be.dropout(out, x, rows, cols, 0.5, 77, 2, 1, 9);
    return dot(out, r);
  };
  gradcheck(rng, loss, () => {
    be.dropout(g, r, rows, cols, 0.5, 77, 2, 1, 9);
    be.axpy(dx, g, 1, n);
  }, [[x, dx]]);
});

Deno.test("crossEntropyBackward() matches finite differences, ignored targets included", () => {
  const rng = new Rng(4);
  const N = 4, V = 5, dloss = 0.25;
  const logits = randn(rng, N * V, 2), targets = ints([3, -1, 0, 4]);
  const losses = be.alloc(N), probs = be.alloc(N * V), dlogits = be.alloc(N * V);
  const loss = () => {
    be.crossEntropyForward(losses, probs, logits, targets, N, V);
    return dloss * host(losses).reduce((s, x) => s + x, 0);
  };
  loss();
  gradcheck(rng, loss, () => be.crossEntropyBackward(dlogits, probs, targets, dloss, N, V), [
    [logits, dlogits],
  ]);
});

Deno.test("embeddingBackward() matches finite differences, for a vocabulary shard too", () => {
  const rng = new Rng(5);
  const N = 5, C = 3;
  for (const [rows, start, idx] of [[4, 0, [0, 2, 2, 3, 1]], [2, 2, [0, 2, 3, 3, 1]]] as const) {
    const table = randn(rng, rows * C), r = randn(rng, N * C), out = be.alloc(N * C);
    const dtable = be.alloc(rows * C), ix = ints([...idx]);
    const loss = () => {
      be.embeddingForward(out, ix, table, N, C, start);
      return dot(out, r);
    };
    gradcheck(rng, loss, () => be.embeddingBackward(dtable, r, ix, N, C, start), [[table, dtable]]);
  }
});

Deno.test("sumRows() is the gradient of addRows(), and matmul's transposes give its gradients", () => {
  const rng = new Rng(6);
  const M = 3, N = 4, K = 5;
  // addRows: out = x + row broadcast; d/drow = sumRows(dout).
  const x = randn(rng, M * N), row = randn(rng, N), r = randn(rng, M * N), out = be.alloc(M * N);
  const drow = be.alloc(N);
  gradcheck(
    rng,
    () => {
      be.copy(out, x);
      be.addRows(out, row, M, N);
      return dot(out, r);
    },
    () => be.sumRows(drow, r, M, N, true),
    [[row, drow]],
  );
  // out = a @ b + bias: da = dout @ b^T, db = a^T @ dout, dbias = sumRows(dout).
  const a = randn(rng, M * K), b = randn(rng, K * N), bias = randn(rng, N);
  const da = be.alloc(M * K), dbm = be.alloc(K * N), dbias = be.alloc(N);
  gradcheck(rng, () => {
    be.matmul(out, a, b, bias, M, N, K);
    return dot(out, r);
  }, () => {
    be.matmul(da, r, b, null, M, K, N, { transB: true, accumulate: true });
    be.matmul(dbm, a, r, null, K, N, M, { transA: true, accumulate: true });
    be.sumRows(dbias, r, M, N, true);
  }, [[a, da], [b, dbm], [bias, dbias]]);
});

Deno.test("the f64 reference backend keeps float64 precision end to end", async () => {
  const t = be.alloc(2);
  be.write(t, new Float64Array([1 + 1e-12, 3]));
  const back = await be.read(t);
  assert.ok(back instanceof Float64Array);
  assert.equal(back[0], 1 + 1e-12);
});
