// Plumbing shared by the backends whose tensors are typed arrays in this process (the reference
// and the CPU backend): the tensor class, the argument checks, the memory methods and the ops
// that both compute the same way.

import type { HostArray, Tensor, TensorDType } from "./backend.ts";
import { checkedOps, type OpKernels, type Ops, size } from "./_checks.ts";

/** The storage of `f32` tensors. */
export type Floats = Float32Array | Float64Array;

/** A tensor in host memory, tagged with the backend that made it. */
export class HostTensor<F extends Floats = Floats> implements Tensor {
  constructor(
    readonly data: F | Int32Array,
    readonly dtype: TensorDType,
    readonly backend: string,
  ) {}
  get length(): number {
    return this.data.length;
  }
}

/** Argument checks of one host backend; each throws with a message that names op and argument. */
export interface HostChecks<F extends Floats> {
  /** The host array of `t`, which must be this backend's and hold at least `need` elements. */
  arr(t: Tensor, op: string, name: string, need: number): F | Int32Array;
  /** As {@linkcode HostChecks.arr}, and `t` must be `f32`. */
  f(t: Tensor, op: string, name: string, need: number): F;
  /** As {@linkcode HostChecks.arr}, and `t` must be `i32`. */
  ints(t: Tensor, op: string, name: string, need: number): Int32Array;
  /** Wrap a host array as a tensor of this backend. */
  wrap(data: F | Int32Array, dtype: TensorDType): Tensor;
}

/** The checks of the host backend called `backend` in error messages ("cpu", "reference"). */
export function hostChecks<F extends Floats>(backend: string): HostChecks<F> {
  const arr = (t: Tensor, op: string, name: string, need: number): F | Int32Array => {
    if (!(t instanceof HostTensor) || t.backend !== backend) {
      throw new TypeError(`${op}: ${name} is not a tensor of this ${backend} backend`);
    }
    if (t.data.length < need) {
      throw new RangeError(
        `${op}: ${name} has ${t.data.length} elements but the sizes given need ${need}`,
      );
    }
    return t.data as F | Int32Array;
  };
  return {
    arr,
    f(t, op, name, need) {
      const a = arr(t, op, name, need);
      if (t.dtype !== "f32") throw new TypeError(`${op}: ${name} must be an f32 tensor`);
      return a as F;
    },
    ints(t, op, name, need) {
      const a = arr(t, op, name, need);
      if (t.dtype !== "i32") throw new TypeError(`${op}: ${name} must be an i32 tensor`);
      return a as Int32Array;
    },
    wrap: (data, dtype) => new HostTensor(data, dtype, backend),
  };
}

/** The memory methods of a host backend. */
export interface HostMemory<F extends Floats> {
  alloc(length: number, dtype?: TensorDType): Tensor;
  view(t: Tensor, offset: number, length: number): Tensor;
  write(t: Tensor, src: HostArray, offset?: number): void;
  read(t: Tensor): Promise<F | Int32Array>;
  hostView(t: Tensor): F | Int32Array;
  fill(t: Tensor, value: number): void;
  copy(dst: Tensor, src: Tensor): void;
  dispose(): void;
}

/**
 * The memory methods of a host backend whose checks are `c`; `make` allocates the zeroed
 * storage of a new tensor (its length and dtype already checked).
 */
export function hostMemory<F extends Floats>(
  c: HostChecks<F>,
  make: (length: number, dtype: TensorDType) => F | Int32Array,
): HostMemory<F> {
  return {
    alloc(length: number, dtype: TensorDType = "f32"): Tensor {
      size("alloc", { length });
      if (dtype !== "f32" && dtype !== "i32") {
        throw new TypeError(`alloc: dtype must be "f32" or "i32", got ${JSON.stringify(dtype)}`);
      }
      return c.wrap(make(length, dtype), dtype);
    },
    view(t: Tensor, offset: number, length: number): Tensor {
      size("view", { offset, length });
      const a = c.arr(t, "view", "t", offset + length);
      return c.wrap(a.subarray(offset, offset + length) as F | Int32Array, t.dtype);
    },
    write(t: Tensor, src: HostArray, offset = 0): void {
      size("write", { offset });
      const a = c.arr(t, "write", "t", offset + src.length);
      if ((t.dtype === "i32") !== (src instanceof Int32Array)) {
        throw new TypeError(
          `write: an ${t.dtype} tensor needs ${
            t.dtype === "i32" ? "an Int32Array" : "a Float32Array or Float64Array"
          }, got ${src.constructor.name}`,
        );
      }
      a.set(src, offset);
    },
    read(t: Tensor): Promise<F | Int32Array> {
      // slice() copies into an ordinary (unshared) buffer of the same element type.
      return Promise.resolve(c.arr(t, "read", "t", 0).slice() as F | Int32Array);
    },
    hostView(t: Tensor): F | Int32Array {
      return c.arr(t, "hostView", "t", 0);
    },
    fill(t: Tensor, value: number): void {
      c.arr(t, "fill", "t", 0).fill(value);
    },
    copy(dst: Tensor, src: Tensor): void {
      const s = c.arr(src, "copy", "src", 0);
      const d = c.arr(dst, "copy", "dst", 0);
      if (d.length !== s.length || dst.dtype !== src.dtype) {
        throw new RangeError(
          `copy: dst (${dst.dtype}[${d.length}]) and src (${src.dtype}[${s.length}]) must match`,
        );
      }
      d.set(s);
    },
    dispose(): void {},
  };
}

/**
 * The arithmetic of a host backend's ops that differs between the host backends; the rest
 * ({@linkcode OpKernels}) {@linkcode hostOps} computes the same way for both. The cross-entropy
 * kernels check each target against `V` themselves (`checkTarget`).
 */
export type HostKernels<F extends Floats> = Omit<
  OpKernels<F, Int32Array>,
  "addRows" | "scale" | "embeddingForward" | "embeddingBackward"
>;

/** Every op of a host backend (all of `Backend` but the memory methods). */
export type HostOps = Ops;

/** The ops of the host backend whose checks are `c` and whose arithmetic is `k`. */
export function hostOps<F extends Floats>(c: HostChecks<F>, k: HostKernels<F>): HostOps {
  return checkedOps<F, Int32Array>({ sizes: size, f: c.f, ints: c.ints }, {
    ...k,
    addRows(O: F, R: F, M: number, N: number): void {
      for (let i = 0; i < M; i++) {
        const r = i * N;
        for (let j = 0; j < N; j++) O[r + j] += R[j];
      }
    },
    scale(X: F, alpha: number, n: number): void {
      for (let i = 0; i < n; i++) X[i] *= alpha;
    },
    embeddingForward(O: F, I: Int32Array, W: F, N: number, C: number, vocabStart: number): void {
      const rows = C === 0 ? 0 : Math.floor(W.length / C);
      for (let n = 0; n < N; n++) {
        const r = I[n] - vocabStart;
        if (r >= 0 && r < rows) O.set(W.subarray(r * C, r * C + C), n * C);
        else O.fill(0, n * C, n * C + C);
      }
    },
    embeddingBackward(D: F, G: F, I: Int32Array, N: number, C: number, vocabStart: number): void {
      const rows = C === 0 ? 0 : Math.floor(D.length / C);
      for (let n = 0; n < N; n++) {
        const r = I[n] - vocabStart;
        if (r < 0 || r >= rows) continue;
        const d0 = r * C, g0 = n * C;
        for (let c = 0; c < C; c++) D[d0 + c] += G[g0 + c];
      }
    },
  });
}
