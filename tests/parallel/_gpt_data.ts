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

// Tolerances of every equivalence test against the one-rank run. Everything is float32.
// Pipeline parallelism keeps the serial summation order inside every op, so it matches to a few
// ulps. Tensor parallelism adds the same products in another order (matmuls split by columns or
// rows, all-reduce and reduce-scatter order), which moves the first step's gradients by about
// 1e-7 relative; AdamW (update ~ g / sqrt(v)) and clipping amplify such differences a few times
// per step. For scale: two correct serial runs of this recipe, one on the reference backend and
// one on the CPU backend (another summation order), differ at step 5 by 6e-5 in the parameters
// and 4e-5 relative in the gradient norm; every tensor-parallel layout here (tp 2 or 4, with or
// without sequence parallelism, 3D) stays below 2.5e-5 in the parameters (pipeline-only layouts
// below 6e-6). Hence: parameters within 5e-5 absolute (they are of order 0.02..1), losses within
// 1e-5 relative, gradient norms within 5e-5 relative. A wrong slice, a missing all-reduce or a
// misplaced micro-batch moves values by 1e-3 or more.
/** Parameters: absolute tolerance after the last step. */
export const ATOL = 5e-5;
/** Losses: relative tolerance per step. */
export const LOSS_RTOL = 1e-5;
/** Gradient norms (before clipping): relative tolerance per step. */
export const NORM_RTOL = 5e-5;

/**
 * Global micro-batch `j` of optimizer step `step`: a deterministic token stream. Micro-batch 1
 * ignores one target position, unless `ignore` is false: a step's loss is the mean of the
 * micro-batches' means (DeepSpeed scales each micro-batch's loss by 1 / accumulation), which
 * equals the mean over a single batch of the same sequences only when every micro-batch counts
 * the same number of targets.
 */
export function microBatch(
  step: number,
  j: number,
  opts: { ignore?: boolean } = {},
): { inputs: Int32Array; targets: Int32Array } {
  const n = MICRO * T;
  const inputs = new Int32Array(n);
  const targets = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    const a = (step * 131 + j * 37 + i * 11 + ((i * i) >> 2)) % CFG.vocab;
    inputs[i] = a;
    targets[i] = (a * 3 + 1 + (i % 3)) % CFG.vocab;
  }
  if (j === 1 && (opts.ignore ?? true)) targets[3] = -1; // one ignored position
  return { inputs, targets };
}
