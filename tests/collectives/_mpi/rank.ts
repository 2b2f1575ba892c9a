// One rank of an MPI world, started by mpi_test.ts through mpirun:
//   mpirun -np N deno run -A rank.ts <scenario> <report dir>
// It checks every result against a serial reference computed from every rank's inputs (the
// inputs are a pure function of rank and index) and writes its report to <dir>/rank<r>.json.
import { connectMpi } from "../../../collectives/mpi.ts";
import {
  type CollectiveBuffer,
  CollectiveError,
  type Communicator,
  type DType,
  type ReduceOp,
} from "../../../collectives/communicator.ts";
import {
  bf16BitsToF32,
  f16BitsToF32,
  f32ToBf16Bits,
  f32ToF16Bits,
} from "../../../collectives/reduce.ts";
import { main as battery } from "../_tcp/battery.ts";
import { main as faults } from "../_workers/faults.ts";

const [scenario, dir] = Deno.args;

/** Small integers: every sum over <= 8 ranks is exact in float32, float16 and bfloat16. */
function value(r: number, i: number): number {
  return ((r * 7 + i * 13) % 31) - 15;
}

let checks = 0;
const failures: string[] = [];
function expectEqual(what: string, got: ArrayLike<number>, want: (i: number) => number): void {
  checks++;
  for (let i = 0; i < got.length; i++) {
    const w = want(i);
    if (!(Object.is(got[i], w) || (Number.isNaN(got[i]) && Number.isNaN(w)))) {
      failures.push(`${what}: element ${i} is ${got[i]}, expected ${w} (length ${got.length})`);
      return;
    }
  }
}

const ENC: Record<DType, (x: number) => number> = {
  float32: Math.fround,
  int32: (x) => x | 0,
  float16: f32ToF16Bits,
  bfloat16: f32ToBf16Bits,
};
const DEC: Record<DType, (x: number) => number> = {
  float32: (x) => x,
  int32: (x) => x,
  float16: f16BitsToF32,
  bfloat16: bf16BitsToF32,
};

function make(dtype: DType, n: number, f: (i: number) => number): CollectiveBuffer {
  const a = dtype === "float32"
    ? new Float32Array(n)
    : dtype === "int32"
    ? new Int32Array(n)
    : new Uint16Array(n);
  for (let i = 0; i < n; i++) a[i] = ENC[dtype](f(i));
  return a;
}

function decoded(dtype: DType, a: CollectiveBuffer): number[] {
  return Array.from(a, DEC[dtype]);
}

/** The left-to-right fold of `vals` (each already a value of the dtype) with JS semantics. */
function fold(op: ReduceOp, vals: number[], dtype: DType): number {
  let acc = vals[0]!;
  for (const x of vals.slice(1)) {
    acc = op === "max" ? Math.max(acc, x) : op === "min" ? Math.min(acc, x) : acc + x;
  }
  if (op !== "avg") return acc;
  if (dtype === "int32") return Math.trunc(acc / vals.length) | 0;
  return DEC[dtype](ENC[dtype](DEC[dtype](ENC[dtype](acc)) / vals.length));
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

const DTYPES: DType[] = ["float32", "int32", "float16", "bfloat16"];
const OPS: ReduceOp[] = ["sum", "max", "min", "avg"];

async function ops(comm: Communicator): Promise<Record<string, unknown>> {
  const { rank, size } = comm;
  const all = range(size);
  const digests: string[] = [];
  const opt = (dtype: DType) => (dtype === "float16" || dtype === "bfloat16" ? { dtype } : {});
  // Every dtype and op: empty, one element, odd, past the eager size, and ~1 MiB of float32.
  for (const dtype of DTYPES) {
    for (const n of [0, 1, 7, 4099, 70_001, ...(dtype === "float32" ? [262_147] : [])]) {
      for (const op of OPS) {
        const b = make(dtype, n, (i) => value(rank, i));
        await comm.allReduce(b, op, opt(dtype));
        const want = (i: number) => fold(op, all.map((r) => value(r, i)), dtype);
        expectEqual(`allReduce ${dtype} ${op} n=${n}`, decoded(dtype, b), want);

        const c = make(dtype, n, (i) => value(rank, i));
        const root = (n + 1) % size;
        await comm.reduce(c, root, op, opt(dtype));
        expectEqual(
          `reduce ${dtype} ${op} n=${n} root ${root}`,
          decoded(dtype, c),
          (i) => rank === root ? want(i) : value(rank, i),
        );
      }
      const m = Math.ceil(n / size);
      for (const op of OPS) {
        const input = make(dtype, m * size, (i) => value(rank, i));
        const out = make(dtype, m, () => 0);
        await comm.reduceScatter(input, out, op, opt(dtype));
        expectEqual(
          `reduceScatter ${dtype} ${op} m=${m}`,
          decoded(dtype, out),
          (j) => fold(op, all.map((r) => value(r, rank * m + j)), dtype),
        );
      }
      const g = make(dtype, m * size, () => 0);
      await comm.allGather(make(dtype, m, (i) => value(rank, i)), g, opt(dtype));
      expectEqual(
        `allGather ${dtype} m=${m}`,
        decoded(dtype, g),
        (k) => value(Math.floor(k / m), k % m),
      );
      const a2a = make(dtype, m * size, () => 0);
      await comm.allToAll(make(dtype, m * size, (i) => value(rank, i)), a2a, opt(dtype));
      expectEqual(
        `allToAll ${dtype} m=${m}`,
        decoded(dtype, a2a),
        (k) => value(Math.floor(k / m), rank * m + (k % m)),
      );
      const root = size - 1;
      const b = make(dtype, n, (i) => (rank === root ? value(root, i) : 0));
      await comm.broadcast(b, root, opt(dtype));
      expectEqual(`broadcast ${dtype} n=${n}`, decoded(dtype, b), (i) => value(root, i));
    }
  }
  // Non-integer floats: every rank must end with the same bits (checked by the test), within
  // 1e-5 relative of the float64 sum.
  for (const n of [7, 4099, 1_048_579]) {
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
  // Specials: max and min propagate NaN and order -0 below +0, as Math.max and Math.min do.
  const specials = [NaN, -0, 0, Infinity, -Infinity, 1.5, -2.5, 65504];
  for (const dtype of ["float32", "float16", "bfloat16"] as DType[]) {
    for (const op of ["max", "min"] as ReduceOp[]) {
      // Element i: rank r holds specials[(i + r) % k] (so NaN meets every value somewhere).
      const k = specials.length;
      const mine = (r: number, i: number) => specials[(i + r * 3) % k]!;
      const b = make(dtype, 3 * k, (i) => mine(rank, i));
      await comm.allReduce(b, op, opt(dtype));
      expectEqual(
        `specials allReduce ${dtype} ${op}`,
        decoded(dtype, b),
        (i) => fold(op, all.map((r) => DEC[dtype](ENC[dtype](mine(r, i)))), dtype),
      );
    }
  }
  // Aliasing: an all-gather whose input is its own slot of the output, a reduce-scatter whose
  // output lies inside its input.
  {
    const m = 5;
    const out = new Float32Array(m * size);
    out.set(Array.from({ length: m }, (_, i) => value(rank, i)), rank * m);
    await comm.allGather(out.subarray(rank * m, rank * m + m), out);
    expectEqual("allGather in place", out, (k) => value(Math.floor(k / m), k % m));
    const io = new Float32Array(m * size);
    for (let i = 0; i < io.length; i++) io[i] = value(rank, i);
    await comm.reduceScatter(io, io.subarray(0, m));
    expectEqual(
      "reduceScatter into its input",
      io.subarray(0, m),
      (j) => fold("sum", all.map((r) => value(r, rank * m + j)), "float32"),
    );
  }
  if (size > 1) {
    for (const n of [0, 3, 200_001]) {
      const next = (rank + 1) % size, prev = (rank + size - 1) % size;
      const got = new Float32Array(n);
      const r = comm.recv(got, prev, 5);
      await comm.send(make("float32", n, (i) => value(rank, i)), next, 5);
      await r;
      expectEqual(`send/recv n=${n}`, got, (i) => value(prev, i));
    }
    // Both neighbours send first, then receive: sends resolve before the peer receives.
    const big = 300_000;
    await comm.send(make("float32", big, (i) => value(rank, i)), (rank + 1) % size, 6);
    const got = new Float32Array(big);
    await comm.recv(got, (rank + size - 1) % size, 6);
    expectEqual("send before recv", got, (i) => value((rank + size - 1) % size, i));
  }
  // Ops issued without waiting for each other complete independently.
  const x = make("float32", 1000, (i) => value(rank, i));
  const y = make("float32", 100_003, (i) => value(rank, i));
  const z = new Float32Array(7);
  const zr = size > 1 ? comm.recv(z, (rank + size - 1) % size, 9) : null;
  await Promise.all([
    comm.allReduce(x),
    comm.allReduce(y, "max"),
    size > 1
      ? comm.send(make("float32", 7, (i) => value(rank, i)), (rank + 1) % size, 9)
      : Promise.resolve(),
  ]);
  await zr;
  expectEqual(
    "overlapped allReduce sum",
    x,
    (i) => fold("sum", all.map((r) => value(r, i)), "float32"),
  );
  expectEqual(
    "overlapped allReduce max",
    y,
    (i) => fold("max", all.map((r) => value(r, i)), "float32"),
  );
  if (size > 1) expectEqual("overlapped send/recv", z, (i) => value((rank + size - 1) % size, i));
  await comm.barrier();
  // Sub-groups: even and odd ranks, ordered by descending rank (key = -rank); a collective
  // issued while the split is in flight runs after it on every rank.
  const pending = comm.split(rank % 2, -rank);
  const after = make("float32", 3, (i) => value(rank, i));
  const afterDone = comm.allReduce(after);
  const sub = await pending;
  await afterDone;
  expectEqual(
    "allReduce issued during split",
    after,
    (i) => fold("sum", all.map((r) => value(r, i)), "float32"),
  );
  const members = all.filter((r) => r % 2 === rank % 2).sort((a, b) => b - a);
  checks++;
  if (sub === null || sub.size !== members.length || sub.rank !== members.indexOf(rank)) {
    failures.push(`split: got size ${sub?.size} rank ${sub?.rank}, members ${members}`);
  } else {
    if (sub.name !== `world/split(${rank % 2})`) failures.push(`split: name ${sub.name}`);
    for (const n of [3, 70_001]) {
      const b = make("float32", n, (i) => value(rank, i));
      await sub.allReduce(b);
      expectEqual(
        `sub allReduce n=${n}`,
        b,
        (i) => fold("sum", members.map((r) => value(r, i)), "float32"),
      );
    }
    const g = new Float32Array(2 * sub.size);
    await sub.allGather(make("float32", 2, (i) => value(rank, i)), g);
    expectEqual("sub allGather", g, (k) => value(members[Math.floor(k / 2)]!, k % 2));
    if (sub.size > 1) {
      const got = new Int32Array(4);
      const peer = (sub.rank + 1) % sub.size, from = (sub.rank + sub.size - 1) % sub.size;
      const r = sub.recv(got, from, 1);
      await sub.send(new Int32Array(4).fill(sub.rank), peer, 1);
      await r;
      expectEqual("sub send/recv", got, () => from);
    }
    await sub.barrier();
    await sub.close();
  }
  const none = await comm.split(rank === 0 ? -1 : 0);
  checks++;
  if ((none === null) !== (rank === 0)) failures.push("split(-1) must return null");
  if (none) {
    const b = make("float32", 4, (i) => value(rank, i));
    await none.allReduce(b);
    expectEqual(
      "split without rank 0",
      b,
      (i) => fold("sum", all.slice(1).map((r) => value(r, i)), "float32"),
    );
    await none.close();
  }
  // The battery every transport runs (hierarchical and launch tests use it too).
  const b = await battery(comm, null);
  checks += b.checks;
  failures.push(...b.failures.map((f) => `battery: ${f}`));
  // Argument checks (the shared-memory fault module's), before any communication.
  const bad = await faults(comm, { scenario: "bad-args" }) as {
    checks: Record<string, { ok: boolean; name?: string; message?: string }>;
    sum: number;
  };
  return {
    digests,
    transport: comm.transport,
    badArgs: Object.fromEntries(
      Object.entries(bad.checks).map((
        [k, o],
      ) => [k, { ok: o.ok, name: o.name, message: o.message }]),
    ),
    badArgsSum: bad.sum,
  };
}

async function p2p(comm: Communicator): Promise<Record<string, unknown>> {
  // Out-of-order tags, a long message, and a length mismatch; then a receive that times out.
  const tags = await faults(comm, { scenario: "p2p-tags", timeoutMs: 10_000 });
  const timeout = await faults(comm, { scenario: "p2p-timeout", timeoutMs: 300 });
  return { tags, timeout };
}

function caught(e: unknown) {
  if (!(e instanceof CollectiveError)) throw e;
  return { reason: e.reason, op: e.op, group: e.group, peer: e.peer, message: e.message };
}

async function stall(comm: Communicator): Promise<Record<string, unknown>> {
  // A sub-group of every rank but the last, made before the stall: it outlives the failure.
  const sub = await comm.split(comm.rank === comm.size - 1 ? -1 : 0);
  // The last rank never calls the op (it sleeps, then closes); the others time out.
  if (comm.rank === comm.size - 1) {
    await new Promise((r) => setTimeout(r, 3_000));
    return { caught: null };
  }
  const t0 = performance.now();
  try {
    await comm.allReduce(new Float32Array(10), "sum", { timeoutMs: 1_000 });
    return { caught: null };
  } catch (e) {
    const ms = performance.now() - t0;
    // The group stays failed and says so at once; the sub-group still works.
    let after: unknown = null;
    const t1 = performance.now();
    try {
      await comm.barrier({ timeoutMs: 5_000 });
    } catch (e2) {
      after = { ...caught(e2), ms: performance.now() - t1 };
    }
    const b = new Float32Array([1]);
    await sub!.allReduce(b);
    await sub!.close();
    return { caught: caught(e), ms, after, subSum: b[0] };
  }
}

const comm = await connectMpi({ opTimeoutMs: 60_000 });
const scenarios: Record<string, (c: Communicator) => Promise<Record<string, unknown>>> = {
  ops,
  p2p,
  stall,
};
const result = await scenarios[scenario!]!(comm);
await comm.close();
await Deno.writeTextFile(
  `${dir}/rank${comm.rank}.json`,
  JSON.stringify({ rank: comm.rank, size: comm.size, checks, failures, ...result }),
);
