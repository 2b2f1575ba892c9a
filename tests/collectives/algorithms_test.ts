// The message-passing algorithms, run over an in-memory PeerExchange: every rank is an async
// function of this thread, so the algorithms are checked without any transport.
import assert from "node:assert/strict";
import type { CollectiveBuffer, DType, ReduceOp } from "../../collectives/communicator.ts";
import { reduceTo } from "../../collectives/reduce.ts";
import type { PeerExchange } from "../../collectives/_exchange.ts";
import {
  chainBroadcast,
  ringAllGather,
  ringAllReduce,
  ringReduce,
  ringReduceScatter,
  RingScratch,
} from "../../collectives/_ring.ts";
import { disseminationBarrier, recursiveDoubling } from "../../collectives/_recursive_doubling.ts";
import {
  directAllGather,
  directAllReduce,
  directAllToAll,
  directBroadcast,
  directReduce,
  directReduceScatter,
} from "../../collectives/_direct.ts";

/** Chunks in flight between the ranks of one world, by sender, receiver and tag. */
class Wire {
  readonly #queued = new Map<string, Uint8Array[]>();
  readonly #waiting = new Map<string, ((b: Uint8Array) => void)[]>();

  put(key: string, bytes: Uint8Array): void {
    const w = this.#waiting.get(key)?.shift();
    if (w !== undefined) w(bytes);
    else {
      const q = this.#queued.get(key) ?? [];
      q.push(bytes);
      this.#queued.set(key, q);
    }
  }

  get(key: string): Promise<Uint8Array> {
    const b = this.#queued.get(key)?.shift();
    if (b !== undefined) return Promise.resolve(b);
    return new Promise((resolve) => {
      const ws = this.#waiting.get(key) ?? [];
      ws.push(resolve);
      this.#waiting.set(key, ws);
    });
  }
}

/** One rank's end of a {@linkcode Wire}; sends are copied, as TCP copies small payloads. */
class MemExchange implements PeerExchange<null, Promise<Uint8Array>> {
  sent = 0;
  constructor(
    readonly wire: Wire,
    readonly rank: number,
    readonly size: number,
    readonly chunkBytes: number,
  ) {}

  send(_ctx: null, peer: number, tag: number, bytes: Uint8Array): void {
    this.sent++;
    this.wire.put(`${this.rank}>${peer}:${tag}`, bytes.slice());
  }

  post(_ctx: null, peer: number, tag: number, dest?: Uint8Array): Promise<Uint8Array> {
    return this.wire.get(`${peer}>${this.rank}:${tag}`).then((b) => {
      if (dest === undefined) return b;
      assert.equal(b.length, dest.length, `chunk ${tag} from rank ${peer} has the wrong length`);
      dest.set(b);
      return dest;
    });
  }

  take(_ctx: null, _peer: number, posted: Promise<Uint8Array>): Promise<Uint8Array> {
    return posted;
  }

  release(_bytes: Uint8Array): void {}
}

/** Run `body` on every rank of a world of `n` at once; resolves with every rank's exchange. */
async function world(
  n: number,
  chunkBytes: number,
  body: (x: MemExchange) => Promise<void>,
): Promise<MemExchange[]> {
  const wire = new Wire();
  const xs = Array.from({ length: n }, (_, r) => new MemExchange(wire, r, n, chunkBytes));
  await Promise.all(xs.map(body));
  return xs;
}

function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 4294967296;
  };
}

/** Rank r's input: small integers (any summation order is exact), or random floats. */
function input(r: number, len: number, exact: boolean): Float32Array {
  const rnd = lcg(17 + r);
  return Float32Array.from(
    { length: len },
    () => exact ? Math.floor(rnd() * 64) - 32 : rnd() - 0.5,
  );
}

function serialFold(parts: CollectiveBuffer[], op: ReduceOp, dtype: DType): CollectiveBuffer {
  const acc = parts[0]!.slice();
  for (let j = 1; j < parts.length; j++) reduceTo(acc, acc, parts[j]!, op, dtype);
  return acc;
}

const SIZES = [0, 1, 7, 100, 1031];

Deno.test("the ring all-reduce, reduce-scatter and reduce equal a serial fold and agree bit for bit", async () => {
  for (const n of [1, 2, 3, 4, 5]) {
    for (const len of SIZES) {
      for (const exact of [true, false]) {
        const ins = Array.from({ length: n }, (_, r) => input(r, len, exact));
        const want = serialFold(ins, "sum", "float32");
        const outs = ins.map((x) => x.slice());
        // 64-byte chunks: every segment of a few hundred elements travels in several frames.
        await world(n, 64, (x) => {
          if (n === 1) return Promise.resolve();
          return ringAllReduce(x, null, outs[x.rank]!, "sum", "float32", new RingScratch());
        });
        for (let r = 0; r < n; r++) {
          assert.deepEqual(outs[r], outs[0], `n=${n} len=${len}: rank ${r} differs from rank 0`);
          if (exact) assert.deepEqual(outs[r], want, `n=${n} len=${len} rank ${r}`);
        }
        const roots = ins.map((x) => x.slice());
        const root = n - 1;
        if (n > 1) {
          await world(n, 64, (x) => {
            return ringReduce(x, null, roots[x.rank]!, root, "max", "float32", new RingScratch());
          });
          assert.deepEqual(roots[root], serialFold(ins, "max", "float32"), `reduce n=${n}`);
          for (let r = 0; r < root; r++) {
            assert.deepEqual(roots[r], ins[r], "non-roots keep theirs");
          }
        }
      }
    }
    const m = 37;
    const big = Array.from({ length: n }, (_, r) => input(r, n * m, true));
    const scattered = Array.from({ length: n }, () => new Float32Array(m));
    if (n > 1) {
      await world(n, 64, (x) => {
        const out = scattered[x.rank]!;
        return ringReduceScatter(x, null, big[x.rank]!, out, "sum", "float32", new RingScratch());
      });
      const sum = serialFold(big, "sum", "float32");
      for (let r = 0; r < n; r++) {
        assert.deepEqual(scattered[r], sum.subarray(r * m, (r + 1) * m), `reduceScatter n=${n}`);
      }
    }
  }
});

Deno.test("recursive doubling and the direct all-reduce agree on every rank, int32 and bfloat16 too", async () => {
  for (const n of [2, 3, 4, 8]) {
    for (const dtype of ["float32", "int32", "bfloat16"] as DType[]) {
      const len = 33;
      const rnd = lcg(n);
      const ins: CollectiveBuffer[] = Array.from({ length: n }, () => {
        if (dtype === "float32") return Float32Array.from({ length: len }, () => rnd() - 0.5);
        if (dtype === "int32") return Int32Array.from({ length: len }, () => (rnd() * 1e9) | 0);
        return Uint16Array.from({ length: len }, () => 0x3f80 + Math.floor(rnd() * 128));
      });
      const direct = ins.map((x) => x.slice());
      await world(n, 1 << 20, (x) => directAllReduce(x, null, direct[x.rank]!, "sum", dtype));
      // The direct exchange folds in rank order: exactly the serial fold.
      const want = serialFold(ins, "sum", dtype);
      for (let r = 0; r < n; r++) assert.deepEqual(direct[r], want, `direct n=${n} ${dtype}`);
      if ((n & (n - 1)) !== 0) continue;
      const rd = ins.map((x) => x.slice());
      const xs = await world(
        n,
        1 << 20,
        (x) => recursiveDoubling(x, null, rd[x.rank]!, "sum", dtype),
      );
      for (let r = 0; r < n; r++) assert.deepEqual(rd[r], rd[0], `recursive doubling n=${n}`);
      if (dtype === "int32") assert.deepEqual(rd[0], want, "int32 sums are exact in any order");
      assert.equal(xs[0]!.sent, Math.log2(n), "log2(n) exchanges");
    }
  }
});

Deno.test("all-gathers, broadcasts, direct reduces, all-to-all and the barrier move the right segments", async () => {
  for (const n of [1, 2, 3, 5]) {
    const m = 11;
    for (const gather of [directAllGather, ringAllGather]) {
      const outs = Array.from({ length: n }, (_, r) => {
        const o = new Float32Array(n * m);
        o.set(input(r, m, true), r * m);
        return o;
      });
      const segs = Array.from({ length: n }, (_, i) => ({ offset: i * m, length: m }));
      if (n > 1) await world(n, 16, (x) => gather(x, null, outs[x.rank]!, segs));
      const want = new Float32Array(n * m);
      for (let r = 0; r < n; r++) want.set(input(r, m, true), r * m);
      for (let r = 0; r < n; r++) assert.deepEqual(outs[r], want, `${gather.name} n=${n}`);
    }
    if (n === 1) continue;
    for (const bcast of [directBroadcast, chainBroadcast]) {
      for (let root = 0; root < n; root++) {
        const bufs = Array.from({ length: n }, (_, r) => input(r, 50, true));
        await world(n, 16, (x) => bcast(x, null, bufs[x.rank]!, root));
        for (let r = 0; r < n; r++) assert.deepEqual(bufs[r], input(root, 50, true), bcast.name);
      }
    }
    const ins = Array.from({ length: n }, (_, r) => input(r, n * m, false));
    const reduced = ins.map((x) => x.slice());
    await world(n, 1 << 20, (x) => directReduce(x, null, reduced[x.rank]!, 1, "min", "float32"));
    assert.deepEqual(reduced[1], serialFold(ins, "min", "float32"), "direct reduce");
    const segs = Array.from({ length: n }, (_, i) => ({ offset: i * m, length: m }));
    const scattered = Array.from({ length: n }, () => new Float32Array(m));
    await world(n, 1 << 20, (x) => {
      const out = scattered[x.rank]!;
      return directReduceScatter(x, null, ins[x.rank]!, out, segs, "sum", "float32");
    });
    const sum = serialFold(ins, "sum", "float32");
    for (let r = 0; r < n; r++) assert.deepEqual(scattered[r], sum.subarray(r * m, (r + 1) * m));
    const a2a = Array.from({ length: n }, () => new Float32Array(n * m));
    await world(n, 16, (x) => directAllToAll(x, null, ins[x.rank]!, a2a[x.rank]!));
    for (let j = 0; j < n; j++) {
      for (let i = 0; i < n; i++) {
        assert.deepEqual(
          a2a[j]!.subarray(i * m, (i + 1) * m),
          ins[i]!.subarray(j * m, (j + 1) * m),
          `allToAll: segment ${j} of rank ${i} lands as segment ${i} of rank ${j}`,
        );
      }
    }
    await world(n, 16, (x) => disseminationBarrier(x, null));
  }
});
