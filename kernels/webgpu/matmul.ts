// Tiled matrix product out[M,N] (+)= op(a)[M,K] @ op(b)[K,N] (+ bias[N]).
//
// A workgroup of 16x16 invocations owns a 64x64 tile of `out`; each invocation keeps a 4x4 block
// of it in registers. Per step of 16 along K, the workgroup stages op(a) as As[k][m] and op(b)
// as Bs[k][n] in workgroup memory, so the inner loop reads one vec4 of each and does 16 fused
// multiply-adds. An operand whose contiguous axis and offset are multiples of 4 is loaded as
// vec4s (one per invocation per step); otherwise as four scalars per invocation.

import type { GpuDevice, GpuTensor, Program } from "./device.ts";

const TILE = 64;

/** Variant of the matmul program. */
interface Variant {
  transA: boolean;
  transB: boolean;
  vecA: boolean;
  vecB: boolean;
  bias: boolean;
  accumulate: boolean;
}

// Store value `v` at (k, m) of a [16][64] tile kept as vec4s along the second axis.
const put = (tile: string, k: string, m: string, v: string) =>
  `${tile}[(${k}) * 16u + (${m}) / 4u][(${m}) % 4u] = ${v};`;

function loadA(v: Variant): string {
  if (v.vecA && !v.transA) {
    // a[M,K], vec4 along k: 64 rows x 4 vec4s.
    return `{
    let mm = lid / 4u; let kq = lid % 4u;
    let gm = m0 + mm; let gk = k0 + kq * 4u;
    var x = vec4<f32>(0.0);
    if (gm < p.M && gk < p.K) { x = b1[p.o1 + (gm * p.K + gk) / 4u]; }
    for (var j = 0u; j < 4u; j++) { ${put("As", "kq * 4u + j", "mm", "x[j]")} }
  }`;
  }
  if (v.vecA && v.transA) {
    // a[K,M], vec4 along m: 16 rows x 16 vec4s.
    return `{
    let kk = lid / 16u; let mq = lid % 16u;
    let gm = m0 + mq * 4u; let gk = k0 + kk;
    var x = vec4<f32>(0.0);
    if (gm < p.M && gk < p.K) { x = b1[p.o1 + (gk * p.M + gm) / 4u]; }
    As[kk * 16u + mq] = x;
  }`;
  }
  const [kk, mm, at] = v.transA
    ? ["e / 64u", "e % 64u", "gk * p.M + gm"]
    : ["e % 16u", "e / 16u", "gm * p.K + gk"];
  return `for (var q = 0u; q < 4u; q++) {
    let e = lid + q * 256u;
    let kk = ${kk}; let mm = ${mm};
    let gm = m0 + mm; let gk = k0 + kk;
    var x = 0.0;
    if (gm < p.M && gk < p.K) { x = b1[p.o1 + ${at}]; }
    ${put("As", "kk", "mm", "x")}
  }`;
}

function loadB(v: Variant): string {
  if (v.vecB && !v.transB) {
    // b[K,N], vec4 along n.
    return `{
    let kk = lid / 16u; let nq = lid % 16u;
    let gn = n0 + nq * 4u; let gk = k0 + kk;
    var x = vec4<f32>(0.0);
    if (gn < p.N && gk < p.K) { x = b2[p.o2 + (gk * p.N + gn) / 4u]; }
    Bs[kk * 16u + nq] = x;
  }`;
  }
  if (v.vecB && v.transB) {
    // b[N,K], vec4 along k.
    return `{
    let nn = lid / 4u; let kq = lid % 4u;
    let gn = n0 + nn; let gk = k0 + kq * 4u;
    var x = vec4<f32>(0.0);
    if (gn < p.N && gk < p.K) { x = b2[p.o2 + (gn * p.K + gk) / 4u]; }
    for (var j = 0u; j < 4u; j++) { ${put("Bs", "kq * 4u + j", "nn", "x[j]")} }
  }`;
  }
  const [kk, nn, at] = v.transB
    ? ["e % 16u", "e / 16u", "gn * p.K + gk"]
    : ["e / 64u", "e % 64u", "gk * p.N + gn"];
  return `for (var q = 0u; q < 4u; q++) {
    let e = lid + q * 256u;
    let kk = ${kk}; let nn = ${nn};
    let gn = n0 + nn; let gk = k0 + kk;
    var x = 0.0;
    if (gn < p.N && gk < p.K) { x = b2[p.o2 + ${at}]; }
    ${put("Bs", "kk", "nn", "x")}
  }`;
}

function program(v: Variant): Program {
  const key = `matmul_${v.transA ? "T" : "N"}${v.transB ? "T" : "N"}_${v.vecA ? 4 : 1}${
    v.vecB ? 4 : 1
  }${v.bias ? "_bias" : ""}${v.accumulate ? "_acc" : ""}`;
  const bindings: Program["bindings"] = [
    "f32",
    v.vecA ? "vec4f" : "f32",
    v.vecB ? "vec4f" : "f32",
    ...(v.bias ? ["f32" as const] : []),
  ];
  const body = `
var<workgroup> As: array<vec4<f32>, 256>;
var<workgroup> Bs: array<vec4<f32>, 256>;

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid3: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let m0 = wid.y * ${TILE}u;
  let n0 = wid.x * ${TILE}u;
  let tx = lid3.x;
  let ty = lid3.y;
  var acc: array<vec4<f32>, 4>;
  for (var k0 = 0u; k0 < p.K; k0 += 16u) {
    ${loadA(v)}
    ${loadB(v)}
    workgroupBarrier();
    for (var k = 0u; k < 16u; k++) {
      let a = As[k * 16u + ty];
      let b = Bs[k * 16u + tx];
      acc[0] = fma(vec4<f32>(a.x), b, acc[0]);
      acc[1] = fma(vec4<f32>(a.y), b, acc[1]);
      acc[2] = fma(vec4<f32>(a.z), b, acc[2]);
      acc[3] = fma(vec4<f32>(a.w), b, acc[3]);
    }
    workgroupBarrier();
  }
  for (var r = 0u; r < 4u; r++) {
    let m = m0 + ty * 4u + r;
    if (m >= p.M) { break; }
    for (var c = 0u; c < 4u; c++) {
      let n = n0 + tx * 4u + c;
      if (n >= p.N) { break; }
      var y = acc[r][c];
      ${v.bias ? "y += b3[p.o3 + n];" : ""}
      let o = p.o0 + m * p.N + n;
      ${v.accumulate ? "y += b0[o];" : ""}
      b0[o] = y;
    }
  }
}
`;
  return { key, bindings, fields: [["M", "u32"], ["N", "u32"], ["K", "u32"]], body };
}

const programs = new Map<string, Program>();

/** `out[M,N] (+)= op(a) @ op(b) (+ bias)`; sizes already checked. */
export function matmul(
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
  const v: Variant = {
    transA,
    transB,
    // The contiguous axis of a is K (or M when transposed); of b, N (or K when transposed).
    vecA: a.offset % 4 === 0 && (transA ? M : K) % 4 === 0,
    vecB: b.offset % 4 === 0 && (transB ? K : N) % 4 === 0,
    bias: bias !== null,
    accumulate,
  };
  const id = JSON.stringify(v);
  let prog = programs.get(id);
  if (prog === undefined) programs.set(id, prog = program(v));
  const tensors = bias === null ? [out, a, b] : [out, a, b, bias];
  dev.run(prog, tensors, [M, N, K], [Math.ceil(N / TILE), Math.ceil(M / TILE)]);
}
