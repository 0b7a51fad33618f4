/**
 * Starts a virtio-fs backend daemon for a guest run: closurefs itself (node dist/src/cli.js) or the peer,
 * QEMU 7.2's C virtiofsd, on a fresh socket. Used by the e2e tests (through test/e2e/daemon.ts) and the guest
 * benchmark, so that both start the daemons the same way and the same switch picks one.
 *
 * Readiness is "the socket file exists", found by polling: connecting to probe it would itself be the one
 * frontend closurefs serves, and it would then exit when the probe hangs up.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

export type DaemonKind = 'closurefs' | 'virtiofsd';

export const VIRTIOFSD = '/usr/lib/qemu/virtiofsd';

export interface StartDaemonOptions {
  kind: DaemonKind;
  /** Host directory whose entries are store paths (closurefs --store-dir, virtiofsd source=). */
  storeDir: string;
  /** closurefs --closure files (logical /nix/store/... paths). virtiofsd ignores them: it shares storeDir whole. */
  closureFiles: string[];
  /** Directory for the socket. */
  socketDir: string;
  /** closurefs --num-request-queues (virtiofsd has no such option: QEMU's device property decides). */
  numRequestQueues?: number;
  /** Guest cache mode, passed to both daemons (closurefs --cache, virtiofsd -o cache=). */
  cache?: 'auto' | 'always' | 'never';
  /** closurefs --log-level. Default info, so the startup summary line is there to read. */
  logLevel?: string;
  /** Extra arguments appended as they are. */
  extraArgs?: string[];
  /** Environment changes for the daemon; undefined removes a variable. */
  env?: Record<string, string | undefined>;
  /** How long to wait for the socket. Default 15 s. */
  readyTimeoutMs?: number;
}

export interface DaemonExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface RunningDaemon {
  kind: DaemonKind;
  socket: string;
  pid: number;
  command: string[];
  /** Milliseconds from spawn to the socket file existing (polled every 2 ms). */
  readyMs: number;
  /** Everything the daemon wrote to stderr (and stdout) so far. */
  output: () => string;
  /** Resolves when the process has exited, with how. */
  exited: Promise<DaemonExit>;
  /** True once the process has exited. */
  hasExited: () => boolean;
  /** Waits up to ms for the process to exit by itself; undefined if it is still running then. */
  waitExit: (ms: number) => Promise<DaemonExit | undefined>;
  /** SIGTERM (then SIGKILL after 5 s) unless already gone; resolves with how it ended. Removes the socket. */
  stop: () => Promise<DaemonExit>;
}

/** The repository root: the nearest directory up from here with a package.json (works from dist/ too). */
export function repoRoot(): string {
  let dir = __dirname;
  for (;;) {
    if (fs.existsSync(path.join(dir, 'package.json')) && fs.existsSync(path.join(dir, 'vm-fixtures'))) return dir;
    const up = path.dirname(dir);
    if (up === dir) throw new Error(`no repository root above ${__dirname}`);
    dir = up;
  }
}

function newestMtime(dir: string, ext: string): number {
  let newest = 0;
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) newest = Math.max(newest, newestMtime(p, ext));
    else if (e.name.endsWith(ext)) newest = Math.max(newest, fs.statSync(p).mtimeMs);
  }
  return newest;
}

let checkedCli: string | undefined;

/**
 * dist/src/cli.js, checked to exist and to be at least as new as every src/**.ts: a stale build would make a
 * guest test pass or fail against code that is no longer there. Checked once per process, at the first
 * daemon start (right after `npm test` built it), so that editing src/ during a long run does not fail it.
 */
export function closurefsCli(): string {
  if (checkedCli !== undefined) return checkedCli;
  const root = repoRoot();
  const cli = path.join(root, 'dist', 'src', 'cli.js');
  if (!fs.existsSync(cli)) throw new Error(`${cli} does not exist: run \`npm run build\` first`);
  const built = fs.statSync(cli).mtimeMs;
  const src = newestMtime(path.join(root, 'src'), '.ts');
  if (src > built + 1000) throw new Error(`${cli} is older than src/ (a source file changed after the last build): run \`npm run build\``);
  checkedCli = cli;
  return cli;
}

let counter = 0;

export async function startDaemon(opts: StartDaemonOptions): Promise<RunningDaemon> {
  const socket = path.join(opts.socketDir, `${opts.kind}-${process.pid}-${++counter}.sock`);
  fs.rmSync(socket, { force: true });
  let command: string[];
  if (opts.kind === 'closurefs') {
    closurefsCli(); // fails early on a missing or stale build
    command = [
      // The program as users run it: bin/closurefs sets the daemon's V8 flags.
      path.join(repoRoot(), 'bin', 'closurefs'),
      '--socket-path', socket,
      '--store-dir', opts.storeDir,
      ...opts.closureFiles.flatMap((f) => ['--closure', f]),
      '--log-level', opts.logLevel ?? 'info',
    ];
    if (opts.numRequestQueues !== undefined) command.push('--num-request-queues', String(opts.numRequestQueues));
    if (opts.cache !== undefined) command.push('--cache', opts.cache);
    // For experiments: extra closurefs flags, e.g. CFS_DAEMON_ARGS='--poll-max-us 0' npm run bench.
    command.push(...(process.env.CFS_DAEMON_ARGS ?? '').split(' ').filter((a) => a !== ''));
  } else {
    if (!fs.existsSync(VIRTIOFSD)) throw new Error(`${VIRTIOFSD} not found (apt-get install qemu-system-x86)`);
    // sandbox=chroot: the default namespace sandbox needs unshare rights that containers often lack; chroot
    // only needs root, which virtiofsd needs anyway.
    command = [VIRTIOFSD, `--socket-path=${socket}`, '-o', `source=${opts.storeDir}`, '-o', 'sandbox=chroot'];
    // virtiofsd spells closurefs' "never" as "none".
    if (opts.cache !== undefined) command.push('-o', `cache=${opts.cache === 'never' ? 'none' : opts.cache}`);
  }
  command.push(...(opts.extraArgs ?? []));

  const t0 = process.hrtime.bigint();
  const env: NodeJS.ProcessEnv = { ...process.env, ...opts.env };
  for (const [k, v] of Object.entries(opts.env ?? {})) if (v === undefined) delete env[k];
  const child: ChildProcess = spawn(command[0] as string, command.slice(1), { stdio: ['ignore', 'pipe', 'pipe'], env });
  let out = '';
  child.stdout?.setEncoding('utf8');
  child.stderr?.setEncoding('utf8');
  child.stdout?.on('data', (d: string) => (out += d));
  child.stderr?.on('data', (d: string) => (out += d));
  let exitInfo: DaemonExit | undefined;
  const exited = new Promise<DaemonExit>((resolve) => {
    child.once('error', (err) => {
      out += `\n(spawn error: ${err.message})`;
      exitInfo = { code: null, signal: null };
      resolve(exitInfo);
    });
    // 'close' rather than 'exit': by then stdout/stderr are drained, so output() is complete.
    child.once('close', (code, signal) => {
      exitInfo ??= { code, signal };
      resolve(exitInfo);
    });
  });
  const pid = child.pid;

  const limit = opts.readyTimeoutMs ?? 15_000;
  const ready = await new Promise<number>((resolve, reject) => {
    const poll = (): void => {
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      if (fs.existsSync(socket)) return resolve(ms);
      if (exitInfo !== undefined) {
        return reject(new Error(`${opts.kind} exited (${JSON.stringify(exitInfo)}) before creating ${socket}:\n${command.join(' ')}\n${out}`));
      }
      if (ms > limit) {
        child.kill('SIGKILL');
        return reject(new Error(`${opts.kind} did not create ${socket} within ${limit} ms:\n${command.join(' ')}\n${out}`));
      }
      setTimeout(poll, 2);
    };
    poll();
  });
  if (pid === undefined) throw new Error(`${opts.kind}: no pid`);

  const waitExit = async (ms: number): Promise<DaemonExit | undefined> => {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<undefined>((r) => (timer = setTimeout(() => r(undefined), ms)));
    const r = await Promise.race([exited, timeout]);
    if (timer !== undefined) clearTimeout(timer);
    return r;
  };
  const stop = async (): Promise<DaemonExit> => {
    if (exitInfo === undefined) {
      child.kill('SIGTERM');
      if ((await waitExit(5_000)) === undefined) child.kill('SIGKILL');
    }
    const r = await exited;
    fs.rmSync(socket, { force: true });
    return r;
  };
  return {
    kind: opts.kind,
    socket,
    pid,
    command,
    readyMs: ready,
    output: () => out,
    exited,
    hasExited: () => exitInfo !== undefined,
    waitExit,
    stop,
  };
}

/** One pino JSON line of closurefs' stderr; `raw` is the line itself. */
export interface LogLine {
  level: number;
  msg?: string;
  raw: string;
  [key: string]: unknown;
}

/**
 * Parses closurefs' stderr: every non-empty line must be a pino JSON object (anything else, such as a Node
 * stack trace, is returned in `other`, which a test treats as a failure).
 */
export function parseLogs(text: string): { lines: LogLine[]; other: string[] } {
  const lines: LogLine[] = [];
  const other: string[] = [];
  for (const raw of text.split('\n')) {
    if (raw.trim() === '') continue;
    try {
      const v = JSON.parse(raw) as unknown;
      if (typeof v === 'object' && v !== null && typeof (v as { level?: unknown }).level === 'number') {
        lines.push({ ...(v as Record<string, unknown>), level: (v as { level: number }).level, raw });
        continue;
      }
    } catch {
      // Not JSON: reported below.
    }
    other.push(raw);
  }
  return { lines, other };
}

/**
 * Resident set size (kB) and open fd count of a live process, from /proc. The RSS is also split as the
 * kernel counts it: anonymous (the daemon's own heap and stacks), file (its binary and libraries, shared
 * with every process that maps them) and shmem (pages of the guest's memory file it has touched: the
 * guest's memory, counted in the VMM's RSS too).
 */
export function processResources(pid: number): { rssKiB: number; anonKiB: number; fileKiB: number; shmemKiB: number; fds: number } {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const field = (name: string): number => {
    const m = new RegExp(`^${name}:\\s+(\\d+)\\s+kB`, 'm').exec(status);
    if (m?.[1] === undefined) throw new Error(`no ${name} in /proc/${pid}/status`);
    return Number(m[1]);
  };
  return {
    rssKiB: field('VmRSS'),
    anonKiB: field('RssAnon'),
    fileKiB: field('RssFile'),
    shmemKiB: field('RssShmem'),
    fds: fs.readdirSync(`/proc/${pid}/fd`).length,
  };
}
