/**
 * Point-to-point channels of a shared-memory group: one per ordered pair of ranks, two chunk
 * slots each, a sent and an acknowledged counter. Messages carry their tag; a recv takes the next
 * message with its tag and keeps (copies) the ones with other tags that arrive first.
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
import type { ShmGroupSpec } from "./shm.ts";

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
}

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

  constructor(spec: ShmGroupSpec, rank: number, waiter: Waiter) {
    this.#ctrl = new Int32Array(spec.chanCtrl);
    this.#data = new Uint8Array(spec.chanData);
    this.#bytes = spec.chanBytes;
    this.#size = spec.size;
    this.#rank = rank;
    this.#name = spec.name;
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
    const chunks = Math.max(1, Math.ceil(bytes / cb));
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
      Atomics.store(ch, hdr + 3, DTYPES.indexOf(dtype));
      const off = ((this.#rank * this.#size + peer) * 2 + slot) * cb;
      this.#data.set(src.subarray(i * cb, Math.min(bytes, (i + 1) * cb)), off);
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
      const hd = Atomics.load(ch, hdr + 3);
      const fits = ht === tag && hl === buf.length && hd === dt;
      const bytes = hl * (hd === 0 || hd === 1 ? 4 : 2);
      const into = fits ? dst : new Uint8Array(bytes);
      await this.#drain(ctx, peer, bytes, into);
      if (fits) return;
      if (ht === tag) throw this.#mismatch(ctx, peer, tag, buf.length, dtype, hl, hd);
      const byTag = this.#kept[peer] ??= new Map();
      const list = byTag.get(ht) ?? [];
      list.push({ dtype: hd, length: hl, data: into });
      byTag.set(ht, list);
    }
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
