/**
 * Deterministic GPT-2 style initialisation: weights normal(0, 0.02), the residual projections
 * (`attn.c_proj`, `mlp.c_proj`) normal(0, 0.02 / sqrt(2 * layers)), biases 0, layernorm
 * weights 1. Each tensor draws from its own generator seeded by (seed, name), so any rank can
 * initialise exactly its own parameters (or its slice of one) without the others.
 *
 * @module
 */

import { Rng } from "../kernels/mod.ts";
import type { ParamSpec } from "../optim/mod.ts";

function mix32(x: number): number {
  x = Math.imul(x ^ (x >>> 16), 0x7feb352d);
  x = Math.imul(x ^ (x >>> 15), 0x846ca68b);
  return (x ^ (x >>> 16)) >>> 0;
}

/**
 * The seed of one tensor's generator.
 *
 * @param seed the run's seed
 * @param name the parameter name
 * @returns a 32-bit seed
 */
export function tensorSeed(seed: number, name: string): number {
  let h = 0x811c9dc5 ^ mix32((seed >>> 0) ^ mix32(Math.floor(seed / 2 ** 32) >>> 0));
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193);
  return mix32(h >>> 0);
}

/**
 * The initial value of one GPT parameter, full size.
 *
 * @example
 * ```ts
 * import { initialValue } from "./init.ts";
 * const w = initialValue({ name: "h.0.ln_1.weight", shape: [4] }, 2, 1);
 * console.assert(w.every((v) => v === 1));
 * ```
 *
 * @param spec the parameter's name and shape
 * @param layers the number of blocks (scales the residual projections)
 * @param seed the run's seed
 * @returns a new array of the parameter's size
 */
export function initialValue(spec: ParamSpec, layers: number, seed: number): Float32Array {
  const n = spec.shape.reduce((a, b) => a * b, 1);
  const out = new Float32Array(n);
  const name = spec.name;
  if (name.endsWith(".bias")) return out;
  if (/(^|\.)ln_(1|2|f)\.weight$/.test(name)) return out.fill(1);
  const std = name.endsWith("c_proj.weight") ? 0.02 / Math.sqrt(2 * layers) : 0.02;
  return new Rng(tensorSeed(seed, name)).fillNormal(out, 0, std);
}
