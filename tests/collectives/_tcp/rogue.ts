// A stranger on Loom's TCP wire, for the tests that check what a rank refuses. It builds frames
// by hand from the layout in collectives/frame.ts and computes the job-secret handshake's tags
// from the layout documented in collectives/rendezvous.ts (not with the library's own code, so
// that the two are checked against each other), and reports how a rank answered.

/** Frame ops (collectives/frame.ts). */
export const Op = {
  allReduce: 1,
  reduceScatter: 2,
  allGather: 3,
  broadcast: 4,
  reduce: 5,
  allToAll: 6,
  send: 7,
  barrier: 8,
  split: 9,
  hello: 16,
  table: 17,
  peerHello: 18,
  error: 19,
  bye: 20,
  abort: 21,
  lane: 22,
  auth: 23,
} as const;

export const MAGIC = 0x4d4f4f4c;
export const VERSION = 1;
export const HEADER = 36;
/** Roles and sides of the handshake. */
export const Role = { rendezvous: 1, mesh: 2, lane: 3 } as const;
const CONNECTOR = 1, ACCEPTOR = 2;

/** Header fields; anything left out is 0, `length` defaults to the payload's. */
export interface Head {
  op: number;
  kind?: number;
  src?: number;
  group?: number;
  tag?: number;
  seq?: number;
  total?: number;
  arg?: number;
  length?: number;
  magic?: number;
  version?: number;
}

/** A frame's bytes. */
export function frame(h: Head, payload: Uint8Array = new Uint8Array(0)): Uint8Array {
  const out = new Uint8Array(HEADER + payload.length);
  const v = new DataView(out.buffer);
  v.setUint32(0, h.magic ?? MAGIC, true);
  v.setUint16(4, h.version ?? VERSION, true);
  v.setUint8(6, h.op & 255);
  v.setUint8(7, (h.kind ?? 0) & 255);
  v.setUint32(8, (h.src ?? 0) >>> 0, true);
  v.setUint32(12, (h.group ?? 0) >>> 0, true);
  v.setInt32(16, h.tag ?? 0, true);
  v.setUint32(20, (h.seq ?? 0) >>> 0, true);
  v.setUint32(24, (h.total ?? 0) >>> 0, true);
  v.setUint32(28, (h.arg ?? 0) >>> 0, true);
  v.setUint32(32, (h.length ?? payload.length) >>> 0, true);
  out.set(payload, HEADER);
  return out;
}

/** A JSON control frame. */
export function jsonFrame(op: number, body: unknown, src = 0): Uint8Array {
  return frame({ op, src }, new TextEncoder().encode(JSON.stringify(body)));
}

/** Connect to a loopback port, retrying while nothing listens there yet. */
export async function dial(port: number, ms = 10_000): Promise<Deno.TcpConn> {
  const end = performance.now() + ms;
  for (;;) {
    try {
      return await Deno.connect({ hostname: "127.0.0.1", port });
    } catch (e) {
      if (!(e instanceof Deno.errors.ConnectionRefused) || performance.now() > end) throw e;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

/** A frame a rank sent back. */
export interface Reply {
  op: number;
  tag: number;
  src: number;
  arg: number;
  payload: Uint8Array;
}

/** Reads frames a rank sends, leniently (any version). */
export class Replies {
  #buf = new Uint8Array(0);
  closed = false;
  constructor(private readonly conn: Deno.TcpConn) {}

  /** The next frame, or null once the rank closed (or reset) the connection or `ms` passed. */
  async next(ms = 15_000): Promise<Reply | null> {
    const end = performance.now() + ms;
    for (;;) {
      if (this.#buf.length >= HEADER) {
        const v = new DataView(this.#buf.buffer, this.#buf.byteOffset);
        const len = v.getUint32(32, true);
        if (this.#buf.length >= HEADER + len) {
          const f = {
            op: v.getUint8(6),
            src: v.getUint32(8, true),
            tag: v.getInt32(16, true),
            arg: v.getUint32(28, true),
            payload: this.#buf.slice(HEADER, HEADER + len),
          };
          this.#buf = this.#buf.slice(HEADER + len);
          return f;
        }
      }
      if (this.closed) return null;
      const left = end - performance.now();
      if (left <= 0) return null;
      const chunk = new Uint8Array(64 * 1024);
      let timer: ReturnType<typeof setTimeout> | undefined;
      const n = await Promise.race([
        this.conn.read(chunk).catch(() => null),
        new Promise<"late">((r) => (timer = setTimeout(() => r("late"), left))),
      ]);
      clearTimeout(timer);
      if (n === "late") return null;
      if (n === null) {
        this.closed = true;
        continue;
      }
      const joined = new Uint8Array(this.#buf.length + n);
      joined.set(this.#buf);
      joined.set(chunk.subarray(0, n), this.#buf.length);
      this.#buf = joined;
    }
  }
}

/** How a rank answered a connection. */
export interface Answer {
  /** The message of the error frame it sent, if any. */
  error?: string;
  /** Whether it closed the connection (within the time allowed). */
  closed: boolean;
  /** Ops of every frame it sent. */
  ops: number[];
  /** This side's port, as the rank logs it. */
  local: number;
}

/** Read what a rank sends until it closes the connection; then close this side. */
export async function answer(conn: Deno.TcpConn, r = new Replies(conn), ms = 15_000) {
  const ops: number[] = [];
  let error: string | undefined;
  const end = performance.now() + ms;
  for (;;) {
    const f = await r.next(Math.max(1, end - performance.now()));
    if (f === null) break;
    ops.push(f.op);
    if (f.op === Op.error) {
      try {
        error = JSON.parse(new TextDecoder().decode(f.payload)).message;
      } catch {
        error = "(unreadable error frame)";
      }
    }
  }
  const local = (conn.localAddr as Deno.NetAddr).port;
  try {
    conn.close();
  } catch { /* closed */ }
  return { error, closed: r.closed, ops, local } satisfies Answer;
}

/**
 * Connect, send `chunks` (one write each), close this side's writing half and read the answer.
 */
export async function throwAt(port: number, chunks: Uint8Array[], ms = 15_000): Promise<Answer> {
  const conn = await dial(port);
  try {
    for (const c of chunks) {
      let off = 0;
      while (off < c.length) off += await conn.write(c.subarray(off));
    }
    await conn.closeWrite();
  } catch { /* the rank may hang up before everything is written */ }
  return await answer(conn, undefined, ms);
}

/** What the tags of a handshake cover (see collectives/rendezvous.ts). */
export interface Ctx {
  role: number;
  size: number;
  jobId: number;
  connector: number;
  acceptor: number;
}

/** HMAC-SHA-256 over "LOOMAUTH", version, role, side, size, job, ranks and nonces. */
export async function tag(
  secret: string,
  side: number,
  c: Ctx,
  nc: Uint8Array,
  na: Uint8Array,
  version = VERSION,
): Promise<Uint8Array> {
  const m = new Uint8Array(8 + 20 + 32);
  m.set(new TextEncoder().encode("LOOMAUTH"));
  const v = new DataView(m.buffer);
  v.setUint16(8, version, true);
  v.setUint8(10, c.role);
  v.setUint8(11, side);
  v.setUint32(12, c.size, true);
  v.setUint32(16, c.jobId, true);
  v.setUint32(20, c.connector, true);
  v.setUint32(24, c.acceptor, true);
  m.set(nc, 28);
  m.set(na, 44);
  const key = await crypto.subtle.importKey(
    "raw",
    new TextEncoder().encode(secret),
    { name: "HMAC", hash: "SHA-256" },
    false,
    ["sign"],
  );
  return new Uint8Array(await crypto.subtle.sign("HMAC", key, m));
}

/** Step 1 of the handshake: role, rank, size, job id, nonce. */
export function claimFrame(
  c: { role: number; rank: number; size: number; jobId: number },
  nonce: Uint8Array,
  head: Partial<Head> = {},
): Uint8Array {
  const p = new Uint8Array(32);
  const v = new DataView(p.buffer);
  v.setUint32(0, c.role, true);
  v.setUint32(4, c.rank, true);
  v.setUint32(8, c.size, true);
  v.setUint32(12, c.jobId >>> 0, true);
  p.set(nonce, 16);
  return frame({ op: Op.auth, tag: 1, src: c.rank, ...head }, p);
}

/** The outcome of a handshake run by hand. */
export interface Handshake {
  conn: Deno.TcpConn;
  replies: Replies;
  /** Whether the acceptor proved the secret (auth 4 with the right tag). */
  ok: boolean;
  /** The job id it gave at auth 2. */
  jobId?: number;
  /** The error it sent instead, if any. */
  error?: string;
}

/** Run the connecting side of the job-secret handshake by hand. */
export async function handshake(
  port: number,
  secret: string,
  c: { role: number; rank: number; size: number; jobId: number; acceptor: number },
): Promise<Handshake> {
  const conn = await dial(port);
  const replies = new Replies(conn);
  const nc = crypto.getRandomValues(new Uint8Array(16));
  await conn.write(claimFrame(c, nc));
  const errorOf = (f: Reply) => JSON.parse(new TextDecoder().decode(f.payload)).message as string;
  const f2 = await replies.next();
  if (f2 === null || f2.op !== Op.auth) {
    return { conn, replies, ok: false, error: f2 ? errorOf(f2) : undefined };
  }
  const jobId = new DataView(f2.payload.buffer).getUint32(0, true);
  const na = f2.payload.slice(4, 20);
  const ctx = { ...c, jobId: c.jobId || jobId, connector: c.rank };
  await conn.write(
    frame({ op: Op.auth, tag: 3, src: c.rank }, await tag(secret, CONNECTOR, ctx, nc, na)),
  );
  const f4 = await replies.next();
  if (f4 === null || f4.op !== Op.auth) {
    return { conn, replies, ok: false, jobId, error: f4 ? errorOf(f4) : undefined };
  }
  const want = await tag(secret, ACCEPTOR, ctx, nc, na);
  const ok = want.every((b, i) => b === f4.payload[i]);
  return { conn, replies, ok, jobId };
}

/** A seeded PRNG (xorshift32): the same seed, the same frames. */
export class Rng {
  #s: number;
  constructor(seed: number) {
    this.#s = (seed >>> 0) || 0x9e3779b9;
  }
  /** An integer in [0, 2^32). */
  u32(): number {
    let x = this.#s;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.#s = x >>> 0;
    return this.#s;
  }
  /** An integer in [0, n). */
  int(n: number): number {
    return this.u32() % n;
  }
  /** One of `xs`. */
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)]!;
  }
  /** `n` random bytes. */
  bytes(n: number): Uint8Array {
    const b = new Uint8Array(n);
    for (let i = 0; i < n; i++) b[i] = this.u32() & 255;
    return b;
  }
}
