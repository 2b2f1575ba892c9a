/** A toy pipeline model for tests: virtual stage k maps x[n] to tanh(W_k x + b_k) for each of
 * B rows; the loss of a micro-batch is 0.5 * sum(y^2) of the last stage's output. Plain
 * TypeScript, float64 inside, so a pipelined run can be compared with the serial one. */

import type { PipelineChunk } from "../../parallel/mod.ts";

export const N = 6;
export const B = 3;

/** Deterministic weights of virtual stage k. */
export function weightsOf(k: number): { w: Float64Array; b: Float64Array } {
  const w = new Float64Array(N * N);
  const b = new Float64Array(N);
  for (let i = 0; i < N * N; i++) w[i] = Math.sin(1.3 * i + 0.7 * k + 0.1) * 0.6;
  for (let i = 0; i < N; i++) b[i] = Math.cos(0.9 * i + k) * 0.1;
  return { w, b };
}

/** Input of micro-batch mb: B rows of N. */
export function inputOf(mb: number): Float32Array {
  const x = new Float32Array(B * N);
  for (let i = 0; i < x.length; i++) x[i] = Math.sin(0.37 * i + 1.1 * mb);
  return x;
}

/** One chunk: virtual stage k of V, with gradient accumulators and a loss sum. */
export class ToyChunk implements PipelineChunk {
  readonly dw = new Float64Array(N * N);
  readonly db = new Float64Array(N);
  loss = 0;
  readonly #w: Float64Array;
  readonly #b: Float64Array;
  readonly #saved = new Map<number, { x: Float32Array; y: Float32Array }>();
  constructor(readonly k: number, readonly V: number) {
    const { w, b } = weightsOf(k);
    this.#w = w;
    this.#b = b;
  }
  forward(mb: number, input: Float32Array | null): Float32Array | null {
    const x = input ?? inputOf(mb);
    if ((input === null) !== (this.k === 0)) throw new Error(`bad input on stage ${this.k}`);
    const y = new Float32Array(B * N);
    for (let r = 0; r < B; r++) {
      for (let i = 0; i < N; i++) {
        let s = this.#b[i]!;
        for (let j = 0; j < N; j++) s += this.#w[i * N + j]! * x[r * N + j]!;
        y[r * N + i] = Math.tanh(s);
      }
    }
    this.#saved.set(mb, { x, y });
    if (this.k === this.V - 1) {
      for (const v of y) this.loss += 0.5 * v * v;
      return null;
    }
    return y;
  }
  backward(mb: number, dOutput: Float32Array | null): Float32Array | null {
    const { x, y } = this.#saved.get(mb)!;
    this.#saved.delete(mb);
    const dy = dOutput ?? y; // d(0.5 y^2)/dy = y on the last stage
    const dx = new Float32Array(B * N);
    for (let r = 0; r < B; r++) {
      for (let i = 0; i < N; i++) {
        const v = y[r * N + i]!;
        const dz = dy[r * N + i]! * (1 - v * v);
        this.db[i]! += dz;
        for (let j = 0; j < N; j++) {
          this.dw[i * N + j]! += dz * x[r * N + j]!;
          dx[r * N + j]! += dz * this.#w[i * N + j]!;
        }
      }
    }
    return this.k === 0 ? null : dx;
  }
  get saved(): number {
    return this.#saved.size;
  }
}

/** Serial reference: all V virtual stages in one list, m micro-batches accumulated. */
export function serialRun(V: number, m: number): ToyChunk[] {
  const chunks = Array.from({ length: V }, (_, k) => new ToyChunk(k, V));
  for (let mb = 0; mb < m; mb++) {
    let a: Float32Array | null = null;
    for (const c of chunks) a = c.forward(mb, a);
    let g: Float32Array | null = null;
    for (let k = V - 1; k >= 0; k--) g = chunks[k]!.backward(mb, g);
  }
  return chunks;
}
