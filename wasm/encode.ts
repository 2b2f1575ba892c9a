/**
 * A small WebAssembly binary encoder, shared by the generated CPU kernels (`kernels/cpu`) and the
 * shared-memory folds (`collectives`): value types, LEB128, an instruction writer
 * ({@linkcode Code}: control, locals, i32, f32 and the v128 SIMD opcodes the generators use) and a
 * module builder ({@linkcode ModuleBuilder}: one memory, defined or imported, function types,
 * functions and exports). It imports nothing, so any folder may build on it.
 *
 * @example Build, validate and run a function that adds two i32s
 * ```ts
 * import { Code, I32, ModuleBuilder } from "./encode.ts";
 * const m = new ModuleBuilder().defineMemory({ initial: 1 }, "memory");
 * const body = new Code().get(0).get(1).add().bytes;
 * m.add({ exportName: "add", params: [I32, I32], results: [I32], body });
 * const { exports } = new WebAssembly.Instance(new WebAssembly.Module(m.bytes()));
 * console.assert((exports.add as (a: number, b: number) => number)(2, 3) === 5);
 * ```
 *
 * @module
 */

/** 32-bit integer value type. */
export const I32 = 0x7f;
/** 32-bit float value type. */
export const F32 = 0x7d;
/** 128-bit vector value type. */
export const V128 = 0x7b;

/** Appends the unsigned LEB128 encoding of `n` to `out`. */
export function uleb(out: number[], n: number): void {
  if (!Number.isInteger(n) || n < 0) throw new RangeError(`uleb: ${n} is not a u32`);
  do {
    let byte = n & 0x7f;
    n = Math.floor(n / 128);
    if (n !== 0) byte |= 0x80;
    out.push(byte);
  } while (n !== 0);
}

/** Appends the signed LEB128 encoding of the 32-bit integer `n` to `out`. */
export function sleb(out: number[], n: number): void {
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

function append(out: number[], bytes: ArrayLike<number>): void {
  for (let i = 0; i < bytes.length; i++) out.push(bytes[i]!);
}

/** A vector: its length, then its bytes. */
function vec(out: number[], bytes: ArrayLike<number>): void {
  uleb(out, bytes.length);
  append(out, bytes);
}

function name(out: number[], s: string): void {
  vec(out, new TextEncoder().encode(s));
}

/** Block type of a block, loop or if without results. */
const EMPTY = 0x40;
/** Prefix of the SIMD opcodes. */
const SIMD = 0xfd;

/**
 * Appends instructions to {@linkcode Code.bytes}; each method appends one instruction and returns
 * `this`. Memory instructions take the byte offset and the log2 of the alignment hint (their
 * natural alignment unless given).
 */
export class Code {
  /** The encoded instructions so far. */
  readonly bytes: number[] = [];

  #op(...b: number[]): this {
    append(this.bytes, b);
    return this;
  }

  #u(op: number, n: number): this {
    this.bytes.push(op);
    uleb(this.bytes, n);
    return this;
  }

  #simd(op: number): this {
    return this.#u(SIMD, op);
  }

  #mem(align: number, offset: number): this {
    uleb(this.bytes, align);
    uleb(this.bytes, offset);
    return this;
  }

  // Control.
  /** `block` with no result; `br 0` inside jumps past its `end`. */
  block(): this {
    return this.#op(0x02, EMPTY);
  }
  /** `loop` with no result; `br 0` inside jumps back to its start. */
  loop(): this {
    return this.#op(0x03, EMPTY);
  }
  /** `if` with no result. */
  if(): this {
    return this.#op(0x04, EMPTY);
  }
  /** `else`. */
  else(): this {
    return this.#op(0x05);
  }
  /** `end` of a block, loop, if or function. */
  end(): this {
    return this.#op(0x0b);
  }
  /** `br depth`. */
  br(depth: number): this {
    return this.#u(0x0c, depth);
  }
  /** `br_if depth`. */
  brIf(depth: number): this {
    return this.#u(0x0d, depth);
  }
  /** `call f`. */
  call(f: number): this {
    return this.#u(0x10, f);
  }
  /** `drop`. */
  drop(): this {
    return this.#op(0x1a);
  }
  /** `select` (a, b, condition) -> condition ? a : b. */
  select(): this {
    return this.#op(0x1b);
  }

  // Locals.
  /** `local.get i`. */
  get(i: number): this {
    return this.#u(0x20, i);
  }
  /** `local.set i`. */
  set(i: number): this {
    return this.#u(0x21, i);
  }
  /** `local.tee i`. */
  tee(i: number): this {
    return this.#u(0x22, i);
  }

  // Scalar memory.
  /** `f32.load` at the address on the stack plus `offset` bytes. */
  f32Load(offset = 0, align = 2): this {
    return this.#op(0x2a).#mem(align, offset);
  }
  /** `f32.store` (address, value) at the address plus `offset` bytes. */
  f32Store(offset = 0, align = 2): this {
    return this.#op(0x38).#mem(align, offset);
  }

  // i32.
  /** `i32.const n`. */
  i32(n: number): this {
    this.bytes.push(0x41);
    sleb(this.bytes, n);
    return this;
  }
  /** `i32.eq`. */
  eq(): this {
    return this.#op(0x46);
  }
  /** `i32.ne`. */
  ne(): this {
    return this.#op(0x47);
  }
  /** `i32.lt_s`. */
  ltS(): this {
    return this.#op(0x48);
  }
  /** `i32.ge_s`. */
  geS(): this {
    return this.#op(0x4e);
  }
  /** `i32.ge_u`. */
  geU(): this {
    return this.#op(0x4f);
  }
  /** `i32.add`. */
  add(): this {
    return this.#op(0x6a);
  }
  /** `i32.sub`. */
  sub(): this {
    return this.#op(0x6b);
  }
  /** `i32.mul`. */
  mul(): this {
    return this.#op(0x6c);
  }
  /** `i32.and`. */
  and(): this {
    return this.#op(0x71);
  }
  /** `i32.shl`. */
  shl(): this {
    return this.#op(0x74);
  }

  // f32.
  /** `f32.const v`. */
  f32(v: number): this {
    return this.#op(0x43, ...new Uint8Array(new Float32Array([v]).buffer));
  }
  /** `f32.sqrt`. */
  f32Sqrt(): this {
    return this.#op(0x91);
  }
  /** `f32.add`. */
  f32Add(): this {
    return this.#op(0x92);
  }
  /** `f32.div`. */
  f32Div(): this {
    return this.#op(0x95);
  }
  /** `f32.max` (NaN if either is). */
  f32Max(): this {
    return this.#op(0x97);
  }
  /** `f32.convert_i32_s`. */
  f32ConvertI32S(): this {
    return this.#op(0xb2);
  }

  // v128.
  /** `v128.load` at the address on the stack plus `offset` bytes. */
  v128Load(offset = 0, align = 4): this {
    return this.#simd(0x00).#mem(align, offset);
  }
  /** `v128.load32_splat`: one 32-bit value at address plus `offset`, broadcast to four lanes. */
  v128Load32Splat(offset = 0, align = 2): this {
    return this.#simd(0x09).#mem(align, offset);
  }
  /** `v128.store` (address, value) at the address plus `offset` bytes. */
  v128Store(offset = 0, align = 4): this {
    return this.#simd(0x0b).#mem(align, offset);
  }
  /** `v128.const` of four f32 lanes. */
  f32x4Const(a: number, b: number, c: number, d: number): this {
    return this.#simd(0x0c).#op(...new Uint8Array(new Float32Array([a, b, c, d]).buffer));
  }
  /** `v128.const` of four i32 lanes. */
  i32x4Const(a: number, b: number, c: number, d: number): this {
    return this.#simd(0x0c).#op(...new Uint8Array(new Int32Array([a, b, c, d]).buffer));
  }
  /** `i32x4.splat`. */
  i32x4Splat(): this {
    return this.#simd(0x11);
  }
  /** `f32x4.splat`. */
  f32x4Splat(): this {
    return this.#simd(0x13);
  }
  /** `f32x4.extract_lane lane`. */
  f32x4ExtractLane(lane: number): this {
    return this.#simd(0x1f).#op(lane);
  }
  /** `i32x4.lt_s`. */
  i32x4LtS(): this {
    return this.#simd(0x39);
  }
  /** `i32x4.gt_s`. */
  i32x4GtS(): this {
    return this.#simd(0x3b);
  }
  /** `v128.and`. */
  v128And(): this {
    return this.#simd(0x4e);
  }
  /** `v128.or`. */
  v128Or(): this {
    return this.#simd(0x50);
  }
  /** `i16x8.narrow_i32x4_u` (a, b): eight lanes, a's then b's, saturated to 0..65535. */
  i16x8NarrowI32x4U(): this {
    return this.#simd(0x86);
  }
  /** `i32x4.extend_low_i16x8_u`: the low four 16-bit lanes, zero-extended. */
  i32x4ExtendLowI16x8U(): this {
    return this.#simd(0xa9);
  }
  /** `i32x4.extend_high_i16x8_u`: the high four 16-bit lanes, zero-extended. */
  i32x4ExtendHighI16x8U(): this {
    return this.#simd(0xaa);
  }
  /** `i32x4.shr_u` by the i32 on the stack. */
  i32x4ShrU(): this {
    return this.#simd(0xad);
  }
  /** `v128.bitselect` (a, b, mask) -> a where mask bits are set, else b. */
  v128Bitselect(): this {
    return this.#simd(0x52);
  }
  /** `f32x4.nearest` (round to nearest, ties to even). */
  f32x4Nearest(): this {
    return this.#simd(0x6a);
  }
  /** `i32x4.shl` by the i32 on the stack. */
  i32x4Shl(): this {
    return this.#simd(0xab);
  }
  /** `i32x4.add`. */
  i32x4Add(): this {
    return this.#simd(0xae);
  }
  /** `i32x4.min_s`. */
  i32x4MinS(): this {
    return this.#simd(0xb6);
  }
  /** `i32x4.max_s`. */
  i32x4MaxS(): this {
    return this.#simd(0xb8);
  }
  /** `f32x4.sqrt`. */
  f32x4Sqrt(): this {
    return this.#simd(0xe3);
  }
  /** `f32x4.add`. */
  f32x4Add(): this {
    return this.#simd(0xe4);
  }
  /** `f32x4.sub`. */
  f32x4Sub(): this {
    return this.#simd(0xe5);
  }
  /** `f32x4.mul`. */
  f32x4Mul(): this {
    return this.#simd(0xe6);
  }
  /** `f32x4.div`. */
  f32x4Div(): this {
    return this.#simd(0xe7);
  }
  /** `f32x4.min` (NaN wins, -0 < +0). */
  f32x4Min(): this {
    return this.#simd(0xe8);
  }
  /** `f32x4.max` (NaN wins, -0 < +0). */
  f32x4Max(): this {
    return this.#simd(0xe9);
  }
  /** `f32x4.pmin` (b < a ? b : a). */
  f32x4Pmin(): this {
    return this.#simd(0xea);
  }
  /** `f32x4.pmax` (a < b ? b : a). */
  f32x4Pmax(): this {
    return this.#simd(0xeb);
  }
  /** `i32x4.trunc_sat_f32x4_s`. */
  i32x4TruncSatF32x4S(): this {
    return this.#simd(0xf8);
  }
  /** `f32x4.relaxed_madd` (a, b, c) -> a * b + c, fused where the CPU has FMA. */
  f32x4RelaxedMadd(): this {
    return this.#simd(0x105);
  }
}

/** One function of a module under construction. */
export interface FunctionDef {
  /** Export name, or undefined for an internal function. */
  exportName?: string;
  /** Parameter types. */
  params: readonly number[];
  /** Result types (none unless given). */
  results?: readonly number[];
  /** Types of the extra locals, indexed after the parameters (none unless given). */
  locals?: readonly number[];
  /** The encoded instructions, without the final `end`. */
  body: readonly number[];
}

/** Limits of a memory, in pages of 64 KiB. */
export interface MemoryLimits {
  /** Pages at the start. */
  initial: number;
  /** Pages it may grow to (unbounded unless given; a shared memory needs one). */
  maximum?: number;
  /** Whether the memory is shared between threads. */
  shared?: boolean;
}

interface MemoryDef {
  limits: MemoryLimits;
  /** The module and field it is imported from, or undefined where this module defines it. */
  from?: readonly [string, string];
  exportName?: string;
}

/**
 * Builds a module with at most one memory, defined or imported, and functions, which call each
 * other by the index that {@linkcode ModuleBuilder.add} returns. Each function has a type of its
 * own and each local a declaration of its own; the memory's export comes before the functions'.
 */
export class ModuleBuilder {
  #funcs: FunctionDef[] = [];
  #memory: MemoryDef | undefined;

  /** Defines the module's memory, exported as `exportName` when given. */
  defineMemory(limits: MemoryLimits, exportName?: string): this {
    return this.#setMemory({ limits, exportName });
  }

  /** Imports the module's memory as `field` of `module`. */
  importMemory(module: string, field: string, limits: MemoryLimits): this {
    return this.#setMemory({ limits, from: [module, field] });
  }

  #setMemory(def: MemoryDef): this {
    if (this.#memory !== undefined) throw new Error("ModuleBuilder: the memory is already set");
    this.#memory = def;
    return this;
  }

  /** Adds a function and returns its index. */
  add(def: FunctionDef): number {
    this.#funcs.push(def);
    return this.#funcs.length - 1;
  }

  /** Encodes the module. */
  bytes(): Uint8Array<ArrayBuffer> {
    const out = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];
    const section = (id: number, count: number, body: number[]) => {
      if (count === 0) return;
      const s: number[] = [];
      uleb(s, count);
      append(s, body);
      out.push(id);
      vec(out, s);
    };
    const funcs = this.#funcs, mem = this.#memory;
    const types: number[] = [];
    for (const f of funcs) {
      types.push(0x60);
      vec(types, f.params);
      vec(types, f.results ?? []);
    }
    section(1, funcs.length, types);
    const imports: number[] = [];
    if (mem?.from) {
      name(imports, mem.from[0]);
      name(imports, mem.from[1]);
      imports.push(0x02);
      limits(imports, mem.limits);
    }
    section(2, mem?.from ? 1 : 0, imports);
    const indices: number[] = [];
    funcs.forEach((_, i) => uleb(indices, i));
    section(3, funcs.length, indices);
    const memories: number[] = [];
    if (mem && !mem.from) limits(memories, mem.limits);
    section(5, memories.length > 0 ? 1 : 0, memories);
    const exports: number[] = [];
    let exported = 0;
    if (mem?.exportName !== undefined) {
      name(exports, mem.exportName);
      exports.push(0x02, 0x00);
      exported++;
    }
    funcs.forEach((f, i) => {
      if (f.exportName === undefined) return;
      name(exports, f.exportName);
      exports.push(0x00);
      uleb(exports, i);
      exported++;
    });
    section(7, exported, exports);
    const code: number[] = [];
    for (const f of funcs) {
      const body: number[] = [];
      const locals = f.locals ?? [];
      uleb(body, locals.length);
      for (const t of locals) body.push(1, t);
      append(body, f.body);
      body.push(0x0b);
      vec(code, body);
    }
    section(10, funcs.length, code);
    return new Uint8Array(out);
  }
}

function limits(out: number[], l: MemoryLimits): void {
  out.push((l.maximum === undefined ? 0 : 1) | (l.shared ? 2 : 0));
  uleb(out, l.initial);
  if (l.maximum !== undefined) uleb(out, l.maximum);
}

let relaxed: boolean | undefined;

/** Whether this engine validates `f32x4.relaxed_madd` (the relaxed SIMD proposal). */
export function hasRelaxedSimd(): boolean {
  if (relaxed === undefined) {
    const m = new ModuleBuilder().defineMemory({ initial: 1 }, "memory");
    const c = new Code().get(0).get(0).get(0).f32x4RelaxedMadd();
    m.add({ params: [V128], results: [V128], body: c.bytes });
    relaxed = WebAssembly.validate(m.bytes());
  }
  return relaxed;
}
