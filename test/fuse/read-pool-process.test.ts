/**
 * The threads a closurefs process reads large READs on. libuv starts its whole pool
 * at the first READ handed to it, so the process's thread count before and after the
 * first batch of large READs tells the pool's size: one thread per CPU (at most 4)
 * unless --thread-pool-size or UV_THREADPOOL_SIZE says otherwise, none with 0.
 * The warm-up is off here: its paired READs start the pool too, and whether they
 * run before our frontend connects is a race (CI lost it once, seeing 0 threads).
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { nixFixture } from '../fixtures/nix/store';
import { startDaemon, type RunningDaemon } from '../../vm-fixtures/daemons';
import { Frontend } from '../harness/frontend';
import { FuseClient, encode } from '../harness/fuse-client';
import { InHeader, Opcode, OutHeader, ReadIn } from '../../src/fuse/abi';

const CHUNK = 128 * 1024;

function threads(pid: number): number {
  return fs.readdirSync(`/proc/${pid}/task`).length;
}

/** Starts a daemon, sends 4 READs of 128 KiB in one kick; returns how many threads that started, and the data. */
async function firstLargeReads(extraArgs: string[], env: Record<string, string | undefined> = {}): Promise<{ started: number; data: Buffer }> {
  const fx = nixFixture();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cfs-pool-'));
  let daemon: RunningDaemon | undefined;
  let fe: Frontend | undefined;
  try {
    daemon = await startDaemon({ kind: 'closurefs', storeDir: fx.storeDir, closureFiles: [fx.closureFile], socketDir: dir, logLevel: 'warn', extraArgs: ['--warm-up-reads', '0', ...extraArgs], env });
    fe = await Frontend.connect(daemon.socket, { connectTimeoutMs: 10_000, timeoutMs: 10_000 });
    await fe.handshake();
    const client = new FuseClient((readable, sizes) => (fe as Frontend).request(1, readable, sizes));
    await client.init();
    const file = await client.walk(fx.files.large.path.replace(/^\/nix\/store\//, ''));
    const { fh } = await client.open(file.nodeid);
    const pid = daemon.pid;
    const before = threads(pid);
    const chains = [0, 1, 2, 3].map((i) => {
      const body = encode(ReadIn, { fh, offset: i * CHUNK, size: CHUNK, readFlags: 0, lockOwner: 0n, flags: 0 });
      const header = encode(InHeader, { len: InHeader.SIZE + body.length, opcode: Opcode.READ, unique: BigInt(100 + i), nodeid: file.nodeid, uid: 0, gid: 0, pid: 1, totalExtlen: 0 });
      return { readable: [header, body], writableSizes: [OutHeader.SIZE, CHUNK] };
    });
    const done = await fe.batch(1, chains);
    const started = threads(pid) - before;
    const data = Buffer.concat(done.map((d) => {
      expect(OutHeader.decode(d.written, 0).error).toBe(0);
      return d.written.subarray(OutHeader.SIZE, d.usedLen);
    }));
    return { started, data };
  } finally {
    fe?.close();
    await daemon?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function expectFileStart(data: Buffer): void {
  const fx = nixFixture();
  const host = fs.readFileSync(path.join(fx.storeDir, fx.files.large.path.replace(/^\/nix\/store\//, '')));
  expect(data.length).toBe(Math.min(4 * CHUNK, host.length));
  expect(crypto.createHash('sha256').update(data).digest('hex')).toBe(crypto.createHash('sha256').update(host.subarray(0, data.length)).digest('hex'));
}

beforeAll(() => {
  // Three of the four READs may go to the pool: the file must have data for them all.
  expect(nixFixture().files.large.size).toBeGreaterThanOrEqual(4 * CHUNK);
});

test('by default the pool has one thread per CPU, at most 4', async () => {
  const { started, data } = await firstLargeReads([], { UV_THREADPOOL_SIZE: undefined });
  expect(started).toBe(Math.min(4, os.availableParallelism()));
  expectFileStart(data);
}, 30_000);

test('--thread-pool-size sets it, UV_THREADPOOL_SIZE set by the operator is kept, 0 starts none', async () => {
  expect((await firstLargeReads(['--thread-pool-size', '3'], { UV_THREADPOOL_SIZE: '5' })).started).toBe(3);
  expect((await firstLargeReads([], { UV_THREADPOOL_SIZE: '5' })).started).toBe(5);
  const inPlace = await firstLargeReads(['--thread-pool-size', '0'], { UV_THREADPOOL_SIZE: undefined });
  expect(inPlace.started).toBe(0);
  expectFileStart(inPlace.data);
}, 60_000);
