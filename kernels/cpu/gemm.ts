/**
 * The single-precision GEMM interface that the CPU backend's fast paths implement (OpenBLAS
 * through FFI, WebAssembly SIMD, plain TypeScript), with BLAS semantics on row-major storage:
 *
 *   C[M,N] = alpha * op(A)[M,K] @ op(B)[K,N] + beta * C
 *
 * where op(A) is A, stored [M,K] with row stride `lda`, or, when `transA`, A stored [K,M] with
 * row stride `lda` (likewise B). Matrices start at element offsets into their arrays, so that
 * strided sub-matrices (one attention head inside qkv) need no copy. When `beta` is 0, C is
 * overwritten and its old contents (even NaN) are ignored.
 *
 * @module
 */

/** A single-precision matrix multiply with BLAS semantics on row-major storage. */
export interface Gemm {
  /** Which implementation: `"blas"`, `"wasm"` or `"ts"`. */
  readonly name: string;
  /**
   * C = alpha * op(A) @ op(B) + beta * C (see the module doc).
   *
   * @param transA A is stored [K,M]
   * @param transB B is stored [N,K]
   * @param M rows of C
   * @param N columns of C
   * @param K the inner dimension
   * @param alpha scale of the product
   * @param A first matrix's array
   * @param offA element offset of A's first element
   * @param lda row stride of A as stored
   * @param B second matrix's array
   * @param offB element offset of B's first element
   * @param ldb row stride of B as stored
   * @param beta scale of the old C (0: overwrite)
   * @param C output array
   * @param offC element offset of C's first element
   * @param ldc row stride of C
   */
  sgemm(
    transA: boolean,
    transB: boolean,
    M: number,
    N: number,
    K: number,
    alpha: number,
    A: Float32Array,
    offA: number,
    lda: number,
    B: Float32Array,
    offB: number,
    ldb: number,
    beta: number,
    C: Float32Array,
    offC: number,
    ldc: number,
  ): void;
}

function checkMatrix(
  name: string,
  arr: Float32Array,
  off: number,
  rows: number,
  cols: number,
  ld: number,
): void {
  if (!Number.isInteger(off) || off < 0) {
    throw new RangeError(`sgemm: off${name} must be a non-negative integer, got ${off}`);
  }
  if (!Number.isInteger(ld) || ld < Math.max(1, cols)) {
    throw new RangeError(
      `sgemm: ld${name.toLowerCase()} (${ld}) must be an integer >= the stored row length ${cols}`,
    );
  }
  if (rows > 0 && cols > 0 && off + (rows - 1) * ld + cols > arr.length) {
    throw new RangeError(
      `sgemm: ${name} as stored [${rows},${cols}] with ld ${ld} at offset ${off} needs ` +
        `${off + (rows - 1) * ld + cols} elements, its array has ${arr.length}`,
    );
  }
}

/**
 * Validate the arguments of {@linkcode Gemm.sgemm}: sizes, offsets, leading dimensions and that
 * every matrix fits its array. Every implementation calls it before touching memory.
 *
 * @param transA A is stored [K,M]
 * @param transB B is stored [N,K]
 * @param M rows of C
 * @param N columns of C
 * @param K the inner dimension
 * @param A first matrix's array
 * @param offA element offset of A
 * @param lda row stride of A
 * @param B second matrix's array
 * @param offB element offset of B
 * @param ldb row stride of B
 * @param C output array
 * @param offC element offset of C
 * @param ldc row stride of C
 * @throws {RangeError} when a size, offset or stride is out of range
 */
export function checkGemmArgs(
  transA: boolean,
  transB: boolean,
  M: number,
  N: number,
  K: number,
  A: Float32Array,
  offA: number,
  lda: number,
  B: Float32Array,
  offB: number,
  ldb: number,
  C: Float32Array,
  offC: number,
  ldc: number,
): void {
  for (const [k, v] of [["M", M], ["N", N], ["K", K]] as const) {
    if (!Number.isInteger(v) || v < 0) {
      throw new RangeError(`sgemm: ${k} must be a non-negative integer, got ${v}`);
    }
  }
  checkMatrix("A", A, offA, transA ? K : M, transA ? M : K, lda);
  checkMatrix("B", B, offB, transB ? N : K, transB ? K : N, ldb);
  checkMatrix("C", C, offC, M, N, ldc);
}

const scratches = [new Float32Array(0), new Float32Array(0)];
function scratch(which: number, n: number): Float32Array {
  if (scratches[which].length < n) scratches[which] = new Float32Array(n);
  return scratches[which];
}

/** Plain TypeScript GEMM: the portable fallback (a few GFLOP/s). */
export const tsGemm: Gemm = {
  name: "ts",
  sgemm(transA, transB, M, N, K, alpha, A, offA, lda, B, offB, ldb, beta, C, offC, ldc): void {
    checkGemmArgs(transA, transB, M, N, K, A, offA, lda, B, offB, ldb, C, offC, ldc);
    for (let i = 0; i < M; i++) {
      const c0 = offC + i * ldc;
      if (beta === 0) C.fill(0, c0, c0 + N);
      else if (beta !== 1) { for (let j = 0; j < N; j++) C[c0 + j] *= beta; }
    }
    if (alpha === 0 || K === 0) return;
    // Transposed operands are copied into contiguous scratch first (O(MK + KN), small next to
    // the O(MNK) product), so that one loop order serves all four cases.
    let a = A, oa = offA, la = lda, b = B, ob = offB, lb = ldb;
    if (transA) {
      a = scratch(0, M * K);
      for (let k = 0; k < K; k++) for (let i = 0; i < M; i++) a[i * K + k] = A[offA + k * lda + i];
      oa = 0;
      la = K;
    }
    if (transB) {
      b = scratch(1, K * N);
      for (let j = 0; j < N; j++) for (let k = 0; k < K; k++) b[k * N + j] = B[offB + j * ldb + k];
      ob = 0;
      lb = N;
    }
    // C[i,:] += sum_k alpha * a[i,k] * b[k,:], four k at a time.
    for (let i = 0; i < M; i++) {
      const c0 = offC + i * ldc, a0 = oa + i * la;
      let k = 0;
      for (; k + 3 < K; k += 4) {
        const x0 = alpha * a[a0 + k], x1 = alpha * a[a0 + k + 1];
        const x2 = alpha * a[a0 + k + 2], x3 = alpha * a[a0 + k + 3];
        const b0 = ob + k * lb, b1 = b0 + lb, b2 = b1 + lb, b3 = b2 + lb;
        for (let j = 0; j < N; j++) {
          C[c0 + j] += x0 * b[b0 + j] + x1 * b[b1 + j] + x2 * b[b2 + j] + x3 * b[b3 + j];
        }
      }
      for (; k < K; k++) {
        const x = alpha * a[a0 + k], b0 = ob + k * lb;
        for (let j = 0; j < N; j++) C[c0 + j] += x * b[b0 + j];
      }
    }
  },
};
