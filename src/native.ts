/**
 * Typed facade over the native addon: the only module that loads it. Defaults,
 * EAGAIN-to-value mapping and typing live here; the addon only makes syscalls.
 * Failures throw Error objects with `code` ('ELOOP'), `errno` and `syscall`.
 */
import { ftruncateSync } from 'node:fs';
import * as path from 'node:path';
import * as util from 'node:util';
import { isErrnoError, type ErrnoError } from './errors';

interface Addon {
  close(fd: number): void;
  socketListen(path: string | Buffer, backlog: number): number;
  socketAccept(fd: number): number;
  socketConnect(path: string | Buffer): number;
  socketpair(): [number, number];
  recvmsg(fd: number, buf: Buffer, offset: number, length: number): Received;
  sendmsg(fd: number, buf: Buffer, offset: number, length: number, fds?: readonly number[]): number;
  setNonBlocking(fd: number, on: boolean): void;
  pollIn(fd: number, timeoutMs: number): boolean;
  dup(fd: number): number;
  getgrnam(name: string): number;
  memfdCreate(name: string): number;
  mmap(fd: number, length: number | bigint, offset: number | bigint, shared: boolean, writable: boolean): ArrayBuffer;
  mmapReserve(length: number | bigint): ArrayBuffer;
  mmapFixed(buf: ArrayBuffer, offset: number, length: number, fd: number, fdOffset: number): void;
  munmap(buf: ArrayBuffer): void;
  fence(): void;
  eventfd(initval: number): number;
  eventfdRead(fd: number): bigint;
  eventfdWrite(fd: number, value: number | bigint): void;
  Watcher: new (fd: number, cb: (status: number, events: number) => void) => AddonWatcher;
  openat(dirfd: number, path: string | Buffer, flags: number): number;
  openat2(dirfd: number, path: string | Buffer, flags: number, resolve: number): number;
  /** 0, or the errno of the failed call. */
  statx(dirfd: number, path: string | Buffer, flags: number, mask: number, out: Float64Array): number;
  readlinkat(dirfd: number, path: string | Buffer): Buffer;
  getdents64(fd: number, scratch: Buffer): RawDirent[];
  fstatfs(fd: number): StatFs;
  lseek(fd: number, offset: number, whence: number): number;
  STATX_FIELDS: string[];
  MAX_FDS_PER_MESSAGE: number;
  PAGE_SIZE: number;
  constants: Record<string, number>;
}

interface AddonWatcher {
  start(): void;
  stop(): void;
  close(): void;
}

function load(): Addon {
  const root = path.resolve(__dirname, __dirname.includes(`${path.sep}dist${path.sep}`) ? '../..' : '..');
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return require(path.join(root, 'build', 'Release', 'closurefs_native.node')) as Addon;
}

const addon = load();

/*
 * V8 compiles typed-array reads on the assumption that no ArrayBuffer has ever
 * been detached, and when the first one is, it throws away every optimised
 * function that reads one (a protector cell). munmap() detaches, and a session
 * first unmaps when the VMM changes its memory map during the guest's boot: so
 * the whole request path was compiled twice, mid-boot (about 65 functions in a
 * quick guest benchmark boot). Detaching a throwaway buffer now, before any of
 * it is compiled, makes V8 compile it once, with the detach checks it will
 * need anyway.
 */
{
  const throwaway = new ArrayBuffer(8);
  structuredClone(throwaway, { transfer: [throwaway] });
}

/** Flags and values from the C headers (O_*, AT_*, RESOLVE_*, SEEK_*, DT_*, S_IF*). */
export const constants = addon.constants as Readonly<{
  O_RDONLY: number; O_WRONLY: number; O_RDWR: number; O_ACCMODE: number; O_PATH: number; O_NOFOLLOW: number;
  O_CLOEXEC: number; O_DIRECTORY: number; O_NONBLOCK: number; O_NOATIME: number; O_CREAT: number; O_EXCL: number;
  O_TRUNC: number; O_APPEND: number; O_NOCTTY: number; O_LARGEFILE: number;
  AT_FDCWD: number; AT_SYMLINK_NOFOLLOW: number; AT_EMPTY_PATH: number; AT_STATX_SYNC_AS_STAT: number;
  AT_NO_AUTOMOUNT: number; STATX_BASIC_STATS: number; STATX_ALL: number;
  RESOLVE_BENEATH: number; RESOLVE_NO_SYMLINKS: number; RESOLVE_NO_MAGICLINKS: number; RESOLVE_NO_XDEV: number;
  RESOLVE_IN_ROOT: number;
  SEEK_SET: number; SEEK_CUR: number; SEEK_END: number; SEEK_DATA: number; SEEK_HOLE: number;
  DT_UNKNOWN: number; DT_FIFO: number; DT_CHR: number; DT_DIR: number; DT_BLK: number; DT_REG: number;
  DT_LNK: number; DT_SOCK: number;
  S_IFMT: number; S_IFREG: number; S_IFDIR: number; S_IFLNK: number; S_IFCHR: number; S_IFBLK: number;
  S_IFIFO: number; S_IFSOCK: number;
}>;

export const PAGE_SIZE: number = addon.PAGE_SIZE;
/** The kernel's limit on fds in one SCM_RIGHTS message. */
export const MAX_FDS_PER_MESSAGE: number = addon.MAX_FDS_PER_MESSAGE;

export function close(fd: number): void {
  addon.close(fd);
}

/** Closes fd and ignores errors: for cleanup paths where the fd may already be gone. */
export function closeQuietly(fd: number | null | undefined): void {
  if (fd === null || fd === undefined || fd < 0) return;
  try {
    addon.close(fd);
  } catch {
    /* already closed */
  }
}

function nullOnEagain<T>(f: () => T): T | null {
  try {
    return f();
  } catch (e) {
    if (isErrnoError(e, 'EAGAIN')) return null;
    throw e;
  }
}

// ---- UNIX sockets --------------------------------------------------------------

/** A non-blocking, close-on-exec listening socket bound to `path`. */
export function listenUnix(path: string, backlog = 16): number {
  return addon.socketListen(path, backlog);
}

/** Accepts one connection (non-blocking, close-on-exec) or returns null if none is pending. */
export function acceptUnix(fd: number): number | null {
  return nullOnEagain(() => addon.socketAccept(fd));
}

/** A blocking connected socket. */
export function connectUnix(path: string): number {
  return addon.socketConnect(path);
}

/** A connected pair of blocking stream sockets. */
export function socketpair(): [number, number] {
  return addon.socketpair();
}

export interface Received {
  /** Bytes received; 0 means the peer closed the stream. */
  bytes: number;
  /** fds that arrived with these bytes (close-on-exec); the caller owns them. */
  fds: number[];
  /** MSG_CTRUNC: more fds were sent than could be received; the excess were closed. */
  truncated: boolean;
}

/** One recvmsg(2) into buf[offset, offset+length). Null when nothing is ready (EAGAIN). */
export function recvmsg(fd: number, buf: Buffer, offset = 0, length = buf.length - offset): Received | null {
  return nullOnEagain(() => addon.recvmsg(fd, buf, offset, length));
}

/** One sendmsg(2) of buf[offset, offset+length) with fds attached. Null on EAGAIN. */
export function sendmsg(fd: number, buf: Buffer, fds: readonly number[] = [], offset = 0, length = buf.length - offset): number | null {
  return nullOnEagain(() => addon.sendmsg(fd, buf, offset, length, fds));
}

export function setNonBlocking(fd: number, on: boolean): void {
  addon.setNonBlocking(fd, on);
}

/** Waits up to timeoutMs (-1: forever) for fd to become readable; true if it did. */
export function pollIn(fd: number, timeoutMs: number): boolean {
  return addon.pollIn(fd, timeoutMs);
}

/** A new close-on-exec fd for the same open file. */
export function dup(fd: number): number {
  return addon.dup(fd);
}

/** The gid of a group name, or null if there is no such group. */
export function groupId(name: string): number | null {
  const gid = addon.getgrnam(name);
  return gid < 0 ? null : gid;
}

// ---- memory --------------------------------------------------------------------

/** A memfd of `size` bytes (zero-filled). */
export function memfdCreate(name: string, size = 0): number {
  const fd = addon.memfdCreate(name);
  if (size > 0) {
    try {
      ftruncateSync(fd, size);
    } catch (e) {
      closeQuietly(fd);
      throw e;
    }
  }
  return fd;
}

export interface MapOptions {
  shared?: boolean;
  writable?: boolean;
}

/**
 * Maps `length` bytes of fd at `offset` as an ArrayBuffer. A regular file or memfd
 * must cover the whole range (ENXIO otherwise), zero length is EINVAL.
 */
export function mmap(fd: number, length: number | bigint, offset: number | bigint = 0, opts: MapOptions = {}): ArrayBuffer {
  return addon.mmap(fd, length, offset, opts.shared ?? true, opts.writable ?? false);
}

/** Reserves inaccessible address space to be filled with mmapFixed (a DAX window). */
export function mmapReserve(length: number | bigint): ArrayBuffer {
  return addon.mmapReserve(length);
}

/** Maps fd read-only over part of a mapping made here; fd -1 makes that part inaccessible again. */
export function mmapFixed(buf: ArrayBuffer, offset: number, length: number, fd: number, fdOffset = 0): void {
  addon.mmapFixed(buf, offset, length, fd, fdOffset);
}

/** Detaches buf (every view reads as length 0 from now on), then unmaps it. */
export function munmap(buf: ArrayBuffer): void {
  addon.munmap(buf);
}

/** Full memory fence (store-load barrier). */
export function fence(): void {
  addon.fence();
}

// ---- eventfd and readiness -----------------------------------------------------

export function eventfd(initval = 0): number {
  return addon.eventfd(initval);
}

/** Reads and resets the counter; 0n when it was already zero. */
export function eventfdRead(fd: number): bigint {
  return addon.eventfdRead(fd);
}

export function eventfdWrite(fd: number, value: number | bigint = 1): void {
  addon.eventfdWrite(fd, value);
}

/**
 * Calls onReadable on the event loop whenever fd is readable (level-triggered:
 * the callback must consume what made it readable). A started watcher keeps the
 * process alive; stop() or close() lets it exit.
 */
export class FdWatcher {
  readonly #watcher: AddonWatcher;
  #closed = false;

  constructor(readonly fd: number, onReadable: (status: number) => void) {
    this.#watcher = new addon.Watcher(fd, (status) => onReadable(status));
  }

  start(): this {
    this.#watcher.start();
    return this;
  }

  stop(): void {
    if (!this.#closed) this.#watcher.stop();
  }

  /** Stops and releases the watcher; the fd itself stays open. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#watcher.close();
  }
}

// ---- files ---------------------------------------------------------------------

export function openat(dirfd: number, path: string | Buffer, flags: number): number {
  return addon.openat(dirfd, path, flags);
}

export function openat2(dirfd: number, path: string | Buffer, flags: number, resolve: number): number {
  return addon.openat2(dirfd, path, flags, resolve);
}

/** statx(2) result. Inode numbers arrive as 32-bit halves (a double cannot hold 64 bits). */
export interface Statx {
  mask: number;
  mode: number;
  nlink: number;
  uid: number;
  gid: number;
  inoHi: number;
  inoLo: number;
  size: number;
  blocks: number;
  blksize: number;
  atimeSec: number;
  atimeNsec: number;
  mtimeSec: number;
  mtimeNsec: number;
  ctimeSec: number;
  ctimeNsec: number;
  rdevMajor: number;
  rdevMinor: number;
  devMajor: number;
  devMinor: number;
}

/** Field order of the Float64Array the addon fills (checked against the addon at load). */
const STATX_LAYOUT: readonly (keyof Statx)[] = [
  'mask', 'mode', 'nlink', 'uid', 'gid', 'inoHi', 'inoLo', 'size', 'blocks', 'blksize',
  'atimeSec', 'atimeNsec', 'mtimeSec', 'mtimeNsec', 'ctimeSec', 'ctimeNsec',
  'rdevMajor', 'rdevMinor', 'devMajor', 'devMinor',
];
if (addon.STATX_FIELDS.join() !== STATX_LAYOUT.join()) throw new Error('native addon and src/native.ts disagree on the statx layout');
const statxScratch = new Float64Array(STATX_LAYOUT.length);

/** The 64-bit inode number of a Statx as a BigInt. */
export function statxIno(st: Statx): bigint {
  return (BigInt(st.inoHi) << 32n) | BigInt(st.inoLo);
}

/**
 * statx(2). Default flags: AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH, so statx(fd, '')
 * describes fd itself and a symlink describes the link, never its target.
 * Throws an errno error (code, errno, syscall) when the call fails.
 */
export function statx(
  dirfd: number,
  path: string | Buffer,
  flags = constants.AT_SYMLINK_NOFOLLOW | constants.AT_EMPTY_PATH,
  mask = constants.STATX_BASIC_STATS,
): Statx {
  const st = statxOrErrno(dirfd, path, flags, mask);
  if (typeof st === 'number') throw errnoError(st, 'statx');
  return st;
}

/**
 * statx(2) for paths where failure is an expected answer (a guest looking up a
 * name that is not there): the errno comes back as a number, no error is made.
 */
export function statxOrErrno(
  dirfd: number,
  path: string | Buffer,
  flags = constants.AT_SYMLINK_NOFOLLOW | constants.AT_EMPTY_PATH,
  mask = constants.STATX_BASIC_STATS,
): Statx | number {
  const err = addon.statx(dirfd, path, flags, mask, statxScratch);
  if (err !== 0) return err;
  const f = statxScratch;
  // One object literal: a fixed shape V8 optimises (a loop over keys is several times slower).
  return {
    mask: f[0], mode: f[1], nlink: f[2], uid: f[3], gid: f[4], inoHi: f[5], inoLo: f[6], size: f[7], blocks: f[8],
    blksize: f[9], atimeSec: f[10], atimeNsec: f[11], mtimeSec: f[12], mtimeNsec: f[13], ctimeSec: f[14],
    ctimeNsec: f[15], rdevMajor: f[16], rdevMinor: f[17], devMajor: f[18], devMinor: f[19],
  };
}

/** An error shaped like the addon's own (and Node's): `syscall: message`, code, errno, syscall. */
function errnoError(errno: number, syscall: string): ErrnoError {
  const [code, message] = util.getSystemErrorMap().get(-errno) ?? ['EUNKNOWN', `errno ${errno}`];
  return Object.assign(new Error(`${syscall}: ${message}`), { code, errno, syscall });
}

/** readlinkat(2): the target bytes verbatim. */
export function readlinkat(dirfd: number, path: string | Buffer): Buffer {
  return addon.readlinkat(dirfd, path);
}

export interface RawDirent {
  name: Buffer;
  ino: bigint;
  /** DT_* */
  type: number;
  /** Cookie for lseek(fd, off, SEEK_SET) to continue after this entry. */
  off: bigint;
}

/** getdents64's buffer, shared (the calls are synchronous): no 64 KiB allocation per directory listed. */
const direntScratch = Buffer.allocUnsafe(64 * 1024);

/** One getdents64(2) call; [] at the end of the directory. */
export function getdents64(fd: number, scratch: Buffer = direntScratch): RawDirent[] {
  return addon.getdents64(fd, scratch);
}

/** Every entry of an open directory fd, '.' and '..' included, in kernel order. */
export function readDirectory(fd: number): RawDirent[] {
  const scratch = direntScratch;
  const all: RawDirent[] = [];
  for (;;) {
    const batch = addon.getdents64(fd, scratch);
    if (batch.length === 0) return all;
    for (const d of batch) all.push(d);
  }
}

export interface StatFs {
  type: number;
  bsize: number;
  blocks: number;
  bfree: number;
  bavail: number;
  files: number;
  ffree: number;
  namelen: number;
  frsize: number;
  flags: number;
}

export function fstatfs(fd: number): StatFs {
  return addon.fstatfs(fd);
}

export function lseek(fd: number, offset: number, whence: number): number {
  return addon.lseek(fd, offset, whence);
}
