/**
 * Point-to-point channels of a shared-memory group: one per ordered pair of ranks, two chunk
 * slots each, a sent and an acknowledged counter. Messages carry their tag; a recv takes the next
 * message with its tag and keeps (copies) the ones with other tags that arrive first.
 *
 * A message longer than a chunk travels out of band: the sender copies it into a
 * SharedArrayBuffer of its own that belongs to the slot (handed to the receiver once, through the
 * peer's MessagePort, and reused while it is large enough) and publishes a one-chunk header that
 * names it. The slot's acknowledgement frees that buffer too, so a send never waits for its
 * receiver unless two earlier messages to the same peer are still untaken.
 *
 * @module
 */
import { type CollectiveBuffer, CollectiveError, type DType } from "./communicator.ts";
import {
  C_ACK,
  C_HDR,
  C_RWAIT,
  C_SENT,
  C_SWAIT,
  CH_STRIDE,
  type Ctx,
  DTYPES,
} from "./_shm_layout.ts";
import type { ShmGroupSpec } from "./_shm_group.ts";

/** How a channel waits: the communicator's spin-then-sleep wait and its liveness checks. */
export interface Waiter {
  wait(
    ctx: Ctx,
    arr: Int32Array,
    idx: number,
    target: number,
    waitersIdx: number,
    spin: boolean,
    check: () => CollectiveError | undefined,
  ): Promise<void>;
  problem(ctx: Ctx, peer: number): CollectiveError | undefined;
  /** Post a SharedArrayBuffer to a group rank under a key. */
  post(peer: number, key: string, sab: SharedArrayBuffer): void;
  /** The SharedArrayBuffer a group rank posted under a key. */
  receive(ctx: Ctx, peer: number, key: string): Promise<SharedArrayBuffer>;
}

/** The dtype word of a header: dtype index in the low 2 bits, out-of-band buffer id above. */
const OOB_SHIFT = 2;

/** One rank's ends of every channel of its group. */
export class ShmChannels {
  #ctrl: Int32Array;
  #data: Uint8Array;
  #bytes: number;
  #size: number;
  #rank: number;
  #name: string;
  #waiter: Waiter;
  #sentChunks: number[];
  #recvChunks: number[];
  #sentMsgs: number[];
  #recvMsgs: number[];
  #kept: Map<number, { dtype: number; length: number; data: Uint8Array }[]>[] = [];
  #id: string;
  /** Out-of-band buffers this rank sends through, by peer x 2 + slot. */
  #outBufs: ({ id: number; data: Uint8Array } | undefined)[] = [];
  /** Out-of-band buffers this rank receives from, by peer x 2 + slot. */
  #inBufs: ({ id: number; data: Uint8Array } | undefined)[] = [];
  #nextOobId = 0;

  constructor(spec: ShmGroupSpec, rank: number, waiter: Waiter) {
    this.#ctrl = new Int32Array(spec.chanCtrl);
    this.#data = new Uint8Array(spec.chanData);
    this.#bytes = spec.chanBytes;
    this.#size = spec.size;
    this.#rank = rank;
    this.#name = spec.name;
    this.#id = spec.id;
    this.#waiter = waiter;
    this.#sentChunks = new Array(spec.size).fill(0);
    this.#recvChunks = new Array(spec.size).fill(0);
    this.#sentMsgs = new Array(spec.size).fill(0);
    this.#recvMsgs = new Array(spec.size).fill(0);
  }

  /** Send `buf` to `peer` with `tag`, chunk by chunk through the two slots of the channel. */
  async send(
    ctx: Ctx,
    buf: CollectiveBuffer,
    dtype: DType,
    peer: number,
    tag: number,
  ): Promise<void> {
    const c = (this.#rank * this.#size + peer) * CH_STRIDE;
    const cb = this.#bytes;
    const bytes = buf.byteLength;
    const src = new Uint8Array(buf.buffer, buf.byteOffset, bytes);
    const msg = ++this.#sentMsgs[peer]!;
    const oob = bytes > cb;
    const chunks = oob ? 1 : Math.max(1, Math.ceil(bytes / cb));
    const ch = this.#ctrl;
    for (let i = 0; i < chunks; i++) {
      const k = this.#sentChunks[peer]!;
      // Two chunks per channel: chunk k may reuse its slot once chunk k - 2 has been taken.
      if (Atomics.load(ch, c + C_ACK) < k - 1) {
        await this.#waiter.wait(
          ctx,
          ch,
          c + C_ACK,
          k - 1,
          c + C_SWAIT,
          true,
          () => this.#waiter.problem(ctx, peer),
        );
      }
      const slot = k & 1;
      const hdr = c + C_HDR + slot * 4;
      Atomics.store(ch, hdr, msg);
      Atomics.store(ch, hdr + 1, tag);
      Atomics.store(ch, hdr + 2, buf.length);
      if (oob) {
        const out = this.#outBuffer(peer, slot, bytes);
        out.data.set(src);
        Atomics.store(ch, hdr + 3, DTYPES.indexOf(dtype) | (out.id << OOB_SHIFT));
      } else {
        Atomics.store(ch, hdr + 3, DTYPES.indexOf(dtype));
        const off = ((this.#rank * this.#size + peer) * 2 + slot) * cb;
        this.#data.set(src.subarray(i * cb, Math.min(bytes, (i + 1) * cb)), off);
      }
      this.#sentChunks[peer] = k + 1;
      Atomics.store(ch, c + C_SENT, k + 1);
      if (Atomics.load(ch, c + C_RWAIT) > 0) Atomics.notify(ch, c + C_SENT);
    }
  }

  /**
   * Receive the next message from `peer` with `tag`. Messages with other tags that arrive first
   * are taken off the channel and kept (copied) until a recv asks for their tag.
   */
  async recv(
    ctx: Ctx,
    buf: CollectiveBuffer,
    dtype: DType,
    peer: number,
    tag: number,
  ): Promise<void> {
    const dt = DTYPES.indexOf(dtype);
    const dst = new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
    const kept = this.#kept[peer]?.get(tag);
    const early = kept?.shift();
    if (early !== undefined) {
      if (kept!.length === 0) this.#kept[peer]!.delete(tag);
      if (early.dtype !== dt || early.length !== buf.length) {
        throw this.#mismatch(ctx, peer, tag, buf.length, dtype, early.length, early.dtype);
      }
      dst.set(early.data);
      return;
    }
    const c = (peer * this.#size + this.#rank) * CH_STRIDE;
    const ch = this.#ctrl;
    for (;;) {
      const k = this.#recvChunks[peer]!;
      await this.#waiter.wait(
        ctx,
        ch,
        c + C_SENT,
        k + 1,
        c + C_RWAIT,
        true,
        () => this.#waiter.problem(ctx, peer),
      );
      const hdr = c + C_HDR + (k & 1) * 4;
      const ht = Atomics.load(ch, hdr + 1);
      const hl = Atomics.load(ch, hdr + 2);
      const word = Atomics.load(ch, hdr + 3);
      const hd = word & ((1 << OOB_SHIFT) - 1), oob = word >>> OOB_SHIFT;
      const fits = ht === tag && hl === buf.length && hd === dt;
      const bytes = hl * (hd === 0 || hd === 1 ? 4 : 2);
      const into = fits ? dst : new Uint8Array(bytes);
      if (oob !== 0) await this.#take(ctx, peer, k, oob, bytes, into);
      else await this.#drain(ctx, peer, bytes, into);
      if (fits) return;
      if (ht === tag) throw this.#mismatch(ctx, peer, tag, buf.length, dtype, hl, hd);
      const byTag = this.#kept[peer] ??= new Map();
      const list = byTag.get(ht) ?? [];
      list.push({ dtype: hd, length: hl, data: into });
      byTag.set(ht, list);
    }
  }

  /** The out-of-band buffer of `slot` towards `peer`, at least `bytes` long. */
  #outBuffer(peer: number, slot: number, bytes: number): { id: number; data: Uint8Array } {
    const at = peer * 2 + slot;
    const have = this.#outBufs[at];
    if (have !== undefined && have.data.byteLength >= bytes) return have;
    // Grow by at least a quarter, so that slowly growing messages do not reallocate every time.
    const size = Math.max(bytes, Math.ceil((have?.data.byteLength ?? 0) * 1.25 / 8) * 8);
    const sab = new SharedArrayBuffer(size);
    const out = { id: ++this.#nextOobId, data: new Uint8Array(sab) };
    this.#waiter.post(peer, this.#oobKey(this.#rank, out.id), sab);
    this.#outBufs[at] = out;
    return out;
  }

  #oobKey(from: number, id: number): string {
    return `${this.#id}:p2p:${from}:${id}`;
  }

  /**
   * Copy the out-of-band message of chunk `k` from `peer` (buffer `id`, `bytes` long) into
   * `into`, then hand the slot back.
   */
  async #take(
    ctx: Ctx,
    peer: number,
    k: number,
    id: number,
    bytes: number,
    into: Uint8Array,
  ): Promise<void> {
    const c = (peer * this.#size + this.#rank) * CH_STRIDE;
    const ch = this.#ctrl;
    const msg = ++this.#recvMsgs[peer]!;
    const slot = k & 1;
    if (Atomics.load(ch, c + C_HDR + slot * 4) !== msg) {
      throw new CollectiveError(
        "protocol",
        ctx.op,
        this.#name,
        peer,
        `message ${msg} from rank ${peer} is missing`,
      );
    }
    const at = peer * 2 + slot;
    let buf = this.#inBufs[at];
    if (buf === undefined || buf.id !== id) {
      const sab = await this.#waiter.receive(ctx, peer, this.#oobKey(peer, id));
      buf = { id, data: new Uint8Array(sab) };
      this.#inBufs[at] = buf;
    }
    into.set(buf.data.subarray(0, bytes));
    this.#recvChunks[peer] = k + 1;
    Atomics.store(ch, c + C_ACK, k + 1);
    if (Atomics.load(ch, c + C_SWAIT) > 0) Atomics.notify(ch, c + C_ACK);
  }

  /** Copy the message at the head of `peer`'s channel (`bytes` long) into `into`. */
  async #drain(ctx: Ctx, peer: number, bytes: number, into: Uint8Array): Promise<void> {
    const c = (peer * this.#size + this.#rank) * CH_STRIDE;
    const cb = this.#bytes;
    const ch = this.#ctrl;
    const msg = ++this.#recvMsgs[peer]!;
    const chunks = Math.max(1, Math.ceil(bytes / cb));
    for (let i = 0; i < chunks; i++) {
      const k = this.#recvChunks[peer]!;
      await this.#waiter.wait(
        ctx,
        ch,
        c + C_SENT,
        k + 1,
        c + C_RWAIT,
        true,
        () => this.#waiter.problem(ctx, peer),
      );
      const slot = k & 1;
      if (Atomics.load(ch, c + C_HDR + slot * 4) !== msg) {
        throw new CollectiveError(
          "protocol",
          ctx.op,
          this.#name,
          peer,
          `chunk ${i} of message ${msg} from rank ${peer} is missing`,
        );
      }
      const off = ((peer * this.#size + this.#rank) * 2 + slot) * cb;
      const len = Math.min(bytes, (i + 1) * cb) - i * cb;
      into.set(this.#data.subarray(off, off + len), i * cb);
      this.#recvChunks[peer] = k + 1;
      Atomics.store(ch, c + C_ACK, k + 1);
      if (Atomics.load(ch, c + C_SWAIT) > 0) Atomics.notify(ch, c + C_ACK);
    }
  }

  #mismatch(
    ctx: Ctx,
    peer: number,
    tag: number,
    length: number,
    dtype: DType,
    sentLength: number,
    sentDtype: number,
  ): CollectiveError {
    return new CollectiveError(
      "mismatch",
      ctx.op,
      this.#name,
      peer,
      `recv with tag ${tag} expected ${length} ${dtype} but rank ${peer} sent ${sentLength} ` +
        `${DTYPES[sentDtype] ?? "?"} with that tag: matching send and recv must agree`,
    );
  }
}
