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
 * closed with it): INIT; READDIRPLUS, LOOKUP and GETATTR breadth first through the
 * closure until it sees a file of 1 MiB or more (or a bounded number of listing
 * pages); OPEN of the largest regular file seen; then `reads` READs of 128 KiB,
 * cycling over its first MiB (so the host reads at most that much from disk), shaped
 * as a guest's readahead sends them (see #readFile). It takes a few hundred ms of
 * one CPU and runs once; any failure only ends the warm-up: serving never depends
 * on it.
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
import { Errno } from '../fuse/errno';
import { S_IFDIR, S_IFMT, S_IFREG } from '../store/nodes';
import { LoopbackDriver, MAX_REPLY_PAGES, type HeaderPlace, type PageRun, type Reply, type ServedConnection } from './loopback-driver';

const PAGE = 4096;
const READ_SIZE = MAX_REPLY_PAGES * PAGE;
/** READs cycle over at most this much of the file: page-cache hits after the first pass. */
const READ_SPAN = 1 << 20;
/** Every this many steps, two requests go out together, as a guest's readahead often has two READs out. */
const PAIR_EVERY = 4;
/** Every this many READs, one reads across the end of the file and comes back short. */
const EOF_EVERY = 64;
/**
 * Page layouts of the READs in turn: every other page, runs of 3, one run, runs of 2,
 * and one run right after the out header (one view of guest memory that the data goes
 * into at an offset: a driver whose header happens to sit before its pages).
 */
const READ_SHAPES: readonly { run: PageRun; header: HeaderPlace }[] = [
  { run: 1, header: 'apart' },
  { run: 3, header: 'apart' },
  { run: MAX_REPLY_PAGES, header: 'apart' },
  { run: 2, header: 'apart' },
  { run: MAX_REPLY_PAGES, header: 'before-pages' },
];
/** Every this many steps the request beside a READ is one that fails (see #readFile). */
const FAIL_EVERY = 4 * PAIR_EVERY;
/** Listing pages (READDIRPLUS requests) read while looking for a file, and entries looked up along the way. */
const MAX_LISTINGS = 512;
const MAX_LOOKUPS = 256;
/** What a Linux 6.x guest asks for in INIT that changes how the server answers. */
const INIT_FLAGS =
  InitFlag.ASYNC_READ | InitFlag.BIG_WRITES | InitFlag.DO_READDIRPLUS | InitFlag.READDIRPLUS_AUTO | InitFlag.PARALLEL_DIROPS | InitFlag.MAX_PAGES |
  InitFlag.NO_OPEN_SUPPORT | InitFlag.NO_OPENDIR_SUPPORT | InitFlag.INIT_EXT;

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
      await this.#call(0, Opcode.INIT, 0, InitIn.SIZE, (b, o) => InitIn.encode({ major: FUSE_KERNEL_VERSION, minor: FUSE_KERNEL_MINOR_VERSION, maxReadahead: READ_SIZE, flags: INIT_FLAGS, flags2: 0 }, b, o), 1);
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

  /**
   * Breadth first through the closure, each directory listed to its end, until a
   * regular file of at least READ_SPAN turns up (the READs should be a guest's: full
   * 128 KiB replies, not short ones) or MAX_LISTINGS pages were listed; the largest
   * regular file seen. The first MAX_LOOKUPS entries are also looked up and stat'ed.
   */
  async #findFile(): Promise<Entry | null> {
    const dirs = [FUSE_ROOT_ID];
    let best: Entry | null = null;
    let lookups = 0;
    let listings = 0;
    const bigEnough = (): boolean => best !== null && best.size >= READ_SPAN;
    while (dirs.length > 0 && listings < MAX_LISTINGS && !bigEnough()) {
      const dir = dirs.shift() as number;
      for (let offset = 0; listings < MAX_LISTINGS && !bigEnough(); listings++) {
        const page = await this.#readdirplus(dir, offset);
        if (page === null) break;
        for (const e of page.entries) {
          if ((e.mode & S_IFMT) === S_IFDIR) dirs.push(e.nodeid);
          if ((e.mode & S_IFMT) === S_IFREG && (best === null || e.size > best.size)) best = e;
          if (lookups++ < MAX_LOOKUPS) await this.#lookupAndStat(e);
        }
        offset = page.next;
      }
    }
    return best;
  }

  /** One page of a listing from `offset`; null at its end (or on an error). */
  async #readdirplus(nodeid: number, offset: number): Promise<{ entries: Entry[]; next: number } | null> {
    // fh 0: the server answers OPENDIR with ENOSYS, so a guest lists directories without one.
    const r = await this.#call(0, Opcode.READDIRPLUS, nodeid, ReadIn.SIZE, (b, o) => ReadIn.encode({ fh: 0, offset, size: PAGE, readFlags: 0, lockOwner: 0n, flags: 0 }, b, o), 1);
    if (r.error !== 0 || r.length === 0) return null;
    const page = this.#driver.replyPage(0, 0).subarray(0, r.length);
    const entries: Entry[] = [];
    let next = offset;
    for (let at = 0; at + DIRENTPLUS_NAME_OFFSET <= page.length; ) {
      const entry = EntryOut.decode(page, at);
      const d = Dirent.decode(page, at + EntryOut.SIZE);
      const name = Buffer.from(page.subarray(at + DIRENTPLUS_NAME_OFFSET, at + DIRENTPLUS_NAME_OFFSET + d.namelen));
      const dot = name.length <= 2 && name.every((c) => c === 0x2e);
      if (entry.nodeid !== 0 && !dot) entries.push({ parent: nodeid, name, nodeid: entry.nodeid, mode: entry.attr.mode, size: entry.attr.size });
      next = Number(d.off);
      at += direntplusSize(d.namelen);
    }
    return next === offset ? null : { entries, next };
  }

  async #lookupAndStat(e: Entry): Promise<void> {
    await this.#call(0, Opcode.LOOKUP, e.parent, e.name.length + 1, (b, o) => (e.name.copy(b, o), (b[o + e.name.length] = 0), e.name.length + 1), 1);
    await this.#call(0, Opcode.GETATTR, e.nodeid, 16, (b, o) => (b.fill(0, o, o + 16), 16), 1);
  }

  /**
   * READs as a guest's readahead sends them: mostly one in flight; every PAIR_EVERY-th
   * step two requests at once, the first of them served on the pool while the second
   * is served in place (every other pair the first is a GETATTR, which is offered the
   * pool and answers in place all the same); pages in the layouts of READ_SHAPES in
   * turn; now and then a READ across the end of the file (a short read); and every
   * FAIL_EVERY steps a READLINK of the file beside the READ, which fails (EINVAL) as
   * some of a guest's requests do. Each is a branch V8 would otherwise first meet in
   * the guest's traffic: the guest's first OPEN, answered ENOSYS after the warm-up had
   * compiled the dispatch without an error reply, threw that code away.
   */
  async #readFile(file: Entry, reads: number): Promise<number> {
    const open = await this.#call(0, Opcode.OPEN, file.nodeid, 8, (b, o) => (b.fill(0, o, o + 8), 8), 1);
    // ENOSYS: the server wants the guest to open files itself (zero-message open); its READs then carry fh 0.
    if (open.error !== 0 && open.error !== -Errno.ENOSYS) throw new Error(`OPEN of a closure file failed: errno ${-open.error}`);
    const fh = open.error === 0 ? Number(this.#driver.replyPage(0, 0).readBigUInt64LE(0)) : 0;
    const span = Math.max(READ_SIZE, Math.min(READ_SPAN, file.size));
    const tail = Math.max(0, file.size - READ_SIZE / 2) & ~(PAGE - 1);
    const read = (slot: number, n: number): Promise<Reply> => {
      const offset = n % EOF_EVERY === EOF_EVERY - 1 ? tail : (n * READ_SIZE) % span;
      const shape = READ_SHAPES[n % READ_SHAPES.length] as (typeof READ_SHAPES)[number];
      return this.#call(slot, Opcode.READ, file.nodeid, ReadIn.SIZE, (b, o) => ReadIn.encode({ fh, offset, size: READ_SIZE, readFlags: 0, lockOwner: 0n, flags: 0 }, b, o), MAX_REPLY_PAGES, shape.run, shape.header);
    };
    const aside = async (slot: number, step: number): Promise<Reply> => {
      if (step % FAIL_EVERY !== PAIR_EVERY - 1) return this.#call(slot, Opcode.GETATTR, file.nodeid, 16, (b, o) => (b.fill(0, o, o + 16), 16), 1);
      const r = await this.#call(slot, Opcode.READLINK, file.nodeid, 0, () => 0, 1);
      if (r.error !== -Errno.EINVAL) throw new Error(`warm-up READLINK of a regular file: errno ${-r.error}, expected EINVAL`);
      return { error: 0, length: 0 };
    };
    let done = 0;
    for (let step = 0; done < reads; step++) {
      const pair = step % PAIR_EVERY === PAIR_EVERY - 1;
      const first = !pair ? null : step % (2 * PAIR_EVERY) === PAIR_EVERY - 1 || reads - done < 2 ? aside(1, step) : read(1, done++);
      const replies = await Promise.all(first === null ? [read(0, done)] : [first, read(0, done)]);
      done++;
      for (const r of replies) if (r.error !== 0) throw new Error(`warm-up request on a closure file failed: errno ${-r.error}`);
    }
    return done;
  }

  /** One request in a driver slot: in header + the arguments `args` writes at the offset it is given. */
  async #call(slot: number, opcode: number, nodeid: number, argsSize: number, args: (b: Buffer, off: number) => number, pages: number, run: PageRun = 1, header: HeaderPlace = 'apart'): Promise<Reply> {
    if (this.#stopReason !== null) throw new Error(this.#stopReason);
    const b = this.#driver.request(slot);
    const len = InHeader.SIZE + args(b, InHeader.SIZE);
    if (len !== InHeader.SIZE + argsSize) throw new Error(`warm-up: opcode ${opcode} arguments are ${len - InHeader.SIZE} bytes, expected ${argsSize}`);
    InHeader.encode({ len, opcode, unique: this.#unique++, nodeid, uid: 0, gid: 0, pid: 0, totalExtlen: 0 }, b, 0);
    const r = await this.#driver.submit(slot, len, pages, run, header);
    if (this.#stopReason !== null) throw new Error(this.#stopReason);
    this.#requests++;
    return r;
  }
}
