// The argument checks of every op, once for all backends: the sizes, the tensors each op reads and
// writes with the elements those sizes need, and the Backend defaults. How a tensor is checked
// (whose it is, where its elements live) is the backend's own business.
//
// 16-bit float arguments are handled here once for every op and backend: each float argument
// says whether the op reads it ("in"), writes all of its first `need` elements ("out") or reads
// and writes them ("acc"). A 16-bit argument reaches the kernel as an f32 scratch from the
// backend's pool (widened first unless it is "out"); after the kernel every written scratch is
// rounded back into its tensor and the pool is released. f32 arguments pass straight through,
// so an op on f32 tensors alone runs the kernel exactly as before.

import type { AdamWParams, AttentionDropout, Backend, MatmulOptions, Tensor } from "./backend.ts";
import { dropoutThreshold } from "./dropout.ts";

/** How an op uses a float argument: reads it, writes all of it, or reads and writes it. */
export type Role = "in" | "out" | "acc";

/**
 * The checks of one backend; each throws with a message that names op and argument. `F` is what
 * a checked `f32` tensor becomes for its kernels, `I` a checked `i32` tensor.
 */
export interface OpChecks<F, I> {
  /** Throw a RangeError unless every size is one this backend can take. */
  sizes(op: string, s: Record<string, number>): void;
  /**
   * The `f32` tensor `t` of this backend, holding at least `need` elements (a TypeError for a
   * tensor that is not a float tensor).
   */
  f(t: Tensor, op: string, name: string, need: number): F;
  /** The `i32` tensor `t` of this backend, holding at least `need` elements. */
  ints(t: Tensor, op: string, name: string, need: number): I;
  /**
   * The 16-bit (`f16` or `bf16`) tensor `t` of this backend, holding at least `need` elements,
   * as an f32 scratch of `need` elements from the pool: its first `need` elements widened,
   * unless `role` is `"out"` (then the scratch holds anything; the kernel writes all of it).
   */
  widen(t: Tensor, op: string, name: string, need: number, role: Role): F;
  /** Round the first `need` elements of scratch `s` into the 16-bit tensor `t`. */
  narrow(t: Tensor, s: F, need: number): void;
  /** Every scratch taken since the last release may be reused. */
  release(): void;
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
  /** `drop` is undefined when there is no dropout (or p = 0). */
  attentionForward(
    O: F,
    A: F,
    Q: F,
    B: number,
    T: number,
    C: number,
    H: number,
    drop: AttentionDropout | undefined,
  ): void;
  /** `drop` is undefined when there is no dropout (or p = 0). */
  attentionCached(
    O: F,
    K: F,
    Q: F,
    B: number,
    T: number,
    past: number,
    capacity: number,
    C: number,
    H: number,
  ): void;
  attentionBackward(
    D: F,
    G: F,
    Q: F,
    A: F,
    B: number,
    T: number,
    C: number,
    H: number,
    drop: AttentionDropout | undefined,
  ): void;
  /** Runs after the checks of {@linkcode checkDropout}; O may alias X. */
  dropout(
    O: F,
    X: F,
    rows: number,
    cols: number,
    p: number,
    key: number,
    rowOffset: number,
    colOffset: number,
    fullCols: number,
  ): void;
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
  | "scratchBytes"
>;

/** The ops of the backend whose checks are `c` and whose arithmetic is `k`. */
export function checkedOps<F, I>(c: OpChecks<F, I>, k: OpKernels<F, I>): Ops {
  const { ints } = c;
  // The 16-bit arguments of the op being resolved that it writes, to round back after it.
  const outT: Tensor[] = [], outS: F[] = [], outN: number[] = [];
  let wide = false; // a 16-bit argument has taken scratch since the last release
  const reset = (): void => {
    outT.length = outS.length = outN.length = 0;
    wide = false;
    c.release();
  };
  // Every op checks its sizes first: an op that threw after widening leaves nothing behind.
  const sizes = (op: string, s: Record<string, number>): void => {
    if (wide) reset();
    c.sizes(op, s);
  };
  const f = (t: Tensor, op: string, name: string, need: number, role: Role = "in"): F => {
    const d = t.dtype;
    if (d !== "f16" && d !== "bf16") return c.f(t, op, name, need);
    wide = true;
    const s = c.widen(t, op, name, need, role);
    if (role !== "in") {
      outT.push(t);
      outS.push(s);
      outN.push(need);
    }
    return s;
  };
  // After the kernel: round the written 16-bit arguments back and release the pool.
  const done = (): void => {
    if (!wide) return;
    for (let i = 0; i < outT.length; i++) c.narrow(outT[i], outS[i], outN[i]);
    reset();
  };
  const heads = (op: string, B: number, T: number, C: number, H: number): void => {
    sizes(op, { B, T, C, H });
    if (H === 0 || C % H !== 0) {
      throw new RangeError(`${op}: C (${C}) must be a multiple of the number of heads H (${H})`);
    }
  };
  const written = (accumulate: boolean): Role => accumulate ? "acc" : "out";
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
      const C = f(out, op, "out", M * N, written(o.accumulate === true));
      const A = f(a, op, "a", M * K), B = f(b, op, "b", K * N);
      k.matmul(C, A, B, bias === null ? null : f(bias, op, "bias", N), M, N, K, o);
      done();
    },
    sumRows(out: Tensor, inp: Tensor, M: number, N: number, accumulate = false): void {
      sizes("sumRows", { M, N });
      const O = f(out, "sumRows", "out", N, written(accumulate));
      const X = f(inp, "sumRows", "inp", M * N);
      k.sumRows(O, X, M, N, accumulate);
      done();
    },
    addRows(out: Tensor, row: Tensor, M: number, N: number): void {
      sizes("addRows", { M, N });
      k.addRows(f(out, "addRows", "out", M * N, "acc"), f(row, "addRows", "row", N), M, N);
      done();
    },
    add(out: Tensor, a: Tensor, b: Tensor, n: number): void {
      sizes("add", { n });
      const O = f(out, "add", "out", n, "out"), A = f(a, "add", "a", n), B = f(b, "add", "b", n);
      k.add(O, A, B, n);
      done();
    },
    axpy(y: Tensor, x: Tensor, alpha: number, n: number): void {
      sizes("axpy", { n });
      k.axpy(f(y, "axpy", "y", n, "acc"), f(x, "axpy", "x", n), alpha, n);
      done();
    },
    scale(x: Tensor, alpha: number, n: number): void {
      sizes("scale", { n });
      k.scale(f(x, "scale", "x", n, "acc"), alpha, n);
      done();
    },
    sumSquares(out: Tensor, x: Tensor, n: number, accumulate = false): void {
      sizes("sumSquares", { n });
      const O = f(out, "sumSquares", "out", 1, written(accumulate));
      const X = f(x, "sumSquares", "x", n);
      k.sumSquares(O, X, n, accumulate);
      done();
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
      const O = f(out, op, "out", N * C, "out"), I = ints(idx, op, "idx", N);
      // The kernel takes the shard's rows from the whole table's length.
      k.embeddingForward(O, I, f(table, op, "table", table.length), N, C, vocabStart);
      done();
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
      const D = f(dtable, op, "dtable", dtable.length, "acc"), G = f(dout, op, "dout", N * C);
      k.embeddingBackward(D, G, ints(idx, op, "idx", N), N, C, vocabStart);
      done();
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
      const O = f(out, op, "out", N * C, "out"), Mu = f(mean, op, "mean", N, "out");
      const R = f(rstd, op, "rstd", N, "out");
      const X = f(inp, op, "inp", N * C), Wt = f(w, op, "w", C), Bs = f(b, op, "b", C);
      k.layernormForward(O, Mu, R, X, Wt, Bs, N, C, eps);
      done();
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
      const DX = f(dinp, op, "dinp", N * C, "acc"), DW = f(dw, op, "dw", C, "acc");
      const DB = f(db, op, "db", C, "acc");
      const G = f(dout, op, "dout", N * C), X = f(inp, op, "inp", N * C), Wt = f(w, op, "w", C);
      const Mu = f(mean, op, "mean", N), R = f(rstd, op, "rstd", N);
      k.layernormBackward(DX, DW, DB, G, X, Wt, Mu, R, N, C);
      done();
    },
    geluForward(out: Tensor, inp: Tensor, n: number): void {
      sizes("geluForward", { n });
      const O = f(out, "geluForward", "out", n, "out");
      k.geluForward(O, f(inp, "geluForward", "inp", n), n);
      done();
    },
    geluBackward(dinp: Tensor, inp: Tensor, dout: Tensor, n: number): void {
      const op = "geluBackward";
      sizes(op, { n });
      const D = f(dinp, op, "dinp", n, "acc"), X = f(inp, op, "inp", n);
      k.geluBackward(D, X, f(dout, op, "dout", n), n);
      done();
    },
    dropout(
      out: Tensor,
      inp: Tensor,
      rows: number,
      cols: number,
      p: number,
      key: number,
      rowOffset = 0,
      colOffset = 0,
      fullCols = cols,
    ): void {
      const op = "dropout";
      sizes(op, { rows, cols, rowOffset, colOffset, fullCols });
      checkDropout(rows, cols, p, key, rowOffset, colOffset, fullCols);
      const O = f(out, op, "out", rows * cols, "out"), X = f(inp, op, "inp", rows * cols);
      k.dropout(O, X, rows, cols, p, key, rowOffset, colOffset, fullCols);
      done();
    },
    attentionForward(
      out: Tensor,
      att: Tensor,
      qkv: Tensor,
      B: number,
      T: number,
      C: number,
      H: number,
      drop?: AttentionDropout,
    ): void {
      const op = "attentionForward";
      heads(op, B, T, C, H);
      const d = checkAttentionDropout(op, drop, B, T, H);
      const O = f(out, op, "out", B * T * C, "out"), A = f(att, op, "att", B * H * T * T, "out");
      const Q = f(qkv, op, "qkv", B * T * 3 * C);
      k.attentionForward(O, A, Q, B, T, C, H, d);
      done();
    },
    attentionCached(
      out: Tensor,
      cache: Tensor,
      qkv: Tensor,
      B: number,
      T: number,
      past: number,
      capacity: number,
      C: number,
      H: number,
    ): void {
      const op = "attentionCached";
      heads(op, B, T, C, H);
      sizes(op, { past, capacity });
      if (past + T > capacity) {
        throw new RangeError(
          `${op}: positions ${past}..${past + T - 1} do not fit a cache of ${capacity} ` +
            `positions: start again with past = 0 (the model's ctx bounds a sequence)`,
        );
      }
      const O = f(out, op, "out", B * T * C, "out");
      const K = f(cache, op, "cache", B * capacity * 2 * C, "acc");
      const Q = f(qkv, op, "qkv", B * T * 3 * C);
      k.attentionCached(O, K, Q, B, T, past, capacity, C, H);
      done();
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
      drop?: AttentionDropout,
    ): void {
      const op = "attentionBackward";
      heads(op, B, T, C, H);
      const d = checkAttentionDropout(op, drop, B, T, H);
      const D = f(dqkv, op, "dqkv", B * T * 3 * C, "acc"), G = f(dout, op, "dout", B * T * C);
      const Q = f(qkv, op, "qkv", B * T * 3 * C), A = f(att, op, "att", B * H * T * T);
      k.attentionBackward(D, G, Q, A, B, T, C, H, d);
      done();
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
      const L = f(losses, op, "losses", N, "out"), P = f(probs, op, "probs", N * V, "out");
      const X = f(logits, op, "logits", N * V), Tg = ints(targets, op, "targets", N);
      k.crossEntropyForward(L, P, X, Tg, N, V);
      done();
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
      const D = f(dlogits, op, "dlogits", N * V, "acc"), P = f(probs, op, "probs", N * V);
      k.crossEntropyBackward(D, P, ints(targets, op, "targets", N), dloss, N, V);
      done();
    },
    adamw(param: Tensor, grad: Tensor, m: Tensor, v: Tensor, n: number, p: AdamWParams): void {
      const op = "adamw";
      sizes(op, { n });
      checkAdamW(p);
      const W = f(param, op, "param", n, "acc"), G = f(grad, op, "grad", n);
      const Mm = f(m, op, "m", n, "acc"), Vv = f(v, op, "v", n, "acc");
      k.adamw(W, G, Mm, Vv, n, p);
      done();
    },
  };
}

/** Throw a RangeError unless `key` is an unsigned 32-bit integer. */
function checkKey(op: string, name: string, key: number): void {
  if (!Number.isInteger(key) || key < 0 || key > 0xffffffff) {
    throw new RangeError(`${op}: ${name} must be an unsigned 32-bit integer, got ${key}`);
  }
}

/** Throw on dropout arguments that are out of range (sizes are checked before). */
export function checkDropout(
  rows: number,
  cols: number,
  p: number,
  key: number,
  rowOffset: number,
  colOffset: number,
  fullCols: number,
): void {
  dropoutThreshold(p);
  checkKey("dropout", "key", key);
  if (colOffset + cols > fullCols) {
    throw new RangeError(
      `dropout: columns [${colOffset}, ${colOffset + cols}) do not fit a matrix of ` +
        `fullCols = ${fullCols}; pass the global matrix's column count as fullCols`,
    );
  }
  if (rows > 0 && cols > 0) {
    const last = (rowOffset + rows - 1) * fullCols + colOffset + cols - 1;
    if (last > 0xffffffff) {
      throw new RangeError(
        `dropout: global index ${last} exceeds 2^32 - 1; split the matrix and use a key per part`,
      );
    }
  }
}

/** The dropout of an attention call after its checks: undefined without dropout or at p = 0. */
export function checkAttentionDropout(
  op: string,
  drop: AttentionDropout | undefined,
  B: number,
  T: number,
  H: number,
): AttentionDropout | undefined {
  if (drop === undefined) return undefined;
  if (!(drop.p >= 0 && drop.p < 1)) {
    throw new RangeError(`${op}: drop.p must be in [0, 1), got ${drop.p}`);
  }
  checkKey(op, "drop.key", drop.key);
  const { seqOffset, headOffset, heads } = drop;
  size(op, { "drop.seqOffset": seqOffset, "drop.headOffset": headOffset, "drop.heads": heads });
  if (headOffset + H > heads) {
    throw new RangeError(
      `${op}: heads [${headOffset}, ${headOffset + H}) do not fit drop.heads = ${heads} ` +
        `(the number of heads across all tensor-parallel ranks)`,
    );
  }
  if (B > 0 && T > 0) {
    const last = (((seqOffset + B - 1) * heads + headOffset + H - 1) * T + T - 1) * T + T - 1;
    if (last > 0xffffffff) {
      throw new RangeError(`${op}: the dropout mask's global index ${last} exceeds 2^32 - 1`);
    }
  }
  return drop.p === 0 ? undefined : drop;
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
