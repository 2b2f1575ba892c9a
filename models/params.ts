/**
 * Where a model's parameters and gradients live: the {@linkcode ModelStore} contract, and its
 * plain form, two flat buffers laid out by {@linkcode buildLayout} that every layer reads its
 * weights from and adds its gradients into. ZeRO's partitioned stores implement the same
 * contract.
 *
 * @module
 */

import type { Backend, Tensor, TensorDType } from "../kernels/mod.ts";
import { buildLayout, type FlatLayout, type LayoutOptions, type ParamSpec } from "../optim/mod.ts";
import type { ParamStore } from "../parallel/mod.ts";

/** A model's parameter and gradient storage. */
export interface ModelStore extends ParamStore {
  /** The layout of this rank's parameters (names, shapes, offsets, what each layer declared). */
  readonly layout: FlatLayout;
  /**
   * Set this rank's piece of parameter `name` (of its layout size); a store that keeps only a
   * shard of it keeps the part it owns.
   */
  write(name: string, piece: Float32Array): void;
  /**
   * Read this rank's piece of a parameter or its gradient. A store that partitions it across
   * data-parallel ranks gathers it: every rank of that group then calls `read` for the same
   * names in the same order.
   */
  read(kind: "params" | "grads", name: string): Promise<Float32Array>;
  /** Set every gradient to zero. */
  zeroGrad(): void;
}

/** Options of {@linkcode FlatParams}. */
export interface FlatParamsOptions {
  /** Layout alignment and padding. */
  layout?: LayoutOptions;
  /** Element type of both buffers; default `"f32"`. */
  dtype?: TensorDType;
  /** An existing parameter buffer of `layout.size` elements (default: a new zeroed one). */
  params?: Tensor;
  /** An existing gradient buffer of `layout.size` elements (default: a new zeroed one). */
  grads?: Tensor;
}

/** A {@linkcode ModelStore} over one flat parameter buffer and one flat gradient buffer. */
export class FlatParams implements ModelStore {
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
   * Lay out the parameters and allocate (or adopt) the two buffers.
   *
   * @param backend the backend that owns the buffers
   * @param specs the parameters, in layout order
   * @param opts layout options, element type, existing buffers to adopt
   */
  constructor(backend: Backend, specs: readonly ParamSpec[], opts: FlatParamsOptions = {}) {
    const layout = buildLayout(specs, opts.layout);
    const dtype = opts.dtype ?? "f32";
    for (const k of ["params", "grads"] as const) {
      const t = opts[k];
      if (t && (t.length !== layout.size || t.dtype !== dtype)) {
        throw new RangeError(
          `The ${k} buffer is ${t.dtype} with ${t.length} elements but the layout needs ` +
            `${layout.size} ${dtype} elements`,
        );
      }
    }
    this.#be = backend;
    this.layout = layout;
    this.params = opts.params ?? backend.alloc(layout.size, dtype);
    this.grads = opts.grads ?? backend.alloc(layout.size, dtype);
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

  /**
   * Set parameter `name`.
   *
   * @param name a parameter name of the layout
   * @param piece its values (the layout size)
   */
  write(name: string, piece: Float32Array): void {
    const s = this.layout.get(name);
    if (piece.length !== s.size) {
      throw new RangeError(
        `Parameter "${name}" [${s.shape}] has ${s.size} elements, got ${piece.length} values`,
      );
    }
    this.#be.write(this.params, piece, s.offset);
  }

  /**
   * Read a parameter or its gradient.
   *
   * @param kind parameters or gradients
   * @param name a parameter name of the layout
   * @returns a copy of its values
   */
  async read(kind: "params" | "grads", name: string): Promise<Float32Array> {
    const t = kind === "params" ? this.value(name) : this.grad(name);
    return Float32Array.from(await this.#be.read(t));
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
