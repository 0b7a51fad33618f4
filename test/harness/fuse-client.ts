/**
 * A FUSE client for tests and benchmarks: encodes requests the way the guest
 * kernel does (fuse_in_header + in args as separate buffers) and decodes replies,
 * over any transport with the shape
 *   (readable buffers, writable buffer sizes) => { usedLen, written }.
 * inProcessTransport() runs a RequestHandler (FuseServer) directly; the vhost-user
 * frontend harness provides the same shape through a real ring.
 */
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
  GetattrIn,
  GetxattrIn,
  GetxattrOut,
  InHeader,
  InitIn,
  InitOut,
  LseekIn,
  LseekOut,
  Opcode,
  OpenIn,
  OpenOut,
  OutHeader,
  ReadIn,
  ReleaseIn,
  StatfsOut,
  direntAlign,
  type AttrOut as AttrOutT,
  type Codec,
  type EntryOut as EntryOutT,
  type InitOut as InitOutT,
  type KStatfs,
  type OpenOut as OpenOutT,
} from '../../src/fuse/abi';
import { Errno } from '../../src/fuse/errno';
import type { RequestHandler } from '../../src/io';

export type FuseTransport = (readable: Buffer[], writableSizes: number[]) => Promise<{ usedLen: number; written: Buffer }>;

/** Runs requests straight through a RequestHandler, with fresh writable buffers of the given sizes. */
export function inProcessTransport(handler: RequestHandler, queueIndex = 1): FuseTransport {
  return async (readable, writableSizes) => {
    const writable = writableSizes.map((n) => Buffer.alloc(n));
    const usedLen = handler.handle(queueIndex, { readable, writable });
    return { usedLen, written: Buffer.concat(writable).subarray(0, usedLen) };
  };
}

/** The guest got an error reply. */
export class FuseReplyError extends Error {
  constructor(
    readonly opcode: number,
    readonly errno: number,
  ) {
    super(`FUSE opcode ${opcode} failed with errno ${errno}`);
  }
}

/** The errno of a call expected to fail with an error reply (anything else fails the test). */
export async function errnoOf(p: Promise<unknown>): Promise<number> {
  try {
    await p;
  } catch (e) {
    if (e instanceof FuseReplyError) return e.errno;
    throw e;
  }
  throw new Error('expected an error reply');
}

export interface Reply {
  header: { len: number; error: number; unique: bigint };
  payload: Buffer;
  usedLen: number;
}

export interface DecodedDirent {
  ino: number;
  off: number;
  type: number;
  name: Buffer;
}
export interface DecodedDirentplus extends DecodedDirent {
  entry: EntryOutT;
}

/** The 6.1 guest's INIT flags (REFERENCES.md): 0x0000000b7bfffffb, low and high words. */
export const GUEST_INIT_FLAGS = 0x7bfffffb;
export const GUEST_INIT_FLAGS2 = 0xb;
export const GUEST_MAX_READAHEAD = 128 * 1024;

export function encode<T>(codec: Codec<T>, v: T): Buffer {
  const b = Buffer.alloc(codec.SIZE);
  codec.encode(v, b, 0);
  return b;
}

/** A name as the kernel sends it: bytes then NUL. */
export function cName(name: string | Buffer): Buffer {
  return Buffer.concat([typeof name === 'string' ? Buffer.from(name) : name, Buffer.of(0)]);
}

export function decodeDirents(buf: Buffer): DecodedDirent[] {
  const out: DecodedDirent[] = [];
  for (let o = 0; o + Dirent.SIZE <= buf.length; ) {
    const d = Dirent.decode(buf, o);
    out.push({ ino: d.ino, off: d.off, type: d.type, name: Buffer.from(buf.subarray(o + Dirent.SIZE, o + Dirent.SIZE + d.namelen)) });
    o += direntAlign(Dirent.SIZE + d.namelen);
  }
  return out;
}

export function decodeDirentplus(buf: Buffer): DecodedDirentplus[] {
  const out: DecodedDirentplus[] = [];
  for (let o = 0; o + EntryOut.SIZE + Dirent.SIZE <= buf.length; ) {
    const entry = EntryOut.decode(buf, o);
    const d = Dirent.decode(buf, o + EntryOut.SIZE);
    const nameAt = o + EntryOut.SIZE + Dirent.SIZE;
    out.push({ entry, ino: d.ino, off: d.off, type: d.type, name: Buffer.from(buf.subarray(nameAt, nameAt + d.namelen)) });
    o += direntAlign(EntryOut.SIZE + Dirent.SIZE + d.namelen);
  }
  return out;
}

export interface FuseClientOptions {
  uid?: number;
  gid?: number;
  pid?: number;
}

export class FuseClient {
  #unique = 1n;
  /**
   * An OPEN was answered ENOSYS (zero-message open): as the kernel does then, later
   * opens send nothing and give fh 0, and closing such a file sends no RELEASE.
   */
  #noOpen = false;

  constructor(
    readonly transport: FuseTransport,
    readonly opts: FuseClientOptions = {},
  ) {}

  /** Sends one request; the writable side is [out header, payload of replySize] like the kernel's. */
  async request(opcode: number, nodeid: number, body: Buffer[] = [], replySize = 0): Promise<Reply> {
    const unique = this.#unique++;
    const len = InHeader.SIZE + body.reduce((n, b) => n + b.length, 0);
    const header = encode(InHeader, { len, opcode, unique, nodeid, uid: this.opts.uid ?? 0, gid: this.opts.gid ?? 0, pid: this.opts.pid ?? 1, totalExtlen: 0 });
    const sizes = replySize > 0 ? [OutHeader.SIZE, replySize] : [OutHeader.SIZE];
    const { usedLen, written } = await this.transport([header, ...body], sizes);
    if (usedLen < OutHeader.SIZE) throw new Error(`opcode ${opcode}: reply of ${usedLen} bytes has no header`);
    const out = OutHeader.decode(written, 0);
    if (out.len !== usedLen) throw new Error(`opcode ${opcode}: out header len ${out.len} != used length ${usedLen}`);
    if (out.unique !== unique) throw new Error(`opcode ${opcode}: unique ${out.unique} != ${unique}`);
    if (out.error > 0 || (out.error < 0 && out.len !== OutHeader.SIZE)) throw new Error(`opcode ${opcode}: malformed error reply`);
    return { header: out, payload: Buffer.from(written.subarray(OutHeader.SIZE, usedLen)), usedLen };
  }

  /** A request with no reply (FORGET, BATCH_FORGET): returns the used length, which should be 0. */
  async send(opcode: number, nodeid: number, body: Buffer[] = []): Promise<number> {
    const unique = this.#unique++;
    const len = InHeader.SIZE + body.reduce((n, b) => n + b.length, 0);
    const header = encode(InHeader, { len, opcode, unique, nodeid, uid: 0, gid: 0, pid: 1, totalExtlen: 0 });
    return (await this.transport([header, ...body], [])).usedLen;
  }

  /** request() that throws FuseReplyError on an error reply and returns the payload. */
  async call(opcode: number, nodeid: number, body: Buffer[] = [], replySize = 0): Promise<Buffer> {
    const r = await this.request(opcode, nodeid, body, replySize);
    if (r.header.error !== 0) throw new FuseReplyError(opcode, -r.header.error);
    return r.payload;
  }

  async init(o: Partial<{ major: number; minor: number; flags: number; flags2: number; maxReadahead: number }> = {}): Promise<InitOutT> {
    const body = encode(InitIn, {
      major: o.major ?? FUSE_KERNEL_VERSION,
      minor: o.minor ?? FUSE_KERNEL_MINOR_VERSION,
      maxReadahead: o.maxReadahead ?? GUEST_MAX_READAHEAD,
      flags: o.flags ?? GUEST_INIT_FLAGS,
      flags2: o.flags2 ?? GUEST_INIT_FLAGS2,
    });
    const p = await this.call(Opcode.INIT, 0, [body], InitOut.SIZE);
    this.#noOpen = false;
    const full = Buffer.alloc(InitOut.SIZE);
    p.copy(full);
    return InitOut.decode(full, 0);
  }

  async destroy(): Promise<void> {
    await this.call(Opcode.DESTROY, 0);
  }

  /** LOOKUP; a negative entry (nodeid 0) is reported as ENOENT, as the kernel treats it. */
  async lookup(parent: number, name: string | Buffer): Promise<EntryOutT> {
    const e = EntryOut.decode(await this.call(Opcode.LOOKUP, parent, [cName(name)], EntryOut.SIZE), 0);
    if (e.nodeid === 0) throw new FuseReplyError(Opcode.LOOKUP, 2);
    return e;
  }

  /** Looks up a '/'-separated path from the root, one LOOKUP per component. */
  async walk(path: string): Promise<EntryOutT> {
    let e: EntryOutT | undefined;
    let at = 1;
    for (const part of path.split('/').filter((s) => s !== '')) {
      e = await this.lookup(at, part);
      at = e.nodeid;
    }
    if (e === undefined) throw new Error('walk needs at least one component');
    return e;
  }

  forget(nodeid: number, nlookup: number): Promise<number> {
    return this.send(Opcode.FORGET, nodeid, [encode(ForgetIn, { nlookup })]);
  }

  batchForget(items: { nodeid: number; nlookup: number }[]): Promise<number> {
    return this.send(Opcode.BATCH_FORGET, 0, [encode(BatchForgetIn, { count: items.length }), ...items.map((i) => encode(ForgetOne, i))]);
  }

  async getattr(nodeid: number, fh?: number): Promise<AttrOutT> {
    const body = encode(GetattrIn, { getattrFlags: fh === undefined ? 0 : FUSE_GETATTR_FH, fh: fh ?? 0 });
    return AttrOut.decode(await this.call(Opcode.GETATTR, nodeid, [body], AttrOut.SIZE), 0);
  }

  readlink(nodeid: number): Promise<Buffer> {
    return this.call(Opcode.READLINK, nodeid, [], 4096);
  }

  /** OPEN, or with zero-message open what the kernel's file gets without one: fh 0, pages kept. */
  async open(nodeid: number, flags = 0): Promise<OpenOutT> {
    if (this.#noOpen) return { fh: 0, openFlags: FopenFlag.KEEP_CACHE };
    try {
      return OpenOut.decode(await this.call(Opcode.OPEN, nodeid, [encode(OpenIn, { flags, openFlags: 0 })], OpenOut.SIZE), 0);
    } catch (e) {
      if (!(e instanceof FuseReplyError && e.errno === Errno.ENOSYS)) throw e;
      this.#noOpen = true;
      return { fh: 0, openFlags: FopenFlag.KEEP_CACHE };
    }
  }

  /** True once the daemon answered OPEN with ENOSYS. */
  get opensWithoutOpen(): boolean {
    return this.#noOpen;
  }

  async opendir(nodeid: number, flags = 0): Promise<OpenOutT> {
    return OpenOut.decode(await this.call(Opcode.OPENDIR, nodeid, [encode(OpenIn, { flags, openFlags: 0 })], OpenOut.SIZE), 0);
  }

  read(nodeid: number, fh: number, offset: number, size: number): Promise<Buffer> {
    return this.call(Opcode.READ, nodeid, [this.#readIn(fh, offset, size)], size);
  }

  /** Reads a whole file in chunks (what the guest's page cache would do). */
  async readAll(nodeid: number, fh: number, chunk = 128 * 1024): Promise<Buffer> {
    const parts: Buffer[] = [];
    for (let off = 0; ; ) {
      const b = await this.read(nodeid, fh, off, chunk);
      if (b.length === 0) break;
      parts.push(b);
      off += b.length;
    }
    return Buffer.concat(parts);
  }

  async readdir(nodeid: number, fh: number, offset: number, size = 4096): Promise<DecodedDirent[]> {
    return decodeDirents(await this.call(Opcode.READDIR, nodeid, [this.#readIn(fh, offset, size)], size));
  }

  async readdirplus(nodeid: number, fh: number, offset: number, size = 4096): Promise<DecodedDirentplus[]> {
    return decodeDirentplus(await this.call(Opcode.READDIRPLUS, nodeid, [this.#readIn(fh, offset, size)], size));
  }

  /** Every entry, following cookies across calls of `size` bytes. */
  async readdirAll(nodeid: number, fh: number, size = 4096): Promise<DecodedDirent[]> {
    const all: DecodedDirent[] = [];
    for (let off = 0; ; ) {
      const batch = await this.readdir(nodeid, fh, off, size);
      if (batch.length === 0) return all;
      all.push(...batch);
      off = batch[batch.length - 1].off;
    }
  }

  async releasedir(nodeid: number, fh: number): Promise<void> {
    await this.call(Opcode.RELEASEDIR, nodeid, [encode(ReleaseIn, { fh, flags: 0, releaseFlags: 0, lockOwner: 0n })]);
  }

  async release(nodeid: number, fh: number): Promise<void> {
    if (this.#noOpen && fh === 0) return;
    await this.call(Opcode.RELEASE, nodeid, [encode(ReleaseIn, { fh, flags: 0, releaseFlags: 0, lockOwner: 0n })]);
  }

  async flush(nodeid: number, fh: number): Promise<void> {
    await this.call(Opcode.FLUSH, nodeid, [encode(FlushIn, { fh, lockOwner: 0n })]);
  }

  async statfs(nodeid = 1): Promise<KStatfs> {
    return StatfsOut.decode(await this.call(Opcode.STATFS, nodeid, [], StatfsOut.SIZE), 0);
  }

  async access(nodeid: number, mask: number): Promise<void> {
    await this.call(Opcode.ACCESS, nodeid, [encode(AccessIn, { mask })]);
  }

  async lseek(nodeid: number, fh: number, offset: number, whence: number): Promise<number> {
    return LseekOut.decode(await this.call(Opcode.LSEEK, nodeid, [encode(LseekIn, { fh, offset, whence })], LseekOut.SIZE), 0).offset;
  }

  /** size 0: the value's length (as a getxattr_out); else the value. */
  getxattr(nodeid: number, name: string, size: number): Promise<Buffer> {
    return this.call(Opcode.GETXATTR, nodeid, [encode(GetxattrIn, { size }), cName(name)], Math.max(size, GetxattrOut.SIZE));
  }

  listxattr(nodeid: number, size: number): Promise<Buffer> {
    return this.call(Opcode.LISTXATTR, nodeid, [encode(GetxattrIn, { size })], Math.max(size, GetxattrOut.SIZE));
  }

  #readIn(fh: number, offset: number, size: number): Buffer {
    return encode(ReadIn, { fh, offset, size, readFlags: 0, lockOwner: 0n, flags: 0 });
  }
}
