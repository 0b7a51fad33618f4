/**
 * What the FUSE server asks of a file system. The server decodes requests and
 * encodes replies; a FileSystem only answers questions about nodes and handles,
 * and never sees FUSE structs or buffers other than the READ destination.
 *
 * Errors: throw FsError(errno) (or let a host syscall error with `errno` escape);
 * the server turns either into an error reply. Anything else is a bug: it is
 * logged and answered with EIO.
 *
 * Every operation defaults to ENOSYS, so a new file system implements only what
 * it serves and the kernel learns the rest is unsupported. Mutating operations
 * all arrive at `mutate()`, so a read-only file system answers EROFS in one place.
 *
 * ## Lookup count
 * The kernel keeps a per-node count of how many times the file system handed it
 * that node: every Entry returned by `lookup()` (including lookups made on the
 * server's behalf for READDIRPLUS, and lookups of "." and "..") counts 1. FORGET
 * and BATCH_FORGET give counts back through `forget()`; when a node's count
 * reaches 0 the kernel no longer knows it and the file system may free it. The
 * root (nodeid 1) is never forgotten. A nodeid:generation pair must not name two
 * different objects over the file system's lifetime. DESTROY (or a new INIT)
 * implicitly forgets everything.
 */
import type { Attr, KStatfs } from './abi';
import { Errno, FsError } from './errno';

export type { Attr, KStatfs };

/** Who asks: fuse_in_header's uid/gid/pid. */
export interface RequestContext {
  uid: number;
  gid: number;
  pid: number;
}

export interface Entry {
  nodeid: number;
  generation: number;
  attr: Attr;
}

export interface DirEntry {
  name: Buffer;
  ino: number;
  /** DT_* */
  type: number;
  /** Cookie of the entry after this one: the offset a later READDIR passes to continue. */
  off: number;
}

/** Called once per entry from the requested offset on; returns false to stop (the reply is full). */
export type DirEntrySink = (entry: DirEntry) => boolean;

/** How readAsync() reports: bytes read (fewer than asked at EOF), or the error. */
export type ReadDone = (err: Error | null, bytes: number) => void;

/** Opcodes that would change the file system; they all go to FileSystem.mutate(). */
export const MUTATING_OPS = [
  'SETATTR',
  'MKNOD',
  'MKDIR',
  'UNLINK',
  'RMDIR',
  'RENAME',
  'RENAME2',
  'LINK',
  'SYMLINK',
  'CREATE',
  'WRITE',
  'FSYNC',
  'FSYNCDIR',
  'SETXATTR',
  'REMOVEXATTR',
  'FALLOCATE',
  'COPY_FILE_RANGE',
  'COPY_FILE_RANGE_64',
  'TMPFILE',
] as const;
export type MutatingOp = (typeof MUTATING_OPS)[number];

/** Flags of open(2) that ask for write access or a change: EROFS on a read-only file system. */
const O_WRONLY = 0o1;
const O_RDWR = 0o2;
const O_ACCMODE = 0o3;
const O_TRUNC = 0o1000;
const O_APPEND = 0o2000;

/** True when open(2) flags (as the guest sends them, Linux values) would need write access. */
export function opensForWrite(flags: number): boolean {
  const acc = flags & O_ACCMODE;
  return acc === O_WRONLY || acc === O_RDWR || (flags & (O_TRUNC | O_APPEND)) !== 0;
}

/** What OPEN of a file gives back. */
export interface Opened {
  fh: number;
  /**
   * The file's size and mtime are still the ones the guest was given for this
   * nodeid, so pages the guest cached from an earlier open are still the file's.
   * Under cache=auto this decides whether the guest may keep them (see CacheMode).
   */
  unchanged: boolean;
}

function enosys(): never {
  throw new FsError(Errno.ENOSYS);
}

/* eslint-disable @typescript-eslint/no-unused-vars */

export abstract class FileSystem {
  /** INIT arrived: a new session with an empty node table on the kernel side. */
  init(): void {}

  /** DESTROY arrived (or the connection went away): forget every node, close every handle. */
  destroy(): void {}

  /** Resolves `name` (no NUL, no '/', may be "." or "..") in directory `parent`. Counts one lookup. */
  lookup(ctx: RequestContext, parent: number, name: Buffer): Entry {
    enosys();
  }

  /**
   * lookup() of an entry readdir() just handed out for `parent` (READDIRPLUS). The
   * default looks its name up; an implementation may use what it recorded in the
   * listing to skip work. Counts one lookup, like lookup().
   */
  lookupEntry(ctx: RequestContext, parent: number, entry: DirEntry): Entry {
    return this.lookup(ctx, parent, entry.name);
  }

  /** Gives back `nlookup` lookups of `nodeid`. Never replies, so it never throws for bad input. */
  forget(nodeid: number, nlookup: number): void {}

  /** fh is defined when the kernel passed one (FUSE_GETATTR_FH). */
  getattr(ctx: RequestContext, nodeid: number, fh: number | undefined): Attr {
    enosys();
  }

  /** The target bytes, verbatim. */
  readlink(ctx: RequestContext, nodeid: number): Buffer {
    enosys();
  }

  /** Returns a new fh. flags are the guest's open(2) flags. */
  open(ctx: RequestContext, nodeid: number, flags: number): Opened {
    enosys();
  }

  /**
   * Reads up to the total length of `dst` at `offset` straight into dst (views of
   * guest memory) and returns the byte count; fewer bytes than asked means EOF.
   * fh 0 names no handle: the guest opened the file without an OPEN (the server
   * answered OPEN with ENOSYS, see zeroMessageOpen), so the file is nodeid's.
   */
  read(ctx: RequestContext, nodeid: number, fh: number, offset: number, dst: readonly Buffer[]): number {
    enosys();
  }

  /**
   * Optional: read() off the calling thread. Starts the read into dst and returns;
   * `done` runs later from the event loop with the byte count or the error (an
   * FsError or a host errno error), exactly once. dst stays valid until then. A
   * synchronous throw (a bad fh) is the request's error, as from read(). The
   * server uses it for large READs when other requests wait behind them.
   */
  readAsync?(ctx: RequestContext, nodeid: number, fh: number, offset: number, dst: readonly Buffer[], done: ReadDone): void;

  flush(ctx: RequestContext, nodeid: number, fh: number): void {
    enosys();
  }

  release(ctx: RequestContext, nodeid: number, fh: number): void {
    enosys();
  }

  opendir(ctx: RequestContext, nodeid: number, flags: number): number {
    enosys();
  }

  /**
   * Feeds entries from cookie `offset` (0 = the start) to `add` until it returns
   * false or the directory ends. fh is 0 when the kernel skipped OPENDIR.
   */
  readdir(ctx: RequestContext, nodeid: number, fh: number, offset: number, add: DirEntrySink): void {
    enosys();
  }

  releasedir(ctx: RequestContext, nodeid: number, fh: number): void {
    enosys();
  }

  statfs(ctx: RequestContext, nodeid: number): KStatfs {
    enosys();
  }

  /** mask: R_OK 4, W_OK 2, X_OK 1, F_OK 0. Returns normally when allowed. */
  access(ctx: RequestContext, nodeid: number, mask: number): void {
    enosys();
  }

  /** SEEK_DATA / SEEK_HOLE (the kernel answers SEEK_SET/CUR/END itself). */
  lseek(ctx: RequestContext, nodeid: number, fh: number, offset: number, whence: number): number {
    enosys();
  }

  /** The value of attribute `name`; the server handles the size-probe protocol. */
  getxattr(ctx: RequestContext, nodeid: number, name: Buffer): Buffer {
    enosys();
  }

  /** Attribute names (without NULs; the server joins them). */
  listxattr(ctx: RequestContext, nodeid: number): Buffer[] {
    enosys();
  }

  syncfs(ctx: RequestContext, nodeid: number): void {
    enosys();
  }

  /** Every request that would change the file system. */
  mutate(ctx: RequestContext, op: MutatingOp, nodeid: number): never {
    enosys();
  }
}
/* eslint-enable @typescript-eslint/no-unused-vars */
