// The run report: drawn from the run's records, rebuilt and overlaid by tools/report.ts, and
// opened in a real headless browser (Debian's chromium; skipped where it is missing), which
// must draw every chart with the points the records hold and log no errors.
import assert from "node:assert/strict";
import {
  measuredBubble,
  type PipelineSnapshot,
  readRun,
  renderReport,
  type ReportRun,
} from "../../engine/report.ts";
import { theoreticalBubble } from "../../engine/step_time.ts";
import type { EvalRecord, StepRecord } from "../../engine/metrics.ts";
import { main } from "../../train.ts";
import { main as reportMain } from "../../tools/report.ts";
import { findChromium, visit } from "../_browser.ts";

const TINY = ["--dim", "16", "--layers", "2", "--heads", "2", "--batch", "8", "--backend", "cpu"];

/** What each chart must draw, from the records alone. */
function expectedPoints(runs: ReportRun[], perRun: boolean): Record<string, number> {
  const sum = (f: (r: ReportRun) => number) => runs.reduce((a, r) => a + f(r), 0);
  const vals = (r: ReportRun) => r.evals.filter((e) => e.val_loss !== null);
  const want: Record<string, number> = {
    "loss": sum((r) => r.steps.length + vals(r).length),
    "loss-tokens": sum((r) =>
      r.steps.filter((s) => s.tokens !== undefined).length + vals(r).length
    ),
    "lr": sum((r) => r.steps.length),
    "grad-norm": sum((r) => r.steps.filter((s) => s.grad_norm !== undefined).length),
    "tokens-per-s": sum((r) => r.steps.length),
    "flops": sum((r) => r.steps.length),
    "heldout": sum((r) => r.evals.filter((e) => e.heldout_accuracy !== undefined).length),
    "loss-scale": sum((r) => r.steps.filter((s) => (s.loss_scale ?? 0) > 0).length),
  };
  runs.forEach((r, i) => {
    const sfx = perRun ? `-${i}` : "";
    want[`memory${sfx}`] = 5 * (r.ranks?.memory.length ?? 0);
    want[`phases${sfx}`] = 5 * (r.ranks?.phases?.length ?? 0);
    const p = r.ranks?.pipeline;
    want[`pipeline${sfx}`] = p ? p.pp * 2 * p.micro_batches * p.virtual_stages : 0;
  });
  return want;
}

/** Each chart's declared points, and what the browser actually drew (vertices and boxes). */
const COUNT_DRAWN = `(() => {
  const out = {};
  for (const svg of document.querySelectorAll("svg[data-chart]")) {
    let drawn = 0;
    for (const pl of svg.querySelectorAll("polyline")) {
      const b = pl.getBBox();
      if (pl.points.numberOfItems > 1 && b.width === 0 && b.height === 0) continue;
      drawn += pl.points.numberOfItems;
    }
    for (const r of svg.querySelectorAll("rect[data-kind]")) {
      if (r.getBBox().width > 0) drawn++;
    }
    const box = svg.getBoundingClientRect();
    out[svg.dataset.chart] = {
      declared: Number(svg.dataset.points), drawn, visible: box.width > 0 && box.height > 0,
    };
  }
  return { charts: out, count: Number(document.body.dataset.charts) };
})()`;

interface Drawn {
  charts: Record<string, { declared: number; drawn: number; visible: boolean }>;
  count: number;
}

function declared(html: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const m of html.matchAll(/data-chart="([^"]+)" data-points="(\d+)"/g)) {
    out[m[1]!] = Number(m[2]);
  }
  return out;
}

async function train(args: string[]): Promise<string> {
  const out = await Deno.makeTempDir({ prefix: "loom-report-" });
  await main([...TINY, ...args, "--out", out], { print: false });
  return out;
}

async function checkInBrowser(
  chromium: string,
  file: string,
  want: Record<string, number>,
): Promise<Uint8Array> {
  const v = await visit<Drawn>(chromium, `file://${file}`, COUNT_DRAWN);
  assert.deepEqual(v.errors, [], "the page logged errors");
  assert.equal(v.value.count, Object.keys(want).length, "charts on the page");
  for (const [id, n] of Object.entries(want)) {
    const c = v.value.charts[id];
    assert.ok(c, `chart ${id} is on the page`);
    assert.ok(c.visible, `chart ${id} has a size`);
    assert.equal(c.declared, n, `chart ${id} declares the records' ${n} points`);
    assert.equal(c.drawn, n, `chart ${id} drew ${n} points`);
  }
  // A PNG of the whole page, of a real size.
  assert.deepEqual([...v.png.subarray(1, 4)], [0x50, 0x4e, 0x47]);
  const view = new DataView(v.png.buffer, v.png.byteOffset);
  assert.ok(view.getUint32(16) >= 800 && view.getUint32(20) >= 800, "screenshot size");
  assert.ok(v.png.length > 20_000, `a screenshot with content (${v.png.length} bytes)`);
  return v.png;
}

Deno.test("theoreticalBubble is (p-1)/(m+p-1), interleaved (p-1)/(v m+p-1); measuredBubble is the idle share", () => {
  assert.equal(theoreticalBubble(4, 8), 3 / 11);
  assert.equal(theoreticalBubble(4, 8, 2), 3 / 19);
  assert.equal(theoreticalBubble(1, 8), 0);
  const p: PipelineSnapshot = {
    schedule: "gpipe",
    pp: 2,
    virtual_stages: 1,
    micro_batches: 1,
    step: 1,
    stages: [
      { rank: 0, stage: 0, wall_ms: 4, entries: [["f", 0, 0, 0, 1], ["b", 0, 0, 3, 4]] },
      { rank: 1, stage: 1, wall_ms: 4, entries: [["f", 0, 0, 1, 2], ["b", 0, 0, 2, 3]] },
    ],
  };
  assert.equal(measuredBubble(p), 0.5);
});

Deno.test("renderReport draws the records' points and says why a chart is empty", () => {
  const steps: StepRecord[] = Array.from({ length: 7 }, (_, i) => ({
    step: i + 1,
    loss: 3 - i * 0.1,
    lr: 0.01,
    tokens_per_s: 1000 + i,
    tokens: 64 * (i + 1),
    grad_norm: 1,
  }));
  const evals: EvalRecord[] = [{ step: 7, kind: "eval", val_loss: 2.5 }];
  const run: ReportRun = { name: "r", steps, evals, ranks: null };
  const html = renderReport([run]);
  assert.deepEqual(declared(html), expectedPoints([run], false));
  assert.match(html, /no loss scaling: fp32 or bf16/);
  assert.match(html, /one pipeline stage: no schedule to draw|no per-rank measurements yet/);
  assert.doesNotMatch(html, /https?:\/\//, "no network");
  assert.throws(() => renderReport([]), /at least one run/);
});

Deno.test("a resumed run's report continues its curves", async () => {
  const out = await train(["--steps", "12", "--eval-every", "6", "--stop-after", "6"]);
  const first = declared(await Deno.readTextFile(`${out}/report.html`));
  assert.equal(first["lr"], 6);
  await main(["--resume", out, "--backend", "cpu"], { print: false });
  const html = await Deno.readTextFile(`${out}/report.html`);
  const run = await readRun(out);
  assert.equal(run.steps.length, 12);
  assert.deepEqual(run.steps.map((s) => s.step), Array.from({ length: 12 }, (_, i) => i + 1));
  assert.deepEqual(declared(html), expectedPoints([run], false));
  // Tokens keep counting across the resume.
  assert.equal(run.steps[11]!.tokens, 12 * run.steps[0]!.tokens!);
  await Deno.remove(out, { recursive: true });
});

Deno.test("tools/report.ts refuses a directory that holds no run", async () => {
  const dir = await Deno.makeTempDir();
  const errors: string[] = [];
  const orig = console.error;
  console.error = (m: string) => errors.push(m);
  try {
    assert.equal(await reportMain([dir]), 2);
    assert.equal(await reportMain([]), 2);
  } finally {
    console.error = orig;
  }
  assert.match(errors[0]!, /metrics\.jsonl is missing: .* is not a run directory of train\.ts/);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("in a headless browser: the reports of a tp 2 x pp 2 run, a ZeRO-2 bf16 run, an fp16 run, and two runs overlaid draw every chart with the records' points and log no errors", async () => {
  const chromium = findChromium();
  if (chromium === null) {
    console.log("skipped: no chromium (Debian: apt-get install chromium)");
    return;
  }
  const common = ["--steps", "16", "--eval-every", "8"];
  const tppp = await train([...common, "--tp", "2", "--pp", "2"]);
  const zero = await train([...common, "--dp", "2", "--zero-stage", "2", "--precision", "bf16"]);
  const fp16 = await train([...common, "--precision", "fp16"]);
  try {
    const a = await readRun(tppp);
    assert.equal(a.ranks?.memory.length, 4);
    assert.equal(a.ranks?.pipeline?.stages.length, 2);
    assert.equal(a.ranks?.phases?.length, 4);
    assert.ok(
      a.ranks!.phases!.every((p) => p.steps === 16 && p.forward_ms > 0 && p.backward_ms > 0),
    );
    await checkInBrowser(chromium, `${tppp}/report.html`, expectedPoints([a], false));
    const b = await readRun(zero);
    assert.equal(b.ranks?.layout.zero_stage, 2);
    assert.equal(b.ranks?.layout.precision, "bf16");
    await checkInBrowser(chromium, `${zero}/report.html`, expectedPoints([b], false));
    const c = await readRun(fp16);
    assert.ok(c.steps.every((s) => (s.loss_scale ?? 0) > 0), "fp16 logs its loss scale");
    await checkInBrowser(chromium, `${fp16}/report.html`, expectedPoints([c], false));
    const both = `${zero}/both.html`;
    const log = console.log;
    console.log = () => {};
    try {
      assert.equal(await reportMain([zero, fp16, "--out", both]), 0);
    } finally {
      console.log = log;
    }
    await checkInBrowser(chromium, both, expectedPoints([b, c], true));
  } finally {
    for (const d of [tppp, zero, fp16]) await Deno.remove(d, { recursive: true });
  }
});

Deno.test("--dashboard serves the live report on loopback while the run trains, and the page updates itself", async () => {
  const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (probe.addr as Deno.NetAddr).port;
  probe.close();
  const out = await Deno.makeTempDir({ prefix: "loom-dash-" });
  // A long run, stopped (as by SIGINT) once the page has been seen to update.
  const stop = new Int32Array(new SharedArrayBuffer(4));
  const run = main(
    [
      ...TINY,
      "--steps",
      "100000",
      "--eval-every",
      "500",
      "--dashboard",
      String(port),
      "--out",
      out,
    ],
    { print: false, stop },
  );
  const url = `http://127.0.0.1:${port}/`;
  const lrPoints = async () => {
    const r = await fetch(url);
    const html = await r.text();
    return r.ok ? declared(html)["lr"] ?? -1 : -1;
  };
  try {
    let first = -1;
    for (let i = 0; i < 200 && first <= 0; i++) {
      first = await lrPoints().catch(() => -1);
      if (first <= 0) await new Promise((r) => setTimeout(r, 25));
    }
    assert.ok(first > 0, "the dashboard answered with logged steps");
    const chromium = findChromium();
    if (chromium !== null) {
      // The open page fetches itself again and swaps in the newer charts.
      const v = await visit<{ updates: number; charts: number }>(
        chromium,
        url,
        `new Promise((done) => {
          const t0 = Date.now();
          const poll = () => {
            const u = Number(document.body.dataset.updates ?? 0);
            if (u >= 1 || Date.now() - t0 > 15000) {
              done({ updates: u, charts: Number(document.body.dataset.charts) });
            } else setTimeout(poll, 100);
          };
          poll();
        })`,
      );
      assert.deepEqual(v.errors, []);
      assert.ok(v.value.updates >= 1, "the live page updated itself");
      assert.equal(v.value.charts, 11);
    }
    const later = await lrPoints();
    assert.ok(later > first, `the served curves grow (${first} then ${later} steps)`);
  } finally {
    Atomics.store(stop, 0, 1);
    await run;
  }
  const summary = JSON.parse(await Deno.readTextFile(`${out}/summary.json`));
  assert.equal(summary.stopped_by, "SIGINT");
  const report = declared(await Deno.readTextFile(`${out}/report.html`));
  assert.equal(report["lr"], summary.steps, "the last report has every step");
  await assert.rejects(fetch(url), "the dashboard closes with the run");
  await Deno.remove(out, { recursive: true });
});
