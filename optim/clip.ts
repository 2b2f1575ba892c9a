/**
 * Gradient clipping by global norm: one sum-of-squares reduction over the flat gradient buffer,
 * one readback, one scale.
 *
 * @module
 */
import type { Backend, Tensor } from "../kernels/backend.ts";

/**
 * The squared L2 norm of the first `n` elements of `grads` (one readback).
 *
 * @param backend the backend
 * @param grads the gradient buffer
 * @param n number of elements (default: all)
 * @param scratch optional one-element f32 tensor reused across calls
 * @returns the sum of squares (Infinity or NaN when a gradient overflowed)
 */
export async function sumOfSquares(
  backend: Backend,
  grads: Tensor,
  n: number = grads.length,
  scratch?: Tensor,
): Promise<number> {
  const out = scratch ?? backend.alloc(1);
  backend.sumSquares(out, grads, n);
  const host = await backend.read(out);
  return host[0];
}

/**
 * The factor that brings a gradient of norm `norm` down to at most `maxNorm`: 1 when it is
 * already within, `maxNorm / norm` otherwise (PyTorch's `clip_grad_norm_` without its epsilon).
 *
 * @param norm the global gradient norm
 * @param maxNorm the clipping threshold (0 or Infinity: no clipping)
 * @returns the factor in (0, 1]
 */
export function clipFactor(norm: number, maxNorm: number): number {
  if (!(maxNorm > 0) || !Number.isFinite(maxNorm) || !(norm > maxNorm)) return 1;
  return maxNorm / norm;
}

/**
 * Scale the gradients so that their global L2 norm is at most `maxNorm`.
 *
 * @example
 * ```ts
 * import { clipGradNorm } from "./clip.ts";
 * import { createReferenceBackend } from "../kernels/reference.ts";
 * const backend = createReferenceBackend();
 * const grads = backend.alloc(2);
 * backend.write(grads, new Float32Array([3, 4]));
 * const normBefore = await clipGradNorm(backend, grads, 1.0);
 * console.assert(Math.abs(normBefore - 5) < 1e-6);
 * ```
 *
 * @param backend the backend
 * @param grads the flat gradient buffer
 * @param maxNorm the threshold
 * @param n number of elements (default: all)
 * @param scratch optional one-element f32 tensor reused across calls
 * @returns the global norm before clipping
 */
export async function clipGradNorm(
  backend: Backend,
  grads: Tensor,
  maxNorm: number,
  n: number = grads.length,
  scratch?: Tensor,
): Promise<number> {
  if (!(maxNorm > 0)) {
    throw new RangeError(`maxNorm must be > 0, got ${maxNorm}: pass Infinity to not clip`);
  }
  const norm = Math.sqrt(await sumOfSquares(backend, grads, n, scratch));
  const f = clipFactor(norm, maxNorm);
  if (f !== 1) backend.scale(grads, f, n);
  return norm;
}
