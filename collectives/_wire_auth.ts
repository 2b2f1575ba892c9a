/**
 * The job secret and the challenge-response that every TCP connection of a job with a secret runs
 * before anything else ({@link ./rendezvous.ts} describes the exchange): HMAC-SHA-256 tags over
 * both sides' nonces and the job's identity, computed with Web Crypto and compared in constant
 * time.
 *
 * @module
 */
import { CollectiveError } from "./communicator.ts";
import {
  type Frame,
  FrameError,
  FrameOp,
  frameOpName,
  type FrameReader,
  PROTOCOL_VERSION,
  writeFrame,
} from "./frame.ts";

/** Bytes of a nonce. */
export const NONCE_BYTES = 16;
/** Bytes of an HMAC-SHA-256 tag. */
export const TAG_BYTES = 32;
/** Environment variable that holds the job secret when no `secret` option is given. */
export const SECRET_ENV = "LOOM_SECRET";

/** Which kind of connection a handshake opens (bound into the tags). */
export const AuthRole = { rendezvous: 1, mesh: 2, lane: 3 } as const;
/** Which side computes a tag: the one that connected or the one that accepted. */
export const AuthSide = { connector: 1, acceptor: 2 } as const;

/** What both sides of a connection must agree on: every field goes into the tags. */
export interface AuthContext {
  /** {@linkcode AuthRole} of the connection. */
  role: number;
  /** World size. */
  size: number;
  /** The job's id (chosen by rank 0 when the rendezvous starts). */
  jobId: number;
  /** Rank of the side that connected. */
  connector: number;
  /** Rank of the side that accepted. */
  acceptor: number;
}

const LABEL = new TextEncoder().encode("LOOMAUTH");
const encoder = new TextEncoder();
const decoder = new TextDecoder();

/**
 * The job secret: `given` when set, else `LOOM_SECRET` from the environment when it is set and
 * readable (without the env permission it counts as unset; it is queried, never prompted for).
 */
export function resolveSecret(given: string | undefined): string | undefined {
  if (given !== undefined) {
    if (typeof given !== "string" || given.length === 0) {
      throw new TypeError("secret must be a non-empty string: pass the same value on every rank");
    }
    return given;
  }
  return readEnv(SECRET_ENV);
}

/**
 * An environment variable when it is set, non-empty and readable; undefined otherwise (without
 * the env permission it counts as unset: it is queried, never prompted for).
 */
export function readEnv(name: string): string | undefined {
  try {
    if (Deno.permissions.querySync({ name: "env", variable: name }).state !== "granted") {
      return undefined;
    }
    const v = Deno.env.get(name);
    return v === undefined || v.length === 0 ? undefined : v;
  } catch {
    return undefined;
  }
}

/** A fresh random nonce. */
export function newNonce(): Uint8Array {
  return crypto.getRandomValues(new Uint8Array(NONCE_BYTES));
}

/** A random job id, never 0. */
export function newJobId(): number {
  return (crypto.getRandomValues(new Uint32Array(1))[0]! >>> 0) || 1;
}

/** Compare two byte strings in time that depends only on their lengths. */
export function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= a[i]! ^ b[i]!;
  return d === 0;
}

/** The bytes a tag covers: label, version, role, side, size, job, both ranks, both nonces. */
function message(side: number, c: AuthContext, nc: Uint8Array, na: Uint8Array): Uint8Array {
  const m = new Uint8Array(LABEL.length + 20 + 2 * NONCE_BYTES);
  m.set(LABEL);
  const v = new DataView(m.buffer, LABEL.length);
  v.setUint16(0, PROTOCOL_VERSION, true);
  v.setUint8(2, c.role);
  v.setUint8(3, side);
  v.setUint32(4, c.size >>> 0, true);
  v.setUint32(8, c.jobId >>> 0, true);
  v.setUint32(12, c.connector >>> 0, true);
  v.setUint32(16, c.acceptor >>> 0, true);
  m.set(nc, LABEL.length + 20);
  m.set(na, LABEL.length + 20 + NONCE_BYTES);
  return m;
}

/** The job secret as an HMAC-SHA-256 key. */
export class WireKey {
  readonly #key: CryptoKey;

  private constructor(key: CryptoKey) {
    this.#key = key;
  }

  /** Import a secret (its UTF-8 bytes are the key). */
  static async from(secret: string): Promise<WireKey> {
    const key = await crypto.subtle.importKey(
      "raw",
      encoder.encode(secret),
      { name: "HMAC", hash: "SHA-256" },
      false,
      ["sign"],
    );
    return new WireKey(key);
  }

  /** The tag `side` sends for this context and these nonces. */
  async tag(side: number, c: AuthContext, nc: Uint8Array, na: Uint8Array): Promise<Uint8Array> {
    const data = message(side, c, nc, na);
    return new Uint8Array(
      await crypto.subtle.sign("HMAC", this.#key, data as Uint8Array<ArrayBuffer>),
    );
  }

  /** Whether `got` is the tag `side` must send (compared in constant time). */
  async check(
    side: number,
    c: AuthContext,
    nc: Uint8Array,
    na: Uint8Array,
    got: Uint8Array,
  ): Promise<boolean> {
    return sameBytes(await this.tag(side, c, nc, na), got);
  }
}

/**
 * A connection refused on purpose: the message is logged and told to the peer; `reason` is the
 * kind of error the peer raises (none: a `RangeError`, a configuration to fix).
 */
export class Refused extends Error {
  constructor(message: string, readonly reason?: "protocol" | "timeout") {
    super(message);
    this.name = "Refused";
  }
}

/** Printable text from a peer: control characters dropped, at most 500 characters. */
export function printable(s: string): string {
  // deno-lint-ignore no-control-regex
  const t = s.replace(/[\u0000-\u001f\u007f-\u009f]/g, " ");
  return t.length > 500 ? `${t.slice(0, 500)}...` : t;
}

/**
 * The error a refusal frame from a peer stands for: a `CollectiveError` for a protocol or timeout
 * refusal, a `RangeError` (a configuration to fix) otherwise.
 */
export function refusalError(f: Frame, who: string): Error {
  let body: { message?: unknown; reason?: unknown } = {};
  try {
    body = JSON.parse(decoder.decode(f.payload));
  } catch { /* keep the default */ }
  const text = typeof body.message === "string" ? printable(body.message) : "(no reason given)";
  if (body.reason === "protocol") {
    return new CollectiveError(
      "protocol",
      "rendezvous",
      "world",
      undefined,
      `${who} refused this rank: ${text}`,
    );
  }
  if (body.reason === "timeout") {
    return new CollectiveError("timeout", "rendezvous", "world", undefined, `${who}: ${text}`);
  }
  return new RangeError(text);
}

/** What a handshake reads and writes. */
export interface Wire {
  /** The socket. */
  conn: Deno.Conn;
  /** The reader that owns its incoming bytes. */
  reader: FrameReader;
}

/** Bounds one step of a handshake (a deadline, a timeout). */
export type Race = <T>(p: Promise<T>) => Promise<T>;

/** What a connecting side says in the first frame of a handshake. */
export interface AuthClaim {
  /** {@linkcode AuthRole}. */
  role: number;
  /** The connector's rank. */
  rank: number;
  /** The connector's world size. */
  size: number;
  /** The connector's job id (0 when it does not know it yet: the rendezvous). */
  jobId: number;
  /** The connector's nonce. */
  nonce: Uint8Array;
}

function authHead(src: number, step: number) {
  return { op: FrameOp.auth, kind: 0, src, group: 0, tag: step, seq: 0, total: 0, arg: 0 };
}

async function next(w: Wire, race: Race): Promise<Frame> {
  const f = await race(w.reader.next());
  if (f === null) throw new FrameError("the connection closed during the handshake", true);
  return f;
}

function expectStep(f: Frame, step: number, bytes: number): void {
  const h = f.header;
  if (h.op !== FrameOp.auth || h.tag !== step || h.length !== bytes) {
    throw new FrameError(
      `expected handshake step ${step} (${bytes} bytes), got ${frameOpName(h.op)} ` +
        `step ${h.tag} of ${h.length} bytes`,
    );
  }
}

/**
 * The connecting side's half: send the claim and nonce (step 1), read the acceptor's job id and
 * nonce (step 2), send this side's tag (step 3), check the acceptor's tag (step 4).
 *
 * @param w the connection
 * @param key the job secret
 * @param claim who this side is; `jobId` 0 takes the acceptor's (the rendezvous)
 * @param acceptor the rank this side meant to reach
 * @param race bounds every step
 * @param who the acceptor, for messages
 * @returns the job id both sides agreed on
 */
export async function authConnect(
  w: Wire,
  key: WireKey,
  claim: Omit<AuthClaim, "nonce">,
  acceptor: number,
  race: Race,
  who: string,
): Promise<number> {
  const nc = newNonce();
  const hello = new Uint8Array(16 + NONCE_BYTES);
  const v = new DataView(hello.buffer);
  v.setUint32(0, claim.role, true);
  v.setUint32(4, claim.rank, true);
  v.setUint32(8, claim.size, true);
  v.setUint32(12, claim.jobId >>> 0, true);
  hello.set(nc, 16);
  await race(writeFrame(w.conn, authHead(claim.rank, 1), hello));
  const f2 = await next(w, race);
  if (f2.header.op === FrameOp.error) throw refusalError(f2, who);
  expectStep(f2, 2, 4 + NONCE_BYTES);
  const jobId = new DataView(f2.payload.buffer, f2.payload.byteOffset).getUint32(0, true);
  if (claim.jobId !== 0 && jobId !== claim.jobId >>> 0) {
    throw new CollectiveError(
      "protocol",
      "rendezvous",
      "world",
      acceptor,
      `${who} belongs to another job (job id ${jobId}, this job is ${claim.jobId >>> 0})`,
    );
  }
  const na = f2.payload.slice(4);
  const ctx: AuthContext = { ...claim, jobId, connector: claim.rank, acceptor };
  const mine = await key.tag(AuthSide.connector, ctx, nc, na);
  await race(writeFrame(w.conn, authHead(claim.rank, 3), mine));
  const f4 = await next(w, race);
  if (f4.header.op === FrameOp.error) throw refusalError(f4, who);
  expectStep(f4, 4, TAG_BYTES);
  if (!await key.check(AuthSide.acceptor, ctx, nc, na, f4.payload)) {
    throw new CollectiveError(
      "protocol",
      "rendezvous",
      "world",
      acceptor,
      `${who} did not prove that it knows the job secret: it is not this job's rank ` +
        `${acceptor}, or its LOOM_SECRET differs from this rank's`,
    );
  }
  return jobId;
}

/** Parse a handshake's first frame (step 1). */
export function readClaim(f: Frame): AuthClaim {
  expectStep(f, 1, 16 + NONCE_BYTES);
  const v = new DataView(f.payload.buffer, f.payload.byteOffset, f.payload.length);
  return {
    role: v.getUint32(0, true),
    rank: v.getUint32(4, true),
    size: v.getUint32(8, true),
    jobId: v.getUint32(12, true),
    nonce: f.payload.slice(16),
  };
}

/**
 * The accepting side's half, once step 1 (`claim`) has been read and screened: send this job's
 * id and a nonce (step 2), check the connector's tag (step 3), send this side's (step 4).
 *
 * @param w the connection
 * @param key the job secret
 * @param claim the connector's step 1
 * @param me this rank, the world size and the job id
 * @param race bounds every step
 * @throws {Refused} when the connector's tag is wrong
 */
export async function authAccept(
  w: Wire,
  key: WireKey,
  claim: AuthClaim,
  me: { rank: number; size: number; jobId: number },
  race: Race,
): Promise<void> {
  const na = newNonce();
  const reply = new Uint8Array(4 + NONCE_BYTES);
  new DataView(reply.buffer).setUint32(0, me.jobId >>> 0, true);
  reply.set(na, 4);
  await race(writeFrame(w.conn, authHead(me.rank, 2), reply));
  const f3 = await next(w, race);
  expectStep(f3, 3, TAG_BYTES);
  const ctx: AuthContext = {
    role: claim.role,
    size: claim.size,
    jobId: me.jobId,
    connector: claim.rank,
    acceptor: me.rank,
  };
  if (!await key.check(AuthSide.connector, ctx, claim.nonce, na, f3.payload)) {
    throw new Refused(
      `authentication failed: its proof does not match this job's secret (a wrong or ` +
        `another job's LOOM_SECRET)`,
      "protocol",
    );
  }
  const tag = await key.tag(AuthSide.acceptor, ctx, claim.nonce, na);
  await race(writeFrame(w.conn, authHead(me.rank, 4), tag));
}
