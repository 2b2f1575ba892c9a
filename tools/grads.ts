/**
 * Loss and gradients of a GPT-2 model on one batch, for comparing Loom with other
 * implementations.
 *
 * ```sh
 * deno run -A tools/grads.ts WEIGHTS.safetensors BATCH.json OUT.safetensors [--backend reference|cpu|webgpu]
 * ```
 *
 * BATCH.json is `{"config": {vocab, ctx, dim, layers, heads}, "inputs": [[...]], "targets":
 * [[...]]}`. OUT gets a 0-d tensor `loss` and the gradient of every weight under its GPT-2 name.
 *
 * @module
 */

import { type Backend, createCpuBackend, createReferenceBackend } from "../kernels/mod.ts";
import { createWebGPUBackend } from "../kernels/webgpu/mod.ts";
import {
  encodeSafetensors,
  Gpt,
  type GptConfig,
  importGpt2,
  readSafetensors,
  type SafetensorsFile,
  type SafetensorsInput,
} from "../models/mod.ts";

/** A batch in the fixture's JSON format. */
export interface GradsBatch {
  /** The model's shape. */
  config: GptConfig;
  /** Token ids, one row per sequence. */
  inputs: number[][];
  /** Next-token ids, same shape (a negative target is ignored). */
  targets: number[][];
}

function flatten(rows: unknown, what: string): { data: Int32Array; B: number; T: number } {
  if (!Array.isArray(rows) || rows.length === 0 || !Array.isArray(rows[0])) {
    throw new TypeError(`batch.${what} must be a non-empty array of rows of token ids`);
  }
  const B = rows.length;
  const T = (rows[0] as unknown[]).length;
  const data = new Int32Array(B * T);
  rows.forEach((r, b) => {
    if (!Array.isArray(r) || r.length !== T) {
      throw new TypeError(`batch.${what}[${b}] must have ${T} tokens like row 0`);
    }
    r.forEach((v, t) => {
      if (!Number.isInteger(v)) throw new TypeError(`batch.${what}[${b}][${t}] is not an integer`);
      data[b * T + t] = v;
    });
  });
  return { data, B, T };
}

/**
 * Run forward and backward of the GPT given by `weights` on `batch`.
 *
 * @param weights GPT-2 weights
 * @param batch the batch and the model's shape
 * @param backend the backend (default: the reference backend)
 * @returns `loss` (0-d) and the gradient of every weight, by GPT-2 name
 */
export async function computeGrads(
  weights: SafetensorsFile,
  batch: GradsBatch,
  backend: Backend = createReferenceBackend(),
): Promise<Map<string, SafetensorsInput>> {
  const inp = flatten(batch.inputs, "inputs");
  const tgt = flatten(batch.targets, "targets");
  if (inp.B !== tgt.B || inp.T !== tgt.T) {
    throw new TypeError(
      `batch.inputs is [${inp.B}, ${inp.T}] but batch.targets is [${tgt.B}, ${tgt.T}]`,
    );
  }
  const model = new Gpt(backend, batch.config, { seed: null });
  importGpt2(model, weights);
  const loss = await model.forward(inp.data, tgt.data, inp.B, inp.T);
  const lossValue = Float32Array.from(await backend.read(loss));
  model.zeroGrad();
  await model.backward();
  const out = new Map<string, SafetensorsInput>([["loss", { shape: [], data: lossValue }]]);
  const grads = await model.getGrads();
  for (const slot of model.layout.slots) {
    out.set(slot.name, { shape: slot.shape, data: grads.get(slot.name)! });
  }
  return out;
}

async function pickBackend(name: string): Promise<Backend> {
  if (name === "reference") return createReferenceBackend();
  if (name === "cpu") return createCpuBackend();
  if (name === "webgpu") {
    const be = await createWebGPUBackend();
    if (!be) throw new TypeError("No WebGPU adapter in this runtime: use --backend cpu");
    return be;
  }
  throw new TypeError(`Unknown --backend ${JSON.stringify(name)}: use reference, cpu or webgpu`);
}

async function main(args: string[]): Promise<number> {
  const pos: string[] = [];
  let backendName = "reference";
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === "--help" || a === "-h") {
      console.log(
        "usage: deno run -A tools/grads.ts WEIGHTS.safetensors BATCH.json OUT.safetensors " +
          "[--backend reference|cpu|webgpu]",
      );
      return 0;
    }
    if (a === "--backend") backendName = args[++i] ?? "";
    else if (a.startsWith("--backend=")) backendName = a.slice("--backend=".length);
    else if (a.startsWith("-")) throw new TypeError(`Unknown option ${a}: see --help`);
    else pos.push(a);
  }
  if (pos.length !== 3) {
    throw new TypeError(
      `Expected 3 paths (WEIGHTS.safetensors BATCH.json OUT.safetensors), got ${pos.length}`,
    );
  }
  const [weightsPath, batchPath, outPath] = pos;
  const weights = await readSafetensors(weightsPath);
  const batch = JSON.parse(await Deno.readTextFile(batchPath)) as GradsBatch;
  const backend = await pickBackend(backendName);
  try {
    const out = await computeGrads(weights, batch, backend);
    await Deno.writeFile(outPath, encodeSafetensors(out, { backend: backend.description }));
    const loss = (out.get("loss")!.data as Float32Array)[0];
    console.log(`loss ${loss} and ${out.size - 1} gradients written to ${outPath}`);
  } finally {
    backend.dispose();
  }
  return 0;
}

if (import.meta.main) {
  try {
    Deno.exit(await main(Deno.args));
  } catch (e) {
    console.error(`error: ${e instanceof Error ? e.message : e}`);
    Deno.exit(1);
  }
}
