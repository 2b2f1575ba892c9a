/**
 * What every optimizer over a flat parameter buffer offers, so that the engine and checkpoints
 * can treat AdamW and SGD alike.
 *
 * @module
 */
import type { Backend, Tensor } from "../kernels/backend.ts";
import type { FlatLayout } from "./layout.ts";

/** An optimizer that updates one flat parameter buffer from the flat gradient buffer. */
export interface Optimizer {
  /** `"adamw"` or `"sgd"`. */
  readonly kind: string;
  /** Optimizer steps taken so far (AdamW's bias correction uses `steps + 1` for the next). */
  steps: number;
  /**
   * Update the parameters from the current gradients with learning rate `lr`; then
   * `steps` grows by one.
   */
  step(lr: number): void;
  /** The optimizer's state buffers by name (same layout as the parameters), for checkpoints. */
  stateTensors(): Record<string, Tensor>;
}

/**
 * An optimizer's element-wise update of one contiguous piece of the parameters, with its state
 * buffers: what AdamW and SGD share with ZeRO, which applies it to its shard piece by piece.
 */
export interface UpdateRule {
  /** `"adamw"` or `"sgd"`. */
  readonly kind: string;
  /** Names of the state buffers, each laid out like the parameters (AdamW: `m`, `v`). */
  readonly state: readonly string[];
  /**
   * Update `n` elements in place.
   *
   * @param be the backend
   * @param p the parameters (float32: the master weights)
   * @param g their gradients
   * @param state the state buffers' views, in `state` order
   * @param n elements
   * @param decay whether weight decay applies
   * @param lr the learning rate
   * @param t the 1-based number of this step
   */
  update(
    be: Backend,
    p: Tensor,
    g: Tensor,
    state: readonly Tensor[],
    n: number,
    decay: boolean,
    lr: number,
    t: number,
  ): void;
}

/** A run of the flat buffer whose parameters all share one weight-decay flag. */
export interface DecayRange {
  /** First element. */
  readonly offset: number;
  /** Number of elements. */
  readonly length: number;
  /** Whether weight decay applies to this range. */
  readonly decay: boolean;
}

/**
 * Merge a layout's slots into the fewest contiguous ranges of equal weight-decay flag. The
 * alignment gaps between slots hold zeros (parameters, gradients and moments alike), so they
 * are folded into the neighbouring range: an update leaves zeros as zeros.
 *
 * @example
 * ```ts
 * import { buildLayout } from "./layout.ts";
 * import { decayRanges } from "./optimizer.ts";
 * const layout = buildLayout([
 *   { name: "w1", shape: [2, 2] },
 *   { name: "w2", shape: [2, 2] },
 *   { name: "b", shape: [2] },
 * ]);
 * const r = decayRanges(layout);
 * console.assert(r.length === 2 && r[0].decay && !r[1].decay);
 * ```
 *
 * @param layout the parameter layout
 * @returns the ranges in buffer order
 */
export function decayRanges(layout: FlatLayout): DecayRange[] {
  const out: { offset: number; length: number; decay: boolean }[] = [];
  for (const s of layout.slots) {
    if (s.size === 0) continue;
    const last = out[out.length - 1];
    if (last && last.decay === s.decay) {
      last.length = s.offset + s.size - last.offset;
    } else {
      out.push({ offset: s.offset, length: s.size, decay: s.decay });
    }
  }
  return out;
}
