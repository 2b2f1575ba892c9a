/**
 * What tensor-parallel layers have in common: the step they are told about, where they find
 * their parameters, and how a rank's parameter is cut from the serial tensor. The shapes match
 * `models/`' layers, so a parallel layer can stand in for a serial one.
 *
 * With sequence parallelism, a layer between the parallel regions (layernorm, residual add)
 * sees only this rank's rows: the step then carries the LOCAL sequence share `T = T_full / tp`,
 * so that `B * T` is the number of rows this rank holds; the parallel layers multiply by tp
 * where they need the whole sequence.
 *
 * @module
 */

import type { Tensor } from "../kernels/mod.ts";
import type { ParamSpec } from "../optim/mod.ts";

/** What a layer is told about the pass it takes part in (the shape of `models/`' Step). */
export interface ParallelStep {
  /** Sequences in the micro-batch. */
  readonly B: number;
  /** Tokens per sequence (this rank's share with sequence parallelism). */
  readonly T: number;
  /** Which saved-activation set to use (a micro-batch in flight); default 0. */
  readonly slot?: number;
  /** Targets `[B*T_full]` (i32, negative = ignored), for the head. */
  readonly targets?: Tensor;
  /** How many targets are >= 0 (the loss is their mean). */
  readonly count?: number;
  /** Multiplies the loss gradient; default 1. */
  readonly gradScale?: number;
}

/** Where a layer finds its parameters and gradients, by name (this rank's shards). */
export interface ParamSource {
  /** The parameter tensor `name`. */
  value(name: string): Tensor;
  /** The gradient tensor of `name`. */
  grad(name: string): Tensor;
}

/** A layer with an explicit forward and backward (the shape of `models/`' Layer). */
export interface ParallelLayer {
  /** This rank's parameters, with this rank's (sharded) shapes. */
  readonly specs: readonly ParamSpec[];
  /** Compute the output and keep what backward needs. */
  forward(x: Tensor, step: ParallelStep): Promise<Tensor>;
  /** Add into the parameter gradients and return the input's gradient (`null` for token ids). */
  backward(dy: Tensor | null, step: ParallelStep): Promise<Tensor | null>;
}

/** How a serial parameter is cut across tensor-parallel ranks. */
export type ShardKind =
  /** Replicated: every rank holds all of it. */
  | { readonly kind: "replicate" }
  /** Split along the first dimension (rows of a [rows, ...] tensor). */
  | { readonly kind: "rows" }
  /**
   * Split along the last dimension; with `blocks` > 1 the columns are first cut into that many
   * equal blocks and each rank takes its part of every block (GPT-2's c_attn: q | k | v).
   */
  | { readonly kind: "columns"; readonly blocks?: number };

function check(what: string, n: number, parts: number): number {
  if (n % parts !== 0) {
    throw new RangeError(`Cannot split ${what} of ${n} into ${parts} equal parts`);
  }
  return n / parts;
}

/**
 * This rank's shard of a serial parameter.
 *
 * @example The q | k | v columns of a [2, 6] c_attn weight on rank 1 of 2
 * ```ts
 * import { shardTensor } from "./layer.ts";
 * const full = Float32Array.from({ length: 12 }, (_, i) => i);
 * const s = shardTensor(full, [2, 6], { kind: "columns", blocks: 3 }, 2, 1);
 * console.assert(s.join() === "1,3,5,7,9,11");
 * ```
 *
 * @param full the serial tensor, row-major
 * @param shape its shape
 * @param how how it is cut
 * @param size ranks in the tensor-parallel group
 * @param rank this rank
 * @returns a new array with this rank's shard
 */
export function shardTensor(
  full: Float32Array,
  shape: readonly number[],
  how: ShardKind,
  size: number,
  rank: number,
): Float32Array {
  if (how.kind === "replicate" || size === 1) return full.slice();
  if (how.kind === "rows") {
    const n = check("the first dimension", shape[0]!, size) * (full.length / shape[0]!);
    return full.slice(rank * n, (rank + 1) * n);
  }
  const cols = shape[shape.length - 1]!;
  const rows = full.length / cols;
  const blocks = how.blocks ?? 1;
  const blockCols = check("the columns", cols, blocks);
  const part = check("each column block", blockCols, size);
  const out = new Float32Array(rows * blocks * part);
  for (let r = 0; r < rows; r++) {
    for (let b = 0; b < blocks; b++) {
      const src = r * cols + b * blockCols + rank * part;
      out.set(full.subarray(src, src + part), (r * blocks + b) * part);
    }
  }
  return out;
}

/**
 * Put every rank's shard back together: the inverse of {@linkcode shardTensor}.
 *
 * @param shards one shard per rank, in rank order
 * @param shape the serial shape
 * @param how how it was cut
 * @returns the serial tensor
 */
export function unshardTensor(
  shards: readonly Float32Array[],
  shape: readonly number[],
  how: ShardKind,
): Float32Array {
  const size = shards.length;
  if (how.kind === "replicate" || size === 1) return shards[0]!.slice();
  const total = shape.reduce((a, b) => a * b, 1);
  const out = new Float32Array(total);
  if (how.kind === "rows") {
    shards.forEach((s, r) => out.set(s, r * s.length));
    return out;
  }
  const cols = shape[shape.length - 1]!;
  const rows = total / cols;
  const blocks = how.blocks ?? 1;
  const blockCols = cols / blocks;
  const part = blockCols / size;
  shards.forEach((s, rank) => {
    for (let r = 0; r < rows; r++) {
      for (let b = 0; b < blocks; b++) {
        const src = (r * blocks + b) * part;
        out.set(s.subarray(src, src + part), r * cols + b * blockCols + rank * part);
      }
    }
  });
  return out;
}

/**
 * How GPT-2's parameters are cut across tensor-parallel ranks (Megatron's scheme): c_attn and
 * c_fc by columns (c_attn per q | k | v block), attention and MLP c_proj weights by rows, the
 * embedding and a separate LM head by vocabulary rows; everything else replicated.
 *
 * @param name a GPT-2 parameter name, e.g. `"h.0.attn.c_attn.weight"`
 * @returns how it is cut
 */
export function gpt2ShardKind(name: string): ShardKind {
  if (/\.attn\.c_attn\.(weight|bias)$/.test(name)) return { kind: "columns", blocks: 3 };
  if (/\.mlp\.c_fc\.(weight|bias)$/.test(name)) return { kind: "columns" };
  if (/\.c_proj\.weight$/.test(name)) return { kind: "rows" };
  if (name === "wte" || name === "lm_head.weight") return { kind: "rows" };
  return { kind: "replicate" };
}

/**
 * Whether a replicated parameter's gradient is only partial on each rank under sequence
 * parallelism (each rank saw only its rows) and must be all-reduced over the tensor group:
 * layernorm weights and biases, and the biases added after a row-parallel reduce-scatter.
 *
 * @param name a GPT-2 parameter name
 * @returns true for `ln_1`, `ln_2`, `ln_f` and `c_proj.bias`
 */
export function isSequenceParallelPartial(name: string): boolean {
  return /(^|\.)ln_(1|2|f)\.(weight|bias)$/.test(name) || /\.c_proj\.bias$/.test(name);
}
