// dropoutHash() is MurmurHash3 (x86, 32-bit) of the index's 4 little-endian bytes with the key as
// seed: checked against the published vector for four zero bytes and against a byte-wise
// transcription of the reference algorithm; dropoutThreshold() is floor(p * 2^32).

import assert from "node:assert/strict";
import { dropoutHash, dropoutThreshold, Rng } from "../../kernels/mod.ts";

/** MurmurHash3_x86_32 of `bytes` with `seed`, as the reference C code reads it. */
function murmur3(bytes: Uint8Array, seed: number): number {
  let h = seed >>> 0;
  const n = bytes.length & ~3;
  for (let i = 0; i < n; i += 4) {
    let k = bytes[i] | (bytes[i + 1] << 8) | (bytes[i + 2] << 16) | (bytes[i + 3] << 24);
    k = Math.imul(k, 0xcc9e2d51);
    k = (k << 15) | (k >>> 17);
    k = Math.imul(k, 0x1b873593);
    h ^= k;
    h = (h << 13) | (h >>> 19);
    h = (Math.imul(h, 5) + 0xe6546b64) | 0;
  }
  h ^= bytes.length;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

Deno.test("dropoutHash() is MurmurHash3 x86_32 of the index's bytes, seeded by the key", () => {
  assert.equal(dropoutHash(0, 0), 0x2362f9de); // the published vector for 4 zero bytes, seed 0
  const rng = new Rng(5), b = new Uint8Array(4), v = new DataView(b.buffer);
  for (let i = 0; i < 1000; i++) {
    const key = rng.nextUint32(), g = i < 2 ? 0xffffffff - i : rng.nextUint32();
    v.setUint32(0, g, true);
    assert.equal(dropoutHash(key, g), murmur3(b, key), `key ${key}, g ${g}`);
  }
});

Deno.test("dropoutThreshold() is floor(p * 2^32) and rejects p outside [0, 1)", () => {
  assert.equal(dropoutThreshold(0), 0);
  assert.equal(dropoutThreshold(0.5), 2 ** 31);
  assert.equal(dropoutThreshold(1 - 2 ** -40), 2 ** 32 - 1);
  for (const p of [1, -0.1, NaN]) assert.throws(() => dropoutThreshold(p), /p must be in \[0, 1\)/);
});
