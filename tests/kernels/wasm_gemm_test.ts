import assert from "node:assert/strict";
import { createWasmGemm } from "../../kernels/cpu/wasm_gemm.ts";
import { hasRelaxedSimd } from "../../kernels/cpu/_wasm_gemm_module.ts";
import type { Gemm } from "../../kernels/cpu/gemm.ts";
import { sleb, uleb } from "../../wasm/encode.ts";

/** Deterministic values in [-1, 1). */
function filled(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = s / 2 ** 31 - 1;
  }
  return out;
}

interface Case {
  transA: boolean;
  transB: boolean;
  M: number;
  N: number;
  K: number;
  alpha: number;
  beta: number;
  /** Extra columns of every leading dimension beyond the stored row. */
  pad: number;
  /** Element offset of every matrix in its array. */
  off: number;
}

/** Runs one case on `gemm` and on a float64 triple loop; checks every element of the array. */
function check(gemm: Gemm, t: Case, seed: number): void {
  const { transA, transB, M, N, K, alpha, beta, pad, off } = t;
  const [ar, ac] = transA ? [K, M] : [M, K];
  const [br, bc] = transB ? [N, K] : [K, N];
  const lda = ac + pad, ldb = bc + pad, ldc = N + pad;
  const A = filled(off + ar * lda + 3, seed);
  const B = filled(off + br * ldb + 3, seed + 1);
  const C = filled(off + M * ldc + 3, seed + 2);
  if (beta === 0) {
    for (let i = 0; i < M; i++) C.fill(NaN, off + i * ldc, off + i * ldc + N);
  }
  const want = Float64Array.from(C);
  for (let i = 0; i < M; i++) {
    for (let j = 0; j < N; j++) {
      let s = 0;
      for (let k = 0; k < K; k++) {
        const a = transA ? A[off + k * lda + i]! : A[off + i * lda + k]!;
        const b = transB ? B[off + j * ldb + k]! : B[off + k * ldb + j]!;
        s += a * b;
      }
      const c = off + i * ldc + j;
      want[c] = alpha * s + (beta === 0 ? 0 : beta * C[c]!);
    }
  }
  gemm.sgemm(transA, transB, M, N, K, alpha, A, off, lda, B, off, ldb, beta, C, off, ldc);
  // float32 accumulation error grows like sqrt(K) times the rounding of each term.
  const tol = 1e-5 * (1 + Math.sqrt(K)) * (1 + Math.abs(alpha));
  for (let i = 0; i < C.length; i++) {
    const err = Math.abs(C[i]! - want[i]!);
    if (!(err <= tol * (1 + Math.abs(want[i]!)))) {
      assert.fail(
        `${JSON.stringify(t)}: element ${i} is ${C[i]}, want ${want[i]} (tolerance ${tol})`,
      );
    }
  }
}

const variants: [string, Gemm][] = [["mul+add", createWasmGemm({ fma: false })]];
if (hasRelaxedSimd()) variants.push(["relaxed fma", createWasmGemm({ fma: true })]);

for (const [label, gemm] of variants) {
  Deno.test(`wasm sgemm (${label}) matches a triple loop for all transposes and odd sizes`, () => {
    let seed = 1;
    const sizes = [1, 3, 17, 65];
    for (const transA of [false, true]) {
      for (const transB of [false, true]) {
        for (const M of sizes) {
          for (const N of sizes) {
            for (const K of [1, 5, 17, 65]) {
              check(gemm, { transA, transB, M, N, K, alpha: 1, beta: 0, pad: 0, off: 0 }, seed++);
            }
          }
        }
      }
    }
  });

  Deno.test(`wasm sgemm (${label}) honours offsets, leading dimensions, alpha and beta`, () => {
    let seed = 100;
    for (const transA of [false, true]) {
      for (const transB of [false, true]) {
        for (const [alpha, beta] of [[1, 1], [0.5, -2], [-1.5, 0], [0, 0.25], [0, 0], [2, 1]]) {
          check(
            gemm,
            { transA, transB, M: 13, N: 21, K: 9, alpha: alpha!, beta: beta!, pad: 5, off: 7 },
            seed++,
          );
        }
      }
    }
  });

  Deno.test(`wasm sgemm (${label}) crosses every cache block boundary`, () => {
    // 129 rows span two MC blocks, 300 inner steps two KC blocks, 2051 columns two NC blocks.
    check(
      gemm,
      { transA: false, transB: false, M: 129, N: 65, K: 300, alpha: 1, beta: 1, pad: 3, off: 1 },
      7,
    );
    check(
      gemm,
      { transA: true, transB: true, M: 65, N: 129, K: 257, alpha: -1, beta: 0, pad: 0, off: 2 },
      8,
    );
    check(
      gemm,
      { transA: false, transB: true, M: 7, N: 2051, K: 33, alpha: 0.5, beta: 2, pad: 1, off: 0 },
      9,
    );
  });

  Deno.test(`wasm sgemm (${label}) copies a contiguous C whose width fills whole tiles`, () => {
    let seed = 200;
    for (const [M, N, K] of [[6, 8, 4], [24, 64, 33], [7, 16, 9]]) {
      for (const beta of [0, 1, -0.5]) {
        check(gemm, {
          transA: false,
          transB: true,
          M: M!,
          N: N!,
          K: K!,
          alpha: 1,
          beta,
          pad: 0,
          off: 0,
        }, seed++);
        check(gemm, {
          transA: true,
          transB: false,
          M: M!,
          N: N!,
          K: K!,
          alpha: 2,
          beta,
          pad: 0,
          off: 5,
        }, seed++);
      }
    }
  });

  Deno.test(`wasm sgemm (${label}) splits tall matrices into row chunks`, () => {
    check(
      gemm,
      { transA: true, transB: false, M: 1925, N: 9, K: 5, alpha: 1, beta: 0.5, pad: 1, off: 3 },
      10,
    );
  });

  Deno.test(`wasm sgemm (${label}) with a zero size leaves C scaled by beta or untouched`, () => {
    for (const [M, N, K] of [[0, 5, 3], [4, 0, 3], [4, 5, 0], [0, 0, 0]]) {
      for (const beta of [0, 1, 3]) {
        check(gemm, {
          transA: false,
          transB: true,
          M: M!,
          N: N!,
          K: K!,
          alpha: 1,
          beta,
          pad: 2,
          off: 1,
        }, 3);
      }
    }
  });
}

Deno.test("wasm sgemm works on arrays backed by a SharedArrayBuffer", () => {
  const gemm = createWasmGemm();
  const sab = new SharedArrayBuffer(4 * (6 + 6 + 4));
  const A = new Float32Array(sab, 0, 6), B = new Float32Array(sab, 24, 6);
  const C = new Float32Array(sab, 48, 4);
  A.set([1, 2, 3, 4, 5, 6]); // [2,3]
  B.set([1, 0, 0, 1, 1, 1]); // [3,2]
  C.fill(NaN);
  gemm.sgemm(false, false, 2, 2, 3, 1, A, 0, 3, B, 0, 2, 0, C, 0, 2);
  assert.deepEqual([...C], [4, 5, 10, 11]);
});

Deno.test("wasm sgemm rejects a matrix that does not fit its array", () => {
  const gemm = createWasmGemm();
  const a = new Float32Array(6), c = new Float32Array(4);
  assert.throws(
    () => gemm.sgemm(false, false, 2, 2, 4, 1, a, 0, 4, a, 0, 2, 0, c, 0, 2),
    RangeError,
  );
});

Deno.test("createWasmGemm() returns one cached instance named wasm, with FMA where the engine has it", () => {
  assert.equal(createWasmGemm(), createWasmGemm());
  assert.equal(createWasmGemm().name, "wasm");
  assert.equal(createWasmGemm().fma, hasRelaxedSimd());
  assert.equal(createWasmGemm({ fma: false }).fma, false);
});

Deno.test("the Wasm encoder writes LEB128 integers as the binary format specifies", () => {
  const enc = (f: (out: number[], n: number) => void, n: number) => {
    const out: number[] = [];
    f(out, n);
    return out;
  };
  assert.deepEqual(enc(uleb, 0), [0x00]);
  assert.deepEqual(enc(uleb, 127), [0x7f]);
  assert.deepEqual(enc(uleb, 128), [0x80, 0x01]);
  assert.deepEqual(enc(uleb, 624485), [0xe5, 0x8e, 0x26]);
  assert.deepEqual(enc(uleb, 0x105), [0x85, 0x02]);
  assert.deepEqual(enc(sleb, -1), [0x7f]);
  assert.deepEqual(enc(sleb, 63), [0x3f]);
  assert.deepEqual(enc(sleb, 64), [0xc0, 0x00]);
  assert.deepEqual(enc(sleb, -123456), [0xc0, 0xbb, 0x78]);
  assert.throws(() => enc(uleb, -1), RangeError);
});
