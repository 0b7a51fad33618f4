/**
 * Proves the guest plumbing (kernel, initramfs, QEMU runner, Nix fixture) with the REAL peer daemon, QEMU
 * 7.2's C virtiofsd, so that a later closurefs e2e failure can be blamed on closurefs and not on the rig.
 * virtiofsd serves the whole fixture store directory (it knows nothing of closures), so the guest's listing
 * must contain the closure; closurefs' own tests assert it contains nothing else.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { startDaemon, VIRTIOFSD } from '../../vm-fixtures/daemons';
import { describeRun, guestAssets, runGuest, type GuestMachine } from '../../vm-fixtures/runner';
import { hostPath, nixFixture, type NixFixture } from '../fixtures/nix/store';

const TAG = 'store';

jest.setTimeout(240_000);

function sha256File(p: string): string {
  return createHash('sha256').update(fs.readFileSync(p)).digest('hex');
}

// virtiofsd needs root. Outside CI a non-root developer may skip this rig check; in CI a missing
// prerequisite is a failure, so the suite can never go green without having booted a guest.
const cannotRun = process.getuid?.() !== 0
  ? 'the peer virtiofsd needs root: run the tests as root'
  : !fs.existsSync(VIRTIOFSD) ? `${VIRTIOFSD} is missing: run scripts/setup` : undefined;
if (cannotRun !== undefined && process.env.CI === 'true') {
  test('guest plumbing prerequisites', () => {
    throw new Error(cannotRun);
  });
}
const maybe = cannotRun === undefined ? describe : describe.skip;

maybe('guest plumbing with the peer virtiofsd', () => {
  let fixture: NixFixture;
  let tmp: string;

  beforeAll(() => {
    fixture = nixFixture();
    guestAssets(); // build (or find cached) kernel + initramfs outside the per-test timing
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'cfs-plumbing-'));
  });
  afterAll(() => {
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  async function boot(machine: GuestMachine, script: string) {
    const vfsd = await startDaemon({ kind: 'virtiofsd', storeDir: fixture.storeDir, closureFiles: [], socketDir: tmp, cache: 'never' });
    try {
      const r = await runGuest({ socketPath: vfsd.socket, tag: TAG, script, machine, timeoutMs: 120_000 });
      if (r.exitStatus !== 0) throw new Error(`guest run failed\n${describeRun(r)}\nvirtiofsd log:\n${vfsd.output()}`);
      return r;
    } finally {
      await vfsd.stop();
    }
  }

  test('q35: the guest lists the closure and reads files byte-identically, incl. exec from the store', async () => {
    const large = fixture.files.large;
    const app = fixture.paths.app;
    const script = [
      'set -e',
      'echo "== ls"',
      'ls -1 /nix/store',
      'echo "== sha"',
      `sha256sum ${large.path} | cut -d' ' -f1`,
      `stat -c %s ${large.path}`,
      'echo "== symlinks"',
      `cat ${app}/share/hello-abs`, // absolute /nix/store target, resolved by the guest inside its mount
      `cat ${app}/share/hello-rel-cross`,
      `readlink ${app}/share/dangling-rel`,
      'echo "== exec"',
      `${fixture.files.busyboxBinary} echo exec-from-store-ok`,
    ].join('\n');
    const r = await boot('q35', script);
    const section = (name: string): string[] => {
      const m = new RegExp(`== ${name}\\n([\\s\\S]*?)(?:\\n== |$)`).exec(r.output);
      return (m?.[1] ?? '').split('\n').filter((l) => l !== '');
    };

    const listing = new Set(section('ls'));
    for (const p of fixture.closure) expect(listing).toContain(path.basename(p));

    const [guestSha, guestSize] = section('sha');
    expect(guestSha).toBe(sha256File(hostPath(fixture, large.path)));
    expect(guestSha).toBe(large.sha256);
    expect(Number(guestSize)).toBe(large.size);

    const hello = fs.readFileSync(hostPath(fixture, `${fixture.paths.lib}/share/hello.txt`), 'utf8').trim();
    expect(section('symlinks')).toEqual([hello, hello, 'does-not-exist']);
    expect(section('exec')).toEqual(['exec-from-store-ok']);
    expect(r.mounted).toBe(true);
    expect(r.timedOut).toBe(false);
    // Reported so regressions in boot time are visible in the test log.
    console.log(`q35 guest run: ${r.durationMs} ms`);
  });

  test('microvm (virtio-mmio): the share mounts and a file reads back', async () => {
    const p = `${fixture.paths.lib}/share/hello.txt`;
    const r = await boot('microvm', `cat ${p}\n`);
    expect(r.output.trim()).toBe(fs.readFileSync(hostPath(fixture, p), 'utf8').trim());
    console.log(`microvm guest run: ${r.durationMs} ms`);
  });
});
