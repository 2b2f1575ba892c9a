/**
 * Peak memory of a whole training process by layout: each layout trains train.ts's default task
 * (at the width and depth given) for a few steps in a child process, every rank a Worker of it,
 * which reports its peak resident set (Linux's `VmHWM`, every rank included) and what each
 * rank's engine measured from its allocations.
 * The one-rank run of the same model is the baseline: with ZeRO-3 over dp ranks the process
 * should hold about what one rank holds, not dp times it.
 *
 * ```sh
 * deno run -A bench/memory.ts                  # the 25M-parameter GPT (--dim 512 --layers 8)
 * deno run -A bench/memory.ts --dim 256 --json # another width; JSON lines
 * ```
 *
 * Linux only (it reads /proc/self/status).
 *
 * @module
 */
import { parseArgs } from "node:util";
import type { EngineConfig, RankMemory } from "../engine/mod.ts";
import type { MemoryRun } from "./_memory_child.ts";
import { runChild } from "./_child.ts";

const LAYOUTS: [string, Partial<EngineConfig>][] = [
  ["one rank", {}],
  ["dp 4, ZeRO 0", { data_parallel_size: 4 }],
  ["dp 4, ZeRO 1", { data_parallel_size: 4, zero_optimization: { stage: 1 } }],
  ["dp 4, ZeRO 2", { data_parallel_size: 4, zero_optimization: { stage: 2 } }],
  ["dp 4, ZeRO 3", { data_parallel_size: 4, zero_optimization: { stage: 3 } }],
  ["tp 2", { tensor_model_parallel_size: 2 }],
  ["tp 2 x pp 2", {
    tensor_model_parallel_size: 2,
    pipeline_model_parallel_size: 2,
    gradient_accumulation_steps: 8,
  }],
];

interface Row {
  layout: string;
  peak_rss_bytes: number;
  peak_rss_vs_one_rank: number;
  per_rank_total_bytes: number[];
}

async function child(run: MemoryRun): Promise<{ rss: number; perRank: RankMemory[] }> {
  const out = await runChild<{ vmhwm_kib: number; perRank: RankMemory[] }>(
    new URL("./_memory_child.ts", import.meta.url),
    [JSON.stringify(run)],
    JSON.stringify(run.config),
  );
  return { rss: out.vmhwm_kib * 1024, perRank: out.perRank };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      dim: { type: "string", default: "512" },
      layers: { type: "string", default: "8" },
      steps: { type: "string", default: "3" },
      json: { type: "boolean", default: false },
      help: { type: "boolean", default: false },
    },
    strict: true,
  });
  if (values.help) {
    console.log("Usage: deno run -A bench/memory.ts [--dim 512] [--layers 8] [--steps 3] [--json]");
    return;
  }
  // train.ts's default recipe at another width and depth (vocabulary 12, ctx 11, 8 heads).
  const model = {
    vocab: 12,
    ctx: 11,
    dim: Number(values.dim),
    layers: Number(values.layers),
    heads: 8,
  };
  const rows: Row[] = [];
  let base = 0;
  for (const [layout, extra] of LAYOUTS) {
    const config: EngineConfig = {
      model,
      train_batch_size: 128,
      gradient_clipping: 1,
      optimizer: { type: "AdamW", params: { lr: 1e-3, betas: [0.9, 0.98], weight_decay: 0.1 } },
      ...extra,
    };
    const r = await child({ config, steps: Number(values.steps) });
    if (base === 0) base = r.rss;
    const row = {
      layout,
      peak_rss_bytes: r.rss,
      peak_rss_vs_one_rank: Math.round((r.rss / base) * 100) / 100,
      per_rank_total_bytes: r.perRank.map((m) => m.total_bytes),
    };
    rows.push(row);
    if (values.json) console.log(JSON.stringify(row));
  }
  if (!values.json) {
    const mib = (b: number) => (b / 2 ** 20).toFixed(0).padStart(6);
    console.log(`GPT --dim ${values.dim} --layers ${values.layers}, ${values.steps} steps`);
    console.log("layout            peak RSS MiB   vs one rank   engine's total per rank (MiB)");
    for (const r of rows) {
      console.log(
        `${r.layout.padEnd(18)}${mib(r.peak_rss_bytes)}         ${
          r.peak_rss_vs_one_rank.toFixed(2).padStart(5)
        }   ${r.per_rank_total_bytes.map((b) => mib(b).trim()).join(", ")}`,
      );
    }
  }
}

if (import.meta.main) await main();
