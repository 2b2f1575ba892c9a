/**
 * A small WebAssembly binary encoder: value types, LEB128, and a module builder with one memory,
 * function types, functions and exports. Enough for the generated CPU kernels, nothing more.
 *
 * @module
 */

/** 32-bit integer value type. */
export const I32 = 0x7f;
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

function name(out: number[], s: string): void {
  const bytes = new TextEncoder().encode(s);
  uleb(out, bytes.length);
  for (const b of bytes) out.push(b);
}

function section(out: number[], id: number, body: number[]): void {
  out.push(id);
  uleb(out, body.length);
  for (const b of body) out.push(b);
}

/** One function of a module under construction. */
export interface FunctionDef {
  /** Export name, or undefined for an internal function. */
  exportName?: string;
  /** Parameter types. */
  params: number[];
  /** Result types. */
  results: number[];
  /** Types of the extra locals, indexed after the parameters. */
  locals: number[];
  /** The encoded instructions, without the final `end`. */
  body: number[];
}

/**
 * Builds a module with one memory (defined here and exported as `memory`) and functions,
 * which call each other by the index that {@linkcode ModuleBuilder.add} returns.
 */
export class ModuleBuilder {
  #funcs: FunctionDef[] = [];

  constructor(readonly memoryPages: number) {}

  /** Adds a function and returns its index. */
  add(def: FunctionDef): number {
    this.#funcs.push(def);
    return this.#funcs.length - 1;
  }

  /** Encodes the module. */
  bytes(): Uint8Array {
    const out = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];
    const types: number[] = [];
    uleb(types, this.#funcs.length);
    for (const f of this.#funcs) {
      types.push(0x60);
      uleb(types, f.params.length);
      types.push(...f.params);
      uleb(types, f.results.length);
      types.push(...f.results);
    }
    section(out, 1, types);
    const funcs: number[] = [];
    uleb(funcs, this.#funcs.length);
    for (let i = 0; i < this.#funcs.length; i++) uleb(funcs, i);
    section(out, 3, funcs);
    const mem: number[] = [1, 0x00];
    uleb(mem, this.memoryPages);
    section(out, 5, mem);
    const exports: number[] = [];
    const exported = this.#funcs.map((f, i) => [f, i] as const).filter(([f]) => f.exportName);
    uleb(exports, exported.length + 1);
    name(exports, "memory");
    exports.push(0x02, 0x00);
    for (const [f, i] of exported) {
      name(exports, f.exportName!);
      exports.push(0x00);
      uleb(exports, i);
    }
    section(out, 7, exports);
    const code: number[] = [];
    uleb(code, this.#funcs.length);
    for (const f of this.#funcs) {
      const body: number[] = [];
      uleb(body, f.locals.length);
      for (const t of f.locals) body.push(1, t);
      for (const b of f.body) body.push(b);
      body.push(0x0b);
      uleb(code, body.length);
      for (const b of body) code.push(b);
    }
    section(out, 10, code);
    return new Uint8Array(out);
  }
}
