/**
 * The run report: `report.html` in a run directory, one self-contained page (inline SVG, a
 * little inline script, no network) drawn from the run's records: `metrics.jsonl` (steps and
 * evaluations) and `ranks.jsonl` (what every rank measured at each evaluation: memory by kind,
 * where a step's time went, the pipeline as it ran, the layout and the configuration). `runTraining` writes it at every
 * evaluation and at the end; `tools/report.ts` rebuilds it, and overlays several runs.
 *
 * ```sh
 * deno run -A train.ts --steps 60 --out runs/a && deno run -A tools/report.ts runs/a
 * ```
 *
 * Every chart is an `<svg data-chart="NAME" data-points="N">`, N being the points (or bars, or
 * pipeline boxes) it drew, so a test can check a rendering against the records.
 *
 * @module
 */
import type { RankMemory, RankPhases } from "./engine.ts";
import { type EvalRecord, readJsonLines, readMetrics, type StepRecord } from "./metrics.ts";
import { theoreticalBubble } from "./step_time.ts";

/** One rank's memory, in bytes, by kind, with its rank (what `Engine.memoryPerRank` gives). */
export type RankMemoryRow = RankMemory & { rank: number };

/** One pipeline stage's last step as it ran: its computes, in ms since the step began. */
export interface StageTrace {
  /** Global rank that ran it. */
  rank: number;
  /** Pipeline stage. */
  stage: number;
  /** Wall time of the stage's step list. */
  wall_ms: number;
  /** Each forward (`"f"`) or backward (`"b"`): kind, micro-batch, chunk, start, end. */
  entries: ["f" | "b", number, number, number, number][];
}

/** The pipeline of one step, every stage's trace. */
export interface PipelineSnapshot {
  /** Schedule name (`gpipe`, `1f1b`, `interleaved`, ...). */
  schedule: string;
  /** Stages. */
  pp: number;
  /** Virtual stages (chunks) per rank. */
  virtual_stages: number;
  /** Micro-batches per step. */
  micro_batches: number;
  /** The step the traces are from. */
  step: number;
  /** Stage 0 first. */
  stages: StageTrace[];
}

/** What the ranks measured at one evaluation (a line of `ranks.jsonl`). */
export interface RanksRecord {
  /** Step after which it was taken. */
  step: number;
  /** The layout (as summary.json's `layout`). */
  layout: Record<string, unknown>;
  /** The run's options (as saved in its checkpoints). */
  config: Record<string, unknown>;
  /** Parameters of the whole model. */
  params: number;
  /** Model FLOPs per trained token (6 N plus attention), for FLOP rates. */
  flops_per_token: number;
  /** The machine's peak FLOP/s, when known (then the report shows MFU). */
  peak_flops: number | null;
  /** Every rank's memory. */
  memory: RankMemoryRow[];
  /** The pipeline's last step (null with one stage). */
  pipeline: PipelineSnapshot | null;
  /** Every rank's mean time per step by phase (absent in older runs). */
  phases?: RankPhases[] | null;
}

/** One run, as the report draws it. */
export interface ReportRun {
  /** Label (the run directory's name). */
  name: string;
  /** Logged steps, in order (a resumed run continues the curve). */
  steps: StepRecord[];
  /** Evaluations. */
  evals: EvalRecord[];
  /** The latest line of `ranks.jsonl`, if any. */
  ranks: RanksRecord | null;
}

/**
 * Read a run directory's records.
 *
 * @param dir the run directory
 * @returns the run, named after the directory
 * @throws {Deno.errors.NotFound} naming `metrics.jsonl` when the directory holds no run
 */
export async function readRun(dir: string): Promise<ReportRun> {
  let records: (StepRecord | EvalRecord)[];
  try {
    records = await readMetrics(`${dir}/metrics.jsonl`);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new Deno.errors.NotFound(
        `${dir}/metrics.jsonl is missing: ${dir} is not a run directory of train.ts`,
      );
    }
    throw e;
  }
  let ranks: RanksRecord | null = null;
  try {
    ranks = (await readJsonLines<RanksRecord>(`${dir}/ranks.jsonl`)).at(-1) ?? null;
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  const name = dir.replace(/\/+$/, "").split("/").at(-1) || dir;
  return {
    name,
    steps: records.filter((r) => !("kind" in r)) as StepRecord[],
    evals: records.filter((r) => "kind" in r && r.kind === "eval") as EvalRecord[],
    ranks,
  };
}

/**
 * Serve a run's report on loopback while it trains (`train.ts --dashboard PORT`): every request
 * renders the records as they are now, and the page updates itself every second.
 *
 * @param dir the run directory
 * @param port the port (0: a free one)
 * @returns the server (close it with `shutdown()`) and its port
 */
export function serveReport(
  dir: string,
  port: number,
): { port: number; shutdown(): Promise<void> } {
  const server = Deno.serve({ hostname: "127.0.0.1", port, onListen: () => {} }, async (req) => {
    if (new URL(req.url).pathname !== "/") return new Response("not found", { status: 404 });
    try {
      const html = renderReport([await readRun(dir)], { live: true });
      return new Response(html, {
        headers: { "content-type": "text/html; charset=utf-8", "cache-control": "no-store" },
      });
    } catch (e) {
      const body = `<!doctype html><meta http-equiv="refresh" content="2"><p>waiting for the ` +
        `run's first records (${esc((e as Error).message)})</p>`;
      return new Response(body, { status: 503, headers: { "content-type": "text/html" } });
    }
  });
  return { port: (server.addr as Deno.NetAddr).port, shutdown: () => server.shutdown() };
}

/**
 * Write `report.html` into a run directory from its records, atomically (a temporary file
 * renamed over the old report).
 *
 * @param dir the run directory
 * @returns the report's path
 */
export async function writeReport(dir: string): Promise<string> {
  const html = renderReport([await readRun(dir)]);
  const path = `${dir}/report.html`;
  await Deno.writeTextFile(`${path}.tmp`, html);
  await Deno.rename(`${path}.tmp`, path);
  return path;
}

// ---- drawing ---------------------------------------------------------------------------------

const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"];
const W = 460, H = 240, L = 62, R = 14, T = 14, B = 40;

interface Series {
  label: string;
  color: string;
  points: [number, number][];
  dashed?: boolean;
  dots?: boolean;
}

function esc(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(
    /"/g,
    "&quot;",
  );
}

function fmt(v: number): string {
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (a >= 1e9) return `${+(v / 1e9).toPrecision(3)}G`;
  if (a >= 1e6) return `${+(v / 1e6).toPrecision(3)}M`;
  if (a >= 1e4) return `${+(v / 1e3).toPrecision(3)}k`;
  if (a < 1e-2) return v.toExponential(1);
  return `${+v.toPrecision(3)}`;
}

function ticks(lo: number, hi: number, n = 4): number[] {
  if (hi <= lo) return [lo];
  const raw = (hi - lo) / n;
  const p = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((k) => k * p).find((s) => s >= raw)!;
  const out: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(v);
  return out;
}

function extent(vals: number[]): [number, number] {
  let lo = Infinity, hi = -Infinity;
  for (const v of vals) {
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  if (!Number.isFinite(lo)) return [0, 1];
  if (lo === hi) return [lo - (Math.abs(lo) || 1) * 0.05, hi + (Math.abs(hi) || 1) * 0.05];
  return [lo, hi];
}

function frame(id: string, title: string, count: number, body: string, note = ""): string {
  return `<figure><figcaption>${esc(title)}</figcaption>` +
    `<svg data-chart="${id}" data-points="${count}" viewBox="0 0 ${W} ${H}" width="${W}" ` +
    `height="${H}" role="img" aria-label="${esc(title)}">${body}</svg>` +
    (note ? `<p class="note">${esc(note)}</p>` : "") + `</figure>`;
}

/** A chart with nothing to draw, saying why. */
function emptyFrame(id: string, title: string, why: string): string {
  return frame(
    id,
    title,
    0,
    `<text x="${W / 2}" y="${H / 2}" text-anchor="middle" class="empty">${esc(why)}</text>`,
  );
}

/** The plot area and its y grid lines with their labels (`py` maps a value to its height). */
function plotArea(yTicks: number[], py: (v: number) => number): string {
  let body = `<rect x="${L}" y="${T}" width="${W - L - R}" height="${H - T - B}" class="plot"/>`;
  for (const t of yTicks) {
    const y = py(t).toFixed(1);
    body += `<line x1="${L}" x2="${W - R}" y1="${y}" y2="${y}" class="grid"/>` +
      `<text x="${L - 4}" y="${y}" text-anchor="end" dy="4">${fmt(t)}</text>`;
  }
  return body;
}

/** A line chart; the empty case says why it is empty. */
function lineChart(
  id: string,
  title: string,
  xLabel: string,
  series: Series[],
  empty: string,
  opts: { logY?: boolean; markers?: [number, number][] } = {},
): string {
  const all = series.flatMap((s) => s.points).filter(([x, y]) =>
    Number.isFinite(x) && Number.isFinite(y) && (!opts.logY || y > 0)
  );
  if (all.length === 0) return emptyFrame(id, title, empty);
  const fy = opts.logY ? Math.log10 : (v: number) => v;
  const [x0, x1] = extent(all.map((p) => p[0]));
  const [y0, y1] = extent(all.map((p) => fy(p[1])));
  const px = (x: number) => L + (x - x0) / (x1 - x0) * (W - L - R);
  const py = (y: number) => H - B - (fy(y) - y0) / (y1 - y0) * (H - T - B);
  let body = plotArea(opts.logY ? ticks(y0, y1).map((t) => 10 ** t) : ticks(y0, y1), py);
  for (const t of ticks(x0, x1)) {
    body += `<text x="${px(t).toFixed(1)}" y="${H - B + 14}" text-anchor="middle">${fmt(t)}</text>`;
  }
  body += `<text x="${(L + W - R) / 2}" y="${H - 6}" text-anchor="middle">${esc(xLabel)}</text>`;
  let count = 0;
  series.forEach((s, i) => {
    const pts = s.points.filter(([x, y]) =>
      Number.isFinite(x) && Number.isFinite(y) && (!opts.logY || y > 0)
    );
    count += pts.length;
    const coords = pts.map(([x, y]) => `${px(x).toFixed(1)},${py(y).toFixed(1)}`);
    if (s.dots || pts.length === 1) {
      body += pts.map(([x, y]) =>
        `<circle cx="${px(x).toFixed(1)}" cy="${py(y).toFixed(1)}" r="3" fill="${s.color}"/>`
      ).join("");
    }
    body += `<polyline data-series="${esc(s.label)}" points="${coords.join(" ")}" ` +
      `fill="none" stroke="${s.color}" stroke-width="1.5"${
        s.dashed ? ` stroke-dasharray="5,3"` : ""
      }><title>${esc(s.label)}</title></polyline>`;
    body += `<text x="${W - R - 4}" y="${T + 14 + 13 * i}" text-anchor="end" ` +
      `style="fill:${s.color}">${esc(s.label)}</text>`;
  });
  for (const [x, y] of opts.markers ?? []) {
    body += `<circle class="marker" cx="${px(x).toFixed(1)}" cy="${py(y).toFixed(1)}" r="4"/>`;
  }
  return frame(id, title, count, body);
}

const MEMORY_KINDS: readonly Kind<RankMemoryRow>[] = [
  ["params_bytes", "parameters", "#1f77b4"],
  ["grads_bytes", "gradients", "#ff7f0e"],
  ["optimizer_bytes", "optimizer", "#2ca02c"],
  ["activations_peak_bytes", "activations", "#d62728"],
  ["transient_peak_bytes", "transient", "#9467bd"],
];

const PHASE_KINDS: readonly Kind<RankPhases>[] = [
  ["forward_ms", "forward", "#3182bd"],
  ["backward_ms", "backward", "#e6550d"],
  ["pipeline_idle_ms", "pipeline wait", "#bdbdbd"],
  ["reduce_ms", "reductions", "#756bb1"],
  ["step_ms", "optimizer", "#31a354"],
];

/** A field of a per-rank row, its label and its colour. */
type Kind<Row> = readonly [keyof Row & string, string, string];

/** Bars per rank, stacked by kind; `scale` turns a field into the axis's unit. */
function stackedBars<Row extends { rank: number }>(
  id: string,
  title: string,
  rows: readonly Row[],
  kinds: readonly Kind<Row>[],
  unit: string,
  scale: number,
  empty: string,
): string {
  if (rows.length === 0) return emptyFrame(id, title, empty);
  const value = (r: Row, k: keyof Row) => Number(r[k]) / scale;
  // Headroom above the tallest bar for the legend.
  const top = 1.15 *
    Math.max(1e-9, ...rows.map((r) => kinds.reduce((a, [k]) => a + value(r, k), 0)));
  const bw = (W - L - R) / rows.length;
  const py = (v: number) => H - B - v / top * (H - T - B);
  let body = plotArea(ticks(0, top), py);
  let count = 0;
  rows.forEach((r, i) => {
    let acc = 0;
    const x = L + i * bw + bw * 0.15;
    for (const [k, label, color] of kinds) {
      const v = value(r, k);
      const y1 = py(acc), y2 = py(acc + v);
      acc += v;
      count++;
      body +=
        `<rect data-kind="${label}" x="${x.toFixed(1)}" y="${y2.toFixed(1)}" width="${
          (bw * 0.7).toFixed(1)
        }" height="${Math.max(0, y1 - y2).toFixed(1)}" fill="${color}"><title>rank ${r.rank} ` +
        `${label}: ${v.toFixed(2)} ${unit}</title></rect>`;
    }
    if (rows.length <= 16) {
      body += `<text x="${(x + bw * 0.35).toFixed(1)}" y="${
        H - B + 14
      }" text-anchor="middle">${r.rank}</text>`;
    }
  });
  body += `<text x="${(L + W - R) / 2}" y="${H - 6}" text-anchor="middle">rank</text>`;
  kinds.forEach(([, label, color], i) => {
    body += `<text x="${L + 8 + i * 76}" y="${T + 12}" style="fill:${color}">${label}</text>`;
  });
  return frame(id, title, count, body);
}

function memoryChart(run: ReportRun, id: string): string {
  const at = run.ranks ? ` at step ${run.ranks.step}` : "";
  return stackedBars(
    id,
    `memory per rank, by kind (MiB)${at}`,
    run.ranks?.memory ?? [],
    MEMORY_KINDS,
    "MiB",
    2 ** 20,
    "no per-rank measurements yet",
  );
}

function phasesChart(run: ReportRun, id: string): string {
  const rows = run.ranks?.phases ?? [];
  const steps = rows[0]?.steps ?? 0;
  return stackedBars(
    id,
    `where a step goes, per rank (ms, mean of ${steps} step${steps === 1 ? "" : "s"})`,
    rows,
    PHASE_KINDS,
    "ms",
    1,
    "no per-rank timings yet",
  );
}

/**
 * The bubble a traced step measured: the mean over stages of the time not spent computing.
 *
 * @param p the pipeline's traces
 * @returns the idle fraction, 0..1
 */
export function measuredBubble(p: PipelineSnapshot): number {
  const idle = p.stages.map((s) => {
    const busy = s.entries.reduce((a, e) => a + (e[4] - e[3]), 0);
    return s.wall_ms > 0 ? 1 - busy / s.wall_ms : 0;
  });
  return idle.reduce((a, b) => a + b, 0) / Math.max(1, idle.length);
}

function pipelineChart(run: ReportRun, id: string): string {
  const p = run.ranks?.pipeline ?? null;
  const title = "pipeline schedule as it ran (one step)";
  if (p === null) return emptyFrame(id, title, "one pipeline stage: no schedule to draw");
  const end = Math.max(...p.stages.map((s) => s.wall_ms), 1e-6);
  const rowH = (H - T - B) / p.stages.length;
  const px = (t: number) => L + t / end * (W - L - R);
  let body = "";
  let count = 0;
  p.stages.forEach((s, i) => {
    const y = T + i * rowH;
    body += `<text x="${L - 4}" y="${(y + rowH / 2 + 4).toFixed(1)}" text-anchor="end">` +
      `stage ${s.stage}</text>`;
    for (const [kind, mb, chunk, t0, t1] of s.entries) {
      count++;
      const light = chunk % 2 === 1;
      const fill = kind === "f" ? (light ? "#9ecae1" : "#3182bd") : light ? "#fdae6b" : "#e6550d";
      body += `<rect data-kind="${kind}" x="${px(t0).toFixed(2)}" y="${(y + 2).toFixed(1)}" ` +
        `width="${Math.max(0.5, px(t1) - px(t0)).toFixed(2)}" height="${
          (rowH - 4).toFixed(1)
        }" fill="${fill}"><title>${kind === "f" ? "forward" : "backward"} of micro-batch ${mb}` +
        `${p.virtual_stages > 1 ? `, chunk ${chunk}` : ""}: ${t0.toFixed(2)}-${
          t1.toFixed(2)
        } ms</title></rect>`;
      if (px(t1) - px(t0) > 14) {
        body += `<text x="${((px(t0) + px(t1)) / 2).toFixed(1)}" y="${
          (y + rowH / 2 + 4).toFixed(1)
        }" text-anchor="middle" class="mb">${mb}</text>`;
      }
    }
  });
  for (const t of ticks(0, end)) {
    body += `<text x="${px(t).toFixed(1)}" y="${H - B + 14}" text-anchor="middle">${fmt(t)}</text>`;
  }
  body += `<text x="${(L + W - R) / 2}" y="${H - 6}" text-anchor="middle">ms since the step ` +
    `began (blue forward, orange backward)</text>`;
  const theory = theoreticalBubble(p.pp, p.micro_batches, p.virtual_stages);
  return frame(
    id,
    title,
    count,
    body,
    `${p.schedule}, ${p.pp} stages, ${p.micro_batches} micro-batches` +
      `${p.virtual_stages > 1 ? `, ${p.virtual_stages} virtual stages` : ""}, step ${p.step}: ` +
      `bubble measured ${(100 * measuredBubble(p)).toFixed(1)}% of the step, theory ` +
      `${(100 * theory).toFixed(1)}%`,
  );
}

/** Options that say nothing about the run. */
const HIDDEN = new Set(["help", "quiet"]);

function table(run: ReportRun): string {
  const r = run.ranks;
  if (r === null) return `<p class="note">no layout recorded yet</p>`;
  const rows = (o: Record<string, unknown>) =>
    Object.entries(o).filter(([, v]) => v !== null && typeof v !== "object").map(([k, v]) =>
      `<tr><th>${esc(k)}</th><td>${esc(String(v))}</td></tr>`
    ).join("");
  return `<div class="tables"><table data-table="layout"><caption>layout</caption>${
    rows({ ...r.layout, params: r.params })
  }</table><table data-table="config"><caption>configuration</caption>${
    rows(Object.fromEntries(Object.entries(r.config).filter(([k]) => !HIDDEN.has(k))))
  }</table></div>`;
}

function colorOf(i: number): string {
  return COLORS[i % COLORS.length]!;
}

/** How often a live page asks for the report again. */
const LIVE_MS = 1000;

/** Options of {@linkcode renderReport}. */
export interface RenderOptions {
  /** A page served while the run trains: it fetches itself again every second and updates. */
  live?: boolean;
}

/**
 * The report page for one run, or several overlaid (their curves in one chart each; memory,
 * pipeline and configuration per run).
 *
 * @param runs the runs, e.g. from {@linkcode readRun}
 * @param opts a live page
 * @returns a self-contained HTML page
 */
export function renderReport(runs: ReportRun[], opts: RenderOptions = {}): string {
  if (runs.length === 0) throw new RangeError("renderReport needs at least one run");
  const many = runs.length > 1;
  const label = (r: ReportRun, what: string) => many ? `${r.name} ${what}` : what;
  const lossSeries: Series[] = [];
  const lossTokens: Series[] = [];
  runs.forEach((r, i) => {
    lossSeries.push({
      label: label(r, "train"),
      color: colorOf(i),
      points: r.steps.map((s) => [s.step, s.loss]),
    });
    const val = r.evals.filter((e) => e.val_loss !== null);
    lossSeries.push({
      label: label(r, "validation"),
      color: colorOf(i),
      dashed: true,
      dots: true,
      points: val.map((e) => [e.step, e.val_loss!]),
    });
    const counted = r.steps.filter((s) => s.tokens !== undefined);
    const tokensOfStep = new Map(counted.map((s) => [s.step, s.tokens!]));
    lossTokens.push({
      label: label(r, "train"),
      color: colorOf(i),
      points: counted.map((s) => [s.tokens!, s.loss]),
    });
    lossTokens.push({
      label: label(r, "validation"),
      color: colorOf(i),
      dashed: true,
      dots: true,
      points: val.filter((e) => tokensOfStep.has(e.step)).map((
        e,
      ) => [tokensOfStep.get(e.step)!, e.val_loss!]),
    });
  });
  const per = (f: (s: StepRecord) => number | undefined, what: string): Series[] =>
    runs.map((r, i) => ({
      label: label(r, what),
      color: colorOf(i),
      points: r.steps.filter((s) => f(s) !== undefined).map((s) => [s.step, f(s)!]),
    }));
  const flops = runs.map((r, i) => {
    const f = r.ranks?.flops_per_token ?? 0, peak = r.ranks?.peak_flops ?? null;
    return {
      label: label(r, peak ? "MFU %" : "model GFLOP/s"),
      color: colorOf(i),
      points: r.steps.map((s) => {
        const rate = s.tokens_per_s * f;
        return [s.step, peak ? 100 * rate / peak : rate / 1e9] as [number, number];
      }),
    };
  });
  const anyPeak = runs.some((r) => r.ranks?.peak_flops);
  const heldout = runs.map((r, i) => ({
    label: label(r, "held-out exact match %"),
    color: colorOf(i),
    dots: true,
    points: r.evals.filter((e) => e.heldout_accuracy !== undefined).map((
      e,
    ) => [e.step, 100 * e.heldout_accuracy!] as [number, number]),
  }));
  const skipped = runs.flatMap((r) =>
    r.steps.filter((s) => s.skipped && s.loss_scale !== undefined).map((
      s,
    ) => [s.step, s.loss_scale!] as [number, number])
  );
  const skippedCount = runs.reduce((a, r) => a + r.steps.filter((s) => s.skipped).length, 0);
  const charts = [
    lineChart("loss", "loss against step", "step", lossSeries, "no steps logged yet"),
    lineChart("loss-tokens", "loss against tokens", "tokens", lossTokens, "no steps logged yet"),
    lineChart("lr", "learning rate", "step", per((s) => s.lr, "lr"), "no steps logged yet"),
    lineChart(
      "grad-norm",
      "gradient norm (before clipping)",
      "step",
      per((s) => s.grad_norm, "grad norm"),
      "no gradient norms logged",
    ),
    lineChart(
      "tokens-per-s",
      "throughput (tokens/s, over the last 20 steps)",
      "step",
      per((s) => s.tokens_per_s, "tokens/s"),
      "no steps logged yet",
    ),
    lineChart(
      "flops",
      anyPeak ? "model FLOPs utilization (%)" : "model GFLOP/s (6N + attention per token)",
      "step",
      flops,
      "no steps logged yet",
    ),
    lineChart(
      "heldout",
      "held-out score",
      "step",
      heldout,
      "this run's data has no held-out task",
    ),
    lineChart(
      "loss-scale",
      `loss scale (${skippedCount} skipped step${skippedCount === 1 ? "" : "s"} circled)`,
      "step",
      per((s) => s.loss_scale, "loss scale"),
      "no loss scaling: fp32 or bf16",
      { logY: true, markers: skipped },
    ),
  ];
  const perRun = runs.map((r, i) =>
    `<section><h2 style="color:${colorOf(i)}">${esc(r.name)}</h2><div class="grid">${
      memoryChart(r, many ? `memory-${i}` : "memory")
    }${phasesChart(r, many ? `phases-${i}` : "phases")}${
      pipelineChart(r, many ? `pipeline-${i}` : "pipeline")
    }</div>${table(r)}</section>`
  ).join("");
  const title = `Loom run report: ${runs.map((r) => r.name).join(", ")}`;
  const last = runs.map((r) => r.steps.at(-1)?.step ?? 0);
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${esc(title)}</title>
<link rel="icon" href="data:,">
<style>
body{font:13px system-ui,sans-serif;margin:16px;color:#222}
h1{font-size:18px}h2{font-size:15px;margin:18px 0 4px}
.grid{display:flex;flex-wrap:wrap;gap:8px}
figure{margin:0;border:1px solid #ddd;padding:6px;background:#fff}
figcaption{font-weight:600;margin-bottom:2px}
svg text{font-size:10px;fill:#444}svg text.empty{font-size:12px;fill:#888}
svg text.mb{fill:#fff;font-size:9px}
.plot{fill:#fafafa;stroke:#ccc}.grid line,line.grid{stroke:#eee}
circle.marker{fill:none;stroke:#d62728;stroke-width:2}
.note{color:#555;margin:4px 0 0;max-width:${W}px}
.tables{display:flex;gap:16px;flex-wrap:wrap;align-items:flex-start}
table{border-collapse:collapse;margin-top:8px}th,td{padding:1px 8px;text-align:left;border-bottom:1px solid #eee}
th{font-weight:500;color:#555}caption{font-weight:600;text-align:left}
#hover{position:fixed;pointer-events:none;background:#222;color:#fff;padding:2px 6px;border-radius:3px;display:none}
</style></head><body>
<main id="report">
<h1>${esc(title)}</h1>
<p>${runs.map((r, i) => `${esc(r.name)}: ${last[i]} steps logged`).join("; ")}${
    opts.live ? " (live: updated as metrics arrive)" : ""
  }</p>
<div class="grid">${charts.join("")}</div>
${perRun}
</main>
<div id="hover"></div>
<script>
(() => {
  // Hovering a chart's line, bar or box shows its title.
  const tip = document.getElementById("hover");
  document.addEventListener("mousemove", (ev) => {
    const t = ev.target.closest?.("svg[data-chart]") ? ev.target.querySelector?.("title") : null;
    if (!t) { tip.style.display = "none"; return; }
    tip.textContent = t.textContent;
    tip.style.left = ev.clientX + 12 + "px";
    tip.style.top = ev.clientY + 12 + "px";
    tip.style.display = "block";
  });
  const count = () => {
    document.body.dataset.charts = String(document.querySelectorAll("svg[data-chart]").length);
  };
  count();
  ${
    opts.live
      ? `// Live: fetch the page again every ${LIVE_MS} ms and swap in what changed.
  let updates = 0;
  setInterval(async () => {
    try {
      const text = await (await fetch(location.href, { cache: "no-store" })).text();
      const next = new DOMParser().parseFromString(text, "text/html").getElementById("report");
      const cur = document.getElementById("report");
      if (next && cur && next.innerHTML !== cur.innerHTML) {
        cur.replaceWith(next);
        count();
        document.body.dataset.updates = String(++updates);
      }
    } catch { /* the run ended: keep the last page */ }
  }, ${LIVE_MS});`
      : ""
  }
})();
</script>
</body></html>
`;
}
