/**
 * Guest benchmark (issue 7, parts 2 and 3): the same closure served to a real guest (QEMU 7.2, TCG) by
 * closurefs, by QEMU's C virtiofsd and, as a third column, by QEMU's built-in 9p server; plus the daemons'
 * resources after a guest walked a large closure, and closurefs' startup time for a 5,000-path closure.
 *
 *   npm run build && node dist/scripts/bench-guest.js [--quick] [--runs N] [--cache auto|always] [--no-9p]
 *                                                     [--only perf,walk,startup]
 *
 * Method
 * - One boot per (column, run); inside it, every measure starts with `sync; echo 3 > drop_caches`, so each
 *   is cold in the guest (page cache, dentries and inodes dropped; FUSE FORGETs reach the daemon). The host
 *   page cache is warmed before the first run, so no column pays for the host disk.
 * - Runs alternate: run r boots the columns in an order rotated by r, so none always goes first.
 * - Time is taken inside the guest, with busybox `adjtimex` (microseconds; busybox `date` has no %N); the
 *   cost of taking a timestamp (one adjtimex + awk, a few ms under TCG) is measured in each boot and
 *   subtracted.
 * - Every boot checks what it read (entry counts, bytes) so that a daemon cannot look fast by doing less.
 * - Fairness: both daemons get the same cache flag (default auto, which is what microvm.nix passes to
 *   virtiofsd and so what a drop-in closurefs would get). The flag is the same, its effect on the exec
 *   row is not: closurefs' auto revalidates a file at each open and lets the guest keep the pages of one
 *   that did not change, where virtiofsd's drops them at every open, so 19 of the 20 starts read nothing.
 *   The reads, find+stat and small-file rows drop the guest's caches first and open each file once, so
 *   there it makes no difference. virtiofsd and 9p share the whole synthetic store
 *   directory while closurefs serves only the closure, so the guest always walks the closure's paths by
 *   name and never lists /nix/store itself. 9p is mounted with msize 512 KiB and the kernel's default cache
 *   mode (none). All columns boot the same kernel (Debian's generic 6.1, the one with 9p).
 * - Medians over the runs; the ratio column is closurefs / virtiofsd (throughput: higher is better; time,
 *   fds, RSS: lower is better).
 *
 * Output: a markdown table on stdout, the JSON (all samples, medians, ratios, environment) in
 * bench-results/guest-<timestamp>.json. CFS_SHOW_COUNTS=1 also prints closurefs' own count of the
 * requests each boot sent (its "FUSE requests served" log line); CFS_DAEMON_ARGS adds closurefs flags.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { processResources, repoRoot, startDaemon, type DaemonKind, type RunningDaemon } from '../vm-fixtures/daemons';
import { describeRun, guestAssets, runGuest, type GuestResult } from '../vm-fixtures/runner';
import {
  ENTRIES_PER_PACKAGE,
  FILES_PER_PACKAGE,
  packageBytes,
  syntheticStore,
  type SyntheticStore,
} from './bench-fixtures/synthetic-store';

type Column = DaemonKind | '9p';

interface Options {
  quick: boolean;
  runs: number;
  cache: 'auto' | 'always';
  with9p: boolean;
  /** Which parts to run: the per-run boots (perf), the large walk (walk), startup; rows of a part left out print n/a. */
  parts: Set<Part>;
}

const PARTS = ['perf', 'walk', 'startup'] as const;
type Part = (typeof PARTS)[number];

function parseArgs(argv: string[]): Options {
  const o: Options = { quick: false, runs: 0, cache: 'auto', with9p: true, parts: new Set(PARTS) };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--quick') o.quick = true;
    else if (a === '--no-9p') o.with9p = false;
    else if (a === '--runs') o.runs = Number(argv[++i]);
    else if (a === '--only') {
      const names = String(argv[++i]).split(',');
      const bad = names.filter((n) => !(PARTS as readonly string[]).includes(n));
      if (bad.length > 0) throw new Error(`--only takes a list of ${PARTS.join(', ')}; got ${bad.join(', ')}`);
      o.parts = new Set(names as Part[]);
    }
    else if (a === '--cache') {
      const v = argv[++i];
      if (v !== 'auto' && v !== 'always') throw new Error(`--cache must be auto or always, got ${String(v)}`);
      o.cache = v;
    } else if (a === '--help' || a === '-h') {
      process.stdout.write('usage: node dist/scripts/bench-guest.js [--quick] [--runs N] [--cache auto|always] [--no-9p] [--only perf,walk,startup]\n');
      process.exit(0);
    } else throw new Error(`unknown argument ${String(a)}`);
  }
  if (o.runs === 0) o.runs = o.quick ? 3 : 5;
  if (!Number.isInteger(o.runs) || o.runs < 1) throw new Error('--runs must be a positive integer');
  return o;
}

const log = (msg: string): void => {
  process.stderr.write(`bench-guest: ${msg}\n`);
};

// ---- static busybox for the store --------------------------------------------------------------------

/** True when the file is an ELF executable without a PT_INTERP header (needs no dynamic loader). */
function isStaticElf(file: string): boolean {
  const b = fs.readFileSync(file);
  if (b.length < 64 || b.readUInt32BE(0) !== 0x7f454c46) return false;
  const phoff = Number(b.readBigUInt64LE(32));
  const phentsize = b.readUInt16LE(54);
  const phnum = b.readUInt16LE(56);
  for (let i = 0; i < phnum; i++) if (b.readUInt32LE(phoff + i * phentsize) === 3) return false;
  return true;
}

function staticBusybox(): string {
  for (const p of ['/bin/busybox', '/usr/bin/busybox']) {
    if (fs.existsSync(p) && isStaticElf(fs.realpathSync(p))) return fs.realpathSync(p);
  }
  throw new Error('no static busybox on this host (apt-get install busybox-static; vm-fixtures/setup.sh does)');
}

// ---- guest scripts -----------------------------------------------------------------------------------

const PRELUDE = `S=/nix/store
now() { adjtimex | awk '/tv_sec/ {s=$2} /tv_usec/ {u=$2} END {printf "%d%06d\\n", s, u}'; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
m() { echo "M|$1|$2"; }
# What taking one timestamp costs (subtracted from every measure).
a=$(now); b=$(now); c=$(now); m overhead_us $(( (c - a) / 2 ))
cd $S
`;

/**
 * The sequential read runs twice: first thing after the mount, when the daemon has served almost nothing
 * (closurefs's JIT is still compiling its request path, and every guest page is touched for the first
 * time), and again at the end, after some 30,000 requests, as a guest that booted from the store would
 * see it. Both are reported; the guest's page cache is dropped before each.
 */
function seqRead(st: SyntheticStore, seqMiB: number, key: string): string {
  return `drop; a=$(now); dd if=$S/${st.large}/data.bin of=/dev/null bs=1M count=${seqMiB} 2>/tmp/dd.err; b=$(now)
# busybox dd reports only records ("64+0 records out"): full 1 MiB records, and partial ones.
m ${key}_full_mib "$(sed -n 's/^\\([0-9]*\\)+[0-9]* records out.*/\\1/p' /tmp/dd.err)"
m ${key}_partial "$(sed -n 's/^[0-9]*+\\([0-9]*\\) records out.*/\\1/p' /tmp/dd.err)"
m ${key}_us $((b - a))
`;
}

function perfScript(st: SyntheticStore, seqMiB: number): string {
  return `${PRELUDE}
${seqRead(st, seqMiB, 'seq')}

drop; a=$(now); xargs sh -c 'find "$@" -print0' sh < /bench/paths | xargs -0 stat -c %s > /tmp/sizes; b=$(now)
m findstat_us $((b - a)); m findstat_entries $(wc -l < /tmp/sizes)

# The list of files is made outside the measure; reading them still looks each one up (dentries dropped).
xargs sh -c 'find "$@" -type f' sh < /bench/paths > /tmp/files
drop; a=$(now); xargs cat < /tmp/files | wc -c > /tmp/nbytes; b=$(now)
m small_us $((b - a)); m small_files $(wc -l < /tmp/files); m small_bytes $(cat /tmp/nbytes)

drop; a=$(now); i=0; while [ $i -lt 20 ]; do $S/${st.busybox}/bin/busybox true || echo "M|exec_failed|1"; i=$((i + 1)); done; b=$(now)
m exec20_us $((b - a))

${seqRead(st, seqMiB, 'seq2')}`;
}

function walkScript(): string {
  return `${PRELUDE}
drop; a=$(now); xargs sh -c 'find "$@" -print0' sh < /bench/walk | xargs -0 stat -c %s | wc -l > /tmp/n; b=$(now)
m walk_us $((b - a)); m walk_entries $(cat /tmp/n)
# The host samples the daemon's fds and RSS now, while the guest still holds every inode it looked up.
echo CFS-BENCH-WALKED
sleep 3
`;
}

function parseMeasures(output: string): Map<string, number> {
  const m = new Map<string, number>();
  for (const line of output.split('\n')) {
    const r = /^M\|([a-z0-9_]+)\|(-?\d+)$/.exec(line.trim());
    if (r !== null) m.set(r[1] as string, Number(r[2]));
  }
  return m;
}

// ---- running one boot --------------------------------------------------------------------------------

const TAG = 'store';

interface Served {
  daemon?: RunningDaemon;
  run: (script: string, files: Record<string, string>, onConsole?: (c: string) => void) => Promise<GuestResult>;
  finish: () => Promise<string>;
}

async function serve(col: Column, st: SyntheticStore, closure: string, opts: Options, socketDir: string): Promise<Served> {
  const base = { tag: TAG, flavour: 'amd64' as const, memMiB: 1024, timeoutMs: 600_000 };
  if (col === '9p') {
    return {
      run: (script, files, onConsole) => runGuest({ ...base, virtfs: { path: st.storeDir }, script, files, onConsole }),
      finish: async () => '',
    };
  }
  const daemon = await startDaemon({
    kind: col,
    storeDir: st.storeDir,
    closureFiles: [closure],
    socketDir,
    cache: opts.cache,
    logLevel: process.env.CFS_SHOW_COUNTS ? 'info' : 'warn',
  });
  return {
    daemon,
    run: (script, files, onConsole) => runGuest({ ...base, socketPath: daemon.socket, script, files, onConsole }),
    finish: async () => {
      // Both daemons exit by themselves when QEMU disconnects; stop() only cleans up if one does not.
      if ((await daemon.waitExit(10_000)) === undefined) log(`${col} did not exit after the guest; stopping it`);
      const exit = await daemon.stop();
      if (exit.code !== 0) log(`${col} exited with ${JSON.stringify(exit)}:\n${daemon.output().slice(-2000)}`);
      if (process.env.CFS_SHOW_COUNTS) log(daemon.output().split('\n').filter((l) => l.includes('requests served')).join('\n'));
      return daemon.output();
    },
  };
}

function check(cond: boolean, what: string, r: GuestResult, daemonOut: string): void {
  if (!cond) throw new Error(`${what}\n${describeRun(r)}\ndaemon output:\n${daemonOut.slice(-3000)}`);
}

interface PerfSample {
  seqMiBps: number;
  seq2MiBps: number;
  findstatS: number;
  smallFilesPerS: number;
  execMsPerStart: number;
  bootMs: number;
}

interface Sizes {
  seqMiB: number;
  /** Packages (20 files each) that find+stat and the small-file read cover. */
  perfPackages: number;
  /** Packages the resource walk covers. */
  walkPackages: number;
}

async function perfBoot(col: Column, st: SyntheticStore, opts: Options, socketDir: string, sizes: Sizes): Promise<PerfSample> {
  const { seqMiB, perfPackages } = sizes;
  const s = await serve(col, st, st.closures.perf, opts, socketDir);
  const paths = `${st.packages.slice(0, perfPackages).join('\n')}\n`;
  let r: GuestResult;
  let out = '';
  try {
    r = await s.run(perfScript(st, seqMiB), { 'bench/paths': paths });
  } finally {
    out = await s.finish();
  }
  const m = parseMeasures(r.output);
  const get = (k: string): number => {
    const v = m.get(k);
    check(v !== undefined, `${col}: the guest reported no ${k}`, r, out);
    return v as number;
  };
  check(r.exitStatus === 0, `${col}: guest script failed`, r, out);
  check(!m.has('exec_failed'), `${col}: busybox failed to start from the store`, r, out);
  for (const k of ['seq', 'seq2']) {
    check(get(`${k}_full_mib`) === seqMiB && get(`${k}_partial`) === 0,
      `${col}: sequential read (${k}) returned ${get(`${k}_full_mib`)}+${get(`${k}_partial`)} records of 1 MiB, want ${seqMiB}`, r, out);
  }
  const entries = perfPackages * ENTRIES_PER_PACKAGE;
  const files = perfPackages * FILES_PER_PACKAGE;
  const smallBytes = packageBytes(perfPackages);
  check(get('findstat_entries') === entries, `${col}: find saw ${get('findstat_entries')} entries, want ${entries}`, r, out);
  check(get('small_files') === files, `${col}: ${get('small_files')} small files, want ${files}`, r, out);
  check(get('small_bytes') === smallBytes, `${col}: read ${get('small_bytes')} bytes of small files, want ${smallBytes}`, r, out);
  const over = get('overhead_us');
  const us = (k: string): number => Math.max(1, get(k) - over);
  return {
    seqMiBps: seqMiB / (us('seq_us') / 1e6),
    seq2MiBps: seqMiB / (us('seq2_us') / 1e6),
    findstatS: us('findstat_us') / 1e6,
    smallFilesPerS: files / (us('small_us') / 1e6),
    execMsPerStart: us('exec20_us') / 1000 / 20,
    bootMs: r.durationMs,
  };
}

interface WalkSample {
  /** Seconds for the whole walk, or NaN when the daemon could not complete it. */
  walkS: number;
  entries: number;
  wantEntries: number;
  complete: boolean;
  fds: number;
  rssMiB: number;
  /** The RSS split: anonymous, file-backed (binary and libraries), guest memory the daemon has touched. */
  rssSplitMiB: { anon: number; file: number; shmem: number };
  /** The daemon's RLIMIT_NOFILE (soft), from /proc/<pid>/limits. */
  fdLimit: string;
  /** Distinct error messages the guest's find/stat printed (an incomplete walk says why). */
  guestErrors: string[];
}

async function walkBoot(kind: DaemonKind, st: SyntheticStore, opts: Options, socketDir: string, sizes: Sizes): Promise<WalkSample> {
  const n = sizes.walkPackages;
  const closure = n <= 1000 ? st.closures.walk20k : st.closures.walk100k;
  const want = n * ENTRIES_PER_PACKAGE;
  const s = await serve(kind, st, closure, opts, socketDir);
  const pid = s.daemon?.pid as number;
  let fdLimit = '';
  let sampled: ReturnType<typeof processResources> | undefined;
  let sampleError: unknown;
  let seen = '';
  let r: GuestResult;
  let out = '';
  try {
    r = await s.run(walkScript(), { 'bench/walk': `${st.packages.slice(0, n).join('\n')}\n` }, (chunk) => {
      seen += chunk;
      if (sampled === undefined && sampleError === undefined && seen.includes('CFS-BENCH-WALKED')) {
        try {
          sampled = processResources(pid);
          fdLimit = /^Max open files\s+(\S+)/m.exec(fs.readFileSync(`/proc/${pid}/limits`, 'utf8'))?.[1] ?? '';
        } catch (e) {
          sampleError = e;
        }
      }
    });
  } finally {
    out = await s.finish();
  }
  const m = parseMeasures(r.output);
  check(r.exitStatus === 0, `${kind}: walk script failed`, r, out);
  check(sampled !== undefined, `${kind}: could not sample /proc/${pid}: ${String(sampleError)}`, r, out);
  const entries = m.get('walk_entries') ?? 0;
  // closurefs must serve the whole walk. virtiofsd pins one fd per inode the guest holds, so where the fd
  // limit is below the closure's size (this container: a hard limit of 20,000) it fails part of the walk
  // with EMFILE: that is a result to report, not a reason to stop the benchmark.
  if (kind === 'closurefs') check(entries === want, `${kind}: the walk saw ${entries} entries, want ${want}`, r, out);
  const guestErrors = [...new Set(r.output.split('\n').filter((l) => /: [A-Z][a-z].*$/.test(l) && !l.startsWith('M|'))
    .map((l) => l.replace(/^.*: /, '')))];
  const walkUs = (m.get('walk_us') ?? 0) - (m.get('overhead_us') ?? 0);
  return {
    walkS: entries === want ? walkUs / 1e6 : NaN,
    entries,
    wantEntries: want,
    complete: entries === want,
    fds: sampled?.fds ?? NaN,
    rssMiB: (sampled?.rssKiB ?? NaN) / 1024,
    rssSplitMiB: { anon: (sampled?.anonKiB ?? NaN) / 1024, file: (sampled?.fileKiB ?? NaN) / 1024, shmem: (sampled?.shmemKiB ?? NaN) / 1024 },
    fdLimit,
    guestErrors,
  };
}

async function startupMs(kind: DaemonKind, st: SyntheticStore, socketDir: string): Promise<number> {
  const d = await startDaemon({ kind, storeDir: st.storeDir, closureFiles: [st.closures.walk100k], socketDir, logLevel: 'warn' });
  const ms = d.readyMs;
  await d.stop();
  return ms;
}

/**
 * Reads on the host everything the boots will touch (the large file's measured part, the small files, the
 * walked tree's metadata), so that the host page and inode caches are warm for every column alike and the
 * first boot does not pay for the disk.
 */
function warmHost(st: SyntheticStore, seqMiB: number, walkPackages: number): void {
  const fd = fs.openSync(path.join(st.storeDir, st.large, 'data.bin'), 'r');
  const buf = Buffer.alloc(1 << 20);
  for (let i = 0; i < seqMiB; i++) fs.readSync(fd, buf, 0, buf.length, i * buf.length);
  fs.closeSync(fd);
  const walk = (p: string, read: boolean): void => {
    const stt = fs.lstatSync(p);
    if (stt.isDirectory()) for (const e of fs.readdirSync(p)) walk(path.join(p, e), read);
    else if (read && stt.isFile()) fs.readFileSync(p);
  };
  st.packages.slice(0, walkPackages).forEach((p, i) => walk(path.join(st.storeDir, p), i < 500));
  walk(path.join(st.storeDir, st.busybox), true);
}

// ---- statistics and output ---------------------------------------------------------------------------

function median(xs: number[]): number {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2;
}

interface Row {
  key: string;
  label: string;
  unit: string;
  better: 'higher' | 'lower';
  samples: Partial<Record<Column, number[]>>;
  /** Target on the ratio closurefs / virtiofsd, or on closurefs' absolute value. */
  target?: { ratio?: number; max?: number };
  /** Counts print as integers. */
  integer?: boolean;
}

function fmt(v: number | undefined, integer = false): string {
  if (v === undefined || !Number.isFinite(v)) return 'n/a';
  if (integer) return Math.round(v).toString();
  if (Math.abs(v) >= 100) return v.toFixed(0);
  if (Math.abs(v) >= 10) return v.toFixed(1);
  return v.toFixed(2);
}

/** Two decimals, or four when two would print the target itself on the wrong side of it (0.9997 as "1.00×"). */
function ratioText(ratio: number, target: number | undefined): string {
  const short = ratio.toFixed(2);
  return target !== undefined && Number(short) === target && ratio !== target ? `${ratio.toFixed(4)}×` : `${short}×`;
}

function rotate<T>(xs: T[], by: number): T[] {
  const k = by % xs.length;
  return [...xs.slice(k), ...xs.slice(0, k)];
}

function versionOf(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  return (r.stdout ?? '').split('\n')[0]?.trim() ?? '';
}

async function main(): Promise<void> {
  const opts = parseArgs(process.argv.slice(2));
  const t0 = Date.now();
  // The commit the daemon under test was built from: taken now, since others may commit during a long run.
  const dirty = spawnSync('git', ['-C', repoRoot(), 'status', '--porcelain', '--', 'src', 'addon'], { encoding: 'utf8' }).stdout.trim() !== '';
  const commit = `${versionOf('git', ['-C', repoRoot(), 'rev-parse', '--short', 'HEAD'])}${dirty ? '+uncommitted src' : ''}`;
  // Quick: fewer bytes and files, same shape. The small-file measures cost about 1 ms per file under TCG
  // (9p's find+stat several times that), so quick covers 2,000 files instead of 10,000.
  const sizes: Sizes = opts.quick
    ? { seqMiB: 64, perfPackages: 100, walkPackages: 1000 }
    : { seqMiB: 256, perfPackages: 500, walkPackages: 5000 };
  const { seqMiB } = sizes;
  const st = syntheticStore(staticBusybox(), log);
  const assets = guestAssets('amd64');
  const columns: Column[] = ['closurefs', 'virtiofsd'];
  if (opts.with9p && assets.features.includes('9p')) columns.push('9p');
  else if (opts.with9p) log(`the ${assets.flavour} kernel has no 9p; no 9p column`);

  warmHost(st, seqMiB, sizes.walkPackages);
  const socketDir = fs.mkdtempSync(path.join(os.tmpdir(), 'cfs-bench-guest-'));

  const perf: Partial<Record<Column, PerfSample[]>> = {};
  try {
    for (let run = 0; run < (opts.parts.has('perf') ? opts.runs : 0); run++) {
      for (const col of rotate(columns, run)) {
        const s = await perfBoot(col, st, opts, socketDir, sizes);
        (perf[col] ??= []).push(s);
        log(`run ${run + 1}/${opts.runs} ${col}: seq ${fmt(s.seqMiBps)} / ${fmt(s.seq2MiBps)} MiB/s, find+stat ${fmt(s.findstatS)} s, ` +
          `small ${fmt(s.smallFilesPerS)} files/s, exec ${fmt(s.execMsPerStart)} ms (boot ${s.bootMs} ms)`);
      }
    }
    const walk: Partial<Record<DaemonKind, WalkSample>> = {};
    for (const kind of opts.parts.has('walk') ? (['closurefs', 'virtiofsd'] as const) : []) {
      walk[kind] = await walkBoot(kind, st, opts, socketDir, sizes);
      log(`walk ${kind}: ${JSON.stringify(walk[kind])}`);
    }
    const startup: Partial<Record<DaemonKind, number[]>> = {};
    for (let run = 0; run < (opts.parts.has('startup') ? Math.max(opts.runs, 5) : 0); run++) {
      for (const kind of rotate(['closurefs', 'virtiofsd'] as DaemonKind[], run)) {
        (startup[kind] ??= []).push(await startupMs(kind, st, socketDir));
      }
    }

    const pick = (f: (s: PerfSample) => number): Partial<Record<Column, number[]>> =>
      Object.fromEntries(columns.map((c) => [c, (perf[c] ?? []).map(f)]));
    const walkFiles = (sizes.walkPackages * FILES_PER_PACKAGE).toLocaleString('en-US');
    const perfFiles = (sizes.perfPackages * FILES_PER_PACKAGE).toLocaleString('en-US');
    const rows: Row[] = [
      { key: 'seq_read', label: `Sequential read, ${seqMiB} MiB, cold, first after the mount`, unit: 'MiB/s', better: 'higher', samples: pick((s) => s.seqMiBps), target: { ratio: 1 } },
      { key: 'seq_read_again', label: `Sequential read, ${seqMiB} MiB, cold, again after the other measures`, unit: 'MiB/s', better: 'higher', samples: pick((s) => s.seq2MiBps), target: { ratio: 1 } },
      { key: 'find_stat', label: `find + stat, ${perfFiles} files, cold`, unit: 's', better: 'lower', samples: pick((s) => s.findstatS), target: { ratio: 1 } },
      { key: 'small_files', label: `Read every small file once (${perfFiles}), cold`, unit: 'files/s', better: 'higher', samples: pick((s) => s.smallFilesPerS), target: { ratio: 1 } },
      { key: 'exec', label: 'Start busybox from the store ×20 after drop_caches', unit: 'ms/start', better: 'lower', samples: pick((s) => s.execMsPerStart), target: { ratio: 1 } },
      { key: 'walk', label: `Walk (find + stat) of a ${walkFiles}-file closure`, unit: 's', better: 'lower', samples: { closurefs: [walk.closurefs?.walkS ?? NaN], virtiofsd: [walk.virtiofsd?.walkS ?? NaN] }, target: { ratio: 1 } },
      { key: 'fds', label: `Daemon open fds after the ${walkFiles}-file walk`, unit: 'fds', better: 'lower', integer: true, samples: { closurefs: [walk.closurefs?.fds ?? NaN], virtiofsd: [walk.virtiofsd?.fds ?? NaN] }, target: { max: 64 } },
      { key: 'rss', label: `Daemon RSS after the ${walkFiles}-file walk`, unit: 'MiB', better: 'lower', samples: { closurefs: [walk.closurefs?.rssMiB ?? NaN], virtiofsd: [walk.virtiofsd?.rssMiB ?? NaN] }, target: { max: 96 } },
      { key: 'startup', label: 'Startup to a ready socket, 5,000-path closure', unit: 'ms', better: 'lower', samples: { closurefs: startup.closurefs ?? [], virtiofsd: startup.virtiofsd ?? [] }, target: { max: 500 } },
    ];

    const results = rows.map((row) => {
      const med = Object.fromEntries(Object.entries(row.samples).map(([c, xs]) => [c, median(xs as number[])])) as Partial<Record<Column, number>>;
      const ratio = (med.closurefs ?? NaN) / (med.virtiofsd ?? NaN);
      let met: boolean | undefined;
      // No verdict without a ratio (e.g. the peer could not complete the walk).
      if (row.target?.ratio !== undefined && Number.isFinite(ratio)) met = row.better === 'higher' ? ratio >= row.target.ratio : ratio <= row.target.ratio;
      else if (row.target?.max !== undefined && Number.isFinite(med.closurefs)) met = (med.closurefs as number) < row.target.max;
      return { ...row, median: med, ratio, met };
    });

    const head = ['Measure', 'Unit', 'closurefs', 'virtiofsd', ...(columns.includes('9p') ? ['9p'] : []), 'closurefs / virtiofsd', 'Target'];
    const lines = [`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`];
    for (const r of results) {
      const target = r.target?.ratio !== undefined
        ? `${r.better === 'higher' ? '≥' : '≤'} ${r.target.ratio.toFixed(1)}×`
        : r.target?.max !== undefined ? `< ${r.target.max} ${r.unit}` : '';
      const cells = [
        r.label, r.unit, fmt(r.median.closurefs, r.integer), fmt(r.median.virtiofsd, r.integer),
        ...(columns.includes('9p') ? [fmt(r.median['9p'], r.integer)] : []),
        Number.isFinite(r.ratio) ? ratioText(r.ratio, r.target?.ratio) : 'n/a',
        `${target}${r.met === undefined ? '' : r.met ? ' ✓' : ' ✗'}`,
      ];
      lines.push(`| ${cells.join(' | ')} |`);
    }
    const notes: string[] = [];
    for (const [kind, w] of Object.entries(walk)) {
      if (w !== undefined && !w.complete) {
        notes.push(`${kind} served only ${w.entries.toLocaleString('en-US')} of ${w.wantEntries.toLocaleString('en-US')} entries of the walk ` +
          `(guest saw: ${w.guestErrors.join('; ') || 'no error text'}; its fd limit: ${w.fdLimit}), so its walk time is n/a.`);
      }
    }
    for (const [kind, w] of Object.entries(walk)) {
      if (w === undefined) continue;
      const { anon, file, shmem } = w.rssSplitMiB;
      notes.push(`${kind}'s RSS after the walk: ${fmt(anon)} MiB anonymous, ${fmt(file)} MiB file-backed (binary, libraries), ` +
        `${fmt(shmem)} MiB of the guest's memory it has touched.`);
    }
    const elapsedS = (Date.now() - t0) / 1000;
    const cpu = /^model name\s*:\s*(.*)$/m.exec(fs.readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? 'unknown';
    const env = {
      date: new Date().toISOString(),
      commit,
      cpu,
      cpus: os.cpus().length,
      qemu: versionOf('qemu-system-x86_64', ['--version']),
      guestKernel: `${assets.kernelVersion} (${assets.flavour})`,
      node: process.version,
      accel: 'tcg',
      cache: opts.cache,
      quick: opts.quick,
      runs: opts.runs,
      elapsedS,
    };
    const summary = [
      `Guest benchmark (${opts.quick ? 'quick, ' : ''}${opts.runs} runs, medians; QEMU ${env.qemu.replace(/^QEMU emulator version /, '')} TCG, ` +
        `guest ${env.guestKernel}, cache=${opts.cache}, ${env.cpus} × ${cpu}, commit ${env.commit})`,
      '',
      ...lines,
      ...(notes.length > 0 ? ['', ...notes.map((n) => `- ${n}`)] : []),
      '',
      `Reproduce: npm run build && node dist/scripts/bench-guest.js${opts.quick ? ' --quick' : ''}${opts.cache !== 'auto' ? ` --cache ${opts.cache}` : ''}${opts.parts.size < PARTS.length ? ` --only ${[...opts.parts].join(',')}` : ''}  (took ${elapsedS.toFixed(0)} s)`,
    ].join('\n');
    process.stdout.write(`${summary}\n`);

    const outDir = path.join(repoRoot(), 'bench-results');
    fs.mkdirSync(outDir, { recursive: true });
    const file = path.join(outDir, `guest-${env.date.replace(/[:.]/g, '-')}.json`);
    const json = {
      env,
      method: 'see scripts/bench-guest.ts; ratio = closurefs / virtiofsd median',
      results: results.map((r) => ({
        key: r.key, label: r.label, unit: r.unit, better: r.better, samples: r.samples, median: r.median,
        ratio: Number.isFinite(r.ratio) ? r.ratio : null, target: r.target ?? null, met: r.met ?? null,
      })),
      perfSamples: perf,
      walk,
      sizes,
      notes,
      table: lines.join('\n'),
    };
    fs.writeFileSync(file, `${JSON.stringify(json, null, 2)}\n`);
    log(`wrote ${path.relative(process.cwd(), file)}`);
  } finally {
    fs.rmSync(socketDir, { recursive: true, force: true });
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`bench-guest: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exit(1);
});
