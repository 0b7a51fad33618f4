/**
 * Start-up warm-up. V8 runs new code in its interpreter and compiles a function
 * to machine code only after it has run a few thousand times, so a fresh daemon
 * answers its first few thousand requests several times slower than it answers
 * the rest. Those first requests are a VM's boot: the ones a user waits for.
 *
 * So once the socket is listening, the daemon serves a few thousand requests to
 * itself through the same code a connection uses (Virtqueue, descriptor chains,
 * FuseServer, ClosureView) over the closure it serves, on a private ring
 * (SelfRing) with a private view that is dropped afterwards. It takes a fraction
 * of a second; a VMM that connects meanwhile waits in the listen backlog.
 */
import { Errno } from '../fuse/errno';
import type { CacheMode } from '../fuse/server';
import { FuseServer } from '../fuse/server';
import { ClosureView } from '../store';
import { SelfClient, type ListedEntry } from './self-client';
import { SelfRing } from './self-ring';

export interface WarmUpOptions {
  storeDir: string;
  paths: readonly string[];
  cache?: CacheMode;
  /** Rounds of the request mix; default 1500 (about 15,000 requests). */
  rounds?: number;
  /** Stops early after this many milliseconds; default 400. */
  budgetMs?: number;
}

export interface WarmUpReport {
  requests: number;
  rounds: number;
  ms: number;
  /** Whether the closure had a regular file and a directory to read (a closure of only symlinks has not). */
  foundFile: boolean;
}

/** What the request mix works on: found by listing the served closure, nothing chosen by name. */
interface Targets {
  dir: ListedEntry;
  file: ListedEntry | undefined;
  link: ListedEntry | undefined;
}

/** Directories looked at while searching for a file to read. */
const SEARCH_LIMIT = 64;
/** A name no store path has (store names never start with '.'), for the negative LOOKUP path. */
const MISSING = Buffer.from('.closurefs-warm-up');

export function warmUp(opts: WarmUpOptions): WarmUpReport {
  const started = process.hrtime.bigint();
  const elapsedMs = () => Number(process.hrtime.bigint() - started) / 1e6;
  const view = new ClosureView({ storeDir: opts.storeDir, paths: opts.paths });
  const ring = new SelfRing(new FuseServer(view, { cache: opts.cache, zeroMessageOpendir: true }));
  try {
    const client = new SelfClient(ring);
    client.init();
    const targets = findTargets(client);
    const rounds = opts.rounds ?? 1500;
    const budgetMs = opts.budgetMs ?? 400;
    let done = 0;
    while (done < rounds && elapsedMs() < budgetMs) playRound(client, targets, done++);
    client.destroy();
    return { requests: client.requests, rounds: done, ms: elapsedMs(), foundFile: targets.file !== undefined };
  } finally {
    ring.close();
    view.close();
  }
}

/** A directory, a regular file and a symlink of the closure, breadth first from the root. */
function findTargets(client: SelfClient): Targets {
  const root: ListedEntry = { name: Buffer.from('/'), nodeid: 1, type: DT_DIR };
  let file: ListedEntry | undefined;
  let link: ListedEntry | undefined;
  let dir = root;
  const pending = [root];
  for (let looked = 0; looked < SEARCH_LIMIT && pending.length > 0 && (file === undefined || link === undefined); looked++) {
    const d = pending.shift() as ListedEntry;
    for (const e of client.readdirplus(d.nodeid, 0)) {
      if (e.type === DT_DIR) pending.push(e);
      if (e.type === DT_REG && file === undefined) [file, dir] = [e, d];
      if (e.type === DT_LNK && link === undefined) link = e;
    }
  }
  return { dir, file, link };
}

const DT_DIR = 4;
const DT_REG = 8;
const DT_LNK = 10;

/** One round of what a booting guest sends, in rough proportion. */
function playRound(c: SelfClient, t: Targets, round: number): void {
  c.lookupMissing(t.dir.nodeid, MISSING);
  c.getattr(t.dir.nodeid);
  c.access(t.dir.nodeid);
  c.opendir(t.dir.nodeid);
  if (round % 4 === 0) c.forgetAll(c.readdirplus(t.dir.nodeid, 0));
  if (t.link !== undefined) c.readlink(t.link.nodeid);
  if (t.file === undefined) return;
  const file = c.lookup(t.dir.nodeid, t.file.name);
  if (file === undefined) return;
  c.getattr(file);
  const fh = c.open(file);
  c.read(file, fh, 0, 4096);
  if (round % 2 === 0) c.read(file, fh, 0, 128 * 1024);
  c.getxattr(file, Errno.ENODATA);
  c.release(file, fh);
  c.forget(file, 1);
}
