// The scratch pool that widens 16-bit op arguments to f32: one growing buffer from which an op
// takes consecutive runs, all returned at once when the op ends. A run that does not fit grows
// the buffer to what the op has taken so far plus the run, so after an op has run once its
// scratch fits; runs taken before the growth stay valid on the old buffer, which is freed at the
// release. The buffer only grows: its size is the pool's peak.

/** A bump allocator over one growing buffer of `B` (a typed array, a GPU buffer). */
export class ScratchPool<B> {
  #buf: B | null = null;
  #cap = 0;
  #used = 0;
  #old: B[] = [];

  /**
   * @param make a new buffer of `elements` elements
   * @param free release a buffer that the pool has replaced (after its last use)
   * @param align runs start at multiples of this many elements
   * @param bytesPer bytes per element
   */
  constructor(
    readonly make: (elements: number) => B,
    readonly free: ((b: B) => void) | null,
    readonly align: number,
    readonly bytesPer: number,
  ) {}

  /** Take a run of `n` elements; returns its first element in {@linkcode ScratchPool.buffer}. */
  take(n: number): number {
    const at = this.#used, end = at + Math.ceil(n / this.align) * this.align;
    if (this.#buf === null || end > this.#cap) {
      if (this.#buf !== null) this.#old.push(this.#buf);
      this.#cap = Math.max(end, this.align);
      this.#buf = this.make(this.#cap);
    }
    this.#used = end;
    return at;
  }

  /** The current buffer (read after {@linkcode ScratchPool.take}, which may replace it). */
  get buffer(): B {
    return this.#buf!;
  }

  /** Return every run; buffers replaced meanwhile are freed. */
  release(): void {
    this.#used = 0;
    if (this.#old.length === 0) return;
    const old = this.#old;
    this.#old = [];
    if (this.free !== null) { for (const b of old) this.free(b); }
  }

  /** Bytes held by the current buffer. */
  get bytes(): number {
    return this.#cap * this.bytesPer;
  }
}
