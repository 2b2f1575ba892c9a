import assert from "node:assert/strict";
import {
  type EvalRecord,
  readCheckpointTensors,
  readMetrics,
  type StepRecord,
} from "../../engine/mod.ts";
import { main } from "../../train.ts";

// Tolerance, as in tests/parallel/gpt_equivalence_test.ts: float32 and another summation order
// (matmuls split by rows or columns, all-reduce order) move the first steps' values by about
// 1e-7 relative, which AdamW and clipping amplify a few times per step. A wrong slice or a
// misplaced micro-batch moves them by 1e-3 or more.
const LOSS_RTOL = 1e-5;
const NORM_RTOL = 5e-5;
const ATOL = 5e-5;

// 2-digit addition (8 tokens a sequence), 2 layers, 2 heads, vocabulary 12: splits over tp=2
// and pp=2 (x 2 virtual stages with 4 layers).
const tiny = [
  "--backend",
  "cpu",
  "--digits",
  "2",
  "--dim",
  "32",
  "--heads",
  "2",
  "--batch",
  "16",
  "--threads",
  "1",
  "--eval-every",
  "0",
];

interface Run {
  steps: StepRecord[];
  evals: EvalRecord[];
  params: Map<string, Float32Array>;
}

async function run(args: string[]): Promise<Run> {
  const out = await Deno.makeTempDir();
  try {
    await main([...tiny, ...args, "--out", out], { print: false });
    const records = await readMetrics(`${out}/metrics.jsonl`);
    const steps = records.filter((r) => !("kind" in r)) as StepRecord[];
    const evals = records.filter((r) => "kind" in r) as EvalRecord[];
    const params = await readCheckpointTensors(out);
    return { steps, evals, params };
  } finally {
    await Deno.remove(out, { recursive: true });
  }
}

function assertSameRun(got: Run, want: Run, what: string): void {
  assert.equal(got.steps.length, want.steps.length);
  got.steps.forEach((r, i) => {
    const w = want.steps[i]!;
    assert.equal(r.step, w.step);
    assert.ok(Math.abs(r.loss / w.loss - 1) < LOSS_RTOL, `${what} step ${r.step}: ${r.loss}`);
    assert.ok(
      Math.abs(r.grad_norm! / w.grad_norm! - 1) < NORM_RTOL,
      `${what} step ${r.step}: gradient norm ${r.grad_norm} vs ${w.grad_norm}`,
    );
  });
  // Evaluation runs through the parallel model (the replicas share its rows): the same scores.
  assert.equal(got.evals.length, want.evals.length);
  got.evals.forEach((e, i) => {
    const w = want.evals[i]!;
    assert.ok(
      Math.abs(e.val_loss! / w.val_loss! - 1) < LOSS_RTOL,
      `${what}: val loss ${e.val_loss}`,
    );
    assert.equal(e.heldout_accuracy, w.heldout_accuracy, `${what}: held-out score`);
  });
  assert.deepEqual([...got.params.keys()].sort(), [...want.params.keys()].sort());
  for (const [name, w] of want.params) {
    const g = got.params.get(name)!;
    let d = 0;
    for (let i = 0; i < w.length; i++) d = Math.max(d, Math.abs(g[i]! - w[i]!));
    assert.ok(d < ATOL, `${what}: ${name} differs by ${d}`);
  }
}

const serial = run(["--backend", "cpu", "--steps", "6"]);

Deno.test("train.ts --tp 2 --pp 2 on 4 Workers trains like one rank: losses, norms, checkpoint", async () => {
  const parallel = await run(["--tp", "2", "--pp", "2", "--steps", "6"]);
  const data = await run(["--dp", "2", "--zero-stage", "3", "--steps", "6"]);
  assertSameRun(data, await serial, "dp=2 ZeRO-3");
  assertSameRun(parallel, await serial, "tp=2 pp=2");
});

Deno.test("a run stopped on tp=2 x dp=2 with sequence parallelism continues on one rank like one rank", async () => {
  const out = await Deno.makeTempDir();
  try {
    const common = [...tiny, "--steps", "6", "--out", out];
    await main([...common, "--tp", "2", "--dp", "2", "--sequence-parallel", "--stop-after", "3"], {
      print: false,
    });
    const summary = JSON.parse(await Deno.readTextFile(`${out}/summary.json`));
    assert.deepEqual(summary.layout, {
      tp: 2,
      pp: 1,
      dp: 2,
      virtual_stages: 1,
      sequence_parallel: true,
      schedule: "none",
      micro_batches: 1,
      zero_stage: 0,
      precision: "fp32",
    });
    await main([...tiny, "--backend", "cpu", "--resume", out], { print: false });
    const steps = (await readMetrics(`${out}/metrics.jsonl`)).filter((r) =>
      !("kind" in r)
    ) as StepRecord[];
    const params = await readCheckpointTensors(out);
    const evals = (await readMetrics(`${out}/metrics.jsonl`)).filter((r) =>
      "kind" in r
    ) as EvalRecord[];
    assertSameRun({ steps, evals: evals.slice(-1), params }, {
      ...(await serial),
      evals: (await serial).evals.slice(-1),
    }, "tp=2 dp=2 sp, then one rank");
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});

Deno.test("train.ts refuses layouts that cannot work before it starts any rank", async () => {
  const bad = async (args: string[], re: RegExp) => {
    await assert.rejects(() => main([...tiny, "--steps", "2", ...args], { print: false }), re);
  };
  await bad(["--tp", "3"], /RangeError: Cannot split 2 attention heads across tp=3/);
  await bad(["--pp", "3"], /Cannot split 2 layers into pp=3 stages/);
  await bad(["--pp", "2", "--virtual-stages", "2"], /pp=2 stages x 2 virtual stages/);
  await bad(["--tp", "2", "--micro-batches", "3"], /--batch 16 does not split into 3 micro/);
  await bad(["--digits", "3", "--tp", "2", "--sequence-parallel"], /sequence of 11 tokens/);
  await bad(["--pp", "2", "--schedule", "interleaved"], /interleaved schedule needs/);
  await bad(["--tp", "2", "--backend", "webgpu"], /CPU backend/);
  await bad(["--schedule", "gpipe", "--pipeline-schedule", "1f1b"], /disagree/);
  const cfg = await Deno.makeTempFile({ suffix: ".json" });
  await Deno.writeTextFile(cfg, JSON.stringify({ tensor_model_parallel_size: 2 }));
  await bad(["--config", cfg], /give the layout with --tp, not as "tensor_model_parallel_size"/);
  await Deno.remove(cfg);
});
