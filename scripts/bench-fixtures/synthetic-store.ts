/**
 * Synthetic, deterministic store trees for the guest benchmark. They are not Nix-built (a 100,000-file Nix
 * build would take minutes and prove nothing extra): plain directories named like store paths
 * (<32 nix-base32 chars>-<name>), in one host directory that stands in for /nix/store, plus closure files
 * (one /nix/store/... path a line, the `nix-store -qR` format) that select subsets of them.
 *
 * Layout (generated once into $CLOSUREFS_CACHE/bench-guest/<version>/, built in a temp dir and renamed):
 *   store/<h>-bench-large/data.bin        256 MiB of pseudo-random bytes (sequential read)
 *   store/<h>-bench-busybox/bin/busybox   a static busybox (starting a binary from the store)
 *   store/<h>-bench-pkg-NNNN/...          5,000 packages × 20 small files (64 B to 4 KiB) in bin/, lib/,
 *                                         share/doc/, share/data/: 100,000 files, 25,000 directories
 * Closures: perf (large + busybox + packages 0-499: 10,000 small files), walk-20k (packages 0-999),
 * walk-100k (all 5,000 packages; also the 5,000-path startup closure).
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const NIX_BASE32 = '0123456789abcdfghijklmnpqrsvwxyz';
/** Bump when the layout changes, so an old cached tree is not reused. */
const VERSION = 'v1';

export const PACKAGES = 5000;
export const FILES_PER_PACKAGE = 20;
export const LARGE_BYTES = 256 * 1024 * 1024;

export interface SyntheticStore {
  dir: string;
  storeDir: string;
  /** Basenames. */
  large: string;
  busybox: string;
  packages: string[];
  closures: { perf: string; walk20k: string; walk100k: string };
}

/** Entries of one package: its root, 5 directories, 20 files. */
export const ENTRIES_PER_PACKAGE = 26;

/** Bytes in the small files of packages 0..n-1. */
export function packageBytes(n: number): number {
  let bytes = 0;
  for (let i = 0; i < n; i++) for (let k = 0; k < FILES_PER_PACKAGE; k++) bytes += fileSize(i, k);
  return bytes;
}

/** A store-path hash part: 32 nix-base32 characters derived from the name (deterministic, well-formed). */
export function storeHash(seed: string): string {
  const d = createHash('sha256').update(seed).digest();
  let s = '';
  for (let i = 0; i < 32; i++) s += NIX_BASE32[(d[i] as number) % 32];
  return s;
}

/** xorshift32: a fast deterministic byte source (file contents need only be reproducible and not constant). */
function fill(buf: Buffer, seed: number): void {
  let x = seed >>> 0 || 0x9e3779b9;
  const words = new Uint32Array(buf.buffer, buf.byteOffset, Math.floor(buf.length / 4));
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    words[i] = x >>> 0;
  }
  for (let i = words.length * 4; i < buf.length; i++) buf[i] = i & 0xff;
}

function fileSize(pkg: number, k: number): number {
  // 64 B .. 4 KiB, spread deterministically.
  return 64 + ((pkg * 7919 + k * 104729) % 4033);
}

/** Relative paths of one package's files, with their directories. */
function packageLayout(): { dirs: string[]; files: string[] } {
  const dirs = ['bin', 'lib', 'share', 'share/doc', 'share/data'];
  const files: string[] = [];
  for (let k = 0; k < FILES_PER_PACKAGE; k++) {
    if (k < 2) files.push(`bin/tool-${k}`);
    else if (k < 8) files.push(`lib/libbench-${k}.so`);
    else if (k < 14) files.push(`share/doc/page-${k}.txt`);
    else files.push(`share/data/blob-${k}.dat`);
  }
  return { dirs, files };
}

function names(): { large: string; busybox: string; packages: string[] } {
  const large = `${storeHash('bench-large')}-bench-large`;
  const busybox = `${storeHash('bench-busybox')}-bench-busybox`;
  const packages: string[] = [];
  for (let i = 0; i < PACKAGES; i++) packages.push(`${storeHash(`bench-pkg-${i}`)}-bench-pkg-${String(i).padStart(4, '0')}`);
  return { large, busybox, packages };
}

function describe(dir: string): SyntheticStore {
  const n = names();
  const layout = packageLayout();
  if (1 + layout.dirs.length + layout.files.length !== ENTRIES_PER_PACKAGE) throw new Error('ENTRIES_PER_PACKAGE is stale');
  return {
    dir,
    storeDir: path.join(dir, 'store'),
    ...n,
    closures: {
      perf: path.join(dir, 'perf.closure'),
      walk20k: path.join(dir, 'walk-20k.closure'),
      walk100k: path.join(dir, 'walk-100k.closure'),
    },
  };
}

/**
 * Returns the synthetic store, generating it first if needed (about 10-20 s and 700 MB of disk, once).
 * busyboxBinary must be a static busybox (the guest execs it from the store).
 */
export function syntheticStore(busyboxBinary: string, log: (msg: string) => void = () => {}): SyntheticStore {
  const cacheRoot = process.env.CLOSUREFS_CACHE ?? path.join(os.homedir(), '.cache', 'closurefs');
  const base = path.join(cacheRoot, 'bench-guest');
  const dir = path.join(base, VERSION);
  const done = path.join(dir, 'complete');
  if (fs.existsSync(done)) return describe(dir);

  fs.mkdirSync(base, { recursive: true });
  const tmp = fs.mkdtempSync(path.join(base, `.tmp-${VERSION}-`));
  const t0 = Date.now();
  log(`generating the synthetic bench store in ${dir} (once)`);
  const d = describe(tmp);
  const n = names();
  const store = d.storeDir;
  fs.mkdirSync(store);

  const largeDir = path.join(store, n.large);
  fs.mkdirSync(largeDir);
  const chunk = Buffer.alloc(16 * 1024 * 1024);
  const fd = fs.openSync(path.join(largeDir, 'data.bin'), 'w');
  for (let off = 0, i = 1; off < LARGE_BYTES; off += chunk.length, i++) {
    fill(chunk, i * 2654435761);
    fs.writeSync(fd, chunk, 0, Math.min(chunk.length, LARGE_BYTES - off));
  }
  fs.closeSync(fd);

  fs.mkdirSync(path.join(store, n.busybox, 'bin'), { recursive: true });
  fs.copyFileSync(busyboxBinary, path.join(store, n.busybox, 'bin', 'busybox'));
  fs.chmodSync(path.join(store, n.busybox, 'bin', 'busybox'), 0o555);

  const layout = packageLayout();
  const buf = Buffer.alloc(4096 + 64);
  n.packages.forEach((name, i) => {
    const p = path.join(store, name);
    fs.mkdirSync(p);
    for (const sub of layout.dirs) fs.mkdirSync(path.join(p, sub));
    layout.files.forEach((rel, k) => {
      const size = fileSize(i, k);
      fill(buf, i * 131 + k + 1);
      fs.writeFileSync(path.join(p, rel), buf.subarray(0, size), { mode: rel.startsWith('bin/') ? 0o555 : 0o444 });
    });
  });

  const list = (xs: string[]): string => xs.map((x) => `/nix/store/${x}\n`).join('');
  fs.writeFileSync(d.closures.perf, list([n.large, n.busybox, ...n.packages.slice(0, 500)]));
  fs.writeFileSync(d.closures.walk20k, list(n.packages.slice(0, 1000)));
  fs.writeFileSync(d.closures.walk100k, list(n.packages));
  fs.writeFileSync(path.join(tmp, 'complete'), `${new Date().toISOString()}\n`);
  fs.rmSync(dir, { recursive: true, force: true });
  fs.renameSync(tmp, dir);
  log(`generated in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  return describe(dir);
}
