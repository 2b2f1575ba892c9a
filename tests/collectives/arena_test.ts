import assert from "node:assert/strict";
import { runWorkers, SharedArena } from "../../collectives/mod.ts";

Deno.test("an arena allocates aligned zeroed blocks, reuses freed ones, and grows", () => {
  const arena = SharedArena.create({ initialBytes: 0 });
  const before = arena.mappedBytes;
  const a = arena.alloc(Float32Array, 10);
  const b = arena.alloc(Uint16Array, 3);
  assert.equal(a.byteOffset % 64, 0);
  assert.equal(b.byteOffset % 64, 0);
  assert.ok(b.byteOffset >= a.byteOffset + a.byteLength, "blocks overlap");
  assert.ok(arena.owns(a) && arena.owns(b.subarray(1)));
  assert.ok(!arena.owns(new Float32Array(4)));
  a.fill(3);
  arena.free(a);
  const c = arena.alloc(Float32Array, 10);
  assert.equal(c.byteOffset, a.byteOffset, "a freed block of the same size is reused");
  assert.deepEqual([...c], new Array(10).fill(0), "reused blocks are zeroed");
  const big = arena.alloc(Float64Array, 1 << 20);
  assert.ok(arena.mappedBytes >= before + 8 * (1 << 20), "the memory grew");
  big[big.length - 1] = 1;
  assert.ok(arena.owns(c), "views made before the memory grew stay recognised");
  const used = arena.usedBytes;
  arena.free(big);
  arena.free(b);
  arena.free(c);
  assert.ok(arena.usedBytes < used);
  assert.equal(arena.usedBytes, 0);
});

Deno.test("arena misuse throws errors that say what to do", () => {
  const arena = SharedArena.create();
  const a = arena.alloc(Int32Array, 16);
  assert.throws(() => arena.free(a.subarray(1)), /not a subarray/);
  assert.throws(() => arena.free(new Int32Array(4)), /not allocated by this arena/);
  arena.free(a);
  assert.throws(() => arena.free(a), /already freed/);
  assert.throws(() => arena.alloc(Float32Array, -1), RangeError);
  assert.throws(() => SharedArena.create({ maxBytes: 1 }), /maxBytes/);
  const small = SharedArena.create({ initialBytes: 0, maxBytes: 4 << 20 });
  assert.throws(() => small.alloc(Uint8Array, 8 << 20), /larger maxBytes/);
  assert.throws(
    () => SharedArena.from(new WebAssembly.Memory({ initial: 1, maximum: 2, shared: true })),
    /not an arena/,
  );
});

Deno.test("rank Workers allocate from one arena at the same time without overlapping", async () => {
  const res = await runWorkers<string[]>({
    size: 4,
    module: new URL("./_workers/arena.ts", import.meta.url),
    data: { rounds: 300 },
  });
  assert.deepEqual(res, [[], [], [], []]);
});
