/**
 * How an MPI all-reduce should wait, measured straight on `libmpi` (one rank of
 * `mpirun -np 2 deno run -A bench/_mpi_wait.ts <bytes,...> <seconds>`; bench/collectives.ts runs
 * it for its MPI baselines). Three ways, in interleaved rounds:
 *
 * - `polled`: `MPI_Iallreduce`, then `MPI_Test` in a 50 us spin, then once per turn of the
 *   event loop (a `MessageChannel` message), with libnbc's ring algorithm: what the MPI
 *   transport does with 2 ranks.
 * - `polled_default`: the same with libnbc's own choice of algorithm (a binomial tree with
 *   fewer than 4 ranks).
 * - `thread`: the blocking `MPI_Allreduce` run on another thread by FFI's `nonblocking: true`
 *   (needs `MPI_THREAD_MULTIPLE`); the event loop stays free.
 * - `blocking`: the blocking `MPI_Allreduce` on the JavaScript thread, which freezes the event
 *   loop: the floor both others are held to.
 *
 * Rank 0 prints one JSON line per size: `{ bytes, polled_us, polled_default_us, thread_us,
 * blocking_us }`, each the median of the rounds' mean times.
 *
 * @module
 */
import { MPI_IN_PLACE, MPI_LIBRARY_NAMES } from "../collectives/_mpi_ffi.ts";

const P = "pointer", I = "i32", B = "buffer";
const SYMBOLS = {
  MPI_Init_thread: { parameters: [P, P, I, B], result: I },
  MPI_Finalize: { parameters: [], result: I },
  MPI_Comm_rank: { parameters: [P, B], result: I },
  MPI_Barrier: { parameters: [P], result: I },
  MPI_Bcast: { parameters: [B, I, P, I, P], result: I },
  MPI_Iallreduce: { parameters: [P, B, I, P, P, P, B], result: I },
  MPI_Test: { parameters: [B, B, P], result: I },
  MPI_T_init_thread: { parameters: [I, B], result: I },
  MPI_T_finalize: { parameters: [], result: I },
  MPI_T_cvar_get_index: { parameters: [B, B], result: I },
  MPI_T_cvar_handle_alloc: { parameters: [I, P, B, B], result: I },
  MPI_T_cvar_write: { parameters: [P, B], result: I },
  MPI_Allreduce: { parameters: [P, B, I, P, P, P], result: I },
  MPI_Allreduce_thread: {
    name: "MPI_Allreduce",
    parameters: [P, B, I, P, P, P],
    result: I,
    nonblocking: true,
  },
  ompi_mpi_comm_world: { type: P },
  ompi_mpi_float: { type: P },
  ompi_mpi_int32_t: { type: P },
  ompi_mpi_op_sum: { type: P },
} as const;

function open(): Deno.DynamicLibrary<typeof SYMBOLS> {
  const env = Deno.env.get("LOOM_MPI_LIBRARY");
  let last: unknown;
  for (const name of env ? [env] : MPI_LIBRARY_NAMES) {
    try {
      return Deno.dlopen(name, SYMBOLS);
    } catch (e) {
      last = e;
    }
  }
  throw last;
}

const [sizesArg, secondsArg] = Deno.args;
const sizes = (sizesArg ?? "4096,16777216").split(",").map(Number);
const seconds = Number(secondsArg ?? 0.3);

const dl = open();
const m = dl.symbols;
const MPI_THREAD_MULTIPLE = 3;
m.MPI_Init_thread(null, null, MPI_THREAD_MULTIPLE, new Int32Array(1));
const world = m.ompi_mpi_comm_world, f32 = m.ompi_mpi_float, sum = m.ompi_mpi_op_sum;
const rankBuf = new Int32Array(1);
m.MPI_Comm_rank(world, rankBuf);
const rank = rankBuf[0]!;

// libnbc's all-reduce algorithm, set per call through the tools interface: 0 its own, 1 ring.
m.MPI_T_init_thread(MPI_THREAD_MULTIPLE, new Int32Array(1));
const cvar = new Int32Array(1), cvarHandle = new BigUint64Array(1);
m.MPI_T_cvar_get_index(new TextEncoder().encode("coll_libnbc_iallreduce_algorithm\0"), cvar);
m.MPI_T_cvar_handle_alloc(cvar[0]!, null, cvarHandle, new Int32Array(1));
const algorithm = (a: number) =>
  m.MPI_T_cvar_write(Deno.UnsafePointer.create(cvarHandle[0]!), new Int32Array([a]));

const req = new BigUint64Array(1), flag = new Int32Array(1);
const channel = new MessageChannel();
let wake: (() => void) | null = null;
channel.port1.onmessage = () => {
  const w = wake;
  wake = null;
  w?.();
};
const turn = () =>
  new Promise<void>((res) => {
    wake = res;
    channel.port2.postMessage(0);
  });

async function polled(buf: Float32Array): Promise<void> {
  m.MPI_Iallreduce(MPI_IN_PLACE, buf, buf.length, f32, sum, world, req);
  const t0 = performance.now();
  for (;;) {
    flag[0] = 0;
    m.MPI_Test(req, flag, null);
    if (flag[0] !== 0) return;
    if (performance.now() - t0 > 0.05) await turn();
  }
}

const ways: Record<string, (b: Float32Array) => Promise<unknown> | unknown> = {
  polled: (b) => {
    algorithm(1);
    return polled(b);
  },
  polled_default: (b) => {
    algorithm(0);
    return polled(b);
  },
  thread: (b) => m.MPI_Allreduce_thread(MPI_IN_PLACE, b, b.length, f32, sum, world),
  blocking: (b) => m.MPI_Allreduce(MPI_IN_PLACE, b, b.length, f32, sum, world),
};

/** Rank 0's number, on every rank (so that every rank runs the same iterations). */
function agree(x: number): number {
  const a = new Int32Array([x]);
  m.MPI_Bcast(a, 1, m.ompi_mpi_int32_t, 0, world);
  return a[0]!;
}

async function mean(way: (b: Float32Array) => unknown, buf: Float32Array, iters: number) {
  m.MPI_Barrier(world);
  const t0 = performance.now();
  for (let i = 0; i < iters; i++) await way(buf);
  return (performance.now() - t0) * 1000 / iters;
}

const median = (xs: number[]) => xs.slice().sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

for (const bytes of sizes) {
  const buf = new Float32Array(bytes / 4);
  const times: Record<string, number[]> = {
    polled: [],
    polled_default: [],
    thread: [],
    blocking: [],
  };
  const iters: Record<string, number> = {};
  for (const [name, way] of Object.entries(ways)) {
    for (let i = 0; i < 5; i++) await way(buf);
    const probe = await mean(way, buf, 10);
    const want = Math.round(seconds / 3 * 1e6 / Math.max(probe, 1));
    iters[name] = agree(Math.max(5, Math.min(20_000, want)));
  }
  for (let round = 0; round < 3; round++) {
    for (const [name, way] of Object.entries(ways)) {
      times[name]!.push(await mean(way, buf, iters[name]!));
    }
  }
  if (rank === 0) {
    console.log(JSON.stringify({
      bytes,
      polled_us: +median(times.polled!).toFixed(2),
      polled_default_us: +median(times.polled_default!).toFixed(2),
      thread_us: +median(times.thread!).toFixed(2),
      blocking_us: +median(times.blocking!).toFixed(2),
    }));
  }
}
channel.port1.close();
m.MPI_T_finalize();
m.MPI_Finalize();
