import { fstatSync } from 'node:fs';
import * as native from '../../src/native';
import { GuestMemory } from '../../src/virtio/guest-memory';
import { GuestMemoryError, MemoryTableError } from '../../src/virtio/errors';

const MiB = 1 << 20;
const VA = 0x7f00_0000_0000;

/** A memfd of `size` bytes and a writable frontend-side mapping of it. */
function memfd(size: number): { fd: number; view: Buffer; dup: () => number; close: () => void } {
  const fd = native.memfdCreate('gm-test', size);
  const ab = native.mmap(fd, size, 0, { shared: true, writable: true });
  return { fd, view: Buffer.from(ab), dup: () => native.dup(fd), close: () => (native.munmap(ab), native.closeQuietly(fd)) };
}

describe('GuestMemory', () => {
  let m: ReturnType<typeof memfd>;
  let gm: GuestMemory;
  beforeEach(() => {
    m = memfd(4 * MiB);
    gm = new GuestMemory({ maxRegions: 4 });
  });
  afterEach(() => {
    gm.close();
    m.close();
  });

  it('translates GPAs and frontend addresses to views that share bytes with the memfd', () => {
    gm.add({ guestPhysAddr: 0x1000_0000, size: 2 * MiB, userAddr: VA, mmapOffset: 0 }, m.dup());
    m.view.write('guest bytes', 0x1234);
    expect(gm.slice(0x1000_1234, 11).toString()).toBe('guest bytes');
    expect(gm.sliceFrontend(VA + 0x1234, 11).toString()).toBe('guest bytes');
    gm.slice(0x1000_2000, 4).write('back');
    expect(m.view.subarray(0x2000, 0x2004).toString()).toBe('back');
  });

  it('maps a region whose mmap offset is not page-aligned', () => {
    gm.add({ guestPhysAddr: 0, size: MiB, userAddr: VA, mmapOffset: 0x1100 }, m.dup());
    m.view.write('offset', 0x1100 + 0x10);
    expect(gm.slice(0x10, 6).toString()).toBe('offset');
  });

  it('refuses a range that crosses the end of its region', () => {
    gm.add({ guestPhysAddr: 0, size: MiB, userAddr: VA, mmapOffset: 0 }, m.dup());
    expect(() => gm.slice(MiB - 4, 8)).toThrow(GuestMemoryError);
    expect(() => gm.slice(MiB, 1)).toThrow(/not mapped/);
    expect(() => gm.slice(2 ** 53, 1)).toThrow(GuestMemoryError);
    try {
      gm.slice(MiB - 4, 8);
    } catch (e) {
      expect((e as GuestMemoryError).code).toBe('CFS_ERR_GUEST_MEMORY');
    }
  });

  it('splits a descriptor buffer across regions contiguous in GPA, and refuses a gap', () => {
    gm.add({ guestPhysAddr: 0, size: MiB, userAddr: VA, mmapOffset: 0 }, m.dup());
    gm.add({ guestPhysAddr: MiB, size: MiB, userAddr: VA + 2 * MiB, mmapOffset: 2 * MiB }, m.dup());
    m.view.write('AB', MiB - 1);
    m.view.write('CD', 2 * MiB);
    const out: Buffer[] = [];
    gm.slices(MiB - 2, 4, out);
    expect(out.map((b) => b.length)).toEqual([2, 2]);
    expect(Buffer.concat(out).toString('latin1')).toBe('\0ACD');
    expect(() => gm.slices(2 * MiB - 2, 4, [])).toThrow(/not mapped/);
  });

  it('rejects regions that overlap in GPA or in frontend addresses', () => {
    gm.add({ guestPhysAddr: 0, size: MiB, userAddr: VA, mmapOffset: 0 }, m.dup());
    expect(() => gm.add({ guestPhysAddr: MiB - 4096, size: MiB, userAddr: VA + 4 * MiB, mmapOffset: 0 }, m.dup())).toThrow(MemoryTableError);
    expect(() => gm.add({ guestPhysAddr: 8 * MiB, size: MiB, userAddr: VA + 4096, mmapOffset: 0 }, m.dup())).toThrow(/frontend address .* overlaps/);
    expect(gm.regions).toHaveLength(1);
  });

  it('rejects regions that wrap or end beyond 2^53, and empty ones', () => {
    expect(() => gm.add({ guestPhysAddr: 2 ** 53 - 4096, size: 8192, userAddr: VA, mmapOffset: 0 }, m.dup())).toThrow(/wraps or ends beyond 2\^53/);
    expect(() => gm.add({ guestPhysAddr: 0, size: 0, userAddr: VA, mmapOffset: 0 }, m.dup())).toThrow(/size 0/);
    expect(() => gm.add({ guestPhysAddr: 2 ** 64, size: 4096, userAddr: VA, mmapOffset: 0 }, m.dup())).toThrow(MemoryTableError);
  });

  it('closes the fd it was given when it refuses a region', () => {
    const fd = m.dup();
    expect(() => gm.add({ guestPhysAddr: 0, size: 0, userAddr: VA, mmapOffset: 0 }, fd)).toThrow();
    expect(() => fstatSync(fd)).toThrow(/EBADF/);
  });

  it('enforces the slot limit', () => {
    for (let i = 0; i < 4; i++) gm.add({ guestPhysAddr: i * MiB, size: MiB, userAddr: VA + i * MiB, mmapOffset: 0 }, m.dup());
    expect(() => gm.add({ guestPhysAddr: 8 * MiB, size: MiB, userAddr: VA + 8 * MiB, mmapOffset: 0 }, m.dup())).toThrow(/no free memory slot/);
  });

  it('remove() unmaps: old views read as empty and the fd is closed', () => {
    const fd = m.dup();
    gm.add({ guestPhysAddr: 0, size: MiB, userAddr: VA, mmapOffset: 0 }, fd);
    const v = gm.slice(0, 16);
    expect(gm.remove(0, MiB)).toBe(true);
    expect(v.length).toBe(0);
    expect(() => fstatSync(fd)).toThrow(/EBADF/);
    expect(gm.remove(0, MiB)).toBe(false);
    expect(() => gm.slice(0, 1)).toThrow(GuestMemoryError);
  });

  it('replace() is all or nothing: a bad table leaves the old one and closes the new fds', () => {
    gm.add({ guestPhysAddr: 0, size: MiB, userAddr: VA, mmapOffset: 0 }, m.dup());
    const a = m.dup();
    const b = m.dup();
    expect(() =>
      gm.replace([
        { desc: { guestPhysAddr: 0, size: 2 * MiB, userAddr: VA, mmapOffset: 0 }, fd: a },
        { desc: { guestPhysAddr: MiB, size: MiB, userAddr: VA + 4 * MiB, mmapOffset: 0 }, fd: b },
      ]),
    ).toThrow(/overlaps/);
    expect(() => fstatSync(a)).toThrow(/EBADF/);
    expect(() => fstatSync(b)).toThrow(/EBADF/);
    expect(gm.regions.map((r) => r.size)).toEqual([MiB]);
    gm.replace([{ desc: { guestPhysAddr: 0x4000_0000, size: 2 * MiB, userAddr: VA, mmapOffset: 0 }, fd: m.dup() }]);
    expect(gm.regions.map((r) => r.guestPhysAddr)).toEqual([0x4000_0000]);
  });
});
