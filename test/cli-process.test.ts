/**
 * The closurefs program as a user runs it (dist/src/cli.js, built by `npm test`):
 * exit statuses and messages for what a user gets wrong, the capabilities JSON,
 * the startup summary, and a clean shutdown on SIGTERM/SIGINT.
 */
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const CLI = path.resolve(__dirname, '..', 'dist', 'src', 'cli.js');
const HASH = '0123456789abcdfghijklmnpqrsvwxyz';

let dir: string;
let store: string;
let closure: string;

beforeAll(() => {
  if (!fs.existsSync(CLI)) throw new Error(`${CLI} is missing: run npm run build`);
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cfs-cli-'));
  store = path.join(dir, 'store');
  fs.mkdirSync(path.join(store, `${HASH}-hello`, 'bin'), { recursive: true });
  fs.writeFileSync(path.join(store, `${HASH}-hello`, 'bin', 'hello'), '#!/bin/sh\necho hello\n');
  closure = path.join(dir, 'closure.txt');
  fs.writeFileSync(closure, `/nix/store/${HASH}-hello\n`);
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

function run(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 15_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

test('--print-capabilities prints the backend JSON on stdout', () => {
  const r = run(['--print-capabilities']);
  expect(r.status).toBe(0);
  expect(JSON.parse(r.stdout)).toEqual({ type: 'fs' });
});

test.each([
  ['a bad flag', ['--socket-path', 's', '--closure', 'c', '--frobnicate'], 2, /unknown option '--frobnicate'/],
  ['conflicting flags', ['--socket-path', 's', '--fd', '3', '--closure', 'c'], 2, /conflicting flags/],
  ['an unreadable store directory', ['--socket-path', 's', '--closure', 'c', '--store-dir', '/nonexistent/store'], 5, /store directory \/nonexistent\/store is not readable: ENOENT/],
])('%s: exit status and a message naming the problem', (_what, args, status, message) => {
  const r = run(args as string[]);
  expect(r.status).toBe(status);
  expect(r.stderr).toMatch(message as RegExp);
});

test('a bad closure file: exit 3 and the file and line are named', () => {
  const bad = path.join(dir, 'bad-closure.txt');
  fs.writeFileSync(bad, `/nix/store/${HASH}-hello\n/nix/store/not-a-store-path\n`);
  const r = run(['--socket-path', path.join(dir, 's.sock'), '--closure', bad, '--store-dir', store]);
  expect(r.status).toBe(3);
  expect(r.stderr).toContain(`${bad}:2`);
});

/** Starts the daemon, waits for its startup summary, stops it with `signal`; returns exit code and JSON logs. */
async function startAndStop(args: string[], signal: NodeJS.Signals = 'SIGTERM', until = 'closure size'): Promise<{ code: number | null; logs: Record<string, unknown>[]; sock: string }> {
  const sock = args[args.indexOf('--socket-path') + 1];
  const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  const deadline = Date.now() + 10_000;
  while (!stderr.includes(until) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  expect(fs.existsSync(sock)).toBe(true);
  child.kill(signal);
  const code = await exited;
  return { code, sock, logs: stderr.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>) };
}

test('a path missing on disk is an error, or a warning with --allow-missing', async () => {
  const missing = path.join(dir, 'missing-closure.txt');
  fs.writeFileSync(missing, `/nix/store/${HASH}-hello\n/nix/store/${HASH.replace('0', '1')}-gone\n`);
  const r = run(['--socket-path', path.join(dir, 'm.sock'), '--closure', missing, '--store-dir', store]);
  expect(r.status).toBe(3);
  expect(r.stderr).toMatch(/gone' is missing under/);
  const tolerant = await startAndStop(['--socket-path', path.join(dir, 'm.sock'), '--closure', missing, '--store-dir', store, '--allow-missing']);
  expect(tolerant.code).toBe(0);
  expect(tolerant.logs.find((l) => l.level === 40 && /gone' is missing under/.test(String(l.msg)))).toBeDefined();
  expect(tolerant.logs.find((l) => l.msg === 'closurefs ready')).toMatchObject({ paths: 1 });
});

test('the warm-up serves its READs to a session of its own after the socket is ready; 0 turns it off', async () => {
  const sock = path.join(dir, 'warm.sock');
  const warm = await startAndStop(['--socket-path', sock, '--closure', closure, '--store-dir', store, '--warm-up-reads', '500'], 'SIGTERM', 'warm-up done');
  expect(warm.code).toBe(0);
  const ready = warm.logs.findIndex((l) => l.msg === 'closurefs ready');
  const done = warm.logs.findIndex((l) => l.msg === 'warm-up done');
  expect(ready).toBeGreaterThanOrEqual(0);
  expect(done).toBeGreaterThan(ready);
  expect(warm.logs[done]).toMatchObject({ reads: 500, fileSize: '#!/bin/sh\necho hello\n'.length, stopped: null });
  // Its session is not a guest's: no connection or request-count lines at info.
  expect(warm.logs.filter((l) => /frontend|FUSE requests/.test(String(l.msg)))).toEqual([]);
  const off = await startAndStop(['--socket-path', sock, '--closure', closure, '--store-dir', store, '--warm-up-reads', '0']);
  expect(off.code).toBe(0);
  expect(off.logs.find((l) => l.msg === 'warm-up done')).toBeUndefined();
});

test('a missing socket directory: exit 4', () => {
  const r = run(['--socket-path', path.join(dir, 'no', 'such', 'dir', 's.sock'), '--closure', closure, '--store-dir', store]);
  expect(r.status).toBe(4);
  expect(r.stderr).toMatch(/socket directory .* does not exist/);
});

test.each(['SIGTERM', 'SIGINT'] as const)('%s: clean shutdown, exit 0, socket removed, summary and compat flags logged', async (signal) => {
  const sock = path.join(dir, `${signal}.sock`);
  const { code, logs } = await startAndStop(['--socket-path', sock, '--closure', closure, '--store-dir', store, '--xattr', '--rlimit-nofile', '4096'], signal);
  expect(code).toBe(0);
  expect(fs.existsSync(sock)).toBe(false);
  expect(logs.find((l) => l.msg === 'closurefs ready')).toMatchObject({ paths: 1, socket: sock });
  expect(logs.find((l) => l.msg === 'closure size')).toMatchObject({ paths: 1, files: 4 });
  const compat = logs.filter((l) => String(l.msg).startsWith('accepted for compatibility'));
  expect(compat).toHaveLength(1);
  expect(compat[0].flags).toEqual(['--rlimit-nofile', '--xattr']);
  expect(logs.find((l) => l.msg === 'shutting down')).toMatchObject({ reason: signal });
});
