// Op cases of dropout and attention dropout. The first ones state their expected values
// themselves, from dropoutHash on the host; the last ones are compared across backends (and
// rerun in 16-bit storage) like the other op cases.

import assert from "node:assert/strict";
import {
  type AttentionDropout,
  type Backend,
  dropoutHash,
  dropoutThreshold,
  halfValue,
  type HostArray,
  roundHalf,
} from "../../kernels/mod.ts";
import { type OpCase, rand, read, sameValue } from "./_case_util.ts";

const P = 0.4, KEY = 0xdeadbeef;

/** The mask of a rows x cols block at (r0, c0) of a matrix with `full` columns. */
function mask(key: number, p: number, rows: number, cols: number, r0 = 0, c0 = 0, full = cols) {
  const t = dropoutThreshold(p);
  return Array.from(
    { length: rows * cols },
    (_, i) => dropoutHash(key, (r0 + Math.floor(i / cols)) * full + c0 + (i % cols)) >= t,
  );
}

/** got[i] is 0 exactly where the mask drops, else want[i] within `tol` relative. */
function expectDropout(
  label: string,
  got: HostArray,
  want: ArrayLike<number>,
  keep: boolean[],
  tol: number,
) {
  for (let i = 0; i < keep.length; i++) {
    if (!keep[i]) {
      if (got[i] !== 0) assert.fail(`${label}[${i}] = ${got[i]}, want 0 (dropped)`);
    } else if (!(Math.abs(got[i] - want[i]) <= tol * Math.abs(want[i]))) {
      assert.fail(`${label}[${i}] = ${got[i]}, want ${want[i]} (kept)`);
    }
  }
}

const dropoutExact: OpCase = {
  name: "dropout() zeroes exactly where dropoutHash() < floor(p 2^32): offsets, in place, 16-bit",
  storage16: false,
  async run(be, rng) {
    const rows = 7, cols = 13, n = rows * cols, r0 = 5, c0 = 9, full = 40;
    const inp = rand(be, rng, n, 3), out = be.alloc(n), self = be.alloc(n), first = be.alloc(n);
    const x = await be.read(inp);
    be.copy(self, inp);
    be.dropout(out, inp, rows, cols, P, KEY, r0, c0, full);
    be.dropout(self, self, rows, cols, P, KEY, r0, c0, full); // out aliasing inp
    be.dropout(first, inp, rows, cols, P, KEY); // the block at (0, 0) of a rows x cols matrix
    const hb = be.alloc(n, "bf16"), hf = be.alloc(n, "f16"), copy0 = be.alloc(n);
    be.copy(hb, inp);
    be.dropout(hf, hb, rows, cols, P, KEY, r0, c0, full); // bf16 in, f16 out
    be.dropout(copy0, inp, rows, cols, 0, KEY); // p = 0 copies
    const got = await read(be, { out, self, first, hb, hf, copy0 });
    const keep = mask(KEY, P, rows, cols, r0, c0, full), want = x.map((v) => v / (1 - P));
    expectDropout("out", got.out, want, keep, 1e-6);
    expectDropout("self", got.self, want, keep, 1e-6);
    expectDropout("first", got.first, want, mask(KEY, P, rows, cols), 1e-6);
    // f16 of the kept bf16 values over 1 - p: within one f16 rounding (on WebGPU the f32 product
    // may differ in its last bit from the host's quotient).
    const w16 = new Uint16Array(n);
    roundHalf("f16", new Float64Array(got.hb.map((v) => v / (1 - P))), w16);
    expectDropout("hf", got.hf, Array.from(w16, (b) => halfValue("f16", b)), keep, 2 ** -10);
    for (let i = 0; i < n; i++) assert.ok(sameValue(got.copy0[i], x[i]), `p = 0 copies [${i}]`);
    return { out: got.out, self: got.self, first: got.first };
  },
};

const dropoutFraction: OpCase = {
  name: "dropout() keeps 1 - p of 100,000 elements to within 1% and scales them by 1 / (1 - p)",
  storage16: false,
  async run(be) {
    const rows = 250, cols = 400, n = rows * cols, x = be.alloc(n);
    be.fill(x, 1);
    const ps = [0.1, 0.3, 0.5], outs = ps.map(() => be.alloc(n));
    ps.forEach((p, i) => be.dropout(outs[i]!, x, rows, cols, p, 1000 + i, 3, 7, cols + 9));
    const got = await Promise.all(outs.map((t) => be.read(t)));
    ps.forEach((p, i) => {
      const a = got[i]!, s = 1 / (1 - p);
      let kept = 0, bad = -1;
      for (let j = 0; j < n; j++) {
        const v = a[j];
        if (v === 0) continue;
        kept++;
        if (!(Math.abs(v - s) <= 1e-6)) bad = j;
      }
      if (bad >= 0) assert.fail(`p = ${p}: a kept 1 became ${a[bad]}`);
      const frac = kept / n;
      assert.ok(
        Math.abs(frac - (1 - p)) <= 0.01 * (1 - p),
        `p = ${p}: kept ${frac} of the elements`,
      );
    });
    return {};
  },
};

/** out of causal attention with dropout, from qkv and the probabilities att, in float64. */
function attentionWithDropout(
  qkv: HostArray,
  att: HostArray,
  B: number,
  T: number,
  C: number,
  H: number,
  d: AttentionDropout,
): Float64Array {
  const hs = C / H, out = new Float64Array(B * T * C), thr = dropoutThreshold(d.p);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      for (let t = 0; t < T; t++) {
        for (let u = 0; u <= t; u++) {
          const g = (((d.seqOffset + b) * d.heads + d.headOffset + h) * T + t) * T + u;
          if (dropoutHash(d.key, g) < thr) continue;
          const w = att[((b * H + h) * T + t) * T + u] / (1 - d.p);
          for (let i = 0; i < hs; i++) {
            out[(b * T + t) * C + h * hs + i] += w * qkv[(b * T + u) * 3 * C + 2 * C + h * hs + i];
          }
        }
      }
    }
  }
  return out;
}

const attentionDirect: OpCase = {
  name:
    "attentionForward() with dropout matches a direct computation; p = 0 is bit-identical to none",
  storage16: false,
  async run(be: Backend, rng) {
    const B = 2, T = 7, C = 8, H = 2;
    const drop = { p: 0.3, key: 99, seqOffset: 3, headOffset: 1, heads: 5 };
    const qkv = rand(be, rng, B * T * 3 * C, 2);
    const [out, att, out0, att0, outz, attz] = [C, H * T, C, H * T, C, H * T].map((k) =>
      be.alloc(B * T * k)
    );
    be.attentionForward(out!, att!, qkv, B, T, C, H, drop);
    be.attentionForward(out0!, att0!, qkv, B, T, C, H);
    be.attentionForward(outz!, attz!, qkv, B, T, C, H, { ...drop, p: 0 });
    const dout = rand(be, rng, B * T * C),
      d0 = rand(be, rng, B * T * 3 * C),
      dz = be.alloc(B * T * 3 * C);
    be.copy(dz, d0);
    be.attentionBackward(d0, dout, qkv, att0!, B, T, C, H);
    be.attentionBackward(dz, dout, qkv, att0!, B, T, C, H, { ...drop, p: 0 });
    const got = await read(be, {
      qkv,
      out: out!,
      att: att!,
      out0: out0!,
      att0: att0!,
      outz: outz!,
      attz: attz!,
      d0,
      dz,
    });
    const want = attentionWithDropout(got.qkv, got.att0, B, T, C, H, drop);
    for (let i = 0; i < want.length; i++) {
      if (!(Math.abs(got.out[i] - want[i]) <= 1e-5 * (1 + Math.abs(want[i])))) {
        assert.fail(`out[${i}] = ${got.out[i]}, want ${want[i]}`);
      }
    }
    for (const [a, b] of [["att", "att0"], ["outz", "out0"], ["attz", "att0"], ["dz", "d0"]]) {
      const x = got[a]!, y = got[b]!;
      for (let i = 0; i < y.length; i++) {
        assert.ok(Object.is(x[i], y[i]), `${a}[${i}] = ${x[i]}, ${b} ${y[i]}`);
      }
    }
    return { out: got.out, att: got.att };
  },
};

const dropoutBlock: OpCase = {
  name: "dropout() on a 9x11 block of a wider matrix, and in place",
  async run(be, rng) {
    const rows = 9, cols = 11, n = rows * cols;
    const inp = rand(be, rng, n), out = rand(be, rng, n), self = rand(be, rng, n);
    be.dropout(out, inp, rows, cols, 0.25, 0x12345678, 2, 4, 20);
    be.dropout(self, self, rows, cols, 0.6, 7);
    return await read(be, { out, self });
  },
};

function attentionDropoutCase(B: number, T: number, C: number, H: number): OpCase {
  return {
    name: `attentionForward() and attentionBackward() with dropout B=${B} T=${T} C=${C} H=${H}`,
    async run(be, rng) {
      const drop = { p: 0.2, key: 7 + T, seqOffset: 1, headOffset: 2, heads: H + 3 };
      const qkv = rand(be, rng, B * T * 3 * C, 2);
      const out = be.alloc(B * T * C), att = rand(be, rng, B * H * T * T);
      be.attentionForward(out, att, qkv, B, T, C, H, drop);
      const dout = rand(be, rng, B * T * C), dqkv = rand(be, rng, B * T * 3 * C);
      be.attentionBackward(dqkv, dout, qkv, att, B, T, C, H, drop);
      return await read(be, { out, att, dqkv });
    },
  };
}

/** The dropout cases. */
export const dropoutCases: readonly OpCase[] = [
  dropoutExact,
  dropoutFraction,
  attentionDirect,
  dropoutBlock,
  attentionDropoutCase(2, 17, 32, 4),
  attentionDropoutCase(1, 40, 16, 2),
];
