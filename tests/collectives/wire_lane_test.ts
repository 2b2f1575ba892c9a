// Opening lanes, one end at a time: this test plays the other rank by hand (the lane hello and
// tags from the layout documented in collectives/_tcp_lane.ts, computed by _tcp/rogue.ts) over a
// real mesh connection on loopback. A lane listener must skip strangers that got in first and
// take the peer (with a secret, the one that proves itself, and then prove itself back); a
// connecting rank must drop a lane whose far end cannot prove the secret, and both ends agree.
import assert from "node:assert/strict";
import { FrameReader } from "../../collectives/frame.ts";
import { openLanes } from "../../collectives/_tcp_lane.ts";
import type { Mesh } from "../../collectives/rendezvous.ts";
import { WireKey } from "../../collectives/_wire_auth.ts";
import { frame, Op, Replies, Role, tag } from "./_tcp/rogue.ts";

const SECRET = "lanes too";
const JOB = 0x1234abcd;
const CONNECTOR = 1, ACCEPTOR = 2;
/** Rank 1 connects to rank 0's lane listener. */
const ctx = { role: Role.lane, size: 2, jobId: JOB, connector: 1, acceptor: 0 };
const opts = { sanitizeOps: true, sanitizeResources: true };

/** A connected pair on loopback: [this test's end, the rank's end]. */
async function pair(): Promise<[Deno.TcpConn, Deno.TcpConn]> {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const [a, b] = await Promise.all([
    Deno.connect({ hostname: "127.0.0.1", port: l.addr.port }),
    l.accept(),
  ]);
  l.close();
  return [a, b];
}

/** The mesh of rank `rank` of 2, whose link to the other rank is `conn`. */
function meshOf(rank: number, conn: Deno.TcpConn, key: WireKey | null): Mesh {
  const links: Mesh["links"] = [null, null];
  links[1 - rank] = { conn, reader: new FrameReader(conn) };
  return { rank, size: 2, links, jobId: JOB, maxFrameBytes: 1 << 20, key, gate: null };
}

async function readN(conn: Deno.TcpConn, n: number): Promise<Uint8Array> {
  const out = new Uint8Array(n);
  let have = 0;
  while (have < n) {
    const k = await conn.read(out.subarray(have));
    if (k === null) throw new Error(`closed after ${have} of ${n} bytes`);
    have += k;
  }
  return out;
}

async function writeAll(conn: Deno.Conn, b: Uint8Array): Promise<void> {
  let off = 0;
  while (off < b.length) off += await conn.write(b.subarray(off));
}

/** A lane hello: rank and job id, then (with a secret) the nonce and the tag. */
function hello(rank: number, jobId: number, nonce?: Uint8Array, proof?: Uint8Array): Uint8Array {
  const out = new Uint8Array(8 + (nonce ? 16 + 32 : 0));
  const v = new DataView(out.buffer);
  v.setInt32(0, rank, true);
  v.setUint32(4, jobId, true);
  if (nonce) {
    out.set(nonce, 8);
    out.set(proof!, 24);
  }
  return out;
}

/** Collect what console.error logs while `fn` runs. */
async function logged<T>(fn: () => Promise<T>): Promise<{ value: T; logs: string[] }> {
  const logs: string[] = [];
  const original = console.error;
  console.error = (...a: unknown[]) => logs.push(a.join(" "));
  try {
    return { value: await fn(), logs };
  } finally {
    console.error = original;
  }
}

for (const secret of [SECRET, undefined]) {
  Deno.test({
    name: `a lane listener skips strangers and takes its peer (${
      secret ? "with" : "without"
    } a secret)`,
    ...opts,
    async fn() {
      const key = secret ? await WireKey.from(secret) : null;
      const [mine, theirs] = await pair();
      const strangers: Deno.TcpConn[] = [];
      const { value, logs } = await logged(async () => {
        const opening = openLanes(meshOf(0, theirs, key), 64 * 1024);
        const replies = new Replies(mine);
        const t1 = await replies.next();
        assert.equal(t1?.op, Op.lane);
        assert.equal(t1.tag, 1);
        assert.ok(t1.arg > 0, "rank 0 offers a lane port");
        const no = t1.payload;
        assert.equal(no.length, secret ? 16 : 0, "with a secret, the offer carries a nonce");
        const nt = crypto.getRandomValues(new Uint8Array(16));
        const proof = secret ? await tag(secret, CONNECTOR, ctx, nt, no) : undefined;
        const forged = crypto.getRandomValues(new Uint8Array(32));
        // Strangers connect first; then the peer.
        const bad = secret
          ? [hello(1, JOB, nt, forged), hello(1, JOB + 1, nt, proof), hello(3, JOB, nt, proof)]
          : [hello(1, JOB + 1), hello(3, JOB)];
        for (const b of bad) {
          const c = await Deno.connect({ hostname: "127.0.0.1", port: t1.arg });
          await writeAll(c, b);
          strangers.push(c);
        }
        const real = await Deno.connect({ hostname: "127.0.0.1", port: t1.arg });
        await writeAll(real, hello(1, JOB, secret ? nt : undefined, proof));
        await writeAll(mine, frame({ op: Op.lane, tag: 2, src: 1, arg: 1 }));
        let back: Uint8Array | undefined;
        if (secret) back = await readN(real, 32);
        const t3 = await replies.next();
        assert.equal(t3?.tag, 3);
        if (secret) {
          assert.deepEqual(back, await tag(secret, ACCEPTOR, ctx, nt, no), "rank 0's proof");
          await writeAll(mine, frame({ op: Op.lane, tag: 4, src: 1, arg: 1 }));
        }
        return { lanes: await opening, accepted: t3.arg, real };
      });
      assert.equal(value.accepted, 1);
      assert.ok(value.lanes[1], "the peer has its lane");
      for (const c of strangers) {
        assert.equal(await c.read(new Uint8Array(8)).catch(() => null), null, "dropped");
        c.close();
      }
      assert.equal(logs.length, secret ? 3 : 2, logs.join("\n"));
      for (const l of logs) {
        assert.match(l, /rank 0 dropped a lane connection from 127\.0\.0\.1:\d+ meant for rank 1/);
      }
      if (secret) assert.match(logs[0]!, /authentication failed/);
      assert.ok(logs.some((l) => /another job/.test(l)));
      assert.ok(logs.some((l) => /it says it is rank 3/.test(l)));
      value.lanes[1]!.close();
      value.real.close();
      mine.close();
      theirs.close();
    },
  });
}

Deno.test({
  name: "a rank drops a lane whose listener cannot prove the secret, and both ends agree",
  ...opts,
  async fn() {
    const key = await WireKey.from(SECRET);
    for (const honest of [false, true]) {
      const [mine, theirs] = await pair();
      const laneListener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
      const { value, logs } = await logged(async () => {
        const opening = openLanes(meshOf(1, theirs, key), 64 * 1024);
        const no = crypto.getRandomValues(new Uint8Array(16));
        await writeAll(mine, frame({ op: Op.lane, tag: 1, arg: laneListener.addr.port }, no));
        const lane = await laneListener.accept();
        const h = await readN(lane, 56);
        const v = new DataView(h.buffer);
        assert.equal(v.getInt32(0, true), 1);
        assert.equal(v.getUint32(4, true), JOB);
        const nt = h.slice(8, 24);
        const want = await tag(SECRET, CONNECTOR, ctx, nt, no);
        assert.deepEqual(h.slice(24), want, "rank 1's proof follows the documented layout");
        const replies = new Replies(mine);
        assert.equal((await replies.next())?.arg, 1, "rank 1 connected (T2)");
        const mineTag = honest
          ? await tag(SECRET, ACCEPTOR, ctx, nt, no)
          : crypto.getRandomValues(new Uint8Array(32));
        await writeAll(lane, mineTag);
        await writeAll(mine, frame({ op: Op.lane, tag: 3, arg: 1 }));
        const t4 = await replies.next();
        return { lanes: await opening, t4, lane };
      });
      assert.equal(value.t4?.tag, 4);
      assert.equal(value.t4?.arg, honest ? 1 : 0, "rank 1 tells whether the proof convinced it");
      if (honest) {
        assert.ok(value.lanes[0], "an honest listener gets its lane");
        assert.equal(logs.length, 0, logs.join("\n"));
        value.lanes[0]!.close();
      } else {
        assert.equal(value.lanes[0], null, "no lane to an impostor");
        assert.equal(logs.length, 1, logs.join("\n"));
        assert.match(logs[0]!, /rank 1 dropped its lane to rank 0: the far end did not prove/);
      }
      value.lane.close();
      laneListener.close();
      mine.close();
      theirs.close();
    }
  },
});
