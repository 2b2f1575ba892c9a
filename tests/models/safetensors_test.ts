import assert from "node:assert/strict";
import {
  decodeSafetensors,
  encodeSafetensors,
  readSafetensors,
  toFloat32,
  toInt32,
  writeSafetensors,
} from "../../models/mod.ts";

/** A file built by hand from a header object and data bytes, as another writer would. */
function rawFile(header: unknown, data: Uint8Array, headerLen?: number): Uint8Array {
  const h = new TextEncoder().encode(JSON.stringify(header));
  const out = new Uint8Array(8 + h.length + data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerLen ?? h.length), true);
  out.set(h, 8);
  out.set(data, 8 + h.length);
  return out;
}

Deno.test("encodeSafetensors() and decodeSafetensors() round-trip F32, I32, scalars, metadata", () => {
  const w = new Float32Array([1.5, -2, 3.25, 0, 1e-30, -7]);
  const ids = new Int32Array([-3, 2147483647, 0]);
  const bytes = encodeSafetensors(
    { w: { shape: [2, 3], data: w }, ids: { shape: [3], data: ids } },
    { format: "pt", note: "hello" },
  );
  const len = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  assert.equal(len % 8, 0, "the header is padded to 8 bytes");
  const f = decodeSafetensors(bytes);
  assert.deepEqual([...f.tensors.keys()], ["w", "ids"]);
  assert.deepEqual(f.metadata, { format: "pt", note: "hello" });
  assert.deepEqual(f.tensors.get("w")!.shape, [2, 3]);
  assert.equal(f.tensors.get("w")!.dtype, "F32");
  assert.deepEqual(toFloat32(f.tensors.get("w")!), w);
  assert.deepEqual(toInt32(f.tensors.get("ids")!), ids);

  const s = decodeSafetensors(
    encodeSafetensors({ loss: { shape: [], data: new Float32Array([2.5]) } }),
  );
  assert.deepEqual(s.tensors.get("loss")!.shape, []);
  assert.deepEqual(toFloat32(s.tensors.get("loss")!), new Float32Array([2.5]));
});

Deno.test("the header is the documented layout: length, JSON with data_offsets, raw bytes", () => {
  const bytes = encodeSafetensors({
    a: { shape: [1], data: new Float32Array([1]) },
    b: { shape: [2], data: new Float32Array([2, 3]) },
  });
  const len = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + len)));
  assert.deepEqual(header.a, { dtype: "F32", shape: [1], data_offsets: [0, 4] });
  assert.deepEqual(header.b, { dtype: "F32", shape: [2], data_offsets: [4, 12] });
  const data = new Float32Array(bytes.slice(8 + len).buffer);
  assert.deepEqual(data, new Float32Array([1, 2, 3]));
});

Deno.test("F16, BF16 and F64 tensors read as float32", () => {
  // 1.0, -2.0, 0.5, 65504, a subnormal (2^-24), +inf in F16
  const f16 = new Uint16Array([0x3c00, 0xc000, 0x3800, 0x7bff, 0x0001, 0x7c00]);
  // 1.0, -2.0, 3.140625 in BF16
  const bf16 = new Uint16Array([0x3f80, 0xc000, 0x4049]);
  const f64 = new Float64Array([0.1, -1e10]);
  const f = decodeSafetensors(encodeSafetensors({
    h: { shape: [6], data: f16, dtype: "F16" },
    b: { shape: [3], data: bf16, dtype: "BF16" },
    d: { shape: [2], data: f64 },
  }));
  assert.deepEqual([...toFloat32(f.tensors.get("h")!)], [1, -2, 0.5, 65504, 2 ** -24, Infinity]);
  assert.deepEqual([...toFloat32(f.tensors.get("b")!)], [1, -2, 3.140625]);
  assert.deepEqual(toFloat32(f.tensors.get("d")!), new Float32Array([0.1, -1e10]));
  assert.throws(() => toInt32(f.tensors.get("h")!), /use toFloat32/);
});

Deno.test("a file written by another writer (unpadded header, out-of-order offsets) reads", () => {
  const data = new Uint8Array(new Float32Array([7, 8, 9]).buffer);
  const f = decodeSafetensors(rawFile({
    late: { dtype: "F32", shape: [1], data_offsets: [8, 12] },
    early: { dtype: "F32", shape: [2], data_offsets: [0, 8] },
  }, data));
  assert.deepEqual(toFloat32(f.tensors.get("early")!), new Float32Array([7, 8]));
  assert.deepEqual(toFloat32(f.tensors.get("late")!), new Float32Array([9]));
});

Deno.test("corrupt files are rejected with a message that says what is wrong", () => {
  const four = new Uint8Array(16);
  const ok = { dtype: "F32", shape: [2], data_offsets: [0, 8] };
  const cases: [Uint8Array, RegExp][] = [
    [new Uint8Array(5), /too short.*truncated/],
    [rawFile({ a: ok }, four, 10_000), /runs past the end.*truncated/],
    [rawFile({ a: ok }, four, 2 ** 40), /exceeds/],
    [
      (() => {
        const b = rawFile({ a: ok }, four);
        b[8] = 0x7b + 1;
        return b;
      })(),
      /not valid UTF-8 JSON/,
    ],
    [rawFile([1, 2], four), /must be a JSON object/],
    [rawFile({ a: { ...ok, dtype: "Q4" } }, four), /dtype "Q4"/],
    [rawFile({ a: { ...ok, shape: [-2] } }, four), /shape \[-2\]/],
    [rawFile({ a: { ...ok, data_offsets: [8, 0] } }, four), /data_offsets/],
    [rawFile({ a: { ...ok, shape: [3] } }, four), /needs 12 bytes but data_offsets give 8/],
    [rawFile({ a: { ...ok, data_offsets: [12, 20] } }, four), /ends at byte 20.*truncated/],
    [
      rawFile({ a: ok, b: { dtype: "F32", shape: [2], data_offsets: [4, 12] } }, four),
      /"a" and "b" overlap/,
    ],
    [rawFile({ __metadata__: { n: 3 }, a: ok }, four), /__metadata__.n must be a string/],
  ];
  for (const [bytes, msg] of cases) {
    assert.throws(() => decodeSafetensors(bytes), (e: Error) => {
      assert.ok(e instanceof TypeError, `${e}`);
      assert.match(e.message, /^Corrupt safetensors file: /);
      assert.match(e.message, msg);
      return true;
    });
  }
});

Deno.test("encodeSafetensors() rejects a shape that does not match the data", () => {
  assert.throws(
    () => encodeSafetensors({ w: { shape: [2, 2], data: new Float32Array(3) } }),
    /shape \[2,2\] \(4 elements\) but 3 values/,
  );
  assert.throws(
    () => encodeSafetensors({ w: { shape: [2], data: new Uint16Array(2) } }),
    /needs an explicit dtype/,
  );
});

Deno.test("writeSafetensors() and readSafetensors() go through a file; errors name it", async () => {
  const path = await Deno.makeTempFile({ suffix: ".safetensors" });
  try {
    await writeSafetensors(path, { x: { shape: [2], data: new Float32Array([4, 5]) } });
    const f = await readSafetensors(path);
    assert.deepEqual(toFloat32(f.tensors.get("x")!), new Float32Array([4, 5]));
    const bytes = await Deno.readFile(path);
    await Deno.writeFile(path, bytes.subarray(0, bytes.length - 3));
    await assert.rejects(() => readSafetensors(path), (e: Error) => {
      assert.ok(e.message.startsWith(path));
      assert.match(e.message, /truncated/);
      return true;
    });
  } finally {
    await Deno.remove(path);
  }
});
