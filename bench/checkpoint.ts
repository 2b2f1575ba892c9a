/**
 * Peak memory of a process while it saves and loads a checkpoint, beside its peak while it
 * trains, from the same run: each layout trains train.ts's default task (at the width and depth
 * given) for a few steps in a child process, every rank a Worker of it; the child reads its
 * peak resident set (Linux's `VmHWM`, every rank included) after training, resets it
 * (`/proc/self/clear_refs`), saves a checkpoint, reads the peak of the save, resets it again,
 * loads the checkpoint back and reads the peak of the load.
 *
 * ```sh
 * deno run -A bench/checkpoint.ts                  # the 25M-parameter GPT (--dim 512 --layers 8)
 * deno run -A bench/checkpoint.ts --dim 256 --json # another width; JSON lines
 * ```
 *
 * Linux only (it reads /proc/self/status).
 *
 * @module
 */
import { parseArgs } from "node:util";
import type { Communicator } from "../collectives/mod.ts";
import { AdditionTask, replicaShare } from "../data/mod.ts";
import { type EngineConfig, initialize } from "../engine/mod.ts";
import { createCpuBackend } from "../kernels/mod.ts";
import { onEveryRank, runChild } from "./_child.ts";

const LAYOUTS: [string, Partial<EngineConfig>][] = [
  ["one rank", {}],
  ["dp 4, ZeRO 3", { data_parallel_size: 4, zero_optimization: { stage: 3 } }],
  ["tp 2 x pp 2", {
    tensor_model_parallel_size: 2,
    pipeline_model_parallel_size: 2,
    gradient_accumulation_steps: 8,
  }],
];

interface ChildRun {
  config: EngineConfig;
  steps: number;
  dir: string;
}

interface Figures {
  train_peak_bytes: number;
  rss_before_save_bytes: number;
  save_peak_bytes: number;
  load_peak_bytes: number;
  save_s: number;
  load_s: number;
  checkpoint_bytes: number;
}

async function status(): Promise<{ hwm: number; rss: number }> {
  const s = await Deno.readTextFile("/proc/self/status");
  const kib = (k: string) => Number(s.split("\n").find((l) => l.startsWith(k))!.split(/\s+/)[1]);
  return { hwm: kib("VmHWM") * 1024, rss: kib("VmRSS") * 1024 };
}

async function resetPeak(): Promise<void> {
  await Deno.writeTextFile("/proc/self/clear_refs", "5");
}

async function dirBytes(dir: string): Promise<number> {
  let n = 0;
  for await (const e of Deno.readDir(dir)) {
    const p = `${dir}/${e.name}`;
    n += e.isDirectory ? await dirBytes(p) : (await Deno.stat(p)).size;
  }
  return n;
}

/** One rank: train, then save and load with the process's peak reset around each. */
export async function main(world: Communicator | undefined, run: ChildRun): Promise<Figures> {
  const engine = await initialize(run.config, {
    world,
    backend: createCpuBackend({ threads: 1 }),
    timeoutMs: 600_000,
  });
  const task = new AdditionTask({ digits: 3 });
  const src = task.trainBatches(engine.config.batchSize, 1);
  for (let i = 0; i < run.steps; i++) {
    await engine.trainBatch(replicaShare([src.next()], engine.groups.coords.dp, engine.layout.dp));
  }
  const lead = engine.isLeader;
  const sync = () => engine.world.barrier({ timeoutMs: 600_000 });
  await sync();
  const trained = await status();
  if (lead) await resetPeak();
  await sync();
  const t0 = performance.now();
  const ckpt = await engine.save(run.dir);
  const t1 = performance.now();
  await sync();
  const saved = await status();
  if (lead) await resetPeak();
  await sync();
  const t2 = performance.now();
  await engine.load(run.dir);
  const t3 = performance.now();
  await sync();
  const loaded = await status();
  return {
    train_peak_bytes: trained.hwm,
    rss_before_save_bytes: trained.rss,
    save_peak_bytes: saved.hwm,
    load_peak_bytes: loaded.hwm,
    save_s: (t1 - t0) / 1000,
    load_s: (t3 - t2) / 1000,
    checkpoint_bytes: lead ? await dirBytes(ckpt) : 0,
  };
}

function child(run: ChildRun): Promise<Figures> {
  return runChild(
    new URL(import.meta.url),
    ["--child", JSON.stringify(run)],
    JSON.stringify(run.config),
  );
}

async function parent(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      dim: { type: "string", default: "512" },
      layers: { type: "string", default: "8" },
      steps: { type: "string", default: "2" },
      json: { type: "boolean", default: false },
      help: { type: "boolean", default: false },
    },
    strict: true,
  });
  if (values.help) {
    console.log(
      "Usage: deno run -A bench/checkpoint.ts [--dim 512] [--layers 8] [--steps 2] [--json]",
    );
    return;
  }
  const model = {
    vocab: 12,
    ctx: 11,
    dim: Number(values.dim),
    layers: Number(values.layers),
    heads: 8,
  };
  const mib = (b: number) => (b / 2 ** 20).toFixed(0).padStart(7);
  if (!values.json) {
    console.log(
      `GPT --dim ${values.dim} --layers ${values.layers}, ${values.steps} steps, then save and load`,
    );
    console.log(
      "layout          train peak MiB  save peak MiB  (vs train)  load peak MiB  save s  load s  checkpoint MiB",
    );
  }
  for (const [layout, extra] of LAYOUTS) {
    const dir = await Deno.makeTempDir({ prefix: "loom-ckpt-bench-" });
    try {
      const config: EngineConfig = {
        model,
        train_batch_size: 128,
        gradient_clipping: 1,
        optimizer: { type: "AdamW", params: { lr: 1e-3, betas: [0.9, 0.98], weight_decay: 0.1 } },
        ...extra,
      };
      const f = await child({ config, steps: Number(values.steps), dir });
      const ratio = Math.round((f.save_peak_bytes / f.train_peak_bytes) * 1000) / 1000;
      if (values.json) console.log(JSON.stringify({ layout, ...f, save_vs_train: ratio }));
      else {
        console.log(
          `${layout.padEnd(16)}${mib(f.train_peak_bytes)}        ${mib(f.save_peak_bytes)}` +
            `      ${ratio.toFixed(3).padStart(6)}    ${mib(f.load_peak_bytes)}     ` +
            `${f.save_s.toFixed(2).padStart(5)}   ${f.load_s.toFixed(2).padStart(5)}   ` +
            `${mib(f.checkpoint_bytes)}`,
        );
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  }
}

if (import.meta.main) {
  const at = Deno.args.indexOf("--child");
  if (at < 0) await parent();
  else {
    const run: ChildRun = JSON.parse(Deno.args[at + 1]!);
    const figs = await onEveryRank(run.config, new URL(import.meta.url), run, main);
    console.log(JSON.stringify(figs[0]));
  }
}
