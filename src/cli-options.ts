/**
 * Command-line parsing: closurefs' own flags plus the virtiofsd flags that
 * microvm.nix and other launchers pass, so closurefs can be dropped in where
 * virtiofsd ran. Parsing is pure (argv in, options or a UsageError out) so it is
 * tested without starting anything.
 */
import { Command, CommanderError, Option } from 'commander';
import { ClosurefsError } from './errors';
import { LOG_LEVELS, LogLevel } from './log';

export type CacheMode = 'auto' | 'always' | 'never';

/** Exit statuses, documented in --help. */
export const EXIT = {
  OK: 0,
  INTERNAL: 1,
  USAGE: 2,
  CLOSURE: 3,
  SOCKET: 4,
  STORE: 5,
} as const;

export const EXIT_HELP = `
Exit status:
  0  clean shutdown (frontend disconnected, SIGTERM or SIGINT)
  1  internal error
  2  bad or conflicting flags
  3  bad closure input (the message names the file and line)
  4  socket problem (directory missing, path in use, --fd not a listening socket)
  5  store directory missing or unreadable`;

export class UsageError extends ClosurefsError {
  override readonly code = 'CFS_ERR_USAGE';
}

export interface DaemonOptions {
  socketPath?: string;
  fd?: number;
  socketGroup?: string;
  closureFiles: string[];
  closureOf: string[];
  storeDir: string;
  allowMissing: boolean;
  tag?: string;
  numRequestQueues: number;
  cache: CacheMode;
  logLevel: LogLevel;
  persist: boolean;
  maxOpenFiles: number;
  daxWindow?: number;
  /**
   * Threads that read large READs arriving together (virtiofsd's flag, libuv's pool);
   * 0 serves every request on the main thread. Undefined: UV_THREADPOOL_SIZE if set,
   * else one per CPU, at most 4 (cli.ts readPoolSize).
   */
  threadPoolSize?: number;
  /** Longest a served queue is polled for its next request before sleeping (us); 0 never polls. */
  pollMaxUs: number;
  /** Guest-shaped READs a fresh daemon serves itself before a frontend connects (warmup/); 0: none. */
  warmUpReads: number;
  /** virtiofsd flags accepted for compatibility that change nothing for an immutable read-only store. */
  ignored: string[];
}

export type ParseResult =
  | { kind: 'run'; options: DaemonOptions }
  | { kind: 'capabilities' }
  | { kind: 'exit'; status: number; output: string };

const DEFAULT_STORE = '/nix/store';
const TAG_MAX = 36; // virtio-fs config space: tag[36]
const POLL_MAX_US_LIMIT = 10_000;
/** Enough for V8 to optimize the READ path (10 READs measured no gain, 3,000 a 9% faster first read). */
const DEFAULT_WARM_UP_READS = 3000;
const WARM_UP_READS_LIMIT = 100_000;

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

function positiveInt(name: string, max: number): (v: string) => number {
  return (v) => {
    const n = Number(v);
    if (!/^\d+$/.test(v) || !Number.isSafeInteger(n) || n < 1 || n > max) {
      throw new UsageError(`${name} must be an integer from 1 to ${max}, got '${v}'`);
    }
    return n;
  };
}

/** Sizes like 8G, 512M, 65536 (bytes). */
export function parseSize(v: string): number {
  const m = /^(\d+)([KMGT]i?B?)?$/i.exec(v.trim());
  if (!m) throw new UsageError(`not a size: '${v}' (use e.g. 512M or 8G)`);
  const unit = (m[2] ?? '').charAt(0).toUpperCase();
  const shift = { '': 0, K: 10, M: 20, G: 30, T: 40 }[unit] ?? 0;
  const n = Number(m[1]) * 2 ** shift;
  if (!Number.isSafeInteger(n)) throw new UsageError(`size too large: '${v}'`);
  return n;
}

/** The compatibility flags present in parsed options, by their command-line names. */
function compatFlagsGiven(o: Record<string, unknown>): string[] {
  const names = COMPAT_FLAGS.map((f) => new Option(f));
  return [...new Set(names.filter((opt) => o[opt.attributeName()] !== undefined).map((opt) => opt.long!.replace(/^--no-/, '--')))];
}

function buildCommand(): Command {
  const cmd = new Command('closurefs')
    .description(
      'vhost-user virtio-fs backend that serves exactly one Nix closure, read-only.\n' +
        'The guest mounts it with: mount -t virtiofs TAG /nix/store',
    )
    .option('--socket-path <path>', 'listen for the VMM on this UNIX socket')
    .option('--fd <n>', 'use this inherited listening socket instead of --socket-path', positiveIntOrZero('--fd'))
    .option('--socket-group <group>', 'give the socket to this group (mode 0660)')
    .option('--closure <file>', 'closure to serve: store-paths list, closureInfo dir, path-info JSON or dump-db text (repeatable)', collect, [])
    .option('--closure-of <path>', 'serve the closure of this store path, asking the store (repeatable)', collect, [])
    .option('--store-dir <dir>', `where store paths live on the host (default ${DEFAULT_STORE})`)
    .option('--allow-missing', 'warn about closure paths missing on disk instead of failing', false)
    .option('--tag <tag>', `mount tag offered in the device config space (at most ${TAG_MAX} bytes)`)
    .option('--num-request-queues <n>', 'request queues besides the hiprio queue', positiveInt('--num-request-queues', 64), 1)
    .addOption(new Option('--cache <mode>', 'guest caching (default: always, which suits an immutable store)').choices(['auto', 'always', 'never']))
    .addOption(new Option('--log-level <level>', 'log level').choices([...LOG_LEVELS]).default('info'))
    .option('--persist', 'keep listening for the next frontend after one disconnects', false)
    .option('--max-open-files <n>', 'cap on files the guest may hold open at once', positiveInt('--max-open-files', 1 << 20), 4096)
    .option('--dax-window <size>', 'offer a DAX window of this size (e.g. 8G) over the SHMEM backend messages', parseSize)
    .option('--thread-pool-size <n>', 'threads for large reads that arrive together; 0: every request on the main thread (default: one per CPU, at most 4)', positiveIntOrZero('--thread-pool-size'))
    .option('--poll-max-us <n>', `poll a queue this long for its next request before sleeping until a kick, adapting to the guest; 0: never (at most ${POLL_MAX_US_LIMIT})`, positiveIntOrZero('--poll-max-us'), 32)
    .option('--warm-up-reads <n>', `after listening, serve this many guest-shaped READs to ourselves so a VM's first requests find the request path compiled; stops when a frontend connects; 0: none (at most ${WARM_UP_READS_LIMIT})`, positiveIntOrZero('--warm-up-reads'), DEFAULT_WARM_UP_READS)
    .option('--print-capabilities', 'print the vhost-user backend capabilities as JSON and exit')
    // virtiofsd compatibility (microvm.nix passes these).
    .option('--shared-dir <dir>', 'virtiofsd name for --store-dir')
    .option('-o <options>', 'virtiofsd legacy options: source=DIR,cache=MODE,... (repeatable)', collect, [])
    .addHelpText('after', EXIT_HELP)
    .allowExcessArguments(false)
    .exitOverride();
  for (const flags of COMPAT_FLAGS) cmd.addOption(new Option(flags).hideHelp());
  return cmd;
}

function positiveIntOrZero(name: string): (v: string) => number {
  return (v) => {
    if (!/^\d+$/.test(v) || !Number.isSafeInteger(Number(v))) throw new UsageError(`${name} must be a non-negative integer, got '${v}'`);
    return Number(v);
  };
}

/**
 * virtiofsd flags (microvm.nix passes several) that mean nothing for an immutable,
 * read-only store: accepted, hidden from --help, logged once.
 */
const COMPAT_FLAGS = [
  '--rlimit-nofile <n>',
  '--posix-acl',
  '--xattr',
  '--inode-file-handles [mode]',
  '--readonly',
  '--sandbox <mode>',
  '--seccomp <mode>',
  '--announce-submounts',
  '--allow-direct-io',
  '--killpriv-v2',
  '--no-killpriv-v2',
  '--writeback',
];

interface LegacyOptions {
  source?: string;
  cache?: CacheMode;
  ignored: string[];
}

/** `-o source=DIR,cache=MODE,xattr,...` as virtiofsd's first CLI accepted it. */
function parseLegacy(groups: string[]): LegacyOptions {
  const out: LegacyOptions = { ignored: [] };
  for (const item of groups.flatMap((g) => g.split(','))) {
    if (item === '') continue;
    const eq = item.indexOf('=');
    const key = eq < 0 ? item : item.slice(0, eq);
    const value = eq < 0 ? '' : item.slice(eq + 1);
    if (key === 'source') out.source = value;
    else if (key === 'cache') {
      if (!['auto', 'always', 'never', 'none'].includes(value)) throw new UsageError(`-o cache=${value}: expected auto, always or never`);
      out.cache = value === 'none' ? 'never' : (value as CacheMode);
    } else out.ignored.push(`-o ${item}`);
  }
  return out;
}

/** One value from several spellings of the same setting; different values conflict. */
function agree<T>(what: string, candidates: [string, T | undefined][]): T | undefined {
  const given = candidates.filter((c): c is [string, T] => c[1] !== undefined);
  for (const [flag, value] of given) {
    if (value !== given[0][1]) throw new UsageError(`conflicting flags: ${given[0][0]} and ${flag} name different ${what}s`);
  }
  return given[0]?.[1];
}

export function parseArgs(argv: readonly string[]): ParseResult {
  const cmd = buildCommand();
  let helpText = '';
  cmd.configureOutput({ writeOut: (s) => (helpText += s), writeErr: (s) => (helpText += s) });
  try {
    cmd.parse(argv as string[], { from: 'user' });
  } catch (e) {
    if (e instanceof CommanderError) {
      if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version') return { kind: 'exit', status: EXIT.OK, output: helpText };
      // Errors from our own argument parsers arrive wrapped; keep their message.
      throw new UsageError(e.message.replace(/^error: /, ''));
    }
    throw e;
  }
  const o = cmd.opts();
  if (o.printCapabilities) return { kind: 'capabilities' };
  return { kind: 'run', options: validate(o) };
}

function validate(o: Record<string, unknown>): DaemonOptions {
  const legacy = parseLegacy(o.o as string[]);
  const storeDir =
    agree('store director', [
      ['--store-dir', o.storeDir as string | undefined],
      ['--shared-dir', o.sharedDir as string | undefined],
      ['-o source', legacy.source],
    ]) ?? DEFAULT_STORE;
  // The store never changes under the guest, so letting it cache everything is safe and fastest.
  const cache =
    agree('cache mode', [
      ['--cache', o.cache as CacheMode | undefined],
      ['-o cache', legacy.cache],
    ]) ?? 'always';
  if (o.socketPath === undefined && o.fd === undefined) throw new UsageError('one of --socket-path or --fd is required');
  if (o.socketPath !== undefined && o.fd !== undefined) throw new UsageError('conflicting flags: --socket-path and --fd');
  const closureFiles = o.closure as string[];
  const closureOf = o.closureOf as string[];
  if (closureFiles.length === 0 && closureOf.length === 0) {
    throw new UsageError('no closure given: pass --closure FILE or --closure-of STORE-PATH (closurefs never serves a whole store)');
  }
  const tag = o.tag as string | undefined;
  if (tag !== undefined && (tag.length === 0 || Buffer.byteLength(tag) > TAG_MAX)) {
    throw new UsageError(`--tag must be 1 to ${TAG_MAX} bytes, got ${Buffer.byteLength(tag)}`);
  }
  const dax = o.daxWindow as number | undefined;
  // The guest splits the window into 2 MiB ranges (fs/fuse/dax.c FUSE_DAX_SZ).
  if (dax !== undefined && (dax === 0 || dax % (2 << 20) !== 0)) throw new UsageError(`--dax-window must be a non-zero multiple of 2M, got ${dax} bytes`);
  const pool = o.threadPoolSize as number | undefined;
  // libuv's own limit (MAX_THREADPOOL_SIZE): above it the size would be silently capped.
  if (pool !== undefined && pool > 1024) throw new UsageError(`--thread-pool-size must be at most 1024, got ${pool}`);
  const pollMaxUs = o.pollMaxUs as number;
  // A poll holds the event loop (the socket, signals, the other queues) for its whole window.
  if (pollMaxUs > POLL_MAX_US_LIMIT) throw new UsageError(`--poll-max-us must be at most ${POLL_MAX_US_LIMIT}, got ${pollMaxUs}`);
  const warmUpReads = o.warmUpReads as number;
  if (warmUpReads > WARM_UP_READS_LIMIT) throw new UsageError(`--warm-up-reads must be at most ${WARM_UP_READS_LIMIT}, got ${warmUpReads}`);
  const ignored = [...compatFlagsGiven(o), ...legacy.ignored];
  return {
    socketPath: o.socketPath as string | undefined,
    fd: o.fd as number | undefined,
    socketGroup: o.socketGroup as string | undefined,
    closureFiles,
    closureOf,
    storeDir,
    allowMissing: o.allowMissing as boolean,
    tag,
    numRequestQueues: o.numRequestQueues as number,
    cache,
    logLevel: o.logLevel as LogLevel,
    persist: o.persist as boolean,
    maxOpenFiles: o.maxOpenFiles as number,
    daxWindow: o.daxWindow as number | undefined,
    threadPoolSize: o.threadPoolSize as number | undefined,
    pollMaxUs,
    warmUpReads,
    ignored,
  };
}
