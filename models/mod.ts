/**
 * Models: THE GPT, assembled from the tensor-parallel layers of `parallel/` (one rank and the
 * whole model is the serial case), its parameter store, deterministic initialisation, the
 * safetensors format, and GPT-2 weight interchange.
 *
 * @example Build a small GPT and take its loss on one batch
 * ```ts
 * import { createReferenceBackend } from "../kernels/mod.ts";
 * import { Gpt } from "./mod.ts";
 * const be = createReferenceBackend();
 * const gpt = new Gpt(be, { vocab: 10, ctx: 4, dim: 8, layers: 1, heads: 2 }, { seed: 1 });
 * const loss = await gpt.forward(new Int32Array([1, 2, 3, 4]), new Int32Array([2, 3, 4, 5]), 1, 4);
 * console.assert(Math.abs((await be.read(loss))[0] - Math.log(10)) < 0.1);
 * ```
 *
 * @module
 */
export * from "./config.ts";
export * from "./init.ts";
export * from "./params.ts";
export * from "./gpt.ts";
export * from "./safetensors.ts";
export * from "./gpt2_io.ts";
