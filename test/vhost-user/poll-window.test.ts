/**
 * The poll window, against the closurefs process (it blocks its own thread in
 * poll(2), so the frontend must live in another process): back-to-back requests
 * are caught inside the window, control messages that arrive during a window are
 * answered, and --poll-window-us 0 serves every kick from Node's event loop.
 * The daemon's "FUSE requests served" line says where each kick was served.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { nixFixture } from '../fixtures/nix/store';
import { parseLogs, startDaemon, type RunningDaemon } from '../../vm-fixtures/daemons';
import { Frontend } from '../harness/frontend';
import { FuseClient } from '../harness/fuse-client';

let dir: string;
const running = new Set<RunningDaemon>();

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cfs-poll-window-'));
});

afterAll(async () => {
  await Promise.all([...running].map((d) => d.stop()));
  fs.rmSync(dir, { recursive: true, force: true });
});

async function serve(extraArgs: string[] = []): Promise<{ daemon: RunningDaemon; fe: Frontend; client: FuseClient }> {
  const fx = nixFixture();
  const daemon = await startDaemon({ kind: 'closurefs', storeDir: fx.storeDir, closureFiles: [fx.closureFile], socketDir: dir, extraArgs });
  running.add(daemon);
  const fe = await Frontend.connect(daemon.socket, { connectTimeoutMs: 10_000 });
  await fe.handshake();
  const client = new FuseClient((readable, sizes) => fe.request(1, readable, sizes));
  await client.init();
  return { daemon, fe, client };
}

/** Closes the frontend, waits for the daemon to exit on its own, and returns its summary line. */
async function finish(daemon: RunningDaemon, fe: Frontend): Promise<{ requests: Record<string, number>; kicks: { eventLoop: number; pollWindow: number } }> {
  fe.close();
  const exit = await daemon.waitExit(10_000);
  running.delete(daemon);
  expect(exit).toEqual({ code: 0, signal: null });
  const { lines, other } = parseLogs(daemon.output());
  expect(other).toEqual([]);
  expect(lines.filter((l) => l.level >= 50).map((l) => l.raw)).toEqual([]);
  const summary = lines.find((l) => l.msg === 'FUSE requests served');
  expect(summary).toBeDefined();
  return summary as unknown as { requests: Record<string, number>; kicks: { eventLoop: number; pollWindow: number } };
}

test('back-to-back requests are caught in the poll window, every one answered', async () => {
  const { daemon, fe, client } = await serve();
  for (let i = 0; i < 300; i++) expect((await client.getattr(1)).attr.mode & 0o170000).toBe(0o040000);
  const s = await finish(daemon, fe);
  expect(s.requests).toEqual({ INIT: 1, GETATTR: 300 });
  // Each GETATTR is a kick of its own (INIT may be served by the drain that starts the ring).
  expect(s.kicks.eventLoop + s.kicks.pollWindow).toBeGreaterThanOrEqual(300);
  // The harness answers each reply within microseconds, far inside the default 1 ms window.
  expect(s.kicks.pollWindow).toBeGreaterThan(250);
}, 30_000);

test('a control message that arrives during a window is answered: GET_VRING_BASE stops the ring where it is', async () => {
  const { daemon, fe, client } = await serve();
  for (let i = 0; i < 50; i++) await client.getattr(1);
  // Sent right after a reply, while the daemon waits in its window for the next kick.
  expect(await fe.stop()).toEqual([0, 51]);
  const s = await finish(daemon, fe);
  expect(s.requests.GETATTR).toBe(50);
}, 30_000);

test('--poll-window-us 0: every kick comes through the event loop', async () => {
  const { daemon, fe, client } = await serve(['--poll-window-us', '0']);
  for (let i = 0; i < 100; i++) await client.getattr(1);
  const s = await finish(daemon, fe);
  expect(s.kicks.pollWindow).toBe(0);
  expect(s.kicks.eventLoop).toBeGreaterThanOrEqual(100);
}, 30_000);
