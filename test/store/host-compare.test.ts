/**
 * The whole view, walked as the guest walks it (READDIRPLUS, LOOKUP, READ, READLINK),
 * compared with the host store: same names, kinds, sizes, bytes and link targets,
 * canonical metadata, and every lookup given back by FORGET at the end. Runs on the
 * hand-made store and, when it has been built (test/fixtures/nix/build-store.sh, or
 * CFS_NIX_FIXTURE=DIR), on the real Nix-built store.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Errno } from '../../src/fuse';
import { FuseServer } from '../../src/fuse/server';
import { ClosureView } from '../../src/store/view';
import { FuseClient, FuseReplyError, inProcessTransport, type DecodedDirentplus } from '../harness/fuse-client';
import { findNixFixture, makeFakeStore, type NixFixtureManifest } from './fake-store';

const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;

interface Target {
  storeDir: string;
  closure: string[];
  outside: string[];
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

function hostKind(st: fs.BigIntStats): number {
  if (st.isDirectory()) return S_IFDIR;
  if (st.isSymbolicLink()) return S_IFLNK;
  return S_IFREG;
}

interface WalkResult {
  entries: number;
  identities: Set<string>;
  lookups: Map<number, number>;
}

/** Walks the view depth-first, checking each entry against the host. */
async function walkAndCompare(client: FuseClient, target: Target): Promise<WalkResult> {
  const result: WalkResult = { entries: 0, identities: new Set(), lookups: new Map() };
  const count = (nodeid: number): void => void result.lookups.set(nodeid, (result.lookups.get(nodeid) ?? 0) + 1);
  const visit = async (nodeid: number, hostDir: string, isRoot: boolean): Promise<void> => {
    const { fh } = await client.opendir(nodeid);
    const entries: DecodedDirentplus[] = [];
    for (let off = 0; ; ) {
      const batch = await client.readdirplus(nodeid, fh, off, 4096);
      if (batch.length === 0) break;
      entries.push(...batch);
      off = batch[batch.length - 1].off;
    }
    await client.releasedir(nodeid, fh);
    const hostNames = isRoot
      ? target.closure.map((n) => Buffer.from(n))
      : (fs.readdirSync(hostDir, { encoding: 'buffer' }) as Buffer[]).sort(Buffer.compare);
    const hex = (bs: Buffer[]): string[] => bs.map((b) => b.toString('hex'));
    expect(hex(entries.map((e) => e.name))).toEqual(hex([Buffer.from('.'), Buffer.from('..'), ...hostNames]));
    for (const e of entries.slice(2)) {
      count(e.entry.nodeid);
      result.entries++;
      // Store names are UTF-8 (Nix writes what the builder made; these fixtures are all valid UTF-8).
      const hostPath = path.join(hostDir, e.name.toString());
      await checkEntry(client, e, hostPath, result);
      if ((e.entry.attr.mode & S_IFMT) === S_IFDIR) await visit(e.entry.nodeid, hostPath, false);
    }
  };
  await visit(1, target.storeDir, true);
  return result;
}

async function checkEntry(client: FuseClient, e: DecodedDirentplus, hostPath: string, result: WalkResult): Promise<void> {
  const st = fs.lstatSync(hostPath, { bigint: true });
  const a = e.entry.attr;
  result.identities.add(`${st.dev}:${st.ino}`);
  expect(a.mode & S_IFMT).toBe(hostKind(st));
  expect([a.uid, a.gid, a.rdev]).toEqual([0, 0, 0]);
  expect(a.ctime).toBe(a.mtime);
  expect(a.atime).toBe(a.mtime);
  expect(e.ino).toBe(a.ino);
  if ((a.mode & S_IFMT) !== S_IFDIR) expect(a.nlink).toBe(1);
  if ((a.mode & S_IFMT) === S_IFLNK) {
    expect((await client.readlink(e.entry.nodeid)).equals(fs.readlinkSync(hostPath, { encoding: 'buffer' }))).toBe(true);
  } else if ((a.mode & S_IFMT) === S_IFREG) {
    expect(a.size).toBe(Number(st.size));
    const { fh } = await client.open(e.entry.nodeid);
    const data = await client.readAll(e.entry.nodeid, fh, 256 * 1024);
    await client.release(e.entry.nodeid, fh);
    expect(sha(data)).toBe(sha(fs.readFileSync(hostPath)));
  }
}

function suite(name: string, load: () => Target & { cleanup?: () => void }, extra?: (get: () => Target) => void): void {
  describe(name, () => {
    let target: Target & { cleanup?: () => void };
    beforeAll(() => {
      target = load();
    });
    afterAll(() => target.cleanup?.());

    test('the whole view equals the host store, and every lookup can be given back', async () => {
      const view = new ClosureView({ storeDir: target.storeDir, paths: target.closure });
      const client = new FuseClient(inProcessTransport(new FuseServer(view)));
      await client.init();
      const fdsBefore = fs.readdirSync('/proc/self/fd').length;
      const r = await walkAndCompare(client, target);
      expect(r.entries).toBeGreaterThan(target.closure.length);
      expect(fs.readdirSync('/proc/self/fd').length - fdsBefore).toBeLessThanOrEqual(view.counts.dirFds + 1);
      const st = await client.statfs();
      expect(st.files).toBe(r.identities.size + 1);
      expect(await client.batchForget([...r.lookups].map(([nodeid, nlookup]) => ({ nodeid, nlookup })))).toBe(0);
      expect(view.counts.nodes).toBe(1);
      view.close();
    }, 120_000);

    test('nothing outside the closure resolves at the root', async () => {
      const view = new ClosureView({ storeDir: target.storeDir, paths: target.closure });
      const client = new FuseClient(inProcessTransport(new FuseServer(view, { cache: 'never' })));
      await client.init();
      for (const name of [...target.outside, '.links']) {
        await expect(client.lookup(1, name)).rejects.toMatchObject({ errno: Errno.ENOENT });
      }
      view.close();
    });

    extra?.(() => target);
  });
}

suite('hand-made store', () => {
  const s = makeFakeStore(200);
  return { storeDir: s.storeDir, closure: s.closure, outside: s.outside, cleanup: s.cleanup };
});

const fixture: NixFixtureManifest = findNixFixture();
const base = (p: string): string => path.basename(p);
suite(
  'real Nix-built store (test/fixtures/nix)',
  () => ({ storeDir: fixture.storeDir, closure: fixture.closure.map(base).sort(), outside: fixture.outside.map(base) }),
  (get) => {
    const connect = async () => {
      const view = new ClosureView({ storeDir: get().storeDir, paths: get().closure });
      const client = new FuseClient(inProcessTransport(new FuseServer(view)));
      await client.init();
      return { view, client };
    };
    const rel = (p: string): string => p.replace(/^\/nix\/store\//, '');

    test('the optimise twin shows nlink 1 and a view inode number', async () => {
      const { view, client } = await connect();
      const inside = fixture.hardlinkTwin.inside;
      const host = fs.lstatSync(path.join(get().storeDir, rel(inside)), { bigint: true });
      expect(host.nlink).toBeGreaterThanOrEqual(2n);
      const e = await client.walk(rel(inside));
      expect(e.attr.nlink).toBe(1);
      expect(BigInt(e.attr.ino)).not.toBe(host.ino);
      view.close();
    });

    test('the large file reads back with the manifest hash', async () => {
      const { view, client } = await connect();
      const e = await client.walk(rel(fixture.files.large.path));
      expect(e.attr.size).toBe(fixture.files.large.size);
      const { fh } = await client.open(e.nodeid);
      expect(sha(await client.readAll(e.nodeid, fh, 1024 * 1024))).toBe(fixture.files.large.sha256);
      view.close();
    });

    test('the symlink loop reads as two links and never resolves', async () => {
      const { view, client } = await connect();
      const a = await client.walk(`${rel(fixture.paths.app)}/share/loop-a`);
      expect((await client.readlink(a.nodeid)).toString()).toBe('loop-b');
      await expect(client.open(a.nodeid)).rejects.toBeInstanceOf(FuseReplyError);
      view.close();
    });
  },
);
