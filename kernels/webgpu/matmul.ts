// Tiled matrix product out[M,N] (+)= op(a)[M,K] @ op(b)[K,N] (+ bias[N]).
//
// A workgroup of 16x16 invocations owns a 64x64 tile of `out`; each invocation keeps a 4x4 block
// of it in registers. Per step of 16 along K, the workgroup stages op(a) as As[k][m] and op(b)
// as Bs[k][n] in workgroup memory, so the inner loop reads one vec4 of each and does 16 fused
// multiply-adds. An operand whose contiguous axis and offset are multiples of 4 is loaded as
// vec4s (one per invocation per step); otherwise as four scalars per invocation. The code is
// unrolled as text, with no dynamic index into a vector, which keeps shader compilation short.

import type { GpuDevice, GpuTensor, Program } from "./device.ts";

const TILE = 64;

/** Variant of the matmul program (bias and accumulation are uniform flags, not variants). */
export interface Variant {
  transA: boolean;
  transB: boolean;
  vecA: boolean;
  vecB: boolean;
}

const LANES = ["x", "y", "z", "w"];

// Tiles are [16][64] floats kept as 256 vec4s along the second axis; (k, m) is element
// tile[k * 16 + m / 4][m % 4]. Scattering a vec4 along k writes lane m % 4 of four vec4s.
function scatter(tile: string, k: string, m: string, x: string): string {
  const cases = LANES.map((lane, c) => {
    const body = LANES.map((l, j) => `${tile}[(${k} + ${j}u) * 16u + s].${lane} = ${x}.${l};`);
    return `${c === 3 ? "default" : `case ${c}u`}: { ${body.join(" ")} }`;
  });
  return `let s = ${m} / 4u;
    switch (${m} % 4u) {
      ${cases.join("\n      ")}
    }`;
}

// Scalar loads: invocation `lid` loads elements lid + q*256 of the tile for q = 0..3.
function scalarLoad(
  tile: string,
  buf: string,
  order: [string, string],
  bound: string,
  at: string,
): string {
  const out: string[] = [];
  for (let q = 0; q < 4; q++) {
    out.push(`{
    let e = lid + ${q * 256}u;
    let kk = ${order[0]}; let mm = ${order[1]};
    let g${tile === "As" ? "m" : "n"} = ${tile === "As" ? "m0" : "n0"} + mm; let gk = k0 + kk;
    var x = 0.0;
    if (g${tile === "As" ? "m" : "n"} < ${bound} && gk < p.K) { x = ${buf}[${at}]; }
    let s = kk * 16u + mm / 4u;
    switch (mm % 4u) {
      case 0u: { ${tile}[s].x = x; }
      case 1u: { ${tile}[s].y = x; }
      case 2u: { ${tile}[s].z = x; }
      default: { ${tile}[s].w = x; }
    }
  }`);
  }
  return out.join("\n  ");
}

function loadA(v: Variant): string {
  if (v.vecA && !v.transA) {
    // a[M,K], vec4 along k: 64 rows x 4 vec4s; one lane each of four vec4s of the tile.
    return `{
    let mm = lid / 4u; let kq = lid % 4u;
    let gm = m0 + mm; let gk = k0 + kq * 4u;
    var x = vec4<f32>(0.0);
    if (gm < p.M && gk < p.K) { x = b1[p.o1 + (gm * p.K + gk) / 4u]; }
    ${scatter("As", "kq * 4u", "mm", "x")}
  }`;
  }
  if (v.vecA && v.transA) {
    // a[K,M], vec4 along m: 16 rows x 16 vec4s, stored as they are.
    return `{
    let kk = lid / 16u; let mq = lid % 16u;
    let gm = m0 + mq * 4u; let gk = k0 + kk;
    var x = vec4<f32>(0.0);
    if (gm < p.M && gk < p.K) { x = b1[p.o1 + (gk * p.M + gm) / 4u]; }
    As[kk * 16u + mq] = x;
  }`;
  }
  return v.transA
    ? scalarLoad("As", "b1", ["e / 64u", "e % 64u"], "p.M", "p.o1 + gk * p.M + gm")
    : scalarLoad("As", "b1", ["e % 16u", "e / 16u"], "p.M", "p.o1 + gm * p.K + gk");
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
    ${scatter("Bs", "kq * 4u", "nn", "x")}
  }`;
  }
  return v.transB
    ? scalarLoad("Bs", "b2", ["e % 16u", "e / 16u"], "p.N", "p.o2 + gn * p.K + gk")
    : scalarLoad("Bs", "b2", ["e / 64u", "e % 64u"], "p.N", "p.o2 + gk * p.N + gn");
}

// Write row r of the invocation's block: four columns, each guarded.
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
  return `if (m0 + ty * 4u + ${r}u < p.M) {
      let row = p.o0 + (m0 + ty * 4u + ${r}u) * p.N;
      ${cols.join("\n      ")}
    }`;
}

/** The WGSL program of one variant. */
export function program(v: Variant): Program {
  const key = `matmul_${v.transA ? "T" : "N"}${v.transB ? "T" : "N"}_${v.vecA ? 4 : 1}${
    v.vecB ? 4 : 1
  }`;
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
  var acc0 = vec4<f32>(0.0);
  var acc1 = vec4<f32>(0.0);
  var acc2 = vec4<f32>(0.0);
  var acc3 = vec4<f32>(0.0);
  for (var k0 = 0u; k0 < p.K; k0 += 16u) {
    ${loadA(v)}
    ${loadB(v)}
    workgroupBarrier();
    for (var k = 0u; k < 16u; k++) {
      let a = As[k * 16u + ty];
      let b = Bs[k * 16u + tx];
      acc0 = fma(vec4<f32>(a.x), b, acc0);
      acc1 = fma(vec4<f32>(a.y), b, acc1);
      acc2 = fma(vec4<f32>(a.z), b, acc2);
      acc3 = fma(vec4<f32>(a.w), b, acc3);
    }
    workgroupBarrier();
  }
  let n = n0 + tx * 4u;
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
  };
  const id = JSON.stringify(v);
  let prog = programs.get(id);
  if (prog === undefined) programs.set(id, prog = program(v));
  dev.run(
    prog,
    [out, a, b, bias ?? out],
    [M, N, K, bias === null ? 0 : 1, accumulate ? 1 : 0],
    [Math.ceil(N / TILE), Math.ceil(M / TILE)],
  );
}
