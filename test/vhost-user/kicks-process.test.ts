/**
 * Kicks against a closurefs process: the driver (this test) and the daemon run on
 * different threads, so a kick can land at any point of a drain. The daemon resets
 * the kick eventfd after serving, then looks at the ring once more; without that
 * second look a kick landing in between is swallowed and its request never answered.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { nixFixture } from '../fixtures/nix/store';
import { startDaemon, type RunningDaemon } from '../../vm-fixtures/daemons';
import { Frontend } from '../harness/frontend';
import { FuseClient, encode } from '../harness/fuse-client';
import { GetattrIn, Opcode } from '../../src/fuse/abi';

let dir: string;
let daemon: RunningDaemon;
let fe: Frontend;

beforeAll(async () => {
  const fx = nixFixture();
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cfs-kicks-'));
  daemon = await startDaemon({ kind: 'closurefs', storeDir: fx.storeDir, closureFiles: [fx.closureFile], socketDir: dir, logLevel: 'warn' });
  fe = await Frontend.connect(daemon.socket, { connectTimeoutMs: 10_000, timeoutMs: 5_000 });
  await fe.handshake();
  await new FuseClient((readable, sizes) => fe.request(1, readable, sizes)).init();
}, 60_000);

afterAll(async () => {
  fe?.close();
  await daemon?.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

test('streams that kick again as each reply lands are all answered', async () => {
  const client = new FuseClient((readable, sizes) => fe.request(1, readable, sizes));
  const getattr = encode(GetattrIn, { getattrFlags: 0, fh: 0 });
  const stream = async (): Promise<number> => {
    let ok = 0;
    for (let i = 0; i < 2000; i++) if ((await client.request(Opcode.GETATTR, 1, [getattr], 104)).header.error === 0) ok++;
    return ok;
  };
  // Four requests in flight at once: each completion is followed at once by a new chain and a kick.
  expect(await Promise.all([stream(), stream(), stream(), stream()])).toEqual([2000, 2000, 2000, 2000]);
}, 60_000);
