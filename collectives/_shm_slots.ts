/**
 * The staging slots of a shared-memory group: each rank has one buffer of two halves that it
 * writes and its peers read; successive units alternate halves, so that a fast rank never
 * overwrites data a slow one still reads. Typed views of every half, cached.
 *
 * @module
 */
import type { CollectiveBuffer, DType } from "./communicator.ts";
import { currentArena, type SharedArena } from "./arena.ts";
import { bytesOf, DTYPES } from "./_shm_layout.ts";
import type { ShmGroupSpec } from "./_shm_group.ts";

/** One rank's view of its group's staging slots. */
export class ShmSlots {
  /** Bytes per half. */
  readonly bytes: number;
  /** The arena the slots live in, when this thread maps it. */
  readonly arena: SharedArena | undefined;
  /** Staging units this rank has written (the half of unit u is u & 1). */
  unit = 0;
  readonly #size: number;
  readonly #base: number[];
  readonly #f32: Float32Array[][];
  readonly #i32: Int32Array[][];
  readonly #u16: Uint16Array[][];
  #slotCache: (CollectiveBuffer | undefined)[] = [];

  constructor(spec: ShmGroupSpec) {
    this.#size = spec.size;
    this.bytes = spec.slotBytes;
    this.#base = spec.dataOffsets;
    const arena = currentArena();
    this.arena = spec.arenaId !== 0 && arena?.id === spec.arenaId ? arena : undefined;
    const halves = (mk: (sab: SharedArrayBuffer, off: number) => unknown) =>
      spec.data.map((sab, p) => [
        mk(sab, spec.dataOffsets[p]!),
        mk(sab, spec.dataOffsets[p]! + spec.slotBytes),
      ]);
    this.#f32 = halves((s, o) => new Float32Array(s, o, spec.slotBytes / 4)) as Float32Array[][];
    this.#i32 = halves((s, o) => new Int32Array(s, o, spec.slotBytes / 4)) as Int32Array[][];
    this.#u16 = halves((s, o) => new Uint16Array(s, o, spec.slotBytes / 2)) as Uint16Array[][];
  }

  /** The staging half of the next unit. */
  nextHalf(): number {
    return this.unit++ & 1;
  }

  /** Elements [lo, hi) of rank p's staging half h; the last view per slot is reused. */
  slot(dtype: DType, p: number, h: number, lo: number, hi: number): CollectiveBuffer {
    const k = (DTYPES.indexOf(dtype) * this.#size + p) * 2 + h;
    const v = this.#slotCache[k];
    const es = bytesOf(dtype);
    if (
      v !== undefined && v.length === hi - lo &&
      v.byteOffset === this.#base[p]! + h * this.bytes + lo * es
    ) {
      return v;
    }
    const w = this.views(dtype, p, h).subarray(lo, hi);
    this.#slotCache[k] = w;
    return w;
  }

  /** All of rank p's staging half h, as `dtype`. */
  views(dtype: DType, p: number, h: number): CollectiveBuffer {
    return dtype === "float32"
      ? this.#f32[p]![h]!
      : dtype === "int32"
      ? this.#i32[p]![h]!
      : this.#u16[p]![h]!;
  }
}
