/**
 * Parameters and their gradients as views into two flat buffers laid out by
 * {@linkcode buildLayout}: what every layer reads its weights from and adds its gradients into.
 *
 * @module
 */

import type { Backend, Tensor } from "../kernels/mod.ts";
import type { FlatLayout, ParamSpec } from "../optim/mod.ts";

/** Where a layer finds its parameters and their gradients, by GPT-2 name. */
export interface ParamStore {
  /** The parameter tensor named `name` (a view into the parameter buffer). */
  value(name: string): Tensor;
  /** The gradient tensor of `name` (a view into the gradient buffer, same layout). */
  grad(name: string): Tensor;
}

/** Options of {@linkcode FlatParams}. */
export interface FlatParamsOptions {
  /** An existing parameter buffer of `layout.size` elements (default: a new zeroed one). */
  params?: Tensor;
  /** An existing gradient buffer of `layout.size` elements (default: a new zeroed one). */
  grads?: Tensor;
}

/** A {@linkcode ParamStore} over one flat parameter buffer and one flat gradient buffer. */
export class FlatParams implements ParamStore {
  /** The layout both buffers follow. */
  readonly layout: FlatLayout;
  /** All parameters, `layout.size` elements. */
  readonly params: Tensor;
  /** All gradients, `layout.size` elements. */
  readonly grads: Tensor;
  #be: Backend;
  #values = new Map<string, Tensor>();
  #grads = new Map<string, Tensor>();

  /**
   * Allocate (or adopt) the two buffers.
   *
   * @param backend the backend that owns the buffers
   * @param layout the flat layout
   * @param opts existing buffers to adopt
   */
  constructor(backend: Backend, layout: FlatLayout, opts: FlatParamsOptions = {}) {
    for (const [k, t] of Object.entries(opts)) {
      if (t && (t.length !== layout.size || t.dtype !== "f32")) {
        throw new RangeError(
          `The ${k} buffer is ${t.dtype} with ${t.length} elements but the layout needs ` +
            `${layout.size} f32 elements`,
        );
      }
    }
    this.#be = backend;
    this.layout = layout;
    this.params = opts.params ?? backend.alloc(layout.size);
    this.grads = opts.grads ?? backend.alloc(layout.size);
  }

  /**
   * The parameter view named `name`.
   *
   * @param name a parameter name of the layout
   * @returns the view
   */
  value(name: string): Tensor {
    return this.#viewOf(this.#values, this.params, name);
  }

  /**
   * The gradient view named `name`.
   *
   * @param name a parameter name of the layout
   * @returns the view
   */
  grad(name: string): Tensor {
    return this.#viewOf(this.#grads, this.grads, name);
  }

  /** Set every gradient to zero. */
  zeroGrad(): void {
    this.#be.fill(this.grads, 0);
  }

  #viewOf(cache: Map<string, Tensor>, buf: Tensor, name: string): Tensor {
    let v = cache.get(name);
    if (!v) {
      const s = this.layout.get(name);
      v = this.#be.view(buf, s.offset, s.size);
      cache.set(name, v);
    }
    return v;
  }
}

/**
 * The parameter specs of several layers in order, each name once (a tied weight used by two
 * layers is placed where it first appears).
 *
 * @param lists the specs of each layer
 * @returns the merged list
 * @throws {TypeError} when one name is declared with two different shapes
 */
export function mergeSpecs(lists: readonly (readonly ParamSpec[])[]): ParamSpec[] {
  const seen = new Map<string, ParamSpec>();
  const out: ParamSpec[] = [];
  for (const list of lists) {
    for (const s of list) {
      const prev = seen.get(s.name);
      if (prev) {
        if (prev.shape.join() !== s.shape.join()) {
          throw new TypeError(
            `Parameter "${s.name}" is used with shapes [${prev.shape}] and [${s.shape}]`,
          );
        }
        continue;
      }
      seen.set(s.name, s);
      out.push(s);
    }
  }
  return out;
}
