/**
 * Zero copy for a shared-memory group: when the buffers of an op live on SharedArrayBuffers
 * (or in the world's arena, {@link ./arena.ts}, which every rank of the process maps), the ranks
 * publish where theirs is in the op's first round and read each other's in place instead of
 * staging through the slots. A rank shares each SharedArrayBuffer with its peers once (a
 * MessagePort message); they keep a reference until the group closes.
 *
 * @module
 */
import type { CollectiveBuffer } from "./communicator.ts";
import { currentArena, type SharedArena, type SharedArrayCtor } from "./arena.ts";
import type { ShmLink } from "./_shm_link.ts";
import { CTRL_STRIDE, type Ctx, D_A, D_ARENA, D_B, D_SEQ, DESC } from "./_shm_layout.ts";
import type { ShmFaults } from "./_shm_faults.ts";
import type { ShmRounds } from "./_shm_wait.ts";

/** What the peer buffers need of the group's spec. */
export interface PeerBufferGroup {
  /** Unique id of the group (keys its messages). */
  id: string;
  /** World rank of every group rank. */
  worldRanks: number[];
}

/** One rank's shared buffers and the ones its peers shared with it. */
export class ShmPeerBuffers {
  /** The arena every rank's buffer of the op in flight lives in, if they all do. */
  opArena: SharedArena | undefined;
  #myBufs = new WeakMap<SharedArrayBuffer, number>();
  #nextBufId = 0;
  #peerBufs: Map<number, SharedArrayBuffer>[] = [];
  readonly #ctrl: Int32Array;
  readonly #rank: number;
  readonly #size: number;
  readonly #spec: PeerBufferGroup;
  readonly #link: ShmLink;
  readonly #rounds: ShmRounds;
  readonly #faults: ShmFaults;

  constructor(
    ctrl: Int32Array,
    spec: PeerBufferGroup,
    link: ShmLink,
    rounds: ShmRounds,
    faults: ShmFaults,
  ) {
    this.#ctrl = ctrl;
    this.#rank = faults.rank;
    this.#size = faults.size;
    this.#spec = spec;
    this.#link = link;
    this.#rounds = rounds;
    this.#faults = faults;
  }

  /** Forget the peers' buffers (the group closed). */
  close(): void {
    this.#peerBufs = [];
  }

  /**
   * First round of an op that may read its peers' buffers in place: publish the descriptor and
   * where `buf` lives (when it is on a SharedArrayBuffer, sharing that buffer with the peers
   * once), and return every rank's buffer as a view (this rank's is `buf`) when the ranks that
   * matter (`only` >= 0: that rank; else all) have one; `null` means: use the staging slots.
   */
  async locate(
    ctx: Ctx,
    desc: number[],
    buf: CollectiveBuffer,
    only: number,
  ): Promise<CollectiveBuffer[] | null> {
    const n = this.#size, r = this.#rank, par = desc[D_SEQ]! & 1;
    const base = r * CTRL_STRIDE + DESC + par * 8;
    let id = 0;
    const sab = buf.buffer;
    const arena = currentArena();
    this.opArena = undefined;
    if (arena !== undefined && arena.owns(buf) && (only < 0 || only === r)) {
      id = -arena.id; // every rank of the process maps the arena: no need to share the buffer
    } else if (sab instanceof SharedArrayBuffer && (only < 0 || only === r)) {
      id = this.#myBufs.get(sab) ?? 0;
      if (id === 0) {
        id = ++this.#nextBufId;
        this.#myBufs.set(sab, id);
        for (let p = 0; p < n; p++) {
          if (p !== r) this.#link.post(this.#spec.worldRanks[p]!, this.#regKey(r, id), sab);
        }
      }
    }
    Atomics.store(this.#ctrl, base + D_A, id);
    Atomics.store(this.#ctrl, base + D_B, buf.byteOffset / buf.BYTES_PER_ELEMENT);
    Atomics.store(this.#ctrl, r * CTRL_STRIDE + D_ARENA + par, arena?.id ?? 0);
    await this.#rounds.round(ctx, desc);
    const ids: number[] = [], offs: number[] = [];
    // Arena buffers are usable only when every rank maps the same arena (a decision every rank
    // takes from the same published words, so that they all take the same path).
    let sameArena = arena !== undefined;
    for (let p = 0; p < n; p++) {
      const pb = p * CTRL_STRIDE + DESC + par * 8;
      ids.push(Atomics.load(this.#ctrl, pb + D_A));
      offs.push(Atomics.load(this.#ctrl, pb + D_B));
      const a = Atomics.load(this.#ctrl, p * CTRL_STRIDE + D_ARENA + par);
      if (a === 0 || a !== Atomics.load(this.#ctrl, D_ARENA + par)) sameArena = false;
    }
    const needed = only >= 0 ? [only] : ids.map((_, p) => p);
    if (needed.some((p) => ids[p] === 0 || (ids[p]! < 0 && !sameArena))) return null;
    if (needed.every((p) => ids[p]! < 0) && only < 0) this.opArena = arena;
    const views: CollectiveBuffer[] = [];
    const Ctor = buf.constructor as unknown as SharedArrayCtor<CollectiveBuffer>;
    for (let p = 0; p < n; p++) {
      if (p === r) views.push(buf);
      else if (!needed.includes(p)) views.push(buf);
      else if (ids[p]! < 0) {
        views.push(arena!.view(Ctor, offs[p]! * buf.BYTES_PER_ELEMENT, buf.length));
      } else {
        const peerSab = await this.#peerBuffer(ctx, p, ids[p]!);
        views.push(new Ctor(peerSab, offs[p]! * buf.BYTES_PER_ELEMENT, buf.length));
      }
    }
    return views;
  }

  #regKey(owner: number, id: number): string {
    return `${this.#spec.id}:buf:${owner}:${id}`;
  }

  async #peerBuffer(ctx: Ctx, p: number, id: number): Promise<SharedArrayBuffer> {
    const known = (this.#peerBufs[p] ??= new Map()).get(id);
    if (known !== undefined) return known;
    const sab = await this.#link.receive(
      this.#regKey(p, id),
      this.#spec.worldRanks[p]!,
      () => this.#faults.problem(ctx, p),
    ) as SharedArrayBuffer;
    this.#peerBufs[p]!.set(id, sab);
    return sab;
  }
}
