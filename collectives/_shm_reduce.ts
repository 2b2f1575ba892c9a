/**
 * The reductions over shared memory: all-reduce, reduce and reduce-scatter. A small all-reduce
 * or reduce takes one round per chunk through the staging slots: every rank (or the root) folds
 * all slots in rank order. A large one spends two rounds per chunk: each rank reduces its own
 * slice of the chunk straight from its peers' slots (reduce-scatter), publishes, and every rank
 * copies the reduced slices out (all-gather). A reduce-scatter writes every block to its slot
 * and folds its own block from every rank's slot. When every rank's buffer can be read in place
 * ({@link ./_shm_peer_buffers.ts}), rank r folds slice (or block) r of every buffer directly,
 * in WebAssembly SIMD when they all live in the arena. Folds always run in rank order, so every
 * rank ends bit-identical.
 *
 * @module
 */
import type { CollectiveBuffer, DType, ReduceOp } from "./communicator.ts";
import { finishAvg, reduceTo } from "./reduce.ts";
import type { SharedArena } from "./arena.ts";
import { ArenaFold, arenaFold } from "./_shm_fold.ts";
import { bytesOf, type Ctx, FOLD_CHUNK, overlaps, sub } from "./_shm_layout.ts";
import { ShmPart } from "./_shm_part.ts";

/** One rank's reductions. */
export class ShmReduce extends ShmPart {
  #scratch: Float32Array | undefined;
  #scratchI32: Int32Array | undefined;

  /** Free the fold scratch (the group closed). */
  close(arena: SharedArena | undefined): void {
    const scratch = this.#scratch;
    this.#scratch = undefined;
    if (scratch !== undefined && arena?.owns(scratch)) arena.free(scratch);
  }

  /** All-reduce `buf` (root < 0), or reduce it to `root`; `desc` is the op descriptor. */
  async reduce(
    ctx: Ctx,
    desc: number[],
    buf: CollectiveBuffer,
    op: ReduceOp,
    dtype: DType,
    root: number,
  ): Promise<void> {
    const n = this.size, m = buf.length, r = this.rank;
    const es = bytesOf(dtype);
    if (m * es <= this.smallBytes || n === 1) {
      // One round per chunk: every rank (or the root) folds all slots in rank order.
      const per = Math.floor(this.slots.bytes / es);
      let first = true;
      for (let a = 0; first || a < m; a += per) {
        const b = Math.min(m, a + per);
        const h = this.slots.nextHalf();
        this.slots.views(dtype, r, h).set(sub(buf, a, b));
        const w = this.rounds.round(ctx, first ? desc : null);
        if (w !== undefined) await w;
        first = false;
        if (root >= 0 && r !== root) continue;
        const dst = sub(buf, a, b);
        const src = (p: number) => this.slots.slot(dtype, p, h, 0, b - a);
        // SIMD pays from a few hundred elements (below, the JavaScript loop is cheaper).
        const fold = n > 1 && b - a >= 256 ? arenaFold(this.slots.arena, dtype, op) : undefined;
        if (fold !== undefined) {
          // SIMD over the slots into arena scratch, then one copy out.
          const scratch = this.#arenaScratch(this.slots.arena!, dtype);
          for (let s = 0; s < b - a; s += FOLD_CHUNK) {
            const e = Math.min(b - a, s + FOLD_CHUNK);
            const t = sub(scratch, 0, e - s);
            fold.to(t, sub(src(0), s, e), sub(src(1), s, e), op, dtype);
            for (let p = 2; p < n; p++) fold.to(t, t, sub(src(p), s, e), op, dtype);
            if (op === "avg") fold.finishAvg(t, n, dtype);
            dst.set(t, s);
          }
          continue;
        }
        if (n > 1) {
          reduceTo(dst, src(0), src(1), op, dtype);
          for (let p = 2; p < n; p++) reduceTo(dst, dst, src(p), op, dtype);
        }
        if (op === "avg") finishAvg(dst, n, dtype);
      }
      return;
    }
    const peers = await this.buffers.locate(ctx, desc, buf, -1);
    if (peers !== null) return this.#inPlace(ctx, buf, peers, op, dtype, root);
    // Two rounds per chunk: reduce-scatter straight from the peers' slots, then all-gather.
    const per = Math.floor(this.slots.bytes / es);
    for (let a = 0; a < m; a += per) {
      const b = Math.min(m, a + per), len = b - a;
      const h = this.slots.nextHalf();
      this.slots.views(dtype, r, h).set(sub(buf, a, b));
      await this.rounds.round(ctx, null);
      const lo = Math.floor(r * len / n), hi = Math.floor((r + 1) * len / n);
      if (hi > lo) {
        const dst = this.slots.slot(dtype, r, h, lo, hi);
        // Rank r >= 2 overwrites its own slot slice before folding it in: read it from buf.
        const src = (p: number) =>
          p === r && r >= 2 ? sub(buf, a + lo, a + hi) : this.slots.slot(dtype, p, h, lo, hi);
        reduceTo(dst, src(0), src(1), op, dtype);
        for (let p = 2; p < n; p++) reduceTo(dst, dst, src(p), op, dtype);
        if (op === "avg") finishAvg(dst, n, dtype);
      }
      await this.rounds.round(ctx, null);
      if (root >= 0 && r !== root) continue;
      for (let p = 0; p < n; p++) {
        const plo = Math.floor(p * len / n), phi = Math.floor((p + 1) * len / n);
        if (phi > plo) buf.set(this.slots.slot(dtype, p, h, plo, phi), a + plo);
      }
    }
  }

  /**
   * Zero-copy all-reduce (or reduce) when every rank's buffer lives on a SharedArrayBuffer its
   * peers know: rank r folds slice r of every rank's buffer, chunk by chunk and in rank order,
   * and writes the result straight into slice r of every rank's buffer (for reduce: of the
   * root's only). Each element is read and then written
   * by its slice's owner alone, so no rank can see a half-reduced value; the last round keeps
   * every buffer untouched until nobody reads or writes it any more.
   */
  async #inPlace(
    ctx: Ctx,
    buf: CollectiveBuffer,
    peers: CollectiveBuffer[],
    op: ReduceOp,
    dtype: DType,
    root: number,
  ): Promise<void> {
    const n = this.size, m = buf.length, r = this.rank;
    const lo = Math.floor(r * m / n), hi = Math.floor((r + 1) * m / n);
    const arena = this.buffers.opArena;
    if (arena !== undefined && ArenaFold.supports(dtype, op)) {
      return this.#inArena(ctx, arena, peers, lo, hi, op, dtype, root);
    }
    const chunk = Math.min(Math.floor(this.slots.bytes / bytesOf(dtype)), FOLD_CHUNK);
    // Fold in place into the owner's buffer when it is rank 0 or 1 (an operand of the first
    // step, element by element); a later owner would lose its values before they are folded in.
    const owner = root < 0 ? r : root;
    const inPlace = owner < 2;
    for (let s = lo; s < hi; s += chunk) {
      const e = Math.min(hi, s + chunk);
      const t = inPlace ? sub(peers[owner]!, s, e) : this.slots.slot(dtype, r, 0, 0, e - s);
      reduceTo(t, sub(peers[0]!, s, e), sub(peers[1]!, s, e), op, dtype);
      for (let p = 2; p < n; p++) reduceTo(t, t, sub(peers[p]!, s, e), op, dtype);
      if (op === "avg") finishAvg(t, n, dtype);
      for (let p = root < 0 ? 0 : root; p < (root < 0 ? n : root + 1); p++) {
        if (!(inPlace && p === owner)) peers[p]!.set(t, s);
      }
    }
    await this.rounds.round(ctx, null);
  }

  /**
   * {@linkcode ShmReduce.#inPlace} when every buffer lives in this process's arena:
   * the same slices and order, folded with WebAssembly SIMD. Two ranks of an all-reduce fold
   * and write both buffers in one pass; otherwise the fold runs chunk by chunk into the owner's
   * buffer (ranks 0 and 1) or an arena scratch, which is then copied out.
   */
  async #inArena(
    ctx: Ctx,
    arena: SharedArena,
    peers: CollectiveBuffer[],
    lo: number,
    hi: number,
    op: ReduceOp,
    dtype: DType,
    root: number,
  ): Promise<void> {
    const n = this.size;
    const fold = arenaFold(arena, dtype, op)!;
    if (n === 2 && root < 0) {
      if (hi > lo) fold.both(sub(peers[0]!, lo, hi), sub(peers[1]!, lo, hi), op, dtype);
    } else {
      const owner = root < 0 ? this.rank : root;
      const inPlace = owner < 2;
      const chunk = FOLD_CHUNK;
      let scratch: CollectiveBuffer | undefined;
      if (!inPlace) {
        scratch = this.#arenaScratch(arena, dtype);
      }
      for (let s = lo; s < hi; s += chunk) {
        const e = Math.min(hi, s + chunk);
        const t = inPlace ? sub(peers[owner]!, s, e) : sub(scratch!, 0, e - s);
        fold.to(t, sub(peers[0]!, s, e), sub(peers[1]!, s, e), op, dtype);
        for (let p = 2; p < n; p++) fold.to(t, t, sub(peers[p]!, s, e), op, dtype);
        if (op === "avg") fold.finishAvg(t, n, dtype);
        for (let p = root < 0 ? 0 : root; p < (root < 0 ? n : root + 1); p++) {
          if (!(inPlace && p === owner)) peers[p]!.set(t, s);
        }
      }
    }
    await this.rounds.round(ctx, null);
  }

  /** FOLD_CHUNK elements of arena scratch for this thread's folds. */
  #arenaScratch(arena: SharedArena, dtype: DType): CollectiveBuffer {
    let s = this.#scratch;
    if (s === undefined || !arena.owns(s)) {
      s = this.#scratch = arena.alloc(Float32Array, FOLD_CHUNK);
      this.#scratchI32 = new Int32Array(s.buffer, s.byteOffset, s.length);
    }
    return dtype === "int32" ? this.#scratchI32! : s;
  }

  /** Reduce `input` (size x output.length); `output` gets block `rank` of the result. */
  async reduceScatter(
    ctx: Ctx,
    desc: number[],
    input: CollectiveBuffer,
    output: CollectiveBuffer,
    op: ReduceOp,
    dtype: DType,
  ): Promise<void> {
    const m = output.length, n = this.size, r = this.rank;
    const per = Math.max(1, Math.floor(this.slots.bytes / bytesOf(dtype) / n));
    let first = true;
    if (n > 1 && input.byteLength > this.smallBytes) {
      const peers = await this.buffers.locate(ctx, desc, input, -1);
      first = false;
      if (peers !== null) {
        // Fold block r straight from every rank's input. When output is this rank's own block
        // of input and r >= 2, save each piece first (the fold would overwrite it too early).
        const own = sub(input, r * m, (r + 1) * m);
        const alias = r >= 2 && overlaps(output, own);
        const step = alias ? Math.floor(this.slots.bytes / bytesOf(dtype)) : Math.max(1, m);
        // SIMD when every input and the output live in the arena (and so does the staging
        // slot, when a piece must be saved there).
        const arena = this.buffers.opArena;
        const fold = arena !== undefined && (!alias || this.slots.arena === arena)
          ? arenaFold(arena, dtype, op, output)
          : undefined;
        const to = (d: CollectiveBuffer, x: CollectiveBuffer, y: CollectiveBuffer) =>
          fold !== undefined ? fold.to(d, x, y, op, dtype) : reduceTo(d, x, y, op, dtype);
        for (let s = 0; s < m; s += step) {
          const e = Math.min(m, s + step);
          const dst = sub(output, s, e);
          let mine = sub(own, s, e);
          if (alias) {
            const saved = this.slots.slot(dtype, r, 0, 0, e - s);
            saved.set(mine);
            mine = saved;
          }
          const src = (p: number) => (p === r ? mine : sub(peers[p]!, r * m + s, r * m + e));
          to(dst, src(0), src(1));
          for (let p = 2; p < n; p++) to(dst, dst, src(p));
          if (op === "avg") {
            fold !== undefined ? fold.finishAvg(dst, n, dtype) : finishAvg(dst, n, dtype);
          }
        }
        await this.rounds.round(ctx, null);
        return;
      }
    }
    for (let a = 0; first || a < m; a += per) {
      const b = Math.min(m, a + per), len = b - a;
      const h = this.slots.nextHalf();
      const mine = this.slots.views(dtype, this.rank, h);
      for (let p = 0; p < n; p++) mine.set(sub(input, p * m + a, p * m + b), p * len);
      await this.rounds.round(ctx, first ? desc : null);
      first = false;
      if (len === 0) continue;
      const lo = this.rank * len, hi = lo + len;
      const dst = output.subarray(a, b);
      const src = (p: number) => this.slots.slot(dtype, p, h, lo, hi);
      if (n === 1) dst.set(src(0));
      else {
        reduceTo(dst, src(0), src(1), op, dtype);
        for (let p = 2; p < n; p++) reduceTo(dst, dst, src(p), op, dtype);
      }
      if (op === "avg") finishAvg(dst, n, dtype);
    }
  }
}
