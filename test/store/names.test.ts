/**
 * The name cache answers only for the (directory, name) it was told about: a hash
 * collision, another directory or a different name is a miss, never another entry.
 */
import fc from 'fast-check';
import { NameCache, nameHash } from '../../src/store/names';

const b = (s: string): Buffer => Buffer.from(s, 'latin1');

/** Two names whose hashes collide in directory `dir`, found by brute force (birthday bound: ~2^15 tries). */
function collision(dir: number): [string, string] {
  const seen = new Map<number, string>();
  for (let i = 0; ; i++) {
    const name = `n${i}`;
    const h = nameHash(dir, b(name));
    const other = seen.get(h);
    if (other !== undefined) return [other, name];
    seen.set(h, name);
  }
}

describe('NameCache', () => {
  it('answers what was set, for that directory and those bytes only', () => {
    const c = new NameCache(16);
    c.set(7, b('bin'), 'bin', 42);
    expect(c.get(7, b('bin'))).toBe(42);
    expect(c.get(8, b('bin'))).toBeUndefined();
    expect(c.get(7, b('bi'))).toBeUndefined();
    expect(c.get(7, b('bin\0'))).toBeUndefined();
  });

  it('keeps bytes above 0x7f exact (names are latin1 strings, one char per byte)', () => {
    const c = new NameCache(16);
    const name = Buffer.from([0xc3, 0xa9, 0xff, 0x80]);
    c.set(1, name, name.toString('latin1'), 5);
    expect(c.get(1, Buffer.from(name))).toBe(5);
    expect(c.get(1, Buffer.from([0xc3, 0xa9, 0xff, 0x81]))).toBeUndefined();
  });

  it('a hash collision reads as a miss, not as the other entry', () => {
    const [x, y] = collision(3);
    expect(nameHash(3, b(x))).toBe(nameHash(3, b(y)));
    const c = new NameCache(16);
    c.set(3, b(x), x, 100);
    expect(c.get(3, b(y))).toBeUndefined();
    c.set(3, b(y), y, 200); // takes the slot
    expect(c.get(3, b(y))).toBe(200);
    expect(c.get(3, b(x))).toBeUndefined();
  });

  it('hashes stay small integers for any nodeid a view hands out', () => {
    fc.assert(
      fc.property(fc.nat({ max: 2 ** 32 - 1 }), fc.uint8Array({ maxLength: 255 }), (dir, bytes) => {
        const h = nameHash(dir, Buffer.from(bytes));
        return Number.isInteger(h) && h >= 0 && h < 2 ** 30;
      }),
    );
  });

  it('never answers with an inode number set for another (directory, name)', () => {
    const entry = fc.record({ dir: fc.integer({ min: 1, max: 4 }), name: fc.string({ minLength: 1, maxLength: 3 }), ino: fc.nat() });
    fc.assert(
      fc.property(fc.array(entry, { maxLength: 60 }), fc.integer({ min: 1, max: 64 }), (entries, capacity) => {
        const c = new NameCache(capacity);
        const last = new Map<string, number>();
        for (const e of entries) {
          c.set(e.dir, b(e.name), b(e.name).toString('latin1'), e.ino);
          last.set(`${e.dir}/${b(e.name).toString('latin1')}`, e.ino);
        }
        expect(c.size).toBeLessThanOrEqual(capacity);
        for (const e of entries) {
          const got = c.get(e.dir, b(e.name));
          if (got !== undefined) expect(got).toBe(last.get(`${e.dir}/${b(e.name).toString('latin1')}`));
        }
      }),
    );
  });
});
