/**
 * A fresh daemon serves its own request path before a VM connects.
 *
 * Why: V8 compiles the request path while it runs. A fresh daemon's first two
 * thousand 128 KiB READs cost about twice the CPU of later ones, and a guest that
 * keeps one READ in flight (a TCG guest reading a file after the mount) waits for
 * every one of them. Measured through the socket (a harness sending 3,000
 * guest-shaped READs before the guest boots): that guest's first sequential read
 * went from 388 to 424 MiB/s, median of 5 pairs. Serving the same READs to a
 * FuseServer on a private ring did not move it: the code that has to be warm is the
 * whole path from the kick's fd watcher through the session to the call eventfd.
 * So the warm-up is a real session on a socketpair, fed by LoopbackDriver.
 *
 * What it sends, through a session built exactly like a frontend's (its own view,
 * closed with it): INIT; READDIRPLUS, LOOKUP and GETATTR over the first directories
 * of the closure; OPEN of the largest regular file it saw; then `reads` READs of
 * 128 KiB (of what the file has, cycling over its first MiB, so the host reads
 * at most that much from disk). It takes a few hundred ms of one CPU and runs
 * once; any failure only ends the warm-up: serving never depends on it.
 */
import {
  DIRENTPLUS_NAME_OFFSET,
  Dirent,
  EntryOut,
  FUSE_KERNEL_MINOR_VERSION,
  FUSE_KERNEL_VERSION,
  FUSE_ROOT_ID,
  InHeader,
  InitFlag,
  InitIn,
  Opcode,
  ReadIn,
  direntplusSize,
} from '../fuse/abi';
import { S_IFDIR, S_IFMT, S_IFREG } from '../store/nodes';
import { LoopbackDriver, MAX_REPLY_PAGES, type Reply, type ServedConnection } from './loopback-driver';

const PAGE = 4096;
const READ_SIZE = MAX_REPLY_PAGES * PAGE;
/** READs cycle over at most this much of the file: page-cache hits after the first pass. */
const READ_SPAN = 1 << 20;
/** Directories listed while looking for a file, and entries looked up along the way. */
const MAX_DIRECTORIES = 64;
const MAX_LOOKUPS = 256;
/** What a Linux 6.x guest asks for in INIT that changes how the server answers. */
const INIT_FLAGS =
  InitFlag.ASYNC_READ | InitFlag.BIG_WRITES | InitFlag.DO_READDIRPLUS | InitFlag.READDIRPLUS_AUTO | InitFlag.PARALLEL_DIROPS | InitFlag.MAX_PAGES | InitFlag.INIT_EXT;

export interface WarmUpResult {
  /** READs completed (fewer than asked when stopped or when the closure has no regular file). */
  reads: number;
  /** Requests of every kind completed. */
  requests: number;
  ms: number;
  /** Size of the file read, 0 when none was found. */
  fileSize: number;
  /** Why it ended before its READs: stop()'s reason or an error's message; null when it finished. */
  stopped: string | null;
}

interface Entry {
  parent: number;
  name: Buffer;
  nodeid: number;
  mode: number;
  size: number;
}

export class WarmUp {
  readonly #driver: LoopbackDriver;
  #unique = 1n;
  #requests = 0;
  #stopReason: string | null = null;

  /** serve: builds the session for one end of a socketpair, as for an accepted frontend. */
  constructor(serve: (fd: number) => ServedConnection) {
    this.#driver = new LoopbackDriver(serve);
  }

  /** Ends the warm-up at its next request; the session and its fds are released now. */
  stop(reason: string): void {
    if (this.#stopReason === null) this.#stopReason = reason;
    this.#driver.close();
  }

  async run(reads: number): Promise<WarmUpResult> {
    const t0 = performance.now();
    let done = 0;
    let fileSize = 0;
    try {
      await this.#call(Opcode.INIT, 0, InitIn.SIZE, (b, o) => InitIn.encode({ major: FUSE_KERNEL_VERSION, minor: FUSE_KERNEL_MINOR_VERSION, maxReadahead: READ_SIZE, flags: INIT_FLAGS, flags2: 0 }, b, o), 1);
      const file = await this.#findFile();
      fileSize = file?.size ?? 0;
      if (file !== null) done = await this.#readFile(file, reads);
    } catch (e) {
      if (this.#stopReason === null) this.#stopReason = (e as Error).message;
    } finally {
      this.#driver.close();
    }
    return { reads: done, requests: this.#requests, ms: Math.round(performance.now() - t0), fileSize, stopped: done === reads ? null : this.#stopReason ?? 'no regular file in the closure' };
  }

  /** Breadth first through the first directories; the largest regular file seen, looked up and stat'ed. */
  async #findFile(): Promise<Entry | null> {
    const dirs = [FUSE_ROOT_ID];
    let best: Entry | null = null;
    let lookups = 0;
    for (let listed = 0; listed < MAX_DIRECTORIES && dirs.length > 0; listed++) {
      for (const e of await this.#readdirplus(dirs.shift() as number)) {
        if ((e.mode & S_IFMT) === S_IFDIR) dirs.push(e.nodeid);
        if ((e.mode & S_IFMT) === S_IFREG && (best === null || e.size > best.size)) best = e;
        if (lookups++ < MAX_LOOKUPS) await this.#lookupAndStat(e);
      }
    }
    return best;
  }

  async #readdirplus(nodeid: number): Promise<Entry[]> {
    // fh 0: the server answers OPENDIR with ENOSYS, so a guest lists directories without one.
    const r = await this.#call(Opcode.READDIRPLUS, nodeid, ReadIn.SIZE, (b, o) => ReadIn.encode({ fh: 0, offset: 0, size: PAGE, readFlags: 0, lockOwner: 0n, flags: 0 }, b, o), 1);
    if (r.error !== 0) return [];
    const page = this.#driver.replyPage(0).subarray(0, r.length);
    const out: Entry[] = [];
    for (let at = 0; at + DIRENTPLUS_NAME_OFFSET <= page.length; ) {
      const entry = EntryOut.decode(page, at);
      const d = Dirent.decode(page, at + EntryOut.SIZE);
      const name = Buffer.from(page.subarray(at + DIRENTPLUS_NAME_OFFSET, at + DIRENTPLUS_NAME_OFFSET + d.namelen));
      const dot = name.length <= 2 && name.every((c) => c === 0x2e);
      if (entry.nodeid !== 0 && !dot) out.push({ parent: nodeid, name, nodeid: entry.nodeid, mode: entry.attr.mode, size: entry.attr.size });
      at += direntplusSize(d.namelen);
    }
    return out;
  }

  async #lookupAndStat(e: Entry): Promise<void> {
    await this.#call(Opcode.LOOKUP, e.parent, e.name.length + 1, (b, o) => (e.name.copy(b, o), (b[o + e.name.length] = 0), e.name.length + 1), 1);
    await this.#call(Opcode.GETATTR, e.nodeid, 16, (b, o) => (b.fill(0, o, o + 16), 16), 1);
  }

  async #readFile(file: Entry, reads: number): Promise<number> {
    const open = await this.#call(Opcode.OPEN, file.nodeid, 8, (b, o) => (b.fill(0, o, o + 8), 8), 1);
    if (open.error !== 0) throw new Error(`OPEN of a closure file failed: errno ${-open.error}`);
    const fh = Number(this.#driver.replyPage(0).readBigUInt64LE(0));
    const span = Math.max(READ_SIZE, Math.min(READ_SPAN, file.size));
    let done = 0;
    for (; done < reads; done++) {
      const offset = (done * READ_SIZE) % span;
      const r = await this.#call(Opcode.READ, file.nodeid, ReadIn.SIZE, (b, o) => ReadIn.encode({ fh, offset, size: READ_SIZE, readFlags: 0, lockOwner: 0n, flags: 0 }, b, o), MAX_REPLY_PAGES);
      if (r.error !== 0) throw new Error(`READ of a closure file failed: errno ${-r.error}`);
    }
    return done;
  }

  /** One request: in header + the arguments `args` writes at the offset it is given. */
  async #call(opcode: number, nodeid: number, argsSize: number, args: (b: Buffer, off: number) => number, pages: number): Promise<Reply> {
    if (this.#stopReason !== null) throw new Error(this.#stopReason);
    const b = this.#driver.request;
    const len = InHeader.SIZE + args(b, InHeader.SIZE);
    if (len !== InHeader.SIZE + argsSize) throw new Error(`warm-up: opcode ${opcode} arguments are ${len - InHeader.SIZE} bytes, expected ${argsSize}`);
    InHeader.encode({ len, opcode, unique: this.#unique++, nodeid, uid: 0, gid: 0, pid: 0, totalExtlen: 0 }, b, 0);
    const r = await this.#driver.submit(len, pages);
    if (this.#stopReason !== null) throw new Error(this.#stopReason);
    this.#requests++;
    return r;
  }
}
