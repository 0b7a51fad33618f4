/**
 * The closure view: a read-only FileSystem whose root lists exactly the closure's
 * store paths and whose subtrees are the host's store paths as they are.
 *
 * Containment: every host access is either a single-component *at() call relative
 * to a directory fd of ours, or an openat2() from the store directory fd with
 * RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS and O_NOFOLLOW, so no host symlink is ever
 * followed and nothing outside the store directory is reachable. Which store paths
 * are reachable is decided at the root: only closure basenames resolve there.
 *
 * Leaks: the guest sees the view's own inode numbers, uid/gid 0, canonical modes,
 * nlink 1 for files and symlinks, mtime for all three times, blocks from size,
 * and a statfs describing the closure. Directories report the host's nlink: a
 * directory cannot be hard-linked, so its count (2 + subdirectories on ext4, 1 on
 * btrfs) only describes its own store path.
 *
 * Resources: nodes hold where they were found (directory and name), not fds. Held
 * fds are the store directory, a small LRU of directory O_PATH fds, and one fd per
 * open file handle (capped).
 */
import { Buffer } from 'node:buffer';
import { readv, readvSync } from 'node:fs';
import type { Attr, KStatfs } from '../fuse/abi';
import { Errno, FsError } from '../fuse/errno';
import { FileSystem, opensForWrite, type ReadDone, type DirEntry, type DirEntrySink, type Entry, type MutatingOp, type Opened, type RequestContext } from '../fuse/filesystem';
import type { FuseLogger } from '../fuse/server';
import { isErrnoError } from '../errors';
import * as native from '../native';
import { HandleTable, Lru } from './handles';
import { NameCache } from './names';
import { Listing, type ListedEntry, type NamedEntry } from './listing';
import { identityFromParts, identityOf, kindOfNode, NodeTable, relPathOf, ROOT_NODEID, type Identity, type Node, type NodeKind } from './nodes';

const c = native.constants;

export interface ClosureViewOptions {
  /** Host directory holding the store paths (a chroot store's `<root>/nix/store`). */
  storeDir: string;
  /** The closure: store path basenames (`<hash>-<name>`), validated by the caller (see closure-input). */
  paths: readonly string[];
  /** Open file and directory handles at once; beyond it OPEN/OPENDIR get EMFILE. Default 1024. */
  maxHandles?: number;
  /** Directory O_PATH fds kept open to speed up lookups. Default 32. */
  dirFdCacheSize?: number;
  /** Files kept open for READs that name no handle (fh 0: the guest opened without OPEN). Default 32. */
  nodeFileCacheSize?: number;
  /** Directory listings kept for READDIR without a handle (zero-message opendir). Default 16. */
  listingCacheSize?: number;
  /** (directory, name) -> file identity answers kept, so a repeated LOOKUP skips its statx. Default 4096. */
  nameCacheSize?: number;
  logger?: Pick<FuseLogger, 'warn'>;
}

interface FileHandle {
  kind: 'file';
  nodeid: number;
  fd: number;
  /** readAsync() calls still running on this fd: it stays open until they end. */
  reading: number;
  /** Released (or destroyed) while reads were running: closed by the last of them. */
  released: boolean;
}
interface DirHandle {
  kind: 'dir';
  nodeid: number;
  /** The listing as it was at OPENDIR (shared, immutable). */
  listing: Listing;
}
type Handle = FileHandle | DirHandle;

export interface ClosureStats {
  /** Distinct host files, directories and symlinks in the closure, plus the root. */
  files: number;
  /** 4 KiB blocks of regular files, each distinct file counted once. */
  blocks: number;
}

const RESOLVE = c.RESOLVE_BENEATH | c.RESOLVE_NO_SYMLINKS | c.RESOLVE_NO_MAGICLINKS;
const STATX_NOFOLLOW = c.AT_SYMLINK_NOFOLLOW | c.AT_EMPTY_PATH;
const DOT = Buffer.from('.');
const DOTDOT = Buffer.from('..');
const BLOCK = 4096;
const NAME_MAX = 255;
const W_OK = 2;
const X_OK = 1;
/** Canonical store metadata: the view's root looks like a freshly registered store directory. */
const STORE_MTIME = 1;

function kindOf(mode: number): NodeKind | undefined {
  switch (mode & c.S_IFMT) {
    case c.S_IFREG:
      return 'reg';
    case c.S_IFDIR:
      return 'dir';
    case c.S_IFLNK:
      return 'lnk';
    default:
      return undefined; // devices, fifos, sockets: not representable in a NAR, never shown
  }
}

const DT_OF: Record<NodeKind, number> = { reg: c.DT_REG, dir: c.DT_DIR, lnk: c.DT_LNK };

/**
 * A number as an int32 when it is one. Values read from statx's Float64Array are
 * doubles, and V8 boxes a double stored in an object field (16 bytes each); an
 * int32 is stored inline. Nodes keep their attributes for the daemon's life.
 */
function small(x: number): number {
  return x === (x | 0) ? x | 0 : x;
}

/** The per-file fields of a node (nodes.ts): nothing host-specific beyond size, executability and mtime. */
function fileFields(st: native.Statx, kind: NodeKind): Pick<Node, 'size' | 'mtime' | 'mtimeNsec' | 'mode' | 'nlink'> {
  const perm = kind === 'dir' ? 0o555 : kind === 'lnk' ? 0o777 : st.mode & 0o111 ? 0o555 : 0o444;
  return {
    size: small(st.size),
    mtime: small(st.mtimeSec),
    mtimeNsec: small(st.mtimeNsec),
    mode: TYPE_BITS[kind] | perm,
    // A hard link count above 1 would reveal links into paths outside the closure (nix-store --optimise).
    nlink: kind === 'dir' ? small(st.nlink) : 1,
  };
}

const TYPE_BITS: Record<NodeKind, number> = { reg: c.S_IFREG, dir: c.S_IFDIR, lnk: c.S_IFLNK };

/** Canonical attributes: root-owned, no host change or access times, blocks from the size. */
function attrOf(node: Node, nlink = node.nlink): Attr {
  return {
    ino: node.nodeid,
    size: node.size,
    blocks: Math.ceil(node.size / 512),
    atime: node.mtime,
    mtime: node.mtime,
    ctime: node.mtime,
    atimensec: node.mtimeNsec,
    mtimensec: node.mtimeNsec,
    ctimensec: node.mtimeNsec,
    mode: node.mode,
    nlink,
    uid: 0,
    gid: 0,
    rdev: 0,
    blksize: BLOCK,
    flags: 0,
  };
}

/** Byte for byte, without Buffer.equals' call into C++: asked on every LOOKUP. */
function isName(name: Buffer, what: Buffer): boolean {
  if (name.length !== what.length) return false;
  for (let i = 0; i < name.length; i++) if (name[i] !== what[i]) return false;
  return true;
}

/** The n bytes after the first `skip` of a list of buffers (after a short read). */
function dropFront(bufs: readonly Buffer[], skip: number): Buffer[] {
  const out: Buffer[] = [];
  for (const b of bufs) {
    if (skip >= b.length) {
      skip -= b.length;
      continue;
    }
    out.push(skip > 0 ? b.subarray(skip) : b);
    skip = 0;
  }
  return out;
}

export class ClosureView extends FileSystem {
  readonly storeDir: string;
  readonly #storeFd: number;
  readonly #closure: ReadonlySet<string>;
  readonly #sorted: readonly string[];
  readonly #nodes: NodeTable;
  readonly #handles: HandleTable<Handle>;
  readonly #dirFds: Lru<Identity, number>;
  /** Files read with fh 0, by nodeid: under zero-message open the guest never says when it is done with one. */
  readonly #nodeFiles: Lru<number, FileHandle>;
  readonly #listings: Lru<Identity, Listing>;
  /** What a name in a directory resolved to: only a hint, an inode number with no live node is looked up again. */
  readonly #names: NameCache;
  readonly #log: Pick<FuseLogger, 'warn'> | undefined;
  #rootAttr: Attr | undefined;
  #stats: ClosureStats | undefined;
  #closed = false;

  constructor(opts: ClosureViewOptions) {
    super();
    this.storeDir = opts.storeDir;
    this.#sorted = [...new Set(opts.paths)].sort();
    for (const p of this.#sorted) {
      if (p.length === 0 || p.length > NAME_MAX || p.includes('/') || p === '.' || p === '..') {
        throw new RangeError(`not a store path basename: ${JSON.stringify(p)}`);
      }
    }
    this.#closure = new Set(this.#sorted);
    this.#handles = new HandleTable(opts.maxHandles ?? 1024);
    this.#dirFds = new Lru(opts.dirFdCacheSize ?? 32, (fd) => native.closeQuietly(fd));
    this.#nodeFiles = new Lru(opts.nodeFileCacheSize ?? 32, (h) => this.#closeFile(h));
    this.#listings = new Lru(opts.listingCacheSize ?? 16, () => {});
    this.#names = new NameCache(opts.nameCacheSize ?? 4096);
    this.#log = opts.logger;
    const root: Node = {
      nodeid: ROOT_NODEID, nlookup: 0, parent: undefined, name: '', mode: c.S_IFDIR | 0o555, identity: '',
      size: BLOCK, mtime: STORE_MTIME, mtimeNsec: 0, nlink: 2,
    };
    this.#nodes = new NodeTable(root);
    this.#storeFd = native.openat(c.AT_FDCWD, opts.storeDir, c.O_PATH | c.O_DIRECTORY | c.O_CLOEXEC);
  }

  /** The closure's basenames, sorted: exactly what the root lists (when all are present). */
  get closure(): readonly string[] {
    return this.#sorted;
  }

  /** Counters for tests and metrics. */
  get counts(): { nodes: number; handles: number; inodeNumbers: number; dirFds: number; nodeFiles: number } {
    return {
      nodes: this.#nodes.size, handles: this.#handles.size, inodeNumbers: this.#nodes.inodeNumbers, dirFds: this.#dirFds.size,
      nodeFiles: this.#nodeFiles.size,
    };
  }

  /** Releases every fd; the view is unusable afterwards. */
  close(): void {
    if (this.#closed) return;
    this.destroy();
    this.#closed = true;
    native.closeQuietly(this.#storeFd);
  }

  // ---- session ------------------------------------------------------------------------

  override init(): void {}

  override destroy(): void {
    for (const h of this.#handles.values()) if (h.kind === 'file') this.#closeFile(h);
    this.#handles.clear();
    this.#nodeFiles.clear();
    this.#nodes.clear();
    this.#dirFds.clear();
  }

  // ---- nodes ----------------------------------------------------------------------------

  #node(nodeid: number): Node {
    const node = this.#nodes.get(nodeid);
    if (node === undefined) throw new FsError(Errno.ENOENT, `unknown nodeid ${nodeid}`);
    return node;
  }

  #entry(node: Node): Entry {
    return { nodeid: node.nodeid, generation: 0, attr: node.nodeid === ROOT_NODEID ? this.#rootAttrNow() : attrOf(node) };
  }

  override lookup(_ctx: RequestContext, parent: number, name: Buffer): Entry {
    const dir = this.#node(parent);
    const fixed = this.#resolveWithoutHost(dir, name);
    if (fixed !== undefined) return this.#entry(fixed);
    const known = this.#names.get(dir.nodeid, name);
    const cached = known === undefined ? undefined : this.#nodes.get(known);
    if (cached !== undefined) return this.#entry(this.#nodes.ref(cached));
    const latin1 = name.toString('latin1');
    const node = this.#statNode(dir, name, latin1);
    this.#names.set(dir.nodeid, name, latin1, node.nodeid);
    return this.#entry(node);
  }

  /**
   * What `name` in `dir` is without asking the host: '.' and '..' (counting a lookup),
   * ENOTDIR below a non-directory, ENOENT for a root name outside the closure ('.links',
   * .drv files, other outputs, other closures); undefined for a name to stat.
   */
  #resolveWithoutHost(dir: Node, name: Buffer): Node | undefined {
    if (kindOfNode(dir) !== 'dir') throw new FsError(Errno.ENOTDIR);
    if (isName(name, DOT)) return this.#nodes.ref(dir);
    if (isName(name, DOTDOT)) return this.#parentOf(dir);
    if (dir.nodeid === ROOT_NODEID && !this.#closure.has(name.toString('latin1'))) throw new FsError(Errno.ENOENT);
    return undefined;
  }

  /**
   * The node `name` in `dir` is on the host, counting one lookup. A failed statx is the
   * guest's answer (mostly ENOENT: a search along a path), so it comes back as an errno
   * and is thrown as an FsError, with no stack trace made on the way.
   */
  #statNode(dir: Node, name: Buffer, latin1: string): Node {
    const st = native.statxOrErrno(this.#dirFdOf(dir), name, c.AT_SYMLINK_NOFOLLOW);
    if (typeof st === 'number') throw new FsError(st);
    // A known node keeps the parent and name it was first found under (a hard-link twin).
    return this.#nodeFor(st, dir, latin1);
  }

  /** The node for a stat result (made on first sight), counting one lookup. */
  #nodeFor(st: native.Statx, parent: Node, name: string): Node {
    const kind = kindOf(st.mode);
    if (kind === undefined) throw new FsError(Errno.ENOENT);
    const identity = identityOf(st);
    return this.#nodes.lookupOrCreate(identity, (nodeid) => {
      const f = fileFields(st, kind);
      // Every field written out in one literal: one hidden class for all nodes (a spread would not be).
      return {
        nodeid, nlookup: 0, parent, name, mode: f.mode, identity,
        size: f.size, mtime: f.mtime, mtimeNsec: f.mtimeNsec, nlink: f.nlink,
      };
    });
  }

  /** ".." of a directory: the root for the root and for store paths, else the directory above. */
  #parentOf(dir: Node): Node {
    const up = dir.parent;
    if (up?.parent === undefined) return this.#nodes.ref(this.#nodes.root);
    // `up` may have been forgotten by the guest: found again by identity, or made anew where it was.
    const st = native.statx(this.#dirFdOf(up), '', STATX_NOFOLLOW);
    return this.#nodeFor(st, up.parent, up.name);
  }

  override forget(nodeid: number, nlookup: number): void {
    this.#nodes.forget(nodeid, nlookup);
    // A forgotten node's file would only be read again after a new LOOKUP, by then likely evicted anyway.
    if (this.#nodes.get(nodeid) === undefined) this.#nodeFiles.delete(nodeid);
  }

  /*
   * The listing's identity finds a known node without a statx. When it names no node
   * (a new file, or a file system whose d_ino or device differs from statx's), the
   * entry is looked up by name, but its answer stays out of the name cache: a walk
   * would put every entry there, each key old-space garbage once evicted, and the
   * guest now holds the dentry READDIRPLUS gave it, so it seldom asks the name soon.
   */
  override lookupEntry(_ctx: RequestContext, parent: number, entry: DirEntry): Entry {
    const identity = (entry as ListedEntry).identity;
    const known = identity === undefined ? undefined : this.#nodes.byIdentity(identity);
    if (known !== undefined && known.nodeid !== ROOT_NODEID) return this.#entry(this.#nodes.ref(known));
    const dir = this.#node(parent);
    const node = this.#resolveWithoutHost(dir, entry.name) ?? this.#statNode(dir, entry.name, entry.name.toString('latin1'));
    return this.#entry(node);
  }

  override getattr(_ctx: RequestContext, nodeid: number): Attr {
    const node = this.#node(nodeid);
    return node.nodeid === ROOT_NODEID ? this.#rootAttrNow() : attrOf(node);
  }

  override readlink(_ctx: RequestContext, nodeid: number): Buffer {
    const node = this.#node(nodeid);
    if (kindOfNode(node) !== 'lnk' || node.parent === undefined) throw new FsError(Errno.EINVAL);
    return native.readlinkat(this.#dirFdOf(node.parent), Buffer.from(node.name, 'latin1'));
  }

  override access(_ctx: RequestContext, nodeid: number, mask: number): void {
    const attr = this.getattr(_ctx, nodeid);
    if (mask & W_OK) throw new FsError(Errno.EROFS);
    if (mask & X_OK && (attr.mode & 0o111) === 0) throw new FsError(Errno.EACCES);
  }

  // ---- host paths ---------------------------------------------------------------------

  /** Opens relPath (a latin1 path below the store) in one openat2: beneath the store, no symlinks. */
  #openRel(relPath: string, flags: number): number {
    return native.openat2(this.#storeFd, Buffer.from(relPath, 'latin1'), flags | c.O_NOFOLLOW | c.O_CLOEXEC, RESOLVE);
  }

  /** An O_PATH fd of a directory of the view (the store dir for the root), cached by its identity. */
  #dirFdOf(dir: Node): number {
    if (dir.parent === undefined) return this.#storeFd;
    let fd = this.#dirFds.get(dir.identity);
    if (fd === undefined) {
      fd = this.#openRel(relPathOf(dir), c.O_PATH | c.O_DIRECTORY);
      this.#dirFds.set(dir.identity, fd);
    }
    return fd;
  }

  // ---- files ------------------------------------------------------------------------------

  /**
   * A fresh read-only fd and the size of nodeid's regular file, for the DAX
   * window (the VMM maps the fd; the caller closes it). Not a handle: it does not
   * count against the open-file cap and outlives no request.
   */
  openForMapping(nodeid: number): { fd: number; size: number } | { errno: number } {
    const node = this.#nodes.get(nodeid);
    if (node === undefined) return { errno: Errno.ENOENT };
    const kind = kindOfNode(node);
    if (kind !== 'reg') return { errno: kind === 'dir' ? Errno.EISDIR : Errno.EINVAL };
    let fd: number;
    try {
      fd = this.#openRel(relPathOf(node), c.O_RDONLY | c.O_NONBLOCK);
    } catch (e) {
      return { errno: isErrnoError(e) ? e.errno : Errno.EIO };
    }
    const st = native.statx(fd, '', STATX_NOFOLLOW);
    if (identityOf(st) !== node.identity) {
      native.closeQuietly(fd);
      return { errno: Errno.ESTALE };
    }
    return { fd, size: st.size };
  }

  override open(_ctx: RequestContext, nodeid: number, flags: number): Opened {
    if (opensForWrite(flags)) throw new FsError(Errno.EROFS);
    const node = this.#node(nodeid);
    const kind = kindOfNode(node);
    if (kind === 'dir') throw new FsError(Errno.EISDIR);
    if (kind === 'lnk') throw new FsError(Errno.ELOOP);
    if (this.#handles.size >= this.#handles.cap) throw new FsError(Errno.EMFILE, 'open handle cap reached');
    const { fd, st } = this.#openFile(node);
    try {
      const fh = this.#handles.add({ kind: 'file', nodeid, fd, reading: 0, released: false });
      // The guest's attributes are the node's; a file edited in place since (a store is not) shows in these two.
      return { fh, unchanged: st.size === node.size && st.mtimeSec === node.mtime && st.mtimeNsec === node.mtimeNsec };
    } catch (e) {
      native.closeQuietly(fd);
      throw e;
    }
  }

  /** A read-only fd of node's regular file, checked to be the host file the node names (else ESTALE). */
  #openFile(node: Node): { fd: number; st: native.Statx } {
    // O_NONBLOCK: should a fifo ever replace a store file, opening it must not hang the daemon.
    const fd = this.#openRel(relPathOf(node), c.O_RDONLY | c.O_NONBLOCK);
    try {
      const st = native.statx(fd, '', STATX_NOFOLLOW);
      if (identityOf(st) !== node.identity) throw new FsError(Errno.ESTALE);
      return { fd, st };
    } catch (e) {
      native.closeQuietly(fd);
      throw e;
    }
  }

  /** The file a READ names: its handle, or for fh 0 (opened without OPEN) nodeid's file, kept open in an LRU. */
  #fileHandle(fh: number, nodeid: number): FileHandle {
    if (fh === 0) return this.#nodeFile(nodeid);
    const h = this.#handles.get(fh);
    if (h === undefined || h.kind !== 'file') throw new FsError(Errno.EBADF);
    return h;
  }

  #nodeFile(nodeid: number): FileHandle {
    let h = this.#nodeFiles.get(nodeid);
    if (h === undefined) {
      const node = this.#node(nodeid);
      const kind = kindOfNode(node);
      if (kind !== 'reg') throw new FsError(kind === 'dir' ? Errno.EISDIR : Errno.EINVAL);
      h = { kind: 'file', nodeid, fd: this.#openFile(node).fd, reading: 0, released: false };
      this.#nodeFiles.set(nodeid, h);
    }
    return h;
  }

  /* preadv straight into the guest's buffers; loops only on a short read before EOF. */
  override read(_ctx: RequestContext, nodeid: number, fh: number, offset: number, dst: readonly Buffer[]): number {
    const h = this.#fileHandle(fh, nodeid);
    let total = 0;
    let bufs: readonly Buffer[] = dst;
    while (bufs.length > 0) {
      const n = readvSync(h.fd, bufs as Buffer[], offset + total);
      if (n === 0) break;
      total += n;
      bufs = dropFront(bufs, n);
    }
    return total;
  }

  /* As read(), on libuv's thread pool; the handle's fd is pinned until the last chunk lands. */
  override readAsync(_ctx: RequestContext, nodeid: number, fh: number, offset: number, dst: readonly Buffer[], done: ReadDone): void {
    const h = this.#fileHandle(fh, nodeid);
    h.reading++;
    const finish = (err: Error | null, total: number): void => {
      if (--h.reading === 0 && h.released) native.closeQuietly(h.fd);
      done(err, total);
    };
    const step = (bufs: readonly Buffer[], total: number): void => {
      readv(h.fd, bufs as Buffer[], offset + total, (err, n) => {
        if (err !== null) return finish(err, total);
        if (n === 0) return finish(null, total);
        const rest = dropFront(bufs, n);
        if (rest.length === 0) return finish(null, total + n);
        step(rest, total + n);
      });
    };
    if (dst.length === 0) return process.nextTick(finish, null, 0);
    step(dst, 0);
  }

  override flush(_ctx: RequestContext, nodeid: number, fh: number): void {
    this.#fileHandle(fh, nodeid);
  }

  override release(_ctx: RequestContext, _nodeid: number, fh: number): void {
    const h = this.#handles.get(fh);
    if (h === undefined || h.kind !== 'file') throw new FsError(Errno.EBADF);
    this.#handles.remove(fh);
    this.#closeFile(h);
  }

  /* A read on another thread still uses the fd: closing it now could hand its number to another open. */
  #closeFile(h: FileHandle): void {
    h.released = true;
    if (h.reading === 0) native.closeQuietly(h.fd);
  }

  override lseek(_ctx: RequestContext, nodeid: number, fh: number, offset: number, whence: number): number {
    const h = this.#fileHandle(fh, nodeid);
    if (whence === c.SEEK_DATA || whence === c.SEEK_HOLE) return native.lseek(h.fd, offset, whence);
    if (whence === c.SEEK_SET) return offset;
    if (whence === c.SEEK_END) return this.#node(nodeid).size + offset;
    throw new FsError(Errno.EINVAL);
  }

  // ---- directories --------------------------------------------------------------------

  override opendir(_ctx: RequestContext, nodeid: number, flags: number): number {
    if (opensForWrite(flags)) throw new FsError(Errno.EROFS);
    const node = this.#node(nodeid);
    if (kindOfNode(node) !== 'dir') throw new FsError(Errno.ENOTDIR);
    if (this.#handles.size >= this.#handles.cap) throw new FsError(Errno.EMFILE, 'open handle cap reached');
    return this.#handles.add({ kind: 'dir', nodeid, listing: this.#listing(node) });
  }

  /* Cookies are positions in a sorted listing: stable, since the directory never changes. */
  override readdir(_ctx: RequestContext, nodeid: number, fh: number, offset: number, add: DirEntrySink): void {
    let listing: Listing;
    if (fh === 0) {
      const node = this.#node(nodeid);
      if (kindOfNode(node) !== 'dir') throw new FsError(Errno.ENOTDIR);
      listing = this.#listing(node);
    } else {
      const h = this.#handles.get(fh);
      if (h === undefined || h.kind !== 'dir') throw new FsError(Errno.EBADF);
      listing = h.listing;
    }
    for (let i = offset; i < listing.length; i++) if (!add(listing.entry(i))) return;
  }

  override releasedir(_ctx: RequestContext, _nodeid: number, fh: number): void {
    const h = this.#handles.get(fh);
    if (h === undefined || h.kind !== 'dir') throw new FsError(Errno.EBADF);
    this.#handles.remove(fh);
  }

  #listing(dir: Node): Listing {
    let listing = this.#listings.get(dir.identity);
    if (listing === undefined) {
      listing = dir.nodeid === ROOT_NODEID ? this.#rootListing() : this.#hostListing(dir);
      this.#listings.set(dir.identity, listing);
    }
    return listing;
  }

  /** ".", "..", then each closure path present on the host, sorted. */
  #rootListing(): Listing {
    const named: NamedEntry[] = [];
    for (const base of this.#sorted) {
      const top = this.#statTop(base);
      if (top !== undefined) {
        const identity = identityOf(top.st);
        named.push({ name: Buffer.from(base), ino: this.#nodes.inoOf(identity), type: DT_OF[top.kind], identity });
      }
    }
    return new Listing(ROOT_NODEID, ROOT_NODEID, named);
  }

  #statTop(base: string): { st: native.Statx; kind: NodeKind } | undefined {
    try {
      const st = native.statx(this.#storeFd, base, c.AT_SYMLINK_NOFOLLOW);
      const kind = kindOf(st.mode);
      return kind === undefined ? undefined : { st, kind };
    } catch (e) {
      this.#log?.warn({ path: base, err: (e as Error).message }, 'closure path not readable on the host; not listed');
      return undefined;
    }
  }

  #hostListing(dir: Node): Listing {
    const fd = this.#openRel(relPathOf(dir), c.O_RDONLY | c.O_DIRECTORY);
    try {
      const self = native.statx(fd, '', STATX_NOFOLLOW);
      const named: NamedEntry[] = [];
      for (const d of native.readDirectory(fd)) {
        if (d.name.equals(DOT) || d.name.equals(DOTDOT)) continue;
        const kind = this.#direntKind(fd, d);
        if (kind === undefined) continue;
        const identity = identityFromParts(self.devMajor, self.devMinor, Number(d.ino >> 32n), Number(d.ino & 0xffffffffn));
        named.push({ name: d.name, ino: this.#nodes.inoOf(identity), type: DT_OF[kind], identity });
      }
      named.sort((a, b) => Buffer.compare(a.name, b.name));
      // The parent's node has the inode number a statx of '..' would find.
      return new Listing(dir.nodeid, dir.parent?.nodeid ?? ROOT_NODEID, named);
    } finally {
      native.closeQuietly(fd);
    }
  }

  #direntKind(dirFd: number, d: native.RawDirent): NodeKind | undefined {
    if (d.type === c.DT_REG) return 'reg';
    if (d.type === c.DT_DIR) return 'dir';
    if (d.type === c.DT_LNK) return 'lnk';
    if (d.type !== c.DT_UNKNOWN) return undefined;
    return kindOf(native.statx(dirFd, d.name, c.AT_SYMLINK_NOFOLLOW).mode); // file systems without d_type
  }

  // ---- the root and statfs ---------------------------------------------------------------

  #rootAttrNow(): Attr {
    if (this.#rootAttr === undefined) {
      this.#rootAttr = attrOf(this.#nodes.root, 2 + this.#listing(this.#nodes.root).subdirectories());
    }
    return this.#rootAttr;
  }

  /* Computed on the first STATFS by walking the closure (one statx per entry), then kept. */
  override statfs(): KStatfs {
    const s = this.closureStats();
    return { blocks: s.blocks, bfree: 0, bavail: 0, files: s.files, ffree: 0, bsize: BLOCK, namelen: NAME_MAX, frsize: BLOCK };
  }

  /** Size and file count of the closure (walked once; the daemon may call this at startup). */
  closureStats(): ClosureStats {
    this.#stats ??= this.#walk();
    return this.#stats;
  }

  #walk(): ClosureStats {
    const seen = new Set<Identity>();
    let blocks = 0;
    const count = (st: native.Statx): NodeKind | undefined => {
      const kind = kindOf(st.mode);
      const id = identityOf(st);
      if (kind === undefined || seen.has(id)) return undefined;
      seen.add(id);
      if (kind === 'reg') blocks += Math.ceil(st.size / BLOCK);
      return kind;
    };
    const pending: string[] = [];
    for (const base of this.#sorted) {
      const top = this.#statTop(base);
      if (top !== undefined && count(top.st) === 'dir') pending.push(base);
    }
    // One directory fd at a time, however deep the tree: each is opened from the store fd.
    for (let rel = pending.pop(); rel !== undefined; rel = pending.pop()) {
      const fd = this.#openRel(rel, c.O_RDONLY | c.O_DIRECTORY);
      try {
        for (const d of native.readDirectory(fd)) {
          if (d.name.equals(DOT) || d.name.equals(DOTDOT)) continue;
          if (count(native.statx(fd, d.name, c.AT_SYMLINK_NOFOLLOW)) === 'dir') pending.push(`${rel}/${d.name.toString('latin1')}`);
        }
      } finally {
        native.closeQuietly(fd);
      }
    }
    return { files: seen.size + 1, blocks };
  }

  // ---- nothing else -----------------------------------------------------------------------

  // getxattr/listxattr stay ENOSYS (the base class): a store has no extended
  // attributes (a NAR cannot carry them), and ENOSYS makes the guest stop asking
  // (fuse no_getxattr/no_listxattr) and answer EOPNOTSUPP itself, as virtiofsd
  // without -o xattr does. ENODATA would cost one round trip per exec(), which
  // looks up security.capability every time.

  override syncfs(): void {}

  override mutate(_ctx: RequestContext, _op: MutatingOp): never {
    throw new FsError(Errno.EROFS);
  }
}
