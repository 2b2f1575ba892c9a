// Register-blocked matrix product without workgroup memory: out[M,N] (+)= op(a) @ op(b) (+ bias).
//
// Each invocation computes a 4x4 block of `out`, reading its operands straight from storage
// (vec4 loads where the contiguous axis and the offset allow it). It suits devices whose
// "workgroup memory" is ordinary cache, such as a software adapter (llvmpipe), where it also
// compiles in a fraction of the time that the barrier-synchronised tiled kernel takes.

import type { GpuDevice, GpuTensor, Program } from "./device.ts";

const LANES = ["x", "y", "z", "w"] as const;
const WG = 8; // 8x8 invocations: a 32x32 tile of out per workgroup

/** Variant of the direct matmul program. */
export interface DirectVariant {
  transA: boolean;
  transB: boolean;
  /** a loaded as vec4 along its contiguous axis. */
  vecA: boolean;
  /** b loaded as vec4 along its contiguous axis. */
  vecB: boolean;
  /** K is a multiple of 4: the K loop steps by 4. */
  k4: boolean;
}

const v4 = (parts: string[]) => `vec4<f32>(${parts.join(", ")})`;

// Column k of op(a) over the block's four rows, as a vec4 (rows clamped to M - 1).
function aCol(v: DirectVariant, k: string, j: number): string {
  if (!v.transA) {
    if (v.vecA) return v4(LANES.map((_, r) => `A${r}.${LANES[j]}`));
    return v4(LANES.map((_, r) => `b1[p.o1 + mr${r} * p.K + ${k}]`));
  }
  if (v.vecA) return `b1[p.o1 + ((${k}) * p.M + mv) / 4u]`;
  return v4(LANES.map((_, r) => `b1[p.o1 + (${k}) * p.M + mr${r}]`));
}

// Row k of op(b) over the block's four columns, as a vec4 (columns clamped to N - 1).
function bRow(v: DirectVariant, k: string, j: number): string {
  if (v.transB) {
    if (v.vecB) return v4(LANES.map((_, c) => `B${c}.${LANES[j]}`));
    return v4(LANES.map((_, c) => `b2[p.o2 + nc${c} * p.K + ${k}]`));
  }
  if (v.vecB) return `b2[p.o2 + ((${k}) * p.N + nv) / 4u]`;
  return v4(LANES.map((_, c) => `b2[p.o2 + (${k}) * p.N + nc${c}]`));
}

function step(v: DirectVariant, k: string, j: number): string {
  return `{
      let a = ${aCol(v, k, j)};
      let b = ${bRow(v, k, j)};
      acc0 = fma(vec4<f32>(a.x), b, acc0);
      acc1 = fma(vec4<f32>(a.y), b, acc1);
      acc2 = fma(vec4<f32>(a.z), b, acc2);
      acc3 = fma(vec4<f32>(a.w), b, acc3);
    }`;
}

function loop(v: DirectVariant): string {
  if (!v.k4) return `for (var k = 0u; k < p.K; k++) {\n    ${step(v, "k", 0)}\n  }`;
  const pre: string[] = [];
  if (v.vecA && !v.transA) {
    for (let r = 0; r < 4; r++) pre.push(`let A${r} = b1[p.o1 + (mr${r} * p.K + k) / 4u];`);
  }
  if (v.vecB && v.transB) {
    for (let c = 0; c < 4; c++) pre.push(`let B${c} = b2[p.o2 + (nc${c} * p.K + k) / 4u];`);
  }
  const steps = [0, 1, 2, 3].map((j) => step(v, `k + ${j}u`, j));
  return `for (var k = 0u; k < p.K; k += 4u) {
    ${pre.join("\n    ")}
    ${steps.join("\n    ")}
  }`;
}

function store(r: number): string {
  const cols = LANES.map((l, c) =>
    `if (n + ${c}u < p.N) {
        let o = row + n + ${c}u;
        var y = acc${r}.${l};
        if (p.bias != 0u) { y += b3[p.o3 + n + ${c}u]; }
        if (p.acc != 0u) { y += b0[o]; }
        b0[o] = y;
      }`
  );
  return `if (m + ${r}u < p.M) {
    let row = p.o0 + (m + ${r}u) * p.N;
    ${cols.join("\n    ")}
  }`;
}

/** The WGSL program of one variant. */
export function directProgram(v: DirectVariant): Program {
  const key = `matmul_direct_${v.transA ? "T" : "N"}${v.transB ? "T" : "N"}_${v.vecA ? 4 : 1}${
    v.vecB ? 4 : 1
  }_k${v.k4 ? 4 : 1}`;
  const body = `
@compute @workgroup_size(${WG}, ${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let m = gid.y * 4u;
  let n = gid.x * 4u;
  if (m >= p.M || n >= p.N) { return; }
  let mr0 = m;
  let mr1 = min(m + 1u, p.M - 1u);
  let mr2 = min(m + 2u, p.M - 1u);
  let mr3 = min(m + 3u, p.M - 1u);
  let nc0 = n;
  let nc1 = min(n + 1u, p.N - 1u);
  let nc2 = min(n + 2u, p.N - 1u);
  let nc3 = min(n + 3u, p.N - 1u);
  let mv = m;
  let nv = n;
  var acc0 = vec4<f32>(0.0);
  var acc1 = vec4<f32>(0.0);
  var acc2 = vec4<f32>(0.0);
  var acc3 = vec4<f32>(0.0);
  ${loop(v)}
  ${[0, 1, 2, 3].map(store).join("\n  ")}
}
`;
  return {
    key,
    // out, a, b, bias (a dummy binding of `out` when there is no bias)
    bindings: ["f32", v.vecA ? "vec4f" : "f32", v.vecB ? "vec4f" : "f32", "f32"],
    fields: [["M", "u32"], ["N", "u32"], ["K", "u32"], ["bias", "u32"], ["acc", "u32"]],
    body,
  };
}

const programs = new Map<string, Program>();

/** `out[M,N] (+)= op(a) @ op(b) (+ bias)` without workgroup memory; sizes already checked. */
export function matmulDirect(
  dev: GpuDevice,
  out: GpuTensor,
  a: GpuTensor,
  b: GpuTensor,
  bias: GpuTensor | null,
  M: number,
  N: number,
  K: number,
  transA: boolean,
  transB: boolean,
  accumulate: boolean,
): void {
  if (M === 0 || N === 0) return;
  const k4 = K % 4 === 0;
  const v: DirectVariant = {
    transA,
    transB,
    // vec4 along k needs K % 4 == 0; along m (transposed a) needs M % 4 == 0; likewise for b.
    vecA: a.offset % 4 === 0 && (transA ? M % 4 === 0 : k4),
    vecB: b.offset % 4 === 0 && (transB ? k4 : N % 4 === 0),
    k4,
  };
  const id = JSON.stringify(v);
  let prog = programs.get(id);
  if (prog === undefined) programs.set(id, prog = directProgram(v));
  dev.run(
    prog,
    [out, a, b, bias ?? out],
    [M, N, K, bias === null ? 0 : 1, accumulate ? 1 : 0],
    [Math.ceil(N / (4 * WG)), Math.ceil(M / (4 * WG))],
  );
}
