/**
 * Generates the WebAssembly module of the SIMD GEMM: a register-blocked micro-kernel that adds
 * the product of one packed MR-row panel of A and one packed NR-column panel of B into an MR x NR
 * tile of C, and a macro-kernel that runs it over every tile of a packed block.
 *
 * Packed layouts (float32, all addresses in bytes, 16-byte aligned):
 * - A panel: for k in [0, kc): MR values, the rows of op(A) at column k (zeros past the edge).
 * - B panel: for k in [0, kc): NR values, the columns of op(B) at row k (zeros past the edge).
 * - C block: row-major with leading dimension `ldc` bytes, padded to whole tiles.
 *
 * @module
 */

import { Code, I32, ModuleBuilder, V128 } from "../../wasm/encode.ts";

export { hasRelaxedSimd } from "../../wasm/encode.ts";

/** Shape and instruction choices of a generated GEMM module. */
export interface GemmModuleConfig {
  /** Rows of the register tile. */
  mr: number;
  /** Columns of the register tile, a multiple of 4. */
  nr: number;
  /** Iterations of the k loop per trip, a power of two. */
  unroll: number;
  /** Use `f32x4.relaxed_madd` (fused multiply-add) instead of `f32x4.mul` + `f32x4.add`. */
  fma: boolean;
}

/** Emits `acc += a * b` on v128 locals. */
function madd(c: Code, fma: boolean, acc: number, a: number, b: number): void {
  if (fma) c.get(a).get(b).get(acc).f32x4RelaxedMadd().set(acc);
  else c.get(acc).get(a).get(b).f32x4Mul().f32x4Add().set(acc);
}

/**
 * The micro-kernel `(a, b, c, kc, ldc, add)`: C[0:MR, 0:NR] (+)= Apanel @ Bpanel over kc >= 1
 * steps, adding into C when `add` is non-zero and overwriting it otherwise.
 */
function microKernel(
  cfg: GemmModuleConfig,
): { params: number[]; locals: number[]; body: number[] } {
  const { mr, nr, unroll, fma } = cfg;
  const nv = nr / 4;
  const [A, B, C, KC, LDC, ADD] = [0, 1, 2, 3, 4, 5];
  const END = 6, END_U = 7, ROW = 8, AV = 9;
  const BV = 10;
  const ACC = BV + nv;
  // The accumulators start at zero: Wasm zeroes every local on entry.
  const acc = (r: number, j: number) => ACC + r * nv + j;
  const locals = [I32, I32, I32, V128, ...new Array(nv + mr * nv).fill(V128)];
  const c = new Code();
  const step = (u: number) => {
    for (let j = 0; j < nv; j++) c.get(B).v128Load(u * nr * 4 + 16 * j).set(BV + j);
    for (let r = 0; r < mr; r++) {
      c.get(A).v128Load32Splat(u * mr * 4 + 4 * r).set(AV);
      for (let j = 0; j < nv; j++) madd(c, fma, acc(r, j), AV, BV + j);
    }
  };
  const loop = (u: number, end: number) => {
    c.block().get(B).get(end).eq().brIf(0).loop();
    for (let s = 0; s < u; s++) step(s);
    c.get(A).i32(u * mr * 4).add().set(A);
    c.get(B).i32(u * nr * 4).add().tee(B).get(end).ne().brIf(0);
    c.end().end();
  };
  // END = b + kc * nr * 4; END_U = b + (kc & -unroll) * nr * 4.
  c.get(B).get(KC).i32(nr * 4).mul().add().set(END);
  c.get(B).get(KC).i32(-unroll).and().i32(nr * 4).mul().add().set(END_U);
  if (unroll > 1) loop(unroll, END_U);
  loop(1, END);
  const store = (add: boolean) => {
    c.get(C).set(ROW);
    for (let r = 0; r < mr; r++) {
      for (let j = 0; j < nv; j++) {
        c.get(ROW);
        if (add) c.get(ROW).v128Load(16 * j).get(acc(r, j)).f32x4Add();
        else c.get(acc(r, j));
        c.v128Store(16 * j);
      }
      if (r + 1 < mr) c.get(ROW).get(LDC).add().set(ROW);
    }
  };
  c.get(ADD).if();
  store(true);
  c.else();
  store(false);
  c.end();
  return { params: [I32, I32, I32, I32, I32, I32], locals, body: c.bytes };
}

/**
 * The macro-kernel `(a, b, c, mp, np, kc, ldc, add)`: for each of `np` B panels and each of `mp`
 * A panels, runs the micro-kernel on the matching tile of C. `mp, np, kc >= 1`.
 */
function macroKernel(cfg: GemmModuleConfig, micro: number): number[] {
  const { mr, nr } = cfg;
  const [A0, B0, C0, MP, NP, KC, LDC, ADD] = [0, 1, 2, 3, 4, 5, 6, 7];
  const [JP, IP, BP, AP, CC, AS, BS, CS] = [8, 9, 10, 11, 12, 13, 14, 15];
  const c = new Code();
  c.get(KC).i32(mr * 4).mul().set(AS);
  c.get(KC).i32(nr * 4).mul().set(BS);
  c.get(LDC).i32(mr).mul().set(CS);
  c.get(B0).set(BP);
  c.loop();
  c.i32(0).set(IP).get(A0).set(AP);
  c.get(C0).get(JP).i32(nr * 4).mul().add().set(CC);
  c.loop();
  c.get(AP).get(BP).get(CC).get(KC).get(LDC).get(ADD).call(micro);
  c.get(AP).get(AS).add().set(AP);
  c.get(CC).get(CS).add().set(CC);
  c.get(IP).i32(1).add().tee(IP).get(MP).ne().brIf(0);
  c.end();
  c.get(BP).get(BS).add().set(BP);
  c.get(JP).i32(1).add().tee(JP).get(NP).ne().brIf(0);
  c.end();
  return c.bytes;
}

/** Encodes the GEMM module; it exports `memory` and `macro(a, b, c, mp, np, kc, ldc, add)`. */
export function buildGemmModule(cfg: GemmModuleConfig): Uint8Array {
  if (cfg.nr % 4 !== 0 || cfg.mr < 1 || (cfg.unroll & (cfg.unroll - 1)) !== 0) {
    throw new RangeError(`Bad GEMM tile ${cfg.mr}x${cfg.nr}/${cfg.unroll}`);
  }
  const m = new ModuleBuilder().defineMemory({ initial: 1 }, "memory");
  const micro = m.add(microKernel(cfg));
  m.add({
    exportName: "macro",
    params: new Array(8).fill(I32),
    locals: new Array(8).fill(I32),
    body: macroKernel(cfg, micro),
  });
  return m.bytes();
}
