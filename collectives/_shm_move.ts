/**
 * The shared-memory ops that move data without reducing it: all-gather, broadcast and
 * all-to-all. Each goes through the staging slots a chunk per round (a rank writes its part of
 * the chunk to its slot, publishes, and reads its peers' slots); a large all-gather or broadcast
 * whose buffers can be read in place ({@link ./_shm_peer_buffers.ts}) copies straight from the
 * peers' buffers in one round, and a last round keeps them untouched until nobody reads them.
 *
 * @module
 */
import type { CollectiveBuffer, DType } from "./communicator.ts";
import { bytesOf, type Ctx, sub } from "./_shm_layout.ts";
import { ShmPart } from "./_shm_part.ts";

/** One rank's data movement. */
export class ShmMoves extends ShmPart {
  /** Concatenate every rank's `input` in rank order into `output`. */
  async allGather(
    ctx: Ctx,
    desc: number[],
    input: CollectiveBuffer,
    output: CollectiveBuffer,
    dtype: DType,
  ): Promise<void> {
    const m = input.length, n = this.size;
    const per = Math.max(1, Math.floor(this.slots.bytes / bytesOf(dtype)));
    let first = true;
    if (n > 1 && output.byteLength > this.smallBytes) {
      const peers = await this.buffers.locate(ctx, desc, input, -1);
      first = false;
      if (peers !== null) {
        for (let p = 0; p < n; p++) output.set(peers[p]!, p * m);
        await this.rounds.round(ctx, null);
        return;
      }
    }
    for (let a = 0; first || a < m; a += per) {
      const b = Math.min(m, a + per), len = b - a;
      const h = this.slots.nextHalf();
      this.slots.views(dtype, this.rank, h).set(sub(input, a, b));
      await this.rounds.round(ctx, first ? desc : null);
      first = false;
      for (let p = 0; p < n; p++) {
        const src = p === this.rank ? input : this.slots.views(dtype, p, h);
        const off = p === this.rank ? a : 0;
        output.set(src.subarray(off, off + len), p * m + a);
      }
    }
  }

  /** Copy `buf` of rank `root` into `buf` of every rank. */
  async broadcast(
    ctx: Ctx,
    desc: number[],
    buf: CollectiveBuffer,
    root: number,
    dtype: DType,
  ): Promise<void> {
    const m = buf.length;
    const per = Math.max(1, Math.floor(this.slots.bytes / bytesOf(dtype)));
    let first = true;
    if (this.size > 1 && buf.byteLength > this.smallBytes) {
      const peers = await this.buffers.locate(ctx, desc, buf, root);
      first = false;
      if (peers !== null) {
        if (this.rank !== root) buf.set(peers[root]!);
        await this.rounds.round(ctx, null);
        return;
      }
    }
    for (let a = 0; first || a < m; a += per) {
      const b = Math.min(m, a + per);
      const h = this.slots.nextHalf();
      if (this.rank === root) this.slots.views(dtype, root, h).set(sub(buf, a, b));
      await this.rounds.round(ctx, first ? desc : null);
      first = false;
      if (this.rank !== root) buf.set(this.slots.slot(dtype, root, h, 0, b - a), a);
    }
  }

  /** Block `j` of rank `i`'s `input` lands as block `i` of rank `j`'s `output`. */
  async allToAll(
    ctx: Ctx,
    desc: number[],
    input: CollectiveBuffer,
    output: CollectiveBuffer,
    dtype: DType,
  ): Promise<void> {
    const n = this.size, m = input.length / n;
    const per = Math.max(1, Math.floor(this.slots.bytes / bytesOf(dtype) / n));
    let first = true;
    for (let a = 0; first || a < m; a += per) {
      const b = Math.min(m, a + per), len = b - a;
      const h = this.slots.nextHalf();
      const mine = this.slots.views(dtype, this.rank, h);
      for (let p = 0; p < n; p++) mine.set(sub(input, p * m + a, p * m + b), p * len);
      await this.rounds.round(ctx, first ? desc : null);
      first = false;
      const r = this.rank;
      for (let p = 0; p < n; p++) {
        const src = this.slots.slot(dtype, p, h, r * len, r * len + len);
        output.set(src, p * m + a);
      }
    }
  }
}
