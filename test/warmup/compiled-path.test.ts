/**
 * What the start-up warm-up is for, checked on the daemon as a user runs it: after
 * it, a VM's traffic runs the request path V8 compiled during the warm-up, without
 * throwing any of it away. Each deoptimization there sends the path back to slower
 * code until a V8 helper thread compiles it again (milliseconds of CPU, on a host
 * whose CPUs the VM's vCPUs want): a fresh daemon's first 2,048 guest-shaped READs
 * ran at 0.85-0.89x of virtiofsd with four of them in the path, 1.02-1.03x without.
 *
 * The traffic is the kind the warm-up must have compiled: a guest's INIT, LOOKUPs, an
 * OPEN (under --cache always answered ENOSYS, an error reply; under auto a handle, and
 * a RELEASE at the end), 128 KiB READs laid out as readahead, and GETATTRs 16 at a
 * time, published one by one so the daemon's poll catches some of them (a path the
 * warm-up's own driver, on the daemon's thread, can never take).
 * `node --trace-deopt` prints a line for every deoptimization: none may follow the
 * connection.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { InHeader, Opcode, OutHeader, ReadIn } from '../../src/fuse/abi';
import { Frontend, type ChainSpec } from '../harness/frontend';
import { FuseClient, encode } from '../harness/fuse-client';

const CLI = path.resolve(__dirname, '..', '..', 'dist', 'src', 'cli.js');
const HASH = '0123456789abcdfghijklmnpqrsvwxyz';
const MiB = 1 << 20;
const READ_SIZE = 128 * 1024;
const FILE_SIZE = 4 * MiB;

let dir: string;
const daemons: ChildProcess[] = [];

beforeAll(() => {
  if (!fs.existsSync(CLI)) throw new Error(`${CLI} is missing: run npm run build`);
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cfs-compiled-'));
  const top = path.join(dir, 'store', `${HASH}-data`);
  fs.mkdirSync(path.join(top, 'share'), { recursive: true });
  const bytes = Buffer.alloc(FILE_SIZE);
  for (let i = 0; i < bytes.length; i += 4) bytes.writeUInt32LE((i * 2654435761) >>> 0, i);
  fs.writeFileSync(path.join(top, 'share', 'big.bin'), bytes);
  for (let i = 0; i < 20; i++) fs.writeFileSync(path.join(top, 'share', `small-${i}`), `${i}\n`);
  fs.writeFileSync(path.join(dir, 'closure.txt'), `/nix/store/${HASH}-data\n`);
});

afterAll(() => {
  for (const p of daemons) if (p.exitCode === null) p.kill('SIGKILL');
  fs.rmSync(dir, { recursive: true, force: true });
});

/** Starts closurefs under --trace-deopt; resolves once it has logged `warm-up done`. */
function start(sock: string, cache: 'always' | 'auto'): Promise<{ trace: () => string; logs: Record<string, unknown>[] }> {
  // A poll window of up to 2 ms instead of 32 us, so the daemon still polls (and catches
  // GETATTRs) when this test shares the CPUs with others and the harness is slow to send.
  const args = ['--trace-deopt', CLI, '--socket-path', sock, '--closure', path.join(dir, 'closure.txt'), '--store-dir', path.join(dir, 'store'), '--log-level', 'info', '--poll-max-us', '2000', '--cache', cache];
  const p = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  daemons.push(p);
  let trace = '';
  let pending = '';
  const logs: Record<string, unknown>[] = [];
  p.stdout?.setEncoding('utf8').on('data', (d: string) => (trace += d));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('closurefs did not log "warm-up done" within 20 s')), 20_000);
    p.once('exit', (code) => reject(new Error(`closurefs exited (${code}) before its warm-up was done`)));
    p.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
      const lines = (pending + chunk).split('\n');
      pending = lines.pop() ?? '';
      for (const line of lines) {
        const log = JSON.parse(line) as Record<string, unknown>;
        logs.push(log);
        if (log.msg === 'warm-up done') {
          clearTimeout(timer);
          resolve({ trace: () => trace, logs });
        }
      }
    });
  });
}

function request(opcode: number, nodeid: number, body: Buffer[], writableSizes: number[], indirect = false): ChainSpec {
  const len = InHeader.SIZE + body.reduce((n, b) => n + b.length, 0);
  const header = encode(InHeader, { len, opcode, unique: 1n, nodeid, uid: 0, gid: 0, pid: 1, totalExtlen: 0 });
  return { readable: [header, ...body], writableSizes: [OutHeader.SIZE, ...writableSizes], indirect, uncleared: true, copyLimit: OutHeader.SIZE };
}

/** Sends the chains one by one, as Linux's driver does, and checks every reply's errno. */
async function send(fe: Frontend, chains: ChainSpec[]): Promise<void> {
  for (const c of await fe.enqueue(1, chains)) {
    const error = OutHeader.decode(c.written, 0).error;
    if (error !== 0) throw new Error(`request failed: errno ${-error}`);
  }
}

// always: the daemon's default, where files are opened without an OPEN; auto: what microvm.nix passes,
// where each file gets an OPEN, a handle and a RELEASE.
test.each(['always', 'auto'] as const)('--cache %s: a VM connecting after the warm-up runs the compiled request path, no deoptimization', async (cache) => {
  const sock = path.join(dir, `vhost-${cache}.sock`);
  const d = await start(sock, cache);
  // The warm-up's own code may be recompiled as it closes; what counts is what follows.
  await new Promise((r) => setTimeout(r, 200));
  const before = d.trace().length;

  const fe = await Frontend.connect(sock, { regions: [{ gpa: 0, size: 64 * MiB }], timeoutMs: 20_000 });
  try {
    await fe.handshake();
    const client = new FuseClient((readable, sizes) => fe.request(1, readable, sizes));
    await client.init();
    const share = await client.walk(`${HASH}-data/share`);
    for (let i = 0; i < 20; i++) await client.getattr((await client.lookup(share.nodeid, `small-${i}`)).nodeid);
    const big = await client.lookup(share.nodeid, 'big.bin');
    // Under --cache always the daemon answers the guest's first OPEN with ENOSYS; the client
    // then opens without asking, as the kernel does, and reads with fh 0.
    const { fh } = await client.open(big.nodeid);
    expect(client.opensWithoutOpen).toBe(cache === 'always');

    const pages = new Array<number>(READ_SIZE / 4096).fill(4096);
    for (let i = 0; i < 2048; i++) {
      const offset = (i * READ_SIZE) % FILE_SIZE;
      await send(fe, [request(Opcode.READ, big.nodeid, [encode(ReadIn, { fh, offset, size: READ_SIZE, readFlags: 0, lockOwner: 0n, flags: 0 })], pages, true)]);
    }
    const getattr = (): ChainSpec => request(Opcode.GETATTR, big.nodeid, [Buffer.alloc(16)], [104]);
    for (let i = 0; i < 500; i++) await send(fe, Array.from({ length: 16 }, getattr));
    // A guest closing the file (no request under always, where there is no handle).
    if (fh !== 0) await client.release(big.nodeid, fh);
  } finally {
    fe.close();
  }
  // The session's close logs its counts: some GETATTRs were caught by a poll, so that path ran too.
  for (let i = 0; i < 100 && !d.logs.some((l) => l.msg === 'FUSE requests served'); i++) await new Promise((r) => setTimeout(r, 20));
  const served = d.logs.find((l) => l.msg === 'FUSE requests served') as { requests: Record<string, number>; polled: number };
  expect(served.requests).toMatchObject({ INIT: 1, OPEN: 1, READ: 2048 });
  expect(served.requests.GETATTR).toBeGreaterThanOrEqual(20 + 500 * 16);
  expect(served.polled).toBeGreaterThan(0);

  const after = d.trace().slice(before);
  const deopts = after.split('\n').filter((l) => /^\[(bailout|marking dependent code)/.test(l));
  expect(deopts).toEqual([]);
}, 60_000);
