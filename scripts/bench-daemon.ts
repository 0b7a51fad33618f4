/**
 * Daemon-level benchmark: closurefs against QEMU 7.2's virtiofsd on the same tree,
 * through the same vhost-user test frontend (test/harness), no guest. Both daemons
 * run as separate processes; runs alternate between them so drift on a noisy
 * machine hits both alike. Every reply is checked (error 0, expected length).
 *
 *   node dist/scripts/bench-daemon.js [--quick] [--runs N] [--json FILE]
 *
 * The harness sends requests as Linux's virtio-fs driver does: each is published as
 * soon as it is laid out and kicked only if the daemon asks (Frontend.enqueue). A
 * row sends N at a time: N requests one after another, then it waits for all N.
 *
 * Prints a markdown table of medians (ops/s) and the ratio closurefs / virtiofsd
 * (higher is better), with each daemon's own CPU time per operation (all its threads
 * and forked processes, from /proc schedstat; the harness excluded), and writes the
 * numbers as JSON.
 */
import { ChildProcess, spawn } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { GetattrIn, InHeader, Opcode, OpenIn, OutHeader, ReadIn } from '../src/fuse/abi';
import { ChainSpec, Frontend } from '../test/harness/frontend';
import { FuseClient, FuseTransport, cName, encode } from '../test/harness/fuse-client';

const ROOT = path.resolve(__dirname, '..', '..');
const VIRTIOFSD = '/usr/lib/qemu/virtiofsd';
const MiB = 1 << 20;
/** Requests in flight for the throughput rows; the latency rows send one at a time. */
const BATCH = 16;

export interface BenchTree {
  storeDir: string;
  closureFile: string;
  base: string;
}

/** A store-shaped tree: one store path with a 1,000-entry directory, a 4 KiB-block file and a 64 MiB file. */
export function benchTree(): BenchTree {
  const cache = process.env.CLOSUREFS_CACHE ?? path.join(os.homedir(), '.cache', 'closurefs');
  const storeDir = path.join(cache, 'bench-daemon-v1', 'store');
  const base = '0123456789abcdfghijklmnpqrsvwxyz-bench-data';
  const closureFile = path.join(cache, 'bench-daemon-v1', 'closure.txt');
  if (fs.existsSync(closureFile)) return { storeDir, closureFile, base };
  const top = path.join(storeDir, base);
  fs.mkdirSync(path.join(top, 'dir1000'), { recursive: true });
  for (let i = 0; i < 1000; i++) fs.writeFileSync(path.join(top, 'dir1000', `entry-${String(i).padStart(4, '0')}`), `${i}\n`);
  const rng = crypto.createHash('sha256');
  const big = fs.openSync(path.join(top, 'big.bin'), 'w');
  for (let i = 0; i < 64; i++) fs.writeSync(big, crypto.createHash('sha512').update(rng.update(String(i)).copy().digest()).digest().toString('hex').repeat(8192).slice(0, MiB));
  fs.closeSync(big);
  fs.writeFileSync(closureFile, `/nix/store/${base}\n`);
  return { storeDir, closureFile, base };
}

type DaemonName = 'closurefs' | 'virtiofsd';

interface Running {
  proc: ChildProcess;
  sock: string;
  dir: string;
  /** Resolves once the daemon is as a VM would find it (closurefs: after its warm-up). */
  settled: Promise<void>;
}

function startDaemon(name: DaemonName, tree: BenchTree): Running {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `bench-${name}-`));
  const sock = path.join(dir, 'vhost.sock');
  if (name !== 'closurefs') {
    const proc = spawn(VIRTIOFSD, [`--socket-path=${sock}`, '-o', `source=${tree.storeDir}`, '-o', 'cache=always', '-o', 'log_level=err'], { stdio: ['ignore', 'ignore', 'inherit'] });
    return { proc, sock, dir, settled: Promise.resolve() };
  }
  const args = [...nodeArgs(), path.join(ROOT, 'bin/closurefs'), '--socket-path', sock, '--closure', tree.closureFile, '--store-dir', tree.storeDir, '--log-level', 'info', ...extraArgs()];
  const proc = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  return { proc, sock, dir, settled: settledAfter(proc, extraArgs().join(' ').includes('--warm-up-reads 0') ? 'closurefs ready' : 'warm-up done') };
}

/**
 * Resolves when closurefs logs `msg`: a VM finds the daemon after its start-up warm-up (a VMM
 * connects at once, its guest's first request comes seconds later), so measuring starts there too.
 * Only warnings and errors reach our stderr.
 */
function settledAfter(proc: ChildProcess, msg: string): Promise<void> {
  return new Promise((resolve, reject) => {
    let pending = '';
    const timer = setTimeout(() => reject(new Error(`closurefs did not log '${msg}' within 30 s`)), 30_000);
    proc.once('exit', (code) => clearTimeout(timer) ?? reject(new Error(`closurefs exited (${code}) before logging '${msg}'`)));
    proc.stderr?.setEncoding('utf8');
    proc.stderr?.on('data', (chunk: string) => {
      const lines = (pending + chunk).split('\n');
      pending = lines.pop() ?? '';
      for (const line of lines) {
        if (line.includes(`"msg":"${msg}"`)) {
          clearTimeout(timer);
          resolve();
        }
        if (/"level":(4|5|6)0/.test(line)) process.stderr.write(`${line}\n`);
      }
    });
  });
}

async function stopDaemon(r: Running): Promise<void> {
  const exited = new Promise<void>((res) => (r.proc.exitCode !== null ? res() : r.proc.once('exit', () => res())));
  r.proc.kill('SIGTERM');
  await exited;
  fs.rmSync(r.dir, { recursive: true, force: true });
}

/**
 * Node flags for the closurefs process: those bin/closurefs runs with (its #! line), plus
 * CFS_BENCH_NODE_ARGS, e.g. '--cpu-prof --cpu-prof-dir=/tmp/prof'.
 */
function nodeArgs(): string[] {
  const shebang = fs.readFileSync(path.join(ROOT, 'bin/closurefs'), 'utf8').split('\n')[0];
  const own = shebang.split(' ').filter((a) => a.startsWith('--'));
  return [...own, ...(process.env.CFS_BENCH_NODE_ARGS ?? '').split(' ').filter((a) => a !== '')];
}

/** Extra closurefs flags for A/B runs, as for the guest benchmark: CFS_DAEMON_ARGS='--poll-max-us 0'. */
function extraArgs(): string[] {
  return (process.env.CFS_DAEMON_ARGS ?? '').split(' ').filter((a) => a !== '');
}

let unique = 1n;

/**
 * One FUSE request as the kernel lays it out: [in header, in args...] readable, [out header, reply]
 * writable. The harness copies back only the reply header, which is all check() reads: copying a
 * 1 MiB READ's data (fresh allocations, page faults) made the harness the bottleneck of that row.
 * Nor does it clear the reply buffers first, as a guest does not clear the page-cache pages a READ
 * fills: a 1 MiB memset on the driver's CPU between chains put the daemon's copy in a fight over
 * the same cache lines (READ 1 MiB: virtiofsd 111 -> 98 us of CPU per op without it, closurefs
 * serving in place 165 -> 105).
 */
function chain(opcode: number, nodeid: number, body: Buffer[], replySize: number): ChainSpec {
  const len = InHeader.SIZE + body.reduce((n, b) => n + b.length, 0);
  const header = encode(InHeader, { len, opcode, unique: unique++, nodeid, uid: 0, gid: 0, pid: 1, totalExtlen: 0 });
  return { readable: [header, ...body], writableSizes: [OutHeader.SIZE, replySize], copyLimit: OutHeader.SIZE, uncleared: true };
}

/**
 * A 128 KiB READ laid out as Linux's virtio-fs driver sends a readahead: one indirect table of
 * the in header, fuse_read_in, the out header and 32 page-sized buffers. Here the pages follow
 * one another, so the daemon's walk of 35 descriptors ends in one view, as most of a fresh
 * guest's page-cache pages do.
 */
function guestRead(nodeid: number, fh: number, i: number): ChainSpec {
  const c = chain(Opcode.READ, nodeid, [readIn(fh, (i * GUEST_READ) % (64 * MiB), GUEST_READ)], 0);
  return { ...c, writableSizes: [OutHeader.SIZE, ...new Array<number>(GUEST_READ / 4096).fill(4096)], indirect: true };
}

const GUEST_READ = 128 * 1024;
/** READs in a guest's sequential read of 256 MiB: the guest benchmark's first read after the mount. */
const COLD_READS = 2048;

function check(opcode: number, written: Buffer, usedLen: number, minLen: number): void {
  const out = OutHeader.decode(written, 0);
  if (out.error !== 0 || usedLen < minLen) throw new Error(`opcode ${opcode}: error ${out.error}, ${usedLen} bytes`);
}

/** Runs `count` requests from make(), `batch` at a time; returns ops/s. */
async function run(fe: Frontend, count: number, batch: number, make: (i: number) => ChainSpec, minLen: number): Promise<number> {
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < count; i += batch) {
    const specs = Array.from({ length: Math.min(batch, count - i) }, (_, k) => make(i + k));
    const done = await fe.enqueue(1, specs);
    for (let k = 0; k < done.length; k++) check(0, done[k].written, done[k].usedLen, minLen);
  }
  return count / (Number(process.hrtime.bigint() - t0) / 1e9);
}

/**
 * Warm-up, then the measured run. A long-running daemon serves millions of
 * requests; its first few thousand run before V8 has compiled the hot path, and
 * measuring those would compare a cold JIT with compiled C.
 */
async function measure(fe: Frontend, count: number, batch: number, make: (i: number) => ChainSpec, minLen: number, daemon: number): Promise<Measured> {
  await run(fe, Math.ceil(count / 2), batch, make, minLen);
  return cpuPerOp(daemon, count, () => run(fe, count, batch, make, minLen));
}

interface Measured {
  opsPerS: number;
  /** CPU time the daemon (every thread, every process it forked) spent per request, in µs. */
  cpuUs: number;
}

/** Runs f and charges the daemon's CPU time meanwhile to `ops` operations. */
async function cpuPerOp(daemon: number, ops: number, f: () => Promise<number>): Promise<Measured> {
  const before = treeCpuNs(daemon);
  const opsPerS = await f();
  return { opsPerS, cpuUs: (treeCpuNs(daemon) - before) / 1000 / ops };
}

/**
 * Nanoseconds on CPU of a process, its threads and its descendants (virtiofsd
 * serves from a forked child), from /proc/PID/task/TID/schedstat: unlike
 * utime/stime, not rounded to clock ticks.
 */
export function treeCpuNs(pid: number): number {
  let ns = 0;
  let tasks: string[];
  try {
    tasks = fs.readdirSync(`/proc/${pid}/task`);
  } catch {
    return 0; // exited meanwhile
  }
  for (const tid of tasks) {
    try {
      ns += Number(fs.readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[0]);
      for (const child of fs.readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8').split(' ').filter((c) => c !== '')) ns += treeCpuNs(Number(child));
    } catch {
      /* the thread ended between the listing and the read */
    }
  }
  return ns;
}

export interface OpResult {
  op: string;
  unit: string;
  closurefs: number;
  virtiofsd: number;
  ratio: number;
  /** Daemon CPU per operation (µs), medians: what each daemon's own work costs, without the harness. */
  closurefsCpuUs: number;
  virtiofsdCpuUs: number;
}

async function runOnce(name: DaemonName, tree: BenchTree, quick: boolean): Promise<Record<string, number>> {
  const d = startDaemon(name, tree);
  const pid = d.proc.pid as number;
  await d.settled;
  const fe = await Frontend.connect(d.sock, { regions: [{ gpa: 0, size: 64 * MiB }], connectTimeoutMs: 10_000, timeoutMs: 30_000 });
  try {
    await fe.handshake();
    const sequential: FuseTransport = (readable, sizes) => fe.request(1, readable, sizes);
    const client = new FuseClient(sequential);
    await client.init();
    const top = await client.lookup(1, tree.base);
    const dir = await client.lookup(top.nodeid, 'dir1000');
    const big = await client.lookup(top.nodeid, 'big.bin');
    const fh = (await client.open(big.nodeid)).fh;
    const r: Record<string, number> = {};
    // First, while the daemon is fresh: what the guest benchmark's first read meets. closurefs has
    // served its start-up warm-up by now (see settledAfter); V8 may still be compiling parts of
    // the path, which --warm-up-reads 0 in CFS_DAEMON_ARGS shows in full.
    const coldRead = (i: number) => guestRead(big.nodeid, fh, i);
    record(r, 'read128k_cold', await cpuPerOp(pid, COLD_READS, () => run(fe, COLD_READS, 1, coldRead, OutHeader.SIZE + GUEST_READ)));
    const n = quick ? 4000 : 20000;
    const name500 = cName('entry-0500');
    const blocks = (64 * MiB) / 4096;
    const lookup = () => chain(Opcode.LOOKUP, dir.nodeid, [name500], 128);
    const getattr = () => chain(Opcode.GETATTR, big.nodeid, [encode(GetattrIn, { getattrFlags: 0, fh: 0 })], 104);
    const read4k = (i: number) => chain(Opcode.READ, big.nodeid, [readIn(fh, ((i * 7919) % blocks) * 4096, 4096)], 4096);
    const read1m = (i: number) => chain(Opcode.READ, big.nodeid, [readIn(fh, (i % 64) * MiB, MiB)], MiB);
    for (const [batch, suffix] of [[1, '_b1'], [BATCH, `_b${BATCH}`]] as const) {
      record(r, `lookup${suffix}`, await measure(fe, n, batch, lookup, OutHeader.SIZE + 128, pid));
      record(r, `getattr${suffix}`, await measure(fe, n, batch, getattr, OutHeader.SIZE + 104, pid));
      record(r, `read4k${suffix}`, await measure(fe, n, batch, read4k, OutHeader.SIZE + 4096, pid));
    }
    record(r, 'read1m_b4', await measure(fe, quick ? 256 : 1024, 4, read1m, OutHeader.SIZE + MiB, pid));
    record(r, 'read128k_b1', await measure(fe, quick ? 2048 : 8192, 1, coldRead, OutHeader.SIZE + GUEST_READ, pid));
    await listings(fe, client, dir.nodeid, 5); // warm-up
    const lists = quick ? 10 : 40;
    record(r, 'readdirplus1000', await cpuPerOp(pid, lists, () => listings(fe, client, dir.nodeid, lists)));
    return r;
  } finally {
    fe.close();
    await stopDaemon(d);
  }
}

/** Stores a measure as r[key] (ops/s) and r[key + '_cpu'] (daemon CPU µs per op). */
function record(r: Record<string, number>, key: string, m: Measured): void {
  r[key] = m.opsPerS;
  r[`${key}_cpu`] = m.cpuUs;
}

function readIn(fh: number, offset: number, size: number): Buffer {
  return encode(ReadIn, { fh, offset, size, readFlags: 0, lockOwner: 0n, flags: 0 });
}

/**
 * Whole listings of the 1,000-entry directory with READDIRPLUS (4 KiB buffers, like
 * the guest); listings/s. Offsets are cookies that virtiofsd takes from the host
 * file system (ext4: 63-bit hashes), so they travel as BigInt, never as a Number.
 */
async function opendirOrZero(client: FuseClient, nodeid: number): Promise<number> {
  try {
    return (await client.opendir(nodeid)).fh;
  } catch (e) {
    if ((e as { errno?: number }).errno === 38) return 0;
    throw e;
  }
}

async function listings(fe: Frontend, client: FuseClient, nodeid: number, count: number): Promise<number> {
  let noOpendir = false;
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < count; i++) {
    // Like the guest kernel: a daemon that answers OPENDIR with ENOSYS (closurefs: zero-message
    // opendir) is read with fh 0 and without OPENDIR/RELEASEDIR from then on.
    const fh = noOpendir ? 0 : await opendirOrZero(client, nodeid);
    if (fh === 0) noOpendir = true;
    let offset = 0n;
    let seen = 0;
    for (;;) {
      const readIn = Buffer.alloc(ReadIn.SIZE);
      readIn.writeBigUInt64LE(BigInt(fh), 0);
      readIn.writeBigUInt64LE(offset, 8);
      readIn.writeUInt32LE(4096, 16);
      const [done] = await fe.enqueue(1, [{ ...chain(Opcode.READDIRPLUS, nodeid, [readIn], 4096), copyLimit: undefined }]); // the entries are read
      check(Opcode.READDIRPLUS, done.written, done.usedLen, OutHeader.SIZE);
      const last = lastDirentplusOffset(done.written.subarray(OutHeader.SIZE, done.usedLen));
      if (last === null) break;
      seen += last.count;
      offset = last.off;
    }
    if (fh !== 0) await client.releasedir(nodeid, fh);
    if (seen < 1000) throw new Error(`READDIRPLUS listed ${seen} entries, expected 1000+`);
  }
  return count / (Number(process.hrtime.bigint() - t0) / 1e9);
}

/** fuse_direntplus = fuse_entry_out (128) + fuse_dirent {u64 ino, u64 off, u32 namelen, u32 type, name[]}, 8-aligned. */
function lastDirentplusOffset(buf: Buffer): { off: bigint; count: number } | null {
  let off: bigint | null = null;
  let count = 0;
  for (let o = 0; o + 128 + 24 <= buf.length; count++) {
    off = buf.readBigUInt64LE(o + 128 + 8);
    const namelen = buf.readUInt32LE(o + 128 + 16);
    o += Math.ceil((128 + 24 + namelen) / 8) * 8;
  }
  return off === null ? null : { off, count };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

export async function benchDaemon(opts: { quick: boolean; runs?: number; log?: (s: string) => void }): Promise<OpResult[]> {
  const log = opts.log ?? ((s: string) => process.stderr.write(`${s}\n`));
  const tree = benchTree();
  const runs = opts.runs ?? (opts.quick ? 3 : 7);
  const samples: Record<DaemonName, Record<string, number>[]> = { closurefs: [], virtiofsd: [] };
  for (let i = 0; i < runs; i++) {
    const order: DaemonName[] = i % 2 === 0 ? ['closurefs', 'virtiofsd'] : ['virtiofsd', 'closurefs'];
    for (const name of order) {
      samples[name].push(await runOnce(name, tree, opts.quick));
      log(`run ${i + 1}/${runs} ${name}: ${JSON.stringify(samples[name][samples[name].length - 1], (_, v) => (typeof v === 'number' ? Math.round(v) : v))}`);
    }
  }
  const ops: [string, string][] = [
    ['lookup_b1', 'LOOKUP ops/s, 1 at a time'],
    ['lookup_b16', 'LOOKUP ops/s, 16 at a time'],
    ['getattr_b1', 'GETATTR ops/s, 1 at a time'],
    ['getattr_b16', 'GETATTR ops/s, 16 at a time'],
    ['readdirplus1000', 'READDIRPLUS of 1,000 entries, listings/s'],
    ['read4k_b1', 'READ 4 KiB ops/s, 1 at a time'],
    ['read4k_b16', 'READ 4 KiB ops/s, 16 at a time'],
    ['read1m_b4', 'READ 1 MiB ops/s, 4 at a time'],
    ['read128k_b1', 'READ 128 KiB in 32 pages (a guest readahead), ops/s, 1 at a time'],
    ['read128k_cold', 'The same, a fresh daemon\'s first 2,048 (256 MiB) after its warm-up, ops/s'],
  ];
  return ops.map(([op, unit]) => {
    const c = median(samples.closurefs.map((s) => s[op]));
    const v = median(samples.virtiofsd.map((s) => s[op]));
    const cpu = (name: DaemonName) => median(samples[name].map((s) => s[`${op}_cpu`]));
    return { op, unit, closurefs: c, virtiofsd: v, ratio: c / v, closurefsCpuUs: cpu('closurefs'), virtiofsdCpuUs: cpu('virtiofsd') };
  });
}

export function markdown(rows: OpResult[]): string {
  const fmt = (n: number) => (n >= 100 ? Math.round(n).toLocaleString('en-US') : n.toFixed(1));
  const us = (n: number) => (n >= 100 ? Math.round(n).toLocaleString('en-US') : n.toFixed(1));
  return [
    '| daemon-level (no guest) | closurefs | virtiofsd | closurefs / virtiofsd | daemon CPU µs/op: closurefs | virtiofsd |',
    '| --- | ---: | ---: | ---: | ---: | ---: |',
    ...rows.map((r) => `| ${r.unit} | ${fmt(r.closurefs)} | ${fmt(r.virtiofsd)} | ${r.ratio.toFixed(2)}x | ${us(r.closurefsCpuUs)} | ${us(r.virtiofsdCpuUs)} |`),
  ].join('\n');
}

if (require.main === module) {
  const quick = process.argv.includes('--quick');
  const runsAt = process.argv.indexOf('--runs');
  const runs = runsAt > 0 ? Number(process.argv[runsAt + 1]) : undefined;
  benchDaemon({ quick, runs }).then(
    (rows) => {
      console.log(markdown(rows));
      const out = path.join(ROOT, 'bench-results', `daemon-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
      fs.mkdirSync(path.dirname(out), { recursive: true });
      fs.writeFileSync(out, JSON.stringify({ quick, batch: BATCH, rows }, null, 2));
      console.log(`\n(medians; JSON in ${path.relative(ROOT, out)})`);
    },
    (e) => {
      console.error(e);
      process.exit(1);
    },
  );
}
