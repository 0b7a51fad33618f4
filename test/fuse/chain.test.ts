import { InHeader, OutHeader, ReadIn } from '../../src/fuse/abi';
import { ChainReader, ChainWriter } from '../../src/fuse/chain';
import { FuseDecodeError, FuseReplyOverflowError } from '../../src/fuse/errno';

function split(buf: Buffer, ...cuts: number[]): Buffer[] {
  const out: Buffer[] = [];
  let at = 0;
  for (const c of cuts) {
    out.push(buf.subarray(at, c));
    at = c;
  }
  out.push(buf.subarray(at));
  return out;
}

describe('ChainReader', () => {
  const header = { len: 80, opcode: 15, unique: 9n, nodeid: 4, uid: 1, gid: 2, pid: 3, totalExtlen: 0 };
  const bytes = Buffer.alloc(80);
  InHeader.encode(header, bytes, 0);
  ReadIn.encode({ fh: 1, offset: 2, size: 3, readFlags: 0, lockOwner: 0n, flags: 0 }, bytes, 40);

  test.each([[[]], [[1]], [[20]], [[39, 40, 41]], [[0, 0, 7, 7, 50]]])('decodes structs however the chain is cut (%j)', (cuts) => {
    const r = new ChainReader(split(bytes, ...cuts));
    expect(r.read(InHeader)).toEqual(header);
    expect(r.read(ReadIn).size).toBe(3);
    expect(r.remaining).toBe(0);
  });

  test('a short request is a FuseDecodeError (EINVAL), not a RangeError', () => {
    const r = new ChainReader([bytes.subarray(0, 60)]);
    r.read(InHeader);
    expect(() => r.read(ReadIn)).toThrow(FuseDecodeError);
  });

  test('the limit bounds reading even when buffers hold more', () => {
    const r = new ChainReader([bytes], 50);
    r.read(InHeader);
    expect(r.remaining).toBe(10);
    expect(() => r.readBytes(11)).toThrow(FuseDecodeError);
    expect(r.readRest().length).toBe(10);
  });

  test('an exhausted reader yields empty reads, not a crash (found by the fuzz test)', () => {
    const r = new ChainReader([bytes.subarray(0, 40)]);
    r.read(InHeader);
    expect(r.readRest().length).toBe(0);
    expect(new ChainReader([]).readRest().length).toBe(0);
  });

  test('readBytes is a view inside one buffer and a copy across buffers', () => {
    const bufs = split(Buffer.from('abcdefgh'), 4);
    const r = new ChainReader(bufs);
    const inside = r.readBytes(2);
    expect(inside.buffer).toBe(bufs[0].buffer);
    expect(r.readBytes(4).toString()).toBe('cdef');
  });
});

describe('ChainWriter', () => {
  test('writes across buffer boundaries and counts bytes', () => {
    const bufs = [Buffer.alloc(5), Buffer.alloc(0), Buffer.alloc(20)];
    const w = new ChainWriter(bufs);
    w.write(OutHeader, { len: 16, error: 0, unique: 0x1122334455667788n });
    w.writeBytes(Buffer.from('xyz'));
    expect(w.bytesWritten).toBe(19);
    expect(Buffer.concat(bufs).subarray(0, 19).toString('hex')).toBe('1000000000000000887766554433221178797a');
  });

  test('views() hands out the guest buffers themselves for zero-copy reads', () => {
    const bufs = [Buffer.alloc(16), Buffer.alloc(3), Buffer.alloc(10)];
    const w = new ChainWriter(bufs, 16);
    const views = w.views(8);
    expect(views.map((v) => v.length)).toEqual([3, 5]);
    expect(views[0].buffer).toBe(bufs[1].buffer);
    views[0].fill(1);
    views[1].fill(2);
    w.advance(8);
    expect(w.bytesWritten).toBe(8);
    expect([...bufs[1], ...bufs[2].subarray(0, 6)]).toEqual([1, 1, 1, 2, 2, 2, 2, 2, 0]);
  });

  test('no write past the writable space', () => {
    const w = new ChainWriter([Buffer.alloc(20)], 16);
    expect(w.available).toBe(4);
    expect(() => w.writeBytes(Buffer.alloc(5))).toThrow(FuseReplyOverflowError);
    expect(() => w.views(5)).toThrow(FuseReplyOverflowError);
    expect(() => w.advance(-1)).toThrow(FuseReplyOverflowError);
    expect(new ChainWriter([Buffer.alloc(4)], 16).available).toBe(0);
  });
});
