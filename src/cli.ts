/**
 * closurefs entry point: parse flags, load and check the closure, listen, and per
 * frontend connection wire session -> FUSE server -> closure view. Every failure a
 * user can act on ends with one message naming the problem and a documented exit
 * status (see --help).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import { EXIT, DaemonOptions, UsageError, parseArgs } from './cli-options';
import { Daemon, SocketSetupError, openListener } from './daemon';
import { DaxMapper } from './dax/mapper';
import { DaxWindow } from './dax/window';
import { isErrnoError } from './errors';
import { FuseServer } from './fuse';
import { Logger, createLogger } from './log';
import { ClosureInputError, ClosureView, loadClosure } from './store';
import { VhostUserSession } from './vhost-user';
import { WarmUp } from './warmup/warmup';

/** What `--print-capabilities` prints (vhost-user "Backend program conventions"). */
export const CAPABILITIES = { type: 'fs' };

class StoreDirError extends Error {}

function checkStoreDir(storeDir: string): void {
  let st: fs.Stats;
  try {
    st = fs.statSync(storeDir);
    fs.accessSync(storeDir, fs.constants.R_OK | fs.constants.X_OK);
  } catch (e) {
    throw new StoreDirError(`store directory ${storeDir} is not readable: ${isErrnoError(e) ? e.code : (e as Error).message}`);
  }
  if (!st.isDirectory()) throw new StoreDirError(`store directory ${storeDir} is not a directory`);
}

/**
 * A fresh view, FUSE server and DAX window per frontend: node and handle tables
 * and window mappings belong to one guest mount (a reset or reconnect drops them).
 */
function startSession(fd: number, opts: DaemonOptions, paths: readonly string[], logger: Logger, reportCounts = true): VhostUserSession {
  const view = new ClosureView({ storeDir: opts.storeDir, paths, maxHandles: opts.maxOpenFiles, logger });
  let session: VhostUserSession | null = null;
  const dax =
    opts.daxWindow === undefined
      ? undefined
      : new DaxMapper({
          window: new DaxWindow(opts.daxWindow),
          channel: () => session?.backendChannel ?? null,
          openFile: (nodeid) => view.openForMapping(nodeid),
          logger,
        });
  // Zero-message opendir: the store's listings never change, so OPENDIR/RELEASEDIR are two round
  // trips per directory for nothing (a third of the requests of a guest's find + stat; measured
  // 0.23 -> 0.14 s on 520 entries). Files keep OPEN: a guest told ENOSYS once stops sending
  // OPEN for every file, opens for writing included, and those must get EROFS.
  // --thread-pool-size 0: no READ leaves the main thread (virtiofsd's meaning of 0).
  const offloadReadMin = opts.threadPoolSize === 0 ? Infinity : undefined;
  const server = new FuseServer(view, { cache: opts.cache, logger, dax, zeroMessageOpendir: true, zeroMessageOpen: true, offloadReadMin });
  session = new VhostUserSession(
    fd,
    {
      numQueues: 1 + opts.numRequestQueues,
      tag: opts.tag,
      handler: server,
      shmemSizes: opts.daxWindow === undefined ? undefined : [opts.daxWindow],
      reset: () => dax?.reset(),
    },
    { logger, pollMaxNs: opts.pollMaxUs * 1000 },
  );
  session.once('close', () => {
    view.close();
    if (reportCounts) logger.info({ requests: server.requestCounts(), polled: session?.polledChains }, 'FUSE requests served');
  });
  return session;
}

function fail(status: number, message: string): number {
  process.stderr.write(`closurefs: ${message}\n`);
  return status;
}

export async function main(argv: readonly string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs(argv);
  } catch (e) {
    if (e instanceof UsageError) return fail(EXIT.USAGE, `${e.message}\nTry 'closurefs --help'.`);
    throw e;
  }
  if (parsed.kind === 'exit') {
    process.stdout.write(parsed.output);
    return parsed.status;
  }
  if (parsed.kind === 'capabilities') {
    process.stdout.write(`${JSON.stringify(CAPABILITIES)}\n`);
    return EXIT.OK;
  }
  return serve(parsed.options);
}

/**
 * The size to give libuv's pool (UV_THREADPOOL_SIZE), or undefined to leave it be.
 * --thread-pool-size wins; then UV_THREADPOOL_SIZE already in the environment, the
 * operator's word; else one thread per CPU, at most libuv's own 4. A pool thread
 * spends a large READ copying at memory speed, so copiers beyond the CPUs only take
 * turns on them and evict each other's cache lines: READ 1 MiB, 4 at a time, on 2 CPUs
 * went from 8,970 ops/s with 4 threads to 9,740 with 2 (medians of 4, same harness).
 */
export function readPoolSize(flag: number | undefined, env: NodeJS.ProcessEnv, cpus: number): number | undefined {
  if (flag !== undefined) return flag > 0 ? flag : undefined;
  if (env.UV_THREADPOOL_SIZE !== undefined) return undefined;
  return Math.max(1, Math.min(4, cpus));
}

async function serve(opts: DaemonOptions): Promise<number> {
  // libuv reads this when its pool starts, at the first large READ: set before anything could start it.
  const pool = readPoolSize(opts.threadPoolSize, process.env, os.availableParallelism());
  if (pool !== undefined) process.env.UV_THREADPOOL_SIZE = String(pool);
  const logger = createLogger(opts.logLevel);
  if (opts.ignored.length > 0) {
    logger.info({ flags: opts.ignored }, 'accepted for compatibility; no effect on an immutable read-only store');
  }
  let paths: string[];
  let listener;
  try {
    checkStoreDir(opts.storeDir);
    paths = loadClosure({
      files: opts.closureFiles,
      of: opts.closureOf,
      storeDir: opts.storeDir,
      allowMissing: opts.allowMissing,
      warn: (m) => logger.warn(m),
    });
    listener = openListener(opts);
  } catch (e) {
    if (e instanceof StoreDirError) return fail(EXIT.STORE, e.message);
    if (e instanceof ClosureInputError) return fail(EXIT.CLOSURE, e.message);
    if (e instanceof SocketSetupError) return fail(EXIT.SOCKET, e.message);
    throw e;
  }
  const daemon = new Daemon(listener, { persist: opts.persist, logger, startSession: (fd) => startSession(fd, opts, paths, logger) });
  const exited = new Promise<void>((resolve) => daemon.once('exit', resolve));
  for (const signal of ['SIGTERM', 'SIGINT'] as const) process.once(signal, () => daemon.stop(signal));
  daemon.start();
  logger.info(
    { paths: paths.length, storeDir: opts.storeDir, socket: opts.socketPath ?? `fd ${opts.fd}`, queues: opts.numRequestQueues, cache: opts.cache },
    'closurefs ready',
  );
  logClosureSize(opts, paths, logger);
  if (opts.warmUpReads > 0) warmUp(daemon, opts, paths, logger);
  await exited;
  return EXIT.OK;
}

/**
 * The closure's file count and size, for the startup summary. Walked after the
 * socket is listening, so a large closure does not delay readiness; a VMM that
 * connects meanwhile waits in the listen backlog.
 */
function logClosureSize(opts: DaemonOptions, paths: readonly string[], logger: Logger): void {
  if (!logger.isLevelEnabled('info')) return;
  setImmediate(() => {
    const view = new ClosureView({ storeDir: opts.storeDir, paths });
    try {
      const s = view.closureStats();
      logger.info({ paths: paths.length, files: s.files, bytes: s.blocks * 4096 }, 'closure size');
    } finally {
      view.close();
    }
  });
}

/**
 * Serves guest-shaped requests to a session of our own (see warmup/warmup.ts) once
 * the loop is free. A frontend that connects meanwhile is served alongside: a VMM
 * connects as soon as it starts, long before its guest sends a request, and the
 * warm-up yields to the loop between requests. The warm session logs only
 * warnings: its requests are not a guest's.
 */
function warmUp(daemon: Daemon, opts: DaemonOptions, paths: readonly string[], logger: Logger): void {
  setImmediate(() => {
    if (!daemon.listening) return;
    let w: WarmUp;
    try {
      // The daemon's own logger, as a VM's session gets: the warm-up's session compiles the
      // request path against the objects it is handed, V8 compiles their shapes in, and a
      // child logger here (another shape) made a VM's first requests run that code
      // deoptimized. What it served goes in the 'warm-up done' line instead of its own.
      w = new WarmUp((fd) => startSession(fd, opts, paths, logger, false));
    } catch (e) {
      logger.warn({ err: (e as Error).message }, 'warm-up could not start; serving without it');
      return;
    }
    const stop = (): void => w.stop('daemon stopping');
    daemon.once('exit', stop);
    void w.run(opts.warmUpReads).then((r) => {
      daemon.off('exit', stop);
      logger.info(r, 'warm-up done');
    });
  });
}

/** Runs main and exits with its status (bin/closurefs and `node dist/src/cli.js`). */
export function run(argv: readonly string[]): void {
  main(argv).then(
    (status) => process.exit(status),
    (e) => {
      process.stderr.write(`closurefs: internal error: ${(e as Error).stack ?? String(e)}\n`);
      process.exit(EXIT.INTERNAL);
    },
  );
}

if (require.main === module) run(process.argv.slice(2));
