/**
 * ZeRO stages 0-3 at data-parallel size 2, over shared memory (two Worker ranks of this process)
 * and over TCP (two OS processes on 127.0.0.1), in fp32 and bf16, with `overlap_comm` off and
 * on: step time, bytes per rank, bytes on the wire per step, and how much of the gradient
 * communication backward hid. Each figure sits beside a baseline taken in the same run.
 *
 * ```sh
 * deno run -A bench/zero.ts [--json] [--dim 256] [--layers 4] [--heads 8] [--ctx 64]
 *   [--vocab 256] [--batch 2] [--steps 8] [--warmup 2] [--bucket 262144]
 *   [--transports shm,tcp] [--stages 0,1,2,3] [--precisions fp32,bf16] [--overlap off,on]
 *   [--timeout 120] [--seed 0]
 * ```
 *
 * The model is a GPT trained on random tokens with AdamW and `gradient_clipping: 1`, one
 * micro-batch of `--batch` sequences per rank and step (so a dp 2 step sees twice the
 * sequences of the one-rank baseline, and each rank computes exactly what the baseline does).
 * The default (dim 256, 4 layers, 3.2 M parameters, 2 x 64 tokens per rank) keeps compute per
 * step small next to the 12 MiB of fp32 gradients, so that communication shows in the step
 * time, and the whole default sweep (34 worlds) short on 2 cores. At stage 3 the engine's
 * defaults apply: buckets under 1e5 elements stay whole on every rank (here about 0.35 M of
 * the 3.2 M parameters), the rest is gathered per layer, the next layers prefetched ahead.
 * Every rank runs the CPU backend with one BLAS thread. The config is
 * `zero_optimization: { stage, reduce_bucket_size: --bucket, overlap_comm }`, plus
 * `bf16: { enabled: true }` for the bf16 rows.
 *
 * What each figure means (one row per transport x stage x precision x overlap):
 * - `step_ms`: median over the timed steps (after `--warmup` untimed ones) of the step's wall
 *   time, the slower rank's; the ranks line up on a barrier before each step, outside the timing.
 * - `baseline_step_ms`: the same model and precision on ONE rank (dp 1, no communication), a
 *   Worker alone in this process; `baseline_pair_step_ms`: two such one-rank engines running side
 *   by side (no communication, but the same two busy cores as a dp 2 row). `step_ms /
 *   baseline_step_ms` is what data parallelism costs per step; `step_ms / baseline_pair_step_ms`
 *   leaves out what sharing the machine costs, so it is closer to the cost of communication.
 * - `bytes`: what rank 0 holds, from its allocations: `engine.zero.memory()` (`params`,
 *   `grads`, `optimizer` = fp32 master weights when separate plus the AdamW moments, and
 *   `transient_peak` = the peak of buffers living only inside a step: buckets in flight, stage
 *   3's gathered layers, fp32 copies of 16-bit gradient slices) and `activations` =
 *   `engine.model.pool.bytes`; `total` is their sum.
 * - `wire_bytes_per_step`: `commStats().wireBytes`, the payload bytes this rank handed to and
 *   took from data-parallel collectives in one step (gradient reductions and parameter
 *   all-gathers, sent plus received). It is not what crossed a socket: no frame headers, and an
 *   algorithm's forwarding is not counted. In bf16 every payload is 16-bit, so it is half of fp32.
 * - `reduce_ms`: the step's gradient reductions, each from its launch to its completion, summed
 *   (`commStats().reduceMs`); `wait_ms`: how long backward stood still for them (after its
 *   last layer, or in a layer's release with `overlap_comm` off); both the mean over the timed
 *   steps and the two ranks.
 * - `hidden_fraction`: `1 - wait_ms / reduce_ms`, clamped to [0, 1] (`null` without
 *   reductions). It reads "the share of the reductions' lifetime backward did not wait for"; a
 *   reduction that sits launched but idle while backward computes counts as hidden, so the
 *   figure flatters: `reduceMs` adds up the lifetimes of reductions that are in flight at the
 *   same time, and a reduction that sits launched but idle while backward computes counts as
 *   hidden. Two stricter readings for the overlap-on rows, against the overlap-off row of the
 *   same transport, stage and precision: `hidden_vs_serial = 1 - wait_ms(on) / wait_ms(off)`
 *   (clamped), the share of the serial wait that overlapping took off backward's waits, and
 *   `step_saved = (step_ms(off) - step_ms(on)) / wait_ms(off)` (not clamped: negative when the
 *   overlapped step was slower), the share of the serial wait the whole step got back. The second
 *   is the one that counts a fold moved into backward's own thread as not hidden; it is as noisy
 *   as two step times.
 *
 * What to expect: over shared memory a collective's fold (reading the peer's gradients and
 * adding them) is done by the ranks' own threads, the same threads that compute backward, so a
 * reduction launched early mostly waits until backward yields and little of it can overlap;
 * and with two ranks on two cores there is no idle core to do it either. Over TCP the kernel
 * moves the bytes already handed to a socket while backward computes; but each further step of
 * an op (the next chunk, the fold of what arrived) runs on the rank's event loop, and a backward
 * of synchronous kernel calls gives the loop no turn. Measured outside the engine (two TCP
 * processes, 18 all-reduces of 1 MiB launched, then 300 ms of synchronous work): they still
 * needed 40-110 ms after the work, as long as with no work at all, and none when the work
 * yielded to the event loop 12 times. So `overlap_comm` here mostly launches early and
 * completes late, on both transports, and every bucket in flight stays allocated until backward
 * ends (see `transient_peak` at stage 2 with overlap on).
 *
 * `--json` prints one JSON object per row (JSON lines) on stdout: `transport, stage, precision,
 * overlap, step_ms, baseline_step_ms, baseline_pair_step_ms, bytes {params, grads, optimizer,
 * transient_peak, activations, total}, wire_bytes_per_step, reductions, hidden_fraction,
 * hidden_vs_serial, step_saved, reduce_ms, wait_ms, loss_first, loss_last`; the load average and the checks
 * (bf16 wire bytes half of fp32; stage 2/3 gradient bytes below stage 0/1) go to stderr. A row
 * that fails or times out prints `{transport, stage, precision, overlap, error}`.
 *
 * Figures from a shared machine are only comparable with the load they were taken under: the
 * load average is printed first.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { startWorkers } from "../collectives/mod.ts";
import { PORT_MARK, RESULT_MARK, type ZeroRankResult, type ZeroRankSpec } from "./_zero_rank.ts";
import { median } from "./_median.ts";

/** A transport of the sweep. */
export type Transport = "shm" | "tcp";

/** The options of the benchmark (from the command line). */
export interface ZeroBenchOptions {
  /** Model width. */
  dim: number;
  /** Transformer blocks. */
  layers: number;
  /** Attention heads. */
  heads: number;
  /** Sequence length (the model's context). */
  ctx: number;
  /** Vocabulary. */
  vocab: number;
  /** Sequences per rank per step. */
  batch: number;
  /** Timed steps. */
  steps: number;
  /** Untimed steps first. */
  warmup: number;
  /** `reduce_bucket_size` in elements. */
  bucket: number;
  /** Seconds each measurement (start, build, steps) may take before it is killed. */
  timeout: number;
  /** Seed. */
  seed: number;
  /** Transports to run. */
  transports: Transport[];
  /** ZeRO stages to run. */
  stages: (0 | 1 | 2 | 3)[];
  /** Precisions to run. */
  precisions: ("fp32" | "bf16")[];
  /** `overlap_comm` values to run. */
  overlap: boolean[];
  /** JSON lines instead of a table. */
  json: boolean;
  /** Print the usage. */
  help: boolean;
}

/** The byte counts of a row. */
export interface RowBytes {
  /** Parameters used in compute. */
  params: number;
  /** Gradients. */
  grads: number;
  /** Optimizer state (fp32 master weights when separate, the moments). */
  optimizer: number;
  /** Peak of the buffers that live only inside a step. */
  transient_peak: number;
  /** Activation buffers of the model. */
  activations: number;
  /** The sum. */
  total: number;
}

/** One row of the sweep (one JSON line with `--json`). */
export interface ZeroRow {
  /** `"shm"` or `"tcp"`. */
  transport: Transport;
  /** ZeRO stage. */
  stage: number;
  /** `"fp32"` or `"bf16"`. */
  precision: "fp32" | "bf16";
  /** `overlap_comm`. */
  overlap: boolean;
  /** Median step time, ms (the slower rank). */
  step_ms: number;
  /** One rank alone, dp 1, same model and precision, ms. */
  baseline_step_ms: number | null;
  /** Two one-rank engines side by side, ms. */
  baseline_pair_step_ms: number | null;
  /** What rank 0 holds. */
  bytes: RowBytes;
  /** Payload bytes rank 0 handed to and took from data-parallel collectives per step. */
  wire_bytes_per_step: number;
  /** Gradient reductions per step. */
  reductions: number;
  /** `1 - wait_ms / reduce_ms`, clamped to [0, 1]; null without reductions. */
  hidden_fraction: number | null;
  /** Overlap on: `1 - wait_ms / wait_ms(overlap off)`, clamped; else null. */
  hidden_vs_serial: number | null;
  /** Overlap on: `(step_ms(off) - step_ms) / wait_ms(off)`, not clamped; else null. */
  step_saved: number | null;
  /** Reductions' launch-to-completion time per step, summed, ms (mean over steps and ranks). */
  reduce_ms: number;
  /** Time backward waited for reductions per step, ms (mean over steps and ranks). */
  wait_ms: number;
  /** Loss of the first warm-up step. */
  loss_first: number;
  /** Loss of the last timed step. */
  loss_last: number;
}

const NUMS = [
  "dim",
  "layers",
  "heads",
  "ctx",
  "vocab",
  "batch",
  "steps",
  "warmup",
  "bucket",
  "timeout",
  "seed",
] as const;
const DEFAULTS: Record<typeof NUMS[number], number> = {
  dim: 256,
  layers: 4,
  heads: 8,
  ctx: 64,
  vocab: 256,
  batch: 2,
  steps: 8,
  warmup: 2,
  bucket: 2 ** 18,
  timeout: 120,
  seed: 0,
};

const USAGE = `Usage: deno run -A bench/zero.ts [options]

ZeRO stages at dp 2 over shared memory and TCP: step time, bytes per rank, wire bytes per step,
and the share of gradient communication hidden behind backward.

  --dim N           model width (default 256)
  --layers N        transformer blocks (default 4)
  --heads N         attention heads (default 8)
  --ctx N           sequence length (default 64)
  --vocab N         vocabulary (default 256)
  --batch N         sequences per rank per step (default 2)
  --steps N         timed steps (default 8)
  --warmup N        untimed steps first (default 2; 0 allowed)
  --bucket N        reduce_bucket_size in elements (default 262144)
  --transports L    comma list of shm, tcp (default shm,tcp)
  --stages L        comma list of 0..3 (default 0,1,2,3)
  --precisions L    comma list of fp32, bf16 (default fp32,bf16)
  --overlap L       comma list of off, on (default off,on)
  --timeout S       seconds one measurement may take before it is killed (default 120)
  --seed N          seed (default 0)
  --json            one JSON object per row on stdout
  --help            this text`;

function list<T extends string>(flag: string, raw: string | undefined, allowed: readonly T[]): T[] {
  if (raw === undefined) return [...allowed];
  const items = raw.split(",").map((s) => s.trim()).filter((s) => s !== "");
  if (items.length === 0) throw new TypeError(`--${flag} needs at least one value`);
  for (const s of items) {
    if (!allowed.includes(s as T)) {
      throw new TypeError(`--${flag} takes a comma list of ${allowed.join(", ")}, got "${s}"`);
    }
  }
  return [...new Set(items as T[])];
}

/**
 * Parse the command line.
 *
 * @param argv the arguments
 * @returns the options
 * @throws {TypeError} on an unknown flag or a bad value (the message says which and why)
 */
export function parseZeroArgs(argv: string[]): ZeroBenchOptions {
  const options: Record<string, { type: "string" | "boolean" }> = {
    json: { type: "boolean" },
    help: { type: "boolean" },
    transports: { type: "string" },
    stages: { type: "string" },
    precisions: { type: "string" },
    overlap: { type: "string" },
  };
  for (const k of NUMS) options[k] = { type: "string" };
  let values: Record<string, string | boolean | undefined>;
  try {
    values = parseArgs({ args: argv, options, strict: true, allowPositionals: false }).values;
  } catch (e) {
    throw new TypeError(`${(e as Error).message}. Run with --help to see the options.`);
  }
  const n = {} as Record<typeof NUMS[number], number>;
  for (const k of NUMS) {
    const raw = values[k] as string | undefined;
    const v = raw === undefined ? DEFAULTS[k] : Number(raw);
    const min = k === "seed" || k === "warmup" ? 0 : 1;
    if (raw !== undefined && raw.trim() === "" || !Number.isInteger(v) || v < min) {
      throw new TypeError(
        `--${k} expects ${min === 0 ? "a non-negative" : "a positive"} integer, got "${raw}"`,
      );
    }
    n[k] = v;
  }
  if (n.dim % n.heads !== 0) {
    throw new TypeError(`--heads (${n.heads}) must divide --dim (${n.dim})`);
  }
  if (n.bucket > 2 ** 20) {
    throw new TypeError(`--bucket must be at most ${2 ** 20} elements, got ${n.bucket}`);
  }
  const stages = list("stages", values.stages as string | undefined, ["0", "1", "2", "3"])
    .map(Number) as (0 | 1 | 2 | 3)[];
  return {
    ...n,
    transports: list("transports", values.transports as string | undefined, ["shm", "tcp"]),
    stages: stages.sort(),
    precisions: list("precisions", values.precisions as string | undefined, ["fp32", "bf16"]),
    overlap: list("overlap", values.overlap as string | undefined, ["off", "on"])
      .map((s) => s === "on"),
    json: Boolean(values.json),
    help: Boolean(values.help),
  };
}

// ---- running the ranks ------------------------------------------------------------------------

/** Child processes still running, killed on the way out whatever happens. */
const live = new Set<Deno.ChildProcess>();

function killAll(): void {
  for (const p of live) {
    try {
      p.kill("SIGKILL");
    } catch { /* already gone */ }
  }
}

function withDeadline<T>(what: string, ms: number, run: Promise<T>, onTimeout: () => void) {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      onTimeout();
      reject(new Error(`${what} took more than ${ms / 1000} s and was stopped`));
    }, ms);
  });
  return Promise.race([run, late]).finally(() => clearTimeout(timer));
}

/** Ranks as Workers of this process over shared memory. */
async function runShm(size: number, spec: ZeroRankSpec, ms: number): Promise<ZeroRankResult[]> {
  const world = startWorkers<ZeroRankResult>({
    size,
    module: new URL("./_zero_rank.ts", import.meta.url),
    data: spec,
    timeoutMs: spec.timeoutMs,
  });
  try {
    return await withDeadline(`shm world of ${size}`, ms, Promise.all(world.results), () => {
      world.close();
    });
  } finally {
    world.close();
  }
}

/** Read a child's stdout line by line: marked lines to `onMark`, the rest to stderr. */
async function readLines(
  p: Deno.ChildProcess,
  onLine: (line: string) => void,
): Promise<void> {
  let buffered = "";
  for await (const chunk of p.stdout.pipeThrough(new TextDecoderStream())) {
    buffered += chunk;
    let nl;
    while ((nl = buffered.indexOf("\n")) >= 0) {
      onLine(buffered.slice(0, nl));
      buffered = buffered.slice(nl + 1);
    }
  }
  if (buffered !== "") onLine(buffered);
}

/** Two rank processes over TCP on loopback; rank 0 picks the port and says which. */
async function runTcp(spec: ZeroRankSpec, ms: number): Promise<ZeroRankResult[]> {
  const script = new URL("./_zero_rank.ts", import.meta.url).href;
  const size = 2;
  const procs: Deno.ChildProcess[] = [];
  const spawn = (rank: number, port: number) => {
    const p = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", script, JSON.stringify({ rank, size, port, spec })],
      stdin: "piped",
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    live.add(p);
    procs.push(p);
    return p;
  };
  let gotPort!: (port: number) => void;
  const port = new Promise<number>((r) => (gotPort = r));
  const collect = (rank: number, p: Deno.ChildProcess): Promise<ZeroRankResult> => {
    let result: { ok: boolean; value?: ZeroRankResult; error?: string } | undefined;
    const lines = readLines(p, (line) => {
      if (line.startsWith(RESULT_MARK)) result = JSON.parse(line.slice(RESULT_MARK.length));
      else if (line.startsWith(PORT_MARK)) gotPort(Number(line.slice(PORT_MARK.length)));
      else console.error(line);
    });
    return lines.then(() => p.status).then((status) => {
      if (result?.ok) return result.value!;
      throw new Error(
        `tcp rank ${rank} failed: ${result?.error ?? `exited with code ${status.code}`}`,
      );
    });
  };
  const run = (async () => {
    const r0 = collect(0, spawn(0, 0));
    // Rank 0 exiting before it listens must not leave us waiting for the port.
    const p = await Promise.race([port, r0.then(() => -1)]);
    if (p < 0) throw new Error("tcp rank 0 ended before it listened");
    const r1 = collect(1, spawn(1, p));
    const settled = await Promise.allSettled([r0, r1]);
    const bad = settled.find((s) => s.status === "rejected") as PromiseRejectedResult | undefined;
    if (bad) throw bad.reason;
    return settled.map((s) => (s as PromiseFulfilledResult<ZeroRankResult>).value);
  })();
  try {
    return await withDeadline("tcp world of 2", ms, run, () => {
      for (const q of procs) {
        try {
          q.kill("SIGKILL");
        } catch { /* gone */ }
      }
    });
  } finally {
    for (const q of procs) {
      try {
        q.kill("SIGKILL");
      } catch { /* exited */ }
      try {
        await q.stdin.close();
      } catch { /* closed */ }
      await q.status;
      live.delete(q);
    }
  }
}

// ---- figures ----------------------------------------------------------------------------------

function mean(xs: number[]): number {
  return xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
}

/** Per step the slower rank, then the median over steps. */
function stepMs(ranks: ZeroRankResult[]): number {
  return median(ranks[0]!.stepMs.map((_, i) => Math.max(...ranks.map((r) => r.stepMs[i]!))));
}

const clamp01 = (x: number) => Math.min(1, Math.max(0, x));
const round = (x: number, d = 2) => Number(x.toFixed(d));

function rowOf(
  transport: Transport,
  spec: ZeroRankSpec,
  ranks: ZeroRankResult[],
  baseline: { alone: number; pair: number } | undefined,
  serial: { wait: number; step: number } | undefined,
): ZeroRow {
  const r0 = ranks[0]!;
  const reduce = mean(ranks.flatMap((r) => r.reduceMs));
  const wait = mean(ranks.flatMap((r) => r.waitMs));
  const wire = median(r0.wireBytes);
  for (const r of ranks) {
    if (r.wireBytes.some((w) => w !== wire)) {
      console.error(
        `# note: ${transport} stage ${spec.stage} ${spec.precision}: wire bytes differ across ` +
          `steps or ranks (${ranks.map((x) => x.wireBytes.join("/")).join(" vs ")})`,
      );
      break;
    }
  }
  const b = r0.bytes;
  const total = b.params + b.grads + b.optimizer + b.transient_peak + b.activations;
  const step = stepMs(ranks);
  const vsSerial = spec.overlap && serial !== undefined && serial.wait > 0;
  return {
    transport,
    stage: spec.stage,
    precision: spec.precision,
    overlap: spec.overlap,
    step_ms: round(step),
    baseline_step_ms: baseline ? round(baseline.alone) : null,
    baseline_pair_step_ms: baseline ? round(baseline.pair) : null,
    bytes: { ...b, total },
    wire_bytes_per_step: wire,
    reductions: median(r0.reductions),
    hidden_fraction: reduce > 0 ? round(clamp01(1 - wait / reduce), 3) : null,
    hidden_vs_serial: vsSerial ? round(clamp01(1 - wait / serial.wait), 3) : null,
    step_saved: vsSerial ? round((serial.step - step) / serial.wait, 3) : null,
    reduce_ms: round(reduce),
    wait_ms: round(wait),
    loss_first: round(r0.loss[0], 4),
    loss_last: round(r0.loss[1], 4),
  };
}

function mib(n: number): string {
  return (n / 2 ** 20).toFixed(2);
}

const COLUMNS: [string, number][] = [
  ["transport", 9],
  ["stage", 5],
  ["prec", 5],
  ["overlap", 7],
  ["step ms", 8],
  ["x base", 7],
  ["x pair", 7],
  ["params", 7],
  ["grads", 7],
  ["optim", 7],
  ["trans", 7],
  ["act", 7],
  ["total", 7],
  ["wire/step", 10],
  ["red", 4],
  ["reduce ms", 9],
  ["wait ms", 8],
  ["hidden", 7],
  ["vs ser", 7],
  ["saved", 7],
];

function tableHeader(): string {
  const head = COLUMNS.map(([h, w]) => h.padStart(w)).join(" ");
  const units = COLUMNS.map(([h, w]) =>
    (["params", "grads", "optim", "trans", "act", "total", "wire/step"].includes(h) ? "MiB" : "")
      .padStart(w)
  ).join(" ");
  return `${head}\n${units}`;
}

const LEGEND = [
  "# x base: step ms / one rank alone (dp 1); x pair: / two one-rank engines side by side",
  "# params grads optim trans act: bytes rank 0 holds (zero.memory(), trans = transient peak,",
  "#   act = model.pool.bytes); wire/step: payload bytes handed to and taken from dp collectives",
  "# red: reductions per step; reduce ms: their launch-to-completion times summed; wait ms: how",
  "#   long backward waited; hidden = 1 - wait/reduce (clamped); vs ser = 1 - wait/wait(off);",
  "#   saved = (step(off) - step(on)) / wait(off)",
].join("\n");

function tableLine(r: ZeroRow): string {
  const ratio = (b: number | null) => (b ? (r.step_ms / b).toFixed(2) : "-");
  const cells = [
    r.transport,
    String(r.stage),
    r.precision,
    r.overlap ? "on" : "off",
    r.step_ms.toFixed(1),
    ratio(r.baseline_step_ms),
    ratio(r.baseline_pair_step_ms),
    mib(r.bytes.params),
    mib(r.bytes.grads),
    mib(r.bytes.optimizer),
    mib(r.bytes.transient_peak),
    mib(r.bytes.activations),
    mib(r.bytes.total),
    mib(r.wire_bytes_per_step),
    String(r.reductions),
    r.reduce_ms.toFixed(1),
    r.wait_ms.toFixed(1),
    r.hidden_fraction === null ? "-" : r.hidden_fraction.toFixed(3),
    r.hidden_vs_serial === null ? "-" : r.hidden_vs_serial.toFixed(3),
    r.step_saved === null ? "-" : r.step_saved.toFixed(3),
  ];
  return cells.map((c, i) => c.padStart(COLUMNS[i]![1])).join(" ");
}

/** The checks the issue asks for, as lines of text (each starting "ok" or "FAIL"). */
function checks(rows: ZeroRow[]): string[] {
  const out: string[] = [];
  const key = (r: ZeroRow) => `${r.transport} stage ${r.stage} overlap ${r.overlap ? "on" : "off"}`;
  for (const r of rows.filter((x) => x.precision === "bf16")) {
    const f = rows.find((x) => x.precision === "fp32" && key(x) === key(r));
    if (!f) continue;
    const ratio = r.wire_bytes_per_step / f.wire_bytes_per_step;
    out.push(
      `${ratio === 0.5 ? "ok  " : "FAIL"} ${key(r)}: bf16 wire ${r.wire_bytes_per_step} B = ` +
        `${ratio} x fp32 ${f.wire_bytes_per_step} B`,
    );
  }
  for (const t of new Set(rows.map((r) => r.transport))) {
    for (const p of new Set(rows.map((r) => r.precision))) {
      const of = rows.filter((r) => r.transport === t && r.precision === p);
      const low = of.filter((r) => r.stage <= 1).map((r) => r.bytes.grads);
      const high = of.filter((r) => r.stage >= 2).map((r) => r.bytes.grads);
      if (low.length === 0 || high.length === 0) continue;
      const ok = Math.max(...high) < Math.min(...low);
      out.push(
        `${ok ? "ok  " : "FAIL"} ${t} ${p}: gradient bytes at stage 2/3 ` +
          `(${[...new Set(high)].join(", ")}) < stage 0/1 (${[...new Set(low)].join(", ")})`,
      );
    }
  }
  return out;
}

// ---- the sweep --------------------------------------------------------------------------------

async function sweep(o: ZeroBenchOptions): Promise<void> {
  const say = o.json ? console.error : console.log;
  const load = Deno.loadavg().map((x) => x.toFixed(2)).join(" ");
  const cores = navigator.hardwareConcurrency;
  say(
    `# load average ${load} on ${cores} cores (figures are noisy when it exceeds the cores)`,
  );
  const model = { vocab: o.vocab, ctx: o.ctx, dim: o.dim, layers: o.layers, heads: o.heads };
  const ms = o.timeout * 1000;
  const base: Omit<ZeroRankSpec, "stage" | "precision" | "overlap" | "solo"> = {
    model,
    micro: o.batch,
    warmup: o.warmup,
    steps: o.steps,
    bucket: o.bucket,
    seed: o.seed,
    // A collective never waits longer than the whole measurement may take.
    timeoutMs: ms,
  };
  // Baselines first, in the same run: one rank alone, and two one-rank engines side by side.
  const baselines = new Map<string, { alone: number; pair: number }>();
  for (const precision of o.precisions) {
    const spec: ZeroRankSpec = { ...base, stage: 0, precision, overlap: false, solo: true };
    try {
      const alone = stepMs(await runShm(1, spec, ms));
      const pairRanks = await runShm(2, spec, ms);
      const pair = stepMs(pairRanks);
      baselines.set(precision, { alone, pair });
      say(
        `# baseline ${precision}: ${pairRanks[0]!.params.toLocaleString("en-US")} parameters, ` +
          `${o.batch} x ${o.ctx} tokens per rank; one rank alone ${alone.toFixed(1)} ms/step, ` +
          `two one-rank engines side by side ${pair.toFixed(1)} ms/step`,
      );
    } catch (e) {
      say(`# baseline ${precision} failed: ${(e as Error).message}`);
    }
  }
  if (!o.json) console.log(tableHeader());
  const rows: ZeroRow[] = [];
  for (const transport of o.transports) {
    for (const stage of o.stages) {
      for (const precision of o.precisions) {
        let serial: { wait: number; step: number } | undefined;
        // Off before on, so that an on row can be read against the serial wait.
        for (const overlap of [...o.overlap].sort((a, b) => Number(a) - Number(b))) {
          const spec: ZeroRankSpec = { ...base, stage, precision, overlap, solo: false };
          let ranks: ZeroRankResult[];
          try {
            ranks = transport === "shm" ? await runShm(2, spec, ms) : await runTcp(spec, ms);
          } catch (e) {
            const msg = (e as Error).message;
            if (o.json) {
              console.log(JSON.stringify({ transport, stage, precision, overlap, error: msg }));
            } else console.log(`# ${transport} stage ${stage} ${precision} failed: ${msg}`);
            continue;
          }
          const row = rowOf(transport, spec, ranks, baselines.get(precision), serial);
          if (!overlap) serial = { wait: row.wait_ms, step: row.step_ms };
          rows.push(row);
          console.log(o.json ? JSON.stringify(row) : tableLine(row));
        }
      }
    }
  }
  if (!o.json) console.log(LEGEND);
  say(`# load average at the end ${Deno.loadavg().map((x) => x.toFixed(2)).join(" ")}`);
  const lines = checks(rows);
  if (lines.length > 0) {
    say("# checks");
    for (const l of lines) say(`# ${l}`);
  }
}

if (import.meta.main) {
  let o: ZeroBenchOptions;
  try {
    o = parseZeroArgs(Deno.args);
  } catch (e) {
    console.error(`error: ${(e as Error).message}`);
    Deno.exit(2);
  }
  if (o.help) {
    console.log(USAGE);
    Deno.exit(0);
  }
  const onSignal = () => {
    killAll();
    Deno.exit(130);
  };
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  try {
    await sweep(o);
  } finally {
    killAll();
    Deno.removeSignalListener("SIGINT", onSignal);
    Deno.removeSignalListener("SIGTERM", onSignal);
  }
}
