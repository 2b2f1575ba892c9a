/**
 * Collectives benchmark, in the style of nccl-tests: for each transport, op, world size and
 * message size, the time per op, the algorithm bandwidth (bytes / time) and the bus bandwidth
 * (algbw times nccl-tests' bus factor: all-reduce 2(n-1)/n, reduce-scatter and all-gather
 * (n-1)/n, broadcast and reduce 1), and the number of wrong values in a checked run. Baselines
 * are measured in the same run: a TypedArray copy of the same size (`copy`), and a raw one-way
 * TCP stream between two processes over loopback (`tcp`). The `sendrecv` op is a point-to-point
 * ping-pong between ranks 0 and 1: its time is one way (half a round trip), its bus factor 1, and
 * it also reports the median one-way time of single round trips (`p50_us`).
 *
 * The `mpi` transport runs the ranks under Open MPI's `mpirun` (included by default when
 * `mpirun` and `libmpi` are installed). Its baseline (`mpi wait`) times a float32 all-reduce of
 * each size straight on `libmpi`, with 2 ranks: `MPI_Iallreduce` polled with `MPI_Test` as the
 * transport does (libnbc's ring), the same with libnbc's own algorithm, the blocking
 * `MPI_Allreduce` on an FFI thread, and the blocking call on the JavaScript thread
 * (bench/_mpi_wait.ts).
 *
 * ```sh
 * deno run -A bench/collectives.ts                       # default sweep, a table
 * deno run -A bench/collectives.ts --json                # one JSON object per line
 * deno run -A bench/collectives.ts --transport shm --ops allReduce --ranks 2,4 --sizes 4K,64M
 * deno run -A bench/collectives.ts --transport shm --buffers plain   # not in the arena
 * deno run -A bench/collectives.ts --transport mpi,tcp,shm --ops allReduce --sizes 4K,16M
 * ```
 *
 * The size of a row is nccl-tests' size: the buffer of all-reduce, broadcast and reduce, the
 * output of all-gather, the input of reduce-scatter. Float32 throughout.
 *
 * @module
 */
import {
  type Communicator,
  connectMpi,
  connectTcp,
  freeLoopbackPort as freePort,
  freeShared,
  launch,
  mpiAvailable,
  parseLaunch,
  runWorkers,
  sharedArray,
} from "../collectives/mod.ts";

const OPS = ["allReduce", "reduceScatter", "allGather", "broadcast", "reduce", "sendrecv"] as const;
type Op = typeof OPS[number];
const TRANSPORTS = ["shm", "tcp", "hierarchical", "mpi"] as const;
type Transport = typeof TRANSPORTS[number];

/** Whether `mpirun` runs and Open MPI's `libmpi` loads: then the default sweep includes mpi. */
function mpiRunnable(): boolean {
  if (!mpiAvailable()) return false;
  try {
    return new Deno.Command("mpirun", { args: ["--version"], stdout: "null", stderr: "null" })
      .outputSync().success;
  } catch {
    return false;
  }
}

interface RankSpec {
  ops: Op[];
  sizes: number[];
  /** Seconds to aim for per row (iterations are picked from a first timing). */
  rowSeconds: number;
  /** Where the buffers live: the arena (`sharedArray`, the default) or plain SharedArrayBuffers. */
  buffers: "arena" | "plain";
}

/** One measured row (what rank 0 returns). */
interface Row {
  op: Op;
  bytes: number;
  count: number;
  time_us: number;
  wrong: number;
  /** sendrecv only: the median one-way time of single round trips. */
  p50_us?: number;
}

function busFactor(op: Op, n: number): number {
  if (op === "allReduce") return n === 1 ? 0 : 2 * (n - 1) / n;
  if (op === "reduceScatter" || op === "allGather") return (n - 1) / n;
  return 1;
}

/** Order a list of numbers and return its median. */
function median(xs: number[]): number {
  const s = xs.slice().sort((a, b) => a - b);
  return s.length === 0 ? NaN : s[Math.floor((s.length - 1) / 2)]!;
}

// ---- the part every rank runs ---------------------------------------------------------------

function fill(buf: Float32Array, rank: number): void {
  for (let i = 0; i < buf.length; i++) buf[i] = (rank + 1) * ((i % 13) + 1);
}

/** Run one op once on buffers prepared by `setup`. */
function prepare(comm: Communicator, op: Op, count: number, plain: boolean) {
  const n = comm.size, r = comm.rank;
  const per = Math.floor(count / n);
  // Shared-memory transports read peers' memory in place: allocate the buffers in the world's
  // arena (sharedArray), where reductions also fold in WebAssembly SIMD; or, with
  // --buffers plain, on SharedArrayBuffers of their own (folds in JavaScript).
  const mk = (len: number) =>
    plain
      ? new Float32Array(new SharedArrayBuffer(4 * Math.max(len, 1)), 0, len)
      : sharedArray(Float32Array, len);
  const a = mk(op === "allGather" ? per : op === "reduceScatter" ? per * n : count);
  const b = mk(
    op === "allGather" ? per * n : op === "reduceScatter" ? per : op === "sendrecv" ? count : 0,
  );
  const run = (): Promise<void> => {
    switch (op) {
      case "allReduce":
        return comm.allReduce(a);
      case "reduceScatter":
        return comm.reduceScatter(a, b);
      case "allGather":
        return comm.allGather(a, b);
      case "broadcast":
        return comm.broadcast(a, 0);
      case "reduce":
        return comm.reduce(a, 0);
      case "sendrecv":
        // A ping-pong between ranks 0 and 1 (the others idle): one run is one round trip.
        if (r === 0) return comm.send(a, 1).then(() => comm.recv(b, 1));
        if (r === 1) return comm.recv(b, 0).then(() => comm.send(b, 0));
        return Promise.resolve();
    }
  };
  // Checked run: fill, run once, count the elements that differ from the exact answer.
  const check = async (): Promise<number> => {
    fill(a, r);
    await run();
    const tri = n * (n + 1) / 2;
    let wrong = 0;
    const k = (i: number) => (i % 13) + 1;
    if (op === "allReduce") {
      for (let i = 0; i < a.length; i++) if (a[i] !== tri * k(i)) wrong++;
    } else if (op === "reduce") {
      for (let i = 0; i < a.length; i++) {
        if (a[i] !== (r === 0 ? tri : r + 1) * k(i)) wrong++;
      }
    } else if (op === "broadcast") {
      for (let i = 0; i < a.length; i++) if (a[i] !== k(i)) wrong++;
    } else if (op === "sendrecv") {
      if (r < 2) { for (let i = 0; i < b.length; i++) if (b[i] !== k(i)) wrong++; }
    } else if (op === "allGather") {
      for (let p = 0; p < n; p++) {
        for (let i = 0; i < per; i++) if (b[p * per + i] !== (p + 1) * k(i)) wrong++;
      }
    } else {
      for (let i = 0; i < per; i++) if (b[i] !== tri * k(r * per + i)) wrong++;
    }
    return wrong;
  };
  const bytes = 4 * (op === "allGather" || op === "reduceScatter" ? per * n : count);
  const free = () => {
    if (plain) return;
    freeShared(a);
    freeShared(b);
  };
  return { run, check, free, bytes, count: bytes / 4 };
}

/**
 * Run `run` for about `ms` (at least 4 times), in batches: rank 0 decides when to stop, so that
 * every rank runs the same ops.
 */
async function warmUp(comm: Communicator, run: () => Promise<void>, ms: number): Promise<void> {
  const more = new Int32Array(1);
  const t0 = performance.now();
  let n = 0;
  do {
    for (let i = 0; i < 4; i++) await run();
    n += 4;
    more[0] = n < 100_000 && performance.now() - t0 < ms ? 1 : 0;
    await comm.broadcast(more, 0);
  } while (more[0] === 1);
}

async function timeLoop(comm: Communicator, run: () => Promise<void>, iters: number) {
  await comm.barrier();
  const t0 = performance.now();
  for (let i = 0; i < iters; i++) await run();
  const dt = (performance.now() - t0) / iters;
  // Report the slowest rank, like nccl-tests.
  const t = new Float32Array([dt]);
  await comm.allReduce(t, "max");
  return t[0]!;
}

/**
 * Benchmark body run by every rank (a Worker for shm, a process for tcp). Rank 0 returns the
 * rows.
 */
export async function main(comm: Communicator, spec: RankSpec): Promise<Row[]> {
  const rows: Row[] = [];
  // Every rank has just started (module compiled, JIT cold, threads scheduled late): settle
  // for ~200 ms of small all-reduces before the first row.
  const warm = new Float32Array(1024);
  await warmUp(comm, () => comm.allReduce(warm), 1000);
  for (const op of spec.ops) {
    for (const size of spec.sizes) {
      const p = prepare(comm, op, Math.floor(size / 4), spec.buffers === "plain");
      await warmUp(comm, p.run, 50);
      // Pick iterations so a row takes about rowSeconds; agree on rank 0's choice.
      const probe = await timeLoop(comm, p.run, 20);
      const it = new Int32Array([
        Math.max(3, Math.min(20000, Math.round(spec.rowSeconds * 1000 / Math.max(probe, 1e-3)))),
      ]);
      await comm.broadcast(it, 0);
      const ms = await timeLoop(comm, p.run, it[0]!);
      let p50: number | undefined;
      if (op === "sendrecv") {
        // Round trips one by one too: on a shared machine the mean carries the preemptions.
        const one: number[] = [];
        for (let i = 0; i < it[0]!; i++) {
          const t0 = performance.now();
          await p.run();
          one.push(performance.now() - t0);
        }
        p50 = median(one) * 1000 / 2;
      }
      const wrong = new Int32Array([await p.check()]);
      await comm.allReduce(wrong);
      p.free(); // no peer reads these buffers after that all-reduce
      // sendrecv: one op is one way, half a round trip.
      const us = op === "sendrecv" ? ms * 500 : ms * 1000;
      rows.push({ op, bytes: p.bytes, count: p.count, time_us: us, wrong: wrong[0]!, p50_us: p50 });
    }
  }
  return comm.rank === 0 ? rows : [];
}

// ---- the parent: arguments, baselines, transports, output -----------------------------------

interface Args {
  json: boolean;
  transports: Transport[];
  ops: Op[] | null;
  ranks: number[] | null;
  sizes: number[] | null;
  rowSeconds: number;
  buffers: "arena" | "plain";
}

function parseSize(s: string): number {
  const m = /^(\d+(?:\.\d+)?)([KMG]?)(i?B)?$/i.exec(s.trim());
  if (m === null) {
    throw new RangeError(`Cannot read size "${s}": use bytes like 4096, 4K, 64M or 1G`);
  }
  const mult = { "": 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3 }[m[2]!.toUpperCase()]!;
  return Math.round(Number(m[1]) * mult);
}

function parseArgs(argv: string[]): Args {
  const a: Args = {
    json: false,
    transports: TRANSPORTS.filter((t) => t !== "mpi" || mpiRunnable()),
    ops: null,
    ranks: null,
    sizes: null,
    rowSeconds: 0.3,
    buffers: "arena",
  };
  const list = (v: string | undefined, flag: string) => {
    if (v === undefined) throw new TypeError(`${flag} needs a value, e.g. ${flag}=a,b`);
    return v.split(",").map((x) => x.trim()).filter((x) => x !== "");
  };
  for (let i = 0; i < argv.length; i++) {
    const [flag, inline] = argv[i]!.split("=", 2) as [string, string | undefined];
    const val = () => inline ?? argv[++i];
    switch (flag) {
      case "--json":
        a.json = true;
        break;
      case "--transport":
      case "--transports":
        a.transports = list(val(), flag).map((t) => {
          if (!(TRANSPORTS as readonly string[]).includes(t)) {
            throw new RangeError(`Unknown transport "${t}": use ${TRANSPORTS.join(", ")}`);
          }
          return t as Transport;
        });
        break;
      case "--ops":
        a.ops = list(val(), flag).map((o) => {
          const name = o.replace(/_(\w)/g, (_, c: string) => c.toUpperCase());
          if (!(OPS as readonly string[]).includes(name)) {
            throw new RangeError(`Unknown op "${o}": use ${OPS.join(", ")}`);
          }
          return name as Op;
        });
        break;
      case "--ranks":
        a.ranks = list(val(), flag).map((r) => {
          const n = Number(r);
          if (!Number.isInteger(n) || n < 1) throw new RangeError(`--ranks: bad world size "${r}"`);
          return n;
        });
        break;
      case "--sizes":
        a.sizes = list(val(), flag).map(parseSize);
        break;
      case "--seconds":
        a.rowSeconds = Number(val());
        break;
      case "--buffers": {
        const v = val();
        if (v !== "arena" && v !== "plain") {
          throw new TypeError(`--buffers must be "arena" or "plain", got "${v}"`);
        }
        a.buffers = v;
        break;
      }
      default:
        throw new TypeError(
          `Unknown option "${flag}": use --json, --transport, --ops, --ranks, --sizes, ` +
            `--seconds, --buffers`,
        );
    }
  }
  return a;
}

function fmtSize(b: number): string {
  return b >= 1024 ** 2 && b % 1024 ** 2 === 0
    ? `${b / 1024 ** 2}M`
    : b >= 1024 && b % 1024 === 0
    ? `${b / 1024}K`
    : `${b}`;
}

/** A TypedArray copy of `bytes` between two SharedArrayBuffers, in GB/s. */
function copyBaseline(bytes: number): number {
  const n = Math.max(1, bytes >> 2);
  const src = new Float32Array(new SharedArrayBuffer(4 * n));
  const dst = new Float32Array(new SharedArrayBuffer(4 * n));
  src.fill(1);
  dst.set(src);
  const iters = Math.max(5, Math.min(100000, Math.round(2e8 / bytes)));
  const t0 = performance.now();
  for (let i = 0; i < iters; i++) dst.set(src);
  const s = (performance.now() - t0) / 1000 / iters;
  return bytes / s / 1e9;
}

/** A raw one-way TCP stream of `bytes` from this process to a child process, in GB/s. */
async function tcpBaseline(bytes: number): Promise<number> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL(import.meta.url).href, "--tcp-sink", String(port), String(bytes)],
    stdout: "null",
    stderr: "inherit",
  }).spawn();
  const conn = await listener.accept();
  listener.close();
  conn.setNoDelay(true);
  const buf = new Uint8Array(Math.min(bytes, 4 << 20)).fill(7);
  const ack = new Uint8Array(1);
  const once = async () => {
    let left = bytes;
    while (left > 0) {
      const part = left >= buf.length ? buf : buf.subarray(0, left);
      let off = 0;
      while (off < part.length) off += await conn.write(part.subarray(off));
      left -= part.length;
    }
    // The sink answers one byte per message: the time covers delivery, not just buffering.
    if (await conn.read(ack) === null) throw new Error("tcp sink closed early");
  };
  await once();
  const iters = Math.max(3, Math.min(2000, Math.round(3e8 / bytes)));
  const t0 = performance.now();
  for (let i = 0; i < iters; i++) await once();
  const s = (performance.now() - t0) / 1000 / iters;
  await conn.write(new Uint8Array([0])); // stop
  conn.close();
  await child.status;
  return bytes / s / 1e9;
}

async function tcpSink(port: number, bytes: number): Promise<void> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  conn.setNoDelay(true);
  const buf = new Uint8Array(4 << 20);
  let got = 0;
  for (;;) {
    const n = await conn.read(buf);
    if (n === null) break;
    got += n;
    while (got >= bytes) {
      got -= bytes;
      await conn.write(new Uint8Array([1]));
    }
  }
  conn.close();
}

/** Start `ranks` processes that join a TCP world and run {@linkcode main}; rank 0's rows. */
async function runTcp(ranks: number, spec: RankSpec): Promise<Row[]> {
  const port = freePort();
  const procs = Array.from({ length: ranks }, (_, r) =>
    new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        new URL(import.meta.url).href,
        "--tcp-rank",
        JSON.stringify({ rank: r, size: ranks, port, spec }),
      ],
      stdout: "piped",
      stderr: "inherit",
    }).spawn());
  const outs = await Promise.all(procs.map((p) => p.output()));
  outs.forEach((o, r) => {
    if (!o.success) throw new Error(`tcp rank ${r} exited with code ${o.code}`);
  });
  return JSON.parse(new TextDecoder().decode(outs[0]!.stdout)) as Row[];
}

/**
 * Two nodes on this machine, each a process running `ranks / 2` Workers joined by the
 * hierarchical communicator (shared memory inside a node, TCP between the nodes); rank 0's rows.
 */
async function runHierarchical(ranks: number, spec: RankSpec): Promise<Row[]> {
  if (ranks % 2 !== 0) {
    throw new RangeError(`hierarchical runs two nodes: --ranks must be even, got ${ranks}`);
  }
  const port = freePort();
  const nodes = Array.from({ length: 2 }, (_, node) =>
    new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        new URL(import.meta.url).href,
        "--hier-node",
        JSON.stringify({ node, perNode: ranks / 2, port, spec }),
      ],
      stdout: "piped",
      stderr: "inherit",
    }).spawn());
  const outs = await Promise.all(nodes.map((p) => p.output()));
  outs.forEach((o, node) => {
    if (!o.success) throw new Error(`hierarchical node ${node} exited with code ${o.code}`);
  });
  return JSON.parse(new TextDecoder().decode(outs[0]!.stdout)) as Row[];
}

async function hierNode(arg: string): Promise<void> {
  const { node, perNode, port, spec } = JSON.parse(arg) as {
    node: number;
    perNode: number;
    port: number;
    spec: RankSpec;
  };
  const config = parseLaunch([
    "--nnodes=2",
    `--node-rank=${node}`,
    `--nproc-per-node=${perNode}`,
    "--master-addr=127.0.0.1",
    `--master-port=${port}`,
  ], {});
  const results = await launch<Row[]>(config, {
    module: new URL(import.meta.url),
    data: spec,
    timeoutMs: 120_000,
  });
  if (node === 0) console.log(JSON.stringify(results[0]));
}

async function tcpRank(arg: string): Promise<void> {
  const { rank, size, port, spec } = JSON.parse(arg) as {
    rank: number;
    size: number;
    port: number;
    spec: RankSpec;
  };
  const comm = await connectTcp({
    rank,
    size,
    masterAddr: "127.0.0.1",
    masterPort: port,
    opTimeoutMs: 120_000,
  });
  const rows = await main(comm, spec);
  await comm.close();
  if (rank === 0) console.log(JSON.stringify(rows));
}

/** `mpirun` for `ranks` processes of `args` (as root too, and with more ranks than cores). */
function mpirun(ranks: number, args: string[]): Deno.Command {
  const root = Deno.uid() === 0;
  return new Deno.Command("mpirun", {
    args: [
      ...(root ? ["--allow-run-as-root"] : []),
      "--oversubscribe",
      "-np",
      String(ranks),
      Deno.execPath(),
      "run",
      "-A",
      ...args,
    ],
    env: root ? { OMPI_ALLOW_RUN_AS_ROOT: "1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM: "1" } : {},
    stdout: "piped",
    stderr: "inherit",
  });
}

/** Start `ranks` processes under mpirun that run {@linkcode main} over MPI; rank 0's rows. */
async function runMpi(ranks: number, spec: RankSpec): Promise<Row[]> {
  const out = await mpirun(ranks, [
    new URL(import.meta.url).href,
    "--mpi-rank",
    JSON.stringify(spec),
  ])
    .output();
  if (!out.success) throw new Error(`mpirun exited with code ${out.code}`);
  const lines = new TextDecoder().decode(out.stdout).trim().split("\n");
  return JSON.parse(lines.findLast((l) => l.startsWith("[")) ?? "[]") as Row[];
}

async function mpiRank(arg: string): Promise<void> {
  const spec = JSON.parse(arg) as RankSpec;
  const comm = await connectMpi({ opTimeoutMs: 120_000 });
  const rows = await main(comm, spec);
  await comm.close();
  if (comm.rank === 0) console.log(JSON.stringify(rows));
}

/** The `mpi wait` baseline: per size, polled, FFI-thread and blocking all-reduce times (us). */
async function mpiWaitBaseline(
  sizes: number[],
  seconds: number,
): Promise<
  {
    bytes: number;
    polled_us: number;
    polled_default_us: number;
    thread_us: number;
    blocking_us: number;
  }[]
> {
  const helper = new URL("./_mpi_wait.ts", import.meta.url).href;
  const out = await mpirun(2, [helper, sizes.join(","), String(seconds)]).output();
  if (!out.success) throw new Error(`mpirun exited with code ${out.code}`);
  return new TextDecoder().decode(out.stdout).trim().split("\n")
    .filter((l) => l.startsWith("{")).map((l) => JSON.parse(l));
}

/** The default sweep: a few minutes at most on 2 cores. */
function defaultPlan(t: Transport): { ops: Op[]; ranks: number[]; sizes: number[] }[] {
  const K = 1024, M = 1024 * 1024;
  if (t === "mpi") {
    return [
      { ops: ["allReduce"], ranks: [2], sizes: [4 * K, 64 * K, M, 16 * M, 64 * M] },
      { ops: ["reduceScatter", "allGather", "broadcast"], ranks: [2], sizes: [4 * K, 16 * M] },
      { ops: ["sendrecv"], ranks: [2], sizes: [64, M] },
      { ops: ["allReduce"], ranks: [4], sizes: [4 * K, 16 * M] },
    ];
  }
  if (t === "shm") {
    return [
      { ops: ["allReduce"], ranks: [2], sizes: [4 * K, 64 * K, M, 16 * M, 64 * M] },
      { ops: ["reduceScatter", "allGather", "broadcast"], ranks: [2], sizes: [4 * K, 16 * M] },
      { ops: ["allReduce"], ranks: [4, 8], sizes: [4 * K, 16 * M] },
      { ops: ["sendrecv"], ranks: [2], sizes: [64, M] },
    ];
  }
  return [
    { ops: ["allReduce"], ranks: [2], sizes: [4 * K, 64 * K, M, 64 * M] },
    { ops: ["reduceScatter", "allGather", "broadcast"], ranks: [2], sizes: [4 * K, 16 * M] },
    { ops: ["sendrecv"] as Op[], ranks: [2], sizes: [64, M] },
    ...(t === "hierarchical"
      ? [{ ops: ["allReduce"] as Op[], ranks: [4], sizes: [4 * K, 16 * M] }]
      : []),
  ];
}

async function cli(args: Args): Promise<void> {
  // Figures from a shared machine are only comparable with the load they were taken under.
  const load = Deno.loadavg().map((x) => x.toFixed(2)).join(" ");
  const cores = navigator.hardwareConcurrency;
  (args.json ? console.error : console.log)(`# load average ${load} on ${cores} cores`);
  const header = () => {
    console.log(
      "#" + ["size", "count", "type", "op", "time", "algbw", "busbw", "#wrong"]
        .map((h, i) => (i === 0 ? h.padStart(11) : h.padStart(i < 4 ? 12 : 9))).join(""),
    );
    console.log(
      "#" + ["(B)", "(elements)", "", "", "(us)", "(GB/s)", "(GB/s)", ""]
        .map((h, i) => (i === 0 ? h.padStart(11) : h.padStart(i < 4 ? 12 : 9))).join(""),
    );
  };
  const allSizes = new Set<number>();
  const mpiAllReduceSizes = new Set<number>();
  for (const transport of args.transports) {
    const custom = args.ops !== null || args.ranks !== null || args.sizes !== null;
    const K = 1024, M = 1024 * 1024;
    const plans = custom
      ? [{
        ops: args.ops ?? ["allReduce"] as Op[],
        ranks: args.ranks ?? [2],
        sizes: args.sizes ?? [4 * K, 64 * K, M, 64 * M],
      }]
      : defaultPlan(transport);
    for (const { ops, ranks: ranksList, sizes } of plans) {
      for (const ranks of ranksList) {
        const spec: RankSpec = { ops, sizes, rowSeconds: args.rowSeconds, buffers: args.buffers };
        let rows: Row[];
        try {
          rows = transport === "shm"
            ? (await runWorkers<Row[]>({
              size: ranks,
              module: new URL(import.meta.url),
              data: spec,
              timeoutMs: 120_000,
              slotBytes: 4 << 20,
            }))[0]!
            : transport === "tcp"
            ? await runTcp(ranks, spec)
            : transport === "mpi"
            ? await runMpi(ranks, spec)
            : await runHierarchical(ranks, spec);
        } catch (e) {
          // One transport failing must not cost the figures of the others.
          const msg = `# ${transport} with ${ranks} ranks failed: ${(e as Error).message}`;
          (args.json ? console.error : console.log)(msg);
          continue;
        }
        if (!args.json) {
          console.log(`# transport ${transport}, ${ranks} ranks, float32`);
          header();
        }
        for (const r of rows) {
          allSizes.add(r.bytes);
          if (transport === "mpi" && r.op === "allReduce" && ranks === 2) {
            mpiAllReduceSizes.add(r.bytes);
          }
          const algbw = r.bytes / (r.time_us * 1e-6) / 1e9;
          const busbw = algbw * busFactor(r.op, ranks);
          if (args.json) {
            console.log(JSON.stringify({
              transport,
              op: r.op,
              ranks,
              bytes: r.bytes,
              time_us: +r.time_us.toFixed(2),
              algbw_gbps: +algbw.toFixed(3),
              busbw_gbps: +busbw.toFixed(3),
              wrong: r.wrong,
              ...(r.p50_us === undefined ? {} : { p50_us: +r.p50_us.toFixed(2) }),
            }));
          } else {
            console.log(
              " " + String(r.bytes).padStart(11) + String(r.count).padStart(12) +
                "float".padStart(12) + r.op.padStart(14) + r.time_us.toFixed(1).padStart(10) +
                algbw.toFixed(2).padStart(9) + busbw.toFixed(2).padStart(9) +
                String(r.wrong).padStart(9) +
                (r.p50_us === undefined ? "" : `   (median ${r.p50_us.toFixed(1)} us)`),
            );
          }
        }
      }
    }
  }
  // Baselines for every size measured, in the same run.
  const sizes = [...allSizes].sort((a, b) => a - b);
  if (!args.json) console.log("# baselines: copy = TypedArray.set; tcp = raw one-way stream");
  for (const bytes of sizes) {
    const line = { baseline: "copy", bytes, gbps: +copyBaseline(bytes).toFixed(3) };
    if (args.json) console.log(JSON.stringify(line));
    else console.log(`# copy ${fmtSize(bytes).padStart(6)}: ${line.gbps.toFixed(2)} GB/s`);
  }
  if (args.transports.includes("tcp")) {
    for (const bytes of sizes) {
      const line = { baseline: "tcp", bytes, gbps: +(await tcpBaseline(bytes)).toFixed(3) };
      if (args.json) console.log(JSON.stringify(line));
      else console.log(`# tcp  ${fmtSize(bytes).padStart(6)}: ${line.gbps.toFixed(2)} GB/s`);
    }
  }
  if (mpiAllReduceSizes.size > 0) {
    const sizes = [...mpiAllReduceSizes].sort((a, b) => a - b);
    try {
      if (!args.json) {
        console.log(
          "# mpi wait (2 ranks, float32 all-reduce): polled = MPI_Iallreduce + MPI_Test with " +
            "libnbc's ring (the transport's way), default = the same with libnbc's own " +
            "algorithm; thread = MPI_Allreduce on an FFI thread; blocking = MPI_Allreduce on " +
            "the JS thread",
        );
      }
      for (const w of await mpiWaitBaseline(sizes, args.rowSeconds)) {
        if (args.json) console.log(JSON.stringify({ baseline: "mpi-wait", ...w }));
        else {
          console.log(
            `# mpi wait ${fmtSize(w.bytes).padStart(6)}: polled ${w.polled_us.toFixed(1)} us, ` +
              `default ${w.polled_default_us.toFixed(1)} us, thread ${w.thread_us.toFixed(1)} ` +
              `us, blocking ${w.blocking_us.toFixed(1)} us`,
          );
        }
      }
    } catch (e) {
      const msg = `# mpi wait baseline failed: ${(e as Error).message}`;
      (args.json ? console.error : console.log)(msg);
    }
  }
}

if (import.meta.main) {
  const argv = Deno.args;
  if (argv[0] === "--tcp-sink") await tcpSink(Number(argv[1]), Number(argv[2]));
  else if (argv[0] === "--tcp-rank") await tcpRank(argv[1]!);
  else if (argv[0] === "--hier-node") await hierNode(argv[1]!);
  else if (argv[0] === "--mpi-rank") await mpiRank(argv[1]!);
  else await cli(parseArgs(argv));
}
