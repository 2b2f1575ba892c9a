// The argument checks of every op, once for all backends: the sizes, the tensors each op reads and
// writes with the elements those sizes need, and the Backend defaults. How a tensor is checked
// (whose it is, where its elements live) is the backend's own business.

import type { AdamWParams, Backend, MatmulOptions, Tensor } from "./backend.ts";

/**
 * The checks of one backend; each throws with a message that names op and argument. `F` is what
 * a checked `f32` tensor becomes for its kernels, `I` a checked `i32` tensor.
 */
export interface OpChecks<F, I> {
  /** Throw a RangeError unless every size is one this backend can take. */
  sizes(op: string, s: Record<string, number>): void;
  /** The `f32` tensor `t` of this backend, holding at least `need` elements. */
  f(t: Tensor, op: string, name: string, need: number): F;
  /** The `i32` tensor `t` of this backend, holding at least `need` elements. */
  ints(t: Tensor, op: string, name: string, need: number): I;
}

/**
 * The arithmetic of a backend's ops. Each receives its tensors after {@linkcode checkedOps} has
 * checked the sizes, the tensors and their dtypes, with the {@linkcode Backend} op's defaults
 * filled in.
 */
export interface OpKernels<F, I> {
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
  addRows(O: F, R: F, M: number, N: number): void;
  add(O: F, A: F, B: F, n: number): void;
  axpy(Y: F, X: F, alpha: number, n: number): void;
  scale(X: F, alpha: number, n: number): void;
  sumSquares(O: F, X: F, n: number, accumulate: boolean): void;
  embeddingForward(O: F, I: I, W: F, N: number, C: number, vocabStart: number): void;
  embeddingBackward(D: F, G: F, I: I, N: number, C: number, vocabStart: number): void;
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
  crossEntropyForward(L: F, P: F, X: F, Tg: I, N: number, V: number): void;
  crossEntropyBackward(D: F, P: F, Tg: I, dloss: number, N: number, V: number): void;
  /** Runs after `checkAdamW`. */
  adamw(W: F, G: F, M: F, V: F, n: number, p: AdamWParams): void;
}

/** Every op of a backend (all of {@linkcode Backend} but the memory methods). */
export type Ops = Omit<
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

/** The ops of the backend whose checks are `c` and whose arithmetic is `k`. */
export function checkedOps<F, I>(c: OpChecks<F, I>, k: OpKernels<F, I>): Ops {
  const { sizes, f, ints } = c;
  const heads = (op: string, B: number, T: number, C: number, H: number): void => {
    sizes(op, { B, T, C, H });
    if (H === 0 || C % H !== 0) {
      throw new RangeError(`${op}: C (${C}) must be a multiple of the number of heads H (${H})`);
    }
  };
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
      sizes(op, { M, N, K });
      const C = f(out, op, "out", M * N), A = f(a, op, "a", M * K), B = f(b, op, "b", K * N);
      k.matmul(C, A, B, bias === null ? null : f(bias, op, "bias", N), M, N, K, o);
    },
    sumRows(out: Tensor, inp: Tensor, M: number, N: number, accumulate = false): void {
      sizes("sumRows", { M, N });
      const O = f(out, "sumRows", "out", N), X = f(inp, "sumRows", "inp", M * N);
      k.sumRows(O, X, M, N, accumulate);
    },
    addRows(out: Tensor, row: Tensor, M: number, N: number): void {
      sizes("addRows", { M, N });
      k.addRows(f(out, "addRows", "out", M * N), f(row, "addRows", "row", N), M, N);
    },
    add(out: Tensor, a: Tensor, b: Tensor, n: number): void {
      sizes("add", { n });
      const O = f(out, "add", "out", n), A = f(a, "add", "a", n), B = f(b, "add", "b", n);
      k.add(O, A, B, n);
    },
    axpy(y: Tensor, x: Tensor, alpha: number, n: number): void {
      sizes("axpy", { n });
      k.axpy(f(y, "axpy", "y", n), f(x, "axpy", "x", n), alpha, n);
    },
    scale(x: Tensor, alpha: number, n: number): void {
      sizes("scale", { n });
      k.scale(f(x, "scale", "x", n), alpha, n);
    },
    sumSquares(out: Tensor, x: Tensor, n: number, accumulate = false): void {
      sizes("sumSquares", { n });
      const O = f(out, "sumSquares", "out", 1), X = f(x, "sumSquares", "x", n);
      k.sumSquares(O, X, n, accumulate);
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
      sizes(op, { N, C });
      const O = f(out, op, "out", N * C), I = ints(idx, op, "idx", N);
      k.embeddingForward(O, I, f(table, op, "table", 0), N, C, vocabStart);
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
      sizes(op, { N, C });
      const D = f(dtable, op, "dtable", 0), G = f(dout, op, "dout", N * C);
      k.embeddingBackward(D, G, ints(idx, op, "idx", N), N, C, vocabStart);
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
      sizes(op, { N, C });
      const O = f(out, op, "out", N * C), Mu = f(mean, op, "mean", N), R = f(rstd, op, "rstd", N);
      const X = f(inp, op, "inp", N * C), Wt = f(w, op, "w", C), Bs = f(b, op, "b", C);
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
      sizes(op, { N, C });
      const DX = f(dinp, op, "dinp", N * C), DW = f(dw, op, "dw", C), DB = f(db, op, "db", C);
      const G = f(dout, op, "dout", N * C), X = f(inp, op, "inp", N * C), Wt = f(w, op, "w", C);
      const Mu = f(mean, op, "mean", N), R = f(rstd, op, "rstd", N);
      k.layernormBackward(DX, DW, DB, G, X, Wt, Mu, R, N, C);
    },
    geluForward(out: Tensor, inp: Tensor, n: number): void {
      sizes("geluForward", { n });
      k.geluForward(f(out, "geluForward", "out", n), f(inp, "geluForward", "inp", n), n);
    },
    geluBackward(dinp: Tensor, inp: Tensor, dout: Tensor, n: number): void {
      const op = "geluBackward";
      sizes(op, { n });
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
      heads(op, B, T, C, H);
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
      heads(op, B, T, C, H);
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
      sizes(op, { N, V });
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
      sizes(op, { N, V });
      const D = f(dlogits, op, "dlogits", N * V), P = f(probs, op, "probs", N * V);
      k.crossEntropyBackward(D, P, ints(targets, op, "targets", N), dloss, N, V);
    },
    adamw(param: Tensor, grad: Tensor, m: Tensor, v: Tensor, n: number, p: AdamWParams): void {
      const op = "adamw";
      sizes(op, { n });
      checkAdamW(p);
      const W = f(param, op, "param", n), G = f(grad, op, "grad", n);
      const Mm = f(m, op, "m", n), Vv = f(v, op, "v", n);
      k.adamw(W, G, Mm, Vv, n, p);
    },
  };
}

/** Throw a RangeError unless every size is a non-negative integer. */
export function size(op: string, sizes: Record<string, number>): void {
  for (const [k, v] of Object.entries(sizes)) {
    if (!Number.isInteger(v) || v < 0) {
      throw new RangeError(`${op}: ${k} must be a non-negative integer, got ${v}`);
    }
  }
}

/** Throw when a target is past the vocabulary. */
export function checkTarget(op: string, tg: number, n: number, V: number): void {
  if (tg >= V) {
    throw new RangeError(`${op}: targets[${n}] = ${tg} is outside the vocabulary [0, ${V})`);
  }
}

/** Throw on AdamW hyper-parameters that are not usable. */
export function checkAdamW(p: AdamWParams): void {
  if (!Number.isInteger(p.step) || p.step < 1) {
    throw new RangeError(`adamw: step must be an integer >= 1 (1-based), got ${p.step}`);
  }
  for (const k of ["lr", "beta1", "beta2", "eps", "weightDecay"] as const) {
    if (!Number.isFinite(p[k])) throw new RangeError(`adamw: ${k} must be finite, got ${p[k]}`);
  }
}
