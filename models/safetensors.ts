/**
 * The safetensors format: an 8-byte little-endian header length, a JSON header mapping each
 * tensor name to `{ dtype, shape, data_offsets }` (plus an optional `__metadata__` map of
 * strings), then the raw little-endian tensor bytes. Readers validate every header field and
 * size and name what is wrong; writers pad the header with spaces to an 8-byte boundary.
 *
 * @module
 */

/** Element types of the safetensors format. */
export type SafetensorsDType =
  | "F64"
  | "F32"
  | "F16"
  | "BF16"
  | "I64"
  | "I32"
  | "I16"
  | "I8"
  | "U8"
  | "BOOL";

const ITEM_SIZE: Record<SafetensorsDType, number> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U8: 1,
  BOOL: 1,
};

/** Largest header accepted (the reference implementation's limit). */
const MAX_HEADER = 100_000_000;

/** One tensor read from a safetensors file: its element type, shape and raw bytes. */
export interface SafetensorsEntry {
  /** Element type. */
  readonly dtype: SafetensorsDType;
  /** Shape, row-major; `[]` for a scalar. */
  readonly shape: readonly number[];
  /** The raw little-endian bytes (a copy, safe to keep). */
  readonly bytes: Uint8Array;
}

/** A decoded safetensors file. */
export interface SafetensorsFile {
  /** Tensors in header order. */
  readonly tensors: Map<string, SafetensorsEntry>;
  /** The `__metadata__` string map (empty when absent). */
  readonly metadata: Record<string, string>;
}

/** A tensor to write: data as a typed array, with its shape and optionally its dtype. */
export interface SafetensorsInput {
  /** Shape, row-major; `[]` for a scalar. Its product must equal `data.length`. */
  shape: readonly number[];
  /** The elements; F32 for a Float32Array, I32 for an Int32Array, and so on. */
  data:
    | Float32Array
    | Float64Array
    | Int32Array
    | Uint8Array
    | Uint16Array
    | Int8Array
    | Int16Array;
  /** Element type, needed only for F16/BF16 (given as Uint16Array bits) and BOOL. */
  dtype?: SafetensorsDType;
}

function corrupt(what: string): TypeError {
  return new TypeError(`Corrupt safetensors file: ${what}`);
}

function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/**
 * Decode a safetensors file from its bytes, checking the header and every size.
 *
 * @example Round trip
 * ```ts
 * import { decodeSafetensors, encodeSafetensors, toFloat32 } from "./safetensors.ts";
 * const bytes = encodeSafetensors({ w: { shape: [2], data: new Float32Array([1, 2]) } });
 * const file = decodeSafetensors(bytes);
 * console.assert(toFloat32(file.tensors.get("w")!)[1] === 2);
 * ```
 *
 * @param bytes the whole file
 * @returns the tensors and metadata
 * @throws {TypeError} when the file is truncated, its header is not valid JSON or an entry is
 *   malformed, out of bounds or overlaps another
 */
export function decodeSafetensors(bytes: Uint8Array): SafetensorsFile {
  if (bytes.length < 8) {
    throw corrupt(`${bytes.length} bytes is too short for the 8-byte header length (truncated?)`);
  }
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLen = Number(dv.getBigUint64(0, true));
  if (headerLen > MAX_HEADER) {
    throw corrupt(`header length ${headerLen} exceeds the ${MAX_HEADER}-byte limit`);
  }
  if (8 + headerLen > bytes.length) {
    throw corrupt(
      `header length ${headerLen} runs past the end of the ${bytes.length}-byte file (truncated?)`,
    );
  }
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(
      bytes.subarray(8, 8 + headerLen),
    ));
  } catch (e) {
    throw corrupt(`the header is not valid UTF-8 JSON (${(e as Error).message})`);
  }
  if (header === null || typeof header !== "object" || Array.isArray(header)) {
    throw corrupt("the header must be a JSON object");
  }
  const data = bytes.subarray(8 + headerLen);
  const metadata: Record<string, string> = {};
  const tensors = new Map<string, SafetensorsEntry>();
  const ranges: [number, number, string][] = [];
  for (const [name, value] of Object.entries(header as Record<string, unknown>)) {
    if (name === "__metadata__") {
      if (value === null || typeof value !== "object" || Array.isArray(value)) {
        throw corrupt("__metadata__ must be an object of strings");
      }
      for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
        if (typeof v !== "string") throw corrupt(`__metadata__.${k} must be a string`);
        metadata[k] = v;
      }
      continue;
    }
    const e = value as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (e === null || typeof e !== "object") throw corrupt(`entry "${name}" is not an object`);
    if (typeof e.dtype !== "string" || !(e.dtype in ITEM_SIZE)) {
      throw corrupt(
        `tensor "${name}" has dtype ${JSON.stringify(e.dtype)}; known: ${
          Object.keys(ITEM_SIZE).join(", ")
        }`,
      );
    }
    const dtype = e.dtype as SafetensorsDType;
    if (
      !Array.isArray(e.shape) ||
      !e.shape.every((d) => Number.isSafeInteger(d) && (d as number) >= 0)
    ) {
      throw corrupt(`tensor "${name}" has shape ${JSON.stringify(e.shape)}: need integers >= 0`);
    }
    const shape = e.shape as number[];
    const off = e.data_offsets;
    if (
      !Array.isArray(off) || off.length !== 2 ||
      !off.every((d) => Number.isSafeInteger(d) && (d as number) >= 0) ||
      (off[0] as number) > (off[1] as number)
    ) {
      throw corrupt(
        `tensor "${name}" has data_offsets ${JSON.stringify(off)}: need [begin, end], begin <= end`,
      );
    }
    const [begin, end] = off as [number, number];
    const want = numel(shape) * ITEM_SIZE[dtype];
    if (end - begin !== want) {
      throw corrupt(
        `tensor "${name}" (${dtype} [${shape}]) needs ${want} bytes but data_offsets give ${
          end - begin
        }`,
      );
    }
    if (end > data.length) {
      throw corrupt(
        `tensor "${name}" ends at byte ${end} of a ${data.length}-byte data section (truncated?)`,
      );
    }
    ranges.push([begin, end, name]);
    tensors.set(name, { dtype, shape: [...shape], bytes: data.slice(begin, end) });
  }
  ranges.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  for (let i = 1; i < ranges.length; i++) {
    const [b, , n] = ranges[i];
    const [, pe, pn] = ranges[i - 1];
    if (b < pe) throw corrupt(`tensors "${pn}" and "${n}" overlap (byte ${b} < ${pe})`);
  }
  return { tensors, metadata };
}

function dtypeOfArray(data: SafetensorsInput["data"]): SafetensorsDType {
  if (data instanceof Float32Array) return "F32";
  if (data instanceof Float64Array) return "F64";
  if (data instanceof Int32Array) return "I32";
  if (data instanceof Int16Array) return "I16";
  if (data instanceof Int8Array) return "I8";
  if (data instanceof Uint8Array) return "U8";
  throw new TypeError('A Uint16Array needs an explicit dtype: "F16" or "BF16"');
}

/**
 * Encode tensors (and optional string metadata) as a safetensors file, in the order given.
 *
 * @param tensors name to tensor, as a record or a map
 * @param metadata strings stored under `__metadata__`
 * @returns the file's bytes
 * @throws {TypeError} when a shape does not match its data or a dtype does not match its array
 */
export function encodeSafetensors(
  tensors: Record<string, SafetensorsInput> | Map<string, SafetensorsInput>,
  metadata?: Record<string, string>,
): Uint8Array {
  const entries = tensors instanceof Map ? [...tensors] : Object.entries(tensors);
  const header: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length > 0) {
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== "string") {
        throw new TypeError(`Metadata "${k}" must be a string, got ${typeof v}`);
      }
    }
    header.__metadata__ = metadata;
  }
  let offset = 0;
  const parts: Uint8Array[] = [];
  for (const [name, t] of entries) {
    if (name === "__metadata__") throw new TypeError("A tensor cannot be named __metadata__");
    const dtype = t.dtype ?? dtypeOfArray(t.data);
    const size = ITEM_SIZE[dtype];
    if (size === undefined) throw new TypeError(`Tensor "${name}" has unknown dtype ${dtype}`);
    if (t.data.BYTES_PER_ELEMENT !== size) {
      throw new TypeError(
        `Tensor "${name}": dtype ${dtype} needs ${size}-byte elements, got a ${t.data.constructor.name}`,
      );
    }
    if (numel(t.shape) !== t.data.length) {
      throw new TypeError(
        `Tensor "${name}" has shape [${t.shape}] (${
          numel(t.shape)
        } elements) but ${t.data.length} values`,
      );
    }
    const b = new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
    header[name] = { dtype, shape: [...t.shape], data_offsets: [offset, offset + b.length] };
    parts.push(b);
    offset += b.length;
  }
  let json = JSON.stringify(header);
  const enc = new TextEncoder();
  let hb = enc.encode(json);
  const pad = (8 - (hb.length % 8)) % 8;
  if (pad) {
    json += " ".repeat(pad);
    hb = enc.encode(json);
  }
  const out = new Uint8Array(8 + hb.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(hb.length), true);
  out.set(hb, 8);
  let p = 8 + hb.length;
  for (const b of parts) {
    out.set(b, p);
    p += b.length;
  }
  return out;
}

function f16ToF32(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

/**
 * The elements of an entry as float32, converting from F64, F16, BF16 and the integer types.
 *
 * @param e the entry
 * @returns a new Float32Array
 */
export function toFloat32(e: SafetensorsEntry): Float32Array {
  const b = e.bytes;
  const n = numel(e.shape);
  const out = new Float32Array(n);
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  switch (e.dtype) {
    case "F32":
      for (let i = 0; i < n; i++) out[i] = dv.getFloat32(4 * i, true);
      break;
    case "F64":
      for (let i = 0; i < n; i++) out[i] = dv.getFloat64(8 * i, true);
      break;
    case "F16":
      for (let i = 0; i < n; i++) out[i] = f16ToF32(dv.getUint16(2 * i, true));
      break;
    case "BF16": {
      const u = new Uint32Array(out.buffer);
      for (let i = 0; i < n; i++) u[i] = dv.getUint16(2 * i, true) << 16;
      break;
    }
    case "I64":
      for (let i = 0; i < n; i++) out[i] = Number(dv.getBigInt64(8 * i, true));
      break;
    case "I32":
      for (let i = 0; i < n; i++) out[i] = dv.getInt32(4 * i, true);
      break;
    case "I16":
      for (let i = 0; i < n; i++) out[i] = dv.getInt16(2 * i, true);
      break;
    case "I8":
      for (let i = 0; i < n; i++) out[i] = dv.getInt8(i);
      break;
    case "U8":
    case "BOOL":
      for (let i = 0; i < n; i++) out[i] = b[i];
      break;
  }
  return out;
}

/**
 * The elements of an integer entry (I32, I64, I16, I8, U8, BOOL) as int32.
 *
 * @param e the entry
 * @returns a new Int32Array
 * @throws {TypeError} for a floating-point entry or an I64 value outside the int32 range
 */
export function toInt32(e: SafetensorsEntry): Int32Array {
  if (e.dtype === "F32" || e.dtype === "F64" || e.dtype === "F16" || e.dtype === "BF16") {
    throw new TypeError(`Cannot read a ${e.dtype} tensor as int32: use toFloat32()`);
  }
  if (e.dtype === "I64") {
    const n = numel(e.shape);
    const dv = new DataView(e.bytes.buffer, e.bytes.byteOffset, e.bytes.byteLength);
    const out = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      const v = dv.getBigInt64(8 * i, true);
      if (v > 2147483647n || v < -2147483648n) {
        throw new RangeError(`I64 value ${v} at index ${i} does not fit in int32`);
      }
      out[i] = Number(v);
    }
    return out;
  }
  if (e.dtype === "I32") {
    const n = numel(e.shape);
    const dv = new DataView(e.bytes.buffer, e.bytes.byteOffset, e.bytes.byteLength);
    const out = new Int32Array(n);
    for (let i = 0; i < n; i++) out[i] = dv.getInt32(4 * i, true);
    return out;
  }
  return Int32Array.from(toFloat32(e));
}

/**
 * Read and decode a safetensors file.
 *
 * @param path the file's path
 * @returns the tensors and metadata
 * @throws {TypeError} when the file is corrupt (see {@linkcode decodeSafetensors})
 */
export async function readSafetensors(path: string | URL): Promise<SafetensorsFile> {
  const bytes = await Deno.readFile(path);
  try {
    return decodeSafetensors(bytes);
  } catch (e) {
    if (e instanceof TypeError) throw new TypeError(`${path}: ${e.message}`);
    throw e;
  }
}

/**
 * Encode tensors and write them to a safetensors file.
 *
 * @param path the file's path
 * @param tensors name to tensor
 * @param metadata strings stored under `__metadata__`
 */
export async function writeSafetensors(
  path: string | URL,
  tensors: Record<string, SafetensorsInput> | Map<string, SafetensorsInput>,
  metadata?: Record<string, string>,
): Promise<void> {
  await Deno.writeFile(path, encodeSafetensors(tensors, metadata));
}
