// Fuzzing the wire of a running job: a job of 3 processes, and this test throwing
// random and mutated frames at it (valid frames of every op with their header fields, lengths
// and payloads mutated, cut short, concatenated, split across writes, or plain random bytes),
// first during the rendezvous (at rank 0's port and at rank 1's mesh listener), then while the
// ranks run a loop of all-reduces that each check the serial sum; once with a job secret, and
// once without (then only while it runs: without a secret, anyone may join a rendezvous by
// design). Every connection must be
// refused (closed by the rank and logged with its port), the job must finish with every
// all-reduce exact, and nothing else may change. Bounded: both tests together throw at most
// MAX_FRAMES frames in at most MAX_MS of fuzzing. Seeded (LOOM_FUZZ_SEED overrides the seed) so that a failure reproduces.
import assert from "node:assert/strict";
import {
  type Answer,
  answer,
  claimFrame,
  dial,
  frame,
  HEADER,
  jsonFrame,
  Op,
  Replies,
  Rng,
  Role,
} from "./_tcp/rogue.ts";
import { freePort, RankProcess } from "./_tcp/procs.ts";

const SEED = Number(Deno.env.get("LOOM_FUZZ_SEED") ?? 0x10a4f22);
const MAX_FRAMES = 2000;
const MAX_MS = 20_000;
const SECRET = "fuzzing is no way to learn a secret";
const OPS = Object.values(Op);
const EDGES = [0, 1, 2, 3, 0x7fffffff, 0x80000000, 0xffffffff, 4096, 4097, 65536];

/** One connection's worth of bytes: the writes to make, and how many frames they hold. */
interface Case {
  chunks: Uint8Array[];
  frames: number;
  what: string;
}

/** A valid frame of the protocol, to be mutated. */
function template(rng: Rng): Uint8Array {
  const nonce = rng.bytes(16);
  switch (rng.int(8)) {
    case 0:
    case 1:
      return claimFrame({ role: rng.pick([1, 2, 3]), rank: rng.int(4), size: 3, jobId: 0 }, nonce);
    case 2:
      return jsonFrame(Op.hello, { rank: rng.int(3), size: 3, port: rng.int(65536) }, rng.int(3));
    case 3:
      return jsonFrame(Op.peerHello, { rank: 2, jobId: rng.u32() }, 2);
    case 4:
      return jsonFrame(rng.pick([Op.table, Op.error, Op.abort]), { message: "x", table: [] });
    case 5:
      return frame({ op: rng.pick([Op.bye, Op.lane]), arg: rng.u32(), tag: rng.int(5) });
    default: {
      // A data frame, as a peer in the middle of an all-reduce would send it.
      const n = 4 * rng.int(65);
      return frame({
        op: rng.pick([Op.allReduce, Op.broadcast, Op.send, Op.reduceScatter, Op.barrier]),
        kind: 0x11,
        src: rng.int(3),
        group: 0,
        tag: rng.int(4),
        seq: rng.int(8),
        total: n / 4,
      }, rng.bytes(n));
    }
  }
}

/** Mutate a frame's header fields and payload in place (1 to 3 mutations). */
function mutate(rng: Rng, f: Uint8Array): Uint8Array {
  const v = new DataView(f.buffer, f.byteOffset, f.length);
  const value = () => rng.int(3) === 0 ? rng.u32() : rng.pick(EDGES);
  for (let k = 1 + rng.int(3); k > 0; k--) {
    switch (rng.int(9)) {
      case 0:
        v.setUint8(6, rng.int(2) ? rng.pick(OPS) : rng.int(256)); // op
        break;
      case 1:
        v.setUint32(32, rng.int(2) ? value() : f.length - HEADER + rng.int(9) - 4, true); // length
        break;
      case 2:
        v.setInt32(16, value() | 0, true); // tag
        break;
      case 3:
        v.setUint32(12, value(), true); // group
        break;
      case 4:
        v.setUint32(4 * (2 + rng.int(6)), value(), true); // src, group, tag, seq, total or arg
        break;
      case 5:
        v.setUint16(4, rng.pick([0, 2, 3, 0xffff, rng.int(65536)]), true); // version
        break;
      case 6:
        v.setUint8(rng.int(4), rng.int(256)); // magic
        break;
      case 7:
        if (f.length > HEADER) f[HEADER + rng.int(f.length - HEADER)] ^= 1 << rng.int(8);
        break;
      default:
        v.setUint8(7, rng.int(256)); // dtype and reduce op
    }
  }
  return f;
}

/** Split bytes into 1 to 4 writes. */
function split(rng: Rng, b: Uint8Array): Uint8Array[] {
  const cuts = Array.from({ length: rng.int(4) }, () => rng.int(b.length + 1)).sort((x, y) =>
    x - y
  );
  const out: Uint8Array[] = [];
  let at = 0;
  for (const c of [...cuts, b.length]) {
    out.push(b.slice(at, c));
    at = c;
  }
  return out.filter((c) => c.length > 0);
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** One fuzz connection. */
function fuzzCase(rng: Rng): Case {
  switch (rng.int(7)) {
    case 0: {
      const n = 1 + rng.int(512);
      return { chunks: split(rng, rng.bytes(n)), frames: 1, what: "random bytes" };
    }
    case 1: {
      const f = template(rng);
      return { chunks: split(rng, f.slice(0, rng.int(f.length))), frames: 1, what: "cut" };
    }
    case 2: {
      // A well-formed opening, then a mutated or forged second step.
      const claim = claimFrame(
        { role: Role.rendezvous, rank: 1 + rng.int(2), size: 3, jobId: 0 },
        rng.bytes(16),
      );
      const step3 = frame({ op: Op.auth, tag: 3, src: 1 }, rng.bytes(32));
      const second = rng.int(2) ? step3 : mutate(rng, step3);
      return { chunks: split(rng, concat([claim, second])), frames: 2, what: "forged proof" };
    }
    case 3: {
      const k = 2 + rng.int(3);
      const fs = Array.from(
        { length: k },
        () => rng.int(2) ? mutate(rng, template(rng)) : template(rng),
      );
      return { chunks: split(rng, concat(fs)), frames: k, what: "several frames" };
    }
    case 4:
      return { chunks: [], frames: 0, what: "nothing" };
    default: {
      const f = mutate(rng, template(rng));
      return { chunks: split(rng, f), frames: 1, what: "mutated frame" };
    }
  }
}

/** What the fuzzer sent to one listener and how each connection was answered. */
interface Tally {
  frames: number;
  answers: (Answer & { what: string })[];
}

async function send(port: number, c: Case): Promise<Answer & { what: string }> {
  const conn = await dial(port);
  try {
    for (const chunk of c.chunks) {
      let off = 0;
      while (off < chunk.length) off += await conn.write(chunk.subarray(off));
    }
    await conn.closeWrite();
  } catch { /* the rank hung up while this side was still writing: fine */ }
  return { ...await answer(conn, new Replies(conn), 15_000), what: c.what };
}

/** Throw cases at `port`, `parallel` at a time, until `more()` says stop. */
async function fuzz(
  rng: Rng,
  port: number,
  tally: Tally,
  more: () => boolean,
  parallel = 4,
): Promise<void> {
  const lane = async () => {
    while (more()) {
      const c = fuzzCase(rng);
      tally.frames += c.frames;
      tally.answers.push(await send(port, c));
    }
  };
  await Promise.all(Array.from({ length: parallel }, lane));
}

function checkRefused(name: string, tally: Tally, rank: RankProcess): void {
  // A port may serve several connections in turn: count lines and connections per port.
  const count = (ports: number[]) => {
    const m = new Map<number, number>();
    for (const p of ports) m.set(p, (m.get(p) ?? 0) + 1);
    return [...m].sort((a, b) => a[0] - b[0]);
  };
  for (const a of tally.answers) {
    assert.ok(a.closed, `${name}: a connection (${a.what}) was left open`);
    assert.ok(!a.ops.includes(Op.table), `${name}: a stranger got the table`);
    assert.ok(a.ops.filter((op) => op === Op.auth).length <= 1, `${name}: got more than a nonce`);
  }
  assert.deepEqual(
    count(rank.refusals().map(([p]) => p)),
    count(tally.answers.map((a) => a.local)),
    `${name}: every connection is logged once, by the port it came from`,
  );
}

/** Fuzz a job of 3 processes; `rendezvous` false throws only once it trains. */
async function fuzzJob(
  seed: number,
  secret: string | undefined,
  rendezvous: boolean,
  maxFrames: number,
  maxMs: number,
): Promise<void> {
  const rng = new Rng(seed);
  const port = freePort();
  const env: Record<string, string> = secret ? { LOOM_SECRET: secret } : {};
  const r0 = new RankProcess("train", 0, 3, port, env, { stdin: true });
  const r1 = new RankProcess("train", 1, 3, port, env);
  const ranks = [r0, r1];
  try {
    const meshPort = Number((await r1.waitFor(/LISTEN (\d+)/))[1]);
    const t0 = performance.now();
    const atRank0: Tally = { frames: 0, answers: [] };
    const atMesh: Tally = { frames: 0, answers: [] };
    const sent = () => atRank0.frames + atMesh.frames;
    const inTime = () => performance.now() - t0 < maxMs && sent() < maxFrames;
    if (rendezvous) {
      // 1. The rendezvous: rank 2 has not come yet.
      await fuzz(rng, port, atRank0, () => inTime() && atRank0.frames < maxFrames / 4);
      // Rank 1 takes mesh connections only once rank 2 is in: queue strangers ahead of it.
      const queued: Promise<Answer & { what: string }>[] = [];
      for (let i = 0; i < 40; i++) {
        const c = fuzzCase(rng);
        atMesh.frames += c.frames;
        const conn = await dial(meshPort);
        queued.push((async () => {
          try {
            for (const chunk of c.chunks) {
              let off = 0;
              while (off < chunk.length) off += await conn.write(chunk.subarray(off));
            }
            await conn.closeWrite();
          } catch { /* hung up */ }
          return { ...await answer(conn, new Replies(conn), 20_000), what: c.what };
        })());
      }
      ranks.push(new RankProcess("train", 2, 3, port, env));
      atMesh.answers = await Promise.all(queued);
    } else {
      ranks.push(new RankProcess("train", 2, 3, port, env));
    }
    // 2. Training: all-reduces run while the strangers keep coming.
    await r0.waitFor(/TRAINING/);
    const beforeTraining = atRank0.answers.length;
    await fuzz(rng, port, atRank0, inTime);
    const duringTraining = atRank0.answers.length - beforeTraining;
    await r0.say("stop");
    const done = await Promise.all(ranks.map((r) => r.finish(60_000)));
    for (const [i, d] of done.entries()) {
      assert.equal(d.code, 0, `rank ${i} failed:\n${ranks[i]!.stderr.slice(-2000)}`);
      assert.deepEqual(d.report?.failures, [], `rank ${i}`);
      assert.equal(d.report?.lanes, 2, `rank ${i} lost its lanes`);
      assert.equal(d.report?.iterations, done[0]!.report?.iterations);
    }
    checkRefused("rank 0", atRank0, r0);
    checkRefused("rank 1's mesh listener", atMesh, r1);
    assert.equal(ranks[2]!.refusals().length, 0);
    const conns = atRank0.answers.length + atMesh.answers.length;
    console.log(
      `fuzz seed 0x${seed.toString(16)}, ${secret ? "with" : "without"} a secret: ${sent()} ` +
        `malformed frames on ${conns} connections (${beforeTraining} at rank 0 during the ` +
        `rendezvous, ${atMesh.answers.length} at rank 1's mesh listener, ${duringTraining} at ` +
        `rank 0 during training) in ${Math.round(performance.now() - t0)} ms; refused ${conns} ` +
        `of ${conns}; ${done[0]!.report?.iterations} all-reduces exact on every rank`,
    );
    // Why they were refused, by kind.
    const kinds = new Map<string, number>();
    for (const [, why] of [...r0.refusals(), ...r1.refusals()]) {
      const k = why.replace(/0x[0-9a-f]+/g, "0x..").replace(/got \w+/, "got <op>")
        .replace(/\d+/g, "N").replace(/[(:].*$/, "").trim();
      kinds.set(k, (kinds.get(k) ?? 0) + 1);
    }
    console.log([...kinds].sort((a, b) => b[1] - a[1]).map(([k, n]) => `  ${n} ${k}`).join("\n"));
    assert.ok(duringTraining > 0, "nothing was thrown during training");
    assert.ok(sent() <= maxFrames + 16);
  } finally {
    for (const r of ranks) {
      try {
        r.proc.kill("SIGKILL");
      } catch { /* ended */ }
    }
    await Promise.all(ranks.map((r) => r.finish(1000)));
  }
}

Deno.test({
  name: "fuzzed frames at a job with a secret, in its rendezvous and while it trains, are refused",
  sanitizeOps: true,
  sanitizeResources: true,
  fn: () => fuzzJob(SEED, SECRET, true, MAX_FRAMES * 3 / 4, MAX_MS * 3 / 4),
});

Deno.test({
  // Without a secret anyone may join a rendezvous, so the strangers come once the job runs.
  name: "fuzzed frames at a running job without a secret are refused",
  sanitizeOps: true,
  sanitizeResources: true,
  fn: () => fuzzJob(SEED + 1, undefined, false, MAX_FRAMES / 4, MAX_MS / 4),
});
