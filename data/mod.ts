/**
 * Data: tokenizers (character-level and GPT-2 BPE), any UTF-8 text file as a data set,
 * deterministic batches from a seed, and the embedded default task (multi-digit addition with
 * a held-out exact-match score).
 *
 * @example The default task
 * ```ts
 * import { AdditionTask } from "./mod.ts";
 * const task = new AdditionTask({ digits: 3 });
 * const batch = task.trainBatches(4, 0).next();
 * console.assert(batch.inputs.length === 4 * task.seqLen);
 * ```
 *
 * @module
 */
export * from "./tokenizers.ts";
export * from "./batches.ts";
export * from "./dataset.ts";
export * from "./text.ts";
export * from "./tasks.ts";
export * from "./share.ts";
