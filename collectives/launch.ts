/**
 * Starting a job: where this process sits in it ({@linkcode parseLaunch}, from flags or from the
 * environment torchrun, SLURM or Open MPI set), running its ranks ({@linkcode launch}), and a
 * helper that runs N local processes over TCP loopback ({@linkcode runProcesses}).
 *
 * Two shapes of job:
 * - **node mode** (flags, or nothing): one process per node, one Worker per local rank. One node
 *   uses shared memory; several nodes use the hierarchical communicator (shared memory inside a
 *   node, TCP between nodes).
 *   `deno run -A train.ts --nnodes 2 --node-rank 0 --nproc-per-node 4 --master-addr 10.0.0.1`
 * - **process mode** (torchrun, SLURM `srun`, Open MPI `mpirun`): one process per rank, over
 *   TCP, or over the system's MPI library (`transport: "mpi"`, the default under `mpirun` when
 *   `libmpi` loads).
 *
 * ```sh
 * deno run -A train.ts --nproc-per-node 4                        # one node, 4 Worker ranks
 * deno run -A train.ts --nnodes 2 --node-rank 0 --nproc-per-node 4 --master-addr 10.0.0.1
 * torchrun --nproc-per-node 4 --no-python deno run -A train.ts   # process mode
 * srun -N 2 --ntasks-per-node 4 deno run -A train.ts              # process mode
 * mpirun -np 8 deno run -A train.ts                               # process mode, over MPI
 * mpirun -np 8 -x MASTER_ADDR=node0 deno run -A train.ts --transport tcp
 * ```
 *
 * @module
 */
import type { Communicator } from "./communicator.ts";
import { loadMpi } from "./_mpi_ffi.ts";
import { connectMpi, launchedByMpirun, mpiAvailable } from "./mpi.ts";
import { connectTcp } from "./tcp.ts";
import { runWorkers } from "./world.ts";

/** Port rank 0 listens on when nothing says otherwise (torchrun's default). */
export const DEFAULT_MASTER_PORT = 29500;

/** Where this process sits in a job. */
export interface LaunchConfig {
  /** What the values came from. */
  source: "flags" | "torchrun" | "slurm" | "openmpi" | "default";
  /** `"node"`: this process runs every rank of its node as Workers; `"process"`: one rank. */
  mode: "node" | "process";
  /** Number of nodes. */
  nnodes: number;
  /** This node's index, 0 <= nodeRank < nnodes. */
  nodeRank: number;
  /** Ranks per node. */
  nprocPerNode: number;
  /** Total ranks: nnodes x nprocPerNode. */
  worldSize: number;
  /** Host of global rank 0, reachable from every node. */
  masterAddr: string;
  /** Port global rank 0 listens on. */
  masterPort: number;
  /** Global ranks this process runs (all of its node's in node mode, one in process mode). */
  ranks: number[];
  /** Their local ranks on this node. */
  localRanks: number[];
  /** Arguments that were not launch flags, in order. */
  rest: string[];
}

/** Environment as a plain record (`Deno.env.toObject()`). */
export type LaunchEnv = Record<string, string | undefined>;

const FLAGS = ["nnodes", "node-rank", "nproc-per-node", "master-addr", "master-port"] as const;
type Flag = typeof FLAGS[number];

function splitFlags(args: string[]): { flags: Partial<Record<Flag, string>>; rest: string[] } {
  const flags: Partial<Record<Flag, string>> = {};
  const rest: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    const m = /^--([a-z-]+)(?:=(.*))?$/.exec(a);
    const name = m?.[1]?.replaceAll("_", "-") as Flag | undefined;
    if (m === null || name === undefined || !FLAGS.includes(name)) {
      rest.push(a);
      continue;
    }
    let v = m[2];
    if (v === undefined) {
      v = args[++i];
      if (v === undefined || v.startsWith("--")) {
        throw new TypeError(`--${name} needs a value, e.g. --${name}=${example(name)}`);
      }
    }
    flags[name] = v;
  }
  return { flags, rest };
}

function example(flag: Flag): string {
  return { "nnodes": "2", "node-rank": "0", "nproc-per-node": "4", "master-addr": "10.0.0.1" }[
    flag as string
  ] ?? "29500";
}

function int(value: string | undefined, what: string, fix: string): number | undefined {
  if (value === undefined || value === "") return undefined;
  const n = Number(value);
  if (!/^\s*\d+\s*$/.test(value) || !Number.isSafeInteger(n)) {
    throw new TypeError(`${what} must be a non-negative integer, got "${value}": ${fix}`);
  }
  return n;
}

function need(value: number | undefined, what: string, fix: string): number {
  if (value === undefined) throw new TypeError(`${what} is not set: ${fix}`);
  return value;
}

/**
 * First host of a SLURM node list: `"gpu[03-04,07],cpu1"` gives `"gpu03"`.
 *
 * @param list a SLURM host list
 * @returns its first host name
 */
export function firstSlurmHost(list: string): string {
  let depth = 0, end = list.length;
  for (let i = 0; i < list.length; i++) {
    const c = list[i];
    if (c === "[") depth++;
    else if (c === "]") depth--;
    else if (c === "," && depth === 0) {
      end = i;
      break;
    }
  }
  const first = list.slice(0, end).trim();
  const m = /^([^[]*)\[([^\]]*)\](.*)$/.exec(first);
  if (m === null) return first;
  const item = m[2]!.split(",")[0]!.split("-")[0]!;
  return `${m[1]}${item}${m[3]}`;
}

/** `SLURM_NTASKS_PER_NODE` / `SLURM_TASKS_PER_NODE` look like `"4"`, `"4(x2)"` or `"4(x2),3"`. */
function slurmTasksPerNode(v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const counts = v.split(",").map((p) => Number(/^(\d+)/.exec(p.trim())?.[1]));
  if (counts.some((c) => !Number.isInteger(c))) return undefined;
  return counts.every((c) => c === counts[0]) ? counts[0] : undefined;
}

function validate(c: Omit<LaunchConfig, "ranks" | "localRanks" | "rest">, hint: string): void {
  if (c.nnodes < 1) throw new RangeError(`The number of nodes must be at least 1: ${hint}`);
  if (c.nprocPerNode < 1) {
    throw new RangeError(`The number of ranks per node must be at least 1: ${hint}`);
  }
  if (c.nodeRank >= c.nnodes) {
    throw new RangeError(
      `Node rank ${c.nodeRank} is out of range for ${c.nnodes} node(s): node ranks go from 0 to ` +
        `${c.nnodes - 1}; ${hint}`,
    );
  }
  if (c.masterPort < 1 || c.masterPort > 65535) {
    throw new RangeError(`Master port ${c.masterPort} is not a TCP port (1..65535): ${hint}`);
  }
  if (c.masterAddr.trim() === "") throw new TypeError(`The master address is empty: ${hint}`);
}

/**
 * Work out where this process sits in the job: from the flags `--nnodes`, `--node-rank`,
 * `--nproc-per-node`, `--master-addr`, `--master-port` (node mode) when any is given, otherwise
 * from the environment of torchrun (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`,
 * `MASTER_ADDR`, `MASTER_PORT`), Open MPI (`OMPI_COMM_WORLD_*`) or SLURM (`SLURM_PROCID`,
 * `SLURM_NTASKS`, `SLURM_LOCALID`, `SLURM_NODEID`, ...), in that order (process mode); with none
 * of these, a single node with one rank.
 *
 * Under SLURM the master address is `MASTER_ADDR` if set, else the first host of the step's node
 * list (where rank 0 runs), else `SLURM_LAUNCH_NODE_IPADDR`. Open MPI does not say where rank 0
 * runs: a multi-node `mpirun` needs `-x MASTER_ADDR=<host of rank 0>`.
 *
 * @example A node of a two-node job
 * ```ts
 * import { parseLaunch } from "./launch.ts";
 * const c = parseLaunch(["--nnodes=2", "--node-rank=1", "--nproc-per-node=4",
 *   "--master-addr=10.0.0.1"], {});
 * console.assert(c.worldSize === 8 && c.ranks[0] === 4);
 * ```
 *
 * @param args command-line arguments (launch flags are taken out, the rest is kept in `rest`)
 * @param env the environment
 * @returns this process's place in the job
 * @throws {TypeError} on a malformed or missing value, {RangeError} on an inconsistent one;
 *   messages say how to fix it
 */
export function parseLaunch(args: string[], env: LaunchEnv): LaunchConfig {
  const { flags, rest } = splitFlags(args);
  if (Object.keys(flags).length > 0) {
    const hint = "check --nnodes, --node-rank, --nproc-per-node, --master-addr, --master-port";
    const nnodes = int(flags.nnodes, "--nnodes", "pass the number of nodes, e.g. --nnodes=2") ?? 1;
    const nodeRank = int(flags["node-rank"], "--node-rank", "pass this node's index") ?? 0;
    const nproc = int(flags["nproc-per-node"], "--nproc-per-node", "pass ranks per node") ?? 1;
    const masterAddr = flags["master-addr"] ?? env.MASTER_ADDR ?? "127.0.0.1";
    if (nnodes > 1 && flags["master-addr"] === undefined && env.MASTER_ADDR === undefined) {
      throw new TypeError(
        `--nnodes=${nnodes} needs --master-addr: the address of node 0 that every node can ` +
          `reach, e.g. --master-addr=10.0.0.1`,
      );
    }
    const masterPort = int(flags["master-port"], "--master-port", "pass a free TCP port") ??
      int(env.MASTER_PORT, "MASTER_PORT", "export a free TCP port") ?? DEFAULT_MASTER_PORT;
    const c = {
      source: "flags" as const,
      mode: "node" as const,
      nnodes,
      nodeRank,
      nprocPerNode: nproc,
      worldSize: nnodes * nproc,
      masterAddr,
      masterPort,
    };
    validate(c, hint);
    return nodeConfig(c, rest);
  }
  if (env.RANK !== undefined || env.WORLD_SIZE !== undefined) {
    const fix = "run under torchrun, or export RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT";
    const rank = need(int(env.RANK, "RANK", fix), "RANK", fix);
    const worldSize = need(int(env.WORLD_SIZE, "WORLD_SIZE", fix), "WORLD_SIZE", fix);
    const localRank = int(env.LOCAL_RANK, "LOCAL_RANK", fix) ?? 0;
    const localSize = int(env.LOCAL_WORLD_SIZE, "LOCAL_WORLD_SIZE", fix) ?? 1;
    if (env.MASTER_ADDR === undefined && worldSize > 1) {
      throw new TypeError(`MASTER_ADDR is not set: ${fix}`);
    }
    return processConfig("torchrun", {
      rank,
      worldSize,
      localRank,
      localSize,
      nodeRank: int(env.GROUP_RANK, "GROUP_RANK", fix),
      masterAddr: env.MASTER_ADDR ?? "127.0.0.1",
      masterPort: int(env.MASTER_PORT, "MASTER_PORT", fix) ?? DEFAULT_MASTER_PORT,
      hint: fix,
    }, rest);
  }
  if (env.OMPI_COMM_WORLD_RANK !== undefined) {
    const fix = "run under mpirun (Open MPI sets OMPI_COMM_WORLD_RANK and OMPI_COMM_WORLD_SIZE)";
    const rank = need(int(env.OMPI_COMM_WORLD_RANK, "OMPI_COMM_WORLD_RANK", fix), "rank", fix);
    const worldSize = need(
      int(env.OMPI_COMM_WORLD_SIZE, "OMPI_COMM_WORLD_SIZE", fix),
      "OMPI_COMM_WORLD_SIZE",
      fix,
    );
    const localRank = int(env.OMPI_COMM_WORLD_LOCAL_RANK, "OMPI_COMM_WORLD_LOCAL_RANK", fix) ?? 0;
    const localSize = int(env.OMPI_COMM_WORLD_LOCAL_SIZE, "OMPI_COMM_WORLD_LOCAL_SIZE", fix) ??
      worldSize;
    if (env.MASTER_ADDR === undefined && localSize < worldSize) {
      throw new TypeError(
        `Open MPI does not tell where rank 0 runs: pass its host with ` +
          `mpirun -x MASTER_ADDR=<host of rank 0> (and optionally -x MASTER_PORT=<port>)`,
      );
    }
    return processConfig("openmpi", {
      rank,
      worldSize,
      localRank,
      localSize,
      nodeRank: undefined,
      masterAddr: env.MASTER_ADDR ?? "127.0.0.1",
      masterPort: int(env.MASTER_PORT, "MASTER_PORT", fix) ?? DEFAULT_MASTER_PORT,
      hint: fix,
    }, rest);
  }
  if (env.SLURM_PROCID !== undefined) {
    const fix = "run the job with srun (it sets SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, ...)";
    const rank = need(int(env.SLURM_PROCID, "SLURM_PROCID", fix), "SLURM_PROCID", fix);
    const worldSize = need(
      int(env.SLURM_NTASKS, "SLURM_NTASKS", fix) ??
        int(env.SLURM_STEP_NUM_TASKS, "SLURM_STEP_NUM_TASKS", fix),
      "SLURM_NTASKS",
      fix,
    );
    const nnodes = int(env.SLURM_STEP_NUM_NODES, "SLURM_STEP_NUM_NODES", fix) ??
      int(env.SLURM_NNODES, "SLURM_NNODES", fix) ?? 1;
    const localSize = slurmTasksPerNode(env.SLURM_STEP_TASKS_PER_NODE) ??
      slurmTasksPerNode(env.SLURM_NTASKS_PER_NODE) ??
      slurmTasksPerNode(env.SLURM_TASKS_PER_NODE) ?? Math.ceil(worldSize / nnodes);
    const list = env.SLURM_STEP_NODELIST ?? env.SLURM_JOB_NODELIST ?? env.SLURM_NODELIST;
    const masterAddr = env.MASTER_ADDR ??
      (list !== undefined ? firstSlurmHost(list) : undefined) ??
      env.SLURM_LAUNCH_NODE_IPADDR ?? (nnodes === 1 ? "127.0.0.1" : undefined);
    if (masterAddr === undefined) {
      throw new TypeError(
        `Cannot tell where rank 0 runs: export MASTER_ADDR=<host of rank 0> before srun`,
      );
    }
    return processConfig("slurm", {
      rank,
      worldSize,
      localRank: int(env.SLURM_LOCALID, "SLURM_LOCALID", fix) ?? 0,
      localSize,
      nodeRank: int(env.SLURM_NODEID, "SLURM_NODEID", fix),
      masterAddr,
      masterPort: int(env.MASTER_PORT, "MASTER_PORT", fix) ?? DEFAULT_MASTER_PORT,
      hint: fix,
    }, rest);
  }
  return nodeConfig({
    source: "default",
    mode: "node",
    nnodes: 1,
    nodeRank: 0,
    nprocPerNode: 1,
    worldSize: 1,
    masterAddr: "127.0.0.1",
    masterPort: DEFAULT_MASTER_PORT,
  }, rest);
}

function nodeConfig(
  c: Omit<LaunchConfig, "ranks" | "localRanks" | "rest">,
  rest: string[],
): LaunchConfig {
  const localRanks = Array.from({ length: c.nprocPerNode }, (_, i) => i);
  return { ...c, localRanks, ranks: localRanks.map((l) => c.nodeRank * c.nprocPerNode + l), rest };
}

function processConfig(
  source: LaunchConfig["source"],
  p: {
    rank: number;
    worldSize: number;
    localRank: number;
    localSize: number;
    nodeRank: number | undefined;
    masterAddr: string;
    masterPort: number;
    hint: string;
  },
  rest: string[],
): LaunchConfig {
  if (p.worldSize < 1) throw new RangeError(`The world size must be at least 1: ${p.hint}`);
  if (p.rank >= p.worldSize) {
    throw new RangeError(
      `Rank ${p.rank} is out of range for a world of ${p.worldSize}: ranks go from 0 to ` +
        `${p.worldSize - 1}; ${p.hint}`,
    );
  }
  if (p.localSize < 1 || p.localRank >= p.localSize) {
    throw new RangeError(
      `Local rank ${p.localRank} is out of range for ${p.localSize} rank(s) per node: ${p.hint}`,
    );
  }
  const nnodes = Math.max(1, Math.ceil(p.worldSize / p.localSize));
  const c = {
    source,
    mode: "process" as const,
    nnodes,
    nodeRank: p.nodeRank ?? Math.floor(p.rank / p.localSize),
    nprocPerNode: p.localSize,
    worldSize: p.worldSize,
    masterAddr: p.masterAddr,
    masterPort: p.masterPort,
  };
  validate(c, p.hint);
  return { ...c, ranks: [p.rank], localRanks: [p.localRank], rest };
}

/** What {@linkcode launch} and {@linkcode runProcesses} run on every rank. */
export interface LaunchOptions {
  /** URL of the rank module; it exports `main(comm: Communicator, data): Promise<T>`. */
  module: string | URL;
  /** Structured-clonable (node mode) or JSON (process mode) value passed to every `main`. */
  data?: unknown;
  /** Default timeout of every collective, in milliseconds. */
  timeoutMs?: number;
  /**
   * The job secret every TCP connection proves it knows (see `connectTcp`); default
   * `LOOM_SECRET` from the environment. Without one, anyone who can reach the master port can
   * join the job.
   */
  secret?: string;
  /**
   * Process mode: what the ranks talk over, `"tcp"` or `"mpi"` (the system's MPI library, see
   * `connectMpi`); default `"mpi"` when `mpirun` started the process and `libmpi` loads, else
   * `"tcp"`. Node mode is always shared memory, plus TCP between nodes.
   */
  transport?: Transport;
  /**
   * Node mode: microseconds a Worker rank spins before sleeping while it waits for a local peer.
   * Default: the shared-memory communicator's adaptive budget on one node; 20 with several nodes,
   * where a local wait often spans a TCP exchange and spinning would steal the leader's core.
   */
  spinUs?: number;
}

/** What the ranks of a process-mode job talk over. */
export type Transport = "tcp" | "mpi";

/**
 * The transport a job will use, checked before anything starts: `asked` if given (an error
 * says how to fix a job that cannot use it), else MPI under `mpirun` when `libmpi` loads, else
 * TCP.
 *
 * @example
 * ```ts
 * import { chooseTransport, parseLaunch } from "./launch.ts";
 * const job = parseLaunch([], { RANK: "0", WORLD_SIZE: "2", MASTER_ADDR: "127.0.0.1" });
 * console.assert(chooseTransport(job, {}) === "tcp");
 * ```
 *
 * @param config from {@linkcode parseLaunch}
 * @param env the environment
 * @param asked the transport asked for, if any
 * @returns the transport
 * @throws {TypeError} when MPI is asked for a job that is not one process per rank under an MPI
 *   launcher, or when `libmpi` does not load
 */
export function chooseTransport(config: LaunchConfig, env: LaunchEnv, asked?: string): Transport {
  if (asked !== undefined && asked !== "tcp" && asked !== "mpi") {
    throw new TypeError(`Unknown transport '${asked}': use tcp or mpi`);
  }
  if (asked === "tcp") return "tcp";
  const underMpi = config.mode === "process" && launchedByMpirun(env);
  if (asked === undefined) return underMpi && mpiAvailable() ? "mpi" : "tcp";
  if (!underMpi) {
    throw new TypeError(
      `The MPI transport needs one process per rank started by an MPI launcher ` +
        `(mpirun -np N deno run -A ...), but this job is ${
          config.mode === "node" ? `${config.nnodes} node(s) of Worker ranks` : config.source
        }: start it with mpirun, or leave the transport out`,
    );
  }
  try {
    loadMpi();
  } catch (e) {
    throw new TypeError(`The MPI transport cannot start: ${(e as Error).message}`);
  }
  return "mpi";
}

/** Shape of a rank module's entry point. */
export type RankMain<T> = (comm: Communicator, data: unknown) => Promise<T>;

function moduleHref(module: string | URL): string {
  try {
    return new URL(module).href;
  } catch {
    throw new TypeError(
      `module must be an absolute URL, got ${module}: use new URL("./rank.ts", import.meta.url)`,
    );
  }
}

/**
 * Run this process's ranks of the job and return what each rank's `main` returned, in local
 * rank order. Node mode starts one Worker per local rank: over shared memory when the job has
 * one node, over the hierarchical communicator (shared memory + TCP) when it has several.
 * Process mode runs the one rank here, over TCP.
 *
 * @example One node, four ranks
 * ```ts ignore
 * import { launch, parseLaunch } from "./launch.ts";
 * const config = parseLaunch(Deno.args, Deno.env.toObject());
 * const results = await launch(config, { module: new URL("./rank.ts", import.meta.url) });
 * ```
 *
 * @param config from {@linkcode parseLaunch}
 * @param opts the rank module, its data, and the collective timeout
 * @returns each local rank's result
 */
export async function launch<T = unknown>(config: LaunchConfig, opts: LaunchOptions): Promise<T[]> {
  const module = moduleHref(opts.module);
  if (config.mode === "process") {
    const transport = opts.transport ?? chooseTransport(config, Deno.env.toObject());
    const comm = transport === "mpi"
      ? await connectMpiAs(config, opts.timeoutMs)
      : await connectTcp({
        rank: config.ranks[0]!,
        size: config.worldSize,
        masterAddr: config.masterAddr,
        masterPort: config.masterPort,
        opTimeoutMs: opts.timeoutMs,
        secret: opts.secret,
      });
    try {
      const mod = await import(module);
      return [await (mod.main as RankMain<T>)(comm, opts.data)];
    } finally {
      await comm.close();
    }
  }
  if (config.nnodes === 1) {
    return await runWorkers<T>({
      size: config.nprocPerNode,
      module,
      data: opts.data,
      timeoutMs: opts.timeoutMs,
      spinUs: opts.spinUs,
    });
  }
  return await runWorkers<T>({
    size: config.nprocPerNode,
    module: new URL("./_node_rank.ts", import.meta.url),
    timeoutMs: opts.timeoutMs,
    spinUs: opts.spinUs ?? 20,
    data: {
      module,
      data: opts.data,
      nnodes: config.nnodes,
      nodeRank: config.nodeRank,
      nprocPerNode: config.nprocPerNode,
      masterAddr: config.masterAddr,
      masterPort: config.masterPort,
      timeoutMs: opts.timeoutMs,
      secret: opts.secret,
    },
  });
}

// MPI's world, checked against the place the launcher's environment gave this process.
async function connectMpiAs(config: LaunchConfig, timeoutMs?: number): Promise<Communicator> {
  const comm = await connectMpi({ opTimeoutMs: timeoutMs });
  if (comm.rank !== config.ranks[0] || comm.size !== config.worldSize) {
    const got = `rank ${comm.rank} of ${comm.size}`;
    await comm.close();
    throw new RangeError(
      `MPI says this process is ${got}, but the environment says rank ${config.ranks[0]} of ` +
        `${config.worldSize}: start the job with one mpirun (not inside torchrun or srun)`,
    );
  }
  return comm;
}

/** Options of {@linkcode runProcesses}. */
export interface ProcessWorldOptions extends LaunchOptions {
  /** Number of processes (ranks). */
  size: number;
  /** Port for rank 0; default: a free one. */
  masterPort?: number;
  /** Extra `deno run` flags, e.g. `["--v8-flags=--max-old-space-size=4096"]`. */
  denoFlags?: string[];
  /** Called with each line a rank prints to stdout; default: forwarded to this stdout. */
  onLine?: (rank: number, line: string) => void;
}

const RESULT_MARK = "\u0001loom-result ";

/**
 * Run `module`'s `main(comm, data)` in `size` separate processes on this machine, joined over
 * TCP on loopback (the way benchmarks and tests measure the TCP transport), and return each
 * rank's result (JSON round-tripped). `data` must be JSON. Rejects if a process fails.
 *
 * @example Two processes
 * ```ts ignore
 * import { runProcesses } from "./launch.ts";
 * const sums = await runProcesses<number>({
 *   size: 2,
 *   module: new URL("./rank.ts", import.meta.url),
 * });
 * ```
 *
 * @param opts number of processes, the rank module, its data
 * @returns each rank's result, in rank order
 */
export async function runProcesses<T = unknown>(opts: ProcessWorldOptions): Promise<T[]> {
  const { size } = opts;
  if (!Number.isInteger(size) || size < 1 || size > 256) {
    throw new RangeError(`size must be an integer in [1, 256], got ${size}`);
  }
  const module = moduleHref(opts.module);
  const port = opts.masterPort ?? freeLoopbackPort();
  const child = new URL("./_process_rank.ts", import.meta.url).href;
  const runs = Array.from({ length: size }, (_, r) =>
    spawnCollect<T>(
      ["run", "-A", ...(opts.denoFlags ?? []), child],
      {
        RANK: String(r),
        WORLD_SIZE: String(size),
        LOCAL_RANK: String(r),
        LOCAL_WORLD_SIZE: String(size),
        MASTER_ADDR: "127.0.0.1",
        MASTER_PORT: String(port),
        LOOM_RANK_MODULE: module,
        LOOM_RANK_DATA: JSON.stringify(opts.data ?? null),
        LOOM_TIMEOUT_MS: opts.timeoutMs === undefined ? "" : String(opts.timeoutMs),
      },
      `rank ${r} of ${size}`,
      (line) => opts.onLine ? opts.onLine(r, line) : console.log(line),
    ));
  return await allOrFirstError(runs);
}

/** Options of {@linkcode runNodes}. */
export interface NodeWorldOptions extends LaunchOptions {
  /** Number of node processes. */
  nnodes: number;
  /** Worker ranks per node process. */
  nprocPerNode: number;
  /** Port for rank 0; default: a free one. */
  masterPort?: number;
  /** Called with each line a node prints to stdout; default: forwarded to this stdout. */
  onLine?: (node: number, line: string) => void;
}

/**
 * Run a multi-node job on this machine: `nnodes` processes on loopback, each a node of
 * `nprocPerNode` Worker ranks started by {@linkcode launch} (hierarchical communicator when
 * `nnodes > 1`). Returns every rank's result in global rank order (JSON round-tripped).
 *
 * @example 2 nodes x 2 ranks
 * ```ts ignore
 * import { runNodes } from "./launch.ts";
 * const results = await runNodes({
 *   nnodes: 2,
 *   nprocPerNode: 2,
 *   module: new URL("./rank.ts", import.meta.url),
 * });
 * ```
 *
 * @param opts nodes, ranks per node, the rank module and its data
 * @returns each rank's result, in global rank order
 */
export async function runNodes<T = unknown>(opts: NodeWorldOptions): Promise<T[]> {
  const { nnodes, nprocPerNode } = opts;
  for (const [k, v] of [["nnodes", nnodes], ["nprocPerNode", nprocPerNode]] as const) {
    if (!Number.isInteger(v) || v < 1 || v > 256) {
      throw new RangeError(`${k} must be an integer in [1, 256], got ${v}`);
    }
  }
  const module = moduleHref(opts.module);
  const port = opts.masterPort ?? freeLoopbackPort();
  const child = new URL("./_node_process.ts", import.meta.url).href;
  const runs = Array.from({ length: nnodes }, (_, n) =>
    spawnCollect<T[]>(
      ["run", "-A", child, `--nnodes=${nnodes}`, `--node-rank=${n}`]
        .concat([`--nproc-per-node=${nprocPerNode}`, "--master-addr=127.0.0.1"])
        .concat([`--master-port=${port}`]),
      {
        LOOM_RANK_MODULE: module,
        LOOM_RANK_DATA: JSON.stringify(opts.data ?? null),
        LOOM_TIMEOUT_MS: opts.timeoutMs === undefined ? "" : String(opts.timeoutMs),
      },
      `node ${n} of ${nnodes}`,
      (line) => opts.onLine ? opts.onLine(n, line) : console.log(line),
    ));
  return (await allOrFirstError(runs)).flat();
}

/**
 * The TCP baseline benchmarks compare with: a raw one-way stream of `bytes` from one process to
 * another over loopback (plain socket writes and reads, no framing), best of `iters` runs.
 *
 * @param bytes bytes per run
 * @param iters runs (the best counts); default 3
 * @returns gigabytes per second (1e9 bytes/s)
 */
export async function tcpStreamBaseline(bytes: number, iters = 3): Promise<number> {
  if (!Number.isInteger(bytes) || bytes < 1) {
    throw new RangeError(`bytes must be a positive integer, got ${bytes}`);
  }
  const results = await runProcesses<number>({
    size: 2,
    module: new URL("./_stream_rank.ts", import.meta.url),
    data: { bytes, iters },
  });
  return results[0]!;
}

/**
 * A TCP port on loopback that is free now (the kernel's pick, released at once), for a job or
 * a test that needs a master port.
 *
 * @returns the port
 */
export function freeLoopbackPort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = l.addr.port;
  l.close();
  return port;
}

/** Spawn `deno <args>`, forward its stdout lines, and return the value on its result line. */
async function spawnCollect<T>(
  args: string[],
  env: Record<string, string>,
  who: string,
  onLine: (line: string) => void,
): Promise<T> {
  const p = new Deno.Command(Deno.execPath(), {
    args,
    env,
    stdin: "null",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  let result: { ok: boolean; value?: T; error?: string } | undefined;
  let buffered = "";
  const take = (line: string) => {
    if (line.startsWith(RESULT_MARK)) result = JSON.parse(line.slice(RESULT_MARK.length));
    else onLine(line);
  };
  for await (const chunk of p.stdout.pipeThrough(new TextDecoderStream())) {
    buffered += chunk;
    let nl;
    while ((nl = buffered.indexOf("\n")) >= 0) {
      take(buffered.slice(0, nl));
      buffered = buffered.slice(nl + 1);
    }
  }
  if (buffered !== "") take(buffered);
  const status = await p.status;
  if (result?.ok) return result.value as T;
  throw new Error(`${who} failed: ${result?.error ?? `exited with code ${status.code}`}`);
}

async function allOrFirstError<T>(runs: Promise<T>[]): Promise<T[]> {
  const settled = await Promise.allSettled(runs);
  const failed = settled.find((s) => s.status === "rejected") as PromiseRejectedResult | undefined;
  if (failed) throw failed.reason;
  return settled.map((s) => (s as PromiseFulfilledResult<T>).value);
}
