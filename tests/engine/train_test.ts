import assert from "node:assert/strict";
import {
  type EvalRecord,
  listCheckpoints,
  readCheckpointConfig,
  readMetrics,
  shardFileName,
  type StepRecord,
  threadsPerRank,
} from "../../engine/mod.ts";
import { helpText, main, parseTrainArgs } from "../../train.ts";

const tiny = ["--digits", "2", "--dim", "32", "--layers", "1", "--heads", "2", "--batch", "32"];
const cpu = ["--backend", "cpu", "--threads", "1"];

Deno.test("train.ts trains a tiny model and writes metrics, summary and checkpoint", async () => {
  const out = await Deno.makeTempDir();
  const s = await main([...tiny, ...cpu, "--steps", "60", "--eval-every", "30", "--out", out], {
    print: false,
  });
  assert.ok(s);
  assert.equal(s.steps, 60);
  assert.equal(s.heldout?.total, 1000);
  assert.ok(s.val_loss !== null && s.val_loss < 2.2, `val loss ${s.val_loss}`);
  const lines = await readMetrics(`${out}/metrics.jsonl`);
  const steps = lines.filter((l) => !("kind" in l)) as StepRecord[];
  assert.equal(steps.length, 60);
  for (const k of ["step", "loss", "lr", "tokens_per_s"]) assert.ok(k in steps[0]);
  // Each step's wall time, and the window's rate agrees with the last 20 of them.
  assert.ok(steps.every((r) => r.step_wall_ms! > 0), "every step has its wall time");
  const last20 = steps.slice(-20).reduce((a, r) => a + r.step_wall_ms!, 0);
  const rate = (steps[59].tokens! - steps[39].tokens!) / (last20 / 1000);
  assert.ok(
    Math.abs(rate / steps[59].tokens_per_s - 1) < 0.02,
    `${rate} vs ${steps[59].tokens_per_s}`,
  );
  assert.ok(steps[59].loss < steps[0].loss, "the loss goes down");
  const evals = lines.filter((l) => "kind" in l) as EvalRecord[];
  assert.equal(evals.length, 2);
  assert.ok(evals.every((e) => e.eval_s! > 0), "every evaluation has its seconds");
  const summary = JSON.parse(await Deno.readTextFile(`${out}/summary.json`));
  for (
    const k of [
      "train_loss",
      "val_loss",
      "heldout",
      "tokens_per_s",
      "wall_time_s",
      "params",
      "backend",
    ]
  ) {
    assert.ok(k in summary, `summary has ${k}`);
  }
  assert.equal(await Deno.readTextFile(`${out}/latest`), "checkpoints/step-00000060\n");
  await Deno.stat(`${out}/checkpoints/step-00000060/${shardFileName(0)}`);
  const cfg = (await readCheckpointConfig(out)) as { engine: { train_batch_size: number } };
  assert.equal(cfg.engine.train_batch_size, 32);
  await Deno.remove(out, { recursive: true });
});

Deno.test("--config sets DeepSpeed keys such as fp16 loss scaling over the flags", async () => {
  const out = await Deno.makeTempDir();
  const cfg = `${out}/ds.json`;
  await Deno.writeTextFile(
    cfg,
    JSON.stringify({ fp16: { enabled: true, initial_scale_power: 8 }, gradient_clipping: 0.5 }),
  );
  const s = await main([...tiny, ...cpu, "--steps", "5", "--config", cfg, "--out", out], {
    print: false,
  });
  assert.equal(s?.steps, 5);
  const saved = (await readCheckpointConfig(out)) as { engine: Record<string, unknown> };
  assert.deepEqual(saved.engine.fp16, { enabled: true, initial_scale_power: 8 });
  assert.equal(saved.engine.gradient_clipping, 0.5);
  await Deno.remove(out, { recursive: true });
});

Deno.test("a run stopped half way and resumed has the same loss curve as a straight run", async () => {
  const text = await Deno.makeTempFile({ suffix: ".txt" });
  await Deno.writeTextFile(
    text,
    "It was the best of times, it was the worst of times. ".repeat(30),
  );
  const args = [
    ...cpu,
    "--data",
    text,
    "--ctx",
    "16",
    "--dim",
    "32",
    "--layers",
    "1",
    "--heads",
    "2",
  ];
  const run = [...args, "--batch", "8", "--accum", "2", "--steps", "12", "--warmup", "3"];
  const a = await Deno.makeTempDir(), b = await Deno.makeTempDir();
  await main([...run, "--out", a], { print: false });
  await main([...run, "--out", b, "--stop-after", "6"], { print: false });
  // Lines a run wrote after its last checkpoint (before a crash) give way to the resumed run's.
  const stale = [7, 8].map((step) => JSON.stringify({ step, loss: 9, lr: 0, tokens_per_s: 0 }));
  await Deno.writeTextFile(`${b}/metrics.jsonl`, stale.join("\n") + "\n", { append: true });
  await main(["--resume", b, ...cpu], { print: false });
  const curve = async (dir: string) =>
    (await readMetrics(`${dir}/metrics.jsonl`)).filter((l) => !("kind" in l)).map((
      l,
    ) => [l.step, (l as StepRecord).loss, (l as StepRecord).lr]);
  const straight = await curve(a), resumed = await curve(b);
  assert.equal(straight.length, 12);
  assert.deepEqual(resumed, straight);
  await assert.rejects(
    () => main(["--resume", b, "--dim", "64", ...cpu], { print: false }),
    /--dim 64 differs from the checkpoint/,
  );
  await assert.rejects(
    () => main(["--resume", b, ...cpu], { print: false }),
    /already took 12 steps: raise --steps/,
  );
  // Every checkpoint of the run damaged: the resume names the files and loads nothing.
  for (const c of await listCheckpoints(b)) {
    const shard = `${c.path}/${shardFileName(0)}`;
    await Deno.writeFile(shard, (await Deno.readFile(shard)).subarray(0, 1000));
  }
  const warn = console.warn;
  console.warn = () => {};
  try {
    await assert.rejects(
      () => main(["--resume", b, "--steps", "20", ...cpu], { print: false }),
      /No intact checkpoint .*rank-00000\.safetensors is 1000 bytes/,
    );
  } finally {
    console.warn = warn;
  }
  for (const d of [a, b]) await Deno.remove(d, { recursive: true });
  await Deno.remove(text);
});

Deno.test("train.ts rejects bad input with a clear message before any work", async () => {
  const bad = (argv: string[], re: RegExp) =>
    assert.rejects(() => main([...cpu, ...argv], { print: false }), re);
  await bad(["--lerning-rate", "1"], /Unknown option '--lerning-rate'.*--help/);
  await bad(["--steps", "ten"], /--steps expects an integer, got "ten"/);
  await bad(["--lr", "fast"], /--lr expects a number/);
  await bad(["--backend", "tpu"], /--backend must be one of auto, cpu, webgpu/);
  await bad(["--dim", "30", "--heads", "4"], /--dim 30 must be a multiple of --heads 4/);
  await bad(["--data", "/nonexistent/loom.txt"], /does not exist/);
  const empty = await Deno.makeTempFile();
  await bad(["--data", empty], /is empty/);
  const short = await Deno.makeTempFile();
  await Deno.writeTextFile(short, "short text");
  await bad(["--data", short, "--ctx", "64"], /too few for a sequence length of 64/);
  await bad(["--ctx", "5"], /needs --ctx of at least 11/);
  await bad(["--dim", "8192", "--layers", "48", "--heads", "64"], /GiB of memory is available/);
  await bad(["--resume", empty], /No checkpoint/);
  await bad(["stray"], /Unexpected argument 'stray'/);
  const cfg = await Deno.makeTempFile({ suffix: ".json" });
  await Deno.writeTextFile(cfg, JSON.stringify({ gradient_clipping: "1" }));
  await bad(["--config", cfg], /--config .*"gradient_clipping" must be a number/);
  await Deno.writeTextFile(cfg, JSON.stringify({ zero_optmization: { stage: 2 } }));
  await bad(["--config", cfg], /Unknown config key "zero_optmization"/);
  const offload = { zero_optimization: { stage: 2, offload_optimizer: { device: "cpu" } } };
  await Deno.writeTextFile(cfg, JSON.stringify(offload));
  await bad(["--config", cfg], /offload_optimizer/);
  for (const p of [empty, short, cfg]) await Deno.remove(p);
  assert.throws(() => parseTrainArgs(["--batch", "10", "--accum", "3"]), /multiple of --accum/);
});

Deno.test("--help lists every option with its default", () => {
  const h = helpText();
  for (
    const flag of [
      "--dim",
      "--layers",
      "--heads",
      "--ctx",
      "--batch",
      "--steps",
      "--lr",
      "--schedule",
      "--warmup",
      "--seed",
      "--backend auto|cpu|webgpu",
      "--data",
      "--tokenizer char|gpt2",
      "--out",
      "--resume",
      "--eval-every",
    ]
  ) assert.ok(h.includes(flag), `--help mentions ${flag}`);
  assert.match(h, /--steps INT\s+total optimizer steps of the run \(default: 2500\)/);
});

Deno.test("by default one rank uses every core, and the ranks of one machine share them", async () => {
  assert.equal(threadsPerRank(1, 2), 2);
  assert.equal(threadsPerRank(2, 2), 1);
  assert.equal(threadsPerRank(4, 2), 1);
  assert.equal(threadsPerRank(2, 8), 4);
  assert.equal(threadsPerRank(3, 8), 2);
  const out = await Deno.makeTempDir();
  const s = await main(
    ["--dim", "16", "--layers", "1", "--heads", "2", "--steps", "2", "--backend", "cpu"]
      .concat(["--eval-every", "0", "--out", out]),
    { print: false },
  );
  const n = navigator.hardwareConcurrency;
  // BLAS threads (the WebAssembly path, without OpenBLAS, runs on one).
  if (s!.backend.includes("OpenBLAS")) assert.match(s!.backend, new RegExp(`, ${n} threads?$`));
  await Deno.remove(out, { recursive: true });
});

Deno.test("--temperature and --top-k sample the end-of-run text of a --data run, seeded; bad values are refused", async () => {
  const text = await Deno.makeTempFile({ suffix: ".txt" });
  await Deno.writeTextFile(text, "the quick brown fox jumps over the lazy dog. ".repeat(200));
  const run = async (extra: string[]) => {
    const out = await Deno.makeTempDir();
    const lines: string[] = [];
    const log = console.log;
    console.log = (m: string) => lines.push(String(m));
    try {
      await main(
        ["--data", text, "--dim", "16", "--layers", "1", "--heads", "2", "--ctx", "16"]
          .concat(["--steps", "8", "--eval-every", "0", "--out", out, "--quiet", ...extra]),
      );
    } finally {
      console.log = log;
      await Deno.remove(out, { recursive: true });
    }
    const at = lines.findIndex((l) => l.startsWith("sample ("));
    return [lines[at]!, lines[at + 1]!];
  };
  const [head, sample] = await run(["--temperature", "1.5", "--top-k", "4"]);
  assert.equal(head, "sample (temperature 1.5, top-k 4):");
  assert.deepEqual(await run(["--temperature", "1.5", "--top-k", "4"]), [head, sample]);
  assert.equal((await run([]))[0], "sample (greedy):");
  assert.throws(() => parseTrainArgs(["--temperature=-1"]), /--temperature must not be negative/);
  assert.throws(() => parseTrainArgs(["--top-k=-2"]), /--top-k must not be negative/);
  await Deno.remove(text);
});

Deno.test("a ZeRO-3 run over dp 2 decodes a one-row sample: the replica without a row still takes part in the gathers (of layers above the persistence threshold)", async () => {
  const text = await Deno.makeTempFile({ suffix: ".txt" });
  await Deno.writeTextFile(text, "the quick brown fox jumps over the lazy dog. ".repeat(200));
  const out = await Deno.makeTempDir();
  // Its ranks are Workers, which print to the process's stdout: run it as a process.
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL("../../train.ts", import.meta.url).pathname, "--data", text]
      .concat(["--dim", "192", "--layers", "1", "--heads", "2", "--ctx", "16", "--steps", "2"])
      .concat(["--eval-every", "0", "--dp", "2", "--zero-stage", "3", "--out", out]),
    stdout: "piped",
    stderr: "piped",
  }).output();
  await Deno.remove(out, { recursive: true });
  await Deno.remove(text);
  const stdout = new TextDecoder().decode(r.stdout);
  assert.equal(r.code, 0, new TextDecoder().decode(r.stderr));
  const lines = stdout.split("\n");
  const at = lines.indexOf("sample (greedy):");
  assert.ok(at >= 0, stdout);
  // The 16-character prompt, a bar, then 120 generated characters.
  assert.equal(lines[at + 1]!.split("|")[1]!.length, 120);
});
