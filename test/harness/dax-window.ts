/**
 * The VMM side of a virtio-fs DAX window, for tests and benchmarks: reserves an
 * inaccessible window and, on SHMEM_MAP, maps the received fd into it with
 * MAP_FIXED|MAP_SHARED (PROT_NONE again on SHMEM_UNMAP). It refuses exactly what
 * a conforming frontend refuses (see shared/qemu-dax/README.md): unknown shmid,
 * outside the window, zero or unaligned ranges, overlapping maps, unmaps that do
 * not match one earlier map, a map without an fd.
 */
import * as native from '../../src/native';

export const SHMEM_MAP = 9;
export const SHMEM_UNMAP = 10;
const ACK_OK = 0;
const ACK_REFUSED = 1;

export interface LiveMap {
  shmOffset: number;
  len: number;
  fdOffset: number;
}

export interface ShmemRequest {
  shmid: number;
  fdOffset: number;
  shmOffset: number;
  len: number;
  flags: bigint;
}

export function decodeShmemRequest(payload: Buffer): ShmemRequest | null {
  if (payload.length !== 40) return null;
  return {
    shmid: payload.readUInt8(0),
    fdOffset: Number(payload.readBigUInt64LE(8)),
    shmOffset: Number(payload.readBigUInt64LE(16)),
    len: Number(payload.readBigUInt64LE(24)),
    flags: payload.readBigUInt64LE(32),
  };
}

export class DaxWindowFrontend {
  readonly window: ArrayBuffer;
  readonly maps: LiveMap[] = [];
  readonly log: { type: number; req: ShmemRequest | null; ack: number }[] = [];

  constructor(readonly size: number) {
    this.window = native.mmapReserve(size);
  }

  /** Handles one backend request; returns the ack value (0 = done, 1 = refused). Closes fd. */
  handle(type: number, payload: Buffer, fd?: number): number {
    const req = decodeShmemRequest(payload);
    let ack = ACK_REFUSED;
    try {
      if (req !== null && type === SHMEM_MAP) ack = this.#map(req, fd);
      else if (req !== null && type === SHMEM_UNMAP) ack = this.#unmap(req);
    } finally {
      if (fd !== undefined) native.closeQuietly(fd);
    }
    this.log.push({ type, req, ack });
    return ack;
  }

  /** Bytes of the window, for ranges known to be mapped. */
  read(offset: number, len: number): Buffer {
    return Buffer.from(this.window, offset, len);
  }

  /** Device reset: every mapping goes. */
  reset(): void {
    for (const m of this.maps.splice(0)) native.mmapFixed(this.window, m.shmOffset, m.len, -1, 0);
  }

  close(): void {
    native.munmap(this.window);
  }

  #valid(r: ShmemRequest): boolean {
    const page = native.PAGE_SIZE;
    return r.shmid === 0 && r.len > 0 && r.shmOffset % page === 0 && r.fdOffset % page === 0 && r.len % page === 0 && r.shmOffset + r.len <= this.size;
  }

  #map(r: ShmemRequest, fd?: number): number {
    if (fd === undefined || !this.#valid(r)) return ACK_REFUSED;
    if (this.maps.some((m) => m.shmOffset < r.shmOffset + r.len && r.shmOffset < m.shmOffset + m.len)) return ACK_REFUSED;
    native.mmapFixed(this.window, r.shmOffset, r.len, fd, r.fdOffset);
    this.maps.push({ shmOffset: r.shmOffset, len: r.len, fdOffset: r.fdOffset });
    return ACK_OK;
  }

  #unmap(r: ShmemRequest): number {
    const at = this.maps.findIndex((m) => m.shmOffset === r.shmOffset && m.len === r.len);
    if (at < 0 || !this.#valid(r)) return ACK_REFUSED;
    native.mmapFixed(this.window, r.shmOffset, r.len, -1, 0);
    this.maps.splice(at, 1);
    return ACK_OK;
  }
}
