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

const I32 = 0x7f;
const F32 = 0x7d;
const V128 = 0x7b;
const EMPTY = 0x40;

function uleb(out: number[], n: number): void {
  do {
    let byte = n & 0x7f;
    n = Math.floor(n / 128);
    if (n !== 0) byte |= 0x80;
    out.push(byte);
  } while (n !== 0);
}

function sleb(out: number[], n: number): void {
  n |= 0;
  for (;;) {
    const byte = n & 0x7f;
    n >>= 7;
    if ((n === 0 && (byte & 0x40) === 0) || (n === -1 && (byte & 0x40) !== 0)) {
      out.push(byte);
      return;
    }
    out.push(byte | 0x80);
  }
}

interface Fn {
  name: string;
  params: number[];
  locals: number[];
  body: number[];
}

/** A module of exported functions without results and one exported memory of one page. */
function encodeModule(fns: Fn[]): Uint8Array {
  const out = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];
  const section = (id: number, body: number[]) => {
    out.push(id);
    uleb(out, body.length);
    for (const b of body) out.push(b);
  };
  const name = (o: number[], s: string) => {
    const bytes = new TextEncoder().encode(s);
    uleb(o, bytes.length);
    for (const b of bytes) o.push(b);
  };
  const types: number[] = [];
  uleb(types, fns.length);
  for (const f of fns) {
    types.push(0x60);
    uleb(types, f.params.length);
    types.push(...f.params, 0);
  }
  section(1, types);
  const funcs: number[] = [];
  uleb(funcs, fns.length);
  fns.forEach((_, i) => uleb(funcs, i));
  section(3, funcs);
  section(5, [1, 0x00, 1]);
  const exports: number[] = [];
  uleb(exports, fns.length + 1);
  name(exports, "memory");
  exports.push(0x02, 0x00);
  fns.forEach((f, i) => {
    name(exports, f.name);
    exports.push(0x00);
    uleb(exports, i);
  });
  section(7, exports);
  const code: number[] = [];
  uleb(code, fns.length);
  for (const f of fns) {
    const body: number[] = [];
    uleb(body, f.locals.length);
    for (const t of f.locals) body.push(1, t);
    body.push(...f.body, 0x0b);
    uleb(code, body.length);
    code.push(...body);
  }
  section(10, code);
  return new Uint8Array(out);
}

/** Whether this engine validates `f32x4.relaxed_madd` (the relaxed SIMD proposal). */
export function hasRelaxedMadd(): boolean {
  const a = new Asm(true, 1);
  a.get(0).get(0).get(0).madd(() => {}, () => {}, () => {}).op(0x1a);
  const bytes = encodeModule([{ name: "f", ...a.finish([V128], []) }]);
  return WebAssembly.validate(bytes as BufferSource);
}

/** Instruction writer: scalar, control and the v128 opcodes used here. */
class Asm {
  readonly b: number[] = [];
  /** Splatted constants, held in locals numbered from `firstConst` and set on entry. */
  #consts = new Map<number, number>();
  constructor(readonly fma: boolean, readonly firstConst: number) {}

  /** The function: the constants' set-up, then the body; their locals after `locals`. */
  finish(params: number[], locals: number[]) {
    if (params.length + locals.length !== this.firstConst) {
      throw new Error("Asm: constants must follow the declared locals");
    }
    const pre = new Asm(this.fma, 0);
    for (const [v, i] of this.#consts) pre.vconst(v).set(i);
    return {
      params,
      locals: [...locals, ...new Array(this.#consts.size).fill(V128)],
      body: [...pre.b, ...this.b],
    };
  }

  op(...x: number[]): this {
    for (const v of x) this.b.push(v);
    return this;
  }
  simd(code: number): this {
    this.b.push(0xfd);
    uleb(this.b, code);
    return this;
  }
  get(i: number): this {
    this.b.push(0x20);
    uleb(this.b, i);
    return this;
  }
  set(i: number): this {
    this.b.push(0x21);
    uleb(this.b, i);
    return this;
  }
  tee(i: number): this {
    this.b.push(0x22);
    uleb(this.b, i);
    return this;
  }
  i32(n: number): this {
    this.b.push(0x41);
    sleb(this.b, n);
    return this;
  }
  f32(v: number): this {
    this.b.push(0x43);
    for (const x of new Uint8Array(new Float32Array([v]).buffer)) this.b.push(x);
    return this;
  }
  /** Four equal f32 lanes, from a local set on entry. */
  splat(v: number): this {
    const key = Math.fround(v);
    let i = this.#consts.get(key);
    if (i === undefined) this.#consts.set(key, i = this.firstConst + this.#consts.size);
    return this.get(i);
  }
  /** A v128 constant of four equal f32 lanes. */
  vconst(v: number): this {
    this.simd(0x0c);
    const bytes = new Uint8Array(new Float32Array([v, v, v, v]).buffer);
    for (const x of bytes) this.b.push(x);
    return this;
  }
  /** The v128 constant of lanes 0, 1, 2, 3 (i32). */
  iota(): this {
    this.simd(0x0c);
    for (const x of new Uint8Array(new Int32Array([0, 1, 2, 3]).buffer)) this.b.push(x);
    return this;
  }
  load(offset = 0): this {
    this.simd(0x00);
    uleb(this.b, 0);
    uleb(this.b, offset);
    return this;
  }
  store(offset = 0): this {
    this.simd(0x0b);
    uleb(this.b, 0);
    uleb(this.b, offset);
    return this;
  }
  f32Load(offset = 0): this {
    this.op(0x2a);
    uleb(this.b, 2);
    uleb(this.b, offset);
    return this;
  }
  f32Store(offset = 0): this {
    this.op(0x38);
    uleb(this.b, 2);
    uleb(this.b, offset);
    return this;
  }
  // Control.
  block(): this {
    return this.op(0x02, EMPTY);
  }
  loop(): this {
    return this.op(0x03, EMPTY);
  }
  end(): this {
    return this.op(0x0b);
  }
  br(d: number): this {
    this.op(0x0c);
    uleb(this.b, d);
    return this;
  }
  brIf(d: number): this {
    this.op(0x0d);
    uleb(this.b, d);
    return this;
  }
  // i32.
  add(): this {
    return this.op(0x6a);
  }
  sub(): this {
    return this.op(0x6b);
  }
  mul(): this {
    return this.op(0x6c);
  }
  ltS(): this {
    return this.op(0x48);
  }
  geS(): this {
    return this.op(0x4e);
  }
  select(): this {
    return this.op(0x1b);
  }
  // f32 scalar.
  fadd(): this {
    return this.op(0x92);
  }
  fdiv(): this {
    return this.op(0x95);
  }
  fmax(): this {
    return this.op(0x97);
  }
  lane(i: number): this {
    return this.simd(0x1f).op(i);
  }
  // v128.
  vsplat(): this {
    return this.simd(0x13);
  }
  isplat(): this {
    return this.simd(0x11);
  }
  vadd(): this {
    return this.simd(0xe4);
  }
  vsub(): this {
    return this.simd(0xe5);
  }
  vmul(): this {
    return this.simd(0xe6);
  }
  vdiv(): this {
    return this.simd(0xe7);
  }
  vsqrt(): this {
    return this.simd(0xe3);
  }
  vpmin(): this {
    return this.simd(0xea);
  }
  vpmax(): this {
    return this.simd(0xeb);
  }
  vnearest(): this {
    return this.simd(0x6a);
  }
  and(): this {
    return this.simd(0x4e);
  }
  bitselect(): this {
    return this.simd(0x52);
  }
  iadd(): this {
    return this.simd(0xae);
  }
  ilt(): this {
    return this.simd(0x39);
  }
  ishl(): this {
    return this.simd(0xab);
  }
  truncSat(): this {
    return this.simd(0xf8);
  }
  /** a * b + c for the three pushes given (fused when the engine has relaxed SIMD). */
  madd(a: () => void, b: () => void, c: () => void): this {
    if (this.fma) {
      a();
      b();
      c();
      this.simd(0x105);
    } else {
      a();
      b();
      this.vmul();
      c();
      this.vadd();
    }
    return this;
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
    this.set(tmp);
    this.get(tmp).lane(0).get(tmp).lane(1).fadd().get(tmp).lane(2).fadd().get(tmp).lane(3)
      .fadd();
    return this;
  }
  /** Horizontal maximum (NaN lanes ignored where the others are larger). */
  hmax(tmp: number): this {
    this.set(tmp);
    this.get(tmp).lane(0).get(tmp).lane(1).fmax().get(tmp).lane(2).fmax().get(tmp).lane(3)
      .fmax();
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
  a.get(x).splat(-87.3).vpmax().tee(x).splat(Math.LOG2E).vmul().vnearest().set(k);
  // r = x - k ln2 in two parts (the high part is exact in float32).
  a.madd(() => a.get(k), () => a.splat(-0.693359375), () => a.get(x));
  a.set(x);
  a.madd(() => a.get(k), () => a.splat(2.12194440e-4), () => a.get(x));
  a.set(x);
  a.poly(x, [1 / 720, 1 / 120, 1 / 24, 1 / 6, 1 / 2, 1, 1]);
  a.get(k).truncSat().i32(127).isplat().iadd().i32(23).ishl().vmul();
}

/** Byte offset of element i (i32 local) from base (i32 local). */
function at(a: Asm, base: number, i: number): Asm {
  return a.get(base).get(i).i32(2).op(0x74).add();
}

/** Lanes j..j+3 below `lim` (i32 locals) as an i32x4 mask. */
function below(a: Asm, j: number, lim: number): Asm {
  return a.get(j).isplat().iota().iadd().get(lim).isplat().ilt();
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
  a.get(x).vmul().splat(-126).vpmax().splat(126).vpmin().tee(z).vnearest().set(k);
  a.get(z).get(k).vsub().set(z);
  a.poly(z, EXP2_POLY);
  a.get(k).truncSat().i32(127).isplat().iadd().i32(23).ishl().vmul();
}

function geluForward(fma: boolean) {
  // (x, o, n): o[i] = gelu(x[i]) = x / (1 + exp(-2u)) for i < n rounded up to 4.
  const X = 0, O = 1, N = 2, I = 3, V = 4, X2 = 5, Z = 6, K = 7;
  const a = new Asm(fma, 8);
  a.forUp(I, () => a.get(N), 4, () => {
    at(a, O, I);
    at(a, X, I).load().tee(V).get(V).vmul().set(X2);
    a.get(V);
    expMinus2u(a, V, X2, Z, K);
    a.splat(1).vadd().vdiv();
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
    at(a, X, I).load().tee(V).get(V).vmul().set(X2);
    a.splat(1);
    expMinus2u(a, V, X2, Z, K);
    a.splat(1).vadd().vdiv().set(S);
    at(a, D, I);
    a.get(V).get(S).vmul().splat(1).get(S).vsub().vmul();
    a.madd(() => a.get(X2), () => a.splat(2 * GELU_K * 0.134145), () => a.splat(2 * GELU_K));
    a.vmul().get(S).vadd();
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
  for (let k = 0; k < 9; k++) a.get(P0 + k).vsplat().set(S + k);
  const [B1, B2, OB1, OB2, C1, C2, LR, EPS, WD] = [0, 1, 2, 3, 4, 5, 6, 7, 8].map((k) => S + k);
  a.forUp(I, () => a.get(N), 4, () => {
    at(a, G, I).load().set(GV);
    at(a, M, I);
    a.get(GV).get(OB1).vmul();
    at(a, M, I).load().get(B1).vmul().vadd().tee(MI);
    a.store();
    at(a, VV, I);
    a.get(GV).get(GV).vmul().get(OB2).vmul();
    at(a, VV, I).load().get(B2).vmul().vadd().tee(VI);
    a.store();
    at(a, W, I);
    at(a, W, I).load();
    a.get(MI).get(C1).vmul();
    a.get(VI).get(C2).vmul().vsqrt().get(EPS).vadd().vdiv();
    at(a, W, I).load().get(WD).vmul().vadd();
    a.get(LR).vmul().vsub();
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
    a.get(P).get(R).get(SD).mul().i32(2).op(0x74).add().set(ROW);
    causalLength(a, T0, R, TT);
    a.get(TT).get(CAUSAL).select().set(L);
    a.splat(-Infinity).set(MAXV);
    a.forUp(J, () => a.get(L), 4, () => {
      at(a, ROW, J).load().splat(-Infinity);
      below(a, J, L).bitselect();
      a.get(MAXV).vpmax().set(MAXV);
    });
    a.get(MAXV).hmax(TMP).tee(MX).vsplat().set(MAXV);
    a.splat(0).set(SUMV);
    a.forUp(J, () => a.get(L), 4, () => {
      below(a, J, L).set(MSK);
      at(a, ROW, J).load().get(MAXV).vsub().set(XV);
      exp(a, XV, KV);
      a.get(MSK).and().set(XV);
      a.get(XV).get(SUMV).vadd().set(SUMV);
      at(a, ROW, J).get(XV).store();
    });
    a.get(ST).get(R).i32(3).op(0x74).add().get(MX).f32Store();
    a.get(ST).get(R).i32(3).op(0x74).add();
    a.get(SUMV).hsum(TMP).f32Store(4);
    a.f32(1).get(ST).get(R).i32(3).op(0x74).add().f32Load(4).fdiv().vsplat().set(SUMV);
    a.forUp(J, () => a.get(L), 4, () => {
      at(a, ROW, J);
      at(a, ROW, J).load().get(SUMV).vmul().store();
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
  a.get(SC).vsplat().set(SCV);
  a.forUp(R, () => a.get(ROWS), 1, () => {
    a.get(R).get(SD).mul().i32(2).op(0x74).tee(SR).get(A).add().set(AR);
    a.get(SR).get(S).add().set(SR);
    causalLength(a, T0, R, TT);
    a.set(L);
    a.splat(0).set(DOT);
    a.forUp(J, () => a.get(L), 4, () => {
      at(a, AR, J).load();
      at(a, SR, J).load().vmul();
      below(a, J, L).and();
      a.get(DOT).vadd().set(DOT);
    });
    a.get(DOT).hsum(TMP).vsplat().set(DOT);
    a.forUp(J, () => a.get(L), 4, () => {
      at(a, SR, J);
      at(a, SR, J).load().get(DOT).vsub();
      at(a, AR, J).load().vmul().get(SCV).vmul();
      below(a, J, L).and();
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
    a.get(R).get(CC).mul().i32(2).op(0x74).tee(XR).get(O).add().set(OR);
    a.get(XR).get(X).add().set(XR);
    a.splat(0).set(ACC);
    a.forUp(J, () => a.get(CC), 4, () => {
      at(a, XR, J).load().get(ACC).vadd().set(ACC);
    });
    a.get(ACC).hsum(TMP).get(CC).op(0xb2).fdiv().tee(MS).vsplat().set(MV);
    a.splat(0).set(ACC);
    a.forUp(J, () => a.get(CC), 4, () => {
      at(a, XR, J).load().get(MV).vsub().tee(TMP);
      a.madd(() => a.get(TMP), () => {}, () => a.get(ACC));
      a.set(ACC);
    });
    a.f32(1).get(ACC).hsum(TMP).get(CC).op(0xb2).fdiv().get(EPS).fadd().op(0x91).fdiv();
    a.tee(RS).vsplat().set(RV);
    a.forUp(J, () => a.get(CC), 4, () => {
      at(a, OR, J);
      at(a, XR, J).load().get(MV).vsub().get(RV).vmul();
      a.madd(() => {}, () => at(a, WT, J).load(), () => at(a, BS, J).load());
      a.store();
    });
    a.get(ST).get(R).i32(3).op(0x74).add().get(MS).f32Store();
    a.get(ST).get(R).i32(3).op(0x74).add().get(RS).f32Store(4);
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
    a.get(R).get(CC).mul().i32(2).op(0x74).set(OFF);
    a.get(ST).get(R).i32(3).op(0x74).add().f32Load().vsplat().set(MV);
    a.get(ST).get(R).i32(3).op(0x74).add().f32Load(4).vsplat().set(RV);
    a.splat(0).set(GM).splat(0).set(GX);
    a.forUp(J, () => a.get(CC), 4, () => {
      a.get(G).get(OFF).add().get(J).i32(2).op(0x74).add().load();
      at(a, WT, J).load().vmul().tee(GV).get(GM).vadd().set(GM);
      a.get(X).get(OFF).add().get(J).i32(2).op(0x74).add().load().get(MV).vsub().get(RV).vmul();
      a.madd(() => a.get(GV), () => {}, () => a.get(GX));
      a.set(GX);
    });
    a.get(GM).hsum(TMP).get(CC).op(0xb2).fdiv().vsplat().set(GM);
    a.get(GX).hsum(TMP).get(CC).op(0xb2).fdiv().vsplat().set(GX);
    a.forUp(J, () => a.get(CC), 4, () => {
      a.get(X).get(OFF).add().get(J).i32(2).op(0x74).add().load().get(MV).vsub().get(RV).vmul()
        .set(XH);
      a.get(G).get(OFF).add().get(J).i32(2).op(0x74).add().load().set(GV);
      // dx += r (g w - gMean - xhat gxMean)
      a.get(DX).get(OFF).add().get(J).i32(2).op(0x74).add();
      a.get(GV);
      at(a, WT, J).load().vmul().get(GM).vsub().get(XH).get(GX).vmul().vsub().get(RV).vmul();
      a.get(DX).get(OFF).add().get(J).i32(2).op(0x74).add().load().vadd().store();
      at(a, DW, J);
      a.madd(() => a.get(GV), () => a.get(XH), () => at(a, DW, J).load());
      a.store();
      at(a, DB, J);
      a.get(GV);
      at(a, DB, J).load().vadd().store();
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
      at(a, ACC, J).load().vadd().store();
    });
    a.get(XR).get(N).i32(2).op(0x74).add().set(XR);
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
  a.get(OUT).get(A0).get(A1).vadd().hsum(TMP).f32Store();
  return a.finish([I32, I32, I32], [I32, V128, V128, V128, V128]);
}

function addScaled(fma: boolean) {
  // (x, y, o, n, alpha, beta): o[i] = alpha x[i] + beta y[i] for i < n rounded up to 4.
  const X = 0, Y = 1, O = 2, N = 3, AL = 4, BE = 5, I = 6, AV = 7, BV = 8;
  const a = new Asm(fma, 9);
  a.get(AL).vsplat().set(AV).get(BE).vsplat().set(BV);
  a.forUp(I, () => a.get(N), 4, () => {
    at(a, O, I);
    a.madd(() => at(a, Y, I).load(), () => a.get(BV), () => at(a, X, I).load().get(AV).vmul());
    a.store();
  });
  return a.finish([I32, I32, I32, I32, F32, F32], [I32, V128, V128]);
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
  return encodeModule([
    { name: "geluForward", ...geluForward(fma) },
    { name: "geluBackward", ...geluBackward(fma) },
    { name: "adamw", ...adamw(fma) },
    { name: "softmaxRows", ...softmaxRows(fma) },
    { name: "softmaxBackwardRows", ...softmaxBackwardRows(fma) },
    { name: "layernormForward", ...layernormForward(fma) },
    { name: "layernormBackward", ...layernormBackward(fma) },
    { name: "sumRows", ...sumRows(fma) },
    { name: "sumSquares", ...sumSquares(fma) },
    { name: "addScaled", ...addScaled(fma) },
  ]);
}
