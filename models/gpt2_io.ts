/**
 * GPT-2 weight interchange: load weights named and laid out as GPT-2 / Hugging Face store them
 * (`wte`, `wpe`, `h.{i}.attn.c_attn.weight` `[C, 3C]`, ..., `ln_f.*`, linear weights
 * `[in, out]`) into a {@linkcode Gpt}, and export a Gpt the same way. Since Loom keeps the same
 * names and layout, both directions are copies.
 *
 * @module
 */

import type { Backend } from "../kernels/mod.ts";
import type { GptConfig } from "./config.ts";
import { Gpt, type GptOptions } from "./gpt.ts";
import {
  readSafetensors,
  type SafetensorsEntry,
  type SafetensorsFile,
  type SafetensorsInput,
  toFloat32,
  writeSafetensors,
} from "./safetensors.ts";

/** Options of {@linkcode importGpt2}. */
export interface Gpt2ImportOptions {
  /** Reject tensors the model does not have (default true); buffers like `attn.bias` are skipped. */
  strict?: boolean;
}

// Hugging Face checkpoints prefix names with "transformer." and may carry the causal-mask
// buffers "h.{i}.attn.bias" / "h.{i}.attn.masked_bias", which are not parameters.
function canonical(name: string): string | null {
  const n = name.startsWith("transformer.") ? name.slice("transformer.".length) : name;
  if (/^h\.\d+\.attn\.(masked_)?bias$/.test(n)) return null;
  return n;
}

function entryOf(file: SafetensorsFile, name: string): SafetensorsEntry | undefined {
  return file.tensors.get(name) ?? file.tensors.get(`transformer.${name}`);
}

function shapeOf(file: SafetensorsFile, name: string): readonly number[] | undefined {
  return entryOf(file, name)?.shape;
}

// A stored head is tied when it is absent or holds exactly the token embedding.
function headIsTied(file: SafetensorsFile): boolean {
  const head = entryOf(file, "lm_head.weight");
  if (!head) return true;
  const wte = entryOf(file, "wte");
  if (!wte || wte.dtype !== head.dtype || wte.bytes.length !== head.bytes.length) return false;
  for (let i = 0; i < wte.bytes.length; i++) if (wte.bytes[i] !== head.bytes[i]) return false;
  return true;
}

/**
 * Infer a GPT configuration from GPT-2 weights. The number of heads is not in the shapes: it
 * comes from `heads`, else from the file's metadata (`heads` or `n_head`).
 *
 * @param file the weights
 * @param heads the number of attention heads
 * @returns the configuration
 * @throws {TypeError} when `wte`, `wpe` or the blocks are missing, or heads are unknown
 */
export function gpt2Config(file: SafetensorsFile, heads?: number): GptConfig {
  const wte = shapeOf(file, "wte");
  const wpe = shapeOf(file, "wpe");
  if (!wte || wte.length !== 2 || !wpe || wpe.length !== 2) {
    throw new TypeError("GPT-2 weights need 2-D tensors wte [V, C] and wpe [ctx, C]");
  }
  let layers = 0;
  while (shapeOf(file, `h.${layers}.ln_1.weight`)) layers++;
  const fc = shapeOf(file, "h.0.mlp.c_fc.weight");
  const h = heads ?? Number(file.metadata.heads ?? file.metadata.n_head);
  if (!Number.isInteger(h) || h < 1) {
    throw new TypeError(
      "The number of heads is not stored in GPT-2 weights: pass it (GPT-2 small has 12)",
    );
  }
  return {
    vocab: wte[0],
    ctx: wpe[0],
    dim: wte[1],
    layers,
    heads: h,
    tied: headIsTied(file),
    ...(fc && fc[1] !== 4 * wte[1] ? { hidden: fc[1] } : {}),
  };
}

/**
 * Copy GPT-2 weights into a model. Accepts names with or without Hugging Face's
 * `transformer.` prefix. A tied model accepts a stored `lm_head.weight` only when it equals
 * `wte` (strict) or ignores it (not strict); an untied model without one in the file starts
 * its head from `wte`.
 *
 * @param model the model to fill
 * @param file the weights (F32, F16, BF16 or F64)
 * @param opts strictness about extra tensors
 * @throws {TypeError} when a tensor has another shape than the model's (both are named)
 * @throws {RangeError} when a tensor is missing, or (strict) the file has one the model lacks
 */
export function importGpt2(model: Gpt, file: SafetensorsFile, opts: Gpt2ImportOptions = {}): void {
  const byName = new Map<string, Float32Array>();
  const stored = new Map<string, string>();
  for (const name of file.tensors.keys()) {
    const c = canonical(name);
    if (c !== null) stored.set(c, name);
  }
  const layout = model.layout;
  for (const slot of layout.slots) {
    let src = stored.get(slot.name);
    if (!src && slot.name === "lm_head.weight") src = stored.get("wte");
    if (!src) {
      throw new RangeError(
        `The GPT-2 weights lack "${slot.name}" [${slot.shape}]: is the file for a model with ` +
          `${model.config.layers} layers?`,
      );
    }
    const e = file.tensors.get(src)!;
    if (e.shape.join() !== slot.shape.join()) {
      throw new TypeError(
        `Tensor "${src}" has shape [${e.shape}] in the file but the model needs [${slot.shape}]`,
      );
    }
    byName.set(slot.name, toFloat32(e));
  }
  if ((opts.strict ?? true) && model.config.tied && !headIsTied(file)) {
    throw new RangeError(
      "The GPT-2 weights have an lm_head.weight that differs from wte, but the model ties " +
        "them: build it with tied: false (or import with strict: false to drop the head)",
    );
  }
  if (opts.strict ?? true) {
    const extra = [...stored.keys()].filter((n) =>
      !byName.has(n) && !(n === "lm_head.weight" && model.config.tied)
    );
    if (extra.length > 0) {
      throw new RangeError(
        `The GPT-2 weights have tensors the model does not: ${extra.slice(0, 5).join(", ")}` +
          `${
            extra.length > 5 ? ", ..." : ""
          } (check layers and tied, or import with strict: false)`,
      );
    }
  }
  model.setParams(byName);
}

/**
 * The model's parameters as GPT-2 tensors (F32), ready for {@linkcode writeSafetensors}.
 *
 * @param model the model
 * @returns name to tensor, in GPT-2 order
 */
export async function exportGpt2(model: Gpt): Promise<Map<string, SafetensorsInput>> {
  const out = new Map<string, SafetensorsInput>();
  const values = await model.getParams();
  for (const slot of model.layout.slots) {
    out.set(slot.name, { shape: slot.shape, data: values.get(slot.name)! });
  }
  return out;
}

/**
 * Read a GPT-2 safetensors file into a model.
 *
 * @param model the model to fill
 * @param path the file
 * @param opts strictness about extra tensors
 */
export async function loadGpt2(
  model: Gpt,
  path: string | URL,
  opts: Gpt2ImportOptions = {},
): Promise<void> {
  importGpt2(model, await readSafetensors(path), opts);
}

/**
 * Build a model from a GPT-2 safetensors file: its shape inferred from the tensors, its
 * parameters copied from them.
 *
 * @param backend the backend
 * @param path the file
 * @param heads attention heads (default: from the file's metadata)
 * @param opts model options (the seed is ignored: the file gives every parameter)
 * @returns the model
 */
export async function loadGpt2Model(
  backend: Backend,
  path: string | URL,
  heads?: number,
  opts: GptOptions = {},
): Promise<Gpt> {
  const file = await readSafetensors(path);
  const model = new Gpt(backend, gpt2Config(file, heads), { ...opts, seed: null });
  importGpt2(model, file);
  return model;
}

/**
 * Write a model as a GPT-2 safetensors file, with its shape in the metadata.
 *
 * @param model the model
 * @param path the file
 */
export async function saveGpt2(model: Gpt, path: string | URL): Promise<void> {
  const c = model.config;
  await writeSafetensors(path, await exportGpt2(model), {
    format: "pt",
    vocab: String(c.vocab),
    ctx: String(c.ctx),
    dim: String(c.dim),
    layers: String(c.layers),
    heads: String(c.heads),
    n_head: String(c.heads),
  });
}
