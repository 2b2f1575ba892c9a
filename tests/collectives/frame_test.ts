import assert from "node:assert/strict";
import {
  decodeHeader,
  encodeHeader,
  FRAME_MAGIC,
  FrameError,
  type FrameHeader,
  FrameOp,
  FrameReader,
  HEADER_BYTES,
  PROTOCOL_VERSION,
  writeAll,
  writeFrame,
} from "../../collectives/frame.ts";
import { connectTcp } from "../../collectives/tcp.ts";
import { rendezvous } from "../../collectives/rendezvous.ts";
import { CollectiveError } from "../../collectives/communicator.ts";

const opts = { sanitizeOps: true, sanitizeResources: true };

const sample: FrameHeader = {
  op: FrameOp.reduceScatter,
  kind: 0x21,
  src: 7,
  group: 0xdeadbeef,
  tag: -5,
  seq: 123456,
  total: 1 << 30,
  arg: 3,
  length: 4096,
};

function header(h: Partial<FrameHeader> = {}): Uint8Array {
  const out = new Uint8Array(HEADER_BYTES);
  encodeHeader(out, { ...sample, ...h });
  return out;
}

/** A reader that hands out at most `step` bytes per read, from a fixed byte string. */
function trickle(bytes: Uint8Array, step: number) {
  let off = 0;
  return {
    read(p: Uint8Array): Promise<number | null> {
      if (off >= bytes.length) return Promise.resolve(null);
      const n = Math.min(step, p.length, bytes.length - off);
      p.set(bytes.subarray(off, off + n));
      off += n;
      return Promise.resolve(n);
    },
  };
}

Deno.test("a header survives encode and decode with every field intact", () => {
  const buf = new Uint8Array(HEADER_BYTES + 3);
  encodeHeader(buf, sample, 3);
  assert.deepEqual(decodeHeader(buf, 3), sample);
  assert.equal(new DataView(buf.buffer).getUint32(3, true), FRAME_MAGIC);
});

Deno.test("decodeHeader() rejects a wrong magic, a wrong version, an unknown op and oversize", () => {
  const bad = header();
  bad[0] = 0x47; // "G" of "GET /"
  assert.throws(() => decodeHeader(bad), (e) => e instanceof FrameError && /magic/.test(e.message));
  const v = header();
  new DataView(v.buffer).setUint16(4, PROTOCOL_VERSION + 1, true);
  assert.throws(() => decodeHeader(v), /protocol version 2/);
  assert.throws(() => decodeHeader(header({ op: 99 })), /unknown frame op 99/);
  assert.throws(
    () => decodeHeader(header({ length: 1000 }), 0, 999),
    /1000 bytes exceeds the limit of 999/,
  );
});

Deno.test("FrameReader parses frames that arrive a few bytes at a time", async () => {
  const sizes = [0, 1, 5, 20_000, 70_001, 3];
  const parts: Uint8Array[] = [];
  for (const [i, n] of sizes.entries()) {
    const f = new Uint8Array(HEADER_BYTES + n);
    encodeHeader(f, { ...sample, tag: i, length: n });
    for (let k = 0; k < n; k++) f[HEADER_BYTES + k] = (k * 31 + i) & 255;
    parts.push(f);
  }
  const all = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
  let o = 0;
  for (const p of parts) all.set(p, (o += p.length) - p.length);
  for (const step of [1, 7, 4096, 1 << 20]) {
    const r = new FrameReader(trickle(all, step), 1 << 20, 1024);
    for (const [i, n] of sizes.entries()) {
      // Every other frame goes straight into a destination the consumer posted.
      const posted = new Uint8Array(n);
      const f = await r.next((h) => (h.tag % 2 === 0 ? posted : undefined));
      assert.ok(f !== null);
      assert.equal(f.header.tag, i);
      assert.equal(f.payload.length, n);
      if (i % 2 === 0) assert.equal(f.payload, posted);
      for (let k = 0; k < n; k++) {
        if (f.payload[k] !== ((k * 31 + i) & 255)) {
          assert.fail(`frame ${i} byte ${k} (step ${step})`);
        }
      }
    }
    assert.equal(await r.next(), null, "a clean end of stream reads as null");
  }
});

Deno.test("FrameReader reports a stream cut inside a frame as truncated", async () => {
  const f = new Uint8Array(HEADER_BYTES + 100);
  encodeHeader(f, { ...sample, length: 100 });
  const r = new FrameReader(trickle(f.subarray(0, 60), 16));
  await assert.rejects(() => r.next(), (e) => e instanceof FrameError && e.truncated);
});

Deno.test("writeAll() keeps writing until a partial writer has taken every byte", async () => {
  const got: number[] = [];
  const w = {
    write(p: Uint8Array): Promise<number> {
      const n = Math.min(3, p.length);
      got.push(...p.subarray(0, n));
      return Promise.resolve(n);
    },
  };
  const data = Uint8Array.from({ length: 1000 }, (_, i) => i & 255);
  await writeAll(w, data);
  assert.deepEqual(got, Array.from(data));
});

async function untilClosed(conn: Deno.TcpConn): Promise<void> {
  const buf = new Uint8Array(256);
  try {
    while ((await conn.read(buf)) !== null) { /* drain */ }
  } catch { /* reset: closed as well */ }
  conn.close();
}

Deno.test({
  name:
    "garbage, a wrong magic, a wrong version and an oversized frame are dropped, the job goes on",
  ...opts,
  async fn() {
    const logs: string[] = [];
    const original = console.error;
    console.error = (...a: unknown[]) => logs.push(a.join(" "));
    try {
      let port = 0;
      let listening!: () => void;
      const ready = new Promise<void>((r) => (listening = r));
      const rank0 = connectTcp({
        rank: 0,
        size: 2,
        masterAddr: "127.0.0.1",
        masterPort: 0,
        timeoutMs: 20_000,
        onListen: (p) => {
          port = p;
          listening();
        },
      });
      await ready;
      const v = header({ op: FrameOp.hello, length: 0 });
      new DataView(v.buffer).setUint16(4, 9, true);
      const attacks = [
        new TextEncoder().encode("GET / HTTP/1.1\r\nHost: x\r\n\r\n" + "x".repeat(40)),
        header({ op: FrameOp.hello, length: 0 }).map((b, i) => (i < 4 ? 0 : b)),
        v,
        header({ op: FrameOp.hello, length: 0xffffffff }),
      ];
      for (const bytes of attacks) {
        const c = await Deno.connect({ hostname: "127.0.0.1", port });
        await writeAll(c, bytes);
        await untilClosed(c); // rank 0 hangs up on it
      }
      const rank1 = connectTcp({ rank: 1, size: 2, masterAddr: "127.0.0.1", masterPort: port });
      const comms = await Promise.all([rank0, rank1]);
      const bufs = comms.map((c) => new Float32Array([c.rank + 1, 10]));
      await Promise.all(comms.map((c, i) => c.allReduce(bufs[i]!)));
      for (const b of bufs) assert.deepEqual(Array.from(b), [3, 20]);
      await Promise.all(comms.map((c) => c.close()));
    } finally {
      console.error = original;
    }
    assert.equal(logs.length, 4, logs.join("\n"));
    assert.match(logs[0]!, /dropped connection from 127\.0\.0\.1:\d+: bad magic/);
    assert.match(logs[1]!, /bad magic 0x00000000/);
    assert.match(logs[2]!, /protocol version 9/);
    assert.match(logs[3]!, /exceeds the limit/);
  },
});

Deno.test({
  name: "rendezvous rejects a world-size disagreement and a duplicate rank on every side",
  ...opts,
  async fn() {
    const quiet = { timeoutMs: 10_000, masterAddr: "127.0.0.1" };
    let port = 0;
    let listening!: () => void;
    let ready = new Promise<void>((r) => (listening = r));
    const onListen = (p: number) => {
      port = p;
      listening();
    };
    const master = rendezvous({ ...quiet, rank: 0, size: 3, masterPort: 0, onListen });
    await ready;
    const wrong = rendezvous({ ...quiet, rank: 1, size: 4, masterPort: port });
    const [m, w] = await Promise.allSettled([master, wrong]);
    assert.equal(m.status, "rejected");
    assert.match(
      String(m.reason),
      /RangeError.*rank 1 says the world has 4 ranks but rank 0 says 3/,
    );
    assert.equal(w.status, "rejected");
    assert.match(String(w.reason), /RangeError.*same world size/);

    ready = new Promise<void>((r) => (listening = r));
    const master2 = rendezvous({ ...quiet, rank: 0, size: 3, masterPort: 0, onListen });
    await ready;
    const a = rendezvous({ ...quiet, rank: 2, size: 3, masterPort: port });
    const b = rendezvous({ ...quiet, rank: 2, size: 3, masterPort: port });
    const all = await Promise.allSettled([master2, a, b]);
    for (const r of all) {
      assert.equal(r.status, "rejected");
      assert.match(String((r as PromiseRejectedResult).reason), /two processes claim rank 2/);
    }
  },
});

Deno.test({
  name: "rendezvous gives up in time naming the ranks that never came",
  ...opts,
  async fn() {
    const err = await rendezvous({
      rank: 0,
      size: 3,
      masterAddr: "127.0.0.1",
      masterPort: 0,
      timeoutMs: 300,
    }).then(() => null, (e) => e);
    assert.ok(err instanceof CollectiveError);
    assert.equal(err.reason, "timeout");
    assert.match(err.message, /rank\(s\) 1, 2/);
    await assert.rejects(
      () => rendezvous({ rank: 3, size: 3, masterAddr: "127.0.0.1", masterPort: 1 }),
      RangeError,
    );
  },
});

Deno.test({
  name: "writeFrame() sends a frame a FrameReader reads back",
  ...opts,
  async fn() {
    const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const [a, b] = await Promise.all([
      Deno.connect({ hostname: "127.0.0.1", port: l.addr.port }),
      l.accept(),
    ]);
    const payload = Uint8Array.from({ length: 300_000 }, (_, i) => i & 255);
    await Promise.all([
      writeFrame(a, { ...sample }, payload),
      (async () => {
        const f = await new FrameReader(b).next();
        assert.equal(f?.header.seq, sample.seq);
        assert.deepEqual(f?.payload, payload);
      })(),
    ]);
    a.close();
    b.close();
    l.close();
  },
});
