/**
 * Staging slots of shared-memory groups in the process arena ({@link ./arena.ts}), where their
 * folds run in SIMD. A world's slots are retired when its Workers are terminated and freed one
 * second later, when the next group is made: a terminated Worker may still run for a moment.
 *
 * @module
 */
import { currentArena, type SharedArena } from "./arena.ts";

const GRACE_MS = 1000;
const retired: { at: number; arena: SharedArena; blocks: Uint8Array[] }[] = [];

/**
 * One slot buffer of `bytes` per rank: in this thread's arena when `inArena` and the thread has
 * one, else plain SharedArrayBuffers.
 */
export function allocSlots(ranks: number, bytes: number, inArena: boolean): Uint8Array[] {
  const now = performance.now();
  while (retired.length > 0 && now - retired[0]!.at > GRACE_MS) {
    const r = retired.shift()!;
    for (const b of r.blocks) r.arena.free(b);
  }
  const arena = inArena ? currentArena() : undefined;
  return Array.from(
    { length: ranks },
    () =>
      arena !== undefined
        ? arena.alloc(Uint8Array, bytes)
        : new Uint8Array(new SharedArrayBuffer(bytes)),
  );
}

/** Give back slots from {@linkcode allocSlots} once nobody can touch them any more. */
export function retireSlots(slots: Uint8Array[]): void {
  const arena = currentArena();
  const blocks = slots.filter((b) => arena?.owns(b));
  if (arena !== undefined && blocks.length > 0) {
    retired.push({ at: performance.now(), arena, blocks });
  }
}
