/**
 * The descriptor-chain walker, one test per rule of VIRTIO 1.2 §2.7.4-2.7.5.
 * Negative tests are named after the requirement they cover.
 */
import fc from 'fast-check';
import { descriptorTable, walkChain } from '../../src/virtio/chain';
import { DescriptorChainError, type ChainRule } from '../../src/virtio/errors';
import { INDIRECT, NEXT, RingFixture, WRITE } from '../harness/ring-fixture';

function expectRule(f: () => unknown, rule: ChainRule): DescriptorChainError {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(DescriptorChainError);
    expect((e as DescriptorChainError).code).toBe('CFS_ERR_DESCRIPTOR_CHAIN');
    expect((e as DescriptorChainError).rule).toBe(rule);
    return e as DescriptorChainError;
  }
  throw new Error(`expected a DescriptorChainError (${rule})`);
}

describe('walkChain', () => {
  let f: RingFixture;
  const walk = (head: number) => walkChain(f.memory, descriptorTable(f.memory.slice(f.driver.desc, 16 * 16)), 16, head);
  beforeEach(() => (f = new RingFixture(16)));
  afterEach(() => f.close());

  it('returns readable then writable views, in chain order, over guest memory', () => {
    const a = f.put('head');
    const b = f.put('body!');
    const w = f.ram.alloc(32);
    f.table([
      [3, { addr: a, len: 4, flags: NEXT, next: 7 }],
      [7, { addr: b, len: 5, flags: NEXT, next: 0 }],
      [0, { addr: w, len: 32, flags: WRITE, next: 0 }],
    ]);
    const c = walk(3);
    expect(c.head).toBe(3);
    expect(c.readable.map((x) => x.toString())).toEqual(['head', 'body!']);
    expect(c.readableBytes).toBe(9);
    expect(c.writableBytes).toBe(32);
    c.writable[0].write('reply');
    expect(f.ram.view(w, 5).toString()).toBe('reply');
  });

  it('follows an indirect table, and the WRITE flag of the INDIRECT descriptor itself is ignored', () => {
    const t = f.indirectTable([
      { addr: f.put('req'), len: 3, flags: NEXT, next: 1 },
      { addr: f.ram.alloc(8), len: 8, flags: WRITE, next: 0 },
    ]);
    f.table([[5, { addr: t, len: 32, flags: INDIRECT | WRITE, next: 0 }]]);
    const c = walk(5);
    expect(c.readable.map((x) => x.toString())).toEqual(['req']);
    expect(c.writableBytes).toBe(8);
  });

  it('handles normal chained descriptors followed by a single INDIRECT descriptor (§2.7.5.3.2)', () => {
    const t = f.indirectTable([{ addr: f.ram.alloc(4), len: 4, flags: WRITE, next: 0 }]);
    f.table([
      [0, { addr: f.put('direct'), len: 6, flags: NEXT, next: 1 }],
      [1, { addr: t, len: 16, flags: INDIRECT, next: 0 }],
    ]);
    const c = walk(0);
    expect(c.readableBytes).toBe(6);
    expect(c.writableBytes).toBe(4);
  });

  it('descriptors that continue one another come back as one view; a gap or a change of side ends it', () => {
    const w = f.ram.alloc(96, 16);
    f.table([
      [0, { addr: w, len: 8, flags: NEXT, next: 1 }],
      [1, { addr: w + 8, len: 8, flags: NEXT, next: 2 }], // continues the readable run
      [2, { addr: w + 16, len: 16, flags: WRITE | NEXT, next: 3 }], // adjacent, but device-writable: a new view
      [3, { addr: w + 32, len: 0, flags: WRITE | NEXT, next: 4 }], // empty: no view, and no break
      [4, { addr: w + 32, len: 16, flags: WRITE | NEXT, next: 5 }],
      [5, { addr: w + 64, len: 32, flags: WRITE, next: 0 }], // a gap: a new view
    ]);
    const c = walk(0);
    expect(c.readable.map((b) => b.length)).toEqual([16]);
    expect(c.writable.map((b) => b.length)).toEqual([32, 32]);
    expect([c.readableBytes, c.writableBytes]).toEqual([16, 64]);
    c.writable[0].fill(0xaa);
    c.writable[1].fill(0xbb);
    expect(f.ram.view(w + 16, 80).toString('hex')).toBe('aa'.repeat(32) + '00'.repeat(16) + 'bb'.repeat(32));
  });

  it('runs never merge across regions, even when their GPAs are contiguous; a buffer crossing them is split', () => {
    const two = new RingFixture(4, [
      { gpa: 0, size: 1 << 20 },
      { gpa: 1 << 20, size: 1 << 20 },
    ]);
    try {
      const end = 1 << 20;
      two.table([
        [0, { addr: end - 8, len: 8, flags: WRITE | NEXT, next: 1 }],
        [1, { addr: end, len: 8, flags: WRITE | NEXT, next: 2 }],
        [2, { addr: end - 4, len: 8, flags: WRITE, next: 0 }],
      ]);
      const c = walkChain(two.memory, descriptorTable(two.memory.slice(two.driver.desc, 64)), 4, 0);
      expect(c.writable.map((b) => b.length)).toEqual([8, 8, 4, 4]);
      expect(c.writable[1].buffer).not.toBe(c.writable[0].buffer);
    } finally {
      two.close();
    }
  });

  it('accepts zero-length descriptors', () => {
    f.table([[0, { addr: 0, len: 0, flags: WRITE, next: 0 }]]);
    expect(walk(0).writable).toHaveLength(0);
  });

  it('"MUST NOT create a descriptor chain longer than the Queue Size": a NEXT loop is refused', () => {
    f.table([
      [0, { addr: f.put('x'), len: 1, flags: NEXT, next: 1 }],
      [1, { addr: f.put('y'), len: 1, flags: NEXT, next: 0 }],
    ]);
    expect(expectRule(() => walk(0), 'loop').message).toMatch(/loop/);
  });

  it('a loop inside an indirect table is refused too', () => {
    const t = f.indirectTable([{ addr: f.put('x'), len: 1, flags: NEXT, next: 0 }]);
    f.table([[0, { addr: t, len: 16, flags: INDIRECT, next: 0 }]]);
    expectRule(() => walk(0), 'loop');
  });

  it('a next index outside the descriptor table is refused', () => {
    f.table([[0, { addr: f.put('x'), len: 1, flags: NEXT, next: 16 }]]);
    expectRule(() => walk(0), 'index-out-of-range');
  });

  it('a next index outside the indirect table is refused', () => {
    const t = f.indirectTable([{ addr: f.put('x'), len: 1, flags: NEXT, next: 1 }]);
    f.table([[0, { addr: t, len: 16, flags: INDIRECT, next: 0 }]]);
    expectRule(() => walk(0), 'index-out-of-range');
  });

  it('a buffer outside guest memory is refused', () => {
    f.table([[0, { addr: (1 << 20) - 2, len: 4, flags: 0, next: 0 }]]);
    expect(expectRule(() => walk(0), 'address').message).toMatch(/not mapped/);
    f.table([[0, { addr: 2 ** 60, len: 4, flags: 0, next: 0 }]]);
    expect(expectRule(() => walk(0), 'address').message).toMatch(/beyond 2\^53/);
  });

  it('"MUST place any device-writable descriptor elements after any device-readable": writable-before-readable is refused', () => {
    f.table([
      [0, { addr: f.ram.alloc(4), len: 4, flags: WRITE | NEXT, next: 1 }],
      [1, { addr: f.put('late'), len: 4, flags: 0, next: 0 }],
    ]);
    expectRule(() => walk(0), 'writable-before-readable');
  });

  it('even a zero-length writable descriptor may not precede a readable one', () => {
    f.table([
      [0, { addr: 0, len: 0, flags: WRITE | NEXT, next: 1 }],
      [1, { addr: f.put('late'), len: 4, flags: 0, next: 0 }],
    ]);
    expectRule(() => walk(0), 'writable-before-readable');
  });

  it('"MUST NOT set both VIRTQ_DESC_F_INDIRECT and VIRTQ_DESC_F_NEXT" is enforced', () => {
    const t = f.indirectTable([{ addr: f.put('x'), len: 1, flags: 0, next: 0 }]);
    f.table([[0, { addr: t, len: 16, flags: INDIRECT | NEXT, next: 1 }]]);
    expectRule(() => walk(0), 'indirect-with-next');
  });

  it('"MUST NOT set the VIRTQ_DESC_F_INDIRECT flag within an indirect descriptor": nested indirect is refused', () => {
    const inner = f.indirectTable([{ addr: f.put('x'), len: 1, flags: 0, next: 0 }]);
    const outer = f.indirectTable([{ addr: inner, len: 16, flags: INDIRECT, next: 0 }]);
    f.table([[0, { addr: outer, len: 16, flags: INDIRECT, next: 0 }]]);
    expectRule(() => walk(0), 'nested-indirect');
  });

  it.each([0, 8, 24, 17])('an indirect table of length %i (not a nonzero multiple of 16) is refused', (len) => {
    const t = f.indirectTable([{ addr: f.put('x'), len: 1, flags: 0, next: 0 }, { addr: 0, len: 0, flags: 0, next: 0 }]);
    f.table([[0, { addr: t, len, flags: INDIRECT, next: 0 }]]);
    expectRule(() => walk(0), 'indirect-length');
  });

  it('an indirect table outside guest memory is refused', () => {
    f.table([[0, { addr: 0x4000_0000, len: 32, flags: INDIRECT, next: 0 }]]);
    expectRule(() => walk(0), 'address');
  });

  it('"MUST NOT add a descriptor chain longer than 2^32 bytes in total" is enforced', () => {
    const big = new RingFixture(4, [{ gpa: 0, size: 2 ** 32 }]); // sparse memfd: only touched pages cost memory
    try {
      big.table([
        [0, { addr: 0x1000_0000, len: 0xc000_0000, flags: NEXT, next: 1 }],
        [1, { addr: 0, len: 0x4000_0000, flags: WRITE, next: 0 }],
      ]);
      expectRule(() => walkChain(big.memory, descriptorTable(big.memory.slice(big.driver.desc, 64)), 4, 0), 'length-overflow');
    } finally {
      big.close();
    }
  });

  it('property: any descriptor table either yields views inside guest memory or a DescriptorChainError', () => {
    const desc = fc.record({
      addr: fc.oneof(fc.integer({ min: 0, max: (1 << 20) + 64 }), fc.constant(2 ** 60)),
      len: fc.oneof(fc.integer({ min: 0, max: 64 }), fc.constant(0xffff_ffff), fc.constantFrom(16, 32, 48)),
      flags: fc.integer({ min: 0, max: 7 }),
      next: fc.integer({ min: 0, max: 20 }),
    });
    fc.assert(
      fc.property(fc.array(desc, { minLength: 16, maxLength: 16 }), fc.integer({ min: 0, max: 15 }), (descs, head) => {
        f.table(descs.map((d, i) => [i, d]));
        try {
          const c = walk(head);
          const total = [...c.readable, ...c.writable].reduce((n, b) => n + b.length, 0);
          expect(total).toBe(c.readableBytes + c.writableBytes);
        } catch (e) {
          if (!(e instanceof DescriptorChainError)) throw e;
        }
      }),
      { numRuns: 300 },
    );
  });
});
