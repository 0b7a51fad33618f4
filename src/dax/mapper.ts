/**
 * FUSE_SETUPMAPPING / FUSE_REMOVEMAPPING served by asking the VMM to map file
 * pages into the guest's DAX window: VHOST_USER_BACKEND_SHMEM_MAP (9) and
 * SHMEM_UNMAP (10) on the backend channel (vhost-user spec, "Shared memory
 * regions"). The guest then reads the host page cache directly; every guest
 * mapping the same file shares one copy of each page.
 */
import type { DaxMapper as FuseDaxMapper } from '../fuse/server';
import * as native from '../native';
import { DaxWindow, WindowMapping } from './window';

export const BACKEND_SHMEM_MAP = 9;
export const BACKEND_SHMEM_UNMAP = 10;
/** The virtio-fs cache window is shared memory region 0. */
export const DAX_SHMID = 0;
/** Page granularity: the INIT reply advertises map_alignment = log2(4096). */
export const DAX_MAP_ALIGNMENT_LOG2 = 12;
const PAGE = 1 << DAX_MAP_ALIGNMENT_LOG2;

/** fuse_setupmapping_in.flags */
export const SETUPMAPPING_FLAG_WRITE = 1 << 0;
export const SETUPMAPPING_FLAG_READ = 1 << 1;

// errno values the guest understands (Linux).
const EIO = 5;
const EINVAL = 22;
const EROFS = 30;
const ENOSYS = 38;
const ENOTCONN = 107;

/** The backend channel as the mapper needs it: send a request with an optional fd, get the ack (0 = done). */
export interface ShmemChannel {
  request(type: number, payload: Buffer, fd?: number): number;
}

/** A regular file to map: an fd the mapper may close, and the file's size. */
export type MappableFile = { fd: number; size: number } | { errno: number };

export interface DaxMapperOptions {
  window: DaxWindow;
  /** The backend channel, when the frontend set one up (SET_BACKEND_REQ_FD). */
  channel: () => ShmemChannel | null;
  /** Opens the file behind a nodeid read-only; an errno for directories, symlinks, unknown nodes. */
  openFile: (nodeid: number) => MappableFile;
  logger?: { warn(o: object, msg: string): void; debug(o: object, msg: string): void };
}

/**
 * VHOST_USER_BACKEND_SHMEM_MAP / _UNMAP payload (40 bytes):
 *   u8 shmid; u8 padding[7]; u64 fd_offset; u64 shm_offset; u64 len; u64 flags (bit 0: writable)
 */
export function encodeShmemMessage(fdOffset: number, shmOffset: number, len: number, flags = 0n): Buffer {
  const b = Buffer.alloc(40);
  b.writeUInt8(DAX_SHMID, 0);
  b.writeBigUInt64LE(BigInt(fdOffset), 8);
  b.writeBigUInt64LE(BigInt(shmOffset), 16);
  b.writeBigUInt64LE(BigInt(len), 24);
  b.writeBigUInt64LE(flags, 32);
  return b;
}

function pageAligned(n: number): boolean {
  return n % PAGE === 0;
}

/** A guest u64 as a Number, or -1 when it cannot be one of our offsets (>= 2^53). */
function toOffset(v: bigint): number {
  return v >= 0n && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : -1;
}

export class DaxMapper implements FuseDaxMapper {
  constructor(private readonly opts: DaxMapperOptions) {}

  /**
   * Maps [foffset, foffset+len) of nodeid's file at moffset in the window. Returns 0 or an errno.
   * fh is ignored: the kernel sends -1 and means "the file of nodeid". The range is clipped
   * to the pages the file holds: a window page past the file's end would fault in the VMM.
   */
  setupMapping(nodeid: number, _fh: bigint, foffset64: bigint, len64: bigint, moffset64: bigint, flags: bigint): number {
    const [foffset, len, moffset] = [toOffset(foffset64), toOffset(len64), toOffset(moffset64)];
    if (flags & BigInt(SETUPMAPPING_FLAG_WRITE)) return EROFS;
    if (foffset < 0 || !this.opts.window.contains(moffset, len) || !pageAligned(moffset) || !pageAligned(foffset)) return EINVAL;
    const channel = this.opts.channel();
    if (channel === null) return ENOSYS;
    const file = this.opts.openFile(nodeid);
    if ('errno' in file) return file.errno;
    try {
      const mapLen = Math.min(len, Math.ceil(file.size / PAGE) * PAGE - foffset);
      if (mapLen <= 0) return EINVAL; // nothing of the file lies there
      // The kernel re-sends SETUPMAPPING over a live range (e.g. to upgrade it); the
      // frontend refuses overlapping maps, so whatever is there goes first.
      const cleared = this.#unmapAll(channel, this.opts.window.overlapping(moffset, len));
      if (cleared !== 0) return cleared;
      const ack = this.#send(channel, BACKEND_SHMEM_MAP, encodeShmemMessage(foffset, moffset, mapLen), file.fd);
      if (ack !== 0) return ack;
      this.opts.window.add({ moffset, len: mapLen, nodeid, foffset });
      return 0;
    } finally {
      native.closeQuietly(file.fd); // the VMM received its own copy
    }
  }

  /** Unmaps every mapping wholly inside [moffset, moffset+len). Returns 0 or an errno. */
  removeMapping(moffset64: bigint, len64: bigint): number {
    const [moffset, len] = [toOffset(moffset64), toOffset(len64)];
    if (!this.opts.window.contains(moffset, len)) return EINVAL;
    const { inside, straddling } = this.opts.window.within(moffset, len);
    // Half a mapping cannot be unmapped (the frontend only accepts exact unmaps).
    if (straddling) return EINVAL;
    const channel = this.opts.channel();
    if (channel === null) return inside.length === 0 ? 0 : ENOTCONN;
    return this.#unmapAll(channel, inside);
  }

  /** The frontend dropped every mapping (reset, disconnect): forget them here too. */
  reset(): void {
    this.opts.window.clear();
  }

  #unmapAll(channel: ShmemChannel, mappings: readonly WindowMapping[]): number {
    for (const m of mappings) {
      const ack = this.#send(channel, BACKEND_SHMEM_UNMAP, encodeShmemMessage(m.foffset, m.moffset, m.len));
      if (ack !== 0) return ack;
      this.opts.window.remove(m);
    }
    return 0;
  }

  #send(channel: ShmemChannel, type: number, payload: Buffer, fd?: number): number {
    try {
      const ack = channel.request(type, payload, fd);
      if (ack === 0) return 0;
      this.opts.logger?.warn({ type, ack }, 'the frontend refused a DAX window request');
      return EIO;
    } catch (e) {
      this.opts.logger?.warn({ type, err: (e as Error).message }, 'DAX window request failed on the backend channel');
      return EIO;
    }
  }
}
