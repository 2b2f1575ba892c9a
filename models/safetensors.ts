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
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLen = headerLength(dv, bytes.length);
  const h = parseHeader(bytes.subarray(8, 8 + headerLen), bytes.length - 8 - headerLen);
  const data = bytes.subarray(8 + headerLen);
  const tensors = new Map<string, SafetensorsEntry>();
  for (const [name, e] of h.entries) {
    tensors.set(name, { dtype: e.dtype, shape: e.shape, bytes: data.slice(e.begin, e.end) });
  }
  return { tensors, metadata: h.metadata };
}

/** Where a tensor's bytes sit in a safetensors file's data section. */
export interface SafetensorsIndexEntry {
  /** Element type. */
  readonly dtype: SafetensorsDType;
  /** Shape, row-major. */
  readonly shape: readonly number[];
  /** First byte in the data section. */
  readonly begin: number;
  /** One past the last byte. */
  readonly end: number;
}

function headerLength(dv: DataView, total: number): number {
  if (total < 8) {
    throw corrupt(`${total} bytes is too short for the 8-byte header length (truncated?)`);
  }
  const headerLen = Number(dv.getBigUint64(0, true));
  if (headerLen > MAX_HEADER) {
    throw corrupt(`header length ${headerLen} exceeds the ${MAX_HEADER}-byte limit`);
  }
  if (8 + headerLen > total) {
    throw corrupt(
      `header length ${headerLen} runs past the end of the ${total}-byte file (truncated?)`,
    );
  }
  return headerLen;
}

function parseHeader(
  headerBytes: Uint8Array,
  dataLength: number,
): { entries: Map<string, SafetensorsIndexEntry>; metadata: Record<string, string> } {
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(headerBytes));
  } catch (e) {
    throw corrupt(`the header is not valid UTF-8 JSON (${(e as Error).message})`);
  }
  if (header === null || typeof header !== "object" || Array.isArray(header)) {
    throw corrupt("the header must be a JSON object");
  }
  const metadata: Record<string, string> = {};
  const entries = new Map<string, SafetensorsIndexEntry>();
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
    if (end > dataLength) {
      throw corrupt(
        `tensor "${name}" ends at byte ${end} of a ${dataLength}-byte data section (truncated?)`,
      );
    }
    ranges.push([begin, end, name]);
    entries.set(name, { dtype, shape: [...shape], begin, end });
  }
  ranges.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  for (let i = 1; i < ranges.length; i++) {
    const [b, , n] = ranges[i];
    const [, pe, pn] = ranges[i - 1];
    if (b < pe) throw corrupt(`tensors "${pn}" and "${n}" overlap (byte ${b} < ${pe})`);
  }
  return { entries, metadata };
}

/** A safetensors file opened for reading one tensor at a time (nothing else is loaded). */
export interface SafetensorsReader {
  /** Every tensor's place, in header order. */
  readonly entries: ReadonlyMap<string, SafetensorsIndexEntry>;
  /** The `__metadata__` string map (empty when absent). */
  readonly metadata: Record<string, string>;
  /**
   * Read one tensor's raw bytes.
   *
   * @param name the tensor
   * @returns its bytes (a new buffer)
   */
  read(name: string): Promise<Uint8Array>;
  /**
   * Read one tensor's raw bytes into `into` (which must hold exactly its bytes), without
   * allocating.
   *
   * @param name the tensor
   * @param into where its bytes go
   */
  readInto(name: string, into: Uint8Array): Promise<void>;
  /** Close the file. */
  close(): void;
}

/**
 * Open a safetensors file, check its header, and read tensors from it one at a time.
 *
 * @param path the file's path
 * @returns the reader
 * @throws {TypeError} when the header is corrupt or a tensor lies past the end of the file
 */
export async function openSafetensors(path: string | URL): Promise<SafetensorsReader> {
  const file = await Deno.open(path, { read: true });
  try {
    const total = (await file.stat()).size;
    const head = new Uint8Array(Math.min(8, total));
    await readFully(file, head, 0);
    const headerLen = headerLength(new DataView(head.buffer), total);
    const hb = new Uint8Array(headerLen);
    await readFully(file, hb, 8);
    let h;
    try {
      h = parseHeader(hb, total - 8 - headerLen);
    } catch (e) {
      if (e instanceof TypeError) throw new TypeError(`${path}: ${e.message}`);
      throw e;
    }
    const base = 8 + headerLen;
    return {
      entries: h.entries,
      metadata: h.metadata,
      async read(name: string): Promise<Uint8Array> {
        const e = h.entries.get(name);
        if (!e) throw new TypeError(`${path} has no tensor "${name}"`);
        const out = new Uint8Array(e.end - e.begin);
        await readFully(file, out, base + e.begin);
        return out;
      },
      async readInto(name: string, into: Uint8Array): Promise<void> {
        const e = h.entries.get(name);
        if (!e) throw new TypeError(`${path} has no tensor "${name}"`);
        if (into.length !== e.end - e.begin) {
          throw new RangeError(
            `Tensor "${name}" of ${path} has ${e.end - e.begin} bytes, the buffer ${into.length}`,
          );
        }
        await readFully(file, into, base + e.begin);
      },
      close: () => file.close(),
    };
  } catch (e) {
    file.close();
    throw e;
  }
}

async function readFully(file: Deno.FsFile, into: Uint8Array, at: number): Promise<void> {
  await file.seek(at, Deno.SeekMode.Start);
  let got = 0;
  while (got < into.length) {
    const n = await file.read(into.subarray(got));
    if (n === null) throw corrupt(`the file ends ${into.length - got} bytes early (truncated?)`);
    got += n;
  }
}

/** A tensor the {@linkcode SafetensorsWriter} will write: its name, element type and shape. */
export interface SafetensorsPlanEntry {
  /** Tensor name. */
  readonly name: string;
  /** Element type. */
  readonly dtype: SafetensorsDType;
  /** Shape, row-major. */
  readonly shape: readonly number[];
}

/** Options of {@linkcode SafetensorsWriter.create}. */
export interface SafetensorsWriterOptions {
  /**
   * Sees every byte written, in file order, before it is written (e.g. to hash the file
   * while it streams out).
   */
  onBytes?: (bytes: Uint8Array) => void;
}

/**
 * Writes a safetensors file one tensor at a time, in the order planned, so the whole file is
 * never built in memory: the header first (every name, type and shape is known up front), then
 * each tensor's bytes as they come.
 */
export class SafetensorsWriter {
  #file: Deno.FsFile;
  #plan: readonly SafetensorsPlanEntry[];
  #next = 0;
  #bytes = 0;
  #onBytes: ((bytes: Uint8Array) => void) | undefined;

  private constructor(
    file: Deno.FsFile,
    plan: readonly SafetensorsPlanEntry[],
    onBytes: ((bytes: Uint8Array) => void) | undefined,
  ) {
    this.#file = file;
    this.#plan = plan;
    this.#onBytes = onBytes;
  }

  /**
   * Create the file and write its header.
   *
   * @param path the file's path (created or truncated)
   * @param plan the tensors in the order they will be written
   * @param metadata strings stored under `__metadata__`
   * @param opts a hook that sees every byte written
   * @returns the writer
   */
  static async create(
    path: string | URL,
    plan: readonly SafetensorsPlanEntry[],
    metadata?: Record<string, string>,
    opts: SafetensorsWriterOptions = {},
  ): Promise<SafetensorsWriter> {
    const header = headerOf(plan.map((p) => [p.name, p.dtype, p.shape] as const), metadata);
    const file = await Deno.open(path, { write: true, create: true, truncate: true });
    const w = new SafetensorsWriter(file, plan, opts.onBytes);
    try {
      await w.#put(header);
    } catch (e) {
      file.close();
      throw e;
    }
    return w;
  }

  /** Bytes written so far (the file's length once every planned tensor is written). */
  get bytesWritten(): number {
    return this.#bytes;
  }

  async #put(b: Uint8Array): Promise<void> {
    this.#onBytes?.(b);
    let done = 0;
    while (done < b.length) done += await this.#file.write(b.subarray(done));
    this.#bytes += b.length;
  }

  /**
   * Write the next planned tensor.
   *
   * @param name its name (must be the next in the plan)
   * @param data its elements, of the planned type and size
   */
  async write(name: string, data: SafetensorsInput["data"]): Promise<void> {
    const p = this.#plan[this.#next];
    if (!p || p.name !== name) {
      throw new RangeError(`Tensor "${name}" is written out of order: expected "${p?.name}"`);
    }
    if (data.length !== numel(p.shape) || data.BYTES_PER_ELEMENT !== ITEM_SIZE[p.dtype]) {
      throw new TypeError(
        `Tensor "${name}" is planned as ${p.dtype} [${p.shape}], got ${data.constructor.name}` +
          `[${data.length}]`,
      );
    }
    await this.#put(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    this.#next++;
  }

  /**
   * Flush the file to disk and close it.
   *
   * @throws {RangeError} when a planned tensor was not written
   */
  async close(): Promise<void> {
    try {
      if (this.#next !== this.#plan.length) {
        throw new RangeError(
          `Only ${this.#next} of ${this.#plan.length} planned tensors were written`,
        );
      }
      await this.#file.sync();
    } finally {
      this.#file.close();
    }
  }

  /** Close the file without finishing it (after an error); what was written stays. */
  abort(): void {
    try {
      this.#file.close();
    } catch {
      // already closed
    }
  }
}

function headerOf(
  entries: readonly (readonly [string, SafetensorsDType, readonly number[]])[],
  metadata?: Record<string, string>,
): Uint8Array {
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
  for (const [name, dtype, shape] of entries) {
    if (name === "__metadata__") throw new TypeError("A tensor cannot be named __metadata__");
    const size = ITEM_SIZE[dtype];
    if (size === undefined) throw new TypeError(`Tensor "${name}" has unknown dtype ${dtype}`);
    const n = numel(shape) * size;
    header[name] = { dtype, shape: [...shape], data_offsets: [offset, offset + n] };
    offset += n;
  }
  let json = JSON.stringify(header);
  const pad = (8 - (new TextEncoder().encode(json).length % 8)) % 8;
  json += " ".repeat(pad);
  const hb = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + hb.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(hb.length), true);
  out.set(hb, 8);
  return out;
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
  const parts: Uint8Array[] = [];
  const plan: [string, SafetensorsDType, readonly number[]][] = [];
  for (const [name, t] of entries) {
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
    plan.push([name, dtype, t.shape]);
    parts.push(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
  }
  const head = headerOf(plan, metadata);
  const out = new Uint8Array(head.length + parts.reduce((n, b) => n + b.length, 0));
  out.set(head, 0);
  let p = head.length;
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
