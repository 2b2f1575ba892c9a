/**
 * A small, fast, seedable random number generator (xoshiro128**) whose whole state can be saved
 * in a checkpoint and restored, so that initialisation, data order and resumed runs are exactly
 * reproducible.
 *
 * @module
 */

/** A seeded generator of uniform and normal numbers with a savable state. */
export class Rng {
  #s = new Uint32Array(4);
  #spare: number | undefined = undefined;

  /**
   * Seed the generator; equal seeds give equal streams.
   *
   * @param seed any integer (its low 53 bits are used)
   */
  constructor(seed: number) {
    if (!Number.isFinite(seed)) {
      throw new RangeError(`Rng seed must be a finite number, got ${seed}`);
    }
    // splitmix32 expands the seed into four non-zero words.
    let x = (Math.trunc(seed) >>> 0) ^ Math.trunc(seed / 2 ** 32);
    for (let i = 0; i < 4; i++) {
      x = (x + 0x9e3779b9) | 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
      this.#s[i] = (z ^ (z >>> 16)) >>> 0;
    }
    if ((this.#s[0] | this.#s[1] | this.#s[2] | this.#s[3]) === 0) this.#s[0] = 1;
  }

  /**
   * The next 32 random bits.
   *
   * @returns an integer in [0, 2^32)
   */
  nextUint32(): number {
    const s = this.#s;
    const r = Math.imul(rotl(Math.imul(s[1], 5), 7), 9) >>> 0;
    const t = s[1] << 9;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 11);
    return r;
  }

  /**
   * A uniform number in [0, 1) with 32 bits of randomness.
   *
   * @returns the number
   */
  uniform(): number {
    return this.nextUint32() / 4294967296;
  }

  /**
   * A uniform integer in [0, n).
   *
   * @param n the exclusive upper bound, 1 <= n <= 2^32
   * @returns the integer
   */
  int(n: number): number {
    if (!(n >= 1 && n <= 4294967296)) {
      throw new RangeError(`Rng.int bound must be in [1, 2^32], got ${n}`);
    }
    return Math.floor(this.uniform() * n);
  }

  /**
   * A normal sample (Box-Muller).
   *
   * @param mean the mean, default 0
   * @param std the standard deviation, default 1
   * @returns the sample
   */
  normal(mean = 0, std = 1): number {
    let z: number;
    if (this.#spare !== undefined) {
      z = this.#spare;
      this.#spare = undefined;
    } else {
      let u = this.uniform();
      while (u === 0) u = this.uniform();
      const v = this.uniform();
      const r = Math.sqrt(-2 * Math.log(u));
      z = r * Math.cos(2 * Math.PI * v);
      this.#spare = r * Math.sin(2 * Math.PI * v);
    }
    return mean + std * z;
  }

  /**
   * Fill `out` with normal samples.
   *
   * @param out the array to fill
   * @param mean the mean
   * @param std the standard deviation
   * @returns `out`
   */
  fillNormal<T extends Float32Array | Float64Array>(out: T, mean = 0, std = 1): T {
    for (let i = 0; i < out.length; i++) out[i] = this.normal(mean, std);
    return out;
  }

  /**
   * Shuffle `a` in place (Fisher-Yates).
   *
   * @param a the array
   * @returns `a`
   */
  shuffle<T extends { length: number; [i: number]: unknown }>(a: T): T {
    for (let i = a.length - 1; i > 0; i--) {
      const j = this.int(i + 1);
      const t = a[i];
      a[i] = a[j];
      a[j] = t;
    }
    return a;
  }

  /**
   * The whole state, for a checkpoint.
   *
   * @returns four state words and the cached normal sample (NaN when none)
   */
  getState(): number[] {
    return [...this.#s, this.#spare ?? NaN];
  }

  /**
   * Restore a state saved by {@linkcode Rng.getState}.
   *
   * @param state the saved state
   */
  setState(state: readonly number[]): void {
    if (state.length !== 5) {
      throw new RangeError(`Rng state must have 5 numbers, got ${state.length}`);
    }
    for (let i = 0; i < 4; i++) this.#s[i] = state[i] >>> 0;
    this.#spare = Number.isNaN(state[4]) ? undefined : state[4];
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}
