/**
 * The start-up warm-up: a LoopbackDriver feeding a real VhostUserSession, FuseServer
 * and ClosureView over a socketpair, and the WarmUp policy on top of it.
 */
import * as fs from 'node:fs';
import { FuseServer } from '../../src/fuse';
import { InHeader, InitIn, Opcode, ReadIn } from '../../src/fuse/abi';
import { ClosureView } from '../../src/store';
import { VhostUserSession } from '../../src/vhost-user';
import { LoopbackDriver, MAX_REPLY_PAGES, type HeaderPlace } from '../../src/warmup/loopback-driver';
import { WarmUp } from '../../src/warmup/warmup';
import { makeFakeStore, type FakeStore } from '../store/fake-store';

let store: FakeStore;
beforeAll(() => (store = makeFakeStore(50)));
afterAll(() => store.cleanup());

const openFds = (): number => fs.readdirSync('/proc/self/fd').length;

/** fds once a READ still out on the pool has landed: guest memory and the file are released after it. */
async function settledFds(want: number): Promise<number> {
  for (let i = 0; i < 200 && openFds() !== want; i++) await new Promise((r) => setTimeout(r, 5));
  return openFds();
}

/** Builds what the daemon builds per frontend, and remembers it. */
function served(
  paths = store.closure,
  cache: 'auto' | 'always' = 'auto',
): { serve: (fd: number) => VhostUserSession; server: () => FuseServer; session: () => VhostUserSession; viewCounts: () => ClosureView['counts'] | null } {
  let server: FuseServer | null = null;
  let session: VhostUserSession | null = null;
  let countsAtClose: ClosureView['counts'] | null = null;
  return {
    serve: (fd) => {
      const view = new ClosureView({ storeDir: store.storeDir, paths });
      server = new FuseServer(view, { cache, zeroMessageOpendir: true, zeroMessageOpen: true });
      session = new VhostUserSession(fd, { numQueues: 2, handler: server });
      session.once('close', () => {
        countsAtClose = view.counts;
        view.close();
      });
      return session;
    },
    server: () => server as FuseServer,
    session: () => session as VhostUserSession,
    viewCounts: () => countsAtClose,
  };
}

/** One FUSE request through a driver slot: in header + args. */
async function call(d: LoopbackDriver, opcode: number, nodeid: number, args: Buffer, pages: number, slot = 0, run = 1, header: HeaderPlace = 'apart'): Promise<{ error: number; length: number }> {
  const len = InHeader.SIZE + args.length;
  const request = d.request(slot);
  InHeader.encode({ len, opcode, unique: BigInt(7 + slot), nodeid, uid: 0, gid: 0, pid: 0, totalExtlen: 0 }, request, 0);
  args.copy(request, InHeader.SIZE);
  return d.submit(slot, len, pages, run, header);
}

function readIn(fh: number, offset: number, size = MAX_REPLY_PAGES * 4096): Buffer {
  const b = Buffer.alloc(ReadIn.SIZE);
  ReadIn.encode({ fh, offset, size, readFlags: 0, lockOwner: 0n, flags: 0 }, b, 0);
  return b;
}

/** INIT, then LOOKUPs down to app/share/large.bin and an OPEN of it. */
async function openLarge(d: LoopbackDriver): Promise<{ file: number; fh: number }> {
  const init = Buffer.alloc(InitIn.SIZE);
  InitIn.encode({ major: 7, minor: 38, maxReadahead: 1 << 17, flags: 0, flags2: 0 }, init, 0);
  expect((await call(d, Opcode.INIT, 0, init, 1)).error).toBe(0);
  const lookup = async (parent: number, name: string): Promise<number> => {
    const r = await call(d, Opcode.LOOKUP, parent, Buffer.from(`${name}\0`), 1);
    expect(r.error).toBe(0);
    return Number(d.replyPage(0, 0).readBigUInt64LE(0));
  };
  const file = await lookup(await lookup(await lookup(1, store.names.app), 'share'), 'large.bin');
  expect((await call(d, Opcode.OPEN, file, Buffer.alloc(8), 1)).error).toBe(0);
  return { file, fh: Number(d.replyPage(0, 0).readBigUInt64LE(0)) };
}

/** Whether every page of a slot's reply holds the file's bytes from `offset` on. */
function landed(d: LoopbackDriver, slot: number, offset: number, pages = MAX_REPLY_PAGES): boolean {
  for (let p = 0; p < pages; p++) {
    if (!d.replyPage(slot, p).equals(store.largeContent.subarray(offset + p * 4096, offset + (p + 1) * 4096))) return false;
  }
  return true;
}

describe('LoopbackDriver', () => {
  test('a session it set up serves a READ into 32 scattered pages: the file bytes land in order', async () => {
    const s = served();
    const d = new LoopbackDriver(s.serve);
    try {
      const { file, fh } = await openLarge(d);
      const offset = 3 * 4096;
      const r = await call(d, Opcode.READ, file, readIn(fh, offset), MAX_REPLY_PAGES);
      expect(r).toEqual({ error: 0, length: MAX_REPLY_PAGES * 4096 });
      expect(landed(d, 0, offset)).toBe(true);
      // An error reply comes back as the negative errno of the out header: opening for writing is EROFS.
      const wr = Buffer.alloc(8);
      wr.writeUInt32LE(fs.constants.O_WRONLY, 0);
      expect((await call(d, Opcode.OPEN, file, wr, 1)).error).toBe(-30);
    } finally {
      d.close();
    }
    expect(s.session().closed).toBe(true);
  });

  test('READs in flight together on several slots, in different page layouts, each land in their own pages', async () => {
    const s = served();
    const d = new LoopbackDriver(s.serve);
    try {
      const { file, fh } = await openLarge(d);
      const size = MAX_REPLY_PAGES * 4096;
      const runs = [1, 3, MAX_REPLY_PAGES, 2];
      const replies = await Promise.all(runs.map((run, slot) => call(d, Opcode.READ, file, readIn(fh, slot * size), MAX_REPLY_PAGES, slot, run)));
      expect(replies).toEqual(runs.map(() => ({ error: 0, length: size })));
      runs.forEach((_, slot) => expect(landed(d, slot, slot * size)).toBe(true));
      // With more behind it on the ring, a large READ goes to the pool: the concurrent path was taken.
      expect(s.server().requestCounts()['READ off the main thread']).toBeGreaterThan(0);
      // A slot is busy until its reply is in.
      const busy = call(d, Opcode.READ, file, readIn(fh, 0), MAX_REPLY_PAGES, 1);
      await expect(call(d, Opcode.READ, file, readIn(fh, 0), MAX_REPLY_PAGES, 1)).rejects.toThrow(/slot 1 already/);
      await busy;
      expect(d.idle(1)).toBe(true);
    } finally {
      d.close();
    }
  });

  test('an out header right before the first page: the data lands after it, and the reply is read from it', async () => {
    const s = served();
    const d = new LoopbackDriver(s.serve);
    try {
      const { file, fh } = await openLarge(d);
      const size = MAX_REPLY_PAGES * 4096;
      // Slot 1 too: its header then lies in the last page of slot 0's area, which no layout uses.
      for (const slot of [0, 1]) {
        const offset = (slot + 2) * 4096;
        expect(await call(d, Opcode.READ, file, readIn(fh, offset), MAX_REPLY_PAGES, slot, MAX_REPLY_PAGES, 'before-pages')).toEqual({ error: 0, length: size });
        expect(landed(d, slot, offset)).toBe(true);
      }
      // An error comes back through a header placed the same way.
      expect(await call(d, Opcode.READLINK, file, Buffer.alloc(0), 1, 1, MAX_REPLY_PAGES, 'before-pages')).toEqual({ error: -22, length: 0 });
    } finally {
      d.close();
    }
  });

  test('a READ across the end of the file comes back short, with the file\'s last bytes', async () => {
    const s = served();
    const d = new LoopbackDriver(s.serve);
    try {
      const { file, fh } = await openLarge(d);
      const size = store.largeContent.length;
      const offset = Math.floor((size - 5000) / 4096) * 4096;
      const r = await call(d, Opcode.READ, file, readIn(fh, offset), MAX_REPLY_PAGES, 2, 3);
      expect(r).toEqual({ error: 0, length: size - offset });
      expect(d.replyPage(2, 0).equals(store.largeContent.subarray(offset, offset + 4096))).toBe(true);
    } finally {
      d.close();
    }
  });

  test('close() cancels the request in flight and releases every fd it made', async () => {
    const before = openFds();
    const s = served();
    const d = new LoopbackDriver(s.serve);
    const init = Buffer.alloc(InitIn.SIZE);
    InitIn.encode({ major: 7, minor: 38, maxReadahead: 0, flags: 0, flags2: 0 }, init, 0);
    const pending = call(d, Opcode.INIT, 0, init, 1);
    d.close();
    await expect(pending).resolves.toEqual({ error: -125, length: 0 });
    await expect(call(d, Opcode.INIT, 0, init, 1)).rejects.toThrow(/closed/);
    expect(openFds()).toBe(before);
  });
});

describe('WarmUp', () => {
  test('serves INIT, a listing walk and the asked READs of the largest file it saw, then closes its session', async () => {
    const before = openFds();
    const s = served();
    const r = await new WarmUp(s.serve).run(200);
    expect(r).toMatchObject({ reads: 200, fileSize: store.largeContent.length, stopped: null });
    const counts = s.server().requestCounts();
    expect(counts).toMatchObject({ INIT: 1, OPEN: 1, READ: 200 });
    // Now and then a request that fails (EINVAL) goes beside a READ, so error replies are compiled too.
    expect(counts.READLINK).toBeGreaterThan(0);
    expect(s.viewCounts()).toMatchObject({ handles: 1, nodeFiles: 0 });
    // Some READs went out in pairs, and the first of a pair was read on the pool.
    expect(counts['READ off the main thread']).toBeGreaterThan(0);
    expect(counts.READDIRPLUS).toBeGreaterThanOrEqual(3); // root, app, app/share at least
    expect(counts.LOOKUP).toBeGreaterThan(5);
    // A GETATTR per LOOKUP, and more that went out ahead of a READ.
    expect(counts.GETATTR).toBeGreaterThan(counts.LOOKUP as number);
    const { ['READ off the main thread']: _offloaded, ...byOpcode } = counts;
    expect(r.requests).toBe(Object.values(byOpcode).reduce((a, b) => a + b, 0));
    expect(s.session().closed).toBe(true);
    expect(openFds()).toBe(before);
  });

  test('under cache=always it opens the file as a guest does then, without an OPEN, and READs with fh 0', async () => {
    const before = openFds();
    const s = served(store.closure, 'always');
    const r = await new WarmUp(s.serve).run(100);
    expect(r).toMatchObject({ reads: 100, fileSize: store.largeContent.length, stopped: null });
    // One OPEN, answered ENOSYS; every READ after it carried fh 0 and was served by nodeid, from a file
    // the view kept open for it (no handle).
    expect(s.server().requestCounts()).toMatchObject({ INIT: 1, OPEN: 1, READ: 100 });
    expect(s.viewCounts()).toMatchObject({ handles: 0, nodeFiles: 1 });
    expect(s.session().closed).toBe(true);
    expect(await settledFds(before)).toBe(before);
  });

  test('a closure with no regular file gets the walk and no READs, and says why', async () => {
    const s = served([store.names.symlinkPath]);
    const r = await new WarmUp(s.serve).run(50);
    expect(r).toMatchObject({ reads: 0, fileSize: 0, stopped: 'no regular file in the closure' });
    expect(s.server().requestCounts().READ).toBeUndefined();
  });

  test('stop() ends it at once, with the reason, and leaves nothing open', async () => {
    const before = openFds();
    const s = served();
    const w = new WarmUp(s.serve);
    const run = w.run(100_000);
    setTimeout(() => w.stop('daemon stopping'), 30);
    const r = await run;
    expect(r.stopped).toBe('daemon stopping');
    expect(r.reads).toBeLessThan(100_000);
    expect(s.session().closed).toBe(true);
    expect(await settledFds(before)).toBe(before);
  });
});
