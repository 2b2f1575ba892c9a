import assert from "node:assert/strict";
import { checkGemmArgs, type Gemm, tsGemm } from "../../kernels/cpu/gemm.ts";
import { Rng } from "../../kernels/rng.ts";
import { availableGemms } from "./_gemms.ts";
import { getBlasThreads, setBlasThreads } from "../../kernels/cpu/blas.ts";

/** C = alpha op(A) op(B) + beta C by the definition, summed in float64. */
function naive(
  tA: boolean,
  tB: boolean,
  M: number,
  N: number,
  K: number,
  alpha: number,
  A: Float32Array,
  oA: number,
  lda: number,
  B: Float32Array,
  oB: number,
  ldb: number,
  beta: number,
  C: Float32Array,
  oC: number,
  ldc: number,
): void {
  for (let i = 0; i < M; i++) {
    for (let j = 0; j < N; j++) {
      let s = 0;
      for (let k = 0; k < K; k++) {
        s += (tA ? A[oA + k * lda + i] : A[oA + i * lda + k]) *
          (tB ? B[oB + j * ldb + k] : B[oB + k * ldb + j]);
      }
      const old = beta === 0 ? 0 : beta * C[oC + i * ldc + j];
      C[oC + i * ldc + j] = alpha * s + old;
    }
  }
}

function rand(rng: Rng, n: number): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = rng.uniform() * 2 - 1;
  return a;
}

interface Case {
  tA: boolean;
  tB: boolean;
  M: number;
  N: number;
  K: number;
  alpha: number;
  beta: number;
  pad: number;
  off: number;
}

const cases: Case[] = [];
for (const tA of [false, true]) {
  for (const tB of [false, true]) {
    for (const [M, N, K] of [[1, 1, 1], [3, 5, 7], [17, 33, 9], [64, 48, 70], [5, 1, 130]]) {
      cases.push({ tA, tB, M, N, K, alpha: 1, beta: 0, pad: 0, off: 0 });
      cases.push({ tA, tB, M, N, K, alpha: 0.5, beta: 1, pad: 3, off: 5 });
      cases.push({ tA, tB, M, N, K, alpha: -2, beta: 0.25, pad: 1, off: 2 });
    }
  }
}

function runCase(g: Gemm, c: Case, rng: Rng): void {
  const { tA, tB, M, N, K, alpha, beta, pad, off } = c;
  const lda = (tA ? M : K) + pad, ldb = (tB ? K : N) + pad, ldc = N + pad;
  const A = rand(rng, off + (tA ? K : M) * lda);
  const B = rand(rng, off + 1 + (tB ? N : K) * ldb);
  const C0 = rand(rng, off + 2 + M * ldc);
  if (beta === 0) C0.fill(NaN, off + 2); // beta = 0 must ignore the old C entirely
  const want = C0.slice(), got = C0.slice();
  naive(tA, tB, M, N, K, alpha, A, off, lda, B, off + 1, ldb, beta, want, off + 2, ldc);
  g.sgemm(tA, tB, M, N, K, alpha, A, off, lda, B, off + 1, ldb, beta, got, off + 2, ldc);
  const tol = 1e-5 * (K + 4);
  for (let i = 0; i < got.length; i++) {
    const pos = i - off - 2, r = Math.floor(pos / ldc), col = pos - r * ldc;
    const inside = pos >= 0 && r < M && col < N;
    if (!inside) {
      // Padding and elements before the offset are left alone.
      assert.ok(Object.is(got[i], C0[i]), `${g.name} ${JSON.stringify(c)}: touched C[${i}]`);
      continue;
    }
    assert.ok(
      Math.abs(got[i] - want[i]) <= tol * (1 + Math.abs(want[i])),
      `${g.name} ${JSON.stringify(c)}: C[${r},${col}] = ${got[i]}, want ${want[i]}`,
    );
  }
}

const { gemms, skipped } = await availableGemms();
for (const s of skipped) console.log(`gemm tests: skipping ${s}`);

for (const g of gemms) {
  Deno.test(`${g.name} sgemm() matches the definition for transposes, offsets, strides, alpha and beta`, () => {
    const rng = new Rng(7);
    for (const c of cases) runCase(g, c, rng);
  });

  Deno.test(`${g.name} sgemm() agrees with tsGemm on a 200x150x300 product`, () => {
    const rng = new Rng(11);
    const M = 200, N = 150, K = 300;
    const A = rand(rng, M * K), B = rand(rng, K * N);
    const want = new Float32Array(M * N), got = new Float32Array(M * N);
    tsGemm.sgemm(false, false, M, N, K, 1, A, 0, K, B, 0, N, 0, want, 0, N);
    g.sgemm(false, false, M, N, K, 1, A, 0, K, B, 0, N, 0, got, 0, N);
    for (let i = 0; i < want.length; i++) {
      assert.ok(Math.abs(got[i] - want[i]) <= 1e-4 * (1 + Math.abs(want[i])), `C[${i}]`);
    }
  });

  Deno.test(`${g.name} sgemm() does nothing for empty products and scales C when K = 0`, () => {
    const C = new Float32Array([1, 2, 3, 4]);
    g.sgemm(
      false,
      false,
      0,
      2,
      3,
      1,
      new Float32Array(0),
      0,
      3,
      new Float32Array(6),
      0,
      2,
      0,
      C,
      0,
      2,
    );
    assert.deepEqual([...C], [1, 2, 3, 4]);
    g.sgemm(
      false,
      false,
      2,
      2,
      0,
      1,
      new Float32Array(0),
      0,
      1,
      new Float32Array(0),
      0,
      2,
      2,
      C,
      0,
      2,
    );
    assert.deepEqual([...C], [2, 4, 6, 8]);
  });

  Deno.test(`${g.name} sgemm() works on views of a SharedArrayBuffer`, () => {
    const rng = new Rng(13);
    const M = 9, N = 7, K = 5;
    const shared = new Float32Array(new SharedArrayBuffer(4 * (100 + M * K + K * N + M * N)));
    const A = shared.subarray(3), B = shared.subarray(50 + M * K);
    shared.set(rand(rng, M * K), 3);
    shared.set(rand(rng, K * N), 50 + M * K);
    const C = shared.subarray(60 + M * K + K * N);
    const want = new Float32Array(M * N);
    naive(false, false, M, N, K, 1, A, 0, K, B, 0, N, 0, want, 0, N);
    g.sgemm(false, false, M, N, K, 1, shared, 3, K, B, 0, N, 0, C, 1, N);
    for (let i = 0; i < M * N; i++) {
      assert.ok(Math.abs(C[1 + i] - want[i]) <= 1e-5, `C[${i}] = ${C[1 + i]}, want ${want[i]}`);
    }
  });

  Deno.test(`${g.name} sgemm() rejects a matrix that does not fit its array`, () => {
    const A = new Float32Array(6), B = new Float32Array(6), C = new Float32Array(4);
    assert.throws(
      () => g.sgemm(false, false, 2, 2, 3, 1, A, 1, 3, B, 0, 2, 0, C, 0, 2),
      RangeError,
    );
    assert.throws(
      () => g.sgemm(false, false, 2, 2, 3, 1, A, 0, 2, B, 0, 2, 0, C, 0, 2),
      /lda \(2\) must be/,
    );
  });
}

Deno.test("checkGemmArgs() accepts a transposed A stored [K,M] with padding", () => {
  const a = new Float32Array(3 * 5), b = new Float32Array(3 * 2), c = new Float32Array(4 * 2);
  checkGemmArgs(true, false, 4, 2, 3, a, 0, 5, b, 0, 2, c, 0, 2);
  assert.throws(() => checkGemmArgs(true, false, 4, 2, 3, a, 0, 3, b, 0, 2, c, 0, 2), RangeError);
});

Deno.test("setBlasThreads() sets OpenBLAS's thread count and rejects nonsense", () => {
  assert.throws(() => setBlasThreads(0), RangeError);
  const before = getBlasThreads();
  if (before === null) {
    assert.equal(setBlasThreads(1), false);
    return;
  }
  assert.equal(setBlasThreads(1), true);
  assert.equal(getBlasThreads(), 1);
  setBlasThreads(before);
});
