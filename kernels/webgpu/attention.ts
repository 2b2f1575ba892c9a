// Causal multi-head attention, forward and backward. qkv[B,T,3C] holds q | k | v; head h uses
// channels [h*hs, (h+1)*hs) of each. The forward gives each query row (b, h, t) to one
// invocation, which writes its softmax row of att[B,H,T,T] (subtracting the row maximum first)
// and its output row. The backward runs in two passes so that every element has one writer:
// per query row, dscores and dq; then per key row, dk and dv.
//
// With dropout the forward and the backward's query pass have variants that also bind a scratch
// pd[B,H,T,T] of the kept, scaled probabilities (att * m, m = 1/(1 - p) or 0 from the hash of
// the element's global index): the forward writes it and reads it for the output; the query pass
// writes it (and multiplies datt by m), and the key pass reads it in place of att for dv.
// Without dropout the programs and bindings are the ones of before.

import type { AttentionDropout } from "../backend.ts";
import { dropoutThreshold } from "../dropout.ts";
import type { GpuDevice, GpuTensor } from "./device.ts";
import { DROPOUT_HASH } from "./dropout.ts";
import { elementwise, runElementwise } from "./elementwise.ts";

const SHAPE: [string, "u32" | "f32"][] = [["T", "u32"], ["C", "u32"], ["H", "u32"], [
  "scale",
  "f32",
]];

// Row i = (b*H + h)*T + t; the base of q for (b, t, h) is ((b*T + t)*3C + h*hs).
const INDEX = `let t = i % p.T;
  let bh = i / p.T;
  let h = bh % p.H;
  let b = bh / p.H;
  let hs = p.C / p.H;
  let C3 = 3u * p.C;
  let seq = b * p.T;`;

const DROP: [string, "u32" | "f32"][] = [
  ["key", "u32"],
  ["thr", "u32"],
  ["dscale", "f32"],
  ["seqOffset", "u32"],
  ["headOffset", "u32"],
  ["heads", "u32"],
];

// The dropout factor of probability (row i, key u): dscale if kept, else 0.
const FACTOR = `
fn drop_factor(i: u32, u: u32) -> f32 {
  let t = i % p.T;
  let bh = i / p.T;
  let g = (((p.seqOffset + bh / p.H) * p.heads + p.headOffset + bh % p.H) * p.T + t) * p.T + u;
  return select(0.0, p.dscale, dropout_hash(p.key, g) >= p.thr);
}
`;

const forward = (drop: boolean) =>
  elementwise(
    drop ? "attention_forward_dropout" : "attention_forward",
    // out, att, qkv (, pd)
    drop ? ["f32", "f32", "f32", "f32"] : ["f32", "f32", "f32"],
    drop ? [...SHAPE, ...DROP] : SHAPE,
    `${INDEX}
  let q0 = p.o2 + (seq + t) * C3 + h * hs;
  let a0 = p.o1 + i * p.T;
  var mx = -3.4028235e38;
  for (var u = 0u; u <= t; u++) {
    let k0 = p.o2 + (seq + u) * C3 + p.C + h * hs;
    var s = 0.0;
    for (var c = 0u; c < hs; c++) { s += b2[q0 + c] * b2[k0 + c]; }
    s *= p.scale;
    b1[a0 + u] = s;
    mx = max(mx, s);
  }
  var z = 0.0;
  for (var u = 0u; u <= t; u++) {
    let e = exp(b1[a0 + u] - mx);
    b1[a0 + u] = e;
    z += e;
  }
  for (var u = 0u; u <= t; u++) { b1[a0 + u] = b1[a0 + u] / z; }
  for (var u = t + 1u; u < p.T; u++) { b1[a0 + u] = 0.0; }${
      drop
        ? `
  let d0 = p.o3 + i * p.T;
  for (var u = 0u; u <= t; u++) { b3[d0 + u] = b1[a0 + u] * drop_factor(i, u); }`
        : ""
    }
  let y0 = p.o0 + (seq + t) * p.C + h * hs;
  for (var c = 0u; c < hs; c++) {
    var s = 0.0;
    for (var u = 0u; u <= t; u++) { s += ${
      drop ? "b3[d0 + u]" : "b1[a0 + u]"
    } * b2[p.o2 + (seq + u) * C3 + 2u * p.C + h * hs + c]; }
    b0[y0 + c] = s;
  }`,
    drop ? DROPOUT_HASH + FACTOR : "",
  );
const FORWARD = forward(false), FORWARD_DROP = forward(true);

// Pass 1, per query row: datt[u] = dout[t] . v[u]; dpre[u] = att[u] (datt[u] - att . datt) scale
// (kept in the scratch tensor); dq[t] += sum_u dpre[u] k[u].
// With dropout: datt[u] *= m[u], and pd[u] = att[u] m[u] for the key pass.
const backwardQuery = (drop: boolean) =>
  elementwise(
    drop ? "attention_backward_query_dropout" : "attention_backward_query",
    // dqkv, dout, qkv, att, dpre (, pd)
    drop ? ["f32", "f32", "f32", "f32", "f32", "f32"] : ["f32", "f32", "f32", "f32", "f32"],
    drop ? [...SHAPE, ...DROP] : SHAPE,
    `${INDEX}
  let g0 = p.o1 + (seq + t) * p.C + h * hs;
  let a0 = p.o3 + i * p.T;
  let d0 = p.o4 + i * p.T;
  var dot = 0.0;
  for (var u = 0u; u <= t; u++) {
    let v0 = p.o2 + (seq + u) * C3 + 2u * p.C + h * hs;
    var s = 0.0;
    for (var c = 0u; c < hs; c++) { s += b1[g0 + c] * b2[v0 + c]; }${
      drop
        ? `
    let m = drop_factor(i, u);
    b5[p.o5 + i * p.T + u] = b3[a0 + u] * m;
    s *= m;`
        : ""
    }
    b4[d0 + u] = s;
    dot += b3[a0 + u] * s;
  }
  for (var u = 0u; u <= t; u++) { b4[d0 + u] = b3[a0 + u] * (b4[d0 + u] - dot) * p.scale; }
  let dq0 = p.o0 + (seq + t) * C3 + h * hs;
  for (var c = 0u; c < hs; c++) {
    var s = 0.0;
    for (var u = 0u; u <= t; u++) { s += b4[d0 + u] * b2[p.o2 + (seq + u) * C3 + p.C + h * hs + c]; }
    b0[dq0 + c] = b0[dq0 + c] + s;
  }`,
    drop ? DROPOUT_HASH + FACTOR : "",
  );
const BACKWARD_QUERY = backwardQuery(false), BACKWARD_QUERY_DROP = backwardQuery(true);

// Pass 2, per key row u (here called t): dk[u] += sum_{t>=u} dpre[t,u] q[t];
// dv[u] += sum_{t>=u} att[t,u] dout[t].
// (With dropout the kept probabilities pd are bound in place of att, for dv.)
const BACKWARD_KEY = elementwise(
  "attention_backward_key",
  // dqkv, dout, qkv, att, dpre
  ["f32", "f32", "f32", "f32", "f32"],
  SHAPE,
  `${INDEX}
  let u = t;
  let r0 = (bh * p.T) * p.T + u; // element (b, h, row, u) is r0 + row*T
  let dk0 = p.o0 + (seq + u) * C3 + p.C + h * hs;
  let dv0 = dk0 + p.C;
  for (var c = 0u; c < hs; c++) {
    var sk = 0.0;
    var sv = 0.0;
    for (var r = u; r < p.T; r++) {
      sk += b4[p.o4 + r0 + r * p.T] * b2[p.o2 + (seq + r) * C3 + h * hs + c];
      sv += b3[p.o3 + r0 + r * p.T] * b1[p.o1 + (seq + r) * p.C + h * hs + c];
    }
    b0[dk0 + c] = b0[dk0 + c] + sk;
    b0[dv0 + c] = b0[dv0 + c] + sv;
  }`,
);

// Decoding against a key/value cache[B,cap,2C] (k | v per position): first each new token's k
// and v are copied to their positions, then one invocation per new query row (b, h, t) takes
// the row maximum of its scores, then sums exp(s - max) v over the positions up to its own.
const CACHE: [string, "u32" | "f32"][] = [["T", "u32"], ["C", "u32"], ["past", "u32"], [
  "cap",
  "u32",
]];
const CACHE_STORE = elementwise(
  "attention_cache_store",
  // cache, qkv
  ["f32", "f32"],
  CACHE,
  `let C2 = 2u * p.C;
  let c = i % C2;
  let bt = i / C2;
  let t = bt % p.T;
  let b = bt / p.T;
  b0[p.o0 + (b * p.cap + p.past + t) * C2 + c] = b1[p.o1 + bt * 3u * p.C + p.C + c];`,
);
const CACHED = elementwise(
  "attention_cached",
  // out, cache, qkv
  ["f32", "f32", "f32"],
  [...CACHE, ["H", "u32"], ["scale", "f32"]],
  `let t = i % p.T;
  let bh = i / p.T;
  let h = bh % p.H;
  let b = bh / p.H;
  let hs = p.C / p.H;
  let C2 = 2u * p.C;
  let q0 = p.o2 + (b * p.T + t) * 3u * p.C + h * hs;
  let n = p.past + t + 1u;
  var mx = -3.4028235e38;
  for (var u = 0u; u < n; u++) {
    let k0 = p.o1 + (b * p.cap + u) * C2 + h * hs;
    var s = 0.0;
    for (var c = 0u; c < hs; c++) { s += b2[q0 + c] * b1[k0 + c]; }
    mx = max(mx, s * p.scale);
  }
  let y0 = p.o0 + (b * p.T + t) * p.C + h * hs;
  for (var c = 0u; c < hs; c++) { b0[y0 + c] = 0.0; }
  var z = 0.0;
  for (var u = 0u; u < n; u++) {
    let k0 = p.o1 + (b * p.cap + u) * C2 + h * hs;
    var s = 0.0;
    for (var c = 0u; c < hs; c++) { s += b2[q0 + c] * b1[k0 + c]; }
    let e = exp(s * p.scale - mx);
    z += e;
    for (var c = 0u; c < hs; c++) { b0[y0 + c] = b0[y0 + c] + e * b1[k0 + p.C + c]; }
  }
  for (var c = 0u; c < hs; c++) { b0[y0 + c] = b0[y0 + c] / z; }`,
);

/** Attention of T new tokens against the key/value cache, which it extends first. */
export function attentionCached(
  dev: GpuDevice,
  out: GpuTensor,
  cache: GpuTensor,
  qkv: GpuTensor,
  B: number,
  T: number,
  past: number,
  cap: number,
  C: number,
  H: number,
): void {
  runElementwise(dev, CACHE_STORE, [cache, qkv], B * T * 2 * C, [T, C, past, cap]);
  runElementwise(dev, CACHED, [out, cache, qkv], B * H * T, [
    T,
    C,
    past,
    cap,
    H,
    1 / Math.sqrt(C / H),
  ]);
}

/** The uniform values of the dropout fields. */
function dropValues(d: AttentionDropout): number[] {
  return [d.key, dropoutThreshold(d.p), 1 / (1 - d.p), d.seqOffset, d.headOffset, d.heads];
}

/** Causal attention forward: out[B,T,C] and the probabilities att[B,H,T,T]. */
export function attentionForward(
  dev: GpuDevice,
  out: GpuTensor,
  att: GpuTensor,
  qkv: GpuTensor,
  B: number,
  T: number,
  C: number,
  H: number,
  drop?: AttentionDropout,
): void {
  const scale = 1 / Math.sqrt(C / H), rows = B * H * T;
  if (drop === undefined) {
    return runElementwise(dev, FORWARD, [out, att, qkv], rows, [T, C, H, scale]);
  }
  if (rows === 0) return;
  const pd = dev.scratch("attention_pd", rows * T);
  runElementwise(dev, FORWARD_DROP, [out, att, qkv, pd], rows, [
    T,
    C,
    H,
    scale,
    ...dropValues(drop),
  ]);
}

/** Causal attention backward: dqkv += the gradient given dout and the saved att. */
export function attentionBackward(
  dev: GpuDevice,
  dqkv: GpuTensor,
  dout: GpuTensor,
  qkv: GpuTensor,
  att: GpuTensor,
  B: number,
  T: number,
  C: number,
  H: number,
  drop?: AttentionDropout,
): void {
  const rows = B * H * T;
  if (rows === 0) return;
  const scale = 1 / Math.sqrt(C / H);
  const dpre = dev.scratch("attention_dpre", rows * T);
  if (drop === undefined) {
    const tensors = [dqkv, dout, qkv, att, dpre];
    runElementwise(dev, BACKWARD_QUERY, tensors, rows, [T, C, H, scale]);
    runElementwise(dev, BACKWARD_KEY, tensors, rows, [T, C, H, scale]);
    return;
  }
  const pd = dev.scratch("attention_pd", rows * T);
  const tensors = [dqkv, dout, qkv, att, dpre, pd];
  runElementwise(dev, BACKWARD_QUERY_DROP, tensors, rows, [T, C, H, scale, ...dropValues(drop)]);
  runElementwise(dev, BACKWARD_KEY, [dqkv, dout, qkv, pd, dpre], rows, [T, C, H, scale]);
}
