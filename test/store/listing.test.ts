/** The compact listing the view caches: entries come back byte for byte, in order, with their cookies. */
import * as native from '../../src/native';
import { Listing, type NamedEntry } from '../../src/store/listing';

const { DT_DIR, DT_REG, DT_LNK } = native.constants;

const plain = (e: ReturnType<Listing['entry']>) => ({ ...e, name: Buffer.from(e.name) });

describe('Listing', () => {
  test('an empty directory lists . and .. with cookies 1 and 2', () => {
    const l = new Listing(7, 3, []);
    expect(l.length).toBe(2);
    expect(plain(l.entry(0))).toEqual({ name: Buffer.from('.'), ino: 7, type: DT_DIR, off: 1, identity: undefined });
    expect(plain(l.entry(1))).toEqual({ name: Buffer.from('..'), ino: 3, type: DT_DIR, off: 2, identity: undefined });
    expect(l.subdirectories()).toBe(0);
  });

  test('names of any bytes, identities of either kind, in the order given', () => {
    const named: NamedEntry[] = [
      { name: Buffer.from([0xff, 0xfe, 0x80]), ino: 10, type: DT_REG, identity: 123 }, // not UTF-8
      { name: Buffer.from('new\nline'), ino: 11, type: DT_LNK, identity: '259:1:1:2' },
      { name: Buffer.from('x'), ino: 2 ** 40, type: DT_DIR, identity: 2 ** 31 + 5 },
      { name: Buffer.from('ü'.repeat(127)), ino: 13, type: DT_DIR, identity: 0 }, // 254 bytes
    ];
    const l = new Listing(1, 1, named);
    expect(l.length).toBe(6);
    named.forEach((e, i) => expect(plain(l.entry(i + 2))).toEqual({ ...e, off: i + 3 }));
    expect(l.subdirectories()).toBe(2);
  });

  test('a listing with more names than fit in a pooled buffer', () => {
    const named: NamedEntry[] = Array.from({ length: 5000 }, (_, i) => ({ name: Buffer.from(`entry-${i}`), ino: i + 10, type: i % 2 ? DT_DIR : DT_REG, identity: i }));
    const l = new Listing(1, 1, named);
    expect(l.length).toBe(5002);
    for (const i of [0, 1, 2, 4999]) expect(plain(l.entry(i + 2))).toEqual({ ...named[i], off: i + 3 });
    expect(l.subdirectories()).toBe(2500);
  });

  test('entries are made fresh and independent of the input buffers', () => {
    const name = Buffer.from('abc');
    const l = new Listing(1, 1, [{ name, ino: 5, type: DT_REG, identity: 9 }]);
    name.fill(0);
    expect(l.entry(2).name.toString()).toBe('abc');
    expect(l.entry(2)).not.toBe(l.entry(2));
  });
});
