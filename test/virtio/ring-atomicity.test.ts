/**
 * The le16 fields a driver and the device share (avail idx and flags, used_event, used
 * idx and flags, avail_event) change while the other side reads them, so each access
 * must be one 16-bit load or store. Buffer's readUInt16LE/writeUInt16LE go byte by
 * byte: a driver reading used idx while it goes 0x01ff -> 0x0200 can see 0x0100, 255
 * entries backwards, and break the ring; the device reading avail idx the same way can
 * see it 256 ahead and call the driver hostile (a polling benchmark did, once in about
 * 3 million requests).
 */
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import type { RequestHandler } from '../../src/io';
import { NEXT, RingFixture, WRITE } from '../harness/ring-fixture';

const NOTHING: RequestHandler = { handle: () => 0 };

/** One request chain whose descriptors the test reuses: a lone chain per drain. */
function reusableChain(f: RingFixture): number {
  const [r, w] = f.driver.takeDescriptors(2);
  f.table([
    [r, { addr: f.put('request'), len: 7, flags: NEXT, next: w }],
    [w, { addr: f.ram.alloc(16), len: 16, flags: WRITE, next: 0 }],
  ]);
  return r;
}

/** Serves `n` chains one drain each, so used idx moves by one at every publish. */
function serveOneByOne(f: RingFixture, head: number, n: number, eventIdx: boolean): void {
  for (let i = 0; i < n; i++) {
    f.driver.push(head);
    f.driver.publish((f.driver.availIdx - 1) & 0xffff);
    if (eventIdx) f.driver.setUsedEvent(f.driver.usedIdx());
    f.queue.suppressKicks();
    f.queue.drain(NOTHING);
    f.queue.enableKicks();
  }
}

describe('ring fields are read and written whole', () => {
  let f: RingFixture;
  afterEach(() => f.close());

  it.each([true, false])('drain, kick suppression and notification never touch a ring with a byte-wise 16-bit access (EVENT_IDX %p)', (eventIdx) => {
    f = new RingFixture(256);
    f.queue.eventIdx = eventIdx;
    f.driver.eventIdx = eventIdx;
    const head = reusableChain(f);
    const onRing: string[] = [];
    const proto = Buffer.prototype as unknown as Record<string, (this: Buffer, ...a: unknown[]) => unknown>;
    const names = ['readUInt16LE', 'writeUInt16LE', 'readUint16LE', 'writeUint16LE'];
    const originals = names.map((k) => proto[k] as (this: Buffer, ...a: unknown[]) => unknown);
    const spy = (on: boolean): void =>
      names.forEach((k, i) => {
        const orig = originals[i] as (this: Buffer, ...a: unknown[]) => unknown;
        proto[k] = on
          ? function (this: Buffer, ...a: unknown[]) {
              onRing.push(k);
              return orig.apply(this, a);
            }
          : orig;
      });
    try {
      for (let i = 0; i < 300; i++) {
        // The driver's side (the harness) runs unspied; every call while spied is the device's (the handler makes none).
        f.driver.push(head);
        f.driver.publish((f.driver.availIdx - 1) & 0xffff);
        if (eventIdx) f.driver.setUsedEvent(f.driver.usedIdx());
        spy(true);
        expect(f.queue.hasAvailable).toBe(true);
        f.queue.suppressKicks();
        f.queue.drain(NOTHING);
        f.queue.enableKicks();
        spy(false);
      }
    } finally {
      spy(false);
    }
    expect(f.driver.usedIdx()).toBe(300);
    expect(onRing).toEqual([]);
  });

  // A torn store lasts a few instructions, so this catches one only by chance (a byte-wise store went
  // unseen in runs of this length); the test above is the deterministic one. This one checks the
  // outcome with a real concurrent reader, as a guest is.
  it('a second thread watching used idx while the queue publishes never sees it go backwards', async () => {
    f = new RingFixture(256);
    const head = reusableChain(f);
    // [0]: stop flag (main -> worker); [1]: changes the worker has seen so far (worker -> main).
    const shared = new Int32Array(new SharedArrayBuffer(8));
    const usedIdxOffset = f.ram.view(f.driver.used + 2, 2).byteOffset;
    const addon = path.resolve(__dirname, '..', '..', 'build', 'Release', 'closurefs_native.node');
    const watcher = new Worker(
      `const { workerData, parentPort } = require('node:worker_threads');
       const addon = require(workerData.addon);
       const word = new Uint16Array(addon.mmap(workerData.fd, workerData.length, 0, true, false), workerData.offset, 1);
       const shared = new Int32Array(workerData.shared);
       let last = word[0], changes = 0, backwards = 0;
       parentPort.postMessage('ready');
       while (Atomics.load(shared, 0) === 0) {
         const v = word[0];
         if (v !== last) { changes++; Atomics.store(shared, 1, changes); if (((v - last) & 0xffff) > 0x8000) backwards++; last = v; }
       }
       parentPort.postMessage({ changes, backwards });`,
      { eval: true, workerData: { addon, fd: f.ram.fd, length: f.ram.bytes.length, offset: usedIdxOffset, shared: shared.buffer } },
    );
    const result = new Promise<{ changes: number; backwards: number }>((resolve, reject) => {
      watcher.on('message', (m) => m !== 'ready' && resolve(m));
      watcher.on('error', reject);
    });
    await new Promise<void>((resolve) => watcher.once('message', () => resolve()));
    // Until the watcher has seen 2,000 values (it may get little CPU while other suites run), at most 20 s.
    const until = Date.now() + 20_000;
    while (Atomics.load(shared, 1) < 2000 && Date.now() < until) serveOneByOne(f, head, 1024, true);
    Atomics.store(shared, 0, 1);
    const seen = await result;
    await watcher.terminate();
    expect(seen.changes).toBeGreaterThanOrEqual(2000);
    expect(seen.backwards).toBe(0);
  }, 30_000);
});
