// What a TCP rank refuses: a wrong or missing secret, another job, another protocol version,
// garbage, an oversized frame, a second claim on a rank, a late rank; and that the real job goes
// on and gets the right result. Jobs run in this process (ranks share its event loop, without
// lanes) or as separate processes (_tcp/secure_rank.ts), on loopback; the stranger is this test,
// speaking the wire by hand (_tcp/rogue.ts).
import assert from "node:assert/strict";
import { connectTcp, type TcpOptions } from "../../collectives/tcp.ts";
import { CollectiveError, type Communicator } from "../../collectives/communicator.ts";
import { runNodes } from "../../collectives/launch.ts";
import type { BatteryReport } from "./_tcp/battery.ts";
import { main as battery } from "./_tcp/battery.ts";
import {
  answer,
  claimFrame,
  frame,
  handshake,
  jsonFrame,
  Op,
  Replies,
  Rng,
  Role,
  throwAt,
} from "./_tcp/rogue.ts";
import { freePort, RankProcess } from "./_tcp/procs.ts";

// The in-process jobs below decide their secrets themselves.
Deno.env.delete("LOOM_SECRET");

const opts = { sanitizeOps: true, sanitizeResources: true };
const SECRET = "correct horse battery staple 7c1f";

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

/** A port promise and the `onListen` that fulfils it. */
function listenHook(): { port: Promise<number>; onListen: (p: number) => void } {
  let onListen!: (p: number) => void;
  const port = new Promise<number>((r) => (onListen = r));
  return { port, onListen };
}

/** A rank of an in-process job (no lanes: the ranks share one event loop). */
function rank(
  r: number,
  size: number,
  masterPort: number,
  extra: Partial<TcpOptions> = {},
): Promise<Communicator> {
  return connectTcp({
    rank: r,
    size,
    masterAddr: "127.0.0.1",
    masterPort,
    lanes: false,
    timeoutMs: 20_000,
    ...extra,
  });
}

/** Every op of the battery on every rank, checked against the serial reference. */
async function checkJob(comms: Communicator[]): Promise<void> {
  const reports = await Promise.all(comms.map((c) => battery(c, { sizes: [0, 5, 30_001] })));
  for (const r of reports) {
    assert.deepEqual(r.failures, [], `rank ${r.rank}`);
    assert.ok(r.checks >= 20, `rank ${r.rank} ran ${r.checks} checks`);
  }
  await Promise.all(comms.map((c) => c.close()));
}

Deno.test({
  name: "a wrong secret is refused while the real job completes with the right result",
  ...opts,
  async fn() {
    const port = freePort();
    const env = { LOOM_SECRET: SECRET };
    const ranks = [0, 1].map((r) => new RankProcess("battery", r, 3, port, env));
    await ranks[1]!.waitFor(/LISTEN \d+/); // rank 1 has passed rank 0's handshake
    // A Loom rank with another secret: refused, with a reason it can act on.
    const err = await connectTcp({
      rank: 2,
      size: 3,
      masterAddr: "127.0.0.1",
      masterPort: port,
      secret: "another secret",
      timeoutMs: 10_000,
    }).then(() => null, (e) => e);
    assert.ok(err instanceof CollectiveError, String(err));
    assert.equal(err.reason, "protocol");
    assert.match(err.message, /refused this rank: authentication failed.*LOOM_SECRET/);
    // The same by hand: rank 0 tells a stranger nothing but that it failed.
    const h = await handshake(port, "guess", {
      role: Role.rendezvous,
      rank: 2,
      size: 3,
      jobId: 0,
      acceptor: 0,
    });
    assert.equal(h.ok, false);
    assert.match(h.error ?? "", /authentication failed/);
    const hand = await answer(h.conn, h.replies);
    assert.ok(hand.closed);
    ranks.push(new RankProcess("battery", 2, 3, port, env));
    const done = await Promise.all(ranks.map((p) => p.finish()));
    for (const [i, d] of done.entries()) {
      assert.equal(d.code, 0, `rank ${i}: ${ranks[i]!.stderr}`);
      assert.deepEqual(d.report?.failures, [], `rank ${i}`);
      assert.ok(d.report!.checks >= 40);
      assert.equal(d.report!.lanes, 2, "lanes open with a secret too");
    }
    const refused = ranks[0]!.refusals();
    assert.equal(refused.length, 2, ranks[0]!.stderr);
    assert.ok(refused.every(([, why]) => /authentication failed/.test(why)));
    assert.ok(refused.some(([p]) => p === hand.local), "the log names where it came from");
  },
});

Deno.test({
  name: "a secret on one side only is refused with a clear error on both sides",
  ...opts,
  async fn() {
    // Rank 0 has a secret, a rank without one is refused; then the real rank joins.
    const { value, logs } = await logged(async () => {
      const hook = listenHook();
      const r0 = rank(0, 2, 0, { secret: SECRET, onListen: hook.onListen });
      const port = await hook.port;
      const plain = await rank(1, 2, port).then(() => null, (e) => e);
      const r1 = await rank(1, 2, port, { secret: SECRET });
      await checkJob([await r0, r1]);
      return plain;
    });
    assert.ok(value instanceof CollectiveError, String(value));
    assert.equal(value.reason, "protocol");
    assert.match(value.message, /without the job-secret handshake.*requires one.*LOOM_SECRET/);
    assert.equal(logs.length, 1, logs.join("\n"));
    assert.match(logs[0]!, /dropped connection from 127\.0\.0\.1:\d+: it sent a hello without/);

    // Rank 0 has none, a rank with one is refused; rank 0's own failure names the refusal.
    const other = await logged(async () => {
      const hook = listenHook();
      const r0 = rank(0, 2, 0, { onListen: hook.onListen, timeoutMs: 1500 });
      const port = await hook.port;
      const secretive = await rank(1, 2, port, { secret: SECRET }).then(() => null, (e) => e);
      return [secretive, await r0.then(() => null, (e) => e)];
    });
    const [secretive, master] = other.value;
    assert.ok(secretive instanceof CollectiveError, String(secretive));
    assert.match(secretive.message, /job-secret handshake, but this job runs without a secret/);
    assert.ok(master instanceof CollectiveError, String(master));
    assert.equal(master.reason, "timeout");
    assert.match(master.message, /refused 1 connection.*runs without a secret/);
    assert.equal(other.logs.length, 1, other.logs.join("\n"));
  },
});

Deno.test({
  name: "rank 0 proves itself too: a listener without the secret is refused by the rank",
  ...opts,
  async fn() {
    const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const impostor = (async () => {
      const conn = await l.accept();
      const r = new Replies(conn);
      const claim = await r.next();
      assert.equal(claim?.op, Op.auth);
      const p = new Uint8Array(20);
      p.set(crypto.getRandomValues(new Uint8Array(20)));
      await conn.write(frame({ op: Op.auth, tag: 2 }, p));
      await r.next(); // the rank's tag
      await conn.write(frame({ op: Op.auth, tag: 4 }, crypto.getRandomValues(new Uint8Array(32))));
      return await answer(conn, r);
    })();
    const err = await rank(1, 2, l.addr.port, { secret: SECRET }).then(() => null, (e) => e);
    const seen = await impostor;
    l.close();
    assert.ok(err instanceof CollectiveError, String(err));
    assert.equal(err.reason, "protocol");
    assert.match(err.message, /did not prove that it knows the job secret/);
    assert.ok(seen.closed, "the rank hangs up on it");
    assert.deepEqual(seen.ops, [], "and sends it nothing else (no hello)");
  },
});

Deno.test({
  name: "a mesh connection of another job is refused and the job goes on, with or without a secret",
  ...opts,
  async fn() {
    for (const secret of [SECRET, undefined]) {
      const { value, logs } = await logged(async () => {
        const hook0 = listenHook(), hook1 = listenHook();
        const r0 = rank(0, 3, 0, { secret, onListen: hook0.onListen });
        const port = await hook0.port;
        const r1 = rank(1, 3, port, { secret, onListen: hook1.onListen });
        const meshPort = await hook1.port;
        // Rank 1 takes mesh connections once the table is out: queue the stranger first.
        const stranger = secret
          ? handshake(meshPort, secret, {
            role: Role.mesh,
            rank: 2,
            size: 3,
            jobId: 0x5eed,
            acceptor: 1,
          }).then((h) => answer(h.conn, h.replies).then((a) => ({ ...a, error: h.error })))
          : throwAt(meshPort, [jsonFrame(Op.peerHello, { rank: 2, jobId: 0x5eed }, 2)]);
        await new Promise((r) => setTimeout(r, 100));
        const r2 = rank(2, 3, port, { secret });
        const comms = await Promise.all([r0, r1, r2]);
        await checkJob(comms);
        return await stranger;
      });
      assert.match(value.error ?? "", /belongs to another job \(job id 24301/, `secret ${secret}`);
      assert.ok(value.closed);
      assert.equal(logs.length, 1, logs.join("\n"));
      assert.match(logs[0]!, /rank 1 dropped connection from 127\.0\.0\.1:\d+: .*another job/);
    }
  },
});

Deno.test({
  name:
    "another protocol version, garbage, an oversized or cut frame and a forged proof are refused",
  ...opts,
  async fn() {
    const rng = new Rng(20240607);
    const nonce = new Uint8Array(16);
    const claim = { role: Role.rendezvous, rank: 2, size: 3, jobId: 0 };
    const attacks: [string, Uint8Array[], RegExp][] = [
      ["version 2", [claimFrame(claim, nonce, { version: 2 })], /protocol version 2, this build/],
      ["garbage", [rng.bytes(200)], /bad magic/],
      ["oversized", [frame({ op: Op.auth, tag: 1, length: 5000 })], /5000 bytes exceeds the limit/],
      ["oversized", [frame({ op: Op.hello, length: 0xffffffff })], /exceeds the limit/],
      ["cut", [claimFrame(claim, nonce).subarray(0, 50)], /closed in the middle of a/],
      ["wrong role", [claimFrame({ ...claim, role: Role.mesh }, nonce)], /another kind/],
      ["forged", [
        claimFrame(claim, nonce),
        frame({ op: Op.auth, tag: 3, src: 2 }, rng.bytes(32)),
      ], /authentication failed/],
      ["no handshake", [frame({ op: Op.allReduce, src: 2 }, rng.bytes(64))], /expected the job/],
    ];
    const { value, logs } = await logged(async () => {
      const hook = listenHook();
      const r0 = rank(0, 3, 0, { secret: SECRET, onListen: hook.onListen });
      const port = await hook.port;
      const r1 = rank(1, 3, port, { secret: SECRET });
      const answers = [];
      for (const [, chunks] of attacks) answers.push(await throwAt(port, chunks));
      const r2 = rank(2, 3, port, { secret: SECRET });
      await checkJob(await Promise.all([r0, r1, r2]));
      return answers;
    });
    assert.equal(logs.length, attacks.length, logs.join("\n"));
    for (const [i, [what, , re]] of attacks.entries()) {
      const a = value[i]!;
      assert.ok(a.closed, `${what}: rank 0 hangs up`);
      const line = logs.find((l) => l.includes(`127.0.0.1:${a.local}:`));
      assert.ok(line, `${what}: logged with where it came from`);
      assert.match(line, re, what);
      // The reason reaches the stranger too (unless it was still sending when rank 0 hung up).
      if (a.error !== undefined) assert.match(a.error, re, what);
    }
  },
});

Deno.test({
  name: "a second claim on a rank that joined is refused, and so is a rank once the job runs",
  ...opts,
  async fn() {
    for (const secret of [undefined, SECRET]) {
      const { value, logs } = await logged(async () => {
        const hook0 = listenHook(), hook1 = listenHook();
        const r0 = rank(0, 3, 0, { secret, onListen: hook0.onListen });
        const port = await hook0.port;
        const r1 = rank(1, 3, port, { secret, onListen: hook1.onListen });
        await hook1.port;
        await new Promise((r) => setTimeout(r, 100)); // rank 1's hello is in
        const hello = jsonFrame(Op.hello, { rank: 1, size: 3, port: 1 }, 1);
        const claimRank1 = async () => {
          if (!secret) return await throwAt(port, [hello]);
          const h = await handshake(port, secret, {
            role: Role.rendezvous,
            rank: 1,
            size: 3,
            jobId: 0,
            acceptor: 0,
          });
          assert.ok(h.ok, "a holder of the secret gets rank 0's proof");
          await h.conn.write(hello);
          return await answer(h.conn, h.replies);
        };
        const impostor = await claimRank1();
        const r2 = rank(2, 3, port, { secret });
        const comms = await Promise.all([r0, r1, r2]);
        // The job runs: rank 0 still listens, and turns a late rank away with the reason.
        const late = await rank(2, 3, port, { secret, timeoutMs: 5000 }).then(
          () => null,
          (e) => e,
        );
        await checkJob(comms);
        return { impostor, late };
      });
      const { impostor, late } = value;
      assert.match(impostor.error ?? "", /two processes claim rank 1/, `secret ${secret}`);
      assert.ok(impostor.closed);
      assert.ok(late instanceof RangeError, String(late));
      assert.match(late.message, /all 3 ranks of this job have joined and it is running/);
      assert.equal(logs.length, 2, logs.join("\n"));
      assert.match(
        logs[0]!,
        /from 127\.0\.0\.1:\d+: Rendezvous failed: two processes claim rank 1/,
      );
      assert.match(logs[1]!, /it is running/);
    }
  },
});

Deno.test({
  name: "strangers on a mesh listener are refused while the mesh is built (with a secret)",
  ...opts,
  async fn() {
    const { value, logs } = await logged(async () => {
      const hook0 = listenHook(), hook1 = listenHook();
      const r0 = rank(0, 3, 0, { secret: SECRET, onListen: hook0.onListen });
      const port = await hook0.port;
      const r1 = rank(1, 3, port, { secret: SECRET, onListen: hook1.onListen });
      const meshPort = await hook1.port;
      const rng = new Rng(7);
      const strangers = [
        throwAt(meshPort, [rng.bytes(100)]),
        throwAt(meshPort, [jsonFrame(Op.peerHello, { rank: 2, jobId: 1 }, 2)]),
        throwAt(meshPort, [frame({ op: Op.auth, tag: 1, length: 1 << 20 })]),
        (async () => {
          // The right secret, but not the job id (only the job's ranks learn it from rank 0).
          const h = await handshake(meshPort, SECRET, {
            role: Role.mesh,
            rank: 0,
            size: 3,
            jobId: 0,
            acceptor: 1,
          });
          return { ...await answer(h.conn, h.replies), error: h.error };
        })(),
      ];
      await new Promise((r) => setTimeout(r, 100));
      const r2 = rank(2, 3, port, { secret: SECRET });
      await checkJob(await Promise.all([r0, r1, r2]));
      return await Promise.all(strangers);
    });
    for (const a of value) assert.ok(a.closed);
    assert.equal(logs.length, 4, logs.join("\n"));
    for (const l of logs) assert.match(l, /rank 1 dropped connection from 127\.0\.0\.1:\d+/);
    assert.ok(logs.some((l) => /bad magic/.test(l)));
    assert.ok(logs.some((l) => /without the job-secret handshake/.test(l)));
    assert.ok(logs.some((l) => /exceeds the limit/.test(l)));
    assert.ok(logs.some((l) => /another job \(job id 0, this job is \d+\)/.test(l)));
  },
});

Deno.test({
  name: "a hierarchical job of 2 nodes x 2 ranks runs every op with LOOM_SECRET set",
  ...opts,
  async fn() {
    Deno.env.set("LOOM_SECRET", SECRET); // the node processes inherit it
    try {
      const ranks = await runNodes<BatteryReport>({
        nnodes: 2,
        nprocPerNode: 2,
        module: new URL("./_tcp/battery.ts", import.meta.url),
        data: { sizes: [0, 7, 100_003] },
        timeoutMs: 30_000,
      });
      assert.equal(ranks.length, 4);
      for (const r of ranks) {
        assert.equal(r.transport, "hierarchical");
        assert.deepEqual(r.failures, [], `rank ${r.rank}`);
      }
    } finally {
      Deno.env.delete("LOOM_SECRET");
    }
  },
});

Deno.test({
  name: "rank 0 listens on the master address itself, not on every interface",
  ...opts,
  async fn() {
    const hook = listenHook();
    const r0 = rank(0, 2, 0, { masterAddr: "127.0.0.2", onListen: hook.onListen });
    const port = await hook.port;
    await assert.rejects(
      () => Deno.connect({ hostname: "127.0.0.1", port }),
      Deno.errors.ConnectionRefused,
      "nothing listens on the port at another address",
    );
    const r1 = rank(1, 2, port, { masterAddr: "127.0.0.2" });
    await checkJob(await Promise.all([r0, r1]));
  },
});

Deno.test({
  name: "a rank that listens beyond loopback without a secret warns once",
  ...opts,
  async fn() {
    const warnings: string[] = [];
    const original = console.warn;
    console.warn = (...a: unknown[]) => warnings.push(a.join(" "));
    try {
      for (const secret of [SECRET, undefined, undefined]) {
        const hook = listenHook();
        const every = { listenAddr: "0.0.0.0", secret }; // traffic stays on loopback
        const r0 = rank(0, 3, 0, { ...every, onListen: hook.onListen });
        const port = await hook.port;
        const comms = await Promise.all([r0, rank(1, 3, port, every), rank(2, 3, port, every)]);
        await checkJob(comms);
        if (secret) assert.equal(warnings.length, 0, warnings.join("\n"));
      }
    } finally {
      console.warn = original;
    }
    assert.equal(warnings.length, 1, warnings.join("\n"));
    assert.match(
      warnings[0]!,
      /rank 0 listens on 0\.0\.0\.0:\d+ without a job secret: anyone who can reach this port can join/,
    );
  },
});

Deno.test({
  name: "without the env permission, LOOM_SECRET counts as unset and nothing prompts",
  ...opts,
  async fn() {
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--no-prompt",
        "--allow-net",
        new URL("./_tcp/no_env.ts", import.meta.url).pathname,
      ],
      env: { LOOM_SECRET: SECRET, NO_COLOR: "1" },
      stdin: "null",
    }).output();
    const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 0, text);
    assert.equal(new TextDecoder().decode(out.stdout).trim(), "none");
  },
});

Deno.test({
  name: "an empty secret is refused before anything connects",
  ...opts,
  async fn() {
    await assert.rejects(() => rank(1, 2, 1, { secret: "" }), TypeError);
  },
});
