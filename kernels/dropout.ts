/**
 * The hash behind every dropout mask (`Backend.dropout`, attention dropout): a pure
 * function of a key and an element's global index, so that a mask needs no storage, the
 * backward recomputes it, and every rank of a parallel layout draws the same mask for the same
 * element. It is MurmurHash3 (x86, 32-bit) of the index's 4 bytes (little-endian) with the key
 * as seed; the WGSL version on WebGPU computes the same bits.
 *
 * @example The mask of a 10% dropout over ten elements
 * ```ts
 * import { dropoutHash, dropoutThreshold } from "./dropout.ts";
 * const t = dropoutThreshold(0.1);
 * const kept = Array.from({ length: 10 }, (_, g) => dropoutHash(7, g) >= t);
 * console.log(kept);
 * ```
 *
 * @module
 */

/**
 * MurmurHash3 (x86, 32-bit) of the 32-bit integer `g` (as 4 little-endian bytes) with seed
 * `key`.
 *
 * @param key the mask's key, an unsigned 32-bit integer
 * @param g the element's global index, an integer in [0, 2^32)
 * @returns an unsigned 32-bit integer
 */
export function dropoutHash(key: number, g: number): number {
  let k = Math.imul(g, 0xcc9e2d51);
  k = Math.imul((k << 15) | (k >>> 17), 0x1b873593);
  let h = key ^ k;
  h = (h << 13) | (h >>> 19);
  h = (Math.imul(h, 5) + 0xe6546b64) ^ 4;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

/**
 * The smallest hash that keeps an element under drop probability `p`: `floor(p * 2^32)`.
 *
 * @param p drop probability in [0, 1)
 * @returns an integer in [0, 2^32)
 * @throws {RangeError} when p is outside [0, 1)
 */
export function dropoutThreshold(p: number): number {
  if (!(p >= 0 && p < 1)) {
    throw new RangeError(`dropout: p must be in [0, 1), got ${p}`);
  }
  return Math.floor(p * 4294967296);
}
