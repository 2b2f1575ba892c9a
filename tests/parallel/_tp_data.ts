// Shared numbers of the tensor-parallel layer tests: sizes, full (serial) weights and inputs.

export const DIMS = { B: 2, T: 4, C: 8, H: 4, F: 32, V: 16, ctx: 8 };

export interface LayerResult {
  y: Float32Array;
  dx: Float32Array | null;
  grads: Record<string, Float32Array>;
}

function wave(n: number, seed: number, scale: number): Float32Array {
  return Float32Array.from({ length: n }, (_, i) => Math.sin(0.731 * i + seed) * scale);
}

/** Every serial parameter the cases use, GPT-2 names and shapes. */
export function fullParams(): Map<string, [Float32Array, number[]]> {
  const { C, F, V, ctx } = DIMS;
  const specs: [string, number[]][] = [
    ["h.0.attn.c_attn.weight", [C, 3 * C]],
    ["h.0.attn.c_attn.bias", [3 * C]],
    ["h.0.attn.c_proj.weight", [C, C]],
    ["h.0.attn.c_proj.bias", [C]],
    ["h.0.mlp.c_fc.weight", [C, F]],
    ["h.0.mlp.c_fc.bias", [F]],
    ["h.0.mlp.c_proj.weight", [F, C]],
    ["h.0.mlp.c_proj.bias", [C]],
    ["wte", [V, C]],
    ["wpe", [ctx, C]],
    ["ln_f.weight", [C]],
    ["ln_f.bias", [C]],
  ];
  const m = new Map<string, [Float32Array, number[]]>();
  specs.forEach(([name, shape], i) => {
    const n = shape.reduce((a, b) => a * b, 1);
    const a = wave(n, 1.7 * i + 0.3, 0.4);
    if (name === "ln_f.weight") { for (let j = 0; j < n; j++) a[j] = 1 + a[j]!; }
    m.set(name, [a, shape]);
  });
  return m;
}

/** Inputs and output gradients, full size. */
export function fullInputs() {
  const { B, T, C, F, V } = DIMS;
  const N = B * T;
  const ids = Int32Array.from({ length: N }, (_, i) => (i * 7 + 3) % V);
  const targets = Int32Array.from({ length: N }, (_, i) => (i === 5 ? -1 : (i * 5 + 1) % V));
  return {
    x: wave(N * C, 0.5, 1),
    xF: wave(N * F, 0.9, 1),
    dy: wave(N * C, 2.1, 0.5),
    dyF: wave(N * F, 2.9, 0.5),
    ids,
    targets,
    count: targets.filter((t) => t >= 0).length,
  };
}
