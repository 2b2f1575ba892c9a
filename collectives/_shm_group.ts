/**
 * The shared memory of a shared-memory group: one control block per rank and one for the group,
 * two staging halves per rank (in the world's arena when given, so that small reductions fold in
 * SIMD) and two point-to-point chunks per ordered pair of ranks, described by a structured-
 * clonable spec that every member builds its communicator from.
 *
 * @module
 */
import type { SharedArena } from "./arena.ts";
import { CH_STRIDE, CTRL_STRIDE, pow2Below } from "./_shm_layout.ts";

/** Default bytes per staging half of each rank (each rank has two), up to 8 ranks. */
export const DEFAULT_SLOT_BYTES = 1 << 21;
/** Default bytes per point-to-point chunk (each directed pair has two), up to 8 ranks. */
export const DEFAULT_CHANNEL_BYTES = 1 << 16;
/**
 * Structured-clonable description of one shared-memory group: post it to every member and build
 * each member's `ShmCommunicator` ({@link ./shm.ts}) from it.
 */
export interface ShmGroupSpec {
  /** Unique id of this group (keys its messages between ranks). */
  id: string;
  /** Group label used in errors. */
  name: string;
  /** Number of ranks. */
  size: number;
  /** World rank (liveness index) of every group rank. */
  worldRanks: number[];
  /** Control blocks, one per rank. */
  ctrl: SharedArrayBuffer;
  /** Staging slots, one buffer per rank (two halves of `slotBytes`). */
  data: SharedArrayBuffer[];
  /**
   * Where each rank's slots start in its buffer: non-zero when the slots live in the process
   * arena ({@link ./arena.ts}), whose memory every `data` buffer then maps.
   */
  dataOffsets: number[];
  /** Id of the arena holding the slots, or 0. */
  arenaId: number;
  /** Point-to-point channels: control words. */
  chanCtrl: SharedArrayBuffer;
  /** Point-to-point channels: data (two chunks of `chanBytes` per directed pair). */
  chanData: SharedArrayBuffer;
  /** Bytes per staging half. */
  slotBytes: number;
  /** Bytes per point-to-point chunk. */
  chanBytes: number;
}

/**
 * Allocate the shared buffers of a group of `worldRanks.length` ranks.
 *
 * @param name the group's label
 * @param worldRanks the liveness index of each group rank
 * @param slotBytes bytes per staging half (default {@linkcode DEFAULT_SLOT_BYTES}, less beyond 8
 *   ranks)
 * @param chanBytes bytes per point-to-point chunk (default {@linkcode DEFAULT_CHANNEL_BYTES},
 *   less beyond 8 ranks)
 * @param arena where to put the staging slots, so that small reductions fold in SIMD: an arena
 *   every member maps and that lives as long as the group (a world's own arena, see world.ts);
 *   default: plain SharedArrayBuffers
 * @returns the spec to post to every member
 */
export function createShmGroupSpec(
  name: string,
  worldRanks: number[],
  slotBytes?: number,
  chanBytes?: number,
  arena?: SharedArena,
): ShmGroupSpec {
  const size = worldRanks.length;
  // Beyond 8 ranks the defaults shrink so that a group stays under ~64 MiB of slots and
  // ~16 MiB of channels (channels grow with the square of the size).
  slotBytes ??= Math.min(DEFAULT_SLOT_BYTES, pow2Below((32 << 20) / Math.max(1, size), 1 << 16));
  chanBytes ??= Math.min(
    DEFAULT_CHANNEL_BYTES,
    pow2Below((8 << 20) / Math.max(1, size * size), 1 << 12),
  );
  if (!Number.isInteger(size) || size < 1) {
    throw new RangeError(`A group needs at least one rank, got ${size}`);
  }
  for (const [what, v] of [["slotBytes", slotBytes], ["chanBytes", chanBytes]] as const) {
    if (!Number.isInteger(v) || v < 64 || v % 8 !== 0) {
      throw new RangeError(`${what} must be a multiple of 8 and at least 64, got ${v}`);
    }
  }
  const slots = worldRanks.map(() =>
    arena !== undefined
      ? arena.alloc(Uint8Array, 2 * slotBytes)
      : new Uint8Array(new SharedArrayBuffer(2 * slotBytes))
  );
  return {
    id: crypto.randomUUID(),
    name,
    size,
    worldRanks: worldRanks.slice(),
    ctrl: new SharedArrayBuffer((size + 1) * CTRL_STRIDE * 4),
    data: slots.map((v) => v.buffer as SharedArrayBuffer),
    dataOffsets: slots.map((v) => v.byteOffset),
    arenaId: arena?.id ?? 0,
    chanCtrl: new SharedArrayBuffer(size * size * CH_STRIDE * 4),
    chanData: new SharedArrayBuffer(size > 1 ? size * size * 2 * chanBytes : 8),
    slotBytes,
    chanBytes,
  };
}
