/**
 * The TCP wire format: every message is a 36-byte little-endian header followed by `length`
 * payload bytes.
 *
 * ```
 * offset  size  field
 *      0     4  magic    0x4d4f4f4c ("LOOM" on the wire)
 *      4     2  version  PROTOCOL_VERSION
 *      6     1  op       FrameOp
 *      7     1  dtype    low nibble: dtype code; high nibble: reduce-op code
 *      8     4  src      sender's rank in the world
 *     12     4  group    id of the group the frame belongs to
 *     16     4  tag      user tag (send/recv) or step/chunk index (collectives), int32
 *     20     4  seq      per-group collective sequence number
 *     24     4  total    element count of the whole op, for mismatch checks
 *     28     4  arg      op argument that every rank must agree on (root), for mismatch checks
 *     32     4  length   payload bytes that follow the header
 * ```
 *
 * The control ops (`hello`, `table`, `peerHello`, `error`, `auth`) are the rendezvous's and the
 * handshake's, described in {@link ./rendezvous.ts}; `lane` frames open lanes
 * ({@link ./_tcp_lane.ts}); `bye` and `abort` end a connection or a group.
 *
 * {@linkcode FrameReader} parses frames off a connection with a buffered reader, reading large
 * payloads straight into a destination the consumer posted; {@linkcode writeAll} loops until a
 * buffer is fully written (Deno's `Conn.write` writes partially).
 *
 * @module
 */
import type { DType, ReduceOp } from "./communicator.ts";

/** Where frames are written: anything with Deno's `write` (a `Deno.Conn`). */
export interface ByteWriter {
  /** Write some bytes; returns how many were written. */
  write(p: Uint8Array): Promise<number>;
}

/** Where frames are read from: anything with Deno's `read` (a `Deno.Conn`). */
export interface ByteReader {
  /** Read up to `p.length` bytes into `p`; null at end of stream. */
  read(p: Uint8Array): Promise<number | null>;
}

const EMPTY = new Uint8Array(0);

/** First four header bytes of every frame. */
export const FRAME_MAGIC = 0x4d4f4f4c;
/** Wire protocol version; a peer with another version is dropped. */
export const PROTOCOL_VERSION = 1;
/** Header size in bytes. */
export const HEADER_BYTES = 36;
/** Default largest payload accepted in one frame (bigger messages travel as several frames). */
export const DEFAULT_MAX_FRAME_BYTES = 64 * 1024 * 1024;
/**
 * Largest payload accepted from a connection that has not yet been accepted into the job (its
 * handshake and hello): control frames are small, and a stranger must not make a rank allocate.
 */
export const CONTROL_FRAME_BYTES = 4096;

/** What a frame carries. Collectives use the op they belong to; the rest are control frames. */
export const FrameOp = {
  allReduce: 1,
  reduceScatter: 2,
  allGather: 3,
  broadcast: 4,
  reduce: 5,
  allToAll: 6,
  send: 7,
  barrier: 8,
  split: 9,
  hello: 16,
  table: 17,
  peerHello: 18,
  error: 19,
  bye: 20,
  abort: 21,
  lane: 22,
  auth: 23,
} as const;

/** Numeric op code of a frame. */
export type FrameOpCode = typeof FrameOp[keyof typeof FrameOp];

const OP_NAMES = new Map<number, string>(Object.entries(FrameOp).map(([k, v]) => [v, k]));

/**
 * Name of a frame op code, for messages.
 *
 * @param op the code
 * @returns the op's name, or `op#<code>` for an unknown code
 */
export function frameOpName(op: number): string {
  return OP_NAMES.get(op) ?? `op#${op}`;
}

const DTYPES: readonly (DType | "none")[] = ["none", "float32", "int32", "float16", "bfloat16"];
const REDOPS: readonly (ReduceOp | "none")[] = ["none", "sum", "max", "min", "avg"];

/**
 * Pack a dtype and a reduce op into the header's dtype byte.
 *
 * @param dtype element type, if the frame carries elements
 * @param op reduction, if the frame belongs to a reduction
 * @returns the byte
 */
export function packKind(dtype?: DType, op?: ReduceOp): number {
  const d = dtype === undefined ? 0 : DTYPES.indexOf(dtype);
  const r = op === undefined ? 0 : REDOPS.indexOf(op);
  return (d & 15) | ((r & 15) << 4);
}

/**
 * Describe a packed dtype byte, for mismatch messages.
 *
 * @param kind the byte
 * @returns e.g. `"float32 sum"`
 */
export function describeKind(kind: number): string {
  const d = DTYPES[kind & 15] ?? `dtype#${kind & 15}`;
  const r = REDOPS[kind >> 4] ?? `op#${kind >> 4}`;
  return r === "none" ? `${d}` : `${d} ${r}`;
}

/** A parsed frame header. */
export interface FrameHeader {
  /** What the frame carries. */
  op: number;
  /** Packed dtype and reduce op (see {@linkcode packKind}). */
  kind: number;
  /** Sender's world rank. */
  src: number;
  /** Group id. */
  group: number;
  /** Tag (send/recv) or step index (collectives). */
  tag: number;
  /** Per-group collective sequence number. */
  seq: number;
  /** Element count of the whole op. */
  total: number;
  /** Op argument every rank must agree on (the root of broadcast and reduce), else 0. */
  arg: number;
  /** Payload bytes following the header. */
  length: number;
}

/**
 * Write a header into `out` at `offset`.
 *
 * @param out destination, at least `offset + HEADER_BYTES` long
 * @param h the header fields
 * @param offset where to write
 */
export function encodeHeader(out: Uint8Array, h: FrameHeader, offset = 0): void {
  const v = new DataView(out.buffer, out.byteOffset + offset, HEADER_BYTES);
  v.setUint32(0, FRAME_MAGIC, true);
  v.setUint16(4, PROTOCOL_VERSION, true);
  v.setUint8(6, h.op);
  v.setUint8(7, h.kind);
  v.setUint32(8, h.src, true);
  v.setUint32(12, h.group >>> 0, true);
  v.setInt32(16, h.tag, true);
  v.setUint32(20, h.seq >>> 0, true);
  v.setUint32(24, h.total >>> 0, true);
  v.setUint32(28, h.arg >>> 0, true);
  v.setUint32(32, h.length, true);
}

/** A header that failed validation; the connection that sent it is dropped. */
export class FrameError extends Error {
  /** True when the stream ended inside a frame (a lost peer rather than a bad one). */
  readonly truncated: boolean;
  /**
   * @param message what was wrong with the bytes
   * @param truncated whether the stream ended inside a frame
   */
  constructor(message: string, truncated = false) {
    super(message);
    this.name = "FrameError";
    this.truncated = truncated;
  }
}

/**
 * Parse and validate a header.
 *
 * @param buf bytes holding at least `offset + HEADER_BYTES`
 * @param offset where the header starts
 * @param maxFrameBytes largest payload accepted
 * @returns the header
 * @throws {FrameError} on a wrong magic or version, an unknown op or an oversized payload
 */
export function decodeHeader(
  buf: Uint8Array,
  offset = 0,
  maxFrameBytes = DEFAULT_MAX_FRAME_BYTES,
): FrameHeader {
  const v = new DataView(buf.buffer, buf.byteOffset + offset, HEADER_BYTES);
  const magic = v.getUint32(0, true);
  if (magic !== FRAME_MAGIC) {
    throw new FrameError(
      `bad magic 0x${magic.toString(16).padStart(8, "0")} (expected 0x${
        FRAME_MAGIC.toString(16)
      }): not a Loom peer`,
    );
  }
  const version = v.getUint16(4, true);
  if (version !== PROTOCOL_VERSION) {
    throw new FrameError(
      `protocol version ${version}, this build speaks ${PROTOCOL_VERSION}: run the same Loom ` +
        `version on every node`,
    );
  }
  const op = v.getUint8(6);
  if (!OP_NAMES.has(op)) throw new FrameError(`unknown frame op ${op}`);
  const length = v.getUint32(32, true);
  if (length > maxFrameBytes) {
    throw new FrameError(`frame of ${length} bytes exceeds the limit of ${maxFrameBytes} bytes`);
  }
  return {
    op,
    kind: v.getUint8(7),
    src: v.getUint32(8, true),
    group: v.getUint32(12, true),
    tag: v.getInt32(16, true),
    seq: v.getUint32(20, true),
    total: v.getUint32(24, true),
    arg: v.getUint32(28, true),
    length,
  };
}

/**
 * Write every byte of `data` (Deno's `write` may write only part of a buffer).
 *
 * @param w the connection
 * @param data bytes to write
 */
export async function writeAll(w: ByteWriter, data: Uint8Array): Promise<void> {
  let off = 0;
  while (off < data.length) off += await w.write(data.subarray(off));
}

/**
 * Send one frame: small payloads go out in one write together with the header.
 *
 * @param w the connection
 * @param h header (its `length` is set from `payload`)
 * @param payload bytes after the header
 */
export async function writeFrame(
  w: ByteWriter,
  h: Omit<FrameHeader, "length">,
  payload: Uint8Array = EMPTY,
): Promise<void> {
  const head = { ...h, length: payload.length };
  if (payload.length <= 64 * 1024) {
    const out = new Uint8Array(HEADER_BYTES + payload.length);
    encodeHeader(out, head);
    out.set(payload, HEADER_BYTES);
    await writeAll(w, out);
    return;
  }
  const out = new Uint8Array(HEADER_BYTES);
  encodeHeader(out, head);
  await writeAll(w, out);
  await writeAll(w, payload);
}

/** A received frame: its header and payload bytes. */
export interface Frame {
  /** The header. */
  header: FrameHeader;
  /** The payload (`header.length` bytes); a posted destination when one was given. */
  payload: Uint8Array;
}

/**
 * Reads frames off one connection. A buffered reader for headers and small payloads; a payload
 * for which {@linkcode FrameReader.next}'s `pick` returns a destination is read straight into it.
 */
export class FrameReader {
  #r: ByteReader;
  #buf: Uint8Array;
  #start = 0;
  #end = 0;
  /** Largest payload accepted; a handshake raises it once the peer has been accepted. */
  maxFrameBytes: number;

  /**
   * @param r the connection
   * @param maxFrameBytes largest payload accepted
   * @param bufferBytes size of the read buffer
   */
  constructor(r: ByteReader, maxFrameBytes = DEFAULT_MAX_FRAME_BYTES, bufferBytes = 256 * 1024) {
    this.#r = r;
    this.maxFrameBytes = maxFrameBytes;
    this.#buf = new Uint8Array(bufferBytes);
  }

  async #fill(min: number): Promise<boolean> {
    while (this.#end - this.#start < min) {
      if (this.#start > 0 && this.#buf.length - this.#start < min) {
        this.#buf.copyWithin(0, this.#start, this.#end);
        this.#end -= this.#start;
        this.#start = 0;
      }
      const n = await this.#r.read(this.#buf.subarray(this.#end));
      if (n === null) {
        if (this.#end === this.#start) return false;
        throw new FrameError(
          `connection closed in the middle of a frame (${this.#end - this.#start} bytes pending)`,
          true,
        );
      }
      this.#end += n;
    }
    return true;
  }

  /**
   * Read the next frame.
   *
   * @param pick given the header, returns a destination of exactly `header.length` bytes to read
   *   the payload into, or undefined to get a fresh buffer
   * @returns the frame, or null at a clean end of stream
   * @throws {FrameError} on a bad header or a stream cut inside a frame
   */
  async next(pick?: (h: FrameHeader) => Uint8Array | undefined): Promise<Frame | null> {
    // The common case, an empty buffer and a frame arriving whole, takes a single read here.
    if (this.#end === this.#start && this.#buf.length >= HEADER_BYTES) {
      this.#start = this.#end = 0;
      const n = await this.#r.read(this.#buf);
      if (n === null) return null;
      this.#end = n;
    }
    if (this.#end - this.#start < HEADER_BYTES && !await this.#fill(HEADER_BYTES)) return null;
    const header = decodeHeader(this.#buf, this.#start, this.maxFrameBytes);
    this.#start += HEADER_BYTES;
    const len = header.length;
    let dest = pick?.(header);
    if (dest === undefined || dest.length !== len) dest = new Uint8Array(len);
    const have = Math.min(len, this.#end - this.#start);
    dest.set(this.#buf.subarray(this.#start, this.#start + have));
    this.#start += have;
    if (this.#start === this.#end) this.#start = this.#end = 0;
    let off = have;
    while (off < len) {
      if (len - off < 16 * 1024) {
        // Small remainder: go through the buffer so the next header comes in the same read.
        if (!await this.#fill(1)) {
          throw new FrameError(`connection closed in the middle of a ${len}-byte payload`, true);
        }
        const k = Math.min(len - off, this.#end - this.#start);
        dest.set(this.#buf.subarray(this.#start, this.#start + k), off);
        this.#start += k;
        off += k;
        continue;
      }
      const n = await this.#r.read(dest.subarray(off));
      if (n === null) {
        throw new FrameError(`connection closed in the middle of a ${len}-byte payload`, true);
      }
      off += n;
    }
    return { header, payload: dest };
  }
}
