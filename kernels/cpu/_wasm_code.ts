/**
 * An instruction writer for WebAssembly function bodies: the control, integer and v128 SIMD
 * opcodes the generated CPU kernels use. Each method appends one instruction and returns `this`.
 *
 * @module
 */

import { sleb, uleb } from "./_wasm_encode.ts";

/** Block type of a block, loop or if without results. */
const EMPTY = 0x40;

/** Appends instructions to a byte array. */
export class Code {
  /** The encoded instructions so far. */
  readonly bytes: number[] = [];

  #op(...b: number[]): this {
    for (const x of b) this.bytes.push(x);
    return this;
  }

  #simd(op: number): this {
    this.bytes.push(0xfd);
    uleb(this.bytes, op);
    return this;
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
  /** `end` of a block, loop or if. */
  end(): this {
    return this.#op(0x0b);
  }
  /** `br_if depth`. */
  brIf(depth: number): this {
    this.#op(0x0d);
    uleb(this.bytes, depth);
    return this;
  }
  /** `call f`. */
  call(f: number): this {
    this.#op(0x10);
    uleb(this.bytes, f);
    return this;
  }

  // Locals.
  /** `local.get i`. */
  get(i: number): this {
    this.#op(0x20);
    uleb(this.bytes, i);
    return this;
  }
  /** `local.set i`. */
  set(i: number): this {
    this.#op(0x21);
    uleb(this.bytes, i);
    return this;
  }
  /** `local.tee i`. */
  tee(i: number): this {
    this.#op(0x22);
    uleb(this.bytes, i);
    return this;
  }

  // Integer arithmetic.
  /** `i32.const n`. */
  i32(n: number): this {
    this.#op(0x41);
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
  /** `i32.add`. */
  add(): this {
    return this.#op(0x6a);
  }
  /** `i32.mul`. */
  mul(): this {
    return this.#op(0x6c);
  }
  /** `i32.and`. */
  i32And(): this {
    return this.#op(0x71);
  }

  // SIMD.
  /** `v128.load` at the address on the stack plus `offset` bytes. */
  v128Load(offset = 0): this {
    return this.#simd(0x00).#mem(4, offset);
  }
  /** `v128.load32_splat`: one float at address plus `offset`, broadcast to four lanes. */
  load32Splat(offset = 0): this {
    return this.#simd(0x09).#mem(2, offset);
  }
  /** `v128.store` (address, value) at the address plus `offset` bytes. */
  v128Store(offset = 0): this {
    return this.#simd(0x0b).#mem(4, offset);
  }
  /** `f32x4.add`. */
  f32x4Add(): this {
    return this.#simd(0xe4);
  }
  /** `f32x4.mul`. */
  f32x4Mul(): this {
    return this.#simd(0xe6);
  }
  /** `f32x4.relaxed_madd` (a, b, c) -> a * b + c, fused where the CPU has FMA. */
  f32x4RelaxedMadd(): this {
    return this.#simd(0x105);
  }
}
