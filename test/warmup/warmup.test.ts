/**
 * The start-up warm-up runs real requests through the real request path over the
 * served closure: every reply is checked inside it, so these tests check that it
 * completes over a real Nix store, finds what it needs, and leaves nothing behind.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { nixFixture } from '../fixtures/nix/store';
import { warmUp } from '../../src/warmup';
import { SelfRing } from '../../src/warmup/self-ring';
import { SelfClient } from '../../src/warmup/self-client';
import { FuseServer } from '../../src/fuse';
import { ClosureView } from '../../src/store';

const openFds = (): number => fs.readdirSync('/proc/self/fd').length;
const base = (p: string): string => path.basename(p);

describe('warmUp', () => {
  const fixture = nixFixture();
  const paths = fixture.closure.map(base);

  test.each(['always', 'auto', 'never'] as const)('completes every round over the Nix fixture (cache=%s)', (cache) => {
    const r = warmUp({ storeDir: fixture.storeDir, paths, cache, rounds: 300, budgetMs: 60_000 });
    expect(r.rounds).toBe(300);
    expect(r.foundFile).toBe(true);
    // Each round is at least a dozen requests once a file was found.
    expect(r.requests).toBeGreaterThan(300 * 12);
  });

  test('closes every fd and mapping it opened', () => {
    warmUp({ storeDir: fixture.storeDir, paths, rounds: 50 }); // first use loads modules and caches
    const before = openFds();
    warmUp({ storeDir: fixture.storeDir, paths, rounds: 200 });
    expect(openFds()).toBe(before);
  });

  test('a closure without a regular file still warms what it can', () => {
    const symlinkOnly = [base(fixture.paths.symlinkPath)];
    const r = warmUp({ storeDir: fixture.storeDir, paths: symlinkOnly, rounds: 20 });
    expect(r.foundFile).toBe(false);
    expect(r.rounds).toBe(20);
  });

  test('stops at its time budget', () => {
    const r = warmUp({ storeDir: fixture.storeDir, paths, rounds: 1e9, budgetMs: 50 });
    expect(r.rounds).toBeLessThan(1e9);
    expect(r.ms).toBeGreaterThanOrEqual(50);
  });
});

describe('SelfRing and SelfClient', () => {
  const fixture = nixFixture();

  test('replies arrive through the ring byte for byte: a READ returns the file', () => {
    const view = new ClosureView({ storeDir: fixture.storeDir, paths: fixture.closure.map(base) });
    const ring = new SelfRing(new FuseServer(view));
    try {
      const client = new SelfClient(ring);
      client.init();
      const top = client.lookup(1, Buffer.from(base(fixture.paths.singleFile)));
      expect(top).toBeDefined();
      const fh = client.open(top as number);
      const want = fs.readFileSync(path.join(fixture.storeDir, base(fixture.paths.singleFile)));
      const r = ring.request(readRequest(top as number, fh, want.length + 100), 40, want.length + 100);
      expect(r.error).toBe(0);
      expect(Buffer.from(r.payload)).toEqual(want);
      client.release(top as number, fh);
    } finally {
      ring.close();
      view.close();
    }
  });

  test('an unexpected errno stops the warm-up with an error that names the request', () => {
    const view = new ClosureView({ storeDir: fixture.storeDir, paths: fixture.closure.map(base) });
    const ring = new SelfRing(new FuseServer(view));
    try {
      const client = new SelfClient(ring);
      client.init();
      expect(() => client.getattr(999_999)).toThrow(/warm-up request 3 got error -2/);
    } finally {
      ring.close();
      view.close();
    }
  });
});

/** A FUSE READ request (fuse_in_header + fuse_read_in) as the guest encodes it. */
function readRequest(nodeid: number, fh: number, size: number): Buffer {
  const b = Buffer.alloc(40 + 40);
  b.writeUInt32LE(b.length, 0);
  b.writeUInt32LE(15, 4); // FUSE_READ
  b.writeBigUInt64LE(99n, 8);
  b.writeBigUInt64LE(BigInt(nodeid), 16);
  b.writeBigUInt64LE(BigInt(fh), 40);
  b.writeBigUInt64LE(0n, 48);
  b.writeUInt32LE(size, 56);
  return b;
}
