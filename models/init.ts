/**
 * Deterministic initialisation as each layer declares it (GPT-2's: weights normal(0, 0.02),
 * the residual projections normal(0, 0.02 / sqrt(2 * layers)), biases 0, layernorm weights 1).
 * Each tensor draws from its own generator seeded by (seed, name), so any rank can initialise
 * exactly its own parameters (or its slice of one) without the others.
 *
 * @module
 */

import { Rng } from "../kernels/mod.ts";
import type { ParamSpec } from "../optim/mod.ts";
import { shardTensor } from "../parallel/mod.ts";

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
 * The initial value of a parameter, full (serial) size, drawn as its spec says (`init`:
 * zeros, ones, or normal with a standard deviation; default normal(0, 0.02)).
 *
 * @example
 * ```ts
 * import { initialValue } from "./init.ts";
 * const w = initialValue({ name: "h.0.ln_1.weight", shape: [4], init: { kind: "ones" } }, 1);
 * console.assert(w.every((v) => v === 1));
 * ```
 *
 * @param spec the parameter's name, serial shape (`full`, else `shape`) and initialisation
 * @param seed the run's seed
 * @returns a new array of the parameter's serial size
 */
export function initialValue(spec: ParamSpec, seed: number): Float32Array {
  const shape = spec.full ?? spec.shape;
  const out = new Float32Array(shape.reduce((a, b) => a * b, 1));
  const init = spec.init ?? { kind: "normal", std: 0.02 };
  if (init.kind === "zeros") return out;
  if (init.kind === "ones") return out.fill(1);
  return new Rng(tensorSeed(seed, spec.name)).fillNormal(out, 0, init.std);
}

/**
 * This rank's piece of a parameter's initial value: the slice of the serial tensor that its
 * split names, so that every layout starts from the same model.
 *
 * @param spec the parameter (with its split, if any)
 * @param seed the run's seed
 * @returns a new array of this rank's size of the parameter
 */
export function initialPiece(spec: ParamSpec, seed: number): Float32Array {
  return shardTensor(initialValue(spec, seed), spec.full ?? spec.shape, spec.split);
}
