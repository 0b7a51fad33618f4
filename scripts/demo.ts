/**
 * The main job, end to end: a real closure built by Nix, served by closurefs to a
 * real Linux guest under QEMU, and what the guest sees printed next to what the
 * host store holds. Run through `npm run demo` (scripts/demo sets up first).
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { nixFixture } from '../test/fixtures/nix/store';
import { describeRun, runGuest } from '../vm-fixtures/runner';

const root = path.resolve(__dirname, '..', '..');

function waitForSocket(p: string, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  return new Promise((resolve, reject) => {
    const tick = () => {
      if (fs.existsSync(p)) resolve();
      else if (Date.now() > deadline) reject(new Error(`closurefs did not create ${p} within ${ms} ms`));
      else setTimeout(tick, 20);
    };
    tick();
  });
}

function guestScript(fx: ReturnType<typeof nixFixture>): string {
  const b = (p: string) => path.basename(p);
  const hidden = [b(fx.paths.multiDoc), b(fx.paths.decoy), b(fx.paths.twinOutside), '.links'];
  return `
echo "== ls /nix/store"; ls -1 /nix/store
echo "== a program from the closure"; ${fx.paths.busybox}/bin/busybox echo "hello from a static busybox in the closure"
echo "== a file"; cat ${fx.paths.lib}/share/hello.txt
echo "== a store path that is a symlink"; cat ${fx.paths.symlinkPath}
echo "== paths on the host but outside the closure"
for p in ${hidden.join(' ')}; do ls -d /nix/store/$p 2>&1; done
echo "== the hard-link twin (host link count 2+) as the guest sees it"; stat -c '%n links=%h ino=%i' ${fx.hardlinkTwin.inside}
echo "== writing (the share is mounted read-write: closurefs refuses)"; grep ' /nix/store ' /proc/mounts; touch /nix/store/new-file 2>&1; rm -f ${fx.paths.singleFile} 2>&1
echo "== statfs"; df /nix/store | tail -1
`;
}

async function main(): Promise<number> {
  const fx = nixFixture();
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'closurefs-demo-'));
  const sock = path.join(tmp, 'closurefs.sock');
  const daemon = spawn(process.execPath, [path.join(root, 'dist/src/cli.js'), '--socket-path', sock, '--closure', fx.closureFile, '--store-dir', fx.storeDir, '--log-level', 'warn'], {
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  const daemonExit = new Promise<number | null>((r) => daemon.on('exit', (code) => r(code)));
  try {
    await waitForSocket(sock, 10_000);
    console.log(`closurefs is serving the closure of ${fx.root}`);
    console.log(`  ${fx.closure.length} of the ${fs.readdirSync(fx.storeDir).length} entries in the host store ${fx.storeDir}\n`);
    console.log('host store entries (* = in the closure, served; the rest stays invisible to the guest):');
    const served = new Set(fx.closure.map((p) => path.basename(p)));
    for (const e of fs.readdirSync(fx.storeDir).sort()) console.log(`  ${served.has(e) ? '*' : ' '} ${e}`);
    const twin = fs.statSync(path.join(fx.storeDir, path.relative('/nix/store', fx.hardlinkTwin.inside)));
    console.log(`\nhost: ${fx.hardlinkTwin.inside} links=${twin.nlink} ino=${twin.ino} (hard-linked by nix-store --optimise)`);
    // Mounted read-write on purpose: every refused write below is refused by closurefs, not by the guest.
    const r = await runGuest({ socketPath: sock, tag: 'store', script: guestScript(fx), timeoutMs: 120_000, readOnlyMount: false });
    console.log(`\nthe guest (Linux 6.1, QEMU TCG, booted and finished in ${(r.durationMs / 1000).toFixed(1)} s):`);
    console.log(r.output.replace(/^/gm, '  '));
    if (r.exitStatus !== 0 || !r.mounted) {
      console.error(describeRun(r));
      return 1;
    }
    const status = await daemonExit;
    console.log(`closurefs exited with status ${status} after the guest powered off`);
    return status === 0 ? 0 : 1;
  } finally {
    daemon.kill();
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

main().then(
  (s) => process.exit(s),
  (e) => {
    console.error(e);
    process.exit(1);
  },
);
