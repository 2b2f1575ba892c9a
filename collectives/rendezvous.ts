/**
 * Rendezvous: rank 0 listens on the master address; every other rank connects, says who it is
 * (rank, world size, the address and port it listens on) and receives the table of everyone's
 * address. Then each rank connects to every lower rank except 0 (rank 0 keeps the rendezvous
 * connections), which builds a full mesh of TCP connections. Everything is bounded by one
 * deadline.
 *
 * ## The job secret
 *
 * With a job secret (the `secret` option, else `LOOM_SECRET` from the environment), every TCP
 * connection of the job (a rank's connection to rank 0, each mesh connection between two ranks,
 * each lane) opens with a mutual challenge-response, and the acceptor takes no other frame
 * before it:
 *
 * ```
 * connector -> acceptor   auth 1   role, rank rc, world size n, job id (0 at the rendezvous), Nc
 * acceptor  -> connector  auth 2   the job id J, Na
 * connector -> acceptor   auth 3   HMAC(secret, "LOOMAUTH" v role C n J rc ra Nc Na)
 * acceptor  -> connector  auth 4   HMAC(secret, "LOOMAUTH" v role A n J rc ra Nc Na)
 * ```
 *
 * HMAC is HMAC-SHA-256 (Web Crypto); Nc and Na are 16 random bytes drawn by each side for this
 * connection; v is the protocol version; role says rendezvous, mesh or lane; C and A say which
 * side computed the tag; ra is the rank the connector meant to reach; J is the random id rank 0
 * draws when it starts (a rank learns it at auth 2 of its rendezvous connection, and a mesh
 * connection or lane of another job is refused on it). Every field has a fixed width, so the
 * bytes under a tag have one reading; the tags are compared in constant time. The acceptor checks
 * auth 3 before it answers with auth 4, so a connector proves itself first and a stranger gets
 * no tag at all; the connector checks auth 4 before it sends anything else, so both ends know the
 * other holds the secret. Fresh nonces on both sides keep a recorded exchange from being replayed,
 * and the side letter keeps one side's tag from serving as the other's. After the handshake the
 * usual hello follows, and must repeat the rank and size of auth 1. J tells jobs apart and is no
 * secret (auth 2 shows it to whoever asks); the tags are what a stranger cannot make.
 *
 * Lanes are driven through libc synchronously, so they run the same tags (role lane) with the
 * nonces carried over their pair's mesh connection, which is authenticated already, and the tags
 * computed between the synchronous steps ({@link ./_tcp_lane.ts}).
 *
 * The connecting side speaks first with and without a secret (auth 1, or its hello), so when
 * only one side has a secret the acceptor sees the wrong first frame at once, and both sides fail
 * with a message naming the missing secret instead of waiting for each other.
 *
 * Without a secret there is no handshake: the wire is as it was, and anyone who can reach a
 * rank's port can join the job or claim a rank not yet taken. A rank that listens beyond loopback
 * without a secret warns once. A secret authenticates connections as they open; it neither
 * encrypts nor signs the frames that follow, so it guards against strangers that can reach the
 * ports, not against someone on the path between two ranks.
 *
 * ## What is refused
 *
 * A connection with a wrong or missing secret (or a secret the job does not have), another job's
 * id, another protocol version, bytes that are not frames, a frame larger than
 * `CONTROL_FRAME_BYTES` before it is accepted, a rank outside the world or one that has already
 * joined: each is logged with its address and reason, told why in an error frame, and closed;
 * the rendezvous goes on and the real ranks join. Only a rank that reports another world size
 * (after proving the secret, when there is one) ends the rendezvous at once: a launch mistake. At most 64 connections may
 * be in their handshake at once, each for at most 10 s. Rank 0 keeps listening until the world
 * closes and refuses whoever connects then, so a late rank learns at once that the job is running.
 * When the rendezvous fails, rank 0 tells the ranks that joined why (who never came, what it
 * refused), and a rank that has joined waits for that verdict up to `timeoutMs` after joining.
 *
 * ## Where ranks listen
 *
 * Rank 0 listens on `listenAddr` (or `LOOM_LISTEN_ADDR`), by default the master address itself,
 * never every interface unless asked (`"0.0.0.0"`); the other ranks on `listenAddr`, else
 * `host`, else the address of their own side of the connection to rank 0 (the interface that
 * reaches the master).
 *
 * @module
 */
import { CollectiveError } from "./communicator.ts";
import {
  CONTROL_FRAME_BYTES,
  DEFAULT_MAX_FRAME_BYTES,
  type Frame,
  FrameError,
  FrameOp,
  frameOpName,
  FrameReader,
  writeFrame,
} from "./frame.ts";
import {
  authAccept,
  type AuthClaim,
  authConnect,
  AuthRole,
  newJobId,
  readClaim,
  readEnv,
  refusalError,
  Refused,
  resolveSecret,
  WireKey,
} from "./_wire_auth.ts";
import {
  addrOf,
  closeQuietly,
  Gate,
  handshakeBudget,
  isLoopback,
  Refusals,
  refuse,
  sendError,
  sleep,
} from "./_tcp_gate.ts";

/** Where and how a rank joins a TCP world. */
export interface RendezvousOptions {
  /** This rank, 0 <= rank < size. */
  rank: number;
  /** Number of ranks in the world. */
  size: number;
  /** Host of rank 0 (it listens there). */
  masterAddr: string;
  /** Port rank 0 listens on; rank 0 may pass 0 to pick a free one (see `onListen`). */
  masterPort: number;
  /**
   * Address the other ranks use to reach this one. Default: the address rank 0 sees this rank
   * connect from.
   */
  host?: string;
  /**
   * Interface to listen on. Default: `LOOM_LISTEN_ADDR` from the environment when it is set,
   * else the master address on rank 0, and on the other ranks `host`, else the local address of
   * their connection to rank 0. `"0.0.0.0"` listens on every interface.
   */
  listenAddr?: string;
  /**
   * The job secret: every rank must pass the same one (or none). With it, every connection of
   * the job proves knowledge of it before anything else is accepted (HMAC-SHA-256
   * challenge-response, both ways). Default: `LOOM_SECRET` from the environment when it is set
   * and readable, else none; without one, anyone who can reach a rank's port can join the job.
   */
  secret?: string;
  /** Milliseconds for the whole rendezvous; default 60 000. */
  timeoutMs?: number;
  /** Largest frame payload accepted; default {@linkcode DEFAULT_MAX_FRAME_BYTES}. */
  maxFrameBytes?: number;
  /**
   * Called once this rank listens, with the port: on rank 0 the master port (useful with
   * `masterPort: 0`), on the others the port higher ranks connect to.
   */
  onListen?: (port: number) => void;
}

/** One connection of the mesh: the socket and the reader that owns its incoming bytes. */
export interface Link {
  /** The socket. */
  conn: Deno.TcpConn;
  /** Reader to keep using: it may already hold bytes the peer sent after its hello. */
  reader: FrameReader;
}

/** The result of a rendezvous: one link per other rank. */
export interface Mesh {
  /** This rank. */
  rank: number;
  /** World size. */
  size: number;
  /** `links[r]` connects to rank r; `links[rank]` is null. */
  links: (Link | null)[];
  /** Random id shared by every rank of this job. */
  jobId: number;
  /** Largest frame payload accepted. */
  maxFrameBytes: number;
  /** The job secret as a key, or null without one. */
  key: WireKey | null;
  /** Rank 0's listener, still refusing late connections: close it with the mesh. */
  gate: { close(): Promise<void> } | null;
}

interface Hello {
  rank: number;
  size: number;
  host?: string;
  port: number;
}

interface TableEntry {
  host: string;
  port: number;
}

/** Longest time a connection may take over its whole handshake and hello. */
const HANDSHAKE_MS = 10_000;
/** How long past `timeoutMs` a rank that joined waits for rank 0's verdict. */
const VERDICT_GRACE_MS = 2_000;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function json(x: unknown): Uint8Array {
  return encoder.encode(JSON.stringify(x));
}

function control(op: number, src: number) {
  return { op, kind: 0, src, group: 0, tag: 0, seq: 0, total: 0, arg: 0 };
}

function parseJson(f: Frame): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(decoder.decode(f.payload));
  } catch {
    throw new FrameError(`its ${frameOpName(f.header.op)} is not JSON`);
  }
  if (typeof v !== "object" || v === null || Array.isArray(v)) {
    throw new FrameError(`its ${frameOpName(f.header.op)} is not a JSON object`);
  }
  return v as Record<string, unknown>;
}

function isPort(p: unknown): p is number {
  return Number.isInteger(p) && (p as number) >= 0 && (p as number) <= 65535;
}

function isHost(h: unknown): h is string {
  return typeof h === "string" && h.length > 0 && h.length <= 255 && /^[\w.:%-]+$/.test(h);
}

function parseHello(f: Frame): Hello {
  const b = parseJson(f);
  if (!Number.isInteger(b.rank) || !Number.isInteger(b.size) || !isPort(b.port)) {
    throw new FrameError("its hello lacks an integer rank, size or port");
  }
  if (b.host !== undefined && !isHost(b.host)) throw new FrameError("its hello has a bad host");
  return { rank: b.rank as number, size: b.size as number, host: b.host, port: b.port };
}

function checkOptions(o: RendezvousOptions): void {
  if (!Number.isInteger(o.size) || o.size < 1) {
    throw new RangeError(`World size must be a positive integer, got ${o.size}`);
  }
  if (!Number.isInteger(o.rank) || o.rank < 0 || o.rank >= o.size) {
    throw new RangeError(
      `Rank ${o.rank} is out of range for a world of ${o.size}: use 0 <= rank < ${o.size}`,
    );
  }
  if (!Number.isInteger(o.masterPort) || o.masterPort < 0 || o.masterPort > 65535) {
    throw new RangeError(`Master port must be an integer in 0..65535, got ${o.masterPort}`);
  }
  if (o.masterPort === 0 && o.rank !== 0) {
    throw new RangeError(`Only rank 0 may use master port 0; rank ${o.rank} needs the real port`);
  }
}

/** Deadline shared by every step of a rendezvous. */
class Deadline {
  #timer: ReturnType<typeof setTimeout> | undefined;
  #rejects = new Set<(e: Error) => void>();
  expired = false;
  constructor(ms: number, private readonly what: () => string) {
    this.#timer = setTimeout(this.#fire, ms);
  }
  #fire = () => {
    this.expired = true;
    const err = new CollectiveError("timeout", "rendezvous", "world", undefined, this.what());
    for (const r of this.#rejects) r(err);
  };
  /** Race `p` against the deadline. */
  race = <T>(p: Promise<T>): Promise<T> => {
    return new Promise<T>((resolve, reject) => {
      if (this.expired) {
        reject(new CollectiveError("timeout", "rendezvous", "world", undefined, this.what()));
        return;
      }
      this.#rejects.add(reject);
      p.then(resolve, reject).finally(() => this.#rejects.delete(reject));
    });
  };
  /** Move the deadline to `ms` from now. */
  extend(ms: number): void {
    if (this.expired) return;
    clearTimeout(this.#timer);
    this.#timer = setTimeout(this.#fire, ms);
  }
  clear(): void {
    clearTimeout(this.#timer);
  }
}

async function connectRetry(
  hostname: string,
  port: number,
  dl: Deadline,
): Promise<Deno.TcpConn> {
  while (true) {
    try {
      return await dl.race(Deno.connect({ hostname, port }));
    } catch (e) {
      if (e instanceof CollectiveError) throw e;
      if (!(e instanceof Deno.errors.ConnectionRefused)) throw e;
      await dl.race(sleep(50));
    }
  }
}

/** A link whose reader accepts only control-sized frames until the peer is accepted. */
function open(conn: Deno.TcpConn): Link {
  conn.setNoDelay(true);
  return { conn, reader: new FrameReader(conn, CONTROL_FRAME_BYTES, 64 * 1024) };
}

async function readControl(link: Link, race: <T>(p: Promise<T>) => Promise<T>): Promise<Frame> {
  const f = await race(link.reader.next());
  if (f === null) throw new FrameError("the connection closed before its next frame", true);
  return f;
}

let warnedOpen = false;

/** Listen on `hostname`, saying how to fix an address this machine does not have. */
function listenOn(hostname: string, port: number, o: RendezvousOptions, secret: boolean) {
  let l: Deno.TcpListener;
  try {
    l = Deno.listen({ hostname, port });
  } catch (e) {
    if (e instanceof Deno.errors.AddrNotAvailable) {
      throw new RangeError(
        `Rank ${o.rank} cannot listen on ${hostname}: it is not an address of this machine; ` +
          `pass listenAddr or set LOOM_LISTEN_ADDR (an address of this machine, or "0.0.0.0" ` +
          `for every interface)`,
      );
    }
    if (e instanceof Deno.errors.AddrInUse) {
      throw new RangeError(
        `Rank ${o.rank} cannot listen on ${hostname}:${port}: the port is in use ` +
          `(another job?): pick another MASTER_PORT`,
      );
    }
    throw e;
  }
  const bound = l.addr.hostname;
  if (!isLoopback(bound) && !secret && !warnedOpen) {
    warnedOpen = true;
    console.warn(
      `loom rendezvous: rank ${o.rank} listens on ${addrOf(l.addr)} without a job secret: ` +
        `anyone who can reach this port can join the job. Set LOOM_SECRET (the same on every ` +
        `rank) or pass a secret.`,
    );
  }
  if (o.rank === 0 && isLoopback(bound) && !isLoopback(o.masterAddr)) {
    console.warn(
      `loom rendezvous: rank 0 listens on ${addrOf(l.addr)} (what ${o.masterAddr} resolves to ` +
        `here), which other machines cannot reach: pass listenAddr if ranks run elsewhere`,
    );
  }
  o.onListen?.(l.addr.port);
  return l;
}

/**
 * The acceptor's side of a connection's opening: with a key, the handshake ({@link authAccept});
 * without, a check that the peer does not expect one. Returns the first frame after it.
 */
async function acceptOpening(
  link: Link,
  key: WireKey | null,
  role: number,
  me: { rank: number; size: number; jobId: number },
  race: <T>(p: Promise<T>) => Promise<T>,
  screen: (claim: AuthClaim) => void,
): Promise<{ frame: Frame; claim?: AuthClaim }> {
  const f = await readControl(link, race);
  if (key === null) {
    if (f.header.op === FrameOp.auth) {
      throw new Refused(
        `it opened with a job-secret handshake, but this job runs without a secret: give ` +
          `every rank the same LOOM_SECRET, or none`,
        "protocol",
      );
    }
    return { frame: f };
  }
  if (f.header.op !== FrameOp.auth) {
    if (f.header.op === FrameOp.hello || f.header.op === FrameOp.peerHello) {
      throw new Refused(
        `it sent a ${frameOpName(f.header.op)} without the job-secret handshake, and this job ` +
          `requires one: give every rank the same LOOM_SECRET (or secret option)`,
        "protocol",
      );
    }
    throw new FrameError(`expected the job-secret handshake, got ${frameOpName(f.header.op)}`);
  }
  const claim = readClaim(f);
  if (claim.role !== role) {
    throw new Refused(
      `its handshake is for another kind of connection (role ${claim.role})`,
      "protocol",
    );
  }
  screen(claim);
  await authAccept(link, key, claim, me, race);
  return { frame: await readControl(link, race), claim };
}

/**
 * Join a TCP world: rendezvous at rank 0, then connect a full mesh.
 *
 * @param opts who this rank is and where rank 0 listens
 * @returns the mesh of connections
 * @throws {RangeError} on bad options, a world-size disagreement or a refused rank
 * @throws {CollectiveError} when the rendezvous does not complete in time, or on a secret that
 *   does not match (reason `"protocol"`)
 */
export async function rendezvous(opts: RendezvousOptions): Promise<Mesh> {
  checkOptions(opts);
  // "localhost" may resolve to ::1 while rank 0 listens on 127.0.0.1: pin it to IPv4.
  if (opts.masterAddr === "localhost") opts = { ...opts, masterAddr: "127.0.0.1" };
  const { rank, size } = opts;
  const maxFrameBytes = opts.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES;
  const secret = resolveSecret(opts.secret);
  const timeoutMs = opts.timeoutMs ?? 60_000;
  const listenAddr = opts.listenAddr ?? readEnv("LOOM_LISTEN_ADDR");
  const links: (Link | null)[] = new Array(size).fill(null);
  if (size === 1) return { rank, size, links, jobId: 0, maxFrameBytes, key: null, gate: null };
  const key = secret === undefined ? null : await WireKey.from(secret);
  let waitingFor = "";
  const refusals = new Refusals(rank === 0 ? "" : `rank ${rank} `);
  const dl = new Deadline(
    timeoutMs,
    () =>
      `rank ${rank} of ${size} gave up after ${timeoutMs} ms ${waitingFor}${refusals.summary()}`,
  );
  let listener: Deno.TcpListener | undefined;
  try {
    if (rank === 0) {
      const jobId = newJobId();
      listener = listenOn(listenAddr ?? opts.masterAddr, opts.masterPort, opts, !!key);
      const gate = await masterRendezvous(listener, opts, key, jobId, links, dl, refusals, (s) => {
        waitingFor = s;
      });
      listener = undefined; // the gate owns it now
      return { rank, size, links, jobId, maxFrameBytes, key, gate };
    }
    const where = `${opts.masterAddr}:${opts.masterPort}`;
    waitingFor = `waiting for rank 0 at ${where}: ` +
      `is rank 0 running, with that MASTER_ADDR and MASTER_PORT?`;
    const master = open(await connectRetry(opts.masterAddr, opts.masterPort, dl));
    links[0] = master;
    let jobId = 0;
    if (key) {
      const claim = { role: AuthRole.rendezvous, rank, size, jobId: 0 };
      jobId = await authConnect(master, key, claim, 0, dl.race, `rank 0 at ${where}`);
    }
    // Ranks 1..size-2 accept connections from higher ranks, on the interface that reaches rank 0.
    if (rank < size - 1) {
      const local = (master.conn.localAddr as Deno.NetAddr).hostname;
      listener = listenOn(listenAddr ?? opts.host ?? local, 0, opts, !!key);
    }
    const hello: Hello = { rank, size, host: opts.host, port: listener?.addr.port ?? 0 };
    await dl.race(writeFrame(master.conn, control(FrameOp.hello, rank), json(hello)));
    // Joined: the verdict is rank 0's now (it says why when the rendezvous fails).
    dl.extend(timeoutMs + VERDICT_GRACE_MS);
    master.reader.maxFrameBytes = maxFrameBytes;
    waitingFor = `waiting for the table from rank 0 (are all ${size} ranks started?)`;
    const reply = await readControl(master, dl.race);
    if (reply.header.op === FrameOp.error) throw refusalError(reply, `rank 0 at ${where}`);
    if (reply.header.op !== FrameOp.table) {
      throw new FrameError(`expected the table from rank 0, got ${frameOpName(reply.header.op)}`);
    }
    const body = parseJson(reply);
    const table = body.table as TableEntry[];
    if (
      !Array.isArray(table) || table.length !== size ||
      table.some((t, r) => r > 0 && (!isHost(t?.host) || !isPort(t?.port)))
    ) {
      throw new FrameError("rank 0 sent a malformed table");
    }
    if (key && body.jobId !== jobId) throw new FrameError("the table is for another job");
    jobId = Number(body.jobId) >>> 0;
    await buildMesh(
      rank,
      size,
      table,
      jobId,
      key,
      listener,
      links,
      dl,
      refusals,
      maxFrameBytes,
      (s) => {
        waitingFor = s;
      },
    );
    return { rank, size, links, jobId, maxFrameBytes, key, gate: null };
  } catch (e) {
    for (const l of links) if (l) closeQuietly(l.conn);
    throw e;
  } finally {
    dl.clear();
    if (listener) closeQuietly(listener);
  }
}

async function masterRendezvous(
  listener: Deno.TcpListener,
  opts: RendezvousOptions,
  key: WireKey | null,
  jobId: number,
  links: (Link | null)[],
  dl: Deadline,
  refusals: Refusals,
  say: (s: string) => void,
): Promise<Gate> {
  const { size } = opts;
  const table: TableEntry[] = new Array(size);
  table[0] = { host: opts.host ?? opts.masterAddr, port: listener.addr.port };
  let joined = 1;
  let running = false;
  const missing = () => {
    const m: number[] = [];
    for (let r = 1; r < size; r++) if (!links[r]) m.push(r);
    return m;
  };
  const update = () =>
    say(
      `waiting at ${addrOf(listener.addr)} for rank(s) ${missing().join(", ")}: ` +
        `start them with the same MASTER_ADDR and MASTER_PORT`,
    );
  update();
  let fatal: Error | undefined;
  let wake: () => void = () => {};
  const done = new Promise<void>((r) => (wake = r));

  const handle = async (conn: Deno.TcpConn, from: string) => {
    const link = open(conn);
    const race = handshakeBudget(dl.race, HANDSHAKE_MS);
    try {
      const { frame: f, claim } = await acceptOpening(
        link,
        key,
        AuthRole.rendezvous,
        { rank: 0, size, jobId },
        race,
        () => {},
      );
      if (f.header.op !== FrameOp.hello) {
        throw new FrameError(`expected a hello, got ${frameOpName(f.header.op)}`);
      }
      const hello = parseHello(f);
      const r = hello.rank;
      if (claim && (claim.rank !== r || claim.size !== hello.size)) {
        throw new Refused(
          "its hello does not repeat the rank and size of its handshake",
          "protocol",
        );
      }
      if (running) {
        throw new Refused(
          `all ${size} ranks of this job have joined and it is running: a rank cannot join it ` +
            `now (restart every rank)`,
        );
      }
      if (hello.size !== size) {
        const problem = `rank ${r} says the world has ${hello.size} ranks but rank 0 says ` +
          `${size}: pass the same world size (--nnodes x --nproc-per-node, or WORLD_SIZE) to ` +
          `every process`;
        fatal ??= new RangeError(`Rendezvous failed: ${problem}`);
        await sendError(conn, 0, `Rendezvous failed: ${problem}`);
        closeQuietly(conn);
        wake();
        return;
      }
      if (r < 1 || r >= size) {
        throw new Refused(
          `Rendezvous failed: a process at ${from} claims rank ${r}, outside 1..${size - 1}: ` +
            `give every process a distinct rank below the world size`,
        );
      }
      if (links[r]) {
        throw new Refused(
          `Rendezvous failed: two processes claim rank ${r} (the second from ${from}): ` +
            `give every process a distinct rank`,
        );
      }
      link.reader.maxFrameBytes = opts.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES;
      links[r] = link;
      table[r] = { host: hello.host ?? conn.remoteAddr.hostname, port: hello.port };
      joined++;
      update();
      if (joined === size) wake();
    } catch (e) {
      if (gate.closing || e instanceof CollectiveError) {
        closeQuietly(conn); // the rendezvous is over: not this connection's doing
        return;
      }
      await refuse(conn, 0, from, e, refusals);
    }
  };
  const gate = new Gate(listener, handle, refusals);

  try {
    await dl.race(done);
  } catch (e) {
    await gate.close();
    const message = (e as Error).message;
    await Promise.all(links.map((l) => l ? sendError(l.conn, 0, message, "timeout") : undefined));
    throw e;
  }
  if (fatal) {
    await gate.close();
    const message = fatal.message;
    await Promise.all(links.map((l) => l ? sendError(l.conn, 0, message) : undefined));
    throw fatal;
  }
  running = true;
  const payload = json({ table, jobId });
  try {
    await dl.race(
      Promise.all(
        links.map((l) => l ? writeFrame(l.conn, control(FrameOp.table, 0), payload) : undefined),
      ),
    );
  } catch (e) {
    await gate.close();
    throw e;
  }
  return gate;
}

async function buildMesh(
  rank: number,
  size: number,
  table: TableEntry[],
  jobId: number,
  key: WireKey | null,
  listener: Deno.TcpListener | undefined,
  links: (Link | null)[],
  dl: Deadline,
  refusals: Refusals,
  maxFrameBytes: number,
  say: (s: string) => void,
): Promise<void> {
  const expectHigher = size - 1 - rank;
  let accepted = 0;
  let wake: () => void = () => {};
  const allIn = new Promise<void>((r) => (wake = r));
  if (expectHigher === 0) wake();
  const handle = async (conn: Deno.TcpConn, from: string) => {
    const link = open(conn);
    const race = handshakeBudget(dl.race, HANDSHAKE_MS);
    const screen = (c: AuthClaim) => {
      if (c.jobId !== jobId) {
        throw new Refused(
          `it belongs to another job (job id ${c.jobId}, this job is ${jobId})`,
          "protocol",
        );
      }
      if (c.size !== size || !(c.rank > rank && c.rank < size)) {
        throw new Refused(`it claims rank ${c.rank} of ${c.size}, not a higher rank of this job`);
      }
    };
    try {
      const { frame: f, claim } = await acceptOpening(
        link,
        key,
        AuthRole.mesh,
        { rank, size, jobId },
        race,
        screen,
      );
      if (f.header.op !== FrameOp.peerHello) {
        throw new FrameError(`expected a peer hello, got ${frameOpName(f.header.op)}`);
      }
      const body = parseJson(f);
      const r = Number(body.rank);
      if (body.jobId !== jobId) {
        throw new Refused(
          `it belongs to another job (job id ${body.jobId}, this job is ${jobId})`,
          "protocol",
        );
      }
      if (!(Number.isInteger(r) && r > rank && r < size) || (claim && claim.rank !== r)) {
        throw new Refused(`it claims rank ${body.rank}, not a higher rank of this job`);
      }
      if (links[r]) {
        throw new Refused(`rank ${r} is already connected: a second connection claims it`);
      }
      link.reader.maxFrameBytes = maxFrameBytes;
      links[r] = link;
      if (++accepted === expectHigher) wake();
    } catch (e) {
      if (gate?.closing) {
        refusals.note(from, "it was still in its handshake when the mesh was complete");
        closeQuietly(conn);
        return;
      }
      if (e instanceof CollectiveError) {
        closeQuietly(conn);
        return;
      }
      await refuse(conn, rank, from, e, refusals);
    }
  };
  const gate = listener ? new Gate(listener, handle, refusals) : null;
  const connectAll = async () => {
    await Promise.all(
      table.slice(1, rank).map(async (t, i) => {
        const r = i + 1;
        const link = open(await connectRetry(t.host, t.port, dl));
        links[r] = link;
        if (key) {
          const claim = { role: AuthRole.mesh, rank, size, jobId };
          await authConnect(link, key, claim, r, dl.race, `rank ${r} at ${t.host}:${t.port}`);
        }
        await dl.race(
          writeFrame(link.conn, control(FrameOp.peerHello, rank), json({ rank, jobId })),
        );
        link.reader.maxFrameBytes = maxFrameBytes;
      }),
    );
  };
  say(`building the mesh: connecting to ranks 1..${rank - 1}, accepting ranks above ${rank}`);
  try {
    await Promise.all([dl.race(allIn), connectAll()]);
  } finally {
    await gate?.close();
  }
}
