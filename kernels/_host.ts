// Plumbing shared by the backends whose tensors are typed arrays in this process (the reference
// and the CPU backend): the tensor class, the argument checks, the memory methods and the ops
// that both compute the same way.

import type { HostArray, Tensor, TensorDType } from "./backend.ts";
import { checkedOps, type OpKernels, type Ops, type Role, size } from "./_checks.ts";
import { halfBits, type HalfDType, roundHalf, widenHalf } from "./half.ts";
import { ScratchPool } from "./_pool.ts";

/** The storage of `f32` tensors. */
export type Floats = Float32Array | Float64Array;

/** The storage of any host tensor of a backend whose `f32` storage is `F`. */
export type Storage<F extends Floats = Floats> = F | Int32Array | Uint16Array;

/** A tensor in host memory, tagged with the backend that made it. */
export class HostTensor<F extends Floats = Floats> implements Tensor {
  constructor(
    readonly data: Storage<F>,
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
  arr(t: Tensor, op: string, name: string, need: number): Storage<F>;
  /** As {@linkcode HostChecks.arr}, and `t` must be `f32`. */
  f(t: Tensor, op: string, name: string, need: number): F;
  /** As {@linkcode HostChecks.arr}, and `t` must be `i32`. */
  ints(t: Tensor, op: string, name: string, need: number): Int32Array;
  /** As `OpChecks.widen`: a 16-bit tensor as a widened scratch from the pool. */
  widen(t: Tensor, op: string, name: string, need: number, role: Role): F;
  /** As `OpChecks.narrow`. */
  narrow(t: Tensor, s: F, need: number): void;
  /** As `OpChecks.release`. */
  release(): void;
  /** Bytes held by the widening pool. */
  scratchBytes(): number;
  /** Wrap a host array as a tensor of this backend. */
  wrap(data: Storage<F>, dtype: TensorDType): Tensor;
  /** The backend's 16-bit conversions. */
  halves: HalfConversions;
}

/**
 * How a host backend converts between 16-bit bits and floats: `kernels/half.ts`'s
 * {@linkcode widenHalf} and {@linkcode roundHalf} unless the backend has faster ones with the
 * same results.
 */
export interface HalfConversions {
  /** As {@linkcode widenHalf}. */
  widen: typeof widenHalf;
  /** As {@linkcode roundHalf}. */
  round: typeof roundHalf;
}

/** Whether `d` is a 16-bit float dtype. */
export function isHalf(d: TensorDType): d is HalfDType {
  return d === "f16" || d === "bf16";
}

/**
 * The checks of the host backend called `backend` in error messages ("cpu", "reference"),
 * whose `f32` storage (and widening scratch) is made by `Float`.
 */
export function hostChecks<F extends Floats>(
  backend: string,
  Float: new (n: number) => F,
  halves: HalfConversions = { widen: widenHalf, round: roundHalf },
): HostChecks<F> {
  const arr = (t: Tensor, op: string, name: string, need: number): Storage<F> => {
    if (!(t instanceof HostTensor) || t.backend !== backend) {
      throw new TypeError(`${op}: ${name} is not a tensor of this ${backend} backend`);
    }
    if (t.data.length < need) {
      throw new RangeError(
        `${op}: ${name} has ${t.data.length} elements but the sizes given need ${need}`,
      );
    }
    return t.data as Storage<F>;
  };
  // 16 elements (64 bytes of float32) between runs: each run starts on a cache line.
  const pool = new ScratchPool<F>((n) => new Float(n), null, 16, new Float(0).BYTES_PER_ELEMENT);
  return {
    arr,
    f(t, op, name, need) {
      const a = arr(t, op, name, need);
      if (t.dtype !== "f32") {
        throw new TypeError(
          `${op}: ${name} must be a float tensor (f32, f16 or bf16), got an ${t.dtype} tensor`,
        );
      }
      return a as F;
    },
    ints(t, op, name, need) {
      const a = arr(t, op, name, need);
      if (t.dtype !== "i32") {
        throw new TypeError(`${op}: ${name} must be an i32 tensor, got an ${t.dtype} tensor`);
      }
      return a as Int32Array;
    },
    widen(t, op, name, need, role) {
      const a = arr(t, op, name, need) as Uint16Array;
      const at = pool.take(need);
      const s = pool.buffer.subarray(at, at + need) as F;
      if (role !== "out") {
        halves.widen(t.dtype as HalfDType, need === a.length ? a : a.subarray(0, need), s);
      }
      return s;
    },
    narrow(t, s, need) {
      halves.round(
        t.dtype as HalfDType,
        need === s.length ? s : s.subarray(0, need) as F,
        (t as HostTensor<F>).data as Uint16Array,
      );
    },
    halves,
    release: () => pool.release(),
    scratchBytes: () => pool.bytes,
    wrap: (data, dtype) => new HostTensor(data, dtype, backend),
  };
}

/** The memory methods of a host backend. */
export interface HostMemory<F extends Floats> {
  alloc(length: number, dtype?: TensorDType): Tensor;
  view(t: Tensor, offset: number, length: number): Tensor;
  write(t: Tensor, src: HostArray | Uint16Array, offset?: number): void;
  read(t: Tensor): Promise<F | Int32Array | Float32Array>;
  hostView(t: Tensor): Storage<F>;
  fill(t: Tensor, value: number): void;
  copy(dst: Tensor, src: Tensor): void;
  dispose(): void;
  scratchBytes(): number;
}

const DTYPES: readonly TensorDType[] = ["f32", "f16", "bf16", "i32"];

/** Elements per block of a copy between the two 16-bit types. */
const COPY_BLOCK = 4096;
const copyBlock = new Float32Array(COPY_BLOCK);

/** `dst = src` between float storages of equal length and different dtypes. */
function convert(
  h: HalfConversions,
  dd: TensorDType,
  d: Storage,
  sd: TensorDType,
  s: Storage,
): void {
  if (sd === "f32") return h.round(dd as HalfDType, s as Floats, d as Uint16Array);
  if (dd === "f32") return h.widen(sd as HalfDType, s as Uint16Array, d as Floats);
  // f16 <-> bf16 through float32, which holds every value of both exactly: one rounding.
  for (let i = 0; i < s.length; i += COPY_BLOCK) {
    const c = Math.min(COPY_BLOCK, s.length - i), t = copyBlock.subarray(0, c);
    h.widen(sd as HalfDType, (s as Uint16Array).subarray(i, i + c), t);
    h.round(dd as HalfDType, t, d as Uint16Array, i);
  }
}

/**
 * The memory methods of a host backend whose checks are `c`; `make` allocates the zeroed
 * storage of a new tensor (its length and dtype already checked; a `Uint16Array` for the 16-bit
 * types).
 */
export function hostMemory<F extends Floats>(
  c: HostChecks<F>,
  make: (length: number, dtype: TensorDType) => Storage<F>,
): HostMemory<F> {
  return {
    alloc(length: number, dtype: TensorDType = "f32"): Tensor {
      size("alloc", { length });
      if (!DTYPES.includes(dtype)) {
        throw new TypeError(
          `alloc: dtype must be "f32", "f16", "bf16" or "i32", got ${JSON.stringify(dtype)}`,
        );
      }
      return c.wrap(make(length, dtype), dtype);
    },
    view(t: Tensor, offset: number, length: number): Tensor {
      size("view", { offset, length });
      const a = c.arr(t, "view", "t", offset + length);
      return c.wrap(a.subarray(offset, offset + length) as Storage<F>, t.dtype);
    },
    write(t: Tensor, src: HostArray | Uint16Array, offset = 0): void {
      size("write", { offset });
      const a = c.arr(t, "write", "t", offset + src.length), d = t.dtype;
      const floats = src instanceof Float32Array || src instanceof Float64Array;
      if (d === "i32" ? src instanceof Int32Array : d === "f32" ? floats : false) {
        return a.set(src, offset);
      }
      if (isHalf(d) && floats) return c.halves.round(d, src, a as Uint16Array, offset);
      if (isHalf(d) && src instanceof Uint16Array) return a.set(src, offset);
      throw new TypeError(
        `write: an ${d} tensor needs ${
          d === "i32"
            ? "an Int32Array"
            : d === "f32"
            ? "a Float32Array or Float64Array"
            : "a Float32Array or Float64Array (rounded) or a Uint16Array (raw bits)"
        }, got ${src.constructor.name}`,
      );
    },
    read(t: Tensor): Promise<F | Int32Array | Float32Array> {
      const a = c.arr(t, "read", "t", 0);
      if (isHalf(t.dtype)) {
        const out = new Float32Array(a.length);
        c.halves.widen(t.dtype, a as Uint16Array, out);
        return Promise.resolve(out);
      }
      // slice() copies into an ordinary (unshared) buffer of the same element type.
      return Promise.resolve(a.slice() as F | Int32Array);
    },
    hostView(t: Tensor): Storage<F> {
      return c.arr(t, "hostView", "t", 0);
    },
    fill(t: Tensor, value: number): void {
      const a = c.arr(t, "fill", "t", 0);
      a.fill(isHalf(t.dtype) ? halfBits(t.dtype, value) : value);
    },
    copy(dst: Tensor, src: Tensor): void {
      const s = c.arr(src, "copy", "src", 0);
      const d = c.arr(dst, "copy", "dst", 0);
      if (d.length !== s.length) {
        throw new RangeError(
          `copy: dst (${dst.dtype}[${d.length}]) and src (${src.dtype}[${s.length}]) must have ` +
            `the same length`,
        );
      }
      if (dst.dtype === src.dtype) return d.set(s as F);
      if (dst.dtype === "i32" || src.dtype === "i32") {
        throw new TypeError(
          `copy: cannot copy an ${src.dtype} tensor into an ${dst.dtype} one; copy converts ` +
            `between the float dtypes (f32, f16, bf16) only`,
        );
      }
      convert(c.halves, dst.dtype, d, src.dtype, s);
    },
    dispose(): void {},
    scratchBytes: () => c.scratchBytes(),
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
  return checkedOps<F, Int32Array>({
    sizes: size,
    f: c.f,
    ints: c.ints,
    widen: c.widen,
    narrow: c.narrow,
    release: c.release,
  }, {
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
