/**
 * The point-to-point interface the message-passing algorithms ({@link ./_ring.ts},
 * {@link ./_recursive_doubling.ts}, {@link ./_direct.ts}) are written against, and the span
 * helpers they share. A transport implements {@linkcode PeerExchange} once (TCP: {@link
 * ./_tcp_exchange.ts}); every algorithm then runs over it unchanged.
 *
 * @module
 */
import type { CollectiveBuffer } from "./communicator.ts";
import { chunks, type Span } from "./algorithms.ts";

/**
 * Send a chunk to a group rank, receive a chunk from one, wait for it, give its memory back.
 * `C` is the transport's op in flight (its deadline, its failure), passed through untouched;
 * `P` is a posted receive. A receive is posted before it is awaited, so that a chunk that
 * arrives early can land straight in its destination.
 */
export interface PeerExchange<C, P> {
  /** This rank in the group. */
  readonly rank: number;
  /** Ranks in the group. */
  readonly size: number;
  /** Bytes per chunk of a pipelined algorithm. */
  readonly chunkBytes: number;
  /** Send `bytes` to group rank `peer` as chunk `tag` of the op (small payloads are copied). */
  send(ctx: C, peer: number, tag: number, bytes: Uint8Array): void;
  /** Post the receive of chunk `tag` from `peer`, into `dest` when given (its length checked). */
  post(ctx: C, peer: number, tag: number, dest?: Uint8Array): P;
  /**
   * Wait for a posted receive. Resolves with the payload of one posted without `dest` (with a
   * `dest`, the data is in `dest`).
   */
  take(ctx: C, peer: number, posted: P): Promise<Uint8Array>;
  /** Give a payload received without `dest` back for reuse, once it has been folded. */
  release(bytes: Uint8Array): void;
}

/** The bytes of `buf`, or of `span` of it. */
export function bytesOf(buf: CollectiveBuffer, span?: Span): Uint8Array {
  const bpe = buf.BYTES_PER_ELEMENT;
  if (span === undefined) return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
  return new Uint8Array(buf.buffer, buf.byteOffset + span.offset * bpe, span.length * bpe);
}

/** `bytes` seen as elements of `like`'s type. */
export function viewLike(like: CollectiveBuffer, bytes: Uint8Array): CollectiveBuffer {
  const bpe = like.BYTES_PER_ELEMENT;
  if (like instanceof Float32Array) {
    return new Float32Array(bytes.buffer, bytes.byteOffset, bytes.length / bpe);
  }
  if (like instanceof Int32Array) {
    return new Int32Array(bytes.buffer, bytes.byteOffset, bytes.length / bpe);
  }
  return new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.length / bpe);
}

/** The elements of `s` in `buf`. */
export function sub(buf: CollectiveBuffer, s: Span): CollectiveBuffer {
  return buf.subarray(s.offset, s.offset + s.length);
}

/** Elements of `buf`'s type per chunk of `x` (at least one). */
export function chunkElements<C, P>(x: PeerExchange<C, P>, buf: CollectiveBuffer): number {
  return Math.max(1, Math.floor(x.chunkBytes / buf.BYTES_PER_ELEMENT));
}

/** The chunks of `span`; an empty span is one empty chunk (a frame is still sent). */
export function atLeastOne(span: Span, chunk: number): Span[] {
  return span.length === 0 ? [span] : chunks(span, chunk);
}

/** Send `buf[span]` to `peer` in chunks tagged `base`, `base + 1`, ... (at least one). */
export function sendSpan<C, P>(
  x: PeerExchange<C, P>,
  ctx: C,
  peer: number,
  buf: CollectiveBuffer,
  span: Span,
  base = 0,
): void {
  atLeastOne(span, chunkElements(x, buf)).forEach((c, ci) =>
    x.send(ctx, peer, base + ci, bytesOf(buf, c))
  );
}

/** Post the receives of `buf[span]` from `peer`, chunk by chunk, straight into `buf`. */
export function postSpan<C, P>(
  x: PeerExchange<C, P>,
  ctx: C,
  peer: number,
  buf: CollectiveBuffer,
  span: Span,
  base = 0,
): P[] {
  return atLeastOne(span, chunkElements(x, buf)).map((c, ci) =>
    x.post(ctx, peer, base + ci, bytesOf(buf, c))
  );
}

/** Wait for every posted receive from `peer`, in order. */
export async function awaitAll<C, P>(
  x: PeerExchange<C, P>,
  ctx: C,
  peer: number,
  posted: P[],
): Promise<void> {
  for (const p of posted) await x.take(ctx, peer, p);
}
