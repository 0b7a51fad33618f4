/**
 * A real Linux guest mounts closurefs with `-o dax=always` through a QEMU whose
 * vhost-user-fs device has a DAX window and speaks the standard SHMEM messages
 * (built by ../shared/qemu-dax/build.sh; scripts/setup builds it). With
 * dax=always the guest reads file data only through the window: every byte it
 * hashes came from pages closurefs had the VMM map, and the VMM's trace shows
 * the SHMEM_MAPs.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describeRun, runGuest } from '../../vm-fixtures/runner';
import { hostPath, nixFixture } from '../fixtures/nix/store';
import { useDaemons } from './daemon';

jest.setTimeout(180_000);

const DAX_QEMU = process.env.CFS_DAX_QEMU ?? path.join(process.env.CLOSUREFS_CACHE ?? path.join(os.homedir(), '.cache', 'closurefs'), 'qemu-dax', 'build', 'qemu-system-x86_64');
const daemons = useDaemons();

test('a dax=always guest reads the closure through the window, byte for byte', async () => {
  if (!fs.existsSync(DAX_QEMU)) throw new Error(`${DAX_QEMU} is missing: run scripts/setup (it builds ../shared/qemu-dax)`);
  const fx = nixFixture();
  const daemon = await daemons.start({ kind: 'closurefs', storeDir: fx.storeDir, closureFiles: [fx.closureFile], extraArgs: ['--dax-window', '256M'] });
  const trace = path.join(os.tmpdir(), `cfs-dax-trace-${process.pid}.log`);
  const hello = `${fx.paths.lib}/share/hello.txt`;
  const guest = await runGuest({
    socketPath: daemon.socket,
    tag: 'store',
    qemuBinary: DAX_QEMU,
    extraQemuArgs: ['-L', '/usr/share/qemu', '-L', '/usr/share/seabios', '-trace', 'vhost_user_backend_shmem*', '-D', trace],
    mountOptions: 'dax=always',
    timeoutMs: 150_000,
    script: `
grep -c 'dax=always' /proc/mounts
sha256sum ${fx.files.large.path} | cut -d' ' -f1
cat ${hello}
${fx.paths.busybox}/bin/busybox echo exec-through-dax
`,
  });
  const run = await daemons.finish(daemon);
  const maps = fs.existsSync(trace) ? fs.readFileSync(trace, 'utf8').split('\n').filter((l) => l.includes('shmem_map')) : [];
  fs.rmSync(trace, { force: true });

  expect({ mounted: guest.mounted, exit: guest.exitStatus, why: guest.exitStatus === 0 ? '' : describeRun(guest) }).toEqual({ mounted: true, exit: 0, why: '' });
  const lines = guest.output.trim().split('\n');
  expect(lines[0]).toBe('1');
  expect(lines[1]).toBe(fx.files.large.sha256);
  expect(lines[2]).toBe(fs.readFileSync(hostPath(fx, hello), 'utf8').trim());
  expect(lines[3]).toBe('exec-through-dax');
  // The 16 MiB file alone needs 9 windows of 2 MiB; every one of them was a SHMEM_MAP.
  expect(maps.length).toBeGreaterThanOrEqual(9);
  expect(crypto.createHash('sha256').update(fs.readFileSync(hostPath(fx, fx.files.large.path))).digest('hex')).toBe(fx.files.large.sha256);
  expect(run.exit?.code).toBe(0);
  expect(run.errors).toEqual([]);
});
