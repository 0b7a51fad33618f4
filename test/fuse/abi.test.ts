/**
 * Byte-exact codec tests: each fixture is written out from the struct layout in
 * linux/fuse.h (little-endian), independently of the codec under test.
 */
import fc from 'fast-check';
import {
  getI32,
  getU16,
  getU32,
  putOutHeader,
  putU16,
  putU32,
  writeU64,
  AccessIn,
  Attr,
  AttrOut,
  BatchForgetIn,
  Dirent,
  EntryOut,
  FlushIn,
  ForgetIn,
  ForgetOne,
  GetattrIn,
  GetxattrIn,
  InHeader,
  InitIn,
  InitOut,
  LseekIn,
  LseekOut,
  OpenIn,
  OpenOut,
  OutHeader,
  RequestHeader,
  ReadIn,
  ReleaseIn,
  RemoveMappingIn,
  RemoveMappingOne,
  SetupMappingIn,
  StatfsOut,
  direntplusSize,
  direntSize,
  readU64,
  type Codec,
} from '../../src/fuse/abi';

const hex = (...parts: string[]): string => parts.join('').replace(/\s+/g, '');

function expectCodec<T>(codec: Codec<T>, value: T, fixture: string, decoded: Partial<T> = value): void {
  const buf = Buffer.alloc(codec.SIZE + 8, 0xaa); // poison around the struct
  expect(codec.encode(value, buf, 4)).toBe(codec.SIZE);
  expect(buf.subarray(4, 4 + codec.SIZE).toString('hex')).toBe(fixture);
  expect(buf.subarray(0, 4).toString('hex')).toBe('aaaaaaaa');
  expect(buf.subarray(4 + codec.SIZE).toString('hex')).toBe('aaaaaaaa');
  expect(codec.decode(Buffer.from(fixture, 'hex'), 0)).toEqual(decoded);
  expect(fixture.length / 2).toBe(codec.SIZE);
}

const attr: Attr = {
  ino: 2, size: 0x1000, blocks: 8, atime: 1, mtime: 1, ctime: 1, atimensec: 0, mtimensec: 0, ctimensec: 0,
  mode: 0o100444, nlink: 1, uid: 0, gid: 0, rdev: 0, blksize: 4096, flags: 0,
};
const attrHex = hex(
  '0200000000000000', // ino
  '0010000000000000', // size
  '0800000000000000', // blocks
  '0100000000000000 0100000000000000 0100000000000000', // atime mtime ctime
  '00000000 00000000 00000000', // nsecs
  '24810000', // mode 0100444
  '01000000', // nlink
  '00000000 00000000 00000000', // uid gid rdev
  '00100000', // blksize
  '00000000', // flags
);

describe('FUSE ABI codecs, byte for byte', () => {
  test('fuse_in_header (40)', () => {
    expectCodec(
      InHeader,
      { len: 0x38, opcode: 1, unique: 0x0102030405060708n, nodeid: 1, uid: 1000, gid: 100, pid: 42, totalExtlen: 0 },
      hex('38000000', '01000000', '0807060504030201', '0100000000000000', 'e8030000', '64000000', '2a000000', '0000', '0000'),
    );
  });

  test('fuse_out_header (16): error is a negative errno', () => {
    expectCodec(OutHeader, { len: 16, error: -2, unique: 5n }, hex('10000000', 'feffffff', '0500000000000000'));
  });

  test('the server side of the headers: unique as two halves, echoed byte for byte', () => {
    const bytes = hex('38000000', '01000000', '0807060504030201', '0100000000000000', 'e8030000', '64000000', '2a000000', '0000', '0000');
    expectCodec(RequestHeader, { len: 0x38, opcode: 1, uniqueLo: 0x05060708, uniqueHi: 0x01020304, nodeid: 1, uid: 1000, gid: 100, pid: 42, totalExtlen: 0 }, bytes);
    fc.assert(
      fc.property(fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }), fc.nat({ max: 2 ** 31 }), fc.integer({ min: -4095, max: 0 }), (unique, len, error) => {
        const req = Buffer.alloc(40);
        InHeader.encode({ len: 40, opcode: 1, unique, nodeid: 1, uid: 0, gid: 0, pid: 0, totalExtlen: 0 }, req, 0);
        const h = RequestHeader.decode(req, 0);
        const mine = Buffer.alloc(16);
        putOutHeader(mine, 0, len, error, h.uniqueLo, h.uniqueHi);
        const ref = Buffer.alloc(16);
        OutHeader.encode({ len, error, unique }, ref, 0);
        expect(mine.equals(ref)).toBe(true);
      }),
    );
    const short = Buffer.alloc(20);
    expect(() => putOutHeader(short, 8, 16, 0, 1, 2)).toThrow(RangeError);
    expect(short.equals(Buffer.alloc(20))).toBe(true); // nothing partial was written
  });

  test('fuse_init_in (64) as the Debian 6.1 guest sends it', () => {
    expectCodec(
      InitIn,
      { major: 7, minor: 38, maxReadahead: 0x20000, flags: 0x7bfffffb, flags2: 0xb },
      hex('07000000', '26000000', '00000200', 'fbffff7b', '0b000000', '00'.repeat(44)),
    );
  });

  test('fuse_init_out (64)', () => {
    expectCodec(
      InitOut,
      { major: 7, minor: 38, maxReadahead: 0x20000, flags: 0x40c76011, maxBackground: 64, congestionThreshold: 48, maxWrite: 0x100000, timeGran: 1, maxPages: 256, mapAlignment: 12, flags2: 0 },
      hex('07000000', '26000000', '00000200', '1160c740', '4000', '3000', '00001000', '01000000', '0001', '0c00', '00000000', '00'.repeat(28)),
    );
  });

  test('fuse_attr (88)', () => expectCodec(Attr, attr, attrHex));

  test('fuse_entry_out (128)', () => {
    expectCodec(
      EntryOut,
      { nodeid: 5, generation: 0, entryValid: 86400, attrValid: 86400, entryValidNsec: 0, attrValidNsec: 0, attr },
      hex('0500000000000000', '0000000000000000', '8051010000000000', '8051010000000000', '00000000', '00000000', attrHex),
    );
  });

  test('fuse_attr_out (104)', () => {
    expectCodec(AttrOut, { attrValid: 1, attrValidNsec: 0, attr }, hex('0100000000000000', '00000000', '00000000', attrHex));
  });

  test('fuse_open_in (8) and fuse_open_out (16)', () => {
    expectCodec(OpenIn, { flags: 0x8000, openFlags: 0 }, hex('00800000', '00000000'));
    expectCodec(OpenOut, { fh: 3, openFlags: 2 }, hex('0300000000000000', '02000000', '00000000'));
  });

  test('fuse_read_in (40)', () => {
    expectCodec(
      ReadIn,
      { fh: 7, offset: 0x10000, size: 0x20000, readFlags: 0, lockOwner: 0n, flags: 0x8000 },
      hex('0700000000000000', '0000010000000000', '00000200', '00000000', '0000000000000000', '00800000', '00000000'),
    );
  });

  test('fuse_release_in (24), fuse_flush_in (24)', () => {
    expectCodec(ReleaseIn, { fh: 9, flags: 0, releaseFlags: 1, lockOwner: 0x11n }, hex('0900000000000000', '00000000', '01000000', '1100000000000000'));
    expectCodec(FlushIn, { fh: 9, lockOwner: 0x11n }, hex('0900000000000000', '00000000', '00000000', '1100000000000000'));
  });

  test('forget structs', () => {
    expectCodec(ForgetIn, { nlookup: 3 }, '0300000000000000');
    expectCodec(BatchForgetIn, { count: 2 }, hex('02000000', '00000000'));
    expectCodec(ForgetOne, { nodeid: 0x100000001, nlookup: 1 }, hex('0100000001000000', '0100000000000000'));
  });

  test('getattr, access, getxattr', () => {
    expectCodec(GetattrIn, { getattrFlags: 1, fh: 4 }, hex('01000000', '00000000', '0400000000000000'));
    expectCodec(AccessIn, { mask: 4 }, hex('04000000', '00000000'));
    expectCodec(GetxattrIn, { size: 255 }, hex('ff000000', '00000000'));
  });

  test('fuse_kstatfs (80)', () => {
    expectCodec(
      StatfsOut,
      { blocks: 100, bfree: 0, bavail: 0, files: 42, ffree: 0, bsize: 4096, namelen: 255, frsize: 4096 },
      hex('6400000000000000', '00'.repeat(16), '2a00000000000000', '0000000000000000', '00100000', 'ff000000', '00100000', '00000000', '00'.repeat(24)),
    );
  });

  test('lseek in (24) / out (8)', () => {
    expectCodec(LseekIn, { fh: 1, offset: 4096, whence: 3 }, hex('0100000000000000', '0010000000000000', '03000000', '00000000'));
    expectCodec(LseekOut, { offset: 8192 }, '0020000000000000');
  });

  test('DAX mapping structs', () => {
    expectCodec(
      SetupMappingIn,
      { fh: 0xffffffffffffffffn, foffset: 0x200000n, len: 0x200000n, flags: 2n, moffset: 0x400000n },
      hex('ffffffffffffffff', '0000200000000000', '0000200000000000', '0200000000000000', '0000400000000000'),
    );
    expectCodec(RemoveMappingIn, { count: 2 }, '02000000');
    expectCodec(RemoveMappingOne, { moffset: 0x200000n, len: 0x200000n }, hex('0000200000000000', '0000200000000000'));
  });

  test('fuse_dirent (24 + name, padded to 8)', () => {
    expectCodec(Dirent, { ino: 2, off: 3, namelen: 5, type: 8 }, hex('0200000000000000', '0300000000000000', '05000000', '08000000'));
    expect([direntSize(1), direntSize(8), direntSize(9)]).toEqual([32, 32, 40]);
    expect([direntplusSize(1), direntplusSize(8), direntplusSize(9)]).toEqual([160, 160, 168]);
  });

  test('u64 fields beyond 2^53 decode to Infinity (never a wrong small number)', () => {
    expect(readU64(Buffer.from('ffffffffffffffff', 'hex'), 0)).toBe(Infinity);
    expect(readU64(Buffer.from('ffffffffffff1f00', 'hex'), 0)).toBe(Number.MAX_SAFE_INTEGER);
    expect(readU64(Buffer.from('0000000000002000', 'hex'), 0)).toBe(Infinity);
  });
});

describe('hand-written little-endian fields', () => {
  test('agree with Buffer on every byte pattern, and refuse to reach outside the buffer', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 8, maxLength: 8 }), fc.nat({ max: 4 }), (bytes, off) => {
        const b = Buffer.from(bytes);
        expect(getU32(b, off)).toBe(b.readUInt32LE(off));
        expect(getI32(b, off)).toBe(b.readInt32LE(off));
        expect(getU16(b, off)).toBe(b.readUInt16LE(off));
        const v = b.readUInt32LE(off);
        const w = Buffer.alloc(8);
        putU32(w, off, v);
        putU16(w, 8 - 2, v & 0xffff);
        const ref = Buffer.alloc(8);
        ref.writeUInt32LE(v, off);
        ref.writeUInt16LE(v & 0xffff, 8 - 2);
        expect(w.equals(ref)).toBe(true);
      }),
    );
    fc.assert(
      fc.property(fc.maxSafeNat(), fc.nat({ max: 8 }), (v, off) => {
        const mine = Buffer.alloc(16, 0xaa);
        writeU64(mine, off, v);
        const ref = Buffer.alloc(16, 0xaa);
        ref.writeBigUInt64LE(BigInt(v), off);
        expect(mine.equals(ref)).toBe(true);
        expect(readU64(mine, off)).toBe(v);
      }),
    );
    const w = Buffer.alloc(8);
    putU32(w, 0, -2); // an errno as fuse_out_header.error
    expect(w.readInt32LE(0)).toBe(-2);
    for (const off of [5, -1, 8, NaN]) {
      expect(() => putU32(w, off, 1)).toThrow(RangeError);
      expect(() => getU32(w, off)).toThrow(RangeError);
    }
    expect(() => putU16(w, 7, 1)).toThrow(RangeError);
    expect(() => getU16(w, 7)).toThrow(RangeError);
    expect(() => writeU64(w, 1, 2 ** 40)).toThrow(RangeError);
    expect(w.equals(Buffer.from([0xfe, 0xff, 0xff, 0xff, 0, 0, 0, 0]))).toBe(true); // nothing partial was written
  });
});
