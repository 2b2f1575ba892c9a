import assert from "node:assert/strict";
import {
  bf16BitsToF32,
  f16BitsToF32,
  f32ToBf16Bits,
  f32ToF16Bits,
  f32ToF16BitsSlow,
  finishAvg,
  reduceInto,
  reduceTo,
} from "../../collectives/reduce.ts";

// A small deterministic generator so failures reproduce.
function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 4294967296;
  };
}

Deno.test("f16BitsToF32() decodes known float16 patterns exactly", () => {
  assert.equal(f16BitsToF32(0x3c00), 1);
  assert.equal(f16BitsToF32(0xc000), -2);
  assert.equal(f16BitsToF32(0x7bff), 65504);
  assert.equal(f16BitsToF32(0x0001), 2 ** -24);
  assert.equal(f16BitsToF32(0x0400), 2 ** -14);
  assert.equal(f16BitsToF32(0x7c00), Infinity);
  assert.equal(f16BitsToF32(0xfc00), -Infinity);
  assert.ok(Number.isNaN(f16BitsToF32(0x7e00)));
  assert.ok(Object.is(f16BitsToF32(0x8000), -0));
});

Deno.test("f32ToF16Bits() round-trips every float16 value", () => {
  for (let h = 0; h < 65536; h++) {
    const v = f16BitsToF32(h);
    const want = Number.isNaN(v) ? 0x7e00 : h;
    assert.equal(f32ToF16Bits(v), want, `bits 0x${h.toString(16)}`);
    assert.equal(f32ToF16BitsSlow(v), want, `slow path, bits 0x${h.toString(16)}`);
  }
});

Deno.test("f32ToF16Bits() rounds halfway cases to even and overflows to infinity", () => {
  // 1 + 2^-11 is halfway between 1 (even) and 1 + 2^-10 (odd): goes to 1.
  assert.equal(f32ToF16Bits(1 + 2 ** -11), 0x3c00);
  // 1 + 3 * 2^-11 is halfway between 1 + 2^-10 (odd) and 1 + 2^-9 (even): goes up.
  assert.equal(f32ToF16Bits(1 + 3 * 2 ** -11), 0x3c02);
  assert.equal(f32ToF16Bits(65519), 0x7bff);
  assert.equal(f32ToF16Bits(65520), 0x7c00);
  assert.equal(f32ToF16Bits(-1e9), 0xfc00);
  assert.equal(f32ToF16Bits(2 ** -25), 0); // halfway to the smallest subnormal: even is 0
  assert.equal(f32ToF16Bits(3 * 2 ** -25), 2); // halfway between 1 and 2 units: even is 2
  assert.equal(f32ToF16Bits(NaN), 0x7e00);
  assert.equal(f32ToF16Bits(-0), 0x8000);
});

Deno.test("f32ToF16Bits() agrees with its arithmetic reference on random values", () => {
  const rnd = lcg(7);
  for (let i = 0; i < 20000; i++) {
    const x = (rnd() - 0.5) * 2 ** Math.floor(rnd() * 44 - 28);
    assert.equal(f32ToF16Bits(x), f32ToF16BitsSlow(x), `x = ${x}`);
  }
});

Deno.test("f32ToBf16Bits() rounds to nearest even and keeps NaN and infinities", () => {
  assert.equal(f32ToBf16Bits(1), 0x3f80);
  assert.equal(bf16BitsToF32(0x3f80), 1);
  assert.equal(f32ToBf16Bits(1 + 2 ** -8), 0x3f80); // halfway, even stays
  assert.equal(f32ToBf16Bits(1 + 3 * 2 ** -8), 0x3f82); // halfway, odd goes up
  assert.equal(f32ToBf16Bits(Infinity), 0x7f80);
  assert.equal(f32ToBf16Bits(-Infinity), 0xff80);
  assert.equal(f32ToBf16Bits(NaN), 0x7fc0);
  assert.equal(f32ToBf16Bits(3.5e38), 0x7f80); // rounds past the largest bfloat16
  for (let h = 0; h < 65536; h++) {
    const v = bf16BitsToF32(h);
    if (!Number.isNaN(v)) assert.equal(f32ToBf16Bits(v), h);
  }
});

Deno.test("reduceInto() sums, maxes and mins float32 and int32 element-wise", () => {
  const a = new Float32Array([1, -2, 3.5, NaN]);
  reduceInto(a, new Float32Array([10, 20, -30, 1]), "sum", "float32");
  assert.deepEqual(Array.from(a.subarray(0, 3)), [11, 18, -26.5]);
  assert.ok(Number.isNaN(a[3]));
  const m = new Float32Array([1, 5, -1]);
  reduceInto(m, new Float32Array([2, 4, -3]), "max", "float32");
  assert.deepEqual(Array.from(m), [2, 5, -1]);
  reduceInto(m, new Float32Array([0, 9, -2]), "min", "float32");
  assert.deepEqual(Array.from(m), [0, 5, -2]);
  const i = new Int32Array([2147483647, -5, 7]);
  reduceInto(i, new Int32Array([1, 3, -9]), "sum", "int32");
  assert.deepEqual(Array.from(i), [-2147483648, -2, -2]); // wraps like int32_t
  reduceInto(i, new Int32Array([0, 0, 0]), "max", "int32");
  assert.deepEqual(Array.from(i), [0, 0, 0]);
});

Deno.test("reduceInto() reduces float16 and bfloat16 in float32 precision and rounds once", () => {
  const rnd = lcg(3);
  for (const dtype of ["float16", "bfloat16"] as const) {
    const enc = dtype === "float16" ? f32ToF16Bits : f32ToBf16Bits;
    const dec = dtype === "float16" ? f16BitsToF32 : bf16BitsToF32;
    const n = 1000;
    const a = new Uint16Array(n), b = new Uint16Array(n);
    for (let i = 0; i < n; i++) {
      a[i] = enc((rnd() - 0.5) * 100);
      b[i] = enc((rnd() - 0.5) * 100);
    }
    for (const op of ["sum", "max", "min"] as const) {
      const acc = a.slice();
      reduceInto(acc, b, op, dtype);
      for (let i = 0; i < n; i++) {
        const x = dec(a[i]!), y = dec(b[i]!);
        const exact = op === "sum" ? x + y : op === "max" ? Math.max(x, y) : Math.min(x, y);
        assert.equal(acc[i], enc(exact), `${dtype} ${op} at ${i}`);
        // One rounding: within half a unit in the last place of the result.
        const got = dec(acc[i]!);
        const ulp = dtype === "float16" ? 2 ** -10 : 2 ** -7;
        assert.ok(Math.abs(got - exact) <= Math.abs(exact) * ulp / 2 + 2 ** -24);
      }
    }
  }
});

Deno.test("reduceTo() folds into an aliased operand and rejects unequal lengths", () => {
  const a = new Float32Array([1, 2, 3]);
  const b = new Float32Array([4, 5, 6]);
  const d = new Float32Array(3);
  reduceTo(d, a, b, "sum", "float32");
  assert.deepEqual(Array.from(d), [5, 7, 9]);
  reduceTo(b, a, b, "max", "float32");
  assert.deepEqual(Array.from(b), [4, 5, 6]);
  reduceInto(a.subarray(1), b.subarray(1), "sum", "float32");
  assert.deepEqual(Array.from(a), [1, 7, 9]);
  assert.throws(
    () => reduceInto(new Float32Array(2), new Float32Array(3), "sum", "float32"),
    RangeError,
  );
  assert.throws(
    () => reduceInto(new Float32Array(2), new Float32Array(2), "prod" as "sum", "float32"),
    TypeError,
  );
});

Deno.test("finishAvg() divides, truncating toward zero for int32", () => {
  const f = new Float32Array([3, -3, 1]);
  finishAvg(f, 2, "float32");
  assert.deepEqual(Array.from(f), [1.5, -1.5, 0.5]);
  const i = new Int32Array([7, -7, 1]);
  finishAvg(i, 2, "int32");
  assert.deepEqual(Array.from(i), [3, -3, 0]);
  const h = new Uint16Array([f32ToF16Bits(3), f32ToBf16Bits(3)]);
  finishAvg(h.subarray(0, 1), 2, "float16");
  finishAvg(h.subarray(1, 2), 2, "bfloat16");
  assert.equal(f16BitsToF32(h[0]!), 1.5);
  assert.equal(bf16BitsToF32(h[1]!), 1.5);
  assert.throws(() => finishAvg(f, 0, "float32"), RangeError);
});
