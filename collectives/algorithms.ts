/**
 * Which algorithm a message-passing collective uses, and the index arithmetic they share.
 *
 * - Small messages (up to {@linkcode SMALL_MESSAGE_BYTES}) want few round trips: recursive
 *   doubling (log2 n exchanges of the whole buffer) when the group size is a power of two, a
 *   direct exchange (everyone sends to everyone, one round) otherwise.
 * - Large messages want every link busy and each byte sent few times: the ring (reduce-scatter
 *   then all-gather, `2 (n-1)/n` of the buffer per rank), pipelined in chunks so a rank forwards
 *   chunk k while chunk k+1 is still on the wire.
 *
 * Every algorithm reduces each element in one fixed order, so all ranks end bit-identical. The
 * algorithms themselves are written once against a peer exchange ({@link ./_exchange.ts}):
 * {@link ./_ring.ts}, {@link ./_recursive_doubling.ts} and {@link ./_direct.ts}.
 *
 * @module
 */

/** Messages up to this many bytes take a latency-optimal path. */
export const SMALL_MESSAGE_BYTES = 64 * 1024;

/** Default bytes per frame of a pipelined algorithm. */
export const DEFAULT_CHUNK_BYTES = 1024 * 1024;

/** An all-reduce algorithm. */
export type AllReduceAlgorithm = "local" | "recursive-doubling" | "direct" | "ring";

/**
 * Pick the all-reduce algorithm for a message.
 *
 * @param bytes message size in bytes
 * @param size group size
 * @param smallBytes threshold between latency- and bandwidth-optimal paths
 * @returns the algorithm
 */
export function chooseAllReduce(
  bytes: number,
  size: number,
  smallBytes: number = SMALL_MESSAGE_BYTES,
): AllReduceAlgorithm {
  if (size === 1) return "local";
  if (bytes <= smallBytes) return isPowerOfTwo(size) ? "recursive-doubling" : "direct";
  return "ring";
}

/**
 * True when `n` is a power of two (1, 2, 4, ...).
 *
 * @param n a positive integer
 * @returns whether it is a power of two
 */
export function isPowerOfTwo(n: number): boolean {
  return n > 0 && (n & (n - 1)) === 0;
}

/** A range of elements. */
export interface Span {
  /** First element. */
  offset: number;
  /** Number of elements. */
  length: number;
}

/**
 * Split `count` elements into `parts` contiguous spans whose lengths differ by at most one (the
 * first `count % parts` spans get the extra element).
 *
 * @param count elements to split
 * @param parts number of spans
 * @returns the spans in order
 */
export function splitEven(count: number, parts: number): Span[] {
  const base = Math.floor(count / parts);
  const extra = count % parts;
  const out: Span[] = [];
  let offset = 0;
  for (let i = 0; i < parts; i++) {
    const length = base + (i < extra ? 1 : 0);
    out.push({ offset, length });
    offset += length;
  }
  return out;
}

/**
 * Cut a span into chunks of at most `chunk` elements (none for an empty span).
 *
 * @param span the range
 * @param chunk largest chunk, in elements (at least 1)
 * @returns the chunks in order
 */
export function chunks(span: Span, chunk: number): Span[] {
  const out: Span[] = [];
  for (let o = 0; o < span.length; o += chunk) {
    out.push({ offset: span.offset + o, length: Math.min(chunk, span.length - o) });
  }
  return out;
}

/**
 * `x mod n`, always in `0..n-1`.
 *
 * @param x any integer
 * @param n the modulus
 * @returns the residue
 */
export function mod(x: number, n: number): number {
  return ((x % n) + n) % n;
}

/**
 * The segments a rank sends and receives at step `s` of a ring reduce-scatter in which rank `r`
 * ends owning segment `r`: it sends `r-1-s` to its right neighbour and receives `r-2-s` from its
 * left one. The segment received at step `s` is the one sent at step `s+1`, so each received
 * chunk can be forwarded as soon as it is reduced.
 *
 * @param rank this rank
 * @param size group size
 * @param step 0 <= step < size - 1
 * @returns segment indices to send and to receive
 */
export function ringReduceScatterStep(
  rank: number,
  size: number,
  step: number,
): { send: number; recv: number } {
  return { send: mod(rank - 1 - step, size), recv: mod(rank - 2 - step, size) };
}

/**
 * The segments of step `s` of a ring all-gather that starts with rank `r` owning segment `r`:
 * send `r-s`, receive `r-1-s`.
 *
 * @param rank this rank
 * @param size group size
 * @param step 0 <= step < size - 1
 * @returns segment indices to send and to receive
 */
export function ringAllGatherStep(
  rank: number,
  size: number,
  step: number,
): { send: number; recv: number } {
  return { send: mod(rank - step, size), recv: mod(rank - 1 - step, size) };
}
