// The 16-bit conversions of kernels/half.ts against independent references: f16 against
// Math.f16round (V8's own rounding of a Number), bf16 against a slow rounding that compares the
// two neighbours' distances in float64 (exact for float32 inputs), over every f16 and bf16 bit
// pattern and 2^18 random float32 bit patterns.

import assert from "node:assert/strict";
import {
  createCpuBackend,
  halfBits,
  halfValue,
  Rng,
  roundHalf,
  widenHalf,
} from "../../kernels/mod.ts";

/** The value of bf16 bits, by its fields. */
function bf16Slow(h: number): number {
  const s = h & 0x8000 ? -1 : 1, e = (h >> 7) & 0xff, m = h & 0x7f;
  if (e === 0xff) return m === 0 ? s * Infinity : NaN;
  return e === 0 ? s * m * 2 ** -133 : s * (1 + m / 128) * 2 ** (e - 127);
}

/** bf16 bits of a float32 value x, nearest neighbour by distance, ties to the even one. */
function bf16RoundSlow(x: number): number {
  if (Number.isNaN(x)) return 0x7fc0;
  const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0, a = Math.abs(x);
  // The largest bits whose magnitude is <= a, then the next one up (0x7f80 counts as 2^128).
  let lo = 0;
  for (let step = 0x4000; step > 0; step >>= 1) {
    if (lo + step <= 0x7f80 && bf16Slow(lo + step) <= a) lo += step;
  }
  if (lo === 0x7f80 || bf16Slow(lo) === a) return sign | lo;
  const hi = lo + 1, vhi = hi === 0x7f80 ? 2 ** 128 : bf16Slow(hi);
  const dl = a - bf16Slow(lo), dh = vhi - a;
  return sign | (dl < dh ? lo : dh < dl ? hi : lo % 2 === 0 ? lo : hi);
}

const sameValue = (a: number, b: number) => Object.is(a, b) || (Number.isNaN(a) && Number.isNaN(b));

Deno.test("widenHalf() gives every f16 and bf16 bit pattern its exact value", () => {
  const bits = Uint16Array.from({ length: 65536 }, (_, i) => i);
  const f16 = new Float32Array(65536), bf16 = new Float32Array(65536);
  const bf64 = new Float64Array(65536);
  widenHalf("f16", bits, f16);
  widenHalf("bf16", bits, bf16);
  widenHalf("bf16", bits, bf64);
  const f16s = new Float16Array(bits.buffer);
  for (let i = 0; i < 65536; i++) {
    if (!sameValue(f16[i], f16s[i])) assert.fail(`f16 ${i.toString(16)}: ${f16[i]}`);
    const want = bf16Slow(i);
    if (!sameValue(bf16[i], want)) assert.fail(`bf16 ${i.toString(16)}: ${bf16[i]}, want ${want}`);
    if (!sameValue(bf64[i], want)) assert.fail(`bf16 (f64) ${i.toString(16)}: ${bf64[i]}`);
    if (!sameValue(halfValue("bf16", i), want)) assert.fail(`halfValue bf16 ${i}`);
  }
});

Deno.test("roundHalf() rounds float32 to nearest even like Math.f16round and a slow bf16 rounding", () => {
  const rng = new Rng(11), n = 1 << 18;
  const u = Uint32Array.from({ length: n }, () => rng.nextUint32());
  // Neighbourhoods of the f16 and bf16 rounding points: every low-bit pattern near a tie.
  for (let i = 0; i < 4096; i++) u[i] = (0x3f800000 + (i << 4)) | 0;
  for (let i = 0; i < 4096; i++) u[4096 + i] = (0x33000000 + i * 997) >>> 0; // f16 subnormals
  const x = new Float32Array(u.buffer), f16 = new Uint16Array(n), bf16 = new Uint16Array(n);
  roundHalf("f16", x, f16);
  roundHalf("bf16", x, bf16);
  for (let i = 0; i < n; i++) {
    const v = x[i];
    if (!sameValue(halfValue("f16", f16[i]), Math.f16round(v))) {
      assert.fail(`f16 of ${v} (bits ${u[i].toString(16)}): ${f16[i].toString(16)}`);
    }
    const want = bf16RoundSlow(v);
    if (Number.isNaN(v) ? (bf16[i] & 0x7fff) <= 0x7f80 : bf16[i] !== want) {
      assert.fail(`bf16 of ${v} (bits ${u[i].toString(16)}): ${bf16[i].toString(16)} want ${want}`);
    }
  }
});

Deno.test("roundHalf() of a Float64Array rounds once, not through float32", () => {
  const x = new Float64Array([
    1 + 2 ** -11 + 2 ** -40,
    1 + 2 ** -8 + 2 ** -40,
    1 + 2 ** -8 - 2 ** -40,
  ]);
  const f16 = new Uint16Array(3), bf16 = new Uint16Array(3);
  roundHalf("f16", x, f16);
  roundHalf("bf16", x, bf16);
  assert.equal(halfValue("f16", f16[0]), 1 + 2 ** -10); // float32 would make it a tie: 1
  assert.equal(halfValue("bf16", bf16[1]), 1 + 2 ** -7); // likewise
  assert.equal(halfValue("bf16", bf16[2]), 1);
  const rng = new Rng(12);
  const y = Float64Array.from(
    { length: 100_000 },
    () => (rng.uniform() - 0.5) * 2 ** (rng.uniform() * 200 - 100),
  );
  const b = new Uint16Array(y.length);
  roundHalf("bf16", y, b);
  for (let i = 0; i < y.length; i++) {
    // The nearest bf16 to the float64 value: compare with both neighbours of the result.
    const v = halfValue("bf16", b[i]), d = Math.abs(y[i] - v);
    const up = halfValue("bf16", b[i] + 1), down = halfValue("bf16", b[i] - 1);
    assert.ok(d <= Math.abs(y[i] - up) && d <= Math.abs(y[i] - down), `bf16 of ${y[i]}`);
  }
  assert.equal(halfBits("bf16", 1e300), 0x7f80);
  assert.equal(halfBits("f16", -1e300), 0xfc00);
  assert.equal(halfBits("bf16", 1 + 2 ** -8 + 2 ** -30), 0x3f81);
});

Deno.test("roundHalf() and widenHalf() reject a bad dtype and a short output", () => {
  // deno-lint-ignore no-explicit-any
  assert.throws(() => roundHalf("fp8" as any, new Float32Array(1), new Uint16Array(1)), TypeError);
  assert.throws(() => roundHalf("f16", new Float32Array(3), new Uint16Array(4), 2), RangeError);
  assert.throws(() => widenHalf("bf16", new Uint16Array(3), new Float32Array(2)), RangeError);
});

Deno.test("the CPU backend's SIMD bf16 conversions give half.ts's bits: every bf16 pattern, 2^18 random float32s, specials, odd lengths and offsets", async () => {
  const be = createCpuBackend();
  // Widen every bf16 pattern through read(), against widenHalf.
  const all = new Uint16Array(65536).map((_, i) => i);
  const t = be.alloc(all.length, "bf16");
  be.write(t, all);
  const got = new Int32Array((await be.read(t) as Float32Array).buffer);
  const want = new Float32Array(all.length);
  widenHalf("bf16", all, want);
  assert.deepEqual(got, new Int32Array(want.buffer));
  // Round through write() at an offset, a length that is no multiple of 8.
  const rng = new Rng(7), n = (1 << 18) + 5;
  const bits = new Int32Array(n);
  for (let i = 0; i < n; i++) bits[i] = (rng.uniform() * 2 ** 32) | 0;
  const specials = [
    0x7f800000,
    0xff800000,
    0x7fc00000,
    0x7f800001,
    0xffffffff,
    0x7f7fffff,
    0x7f7f8000,
    0x00008000,
    0x00018000,
    0x3f808000,
    0x3f818000,
    0,
    0x80000000,
    0x7fff8000,
  ];
  specials.forEach((v, i) => bits[i] = v | 0);
  const src = new Float32Array(bits.buffer), off = 3;
  const u = be.alloc(n + off + 2, "bf16");
  be.write(u, src, off);
  const raw = be.hostView(u) as Uint16Array;
  const ref = new Uint16Array(n + off + 2);
  roundHalf("bf16", src, ref, off);
  assert.deepEqual(raw, ref);
  be.dispose();
});
