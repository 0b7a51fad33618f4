/**
 * The FUSE server: turns one request (device-readable buffers) into one reply
 * (written in place into the device-writable buffers) by asking a FileSystem.
 * It knows nothing of rings or sockets (src/io.ts is its only contract with the
 * transport) and nothing of the store behind the FileSystem.
 *
 * handle() never throws: a malformed request gets an errno reply (or, when not
 * even a reply header fits, nothing), a FileSystem bug gets EIO and a log line.
 */
import { Buffer } from 'node:buffer';
import { PENDING, type Completion, type RequestHandler, type ScatterGather } from '../io';
import {
  AccessIn,
  AttrOut,
  BatchForgetIn,
  Dirent,
  EntryOut,
  FlushIn,
  FopenFlag,
  ForgetIn,
  ForgetOne,
  FUSE_GETATTR_FH,
  FUSE_KERNEL_MINOR_VERSION,
  FUSE_KERNEL_VERSION,
  FUSE_MIN_MINOR_VERSION,
  FUSE_NAME_MAX,
  GetattrIn,
  GetxattrIn,
  GetxattrOut,
  InHeader,
  putOutHeader,
  INIT_IN_COMPAT_SIZE,
  INIT_OUT_COMPAT_22_SIZE,
  InitFlag,
  InitIn,
  InitOut,
  LseekIn,
  LseekOut,
  Opcode,
  OPCODE_NAMES,
  OpenIn,
  OpenOut,
  OutHeader,
  ReadIn,
  ReleaseIn,
  RequestHeader,
  RemoveMappingIn,
  RemoveMappingOne,
  SetupMappingIn,
  StatfsOut,
  SyncfsIn,
  direntplusSize,
  direntSize,
} from './abi';
import { ChainReader, ChainWriter, totalLength } from './chain';
import { Errno, errnoOf, FuseDecodeError } from './errno';
import { MUTATING_OPS, opensForWrite, type DirEntry, type Entry, type FileSystem, type RequestContext } from './filesystem';

/**
 * Guest caching, as virtiofsd's --cache:
 * - always: long entry/attr timeouts, negative lookups cached, FOPEN_KEEP_CACHE on
 *   files and FOPEN_CACHE_DIR on directories, READLINK cached. The default: a
 *   store path never changes after it is registered and the view is fixed for the
 *   daemon's life, so there is nothing to revalidate; every timeout we skip is a
 *   LOOKUP/GETATTR round trip saved, and KEEP_CACHE keeps binaries' pages across
 *   exec()s. With zeroMessageOpen the guest opens files without asking at all.
 * - auto: 1 s timeouts, no negative entries or directory caching, and
 *   close-to-open consistency for file data: each OPEN revalidates the file (its
 *   size and mtime against those the guest was given) and lets the guest keep its
 *   cached pages only when they match. A store file never changes, so they always
 *   do and a binary run twice is read once; virtiofsd's auto drops the pages on
 *   every open, since it cannot tell. A file edited in place (which the host's
 *   read-only store mount should prevent) still shows its new bytes at the next
 *   open, as under NFS, unless the edit kept both its size and its mtime.
 * - never: zero timeouts and FOPEN_DIRECT_IO: every access asks the daemon
 *   (useful to measure or debug the daemon itself).
 */
export type CacheMode = 'auto' | 'always' | 'never';

/** The subset of a pino logger the server uses. */
export interface FuseLogger {
  debug(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

/**
 * Where SETUPMAPPING/REMOVEMAPPING go when the device has a DAX window. Values
 * are the guest's, unvalidated; each call returns 0 or an errno for the reply.
 * fh is u64 -1 when the kernel wants the file resolved by nodeid.
 */
export interface DaxMapper {
  setupMapping(nodeid: number, fh: bigint, foffset: bigint, len: bigint, moffset: bigint, flags: bigint): number;
  removeMapping(moffset: bigint, len: bigint): number;
}

export interface FuseServerOptions {
  /** Default 'always' (see CacheMode). */
  cache?: CacheMode;
  /** Upper bound on the guest's max_readahead (bytes); default: whatever the guest asks. */
  maxReadahead?: number;
  /** Pages per request (max_pages); default 256 (1 MiB). The guest clamps it to its queue size. */
  maxPages?: number;
  /** Background requests the guest may keep in flight (readahead); default 64. */
  maxBackground?: number;
  dax?: DaxMapper;
  /**
   * Answer OPENDIR with ENOSYS so the guest stops sending OPENDIR/RELEASEDIR and
   * reads directories with fh 0 (FUSE_NO_OPENDIR_SUPPORT). Saves two round trips
   * per directory; needs a FileSystem whose readdir works without a handle.
   */
  zeroMessageOpendir?: boolean;
  /**
   * Under cache=always, answer a read-only OPEN of a file with ENOSYS when the
   * guest supports it (FUSE_NO_OPEN_SUPPORT in its INIT): it then opens files
   * without asking, so an open() costs no OPEN, and a close() no FLUSH or RELEASE;
   * its READs carry fh 0 and the FileSystem reads by nodeid. Without an OPEN the
   * guest keeps a file's pages (FOPEN_KEEP_CACHE is its default then), which is
   * what always grants anyway; auto needs the OPEN to revalidate, never to bypass
   * the cache. Once this is on, the guest no longer asks before opening for
   * writing either: a write or truncate still gets EROFS from the daemon.
   */
  zeroMessageOpen?: boolean;
  /**
   * READs of at least this many bytes may run on a thread of their own when the
   * transport has other requests to serve meanwhile (see RequestHandler); smaller
   * ones, and any READ that arrives alone, are read in place. Default 64 KiB;
   * Infinity reads everything in place.
   */
  offloadReadMin?: number;
  logger?: FuseLogger;
}

/** Entry and attribute timeouts per cache mode (seconds). */
const TIMEOUTS: Record<CacheMode, number> = { always: 86400, auto: 1, never: 0 };
/** log2 of the DAX mapping alignment we need: 4 KiB pages. */
const DAX_MAP_ALIGNMENT = 12;
const PAGE = 4096;

const NO_REPLY = -1;
const OK = 0;
/** The handler started work that finishes the request later, through Request.complete. */
const LATER = -2;
/** A handler's outcome: OK (payload written), NO_REPLY, LATER, or a positive errno. */
type Outcome = number;
const DEFAULT_OFFLOAD_READ_MIN = 64 * 1024;

interface Request {
  header: RequestHeader;
  ctx: RequestContext;
  in: ChainReader;
  /** The payload area: the writable buffers from byte 16 on. */
  out: ChainWriter;
  sg: ScatterGather;
  queueIndex: number;
  /** The transport's completion, when it offered one: a handler may then return LATER. */
  complete: Completion | undefined;
}
type Handler = (req: Request) => Outcome;

const NULL_LOGGER: FuseLogger = { debug() {}, warn() {}, error() {} };

/** An entry_out that gives the guest nothing to count or cache (readdirplus "." / ".." / failed lookups). */
const NO_ENTRY: EntryOut = {
  nodeid: 0, generation: 0, entryValid: 0, attrValid: 0, entryValidNsec: 0, attrValidNsec: 0,
  attr: { ino: 0, size: 0, blocks: 0, atime: 0, mtime: 0, ctime: 0, atimensec: 0, mtimensec: 0, ctimensec: 0, mode: 0, nlink: 0, uid: 0, gid: 0, rdev: 0, blksize: 0, flags: 0 },
};

const DOT = 0x2e;
const SLASH = 0x2f;

/** The NUL-terminated name at the reader's position; validated as one path component. */
function readName(r: ChainReader): Buffer {
  const rest = r.readRest();
  // One pass for the NUL and any '/': a name is a few bytes, and Buffer's indexOf and
  // includes each cost a call into C++ on every LOOKUP.
  let end = 0;
  let slash = false;
  for (; end < rest.length && rest[end] !== 0; end++) if (rest[end] === SLASH) slash = true;
  if (end === rest.length) throw new FuseDecodeError('name without NUL');
  if (end === 0) throw new FuseDecodeError('empty name');
  if (slash) throw new FuseDecodeError("name contains '/'");
  if (end > FUSE_NAME_MAX) throw new FuseDecodeError('name too long', Errno.ENAMETOOLONG);
  return rest.subarray(0, end);
}

/** A mapper's answer as an Outcome: 0, or a positive errno whichever sign it came with. */
function daxErrno(v: number): number {
  return Number.isInteger(v) && v !== 0 ? Math.min(Math.abs(v), 4095) : v === 0 ? OK : Errno.EIO;
}

function isDotOrDotDot(name: Buffer): boolean {
  return name[0] === DOT && (name.length === 1 || (name.length === 2 && name[1] === DOT));
}


export class FuseServer implements RequestHandler {
  readonly #fs: FileSystem;
  readonly #cache: CacheMode;
  readonly #timeout: number;
  readonly #opts: FuseServerOptions;
  readonly #log: FuseLogger;
  readonly #offloadReadMin: number;
  /**
   * Indexed by opcode: a dense array, so V8 compiles the lookup once for any opcode
   * (an object keyed by opcode deoptimised #dispatch on each opcode it had not seen).
   */
  readonly #handlers: readonly (Handler | undefined)[];
  /** Requests served, by opcode (same indexing as #handlers). */
  readonly #served: number[];
  /** READs handed to FileSystem.readAsync. */
  #offloadedReads = 0;
  #initialized = false;
  /** Negotiated minor version (0 before INIT). */
  #minor = 0;
  /** This session answers a file OPEN with ENOSYS (see zeroMessageOpen); decided at INIT. */
  #noOpen = false;

  constructor(fs: FileSystem, opts: FuseServerOptions = {}) {
    this.#fs = fs;
    this.#opts = opts;
    this.#cache = opts.cache ?? 'always';
    this.#timeout = TIMEOUTS[this.#cache];
    this.#log = opts.logger ?? NULL_LOGGER;
    this.#offloadReadMin = fs.readAsync === undefined ? Infinity : (opts.offloadReadMin ?? DEFAULT_OFFLOAD_READ_MIN);
    this.#handlers = this.#table();
    this.#served = new Array<number>(this.#handlers.length).fill(0);
  }

  get initialized(): boolean {
    return this.#initialized;
  }

  get negotiatedMinor(): number {
    return this.#minor;
  }

  /**
   * How many requests of each kind were served (by opcode name, non-zero only):
   * logged when a frontend leaves, so an operator sees what a guest asked for.
   */
  requestCounts(): Record<string, number> {
    const counts: Record<string, number> = {};
    this.#served.forEach((n, opcode) => {
      if (n > 0) counts[OPCODE_NAMES.get(opcode) ?? String(opcode)] = n;
    });
    if (this.#offloadedReads > 0) counts['READ off the main thread'] = this.#offloadedReads;
    return counts;
  }

  handle(queueIndex: number, request: ScatterGather, complete?: Completion): number {
    let readable: number;
    try {
      readable = totalLength(request.readable);
    } catch {
      return this.#replyError(request, null, Errno.EINVAL);
    }
    if (readable < InHeader.SIZE) {
      // No header means no unique to answer to; the virtio transport matches replies by chain, not by unique.
      this.#log.warn({ queueIndex, readable }, 'FUSE request shorter than fuse_in_header');
      return this.#replyError(request, null, Errno.EINVAL);
    }
    const reader = new ChainReader(request.readable);
    const header = reader.read(RequestHeader);
    if (header.len !== readable) {
      this.#log.warn({ queueIndex, len: header.len, readable, opcode: header.opcode }, 'fuse_in_header.len disagrees with the chain');
      return this.#isNoReply(header.opcode) ? 0 : this.#replyError(request, header, Errno.EINVAL);
    }
    return this.#dispatch(queueIndex, header, reader, request, complete);
  }

  #dispatch(queueIndex: number, header: RequestHeader, reader: ChainReader, request: ScatterGather, complete: Completion | undefined): number {
    const handler = header.opcode < this.#handlers.length ? this.#handlers[header.opcode] : undefined;
    if (handler === undefined) return this.#replyError(request, header, Errno.ENOSYS);
    this.#served[header.opcode]++;
    // The opcode test first, as it runs for every request: V8 compiles only the tests it has seen
    // run, and a fresh connection's INIT would otherwise be the first to run the second one.
    if (header.opcode !== Opcode.INIT && !this.#initialized) {
      return this.#isNoReply(header.opcode) ? 0 : this.#replyError(request, header, Errno.EIO);
    }
    const out = new ChainWriter(request.writable, OutHeader.SIZE);
    let outcome: Outcome;
    try {
      // 7.38: total_extlen 8-byte units of extensions (security context, groups) follow the arguments.
      reader.excludeTail(header.totalExtlen * 8);
      outcome = handler({ header, ctx: header, in: reader, out, sg: request, queueIndex, complete });
    } catch (e) {
      outcome = this.#errnoFor(e, queueIndex, header);
    }
    if (outcome === LATER) return PENDING;
    return this.#reply(header, out, request, outcome);
  }

  /** Writes the reply header for an outcome; the bytes the chain now holds. */
  #reply(header: RequestHeader, out: ChainWriter, request: ScatterGather, outcome: Outcome): number {
    // FORGET and friends never get a reply, not even an error one: the guest is not waiting for it.
    if (outcome === NO_REPLY || this.#isNoReply(header.opcode)) return 0;
    if (outcome !== OK) return this.#replyError(request, header, outcome);
    return this.#replyOk(request, header, out.bytesWritten);
  }

  /**
   * Finishes a request whose handler returned LATER. Runs from a callback of the
   * event loop, where a throw would end the daemon: whatever goes wrong, the
   * transport's completion is called, once.
   */
  #finish(r: Request, handler: () => Outcome): void {
    let written = 0;
    try {
      let outcome: Outcome;
      try {
        outcome = handler();
      } catch (e) {
        outcome = this.#errnoFor(e, r.queueIndex, r.header);
      }
      written = this.#reply(r.header, r.out, r.sg, outcome);
    } catch (e) {
      this.#log.error({ queueIndex: r.queueIndex, err: e }, 'writing a deferred reply failed');
    }
    (r.complete as Completion)(written);
  }

  #errnoFor(e: unknown, queueIndex: number, header: RequestHeader): number {
    const errno = errnoOf(e);
    if (errno !== undefined) {
      if (e instanceof FuseDecodeError) this.#log.debug({ queueIndex, opcode: header.opcode, err: e.message }, 'bad FUSE request');
      return errno;
    }
    this.#log.error({ queueIndex, opcode: OPCODE_NAMES.get(header.opcode), err: e }, 'FUSE handler failed');
    return Errno.EIO;
  }

  #isNoReply(opcode: number): boolean {
    return opcode === Opcode.FORGET || opcode === Opcode.BATCH_FORGET || opcode === Opcode.INTERRUPT;
  }

  /** Writes fuse_out_header for a successful reply whose payload is already in place. */
  #replyOk(request: ScatterGather, h: RequestHeader, payloadLen: number): number {
    return this.#writeHeader(request, OutHeader.SIZE + payloadLen, 0, h.uniqueLo, h.uniqueHi);
  }

  /** Writes a header-only error reply (unique 0 when the request had no header to take it from). */
  #replyError(request: ScatterGather, h: RequestHeader | null, errno: number): number {
    return this.#writeHeader(request, OutHeader.SIZE, -errno, h === null ? 0 : h.uniqueLo, h === null ? 0 : h.uniqueHi);
  }

  #writeHeader(request: ScatterGather, len: number, error: number, uniqueLo: number, uniqueHi: number): number {
    // The guest gives the header a buffer of its own: written in place, no cursor needed.
    const first = request.writable[0];
    if (first !== undefined && first.length >= OutHeader.SIZE) {
      putOutHeader(first, 0, len, error, uniqueLo, uniqueHi);
      return len;
    }
    const w = new ChainWriter(request.writable);
    if (w.available < OutHeader.SIZE) {
      this.#log.warn({ writable: w.available }, 'no room for fuse_out_header; request dropped without reply');
      return 0;
    }
    const bytes = Buffer.alloc(OutHeader.SIZE);
    putOutHeader(bytes, 0, len, error, uniqueLo, uniqueHi);
    w.writeBytes(bytes);
    return len;
  }

  // ---- the table -------------------------------------------------------------------

  #table(): (Handler | undefined)[] {
    const named: Record<number, Handler> = {
      [Opcode.INIT]: (r) => this.#init(r),
      [Opcode.DESTROY]: () => this.#destroy(),
      [Opcode.LOOKUP]: (r) => this.#lookup(r),
      [Opcode.FORGET]: (r) => this.#forget(r),
      [Opcode.BATCH_FORGET]: (r) => this.#batchForget(r),
      [Opcode.GETATTR]: (r) => this.#getattr(r),
      [Opcode.READLINK]: (r) => this.#readlink(r),
      [Opcode.OPEN]: (r) => this.#open(r),
      [Opcode.READ]: (r) => this.#read(r),
      [Opcode.FLUSH]: (r) => this.#flush(r),
      [Opcode.RELEASE]: (r) => this.#release(r),
      [Opcode.OPENDIR]: (r) => this.#opendir(r),
      [Opcode.READDIR]: (r) => this.#readdir(r),
      [Opcode.READDIRPLUS]: (r) => this.#readdirplus(r),
      [Opcode.RELEASEDIR]: (r) => this.#releasedir(r),
      [Opcode.STATFS]: (r) => this.#statfs(r),
      [Opcode.ACCESS]: (r) => this.#access(r),
      [Opcode.LSEEK]: (r) => this.#lseek(r),
      [Opcode.GETXATTR]: (r) => this.#getxattr(r),
      [Opcode.LISTXATTR]: (r) => this.#listxattr(r),
      [Opcode.INTERRUPT]: () => NO_REPLY,
      [Opcode.SYNCFS]: (r) => this.#syncfs(r),
      [Opcode.SETUPMAPPING]: (r) => this.#setupMapping(r),
      [Opcode.REMOVEMAPPING]: (r) => this.#removeMapping(r),
    };
    for (const op of MUTATING_OPS) named[Opcode[op]] = (r) => this.#fs.mutate(r.ctx, op, r.header.nodeid);
    const size = Math.max(...Object.keys(named).map(Number)) + 1;
    return Array.from({ length: size }, (_, opcode) => named[opcode]);
  }

  // ---- session ---------------------------------------------------------------------

  /*
   * INIT: major 7 only. A newer major gets our major/minor alone so the guest can
   * retry; an older one, or a minor below FUSE_MIN_MINOR_VERSION, is EPROTO.
   */
  #init(r: Request): Outcome {
    if (r.in.remaining < INIT_IN_COMPAT_SIZE) throw new FuseDecodeError('fuse_init_in too short');
    const raw = Buffer.alloc(InitIn.SIZE); // the pre-7.36 form is 16 bytes: the rest reads as zero
    r.in.readBytes(Math.min(r.in.remaining, InitIn.SIZE)).copy(raw);
    const init = InitIn.decode(raw, 0);
    if (init.major > FUSE_KERNEL_VERSION) {
      r.out.write(InitOut, { ...this.#emptyInitOut(), major: FUSE_KERNEL_VERSION, minor: FUSE_KERNEL_MINOR_VERSION });
      return OK;
    }
    if (init.major < FUSE_KERNEL_VERSION || init.minor < FUSE_MIN_MINOR_VERSION) return Errno.EPROTO;
    // INIT starts a session with nothing known on the guest side. Whatever an earlier one left behind
    // (a guest reset without DESTROY, or a new server over the same FileSystem) is dropped first.
    this.#fs.destroy();
    this.#fs.init();
    const reply = this.#negotiate(init);
    this.#minor = reply.minor;
    this.#noOpen = this.#opts.zeroMessageOpen === true && this.#cache === 'always' && (init.flags & InitFlag.NO_OPEN_SUPPORT) !== 0;
    this.#initialized = true;
    this.#writeInitOut(r.out, reply);
    this.#log.debug({ minor: reply.minor, flags: reply.flags.toString(16), flags2: reply.flags2 }, 'FUSE INIT');
    return OK;
  }

  #emptyInitOut(): InitOut {
    return { major: 0, minor: 0, maxReadahead: 0, flags: 0, maxBackground: 0, congestionThreshold: 0, maxWrite: 0, timeGran: 0, maxPages: 0, mapAlignment: 0, flags2: 0 };
  }

  #negotiate(init: InitIn): InitOut {
    const maxPages = Math.max(1, Math.min(this.#opts.maxPages ?? 256, 0xffff));
    const maxBackground = Math.max(1, Math.min(this.#opts.maxBackground ?? 64, 0xffff));
    const hasExt = (init.flags & InitFlag.INIT_EXT) !== 0;
    const flags = (this.#wantedFlags(hasExt) & init.flags) >>> 0;
    const dax = this.#opts.dax !== undefined && (flags & InitFlag.MAP_ALIGNMENT) !== 0;
    return {
      major: FUSE_KERNEL_VERSION,
      minor: Math.min(init.minor, FUSE_KERNEL_MINOR_VERSION),
      maxReadahead: Math.min(init.maxReadahead, this.#opts.maxReadahead ?? init.maxReadahead),
      flags,
      maxBackground,
      congestionThreshold: Math.floor((maxBackground * 3) / 4),
      maxWrite: maxPages * PAGE,
      timeGran: 1,
      maxPages,
      mapAlignment: dax ? DAX_MAP_ALIGNMENT : 0,
      // No flags2 bit helps a read-only store yet; the field still has to be answered when INIT_EXT is on.
      flags2: 0,
    };
  }

  /**
   * What a read-only, immutable store wants. Never: locks (the guest's local locks
   * suffice on a read-only file system), WRITEBACK_CACHE, ATOMIC_O_TRUNC, KILLPRIV,
   * POSIX_ACL, SPLICE_*, AUTO_INVAL_DATA (nothing changes, so no GETATTR before reads).
   */
  #wantedFlags(hasExt: boolean): number {
    let f =
      InitFlag.ASYNC_READ |
      InitFlag.EXPORT_SUPPORT |
      InitFlag.BIG_WRITES |
      InitFlag.DO_READDIRPLUS |
      InitFlag.READDIRPLUS_AUTO |
      InitFlag.PARALLEL_DIROPS |
      InitFlag.MAX_PAGES;
    if (this.#cache !== 'never') f |= InitFlag.CACHE_SYMLINKS;
    if (this.#opts.dax !== undefined) f |= InitFlag.MAP_ALIGNMENT;
    if (hasExt) f |= InitFlag.INIT_EXT;
    return f >>> 0;
  }

  #writeInitOut(out: ChainWriter, reply: InitOut): void {
    const buf = Buffer.alloc(InitOut.SIZE);
    InitOut.encode(reply, buf, 0);
    // A guest below 7.23 reads only the first 24 bytes of fuse_init_out.
    out.writeBytes(reply.minor < 23 ? buf.subarray(0, INIT_OUT_COMPAT_22_SIZE) : buf);
  }

  #destroy(): Outcome {
    this.#fs.destroy();
    this.#initialized = false;
    this.#minor = 0;
    this.#noOpen = false;
    return OK;
  }

  // ---- names and nodes ---------------------------------------------------------------

  #lookup(r: Request): Outcome {
    const name = readName(r.in);
    let entry: Entry;
    try {
      entry = this.#fs.lookup(r.ctx, r.header.nodeid, name);
    } catch (e) {
      if (errnoOf(e) !== Errno.ENOENT || this.#cache === 'never') throw e;
      // A negative entry (nodeid 0) that the guest may cache: PATH searches stop asking.
      r.out.write(EntryOut, { ...NO_ENTRY, entryValid: this.#timeout });
      return OK;
    }
    r.out.write(EntryOut, this.#entryOut(entry));
    return OK;
  }

  #entryOut(e: Entry): EntryOut {
    return { nodeid: e.nodeid, generation: e.generation, entryValid: this.#timeout, attrValid: this.#timeout, entryValidNsec: 0, attrValidNsec: 0, attr: e.attr };
  }

  #forget(r: Request): Outcome {
    const { nlookup } = r.in.read(ForgetIn);
    this.#fs.forget(r.header.nodeid, nlookup);
    return NO_REPLY;
  }

  /* The count is the guest's: it is trusted only as far as the request has bytes for it. */
  #batchForget(r: Request): Outcome {
    const { count } = r.in.read(BatchForgetIn);
    const present = Math.floor(r.in.remaining / ForgetOne.SIZE);
    if (count > present) this.#log.warn({ count, present }, 'BATCH_FORGET count exceeds the request; forgetting what is there');
    for (let i = 0; i < Math.min(count, present); i++) {
      const one = r.in.read(ForgetOne);
      this.#fs.forget(one.nodeid, one.nlookup);
    }
    return NO_REPLY;
  }

  #getattr(r: Request): Outcome {
    const g = r.in.readOptional(GetattrIn);
    const fh = g !== undefined && (g.getattrFlags & FUSE_GETATTR_FH) !== 0 ? g.fh : undefined;
    const attr = this.#fs.getattr(r.ctx, r.header.nodeid, fh);
    r.out.write(AttrOut, { attrValid: this.#timeout, attrValidNsec: 0, attr });
    return OK;
  }

  #readlink(r: Request): Outcome {
    r.out.writeBytes(this.#fs.readlink(r.ctx, r.header.nodeid));
    return OK;
  }

  #access(r: Request): Outcome {
    const { mask } = r.in.read(AccessIn);
    this.#fs.access(r.ctx, r.header.nodeid, mask);
    return OK;
  }

  #statfs(r: Request): Outcome {
    r.out.write(StatfsOut, this.#fs.statfs(r.ctx, r.header.nodeid));
    return OK;
  }

  // ---- files -------------------------------------------------------------------------

  /**
   * FOPEN_NOFLUSH on every file: a read-only file has no dirty data and we take
   * no POSIX locks, so the FLUSH a guest sends on each close() would be a round
   * trip that does nothing. The guest (5.16+) then skips it; older guests still
   * send FLUSH and get the no-op answer.
   */
  #fileOpenFlags(unchanged: boolean): number {
    const keep = this.#cache === 'always' || (this.#cache === 'auto' && unchanged);
    const cache = keep ? FopenFlag.KEEP_CACHE : this.#cache === 'never' ? FopenFlag.DIRECT_IO : 0;
    return cache | FopenFlag.NOFLUSH;
  }

  #dirOpenFlags(): number {
    return this.#cache === 'always' ? FopenFlag.KEEP_CACHE | FopenFlag.CACHE_DIR : 0;
  }

  #open(r: Request): Outcome {
    const { flags } = r.in.read(OpenIn);
    // The guest then opens files itself, also for writing: a read-only OPEN is the one to answer so.
    if (this.#noOpen && !opensForWrite(flags)) return Errno.ENOSYS;
    const { fh, unchanged } = this.#fs.open(r.ctx, r.header.nodeid, flags);
    r.out.write(OpenOut, { fh, openFlags: this.#fileOpenFlags(unchanged) });
    return OK;
  }

  /*
   * The data goes from the host file straight into the guest's buffers: no staging
   * copy. A large READ with other requests behind it goes to a thread, so several
   * are copied at once (a guest's readahead, many vCPUs) while this one serves the rest.
   */
  #read(r: Request): Outcome {
    const rd = r.in.read(ReadIn);
    if (!Number.isFinite(rd.offset)) return Errno.EINVAL;
    const size = Math.min(rd.size, r.out.available);
    const dst = r.out.views(size);
    if (r.complete !== undefined && size >= this.#offloadReadMin) {
      const readAsync = this.#fs.readAsync as NonNullable<FileSystem['readAsync']>;
      this.#offloadedReads++;
      readAsync.call(this.#fs, r.ctx, r.header.nodeid, rd.fh, rd.offset, dst, (err, n) =>
        this.#finish(r, () => {
          if (err !== null) throw err;
          r.out.advance(n);
          return OK;
        }),
      );
      return LATER;
    }
    r.out.advance(this.#fs.read(r.ctx, r.header.nodeid, rd.fh, rd.offset, dst));
    return OK;
  }

  #flush(r: Request): Outcome {
    const { fh } = r.in.read(FlushIn);
    // A file opened without OPEN has no FOPEN_NOFLUSH, so the guest would send FLUSH on every close: ENOSYS stops that.
    if (this.#noOpen) return Errno.ENOSYS;
    this.#fs.flush(r.ctx, r.header.nodeid, fh);
    return OK;
  }

  #release(r: Request): Outcome {
    const { fh } = r.in.read(ReleaseIn);
    this.#fs.release(r.ctx, r.header.nodeid, fh);
    return OK;
  }

  #lseek(r: Request): Outcome {
    const l = r.in.read(LseekIn);
    if (!Number.isFinite(l.offset)) return Errno.EINVAL;
    r.out.write(LseekOut, { offset: this.#fs.lseek(r.ctx, r.header.nodeid, l.fh, l.offset, l.whence) });
    return OK;
  }

  // ---- directories ---------------------------------------------------------------------

  #opendir(r: Request): Outcome {
    const { flags } = r.in.read(OpenIn);
    if (this.#opts.zeroMessageOpendir === true) return Errno.ENOSYS;
    const fh = this.#fs.opendir(r.ctx, r.header.nodeid, flags);
    r.out.write(OpenOut, { fh, openFlags: this.#dirOpenFlags() });
    return OK;
  }

  #releasedir(r: Request): Outcome {
    const { fh } = r.in.read(ReleaseIn);
    this.#fs.releasedir(r.ctx, r.header.nodeid, fh);
    return OK;
  }

  /* Exactly the entries that fit in min(size, room): the guest continues from the last `off`. */
  #readdir(r: Request): Outcome {
    const rd = r.in.read(ReadIn);
    const limit = Math.min(rd.size, r.out.available);
    const out = r.out;
    this.#fs.readdir(r.ctx, r.header.nodeid, rd.fh, rd.offset, (d) => {
      if (out.bytesWritten + direntSize(d.name.length) > limit) return false;
      this.#writeDirent(out, d);
      return true;
    });
    return OK;
  }

  #writeDirent(out: ChainWriter, d: DirEntry): void {
    out.write(Dirent, { ino: d.ino, off: d.off, namelen: d.name.length, type: d.type });
    out.writeBytes(d.name);
    out.writeZeros(direntSize(d.name.length) - Dirent.SIZE - d.name.length);
  }

  /*
   * READDIRPLUS looks every entry up (one lookup count each) except "." and "..",
   * which go out with nodeid 0 so the guest neither counts nor caches them. The
   * size check comes before the lookup, so an entry that does not fit is never
   * looked up; should writing still fail, the lookup is given back. An entry whose
   * lookup fails with an errno (a path that vanished) also goes out with nodeid 0:
   * the listing stays readable and a later LOOKUP reports the error. A bug in the
   * FileSystem ends the reply: an error reply while nothing is written, else a short
   * reply (the entries already looked up must reach the guest, or their counts
   * would be lost); the next READDIRPLUS retries from there.
   */
  #readdirplus(r: Request): Outcome {
    const rd = r.in.read(ReadIn);
    const limit = Math.min(rd.size, r.out.available);
    const out = r.out;
    let failure: unknown;
    this.#fs.readdir(r.ctx, r.header.nodeid, rd.fh, rd.offset, (d) => {
      if (out.bytesWritten + direntplusSize(d.name.length) > limit) return false;
      if (isDotOrDotDot(d.name)) {
        this.#writeDirentplus(out, d, NO_ENTRY);
        return true;
      }
      let entry: Entry;
      try {
        entry = this.#fs.lookupEntry(r.ctx, r.header.nodeid, d);
      } catch (e) {
        if (errnoOf(e) === undefined) {
          failure = e;
          return false;
        }
        this.#writeDirentplus(out, d, NO_ENTRY);
        return true;
      }
      try {
        this.#writeDirentplus(out, { ...d, ino: entry.attr.ino }, this.#entryOut(entry));
      } catch (e) {
        this.#fs.forget(entry.nodeid, 1);
        throw e;
      }
      return true;
    });
    if (failure !== undefined && out.bytesWritten === 0) throw failure;
    return OK;
  }

  #writeDirentplus(out: ChainWriter, d: DirEntry, e: EntryOut): void {
    out.write(EntryOut, e);
    out.write(Dirent, { ino: d.ino, off: d.off, namelen: d.name.length, type: d.type });
    out.writeBytes(d.name);
    out.writeZeros(direntplusSize(d.name.length) - EntryOut.SIZE - Dirent.SIZE - d.name.length);
  }

  // ---- extended attributes ------------------------------------------------------------

  /* size 0 asks for the value's length; a value longer than size is ERANGE. */
  #getxattr(r: Request): Outcome {
    const { size } = r.in.read(GetxattrIn);
    const rest = r.in.readRest();
    const end = rest.indexOf(0);
    if (end <= 0) throw new FuseDecodeError('xattr name without NUL or empty');
    return this.#xattrReply(r.out, size, this.#fs.getxattr(r.ctx, r.header.nodeid, rest.subarray(0, end)));
  }

  #listxattr(r: Request): Outcome {
    const { size } = r.in.read(GetxattrIn);
    const names = this.#fs.listxattr(r.ctx, r.header.nodeid);
    const list = Buffer.concat(names.flatMap((n) => [n, Buffer.of(0)]));
    return this.#xattrReply(r.out, size, list);
  }

  #xattrReply(out: ChainWriter, size: number, value: Buffer): Outcome {
    if (size === 0) {
      out.write(GetxattrOut, { size: value.length });
      return OK;
    }
    if (value.length > size) return Errno.ERANGE;
    out.writeBytes(value);
    return OK;
  }

  #syncfs(r: Request): Outcome {
    r.in.readOptional(SyncfsIn);
    this.#fs.syncfs(r.ctx, r.header.nodeid);
    return OK;
  }

  // ---- DAX ----------------------------------------------------------------------------

  #setupMapping(r: Request): Outcome {
    const dax = this.#opts.dax;
    if (dax === undefined) return Errno.ENOSYS;
    const m = r.in.read(SetupMappingIn);
    return daxErrno(dax.setupMapping(r.header.nodeid, m.fh, m.foffset, m.len, m.moffset, m.flags));
  }

  /* count comes from the guest: it must match the bytes that follow. */
  #removeMapping(r: Request): Outcome {
    const dax = this.#opts.dax;
    if (dax === undefined) return Errno.ENOSYS;
    const { count } = r.in.read(RemoveMappingIn);
    if (count * RemoveMappingOne.SIZE > r.in.remaining) throw new FuseDecodeError('REMOVEMAPPING count exceeds the request');
    for (let i = 0; i < count; i++) {
      const one = r.in.read(RemoveMappingOne);
      const err = daxErrno(dax.removeMapping(one.moffset, one.len));
      if (err !== 0) return err;
    }
    return OK;
  }
}
