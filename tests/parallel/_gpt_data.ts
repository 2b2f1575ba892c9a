// Shared setup of the GPT equivalence tests: the model, the data and the training recipe that
// both the single-rank reference and every parallel layout run.

export const CFG = { vocab: 16, ctx: 8, dim: 16, layers: 4, heads: 4 };
export const SEED = 7;
export const T = 8;
/** Sequences per micro-batch. */
export const MICRO = 2;
/** Micro-batches per optimizer step, over all data-parallel ranks (global batch 8). */
export const MICROS = 4;
export const STEPS = 5;
export const LR = 1e-2;
export const WEIGHT_DECAY = 0.1;
/** Small enough that clipping scales every step's gradients. */
export const MAX_NORM = 0.5;

/** Global micro-batch `j` of optimizer step `step`: a deterministic token stream. */
export function microBatch(step: number, j: number): { inputs: Int32Array; targets: Int32Array } {
  const n = MICRO * T;
  const inputs = new Int32Array(n);
  const targets = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    const a = (step * 131 + j * 37 + i * 11 + ((i * i) >> 2)) % CFG.vocab;
    inputs[i] = a;
    targets[i] = (a * 3 + 1 + (i % 3)) % CFG.vocab;
  }
  if (j === 1) targets[3] = -1; // one ignored position
  return { inputs, targets };
}
