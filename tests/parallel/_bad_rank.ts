// Rank side of the engine's input checks: each bad layout must fail before any collective.

import type { Communicator } from "../../collectives/mod.ts";
import { type EngineConfig, initialize } from "../../engine/mod.ts";
import { createReferenceBackend } from "../../kernels/mod.ts";
import type { ScheduleName } from "../../parallel/mod.ts";

export async function main(comm: Communicator): Promise<string[]> {
  const model = { vocab: 16, ctx: 8, dim: 8, layers: 2, heads: 2 };
  const base: EngineConfig = {
    model,
    train_batch_size: 2,
    train_micro_batch_size_per_gpu: 1,
    tensor_model_parallel_size: 2,
  };
  const bad: [Partial<EngineConfig>, { seqLen?: number; schedule?: ScheduleName }][] = [
    [{ model: { ...model, vocab: 15 } }, {}],
    [{ model: { ...model, heads: 1 } }, {}],
    [{
      pipeline_model_parallel_size: 2,
      tensor_model_parallel_size: 1,
      virtual_pipeline_model_parallel_size: 2,
    }, {}],
    [{ sequence_parallel: true }, { seqLen: 7 }],
    [{ tensor_model_parallel_size: 3 }, {}],
    [{ pipeline_model_parallel_size: 2, tensor_model_parallel_size: 1 }, {
      schedule: "interleaved",
    }],
    [{ pipeline_model_parallel_size: 2 }, {}],
  ];
  const out: string[] = [];
  for (const [b, o] of bad) {
    try {
      await initialize({ ...base, ...b }, { world: comm, backend: createReferenceBackend(), ...o });
      out.push("no error");
    } catch (e) {
      out.push(`${(e as Error).name}: ${(e as Error).message}`);
    }
  }
  return out;
}
