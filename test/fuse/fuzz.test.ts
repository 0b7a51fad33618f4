/**
 * Guest bytes never throw out of handle(): whatever arrives, the answer is 0 (no
 * reply) or a well-formed reply that fits the writable buffers. Against NullFs
 * (every op ENOSYS, as crosvm's fuzz target) and against a real ClosureView.
 */
import fc from 'fast-check';
import { FileSystem, FuseServer, InHeader, Opcode, OutHeader } from '../../src/fuse';
import { ClosureView } from '../../src/store/view';
import { FuseClient, encode, inProcessTransport } from '../harness/fuse-client';
import { makeFakeStore, type FakeStore } from '../store/fake-store';

class NullFs extends FileSystem {}

/**
 * Collects error-level logs: guest input must never reach the "FileSystem bug" path.
 * The one exception is a FORGET whose count exceeds the lookups, which the node table
 * reports as a broken invariant (it cannot tell the guest's miscount from its own).
 */
function bugCollector() {
  const bugs: unknown[] = [];
  const logger = {
    debug() {},
    warn() {},
    error(obj: object) {
      const op = (obj as { opcode?: string }).opcode;
      if (op !== 'FORGET' && op !== 'BATCH_FORGET') bugs.push(obj);
    },
  };
  return { bugs, logger };
}

const NO_REPLY = new Set<number>([Opcode.FORGET, Opcode.BATCH_FORGET, Opcode.INTERRUPT]);

/** Checks one handle() call's result against the bytes it wrote. */
function checkReply(server: FuseServer, readable: Buffer[], writableSizes: number[]): void {
  const writable = writableSizes.map((n) => Buffer.alloc(n));
  const used = server.handle(1, { readable, writable });
  const room = writableSizes.reduce((a, b) => a + b, 0);
  expect(Number.isInteger(used)).toBe(true);
  expect(used === 0 || (used >= OutHeader.SIZE && used <= room)).toBe(true);
  const all = Buffer.concat(readable);
  const opcode = all.length >= 8 ? all.readUInt32LE(4) : -1;
  if (all.length >= InHeader.SIZE && NO_REPLY.has(opcode) && all.readUInt32LE(0) === all.length) expect(used).toBe(0);
  if (used === 0) return;
  const out = OutHeader.decode(Buffer.concat(writable), 0);
  expect(out.len).toBe(used);
  expect(out.error).toBeLessThanOrEqual(0);
  expect(out.error).toBeGreaterThan(-4096);
  if (out.error < 0) expect(used).toBe(OutHeader.SIZE);
  if (all.length >= InHeader.SIZE && all.readUInt32LE(0) === all.length) expect(out.unique).toBe(all.readBigUInt64LE(8));
}

/** A chunking of bytes into 1..4 readable buffers. */
const chunked = (bytes: fc.Arbitrary<Uint8Array>) =>
  fc.tuple(bytes, fc.array(fc.nat(), { maxLength: 3 })).map(([b, cuts]) => {
    const buf = Buffer.from(b);
    const points = cuts.map((c) => c % (buf.length + 1)).sort((x, y) => x - y);
    const out: Buffer[] = [];
    let at = 0;
    for (const p of points) {
      out.push(buf.subarray(at, p));
      at = p;
    }
    out.push(buf.subarray(at));
    return out;
  });

const writableSizes = fc.array(fc.integer({ min: 0, max: 300 }), { minLength: 0, maxLength: 3 });

/** A header whose len matches, with a random opcode and nodeid, and a random body. */
const wellFramed = fc
  .record({
    opcode: fc.oneof(fc.integer({ min: 0, max: 55 }), fc.integer({ min: 0, max: 0xffffffff })),
    nodeid: fc.oneof(fc.integer({ min: 0, max: 40 }), fc.maxSafeNat()),
    unique: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
    body: fc.uint8Array({ maxLength: 200 }),
  })
  .map(({ opcode, nodeid, unique, body }) => {
    const h = encode(InHeader, { len: InHeader.SIZE + body.length, opcode, unique, nodeid, uid: 0, gid: 0, pid: 1, totalExtlen: 0 });
    return Buffer.concat([h, Buffer.from(body)]);
  });

describe('fuzz: NullFs', () => {
  const { bugs, logger } = bugCollector();
  const server = new FuseServer(new NullFs(), { logger });
  afterAll(() => expect(bugs).toEqual([]));
  beforeAll(async () => {
    await new FuseClient(inProcessTransport(server)).init();
  });

  test('random bytes', () => {
    fc.assert(fc.property(chunked(fc.uint8Array({ maxLength: 120 })), writableSizes, (r, w) => checkReply(server, r, w)), { numRuns: 1500 });
  });

  test('well-framed requests with random opcodes and bodies', () => {
    fc.assert(fc.property(chunked(wellFramed.map((b) => new Uint8Array(b))), writableSizes, (r, w) => checkReply(server, r, w)), { numRuns: 1500 });
  });
});

describe('fuzz: ClosureView', () => {
  let store: FakeStore;
  let view: ClosureView;
  let server: FuseServer;
  const { bugs, logger } = bugCollector();
  beforeAll(async () => {
    store = makeFakeStore(10);
    view = new ClosureView({ storeDir: store.storeDir, paths: store.closure, maxHandles: 8 });
    server = new FuseServer(view, { logger });
    const client = new FuseClient(inProcessTransport(server));
    await client.init();
    // Give the fuzzer live nodeids and handles to hit.
    const app = await client.lookup(1, store.names.app);
    await client.lookup(app.nodeid, 'bin');
    await client.opendir(app.nodeid);
    await client.open((await client.walk(`${store.names.app}/share/doc.txt`)).nodeid);
  });
  afterAll(() => {
    expect(bugs).toEqual([]);
    view.close();
    store.cleanup();
  });

  test('well-framed requests never throw and never leave the store', () => {
    fc.assert(fc.property(chunked(wellFramed.map((b) => new Uint8Array(b))), writableSizes, (r, w) => checkReply(server, r, w)), { numRuns: 1500 });
    expect(view.counts.handles).toBeLessThanOrEqual(8);
  });

  test('a names-focused LOOKUP fuzz on live directories', () => {
    const name = fc.oneof(
      fc.constantFrom('..', '.', '...', '.links', 'bin', 'share', '\u00ff', 'a'.repeat(255)),
      fc.uint8Array({ minLength: 0, maxLength: 40 }).map((b) => Buffer.from(b).toString('latin1')),
    );
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 6 }), name, fc.boolean(), (nodeid, n, nul) => {
        const body = Buffer.concat([Buffer.from(n, 'latin1'), nul ? Buffer.of(0) : Buffer.alloc(0)]);
        const h = encode(InHeader, { len: 40 + body.length, opcode: Opcode.LOOKUP, unique: 1n, nodeid, uid: 0, gid: 0, pid: 1, totalExtlen: 0 });
        checkReply(server, [h, body], [16, 128]);
      }),
      { numRuns: 1000 },
    );
  });
});
