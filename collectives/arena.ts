/**
 * A process-wide arena of shared memory for collective buffers: one shared
 * `WebAssembly.Memory` that every rank Worker of the process maps, with a thread-safe
 * allocator whose book-keeping lives in the memory itself.
 *
 * Why: a shared-memory all-reduce over buffers in the arena folds with WebAssembly SIMD straight
 * from every rank's buffer into every rank's buffer (no staging copy), several times faster than
 * a JavaScript loop. Buffers on any other SharedArrayBuffer still work, at JavaScript speed.
 * Think of it as registered memory (`MPI_Alloc_mem`, `ncclMemAlloc`).
 *
 * {@linkcode startWorkers} / {@linkcode runWorkers} give each world an arena of its own that
 * every rank maps (and that goes away with the world), so `sharedArray(Float32Array, n)` in any
 * rank allocates where its peers can fold from.
 *
 * @example Allocate a gradient buffer every rank can reduce at full speed
 * ```ts
 * import { freeShared, sharedArray } from "./arena.ts";
 * const grads = sharedArray(Float32Array, 1024);
 * grads.fill(1);
 * freeShared(grads);
 * ```
 *
 * @module
 */

const PAGE = 65536;
/** Allocation granule and alignment, in bytes (one cache line). */
const UNIT = 64;
/** Largest arena: the 32-bit WebAssembly address space. */
const MAX_PAGES = 65536;
// Header words (int32) at the start of the memory; the first page is reserved for them.
const H_LOCK = 0;
const H_ID = 1;
/** First free unit (bump pointer), in units of 64 bytes. */
const H_TOP = 2;
/** Bytes in use by live blocks, in units (block headers included). */
const H_USED = 3;
/** Free list: FREE_SLOTS pairs (start unit, length in units) from word H_FREE; length 0 = empty. */
const H_FREE = 16;
const FREE_SLOTS = (PAGE / 4 - H_FREE) >> 1;
const MAGIC = 0x4c6f6f6d; // "Loom": marks a live block's header
const FREED = 0x46726565;

/** The typed arrays an arena allocates. */
export type SharedArrayType =
  | Float32Array
  | Float64Array
  | Int32Array
  | Uint32Array
  | Int16Array
  | Uint16Array
  | Int8Array
  | Uint8Array;

/** Constructor of a {@linkcode SharedArrayType}. */
export interface SharedArrayCtor<T extends SharedArrayType> {
  /** Bytes per element. */
  readonly BYTES_PER_ELEMENT: number;
  /** View `length` elements of `buffer` from `byteOffset`. */
  new (buffer: SharedArrayBuffer, byteOffset: number, length: number): T;
}

/** Options of {@linkcode SharedArena.create}. */
export interface SharedArenaOptions {
  /** Bytes to map at once (default 1 MiB); the arena grows on demand. */
  initialBytes?: number;
  /** Largest size the arena may grow to (default, and at most, 4 GiB). */
  maxBytes?: number;
}

/**
 * A shared `WebAssembly.Memory` with a first-fit allocator (64-byte aligned blocks) that any
 * thread holding the memory may call: a spin lock in the memory guards the free list, so
 * allocation is meant for set-up, not for hot loops. Freed blocks are reused; the memory never
 * shrinks.
 */
export class SharedArena {
  /** The memory; post it to another thread and wrap it there with {@linkcode SharedArena.from}. */
  readonly memory: WebAssembly.Memory;
  /** Random non-zero id, the same in every thread: tells two arenas apart. */
  readonly id: number;
  #words: Int32Array;
  #mine = new WeakSet<ArrayBufferLike>();

  private constructor(memory: WebAssembly.Memory) {
    if (!(memory instanceof WebAssembly.Memory) || !(memory.buffer instanceof SharedArrayBuffer)) {
      throw new TypeError(
        "SharedArena needs a shared WebAssembly.Memory: create one with SharedArena.create()",
      );
    }
    this.memory = memory;
    this.#words = new Int32Array(memory.buffer, 0, PAGE / 4);
    this.id = Atomics.load(this.#words, H_ID);
    if (this.id === 0 || Atomics.load(this.#words, H_TOP) === 0) {
      throw new TypeError("This WebAssembly.Memory is not an arena: use SharedArena.create()");
    }
  }

  /**
   * Create an arena.
   *
   * @param opts initial and largest size
   * @returns the new arena
   */
  static create(opts: SharedArenaOptions = {}): SharedArena {
    const initial = opts.initialBytes ?? 1 << 20;
    const max = opts.maxBytes ?? MAX_PAGES * PAGE;
    if (!Number.isInteger(initial) || initial < 0) {
      throw new RangeError(`initialBytes must be a non-negative integer, got ${initial}`);
    }
    if (!Number.isInteger(max) || max < 2 * PAGE || max > MAX_PAGES * PAGE) {
      throw new RangeError(
        `maxBytes must be an integer from ${2 * PAGE} to 4 GiB (${MAX_PAGES * PAGE}), got ${max}`,
      );
    }
    const maximum = Math.floor(max / PAGE);
    const pages = Math.min(maximum, 1 + Math.ceil(initial / PAGE));
    const memory = new WebAssembly.Memory({ initial: pages, maximum, shared: true });
    const words = new Int32Array(memory.buffer, 0, PAGE / 4);
    words[H_ID] = 1 + Math.floor(Math.random() * 0x7ffffffe);
    words[H_TOP] = PAGE / UNIT;
    return new SharedArena(memory);
  }

  /**
   * Wrap a memory made by {@linkcode SharedArena.create} (in this or another thread).
   *
   * @param memory the arena's memory
   * @returns an arena sharing its blocks with every other wrapper of `memory`
   */
  static from(memory: WebAssembly.Memory): SharedArena {
    return new SharedArena(memory);
  }

  /** The whole memory as it is now (a fresh object after the memory grew). */
  get buffer(): SharedArrayBuffer {
    const b = this.memory.buffer as SharedArrayBuffer;
    this.#mine.add(b);
    return b;
  }

  /** Bytes held by live blocks (block headers and alignment included). */
  get usedBytes(): number {
    return Atomics.load(this.#words, H_USED) * UNIT;
  }

  /** Bytes mapped (the arena's current size). */
  get mappedBytes(): number {
    return this.memory.buffer.byteLength;
  }

  /**
   * Allocate `length` zeroed elements.
   *
   * @param ctor the element type, e.g. `Float32Array`
   * @param length number of elements
   * @returns a view on the arena, 64-byte aligned
   */
  alloc<T extends SharedArrayType>(ctor: SharedArrayCtor<T>, length: number): T {
    if (!Number.isInteger(length) || length < 0) {
      throw new RangeError(`length must be a non-negative integer, got ${length}`);
    }
    const units = 1 + Math.ceil((length * ctor.BYTES_PER_ELEMENT) / UNIT);
    const start = this.#reserve(units);
    const w = new Int32Array(this.buffer, start * UNIT, 2);
    w[0] = MAGIC;
    w[1] = units;
    const view = new ctor(this.buffer, (start + 1) * UNIT, length);
    view.fill(0);
    return view;
  }

  /**
   * Give a block back. Only the view that {@linkcode SharedArena.alloc} returned (or an
   * equal view on the same bytes) may be freed, and only once.
   *
   * @param view the block to free
   */
  free(view: SharedArrayType): void {
    if (!this.owns(view)) {
      throw new TypeError("free: this array was not allocated by this arena");
    }
    const off = view.byteOffset;
    if (off % UNIT !== 0 || off < PAGE + UNIT) {
      throw new TypeError("free: pass the array alloc returned, not a subarray of it");
    }
    const w = new Int32Array(this.buffer, off - UNIT, 2);
    if (Atomics.load(w, 0) !== MAGIC) {
      throw new TypeError(
        Atomics.load(w, 0) === FREED
          ? "free: this array was already freed"
          : "free: pass the array alloc returned, not a subarray of it",
      );
    }
    const units = w[1]!;
    Atomics.store(w, 0, FREED);
    this.#release(off / UNIT - 1, units);
  }

  /**
   * Whether `view` lies in this arena (as seen from this thread).
   *
   * @param view any typed array
   * @returns true when its buffer is this arena's memory
   */
  owns(view: ArrayBufferView): boolean {
    const b = view.buffer;
    if (this.#mine.has(b)) return true;
    // A view made from a fresh memory.buffer in this thread (after a grow) is recognised once
    // the arena has handed out that same buffer object.
    if (b === this.memory.buffer) {
      this.#mine.add(b);
      return true;
    }
    return false;
  }

  /**
   * A view of `length` elements at `byteOffset` of the arena (e.g. a peer's block).
   *
   * @param ctor the element type
   * @param byteOffset where the view starts
   * @param length number of elements
   * @returns the view
   */
  view<T extends SharedArrayType>(ctor: SharedArrayCtor<T>, byteOffset: number, length: number): T {
    // memory.buffer is current even when another thread grew the memory.
    return new ctor(this.buffer, byteOffset, length);
  }

  #lock(): void {
    while (Atomics.compareExchange(this.#words, H_LOCK, 0, 1) !== 0) {
      // Allocation is rare and short: spin.
    }
  }

  #unlock(): void {
    Atomics.store(this.#words, H_LOCK, 0);
  }

  #reserve(units: number): number {
    this.#lock();
    try {
      const w = this.#words;
      let best = -1;
      for (let i = 0; i < FREE_SLOTS; i++) {
        const len = w[H_FREE + 2 * i + 1]!;
        if (len >= units && (best < 0 || len < w[H_FREE + 2 * best + 1]!)) best = i;
      }
      let start: number;
      if (best >= 0) {
        start = w[H_FREE + 2 * best]!;
        const len = w[H_FREE + 2 * best + 1]!;
        w[H_FREE + 2 * best] = start + units;
        w[H_FREE + 2 * best + 1] = len - units;
      } else {
        start = w[H_TOP]!;
        const end = (start + units) * UNIT;
        const have = this.memory.buffer.byteLength;
        if (end > have) {
          const pages = Math.ceil((end - have) / PAGE);
          try {
            this.memory.grow(pages);
          } catch {
            throw new RangeError(
              `SharedArena: cannot grow to ${end} bytes (its maximum is reached, or the ` +
                `system is out of memory); free unused arrays or create it with a larger maxBytes`,
            );
          }
        }
        w[H_TOP] = start + units;
      }
      w[H_USED] = w[H_USED]! + units;
      return start;
    } finally {
      this.#unlock();
    }
  }

  #release(start: number, units: number): void {
    this.#lock();
    try {
      const w = this.#words;
      w[H_USED] = w[H_USED]! - units;
      // Merge with free neighbours, then give the tail back to the bump pointer.
      for (let i = 0; i < FREE_SLOTS; i++) {
        const s = w[H_FREE + 2 * i]!, len = w[H_FREE + 2 * i + 1]!;
        if (len === 0) continue;
        if (s + len === start || start + units === s) {
          start = Math.min(s, start);
          units += len;
          w[H_FREE + 2 * i + 1] = 0;
          i = -1; // rescan: the merged block may now touch another
        }
      }
      if (start + units === w[H_TOP]) {
        w[H_TOP] = start;
        return;
      }
      for (let i = 0; i < FREE_SLOTS; i++) {
        if (w[H_FREE + 2 * i + 1] === 0) {
          w[H_FREE + 2 * i] = start;
          w[H_FREE + 2 * i + 1] = units;
          return;
        }
      }
      // The free list is full: leak the block rather than fail (never seen in practice).
    } finally {
      this.#unlock();
    }
  }
}

let threadArena: SharedArena | undefined;

/**
 * This thread's arena: in a rank Worker, its world's; elsewhere, one created on first use.
 *
 * @returns the arena
 */
export function defaultArena(): SharedArena {
  return threadArena ??= SharedArena.create();
}

/**
 * The thread's arena if it has one already, without creating it.
 *
 * @returns the arena or undefined
 */
export function currentArena(): SharedArena | undefined {
  return threadArena;
}

/**
 * Make `memory` this thread's arena (rank Workers do this with their parent's arena before the
 * rank's code runs).
 *
 * @param memory an arena's memory
 */
export function useArena(memory: WebAssembly.Memory): void {
  if (threadArena?.memory === memory) return;
  threadArena = SharedArena.from(memory);
}

/**
 * Allocate `length` zeroed elements in this thread's {@linkcode defaultArena}: collectives over
 * such arrays take the fastest shared-memory path.
 *
 * @param ctor the element type, e.g. `Float32Array`
 * @param length number of elements
 * @returns the array
 */
export function sharedArray<T extends SharedArrayType>(
  ctor: SharedArrayCtor<T>,
  length: number,
): T {
  return defaultArena().alloc(ctor, length);
}

/**
 * Free an array from {@linkcode sharedArray}.
 *
 * @param view the array sharedArray returned
 */
export function freeShared(view: SharedArrayType): void {
  defaultArena().free(view);
}
