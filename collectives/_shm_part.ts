/**
 * What every shared-memory algorithm of a group runs on: this rank, the group's size, the
 * bound between small and large messages, the staging slots, the rounds, and the registry of
 * buffers read in place. The reductions ({@link ./_shm_reduce.ts}) and the data movement
 * ({@link ./_shm_move.ts}) extend it.
 *
 * @module
 */
import type { ShmSlots } from "./_shm_slots.ts";
import type { ShmRounds } from "./_shm_wait.ts";
import type { ShmPeerBuffers } from "./_shm_peer_buffers.ts";

/** The pieces of a group an algorithm uses. */
export class ShmPart {
  constructor(
    protected readonly rank: number,
    protected readonly size: number,
    protected readonly smallBytes: number,
    protected readonly slots: ShmSlots,
    protected readonly rounds: ShmRounds,
    protected readonly buffers: ShmPeerBuffers,
  ) {}
}
