// Plumbing shared by the backends whose tensors are typed arrays in this process (the reference
// and the CPU backend): the tensor class, the argument checks, the memory methods and the ops
// that both compute the same way.

import type {
  AdamWParams,
  Backend,
  HostArray,
  MatmulOptions,
  Tensor,
  TensorDType,
} from "./backend.ts";
import { checkAdamW, checkHeads, size } from "./_check.ts";

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
 * The arithmetic of a host backend's ops. Each receives the host arrays of its tensors after
 * {@linkcode hostOps} has checked the sizes, the tensors and their dtypes, with the
 * {@linkcode Backend} op's defaults filled in.
 */
export interface HostKernels<F extends Floats> {
  matmul(
    C: F,
    A: F,
    B: F,
    bias: F | null,
    M: number,
    N: number,
    K: number,
    o: MatmulOptions,
  ): void;
  sumRows(O: F, X: F, M: number, N: number, accumulate: boolean): void;
  add(O: F, A: F, B: F, n: number): void;
  axpy(Y: F, X: F, alpha: number, n: number): void;
  sumSquares(O: F, X: F, n: number, accumulate: boolean): void;
  layernormForward(O: F, Mu: F, R: F, X: F, Wt: F, Bs: F, N: number, C: number, eps: number): void;
  layernormBackward(
    DX: F,
    DW: F,
    DB: F,
    G: F,
    X: F,
    Wt: F,
    Mu: F,
    R: F,
    N: number,
    C: number,
  ): void;
  geluForward(O: F, X: F, n: number): void;
  geluBackward(D: F, X: F, G: F, n: number): void;
  attentionForward(O: F, A: F, Q: F, B: number, T: number, C: number, H: number): void;
  attentionBackward(D: F, G: F, Q: F, A: F, B: number, T: number, C: number, H: number): void;
  /** Checks each target against `V` itself (`checkTarget`). */
  crossEntropyForward(L: F, P: F, X: F, Tg: Int32Array, N: number, V: number): void;
  /** Checks each target against `V` itself (`checkTarget`). */
  crossEntropyBackward(D: F, P: F, Tg: Int32Array, dloss: number, N: number, V: number): void;
  /** Runs after `checkAdamW`. */
  adamw(W: F, G: F, M: F, V: F, n: number, p: AdamWParams): void;
}

/** Every op of a host backend (all of {@linkcode Backend} but the memory methods). */
export type HostOps = Omit<
  Backend,
  | "name"
  | "description"
  | "alloc"
  | "view"
  | "write"
  | "read"
  | "hostView"
  | "fill"
  | "copy"
  | "dispose"
>;

/** The ops of the host backend whose checks are `c` and whose arithmetic is `k`. */
export function hostOps<F extends Floats>(c: HostChecks<F>, k: HostKernels<F>): HostOps {
  const { f, ints } = c;
  return {
    matmul(
      out: Tensor,
      a: Tensor,
      b: Tensor,
      bias: Tensor | null,
      M: number,
      N: number,
      K: number,
      o: MatmulOptions = {},
    ): void {
      const op = "matmul";
      size(op, { M, N, K });
      const C = f(out, op, "out", M * N), A = f(a, op, "a", M * K), B = f(b, op, "b", K * N);
      k.matmul(C, A, B, bias === null ? null : f(bias, op, "bias", N), M, N, K, o);
    },
    sumRows(out: Tensor, inp: Tensor, M: number, N: number, accumulate = false): void {
      size("sumRows", { M, N });
      const O = f(out, "sumRows", "out", N), X = f(inp, "sumRows", "inp", M * N);
      k.sumRows(O, X, M, N, accumulate);
    },
    add(out: Tensor, a: Tensor, b: Tensor, n: number): void {
      size("add", { n });
      const O = f(out, "add", "out", n), A = f(a, "add", "a", n), B = f(b, "add", "b", n);
      k.add(O, A, B, n);
    },
    axpy(y: Tensor, x: Tensor, alpha: number, n: number): void {
      size("axpy", { n });
      k.axpy(f(y, "axpy", "y", n), f(x, "axpy", "x", n), alpha, n);
    },
    sumSquares(out: Tensor, x: Tensor, n: number, accumulate = false): void {
      size("sumSquares", { n });
      const O = f(out, "sumSquares", "out", 1), X = f(x, "sumSquares", "x", n);
      k.sumSquares(O, X, n, accumulate);
    },
    layernormForward(
      out: Tensor,
      mean: Tensor,
      rstd: Tensor,
      inp: Tensor,
      w: Tensor,
      b: Tensor,
      N: number,
      C: number,
      eps = 1e-5,
    ): void {
      const op = "layernormForward";
      size(op, { N, C });
      const O = f(out, op, "out", N * C), X = f(inp, op, "inp", N * C);
      const Mu = f(mean, op, "mean", N), R = f(rstd, op, "rstd", N);
      const Wt = f(w, op, "w", C), Bs = f(b, op, "b", C);
      k.layernormForward(O, Mu, R, X, Wt, Bs, N, C, eps);
    },
    layernormBackward(
      dinp: Tensor,
      dw: Tensor,
      db: Tensor,
      dout: Tensor,
      inp: Tensor,
      w: Tensor,
      mean: Tensor,
      rstd: Tensor,
      N: number,
      C: number,
    ): void {
      const op = "layernormBackward";
      size(op, { N, C });
      const DX = f(dinp, op, "dinp", N * C), DW = f(dw, op, "dw", C), DB = f(db, op, "db", C);
      const G = f(dout, op, "dout", N * C), X = f(inp, op, "inp", N * C), Wt = f(w, op, "w", C);
      const Mu = f(mean, op, "mean", N), R = f(rstd, op, "rstd", N);
      k.layernormBackward(DX, DW, DB, G, X, Wt, Mu, R, N, C);
    },
    geluForward(out: Tensor, inp: Tensor, n: number): void {
      size("geluForward", { n });
      k.geluForward(f(out, "geluForward", "out", n), f(inp, "geluForward", "inp", n), n);
    },
    geluBackward(dinp: Tensor, inp: Tensor, dout: Tensor, n: number): void {
      const op = "geluBackward";
      size(op, { n });
      const D = f(dinp, op, "dinp", n), X = f(inp, op, "inp", n), G = f(dout, op, "dout", n);
      k.geluBackward(D, X, G, n);
    },
    attentionForward(
      out: Tensor,
      att: Tensor,
      qkv: Tensor,
      B: number,
      T: number,
      C: number,
      H: number,
    ): void {
      const op = "attentionForward";
      checkHeads(op, B, T, C, H);
      const O = f(out, op, "out", B * T * C), A = f(att, op, "att", B * H * T * T);
      const Q = f(qkv, op, "qkv", B * T * 3 * C);
      k.attentionForward(O, A, Q, B, T, C, H);
    },
    attentionBackward(
      dqkv: Tensor,
      dout: Tensor,
      qkv: Tensor,
      att: Tensor,
      B: number,
      T: number,
      C: number,
      H: number,
    ): void {
      const op = "attentionBackward";
      checkHeads(op, B, T, C, H);
      const D = f(dqkv, op, "dqkv", B * T * 3 * C), G = f(dout, op, "dout", B * T * C);
      const Q = f(qkv, op, "qkv", B * T * 3 * C), A = f(att, op, "att", B * H * T * T);
      k.attentionBackward(D, G, Q, A, B, T, C, H);
    },
    crossEntropyForward(
      losses: Tensor,
      probs: Tensor,
      logits: Tensor,
      targets: Tensor,
      N: number,
      V: number,
    ): void {
      const op = "crossEntropyForward";
      size(op, { N, V });
      const L = f(losses, op, "losses", N), P = f(probs, op, "probs", N * V);
      const X = f(logits, op, "logits", N * V), Tg = ints(targets, op, "targets", N);
      k.crossEntropyForward(L, P, X, Tg, N, V);
    },
    crossEntropyBackward(
      dlogits: Tensor,
      probs: Tensor,
      targets: Tensor,
      dloss: number,
      N: number,
      V: number,
    ): void {
      const op = "crossEntropyBackward";
      size(op, { N, V });
      const D = f(dlogits, op, "dlogits", N * V), P = f(probs, op, "probs", N * V);
      k.crossEntropyBackward(D, P, ints(targets, op, "targets", N), dloss, N, V);
    },
    adamw(param: Tensor, grad: Tensor, m: Tensor, v: Tensor, n: number, p: AdamWParams): void {
      const op = "adamw";
      size(op, { n });
      checkAdamW(p);
      const W = f(param, op, "param", n), G = f(grad, op, "grad", n);
      const Mm = f(m, op, "m", n), Vv = f(v, op, "v", n);
      k.adamw(W, G, Mm, Vv, n, p);
    },

    addRows(out: Tensor, row: Tensor, M: number, N: number): void {
      size("addRows", { M, N });
      const O = f(out, "addRows", "out", M * N), R = f(row, "addRows", "row", N);
      for (let i = 0; i < M; i++) {
        const r = i * N;
        for (let j = 0; j < N; j++) O[r + j] += R[j];
      }
    },
    scale(x: Tensor, alpha: number, n: number): void {
      size("scale", { n });
      const X = f(x, "scale", "x", n);
      for (let i = 0; i < n; i++) X[i] *= alpha;
    },
    embeddingForward(
      out: Tensor,
      idx: Tensor,
      table: Tensor,
      N: number,
      C: number,
      vocabStart = 0,
    ): void {
      const op = "embeddingForward";
      size(op, { N, C });
      const O = f(out, op, "out", N * C), I = ints(idx, op, "idx", N);
      const W = f(table, op, "table", 0);
      const rows = C === 0 ? 0 : Math.floor(W.length / C);
      for (let n = 0; n < N; n++) {
        const r = I[n] - vocabStart;
        if (r >= 0 && r < rows) O.set(W.subarray(r * C, r * C + C), n * C);
        else O.fill(0, n * C, n * C + C);
      }
    },
    embeddingBackward(
      dtable: Tensor,
      dout: Tensor,
      idx: Tensor,
      N: number,
      C: number,
      vocabStart = 0,
    ): void {
      const op = "embeddingBackward";
      size(op, { N, C });
      const D = f(dtable, op, "dtable", 0), G = f(dout, op, "dout", N * C);
      const I = ints(idx, op, "idx", N);
      const rows = C === 0 ? 0 : Math.floor(D.length / C);
      for (let n = 0; n < N; n++) {
        const r = I[n] - vocabStart;
        if (r < 0 || r >= rows) continue;
        const d0 = r * C, g0 = n * C;
        for (let c = 0; c < C; c++) D[d0 + c] += G[g0 + c];
      }
    },
  };
}
