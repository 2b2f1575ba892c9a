/**
 * The WebAssembly SIMD module of the CPU backend's element-wise and row ops (GELU, AdamW,
 * a x + b y, sums of squares, row sums, layernorm, the softmax of attention and cross-entropy
 * rows and its backward), generated at start-up with relaxed fused multiply-add where the
 * engine validates it. Every function works on float32 arrays at byte addresses in the
 * module's memory; the caller copies operands in and results out in chunks that stay in cache
 * (or, for attention, lets the GEMM read and write there).
 *
 * Vector loops run over whole groups of four lanes: element-wise ops may compute up to three
 * lanes past `n` (the caller leaves room and ignores them); row ops take rows whose stride is
 * a multiple of 4, mask the lanes past a row's used length in their sums, and store whole
 * vectors up to the row length rounded up to 4.
 *
 * @module
 */

import { Code, F32, I32, ModuleBuilder, V128 } from "../../wasm/encode.ts";

/** Whether this engine validates `f32x4.relaxed_madd` (the relaxed SIMD proposal). */
export { hasRelaxedSimd as hasRelaxedMadd } from "../../wasm/encode.ts";

/**
 * The instruction writer with this module's conventions: vector loads and stores with no
 * alignment hint, splatted constants in locals, fused or separate multiply-add, and loops.
 */
class Asm extends Code {
  /** Splatted constants, held in locals numbered from `firstConst` and set on entry. */
  #consts = new Map<number, number>();
  constructor(readonly fma: boolean, readonly firstConst: number) {
    super();
  }

  /** The function: the constants' set-up, then the body; their locals after `locals`. */
  finish(params: number[], locals: number[]) {
    if (params.length + locals.length !== this.firstConst) {
      throw new Error("Asm: constants must follow the declared locals");
    }
    const pre = new Code();
    for (const [v, i] of this.#consts) pre.f32x4Const(v, v, v, v).set(i);
    return {
      params,
      locals: [...locals, ...new Array(this.#consts.size).fill(V128)],
      body: [...pre.bytes, ...this.bytes],
    };
  }

  /** `v128.load` at the address plus `offset` bytes. */
  load(offset = 0): this {
    return this.v128Load(offset, 0);
  }
  /** `v128.store` at the address plus `offset` bytes. */
  store(offset = 0): this {
    return this.v128Store(offset, 0);
  }
  /** Four equal f32 lanes, from a local set on entry. */
  splat(v: number): this {
    const key = Math.fround(v);
    let i = this.#consts.get(key);
    if (i === undefined) this.#consts.set(key, i = this.firstConst + this.#consts.size);
    return this.get(i);
  }
  /** The v128 constant of lanes 0, 1, 2, 3 (i32). */
  iota(): this {
    return this.i32x4Const(0, 1, 2, 3);
  }
  /** a * b + c for the three pushes given (fused when the engine has relaxed SIMD). */
  madd(a: () => void, b: () => void, c: () => void): this {
    a();
    b();
    if (this.fma) {
      c();
      return this.f32x4RelaxedMadd();
    }
    this.f32x4Mul();
    c();
    return this.f32x4Add();
  }
  /** Horner's rule: coefficients from the highest power down, in `t` (a v128 local). */
  poly(t: number, cs: number[]): this {
    this.splat(cs[0]);
    for (let i = 1; i < cs.length; i++) {
      this.madd(() => {}, () => this.get(t), () => this.splat(cs[i]));
    }
    return this;
  }
  /** Horizontal sum of the v128 on the stack into an f32, through local `tmp`. */
  hsum(tmp: number): this {
    return this.#across(tmp, () => this.f32Add());
  }
  /** Horizontal maximum (NaN lanes ignored where the others are larger). */
  hmax(tmp: number): this {
    return this.#across(tmp, () => this.f32Max());
  }
  /** Folds the four lanes of the v128 on the stack with `op`, left to right, through `tmp`. */
  #across(tmp: number, op: () => void): this {
    this.set(tmp).get(tmp).f32x4ExtractLane(0);
    for (let lane = 1; lane < 4; lane++) {
      this.get(tmp).f32x4ExtractLane(lane);
      op();
    }
    return this;
  }
  /** `for (i = 0; i < n; i += step) body` over i32 locals; n <= 0 runs nothing. */
  forUp(i: number, n: () => void, step: number, body: () => void): this {
    this.i32(0).set(i);
    this.block();
    this.get(i);
    n();
    this.geS().brIf(0);
    this.loop();
    body();
    this.get(i).i32(step).add().tee(i);
    n();
    this.ltS().brIf(0);
    this.end().end();
    return this;
  }
}

const GELU_K = Math.sqrt(2 / Math.PI);
/** Pushes exp(x) for the v128 local `x`, x <= 88 (clamped below at -87.3); `k` is scratch. */
function exp(a: Asm, x: number, k: number): void {
  a.get(x).splat(-87.3).f32x4Pmax().tee(x).splat(Math.LOG2E).f32x4Mul().f32x4Nearest().set(k);
  // r = x - k ln2 in two parts (the high part is exact in float32).
  a.madd(() => a.get(k), () => a.splat(-0.693359375), () => a.get(x));
  a.set(x);
  a.madd(() => a.get(k), () => a.splat(2.12194440e-4), () => a.get(x));
  a.set(x);
  a.poly(x, [1 / 720, 1 / 120, 1 / 24, 1 / 6, 1 / 2, 1, 1]);
  a.get(k).i32x4TruncSatF32x4S().i32(127).i32x4Splat().i32x4Add().i32(23).i32x4Shl().f32x4Mul();
}

/** Byte offset of element i (i32 local) from base (i32 local). */
function at(a: Asm, base: number, i: number): Asm {
  return a.get(base).get(i).i32(2).shl().add();
}

/** Lanes j..j+3 below `lim` (i32 locals) as an i32x4 mask. */
function below(a: Asm, j: number, lim: number): Asm {
  return a.get(j).i32x4Splat().iota().i32x4Add().get(lim).i32x4Splat().i32x4LtS();
}

/** Coefficients of 2^f = exp(f ln 2) on |f| <= 1/2, degree 6, highest first (error < 2e-7). */
const EXP2_POLY = [6, 5, 4, 3, 2, 1, 0].map((n) => Math.LN2 ** n / [1, 1, 2, 6, 24, 120, 720][n]);

/**
 * Pushes e = exp(-2u) for u = K x (1 + 0.044715 x^2), from the v128 locals `x` and `x2` = x^2,
 * with the exponent clamped to 2^+-126 (then tanh(u) = (1 - e) / (1 + e) and
 * 0.5 (1 + tanh(u)) = 1 / (1 + e)); `z` and `k` are scratch.
 */
function expMinus2u(a: Asm, x: number, x2: number, z: number, k: number): void {
  const c0 = -2 * GELU_K * Math.LOG2E, c1 = c0 * 0.044715;
  a.madd(() => a.get(x2), () => a.splat(c1), () => a.splat(c0));
  a.get(x).f32x4Mul().splat(-126).f32x4Pmax().splat(126).f32x4Pmin().tee(z).f32x4Nearest().set(k);
  a.get(z).get(k).f32x4Sub().set(z);
  a.poly(z, EXP2_POLY);
  a.get(k).i32x4TruncSatF32x4S().i32(127).i32x4Splat().i32x4Add().i32(23).i32x4Shl().f32x4Mul();
}

function geluForward(fma: boolean) {
  // (x, o, n): o[i] = gelu(x[i]) = x / (1 + exp(-2u)) for i < n rounded up to 4.
  const X = 0, O = 1, N = 2, I = 3, V = 4, X2 = 5, Z = 6, K = 7;
  const a = new Asm(fma, 8);
  a.forUp(I, () => a.get(N), 4, () => {
    at(a, O, I);
    at(a, X, I).load().tee(V).get(V).f32x4Mul().set(X2);
    a.get(V);
    expMinus2u(a, V, X2, Z, K);
    a.splat(1).f32x4Add().f32x4Div();
    a.store();
  });
  return a.finish([I32, I32, I32], [I32, V128, V128, V128, V128]);
}

function geluBackward(fma: boolean) {
  // (x, g, d, n): d[i] += gelu'(x[i]) g[i]; with s = 1 / (1 + exp(-2u)),
  // gelu' = s + x s (1 - s) 2K (1 + 0.134145 x^2).
  const X = 0, G = 1, D = 2, N = 3, I = 4, V = 5, X2 = 6, Z = 7, K = 8, S = 9;
  const a = new Asm(fma, 10);
  a.forUp(I, () => a.get(N), 4, () => {
    at(a, X, I).load().tee(V).get(V).f32x4Mul().set(X2);
    a.splat(1);
    expMinus2u(a, V, X2, Z, K);
    a.splat(1).f32x4Add().f32x4Div().set(S);
    at(a, D, I);
    a.get(V).get(S).f32x4Mul().splat(1).get(S).f32x4Sub().f32x4Mul();
    a.madd(() => a.get(X2), () => a.splat(2 * GELU_K * 0.134145), () => a.splat(2 * GELU_K));
    a.f32x4Mul().get(S).f32x4Add();
    at(a, G, I).load();
    a.madd(() => {}, () => {}, () => at(a, D, I).load());
    a.store();
  });
  return a.finish([I32, I32, I32, I32], [I32, V128, V128, V128, V128, V128]);
}

function adamw(fma: boolean) {
  // (w, g, m, v, n, beta1, beta2, 1-beta1, 1-beta2, c1, c2, lr, eps, wd)
  const W = 0, G = 1, M = 2, VV = 3, N = 4;
  const P0 = 5; // 9 f32 params
  const I = 14, GV = 15, MI = 16, VI = 17, S = 18; // S..S+8: the params splatted
  const a = new Asm(fma, 27);
  for (let k = 0; k < 9; k++) a.get(P0 + k).f32x4Splat().set(S + k);
  const [B1, B2, OB1, OB2, C1, C2, LR, EPS, WD] = [0, 1, 2, 3, 4, 5, 6, 7, 8].map((k) => S + k);
  a.forUp(I, () => a.get(N), 4, () => {
    at(a, G, I).load().set(GV);
    at(a, M, I);
    a.get(GV).get(OB1).f32x4Mul();
    at(a, M, I).load().get(B1).f32x4Mul().f32x4Add().tee(MI);
    a.store();
    at(a, VV, I);
    a.get(GV).get(GV).f32x4Mul().get(OB2).f32x4Mul();
    at(a, VV, I).load().get(B2).f32x4Mul().f32x4Add().tee(VI);
    a.store();
    at(a, W, I);
    at(a, W, I).load();
    a.get(MI).get(C1).f32x4Mul();
    a.get(VI).get(C2).f32x4Mul().f32x4Sqrt().get(EPS).f32x4Add().f32x4Div();
    at(a, W, I).load().get(WD).f32x4Mul().f32x4Add();
    a.get(LR).f32x4Mul().f32x4Sub();
    a.store();
  });
  return a.finish(
    [I32, I32, I32, I32, I32, F32, F32, F32, F32, F32, F32, F32, F32, F32],
    [I32, V128, V128, V128, ...new Array(9).fill(V128)],
  );
}

/** Pushes the i32 L = min(t0 + r + 1, T) of a causal row (locals). */
function causalLength(a: Asm, t0: number, r: number, T: number): void {
  a.get(t0).get(r).add().i32(1).add();
  a.get(T);
  a.get(t0).get(r).add().i32(1).add().get(T).ltS().select();
}

/** `for (j = from; j < to; j += 4) store zeros` at row `row` (i32 locals). */
function zeroTail(a: Asm, row: number, j: number, to: number): void {
  a.block();
  a.get(j).get(to).geS().brIf(0);
  a.loop();
  at(a, row, j).splat(0).store();
  a.get(j).i32(4).add().tee(j).get(to).ltS().brIf(0);
  a.end().end();
}

function softmaxRows(fma: boolean) {
  // (p, rows, T, stride, t0, causal, stats): in place over rows of T entries, `stride` (a
  // multiple of 4) apart, at p; row r uses its first L = causal ? min(t0 + r + 1, T) : T
  // entries and zeroes the rest up to T rounded up to 4; stats[2r] = max, stats[2r + 1] = sum
  // of exponentials.
  const P = 0, ROWS = 1, TT = 2, SD = 3, T0 = 4, CAUSAL = 5, ST = 6;
  const R = 7, L = 8, J = 9, ROW = 10, MAXV = 11, SUMV = 12, XV = 13, KV = 14, MSK = 15;
  const TMP = 16, MX = 17;
  const a = new Asm(fma, 18);
  a.forUp(R, () => a.get(ROWS), 1, () => {
    a.get(P).get(R).get(SD).mul().i32(2).shl().add().set(ROW);
    causalLength(a, T0, R, TT);
    a.get(TT).get(CAUSAL).select().set(L);
    a.splat(-Infinity).set(MAXV);
    a.forUp(J, () => a.get(L), 4, () => {
      at(a, ROW, J).load().splat(-Infinity);
      below(a, J, L).v128Bitselect();
      a.get(MAXV).f32x4Pmax().set(MAXV);
    });
    a.get(MAXV).hmax(TMP).tee(MX).f32x4Splat().set(MAXV);
    a.splat(0).set(SUMV);
    a.forUp(J, () => a.get(L), 4, () => {
      below(a, J, L).set(MSK);
      at(a, ROW, J).load().get(MAXV).f32x4Sub().set(XV);
      exp(a, XV, KV);
      a.get(MSK).v128And().set(XV);
      a.get(XV).get(SUMV).f32x4Add().set(SUMV);
      at(a, ROW, J).get(XV).store();
    });
    a.get(ST).get(R).i32(3).shl().add().get(MX).f32Store();
    a.get(ST).get(R).i32(3).shl().add();
    a.get(SUMV).hsum(TMP).f32Store(4);
    a.f32(1).get(ST).get(R).i32(3).shl().add().f32Load(4).f32Div().f32x4Splat().set(SUMV);
    a.forUp(J, () => a.get(L), 4, () => {
      at(a, ROW, J);
      at(a, ROW, J).load().get(SUMV).f32x4Mul().store();
    });
    zeroTail(a, ROW, J, TT);
  });
  return a.finish(
    [I32, I32, I32, I32, I32, I32, I32],
    [I32, I32, I32, I32, V128, V128, V128, V128, V128, V128, F32],
  );
}

function softmaxBackwardRows(fma: boolean) {
  // (a, s, rows, T, stride, t0, scale): causal rows `stride` (a multiple of 4) apart;
  // s = scale * a * (s - sum(a * s)) on each row's first L = t0 + r + 1 entries, zero on the
  // rest up to T rounded up to 4.
  const A = 0, S = 1, ROWS = 2, TT = 3, SD = 4, T0 = 5, SC = 6;
  const R = 7, L = 8, J = 9, AR = 10, SR = 11, DOT = 12, TMP = 13, SCV = 14;
  const a = new Asm(fma, 15);
  a.get(SC).f32x4Splat().set(SCV);
  a.forUp(R, () => a.get(ROWS), 1, () => {
    a.get(R).get(SD).mul().i32(2).shl().tee(SR).get(A).add().set(AR);
    a.get(SR).get(S).add().set(SR);
    causalLength(a, T0, R, TT);
    a.set(L);
    a.splat(0).set(DOT);
    a.forUp(J, () => a.get(L), 4, () => {
      at(a, AR, J).load();
      at(a, SR, J).load().f32x4Mul();
      below(a, J, L).v128And();
      a.get(DOT).f32x4Add().set(DOT);
    });
    a.get(DOT).hsum(TMP).f32x4Splat().set(DOT);
    a.forUp(J, () => a.get(L), 4, () => {
      at(a, SR, J);
      at(a, SR, J).load().get(DOT).f32x4Sub();
      at(a, AR, J).load().f32x4Mul().get(SCV).f32x4Mul();
      below(a, J, L).v128And();
      a.store();
    });
    zeroTail(a, SR, J, TT);
  });
  return a.finish(
    [I32, I32, I32, I32, I32, I32, F32],
    [I32, I32, I32, I32, I32, V128, V128, V128],
  );
}

function layernormForward(fma: boolean) {
  // (x, o, st, w, b, rows, C, eps): C a multiple of 4; st[2r] = mean, st[2r + 1] = rstd.
  const X = 0, O = 1, ST = 2, WT = 3, BS = 4, ROWS = 5, CC = 6, EPS = 7;
  const R = 8, J = 9, XR = 10, OR = 11, ACC = 12, MV = 13, RV = 14, TMP = 15, MS = 16, RS = 17;
  const a = new Asm(fma, 18);
  a.forUp(R, () => a.get(ROWS), 1, () => {
    a.get(R).get(CC).mul().i32(2).shl().tee(XR).get(O).add().set(OR);
    a.get(XR).get(X).add().set(XR);
    a.splat(0).set(ACC);
    a.forUp(J, () => a.get(CC), 4, () => {
      at(a, XR, J).load().get(ACC).f32x4Add().set(ACC);
    });
    a.get(ACC).hsum(TMP).get(CC).f32ConvertI32S().f32Div().tee(MS).f32x4Splat().set(MV);
    a.splat(0).set(ACC);
    a.forUp(J, () => a.get(CC), 4, () => {
      at(a, XR, J).load().get(MV).f32x4Sub().tee(TMP);
      a.madd(() => a.get(TMP), () => {}, () => a.get(ACC));
      a.set(ACC);
    });
    a.f32(1).get(ACC).hsum(TMP).get(CC).f32ConvertI32S().f32Div().get(EPS).f32Add().f32Sqrt()
      .f32Div();
    a.tee(RS).f32x4Splat().set(RV);
    a.forUp(J, () => a.get(CC), 4, () => {
      at(a, OR, J);
      at(a, XR, J).load().get(MV).f32x4Sub().get(RV).f32x4Mul();
      a.madd(() => {}, () => at(a, WT, J).load(), () => at(a, BS, J).load());
      a.store();
    });
    a.get(ST).get(R).i32(3).shl().add().get(MS).f32Store();
    a.get(ST).get(R).i32(3).shl().add().get(RS).f32Store(4);
  });
  return a.finish(
    [I32, I32, I32, I32, I32, I32, I32, F32],
    [I32, I32, I32, I32, V128, V128, V128, V128, F32, F32],
  );
}

function layernormBackward(fma: boolean) {
  // (dx, dw, db, g, x, w, st, rows, C): C a multiple of 4; st as layernormForward writes it.
  const DX = 0, DW = 1, DB = 2, G = 3, X = 4, WT = 5, ST = 6, ROWS = 7, CC = 8;
  const R = 9, J = 10, OFF = 11, GM = 12, GX = 13, MV = 14, RV = 15, TMP = 16, GV = 17, XH = 18;
  const a = new Asm(fma, 19);
  a.forUp(R, () => a.get(ROWS), 1, () => {
    a.get(R).get(CC).mul().i32(2).shl().set(OFF);
    a.get(ST).get(R).i32(3).shl().add().f32Load().f32x4Splat().set(MV);
    a.get(ST).get(R).i32(3).shl().add().f32Load(4).f32x4Splat().set(RV);
    a.splat(0).set(GM).splat(0).set(GX);
    a.forUp(J, () => a.get(CC), 4, () => {
      a.get(G).get(OFF).add().get(J).i32(2).shl().add().load();
      at(a, WT, J).load().f32x4Mul().tee(GV).get(GM).f32x4Add().set(GM);
      a.get(X).get(OFF).add().get(J).i32(2).shl().add().load().get(MV).f32x4Sub().get(RV)
        .f32x4Mul();
      a.madd(() => a.get(GV), () => {}, () => a.get(GX));
      a.set(GX);
    });
    a.get(GM).hsum(TMP).get(CC).f32ConvertI32S().f32Div().f32x4Splat().set(GM);
    a.get(GX).hsum(TMP).get(CC).f32ConvertI32S().f32Div().f32x4Splat().set(GX);
    a.forUp(J, () => a.get(CC), 4, () => {
      a.get(X).get(OFF).add().get(J).i32(2).shl().add().load().get(MV).f32x4Sub().get(RV).f32x4Mul()
        .set(XH);
      a.get(G).get(OFF).add().get(J).i32(2).shl().add().load().set(GV);
      // dx += r (g w - gMean - xhat gxMean)
      a.get(DX).get(OFF).add().get(J).i32(2).shl().add();
      a.get(GV);
      at(a, WT, J).load().f32x4Mul().get(GM).f32x4Sub().get(XH).get(GX).f32x4Mul().f32x4Sub().get(
        RV,
      ).f32x4Mul();
      a.get(DX).get(OFF).add().get(J).i32(2).shl().add().load().f32x4Add().store();
      at(a, DW, J);
      a.madd(() => a.get(GV), () => a.get(XH), () => at(a, DW, J).load());
      a.store();
      at(a, DB, J);
      a.get(GV);
      at(a, DB, J).load().f32x4Add().store();
    });
  });
  return a.finish(
    [I32, I32, I32, I32, I32, I32, I32, I32, I32],
    [I32, I32, I32, V128, V128, V128, V128, V128, V128, V128],
  );
}

function sumRows(fma: boolean) {
  // (x, acc, rows, N): acc[j] += sum over rows of x[r, j]; N a multiple of 4.
  const X = 0, ACC = 1, ROWS = 2, N = 3, R = 4, J = 5, XR = 6;
  const a = new Asm(fma, 7);
  a.get(X).set(XR);
  a.forUp(R, () => a.get(ROWS), 1, () => {
    a.forUp(J, () => a.get(N), 4, () => {
      at(a, ACC, J);
      at(a, XR, J).load();
      at(a, ACC, J).load().f32x4Add().store();
    });
    a.get(XR).get(N).i32(2).shl().add().set(XR);
  });
  return a.finish([I32, I32, I32, I32], [I32, I32, I32]);
}

function sumSquares(fma: boolean) {
  // (x, n, out): out = sum of x[i]^2 over i < n rounded up to 4, in two vector accumulators.
  const X = 0, N = 1, OUT = 2, I = 3, A0 = 4, A1 = 5, V = 6, TMP = 7;
  const a = new Asm(fma, 8);
  a.splat(0).set(A0).splat(0).set(A1);
  a.forUp(I, () => a.get(N), 8, () => {
    at(a, X, I).load().tee(V);
    a.madd(() => a.get(V), () => {}, () => a.get(A0));
    a.set(A0);
    at(a, X, I).load(16).tee(V);
    a.madd(() => a.get(V), () => {}, () => a.get(A1));
    a.set(A1);
  });
  a.get(OUT).get(A0).get(A1).f32x4Add().hsum(TMP).f32Store();
  return a.finish([I32, I32, I32], [I32, V128, V128, V128, V128]);
}

function addScaled(fma: boolean) {
  // (x, y, o, n, alpha, beta): o[i] = alpha x[i] + beta y[i] for i < n rounded up to 4.
  const X = 0, Y = 1, O = 2, N = 3, AL = 4, BE = 5, I = 6, AV = 7, BV = 8;
  const a = new Asm(fma, 9);
  a.get(AL).f32x4Splat().set(AV).get(BE).f32x4Splat().set(BV);
  a.forUp(I, () => a.get(N), 4, () => {
    at(a, O, I);
    a.madd(() => at(a, Y, I).load(), () => a.get(BV), () => at(a, X, I).load().get(AV).f32x4Mul());
    a.store();
  });
  return a.finish([I32, I32, I32, I32, F32, F32], [I32, V128, V128]);
}

function bf16Widen(fma: boolean) {
  // (h, o, n): o[i] = the float32 of bf16 bits h[i] (the bits shifted up 16) for i < n rounded
  // up to 8.
  const H = 0, O = 1, N = 2, I = 3, V = 4;
  const a = new Asm(fma, 5);
  a.forUp(I, () => a.get(N), 8, () => {
    a.get(H).get(I).i32(1).shl().add().load().set(V);
    at(a, O, I).get(V).i32x4ExtendLowI16x8U().i32(16).i32x4Shl().store();
    at(a, O, I).get(V).i32x4ExtendHighI16x8U().i32(16).i32x4Shl().store(16);
  });
  return a.finish([I32, I32, I32], [I32, V128]);
}

function bf16Round(fma: boolean) {
  // (x, h, n): h[i] = bf16 bits of float32 x[i] for i < n rounded up to 8: to nearest, ties to
  // even, on the low 16 bits (a carry may reach the exponent and, past the largest finite
  // value, Inf); a NaN keeps its sign and top payload bits and becomes quiet.
  const X = 0, H = 1, N = 2, I = 3, U = 4, R = 5;
  // The constants, splatted into locals once (a v128.const in the loop costs more than a get).
  const QUIET = 6, HALF = 7, ONE = 8, ABS = 9, INF = 10;
  const a = new Asm(fma, 11);
  for (const [l, v] of [[QUIET, 0x40], [HALF, 0x7fff], [ONE, 1], [ABS, 0x7fffffff]]) {
    a.i32(v!).i32x4Splat().set(l!);
  }
  a.i32(0x7f800000).i32x4Splat().set(INF);
  const round = (offset: number) => {
    at(a, X, I).load(offset).set(U);
    a.get(U).i32(16).i32x4ShrU().get(QUIET).v128Or(); // the quiet NaN
    a.get(U).get(HALF).i32x4Add().get(U).i32(16).i32x4ShrU().get(ONE).v128And().i32x4Add();
    a.i32(16).i32x4ShrU(); // rounded
    // NaN lanes (both sides below 2^31: the signed comparison is exact)
    a.get(U).get(ABS).v128And().get(INF).i32x4GtS();
    a.v128Bitselect();
  };
  a.forUp(I, () => a.get(N), 8, () => {
    round(0);
    a.set(R);
    a.get(H).get(I).i32(1).shl().add().get(R);
    round(16);
    a.i16x8NarrowI32x4U().store();
  });
  return a.finish([I32, I32, I32], [I32, V128, V128, V128, V128, V128, V128, V128]);
}

/** Names and signatures of the exported functions. */
export interface EwExports {
  /** Linear memory holding the operands. */
  memory: WebAssembly.Memory;
  /** (x, o, n): o = gelu(x), tanh form. */
  geluForward(x: number, o: number, n: number): void;
  /** (x, g, d, n): d += gelu'(x) g. */
  geluBackward(x: number, g: number, d: number, n: number): void;
  /** One AdamW step on n elements. */
  adamw(
    w: number,
    g: number,
    m: number,
    v: number,
    n: number,
    beta1: number,
    beta2: number,
    ob1: number,
    ob2: number,
    c1: number,
    c2: number,
    lr: number,
    eps: number,
    wd: number,
  ): void;
  /** Softmax of rows in place (causal or full), with each row's max and sum at `stats`. */
  softmaxRows(
    p: number,
    rows: number,
    T: number,
    stride: number,
    t0: number,
    causal: number,
    st: number,
  ): void;
  /** Layernorm of rows (C a multiple of 4), mean and rstd interleaved at `st`. */
  layernormForward(
    x: number,
    o: number,
    st: number,
    w: number,
    b: number,
    rows: number,
    C: number,
    eps: number,
  ): void;
  /** The layernorm backward, adding into dx, dw and db. */
  layernormBackward(
    dx: number,
    dw: number,
    db: number,
    g: number,
    x: number,
    w: number,
    st: number,
    rows: number,
    C: number,
  ): void;
  /** out = sum of x[i]^2 for i < n rounded up to 8. */
  sumSquares(x: number, n: number, out: number): void;
  /** o = alpha x + beta y. */
  addScaled(x: number, y: number, o: number, n: number, alpha: number, beta: number): void;
  /** (h, o, n): float32 o from bf16 bits h. */
  bf16Widen(h: number, o: number, n: number): void;
  /** (x, h, n): bf16 bits h of float32 x, rounded to nearest, ties to even. */
  bf16Round(x: number, h: number, n: number): void;
  /** acc[j] += sum over rows of x[r, j] (N a multiple of 4). */
  sumRows(x: number, acc: number, rows: number, N: number): void;
  /** The causal softmax backward on rows in place in `s`. */
  softmaxBackwardRows(
    a: number,
    s: number,
    rows: number,
    T: number,
    stride: number,
    t0: number,
    sc: number,
  ): void;
}

/** Encodes the module (one page of memory to start; the caller grows it). */
export function buildEwModule(fma: boolean): Uint8Array {
  const m = new ModuleBuilder().defineMemory({ initial: 1 }, "memory");
  const fns = {
    geluForward,
    geluBackward,
    adamw,
    softmaxRows,
    softmaxBackwardRows,
    layernormForward,
    layernormBackward,
    sumRows,
    sumSquares,
    addScaled,
    bf16Widen,
    bf16Round,
  };
  for (const [name, fn] of Object.entries(fns)) m.add({ exportName: name, ...fn(fma) });
  return m.bytes();
}
