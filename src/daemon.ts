/**
 * The daemon's outer loop: a listening UNIX socket, one vhost-user frontend at a
 * time, and the decision what to do when it leaves (exit, or wait for the next
 * one with --persist). What a connection does is injected (startSession), so this
 * file knows sockets and lifetimes, not protocols.
 */
import { EventEmitter } from 'node:events';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ClosurefsError, isErrnoError } from './errors';
import * as native from './native';

export class SocketSetupError extends ClosurefsError {
  override readonly code = 'CFS_ERR_SOCKET_SETUP';
}

/** One frontend connection as the daemon sees it. */
export interface Connection {
  once(event: 'close', listener: (reason?: Error) => void): unknown;
  close(): void;
}

export interface ListenOptions {
  socketPath?: string;
  fd?: number;
  socketGroup?: string;
}

export interface Listener {
  fd: number;
  /** The path we bound and must unlink on exit; undefined for an inherited fd. */
  boundPath?: string;
}

/**
 * Binds the socket path (or adopts an inherited listening fd), refusing a path a
 * live daemon is using and removing a stale socket left by a dead one.
 */
export function openListener(opts: ListenOptions): Listener {
  if (opts.fd !== undefined) return { fd: adoptListener(opts.fd) };
  const socketPath = opts.socketPath;
  if (socketPath === undefined) throw new SocketSetupError('no socket path');
  const dir = path.dirname(path.resolve(socketPath));
  if (!fs.existsSync(dir)) throw new SocketSetupError(`socket directory ${dir} does not exist`);
  removeStaleSocket(socketPath);
  let fd: number;
  try {
    fd = native.listenUnix(socketPath);
  } catch (e) {
    throw new SocketSetupError(`cannot listen on ${socketPath}: ${(e as Error).message}`, { cause: e });
  }
  if (opts.socketGroup !== undefined) {
    try {
      applyGroup(socketPath, opts.socketGroup);
    } catch (e) {
      native.closeQuietly(fd);
      fs.rmSync(socketPath, { force: true });
      throw e;
    }
  }
  return { fd, boundPath: socketPath };
}

function adoptListener(fd: number): number {
  let mode: number;
  try {
    mode = native.statx(fd, '').mode;
  } catch (e) {
    throw new SocketSetupError(`--fd ${fd} is not an open file descriptor`, { cause: e });
  }
  if ((mode & native.constants.S_IFMT) !== native.constants.S_IFSOCK) throw new SocketSetupError(`--fd ${fd} is not a socket`);
  native.setNonBlocking(fd, true);
  return fd;
}

function removeStaleSocket(socketPath: string): void {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(socketPath);
  } catch {
    return; // nothing there
  }
  if (!st.isSocket()) throw new SocketSetupError(`${socketPath} exists and is not a socket`);
  let probe: number;
  try {
    probe = native.connectUnix(socketPath);
  } catch (e) {
    if (isErrnoError(e, 'ECONNREFUSED')) {
      fs.rmSync(socketPath, { force: true }); // left behind by a daemon that died
      return;
    }
    throw new SocketSetupError(`cannot probe ${socketPath}: ${(e as Error).message}`, { cause: e });
  }
  native.closeQuietly(probe);
  throw new SocketSetupError(`${socketPath} is in use by another running backend`);
}

function applyGroup(socketPath: string, group: string): void {
  const gid = /^\d+$/.test(group) ? Number(group) : native.groupId(group);
  if (gid === null) throw new SocketSetupError(`--socket-group: no group named '${group}'`);
  fs.chownSync(socketPath, -1, gid);
  fs.chmodSync(socketPath, 0o660);
}

export interface DaemonOptions {
  persist: boolean;
  logger: { info(o: object | string, msg?: string): void; warn(o: object | string, msg?: string): void };
  /** Starts serving one accepted connection; the daemon owns `fd` until then. */
  startSession(fd: number): Connection;
}

/**
 * Accepts frontends one at a time. Emits 'exit' once, when the daemon is done:
 * after the first frontend leaves (unless persist), or after stop().
 */
export class Daemon extends EventEmitter {
  #watcher: native.FdWatcher | null = null;
  #session: Connection | null = null;
  #stopped = false;

  constructor(
    private readonly listener: Listener,
    private readonly opts: DaemonOptions,
  ) {
    super();
  }

  get connected(): boolean {
    return this.#session !== null;
  }

  /** Started and not yet stopped. */
  get listening(): boolean {
    return this.#watcher !== null;
  }

  start(): void {
    this.#watcher = new native.FdWatcher(this.listener.fd, () => this.#onAcceptable()).start();
  }

  /** Closes the live connection and the listener; emits 'exit'. Idempotent. */
  stop(reason = 'stop requested'): void {
    if (this.#stopped) return;
    this.#stopped = true;
    this.opts.logger.info({ reason }, 'shutting down');
    this.#watcher?.close();
    this.#watcher = null;
    const session = this.#session;
    this.#session = null;
    session?.close();
    native.closeQuietly(this.listener.fd);
    if (this.listener.boundPath !== undefined) fs.rmSync(this.listener.boundPath, { force: true });
    this.emit('exit');
  }

  #onAcceptable(): void {
    for (;;) {
      const fd = native.acceptUnix(this.listener.fd);
      if (fd === null) return;
      if (this.#session !== null) {
        // vhost-user has one frontend per backend socket; a second one is refused, not queued.
        this.opts.logger.warn('refusing a second frontend connection while one is active');
        native.closeQuietly(fd);
        continue;
      }
      this.#serve(fd);
    }
  }

  #serve(fd: number): void {
    this.opts.logger.info('frontend connected');
    const session = this.opts.startSession(fd);
    this.#session = session;
    session.once('close', (reason?: Error) => {
      if (this.#session !== session) return;
      this.#session = null;
      this.opts.logger.info({ reason: reason?.message }, 'frontend disconnected');
      if (!this.opts.persist) this.stop('frontend disconnected');
    });
  }
}
