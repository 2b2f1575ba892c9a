/**
 * A tensor-parallel pre-LN transformer block: `r = x + attn(ln_1(x))`, `y = r + mlp(ln_2(r))`
 * with {@linkcode ParallelSelfAttention} and {@linkcode ParallelMlp}: two all-reduces in forward
 * and two in backward (with sequence parallelism, each becomes an all-gather plus a
 * reduce-scatter, and the layernorms and residual adds run on this rank's rows only).
 *
 * @module
 */

import type { Backend, Tensor } from "../kernels/mod.ts";
import type { ParamSpec } from "../optim/mod.ts";
import { Arena, GRAD_SLOT, saved, slotOf } from "./_arena.ts";
import { ParallelMlp, ParallelSelfAttention } from "./attention.ts";
import type { ParallelLayer, ParallelStep, ParamSource } from "./layer.ts";
import type { TensorParallel } from "./mappings.ts";

interface Norm {
  w: Tensor;
  b: Tensor;
  dw: Tensor;
  db: Tensor;
}

function norm(store: ParamSource, name: string): Norm {
  return {
    w: store.value(`${name}.weight`),
    b: store.value(`${name}.bias`),
    dw: store.grad(`${name}.weight`),
    db: store.grad(`${name}.bias`),
  };
}

/** GPT-2's block `h.${index}` with tensor-parallel attention and MLP. */
export class ParallelBlock implements ParallelLayer {
  /** This rank's parameters (layernorms replicated, the projections sharded). */
  readonly specs: readonly ParamSpec[];
  /** The attention. */
  readonly attn: ParallelSelfAttention;
  /** The MLP. */
  readonly mlp: ParallelMlp;
  #be: Backend;
  #ln1: Norm;
  #ln2: Norm;
  #C: number;
  #eps: number;
  #arena: Arena;
  #x = new Map<number, Tensor>();

  /**
   * Build the layer.
   *
   * @param backend the backend
   * @param tp the tensor-parallel group
   * @param store where this rank's parameters live
   * @param index the block's index
   * @param dim the model width C
   * @param heads attention heads (a multiple of tp)
   * @param hidden the MLP width (a multiple of tp)
   * @param eps the layernorm epsilon
   */
  constructor(
    backend: Backend,
    tp: TensorParallel,
    store: ParamSource,
    index: number,
    dim: number,
    heads: number,
    hidden: number,
    eps = 1e-5,
  ) {
    const p = `h.${index}`;
    this.#ln1 = norm(store, `${p}.ln_1`);
    this.attn = new ParallelSelfAttention(backend, tp, store, `${p}.attn`, dim, heads);
    this.#ln2 = norm(store, `${p}.ln_2`);
    this.mlp = new ParallelMlp(backend, tp, store, `${p}.mlp`, dim, hidden);
    const ln = (n: string): ParamSpec[] => [
      { name: `${p}.${n}.weight`, shape: [dim] },
      { name: `${p}.${n}.bias`, shape: [dim] },
    ];
    this.specs = [...ln("ln_1"), ...this.attn.specs, ...ln("ln_2"), ...this.mlp.specs];
    this.#be = backend;
    this.#C = dim;
    this.#eps = eps;
    this.#arena = new Arena(backend);
  }

  #ln(slot: number, which: string, n: Norm, x: Tensor, rows: number): Tensor {
    const a = this.#arena;
    const y = a.get(slot, `${which}.y`, rows * this.#C);
    const mean = a.get(slot, `${which}.mean`, rows);
    const rstd = a.get(slot, `${which}.rstd`, rows);
    this.#be.layernormForward(y, mean, rstd, x, n.w, n.b, rows, this.#C, this.#eps);
    return y;
  }

  #lnBack(slot: number, which: string, n: Norm, dx: Tensor, dy: Tensor, x: Tensor, rows: number) {
    const a = this.#arena;
    const mean = a.get(slot, `${which}.mean`, rows);
    const rstd = a.get(slot, `${which}.rstd`, rows);
    this.#be.layernormBackward(dx, n.dw, n.db, dy, x, n.w, mean, rstd, rows, this.#C);
  }

  /**
   * Compute the output and keep what backward needs.
   *
   * @param x the input `[B*T, C]` (this rank's rows with sequence parallelism)
   * @param step the shape and slot of the pass
   * @returns the output, same shape
   */
  async forward(x: Tensor, step: ParallelStep): Promise<Tensor> {
    const slot = slotOf(step);
    const rows = step.B * step.T;
    const n = rows * this.#C;
    const be = this.#be;
    const a = await this.attn.forward(this.#ln(slot, "ln1", this.#ln1, x, rows), step);
    const r = this.#arena.get(slot, "r", n);
    be.add(r, x, a, n);
    const m = await this.mlp.forward(this.#ln(slot, "ln2", this.#ln2, r, rows), step);
    const y = this.#arena.get(slot, "y", n);
    be.add(y, r, m, n);
    this.#x.set(slot, x);
    return y;
  }

  /**
   * Add into the parameter gradients and return the input's gradient.
   *
   * @param dy the output's gradient
   * @param step the shape and slot of the matching forward
   * @returns the input's gradient
   */
  async backward(dy: Tensor | null, step: ParallelStep): Promise<Tensor> {
    if (!dy) throw new TypeError("ParallelBlock.backward needs dy");
    const slot = slotOf(step);
    const x = saved(this.#x, slot, "ParallelBlock");
    const rows = step.B * step.T;
    const n = rows * this.#C;
    const dr = this.#arena.get(GRAD_SLOT, "dr", n);
    this.#be.copy(dr, dy);
    const dm = await this.mlp.backward(dy, step);
    this.#lnBack(slot, "ln2", this.#ln2, dr, dm, this.#arena.get(slot, "r", n), rows);
    const da = await this.attn.backward(dr, step);
    this.#lnBack(slot, "ln1", this.#ln1, dr, da, x, rows);
    return dr;
  }
}
