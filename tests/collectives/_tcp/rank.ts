// One rank of a TCP world, spawned as its own process by tcp_test.ts:
//   deno run -A rank.ts <scenario> <rank> <size> <masterPort>
// It checks every result against a serial reference computed from every rank's inputs (the
// inputs are a pure function of rank and index) and prints one JSON line as its last line.
import { connectTcp } from "../../../collectives/tcp.ts";
import {
  type CollectiveBuffer,
  CollectiveError,
  type Communicator,
  type ReduceOp,
} from "../../../collectives/communicator.ts";
import {
  bf16BitsToF32,
  f16BitsToF32,
  f32ToBf16Bits,
  f32ToF16Bits,
} from "../../../collectives/reduce.ts";
import { freeShared, sharedArray } from "../../../collectives/arena.ts";

const [scenario, rankS, sizeS, portS] = Deno.args;
const rank = Number(rankS), size = Number(sizeS), port = Number(portS);
const ALL = Array.from({ length: size }, (_, i) => i);

/** Small integers: every sum over <= 8 ranks is exact in float32, float16 and bfloat16. */
function value(r: number, i: number): number {
  return ((r * 7 + i * 13) % 31) - 15;
}

let checks = 0;
const failures: string[] = [];
function expectEqual(what: string, got: ArrayLike<number>, want: (i: number) => number): void {
  checks++;
  if (got.length === 0) return;
  for (let i = 0; i < got.length; i++) {
    const w = want(i);
    if (!(got[i] === w || (Number.isNaN(got[i]) && Number.isNaN(w)))) {
      failures.push(`${what}: element ${i} is ${got[i]}, expected ${w} (length ${got.length})`);
      return;
    }
  }
}

function fill(n: number, r: number, base = 0): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = value(r, base + i);
  return a;
}

function serial(op: ReduceOp, i: number, ranks: number[] = ALL): number {
  let acc = value(ranks[0]!, i);
  for (let k = 1; k < ranks.length; k++) {
    const x = value(ranks[k]!, i);
    acc = op === "max" ? Math.max(acc, x) : op === "min" ? Math.min(acc, x) : acc + x;
  }
  return op === "avg" ? Math.fround(acc / ranks.length) : acc;
}

function range(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i);
}

async function digest(buf: CollectiveBuffer): Promise<string> {
  const h = await crypto.subtle.digest(
    "SHA-256",
    new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength).slice(),
  );
  return Array.from(new Uint8Array(h).subarray(0, 8), (b) => b.toString(16).padStart(2, "0"))
    .join("");
}

// Sizes: empty, one element, odd, just past the small-message path, and a few MiB (ring, chunks).
const SIZES = [0, 1, 7, 4099, 20_001, 1_048_579];

async function ops(comm: Communicator): Promise<Record<string, unknown>> {
  const digests: string[] = [];
  for (const n of SIZES) {
    for (const op of ["sum", "max", "min", "avg"] as ReduceOp[]) {
      if (n > 20_001 && op !== "sum") continue;
      const b = fill(n, rank);
      await comm.allReduce(b, op);
      expectEqual(`allReduce ${op} n=${n}`, b, (i) => serial(op, i));
    }
    // Non-integer floats: every rank must end with the same bits (checked by the test), and
    // within 1e-5 relative of the float64 sum (float32 has 24 bits; 8 terms lose < 2^-20).
    const f = new Float32Array(n);
    for (let i = 0; i < n; i++) f[i] = (rank + 1) * 0.1 + i * 1e-3;
    await comm.allReduce(f);
    checks++;
    for (let i = 0; i < n; i++) {
      let want = 0;
      for (let r = 0; r < size; r++) want += Math.fround((r + 1) * 0.1 + i * 1e-3);
      if (Math.abs(f[i]! - want) > 1e-5 * Math.abs(want)) {
        failures.push(`float allReduce n=${n}: element ${i} is ${f[i]}, expected ~${want}`);
        break;
      }
    }
    digests.push(await digest(f));
  }
  // Buffers in the process arena: large rings fold incoming chunks in SIMD. Two all-reduces in
  // flight at once need two scratch blocks.
  for (const n of [20_001, 1_048_579]) {
    for (const op of ["sum", "max", "min", "avg"] as ReduceOp[]) {
      const b = sharedArray(Float32Array, n);
      b.set(fill(n, rank));
      const c = sharedArray(Float32Array, n);
      c.set(fill(n, rank));
      await Promise.all([comm.allReduce(b, op), comm.allReduce(c, op)]);
      expectEqual(`arena allReduce ${op} n=${n}`, b, (i) => serial(op, i));
      expectEqual(`arena allReduce ${op} n=${n} (overlapped)`, c, (i) => serial(op, i));
      freeShared(b);
      freeShared(c);
    }
    const a = sharedArray(Int32Array, n);
    for (let i = 0; i < n; i++) a[i] = value(rank, i) * 1_000_003;
    await comm.allReduce(a, "sum");
    checks++;
    for (let i = 0; i < n; i++) {
      let want = 0;
      for (let r = 0; r < size; r++) want = (want + value(r, i) * 1_000_003) | 0;
      if (a[i] !== want) {
        failures.push(`arena int32 allReduce n=${n}: element ${i} is ${a[i]}, expected ${want}`);
        break;
      }
    }
    freeShared(a);
  }
  for (const n of [0, 5, 30_001]) {
    const a = new Int32Array(n);
    for (let i = 0; i < n; i++) a[i] = value(rank, i) * 1_000_003;
    await comm.allReduce(a, "max");
    expectEqual(`int32 max n=${n}`, a, (i) => serial("max", i) * 1_000_003);
    for (const dtype of ["float16", "bfloat16"] as const) {
      const enc = dtype === "float16" ? f32ToF16Bits : f32ToBf16Bits;
      const dec = dtype === "float16" ? f16BitsToF32 : bf16BitsToF32;
      const h = new Uint16Array(n);
      for (let i = 0; i < n; i++) h[i] = enc(value(rank, i));
      await comm.allReduce(h, "sum", { dtype });
      expectEqual(`${dtype} sum n=${n}`, Array.from(h, dec), (i) => serial("sum", i));
    }
  }
  for (const m of [0, 1, 3, 5_003, 50_003]) {
    const input = fill(m * size, rank);
    const out = new Float32Array(m);
    await comm.reduceScatter(input, out);
    expectEqual(`reduceScatter m=${m}`, out, (j) => serial("sum", rank * m + j));

    const gathered = new Float32Array(m * size);
    await comm.allGather(fill(m, rank), gathered);
    expectEqual(`allGather m=${m}`, gathered, (k) => value(Math.floor(k / m), k % m));

    const a2a = new Float32Array(m * size);
    await comm.allToAll(fill(m * size, rank), a2a);
    expectEqual(`allToAll m=${m}`, a2a, (k) => value(Math.floor(k / m), rank * m + (k % m)));
  }
  for (const n of [0, 1, 9, 262_147]) {
    const root = size - 1;
    const b = rank === root ? fill(n, root) : new Float32Array(n);
    await comm.broadcast(b, root);
    expectEqual(`broadcast n=${n}`, b, (i) => value(root, i));

    const rroot = 1 % size;
    const c = fill(n, rank);
    await comm.reduce(c, rroot);
    expectEqual(`reduce n=${n}`, c, (i) => rank === rroot ? serial("sum", i) : value(rank, i));
  }
  if (size > 1) {
    for (const n of [0, 3, 200_001]) {
      const next = (rank + 1) % size, prev = (rank + size - 1) % size;
      const got = new Float32Array(n);
      const r = comm.recv(got, prev, 5);
      await comm.send(fill(n, rank), next, 5);
      await r;
      expectEqual(`send/recv n=${n}`, got, (i) => value(prev, i));
    }
  }
  // Ops issued without waiting for each other (overlapped buckets) complete independently.
  const x = fill(1000, rank), y = fill(100_003, rank), z = new Float32Array(7);
  const zr = size > 1 ? comm.recv(z, (rank + size - 1) % size, 9) : null;
  await Promise.all([
    comm.allReduce(x),
    comm.allReduce(y, "max"),
    size > 1 ? comm.send(fill(7, rank), (rank + 1) % size, 9) : Promise.resolve(),
  ]);
  await zr;
  expectEqual("overlapped allReduce sum", x, (i) => serial("sum", i));
  expectEqual("overlapped allReduce max", y, (i) => serial("max", i));
  if (size > 1) expectEqual("overlapped send/recv", z, (i) => value((rank + size - 1) % size, i));
  await comm.barrier();
  // Sub-groups: even and odd ranks, ordered by descending rank (key = -rank).
  const sub = await comm.split(rank % 2, -rank);
  const members = range(size).filter((r) => r % 2 === rank % 2).sort((a, b) => b - a);
  checks++;
  if (sub === null || sub.size !== members.length || sub.rank !== members.indexOf(rank)) {
    failures.push(`split: got size ${sub?.size} rank ${sub?.rank}, members ${members}`);
  } else {
    for (const n of [3, 70_001]) {
      const b = fill(n, rank);
      await sub.allReduce(b);
      expectEqual(`sub allReduce n=${n}`, b, (i) => serial("sum", i, members));
    }
    const g = new Float32Array(2 * sub.size);
    await sub.allGather(fill(2, rank), g);
    expectEqual("sub allGather", g, (k) => value(members[Math.floor(k / 2)]!, k % 2));
    await sub.barrier();
  }
  const none = await comm.split(rank === 0 ? -1 : 0);
  checks++;
  if ((none === null) !== (rank === 0)) failures.push("split(-1) must return null");
  if (none) {
    const b = fill(4, rank);
    await none.allReduce(b);
    expectEqual("split without rank 0", b, (i) => serial("sum", i, range(size).slice(1)));
  }
  const b = fill(4, rank);
  await comm.allReduce(b);
  expectEqual("world after sub-groups", b, (i) => serial("sum", i));
  return { digests };
}

async function kill(comm: Communicator): Promise<Record<string, unknown>> {
  // Every rank loops over large all-reduces (small ones, on lanes, for "killsmall"); the test
  // kills the last rank after "GO".
  const b = new Float32Array(name === "killsmall" ? 1024 : 1 << 20);
  const t0 = performance.now();
  let i = 0;
  try {
    while (true) {
      await comm.allReduce(b, "sum", { timeoutMs: 20_000 });
      if (++i === 2 && rank === size - 1) console.log("GO");
    }
  } catch (e) {
    if (!(e instanceof CollectiveError)) throw e;
    return {
      caught: { reason: e.reason, op: e.op, group: e.group, peer: e.peer, message: e.message },
      ms: performance.now() - t0,
    };
  }
}

async function mismatch(comm: Communicator): Promise<Record<string, unknown>> {
  // The last rank passes one more element; everyone must reject, nobody may hang.
  const b = new Float32Array(rank === size - 1 ? 11 : 10);
  try {
    await comm.allReduce(b, "sum", { timeoutMs: 20_000 });
    return { caught: null };
  } catch (e) {
    if (!(e instanceof CollectiveError)) throw e;
    let after: string | null = null;
    try {
      await comm.barrier({ timeoutMs: 5_000 });
    } catch (e2) {
      after = (e2 as CollectiveError).reason;
    }
    return { caught: { reason: e.reason, op: e.op, peer: e.peer, message: e.message }, after };
  }
}

async function stall(comm: Communicator): Promise<Record<string, unknown>> {
  // The last rank never calls the op (it sleeps, then leaves); the others must time out.
  if (rank === size - 1) {
    await new Promise((r) => setTimeout(r, 3_000));
    return { caught: null };
  }
  const t0 = performance.now();
  try {
    await comm.allReduce(new Float32Array(10), "sum", { timeoutMs: 1_000 });
    return { caught: null };
  } catch (e) {
    if (!(e instanceof CollectiveError)) throw e;
    return {
      caught: { reason: e.reason, op: e.op, peer: e.peer, message: e.message },
      ms: performance.now() - t0,
    };
  }
}

async function mismatchPaths(comm: Communicator): Promise<Record<string, unknown>> {
  // Rank 0 passes a small buffer (the latency path, on lanes), the others a large one (the
  // ring over the mesh): the paths differ, and still everyone must reject, nobody may hang.
  const b = new Float32Array(rank === 0 ? 10 : 100_000);
  const t0 = performance.now();
  try {
    await comm.allReduce(b, "sum", { timeoutMs: 20_000 });
    return { caught: null };
  } catch (e) {
    if (!(e instanceof CollectiveError)) throw e;
    const ms = performance.now() - t0;
    // Stay a moment, so that the others learn why from this rank rather than from its exit.
    await new Promise((r) => setTimeout(r, 500));
    return { caught: { reason: e.reason, op: e.op, peer: e.peer, message: e.message }, ms };
  }
}

// "-mesh" scenarios run without lanes: small ops then take the mesh like large ones.
const [name, variant] = scenario!.split("-");
const comm = await connectTcp({
  rank,
  size,
  masterAddr: "127.0.0.1",
  masterPort: port,
  lanes: variant !== "mesh",
});
const scenarios: Record<string, (c: Communicator) => Promise<Record<string, unknown>>> = {
  ops,
  kill,
  killsmall: kill,
  mismatch,
  stall,
  paths: mismatchPaths,
};
const result = await scenarios[name!]!(comm);
await comm.close();
console.log(JSON.stringify({ rank, checks, failures, ...result }));
