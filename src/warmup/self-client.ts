/**
 * The FUSE requests of the warm-up, encoded as the guest kernel encodes them
 * and sent through a SelfRing. Every reply is checked against the errno the
 * request must get, so a warm-up that drifted onto error paths (and would warm
 * the wrong code) stops with an error instead of going on quietly.
 */
import {
  AccessIn,
  Dirent,
  EntryOut,
  FUSE_KERNEL_MINOR_VERSION,
  FUSE_KERNEL_VERSION,
  ForgetIn,
  GetattrIn,
  GetxattrIn,
  InHeader,
  InitIn,
  Opcode,
  OpenIn,
  OpenOut,
  ReadIn,
  ReleaseIn,
  direntplusSize,
} from '../fuse/abi';
import type { Codec } from '../fuse/abi';
import { Errno } from '../fuse/errno';
import { ClosurefsError } from '../errors';
import { NO_REPLY, SelfRing, type SelfReply } from './self-ring';

export interface ListedEntry {
  name: Buffer;
  nodeid: number;
  /** DT_* of the entry. */
  type: number;
}

export class WarmUpError extends ClosurefsError {
  override readonly code = 'CFS_ERR_WARM_UP';
}

const O_RDONLY = 0;
const O_DIRECTORY = 0o200000;
const R_OK = 4;
const INIT_FLAGS = 0xffffffff; // everything the guest could ask for: the server keeps what it supports
const READDIR_SIZE = 4096; // what the guest asks per READDIRPLUS

export class SelfClient {
  readonly #ring: SelfRing;
  #unique = 1n;
  requests = 0;

  constructor(ring: SelfRing) {
    this.#ring = ring;
  }

  init(): void {
    const args = Buffer.alloc(InitIn.SIZE);
    InitIn.encode({ major: FUSE_KERNEL_VERSION, minor: FUSE_KERNEL_MINOR_VERSION, maxReadahead: 128 * 1024, flags: INIT_FLAGS, flags2: 0 }, args, 0);
    this.#expect(Opcode.INIT, 0, [args], 256, 0);
  }

  destroy(): void {
    this.#expect(Opcode.DESTROY, 0, [], 0, 0);
  }

  /** LOOKUP; undefined when the name is gone (a store path vanished under us). */
  lookup(parent: number, name: Buffer): number | undefined {
    const r = this.#send(Opcode.LOOKUP, parent, [cString(name)], EntryOut.SIZE);
    if (r.error !== 0) return undefined;
    return EntryOut.decode(r.payload, 0).nodeid;
  }

  /** LOOKUP of a name that is not there: a negative entry (nodeid 0) or ENOENT, by cache mode. */
  lookupMissing(parent: number, name: Buffer): void {
    const r = this.#send(Opcode.LOOKUP, parent, [cString(name)], EntryOut.SIZE);
    if (r.error !== -Errno.ENOENT && !(r.error === 0 && EntryOut.decode(r.payload, 0).nodeid === 0)) this.#fail(Opcode.LOOKUP, r);
  }

  forget(nodeid: number, nlookup: number): void {
    this.#expect(Opcode.FORGET, nodeid, [encoded(ForgetIn, { nlookup })], NO_REPLY, 0);
  }

  forgetAll(entries: readonly ListedEntry[]): void {
    for (const e of entries) this.forget(e.nodeid, 1);
  }

  getattr(nodeid: number): void {
    this.#expect(Opcode.GETATTR, nodeid, [encoded(GetattrIn, { getattrFlags: 0, fh: 0 })], 104, 0);
  }

  access(nodeid: number): void {
    this.#expect(Opcode.ACCESS, nodeid, [encoded(AccessIn, { mask: R_OK })], 0, 0);
  }

  /** OPENDIR: ENOSYS with zero-message opendir, the guest's first request for each directory otherwise. */
  opendir(nodeid: number): void {
    const r = this.#send(Opcode.OPENDIR, nodeid, [encoded(OpenIn, { flags: O_RDONLY | O_DIRECTORY, openFlags: 0 })], OpenOut.SIZE);
    if (r.error !== -Errno.ENOSYS) this.#fail(Opcode.OPENDIR, r);
  }

  readlink(nodeid: number): void {
    this.#expect(Opcode.READLINK, nodeid, [], 4096, 0);
  }

  open(nodeid: number): number {
    const r = this.#expect(Opcode.OPEN, nodeid, [encoded(OpenIn, { flags: O_RDONLY, openFlags: 0 })], OpenOut.SIZE, 0);
    return OpenOut.decode(r.payload, 0).fh;
  }

  read(nodeid: number, fh: number, offset: number, size: number): void {
    this.#expect(Opcode.READ, nodeid, [encoded(ReadIn, { fh, offset, size, readFlags: 0, lockOwner: 0n, flags: O_RDONLY })], size, 0);
  }

  release(nodeid: number, fh: number): void {
    this.#expect(Opcode.RELEASE, nodeid, [encoded(ReleaseIn, { fh, flags: O_RDONLY, releaseFlags: 0, lockOwner: 0n })], 0, 0);
  }

  getxattr(nodeid: number, errno: number): void {
    this.#expect(Opcode.GETXATTR, nodeid, [encoded(GetxattrIn, { size: 0 }), cString(Buffer.from('security.selinux'))], 8, -errno);
  }

  /** One READDIRPLUS (fh 0, as after zero-message opendir); "." and ".." left out. */
  readdirplus(nodeid: number, offset: number): ListedEntry[] {
    const r = this.#expect(Opcode.READDIRPLUS, nodeid, [encoded(ReadIn, { fh: 0, offset, size: READDIR_SIZE, readFlags: 0, lockOwner: 0n, flags: 0 })], READDIR_SIZE, 0);
    const out: ListedEntry[] = [];
    for (let o = 0; o + EntryOut.SIZE + Dirent.SIZE <= r.payload.length; ) {
      const entry = EntryOut.decode(r.payload, o);
      const d = Dirent.decode(r.payload, o + EntryOut.SIZE);
      const nameAt = o + EntryOut.SIZE + Dirent.SIZE;
      if (entry.nodeid !== 0) out.push({ name: Buffer.from(r.payload.subarray(nameAt, nameAt + d.namelen)), nodeid: entry.nodeid, type: d.type });
      o += direntplusSize(d.namelen);
    }
    return out;
  }

  #expect(opcode: number, nodeid: number, args: Buffer[], replyRoom: number, error: number): SelfReply {
    const r = this.#send(opcode, nodeid, args, replyRoom);
    if (r.error !== error) this.#fail(opcode, r);
    return r;
  }

  #send(opcode: number, nodeid: number, args: Buffer[], replyRoom: number): SelfReply {
    const body = Buffer.concat(args);
    const request = Buffer.alloc(InHeader.SIZE + body.length);
    InHeader.encode({ len: request.length, opcode, unique: this.#unique++, nodeid, uid: 0, gid: 0, pid: 1, totalExtlen: 0 }, request, 0);
    body.copy(request, InHeader.SIZE);
    this.requests++;
    return this.#ring.request(request, InHeader.SIZE, replyRoom);
  }

  #fail(opcode: number, r: SelfReply): never {
    throw new WarmUpError(`warm-up request ${opcode} got error ${r.error} (${r.usedLen} bytes)`);
  }
}

function encoded<T>(codec: Codec<T>, value: T): Buffer {
  const b = Buffer.alloc(codec.SIZE);
  codec.encode(value, b, 0);
  return b;
}

function cString(name: Buffer): Buffer {
  return Buffer.concat([name, Buffer.of(0)]);
}
