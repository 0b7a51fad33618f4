/**
 * Decoders and encoders for the request bodies the session handles. The codec
 * has already checked each payload's exact size, so these only check values.
 */
import type { MemoryRegionDescriptor } from '../virtio/guest-memory';
import { u64ToNumber } from './codec';
import { VhostUserRequestError } from './errors';
import { MEMORY_REGION_SIZE, VRING_INDEX_MASK, VRING_NOFD_MASK } from './protocol';

const invalid = (msg: string): Error => new VhostUserRequestError(msg);

export function readU64(p: Buffer): bigint {
  return p.readBigUInt64LE(0);
}

/** struct vhost_vring_state { le32 index; le32 num; } */
export interface VringState {
  index: number;
  num: number;
}

export function readVringState(p: Buffer): VringState {
  return { index: p.readUInt32LE(0), num: p.readUInt32LE(4) };
}

export function encodeVringState(s: VringState): Buffer {
  const b = Buffer.allocUnsafe(8);
  b.writeUInt32LE(s.index, 0);
  b.writeUInt32LE(s.num, 4);
  return b;
}

/** struct vhost_vring_addr { le32 index; le32 flags; le64 desc, used, avail, log; } (frontend addresses) */
export interface VringAddr {
  index: number;
  flags: number;
  desc: number;
  used: number;
  avail: number;
  log: bigint;
}

export function readVringAddr(p: Buffer): VringAddr {
  return {
    index: p.readUInt32LE(0),
    flags: p.readUInt32LE(4),
    desc: u64ToNumber(p.readBigUInt64LE(8), 'descriptor table address', invalid),
    used: u64ToNumber(p.readBigUInt64LE(16), 'used ring address', invalid),
    avail: u64ToNumber(p.readBigUInt64LE(24), 'available ring address', invalid),
    log: p.readBigUInt64LE(32),
  };
}

/** struct VhostUserMemoryRegion { le64 guest_phys_addr, memory_size, userspace_addr, mmap_offset; } */
export function readMemoryRegion(p: Buffer, off: number): MemoryRegionDescriptor {
  return {
    guestPhysAddr: u64ToNumber(p.readBigUInt64LE(off), 'region guest address', invalid),
    size: u64ToNumber(p.readBigUInt64LE(off + 8), 'region size', invalid),
    userAddr: u64ToNumber(p.readBigUInt64LE(off + 16), 'region frontend address', invalid),
    mmapOffset: u64ToNumber(p.readBigUInt64LE(off + 24), 'region mmap offset', invalid),
  };
}

/** SET_MEM_TABLE: { le32 nregions; le32 padding; VhostUserMemoryRegion regions[nregions]; } */
export function readMemoryTable(p: Buffer): MemoryRegionDescriptor[] {
  const n = p.readUInt32LE(0);
  if (8 + n * MEMORY_REGION_SIZE !== p.length) {
    throw new VhostUserRequestError(`memory table says ${n} regions but its payload holds ${(p.length - 8) / MEMORY_REGION_SIZE}`);
  }
  const out: MemoryRegionDescriptor[] = [];
  for (let i = 0; i < n; i++) out.push(readMemoryRegion(p, 8 + i * MEMORY_REGION_SIZE));
  return out;
}

/** SET_VRING_KICK/CALL/ERR u64: bits 0-7 index, bit 8 "no fd"; other bits must be clear. */
export function readVringFdPayload(p: Buffer): { index: number; noFd: boolean } {
  const v = p.readBigUInt64LE(0);
  if (v & ~(VRING_INDEX_MASK | VRING_NOFD_MASK)) {
    throw new VhostUserRequestError(`vring fd payload 0x${v.toString(16)} sets bits other than the index and the no-fd flag`);
  }
  return { index: Number(v & VRING_INDEX_MASK), noFd: (v & VRING_NOFD_MASK) !== 0n };
}

/** GET_CONFIG/SET_CONFIG: { le32 offset; le32 size; le32 flags; u8 payload[size]; } */
export interface ConfigRequest {
  offset: number;
  size: number;
  flags: number;
  data: Buffer;
}

export function readConfig(p: Buffer): ConfigRequest {
  return { offset: p.readUInt32LE(0), size: p.readUInt32LE(4), flags: p.readUInt32LE(8), data: p.subarray(12) };
}

export function encodeConfig(c: ConfigRequest): Buffer {
  const b = Buffer.alloc(12 + c.data.length);
  b.writeUInt32LE(c.offset, 0);
  b.writeUInt32LE(c.size, 4);
  b.writeUInt32LE(c.flags, 8);
  c.data.copy(b, 12);
  return b;
}
