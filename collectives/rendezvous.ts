/**
 * Rendezvous: rank 0 listens on the master address; every other rank connects, says who it is
 * (rank, world size, the address and port it listens on) and receives the table of everyone's
 * address. Then each rank connects to every lower rank except 0 (rank 0 keeps the rendezvous
 * connections), which builds a full mesh of TCP connections. Everything is bounded by one
 * deadline; a stray connection that sends garbage is logged and dropped while the rendezvous goes
 * on.
 *
 * @module
 */
import { CollectiveError } from "./communicator.ts";
import {
  DEFAULT_MAX_FRAME_BYTES,
  type Frame,
  FrameError,
  FrameOp,
  frameOpName,
  FrameReader,
  writeFrame,
} from "./frame.ts";

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
   * Interface to listen on. Default: `127.0.0.1` when the master address is a loopback one,
   * otherwise `0.0.0.0`.
   */
  listenAddr?: string;
  /** Milliseconds for the whole rendezvous; default 60 000. */
  timeoutMs?: number;
  /** Largest frame payload accepted; default {@linkcode DEFAULT_MAX_FRAME_BYTES}. */
  maxFrameBytes?: number;
  /** Called on rank 0 once it listens, with the port (useful with `masterPort: 0`). */
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

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function json(x: unknown): Uint8Array {
  return encoder.encode(JSON.stringify(x));
}

/** Tell a peer why the rendezvous failed (best effort: it may be gone already). */
function sendError(conn: Deno.Conn, message: string): Promise<void> {
  const head = { op: FrameOp.error, kind: 0, src: 0, group: 0, tag: 0, seq: 0, total: 0, arg: 0 };
  return writeFrame(conn, head, json({ message })).catch(() => {});
}

function parseJson(f: Frame): Record<string, unknown> {
  const v = JSON.parse(decoder.decode(f.payload));
  if (typeof v !== "object" || v === null) throw new FrameError("control frame is not an object");
  return v as Record<string, unknown>;
}

function isLoopback(host: string): boolean {
  return host === "localhost" || host.startsWith("127.") || host === "::1";
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
    this.#timer = setTimeout(() => {
      this.expired = true;
      const err = new CollectiveError("timeout", "rendezvous", "world", undefined, this.what());
      for (const r of this.#rejects) r(err);
    }, ms);
  }
  /** Race `p` against the deadline. */
  race<T>(p: Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      if (this.expired) {
        reject(new CollectiveError("timeout", "rendezvous", "world", undefined, this.what()));
        return;
      }
      this.#rejects.add(reject);
      p.then(resolve, reject).finally(() => this.#rejects.delete(reject));
    });
  }
  clear(): void {
    clearTimeout(this.#timer);
  }
}

function closeQuietly(c: { close(): void }): void {
  try {
    c.close();
  } catch { /* already closed */ }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
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

function open(conn: Deno.TcpConn, maxFrameBytes: number): Link {
  conn.setNoDelay(true);
  return { conn, reader: new FrameReader(conn, maxFrameBytes, 64 * 1024) };
}

async function readControl(link: Link, dl: Deadline): Promise<Frame> {
  const f = await dl.race(link.reader.next());
  if (f === null) throw new FrameError("connection closed before its first frame");
  return f;
}

/**
 * Join a TCP world: rendezvous at rank 0, then connect a full mesh.
 *
 * @param opts who this rank is and where rank 0 listens
 * @returns the mesh of connections
 * @throws {RangeError} on bad options, a world-size disagreement or a duplicate rank
 * @throws {CollectiveError} when the rendezvous does not complete in time
 */
export async function rendezvous(opts: RendezvousOptions): Promise<Mesh> {
  checkOptions(opts);
  // "localhost" may resolve to ::1 while rank 0 listens on 127.0.0.1: pin it to IPv4.
  if (opts.masterAddr === "localhost") opts = { ...opts, masterAddr: "127.0.0.1" };
  const { rank, size } = opts;
  const maxFrameBytes = opts.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES;
  const listenAddr = opts.listenAddr ?? (isLoopback(opts.masterAddr) ? "127.0.0.1" : "0.0.0.0");
  const timeoutMs = opts.timeoutMs ?? 60_000;
  const links: (Link | null)[] = new Array(size).fill(null);
  let waitingFor = "";
  const dl = new Deadline(
    timeoutMs,
    () => `rank ${rank} of ${size} gave up after ${timeoutMs} ms ${waitingFor}`,
  );
  let listener: Deno.TcpListener | undefined;
  try {
    if (size === 1) {
      return { rank, size, links, jobId: 0, maxFrameBytes };
    }
    if (rank === 0) {
      listener = Deno.listen({ hostname: listenAddr, port: opts.masterPort });
      opts.onListen?.(listener.addr.port);
      const jobId = await masterRendezvous(listener, opts, links, dl, maxFrameBytes, (s) => {
        waitingFor = s;
      });
      return { rank, size, links, jobId, maxFrameBytes };
    }
    // Ranks 1..size-2 accept connections from higher ranks.
    if (rank < size - 1) listener = Deno.listen({ hostname: listenAddr, port: 0 });
    waitingFor = `waiting for rank 0 at ${opts.masterAddr}:${opts.masterPort}: ` +
      `is rank 0 running, with that MASTER_ADDR and MASTER_PORT?`;
    const master = open(
      await connectRetry(opts.masterAddr, opts.masterPort, dl),
      maxFrameBytes,
    );
    links[0] = master;
    const hello: Hello = { rank, size, host: opts.host, port: listener?.addr.port ?? 0 };
    await dl.race(
      writeFrame(master.conn, {
        op: FrameOp.hello,
        kind: 0,
        src: rank,
        group: 0,
        tag: 0,
        seq: 0,
        total: 0,
        arg: 0,
      }, json(hello)),
    );
    waitingFor = `waiting for the table from rank 0 (are all ${size} ranks started?)`;
    const reply = await readControl(master, dl);
    const body = parseJson(reply);
    if (reply.header.op === FrameOp.error) throw new RangeError(String(body.message));
    if (reply.header.op !== FrameOp.table) {
      throw new FrameError(`expected the table from rank 0, got ${frameOpName(reply.header.op)}`);
    }
    const table = body.table as TableEntry[];
    const jobId = Number(body.jobId);
    await buildMesh(rank, size, table, jobId, listener, links, dl, maxFrameBytes, (s) => {
      waitingFor = s;
    });
    return { rank, size, links, jobId, maxFrameBytes };
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
  links: (Link | null)[],
  dl: Deadline,
  maxFrameBytes: number,
  say: (s: string) => void,
): Promise<number> {
  const { size } = opts;
  const table: TableEntry[] = new Array(size);
  table[0] = { host: opts.host ?? opts.masterAddr, port: listener.addr.port };
  let joined = 1;
  const missing = () => {
    const m: number[] = [];
    for (let r = 1; r < size; r++) if (!links[r]) m.push(r);
    return m;
  };
  const update = () =>
    say(
      `waiting at ${listener.addr.hostname}:${listener.addr.port} for rank(s) ${
        missing().join(", ")
      }: start them with the same MASTER_ADDR and MASTER_PORT`,
    );
  update();
  let fatal: Error | undefined;
  let wake: () => void = () => {};
  const done = new Promise<void>((r) => (wake = r));
  const pending = new Set<Promise<void>>();
  const strays = new Set<Deno.TcpConn>();

  const handle = async (conn: Deno.TcpConn) => {
    const link = open(conn, maxFrameBytes);
    const from = `${conn.remoteAddr.hostname}:${conn.remoteAddr.port}`;
    let f: Frame;
    let hello: Hello;
    try {
      f = await readControl(link, dl);
      if (f.header.op !== FrameOp.hello) {
        throw new FrameError(`expected a hello, got ${frameOpName(f.header.op)}`);
      }
      hello = parseJson(f) as unknown as Hello;
    } catch (e) {
      if (e instanceof CollectiveError) {
        closeQuietly(conn);
        return;
      }
      console.error(
        `loom rendezvous: dropped connection from ${from}: ${(e as Error).message ?? e}`,
      );
      closeQuietly(conn);
      return;
    }
    const r = hello.rank;
    let problem: string | undefined;
    if (hello.size !== size) {
      problem = `rank ${r} says the world has ${hello.size} ranks but rank 0 says ${size}: ` +
        `pass the same world size (--nnodes x --nproc-per-node, or WORLD_SIZE) to every process`;
    } else if (!Number.isInteger(r) || r < 1 || r >= size) {
      problem = `a process at ${from} claims rank ${r}, outside 1..${size - 1}: ` +
        `give every process a distinct rank below the world size`;
    } else if (links[r]) {
      problem = `two processes claim rank ${r} (the second from ${from}): ` +
        `give every process a distinct rank`;
    }
    if (problem !== undefined) {
      fatal ??= new RangeError(`Rendezvous failed: ${problem}`);
      await sendError(conn, `Rendezvous failed: ${problem}`);
      closeQuietly(conn);
      wake();
      return;
    }
    links[r] = link;
    table[r] = { host: hello.host ?? conn.remoteAddr.hostname, port: hello.port };
    joined++;
    update();
    if (joined === size) wake();
  };

  const acceptLoop = (async () => {
    while (joined < size && fatal === undefined) {
      let conn: Deno.TcpConn;
      try {
        conn = await listener.accept();
      } catch {
        return; // listener closed
      }
      strays.add(conn);
      const p = handle(conn).finally(() => {
        strays.delete(conn);
        pending.delete(p);
      });
      pending.add(p);
    }
  })();

  try {
    await dl.race(done);
  } finally {
    closeQuietly(listener);
    await acceptLoop;
    // Connections still silent when everyone has joined are strays: drop them.
    for (const c of strays) if (!links.some((l) => l?.conn === c)) closeQuietly(c);
    await Promise.all(pending);
  }
  if (fatal) {
    const message = fatal.message;
    await Promise.all(links.map((l) => l ? sendError(l.conn, message) : undefined));
    throw fatal;
  }
  const jobId = (Math.random() * 0xffffffff) >>> 0;
  const payload = json({ table, jobId });
  await dl.race(Promise.all(links.map((l) =>
    l
      ? writeFrame(l.conn, {
        op: FrameOp.table,
        kind: 0,
        src: 0,
        group: 0,
        tag: 0,
        seq: 0,
        total: 0,
        arg: 0,
      }, payload)
      : undefined
  )));
  return jobId;
}

async function buildMesh(
  rank: number,
  size: number,
  table: TableEntry[],
  jobId: number,
  listener: Deno.TcpListener | undefined,
  links: (Link | null)[],
  dl: Deadline,
  maxFrameBytes: number,
  say: (s: string) => void,
): Promise<void> {
  const expectHigher = size - 1 - rank;
  let accepted = 0;
  const acceptAll = async () => {
    if (!listener) return;
    while (accepted < expectHigher) {
      const conn = await dl.race(listener.accept());
      const link = open(conn, maxFrameBytes);
      const from = `${conn.remoteAddr.hostname}:${conn.remoteAddr.port}`;
      try {
        const f = await readControl(link, dl);
        const body = parseJson(f);
        const r = Number(body.rank);
        if (f.header.op !== FrameOp.peerHello || body.jobId !== jobId) {
          throw new FrameError(`not a peer of this job (op ${frameOpName(f.header.op)})`);
        }
        if (!(r > rank && r < size) || links[r]) {
          throw new FrameError(`unexpected or duplicate peer rank ${r}`);
        }
        links[r] = link;
        accepted++;
      } catch (e) {
        if (e instanceof CollectiveError) throw e;
        console.error(
          `loom rendezvous: rank ${rank} dropped connection from ${from}: ${(e as Error).message}`,
        );
        closeQuietly(conn);
      }
    }
  };
  const connectAll = async () => {
    await Promise.all(
      table.slice(1, rank).map(async (t, i) => {
        const r = i + 1;
        const link = open(await connectRetry(t.host, t.port, dl), maxFrameBytes);
        links[r] = link;
        await dl.race(
          writeFrame(link.conn, {
            op: FrameOp.peerHello,
            kind: 0,
            src: rank,
            group: 0,
            tag: 0,
            seq: 0,
            total: 0,
            arg: 0,
          }, json({ rank, jobId })),
        );
      }),
    );
  };
  say(`building the mesh: connecting to ranks 1..${rank - 1}, accepting ranks above ${rank}`);
  await Promise.all([acceptAll(), connectAll()]);
}
