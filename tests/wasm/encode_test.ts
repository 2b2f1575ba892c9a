import assert from "node:assert/strict";
import { Code, F32, I32, ModuleBuilder, V128 } from "../../wasm/mod.ts";

Deno.test("a defined memory is exported before the functions, internal ones are not", () => {
  const m = new ModuleBuilder().defineMemory({ initial: 2 }, "memory");
  const twice = m.add({
    params: [I32],
    results: [I32],
    body: new Code().get(0).i32(2).mul().bytes,
  });
  const body = new Code().get(0).call(twice).i32(-3).add().bytes;
  m.add({ exportName: "f", params: [I32], results: [I32], body });
  const inst = new WebAssembly.Instance(new WebAssembly.Module(m.bytes()));
  assert.deepEqual(Object.keys(inst.exports), ["memory", "f"]);
  assert.equal((inst.exports.memory as WebAssembly.Memory).buffer.byteLength, 2 * 65536);
  assert.equal((inst.exports.f as (x: number) => number)(20), 37);
});

Deno.test("an imported shared memory: v128 loads, stores and f32 lanes on it", () => {
  const memory = new WebAssembly.Memory({ initial: 1, maximum: 4, shared: true });
  const m = new ModuleBuilder().importMemory("m", "memory", {
    initial: 1,
    maximum: 4,
    shared: true,
  });
  // scale(p, k): the four floats at p times k; returns their sum.
  const c = new Code().get(0).get(0).v128Load(0, 0).get(1).f32x4Splat().f32x4Mul().v128Store(0, 0);
  c.get(0).v128Load().set(2).get(2).f32x4ExtractLane(0);
  for (let lane = 1; lane < 4; lane++) c.get(2).f32x4ExtractLane(lane).f32Add();
  m.add({ exportName: "scale", params: [I32, F32], results: [F32], locals: [V128], body: c.bytes });
  const inst = new WebAssembly.Instance(new WebAssembly.Module(m.bytes()), { m: { memory } });
  const f = new Float32Array(memory.buffer);
  f.set([1, 2, 3, 4], 4);
  assert.equal((inst.exports.scale as (p: number, k: number) => number)(16, 0.5), 5);
  assert.deepEqual([...f.subarray(4, 8)], [0.5, 1, 1.5, 2]);
});

Deno.test("a module has one memory", () => {
  const m = new ModuleBuilder().defineMemory({ initial: 1 });
  assert.throws(() => m.importMemory("m", "memory", { initial: 1 }), /already set/);
});
